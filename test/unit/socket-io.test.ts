/**
 * net/socket-io.ts over real loopback sockets, plain TCP and TLS: the handle path (`HandleIo`)
 * must behave as the stream path (`StreamIo`) does, so every behavioural case runs for both modes.
 * The socket under test is the server side of each pair (as the relay's client socket is); the
 * peer is a client that sends, reads, pauses, ends or resets.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import net, { type AddressInfo, type Socket } from 'node:net';
import tls from 'node:tls';
import { handleIoUnavailable, socketIo, type IoSink, type RelayIoMode, type SocketIo } from '../../src/net/socket-io.js';
import { SNI_SUFFIX, testCerts } from '../support/proxy.js';
import { sleep, waitFor } from '../support/wait.js';

type Kind = 'tcp' | 'tls';
const KINDS: readonly Kind[] = ['tcp', 'tls'];
const MODES: readonly RelayIoMode[] = ['handle', 'stream'];
const KiB = 1024;
const MiB = 1024 * KiB;

// ---------------------------------------------------------------- bytes

/** xorshift32: the same sizes and bytes on every run. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

function pattern(n: number, seed: number): Buffer {
  const r = prng(seed);
  const b = Buffer.allocUnsafe(n);
  let i = 0;
  for (; i + 4 <= n; i += 4) b.writeUInt32LE(r(), i);
  for (; i < n; i++) b[i] = r() & 0xff;
  return b;
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Equal bytes, or a failure naming the lengths and the first differing offset (never a dump). */
function assertSameBytes(got: Buffer, want: Buffer, what: string): void {
  if (sha256(got) === sha256(want)) return;
  let i = 0;
  while (i < got.length && i < want.length && got[i] === want[i]) i++;
  assert.fail(`${what}: got ${got.length} bytes, want ${want.length}; first difference at offset ${i}`);
}

/** Collects what a socket (or a sink) receives. */
class Received {
  readonly chunks: Buffer[] = [];
  bytes = 0;
  readonly add = (c: Buffer): void => {
    this.chunks.push(c);
    this.bytes += c.length;
  };
  get all(): Buffer {
    return Buffer.concat(this.chunks);
  }
  /** Resolves once `n` bytes have come. */
  reach(n: number, what: string, timeoutMs = 10_000): Promise<void> {
    return waitFor(() => this.bytes >= n, timeoutMs, `${what}: ${n} bytes (have ${this.bytes})`);
  }
}

/** A sink that records data, drains, and the I/O's state at each drain. */
class Sink extends Received implements IoSink {
  drains = 0;
  readonly atDrain: { pendingBytes: number; needDrain: boolean }[] = [];
  io: SocketIo | null = null;
  onData(chunk: Buffer): void {
    this.add(chunk);
  }
  onDrain(): void {
    this.drains++;
    if (this.io !== null) this.atDrain.push({ pendingBytes: this.io.pendingBytes, needDrain: this.io.needDrain });
  }
}

// ---------------------------------------------------------------- socket pairs

interface Pair {
  /** The server side: the socket the I/O under test owns. */
  local: Socket;
  /** The client: a TLSSocket for 'tls', else the same as `peerRaw`. */
  peer: Socket;
  /** The client's TCP socket (what `resetAndDestroy` works on). */
  peerRaw: Socket;
  /** Errors each side emitted (listened to, so none is uncaught). */
  localErrors: NodeJS.ErrnoException[];
  close(): void;
}

async function connectPair(kind: Kind): Promise<Pair> {
  const certs = kind === 'tls' ? await testCerts() : null;
  const server = certs === null ? net.createServer() : tls.createServer({ key: certs.serverKeyPem, cert: certs.serverCertPem });
  const accepted = new Promise<Socket>((resolve) => server.once(certs === null ? 'connection' : 'secureConnection', resolve));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const peerRaw = net.connect(port, '127.0.0.1');
  peerRaw.on('error', () => undefined);
  let peer: Socket = peerRaw;
  try {
    if (certs === null) await once(peerRaw, 'connect');
    else {
      peer = tls.connect({ socket: peerRaw, ca: certs.caCertPem, servername: `db.${SNI_SUFFIX}` });
      peer.on('error', () => undefined);
      await once(peer, 'secureConnect');
    }
  } finally {
    server.close();
  }
  const local = await accepted;
  const localErrors: NodeJS.ErrnoException[] = [];
  local.on('error', (e: NodeJS.ErrnoException) => localErrors.push(e));
  return {
    local,
    peer,
    peerRaw,
    localErrors,
    close() {
      local.destroy();
      peer.destroy();
      peerRaw.destroy();
    },
  };
}

/** Runs `body` over a fresh pair and closes it whatever happens. */
async function withPair(kind: Kind, body: (p: Pair) => Promise<void>): Promise<void> {
  const p = await connectPair(kind);
  try {
    await body(p);
  } finally {
    p.close();
  }
}

/** Starts `io` on a fresh recording sink, reading. */
function started(io: SocketIo): Sink {
  const s = new Sink();
  s.io = io;
  const early = io.start(s);
  if (early !== null) s.add(early);
  io.resume();
  return s;
}

/** Writes `data` from the peer in pseudo-random pieces of 1 B..64 KiB, as fast as the peer's stream takes them. */
async function sendInPieces(peer: Socket, data: Buffer, seed: number): Promise<void> {
  const r = prng(seed);
  let off = 0;
  while (off < data.length) {
    const n = Math.min(data.length - off, 1 + (r() % (64 * KiB)));
    const ok = peer.write(data.subarray(off, off + n));
    off += n;
    if (!ok) await once(peer, 'drain');
  }
}

const T = { timeout: 15_000 };

/** Resolves on 'close' with its hadError (events.once would reject on an 'error' first). */
const closeOf = (s: Socket): Promise<boolean> => new Promise((resolve) => s.once('close', resolve));

/**
 * Starts `io` with a sink that collects into `got` and pauses the io at its first chunk (as Flow
 * does from inside onData), then reads: the cases below check what comes after that pause.
 * `chunksWhilePaused` counts onData calls while `paused` is set (a case clears it before resuming).
 */
function startPausingAtFirstChunk(io: SocketIo, got: Received): { paused: boolean; chunksWhilePaused: number } {
  const state = { paused: false, chunksWhilePaused: 0 };
  const sink: IoSink = {
    onData(c) {
      if (state.paused) state.chunksWhilePaused++;
      got.add(c);
      if (got.chunks.length === 1) {
        state.paused = true;
        io.pause();
      }
    },
    onDrain() {},
  };
  const early = io.start(sink);
  if (early !== null) got.add(early);
  io.resume();
  return state;
}

// ---------------------------------------------------------------- the cases

describe('socket-io: the handle path is what runs on this Node', () => {
  it('handleIoUnavailable() is null: the binding has what HandleIo needs', () => {
    assert.equal(handleIoUnavailable(), null);
  });

  for (const kind of KINDS) {
    it(`socketIo(${kind} socket, 'handle') is a handle I/O, 'stream' a stream one (no silent fallback)`, T, () =>
      withPair(kind, async (p) => {
        if (kind === 'tls') assert.ok(p.local instanceof tls.TLSSocket, 'the server side is a TLSSocket');
        assert.equal(socketIo(p.local, 'handle').mode, 'handle');
        assert.equal(socketIo(p.local, 'stream').mode, 'stream');
        await Promise.resolve();
      }),
    );
  }
});

for (const kind of KINDS) {
  for (const mode of MODES) {
    describe(`socket-io, ${mode} mode over ${kind}`, () => {
      it('the sink receives exactly what the peer sent (8 MiB in random-sized writes)', T, () =>
        withPair(kind, async (p) => {
          const sent = pattern(8 * MiB, 11);
          const s = started(socketIo(p.local, mode));
          await sendInPieces(p.peer, sent, 12);
          await s.reach(sent.length, 'sink');
          await sleep(20); // nothing beyond what was sent
          assertSameBytes(s.all, sent, 'sink');
        }),
      );

      it('writeAll of no buffers writes nothing and keeps the socket working (transaction mode can have a batch it answers itself)', T, () =>
        withPair(kind, async (p) => {
          const io = socketIo(p.local, mode);
          started(io);
          const got = new Received();
          p.peer.on('data', got.add);
          assert.equal(io.writeAll([]), true);
          const after = pattern(1000, 5);
          io.write(after);
          await got.reach(after.length, 'peer');
          assertSameBytes(got.all, after, 'peer');
        }),
      );

      it('write/writeAll reach the peer exactly and in order, also while a write is in flight', T, () =>
        withPair(kind, async (p) => {
          const io = socketIo(p.local, mode);
          started(io);
          const got = new Received();
          p.peer.on('data', got.add);
          const r = prng(21);
          const sent: Buffer[] = [];
          let maxPending = 0;
          let busySeen = false;
          const big = (i: number, size = MiB): void => {
            const c = pattern(size, 100 + i);
            sent.push(c);
            io.write(c);
          };
          // TLS: every write is in flight at first; TCP: 8 MiB is more than loopback takes at once.
          big(0, 8 * MiB);
          if (mode === 'handle') assert.equal(io.busy, true, 'the first write is in flight');
          for (let i = 0; i < 10_000; i++) {
            if (i % 2500 === 1250) big(1 + i);
            if (i % 1000 === 500) {
              const batch = [pattern(1 + (r() % 300), r()), pattern(1 + (r() % 300), r()), pattern(1 + (r() % 300), r())];
              sent.push(...batch);
              io.writeAll(batch);
            } else {
              const c = pattern(1 + (r() % 200), r());
              sent.push(c);
              io.write(c);
            }
            maxPending = Math.max(maxPending, io.pendingBytes);
            busySeen ||= io.busy;
          }
          const want = Buffer.concat(sent);
          assert.ok(maxPending > 0, 'writes were made while others were pending');
          if (mode === 'handle') assert.ok(busySeen, 'writes were queued behind one in flight');
          await got.reach(want.length, 'peer');
          await waitFor(() => io.pendingBytes === 0 && !io.busy, 5_000, 'all written');
          await sleep(20);
          assertSameBytes(got.all, want, 'peer');
        }),
      );

      it('backpressure: false past the high-water mark, one onDrain per episode, pendingBytes back to 0', T, () =>
        withPair(kind, async (p) => {
          const io = socketIo(p.local, mode);
          const s = started(io);
          const got = new Received();
          p.peer.on('data', got.add);
          const sent: Buffer[] = [];
          let seed = 1000;
          const hwm = p.local.writableHighWaterMark;
          for (let episode = 1; episode <= 2; episode++) {
            p.peer.pause(); // stops reading once its own buffer is full; the kernel's fill up behind it
            let ok = true;
            while (ok) {
              const c = pattern(64 * KiB, seed++);
              sent.push(c);
              ok = io.write(c);
              if (sent.length > 4000) assert.fail('write never said false with a peer that does not read');
            }
            assert.equal(io.needDrain, true, `episode ${episode}: needDrain after false`);
            const before = io.pendingBytes;
            assert.ok(before >= hwm, `episode ${episode}: pendingBytes ${before} >= high-water mark ${hwm}`);
            // 12 MiB more than any send and receive buffers together take: no drain before the peer reads.
            for (let i = 0; i < 192; i++) {
              const c = pattern(64 * KiB, seed++);
              sent.push(c);
              assert.equal(io.write(c), false, 'still full');
            }
            assert.ok(io.pendingBytes >= before + 192 * 64 * KiB, `episode ${episode}: pendingBytes grows (${before} → ${io.pendingBytes})`);
            await sleep(50);
            assert.equal(s.drains, episode - 1, `episode ${episode}: no drain while the peer does not read`);
            assert.equal(io.needDrain, true);
            p.peer.resume();
            await waitFor(() => s.drains >= episode, 10_000, `episode ${episode}: onDrain`);
            const total = sent.reduce((n, c) => n + c.length, 0);
            await got.reach(total, 'peer');
            await sleep(30);
            assert.equal(s.drains, episode, `episode ${episode}: exactly one onDrain`);
            assert.deepEqual(s.atDrain[episode - 1], { pendingBytes: 0, needDrain: false }, 'state at the drain');
            assert.equal(io.needDrain, false);
            assert.equal(io.pendingBytes, 0);
          }
          assertSameBytes(got.all, Buffer.concat(sent), 'peer');
        }),
      );

      it('pause(): no onData while paused though the peer sends; resume(): all of it, in order', T, () =>
        withPair(kind, async (p) => {
          const io = socketIo(p.local, mode);
          const s = started(io);
          const first = pattern(1000, 31);
          p.peer.write(first);
          await s.reach(first.length, 'before the pause');
          io.pause();
          const calls = s.chunks.length;
          const more = pattern(512 * KiB, 32);
          const sending = sendInPieces(p.peer, more, 33);
          await sleep(200);
          assert.equal(s.chunks.length, calls, 'no onData while paused');
          io.resume();
          await sending;
          await s.reach(first.length + more.length, 'after resume');
          assertSameBytes(s.all, Buffer.concat([first, more]), 'sink');
        }),
      );

      it('pause() from inside onData: no further onData until resume()', T, () =>
        withPair(kind, async (p) => {
          const io = socketIo(p.local, mode);
          const got = new Received();
          const state = startPausingAtFirstChunk(io, got);
          // One large write: over TLS several records arrive in one read.
          const sent = pattern(2 * MiB, 41);
          p.peer.write(sent);
          await waitFor(() => got.bytes > 0, 5_000, 'first chunk');
          await sleep(200);
          assert.equal(state.chunksWhilePaused, 0, `onData calls after pause(): ${state.chunksWhilePaused}`);
          state.paused = false;
          io.resume();
          await got.reach(sent.length, 'after resume');
          assertSameBytes(got.all, sent, 'sink');
        }),
      );

      for (const size of [40 * KiB, 2 * MiB]) {
        it(`pause() from inside onData, then the peer ends (${size / KiB} KiB): no 'end' before the data; resume(): data, then 'end'`, T, () =>
          withPair(kind, async (p) => {
            const io = socketIo(p.local, mode);
            const got = new Received();
            const events: string[] = [];
            startPausingAtFirstChunk(io, got);
            p.local.on('end', () => events.push(`end after ${got.bytes}`));
            const closed = closeOf(p.local).then(() => events.push('close'));
            const sent = pattern(size, 45);
            p.peer.end(sent); // small: data records and the close_notify in one read
            await waitFor(() => got.bytes > 0, 5_000, 'first chunk');
            await sleep(200);
            // 'end' while paused only if the first read took everything (TCP may read 40 KiB at once).
            if (got.bytes < sent.length) assert.deepEqual(events, [], "no 'end' while paused with data unread");
            io.resume();
            await closed;
            assert.deepEqual(events, [`end after ${sent.length}`, 'close']);
            assertSameBytes(got.all, sent, 'sink');
          }),
        );
      }

      it("pause() from inside onData, then stop(): the socket's 'data' listeners get the rest", T, () =>
        withPair(kind, async (p) => {
          const io = socketIo(p.local, mode);
          const got = new Received();
          startPausingAtFirstChunk(io, got);
          const sent = pattern(2 * MiB, 47);
          p.peer.write(sent);
          await waitFor(() => got.bytes > 0, 5_000, 'first chunk');
          await sleep(50);
          const bySink = got.bytes;
          io.stop();
          const rest = new Received();
          p.local.on('data', rest.add);
          await rest.reach(sent.length - bySink, "the socket's 'data' listener");
          await sleep(20);
          assert.equal(got.bytes, bySink, 'the sink hears nothing after stop()');
          assertSameBytes(Buffer.concat([got.all, rest.all]), sent, 'sink + stream');
        }),
      );

      it('bytes the stream buffered before start() come first (start() returns them, or data after resume)', T, () =>
        withPair(kind, async (p) => {
          p.local.pause();
          const before = [pattern(3000, 51), pattern(5000, 52), pattern(700 * KiB, 53)];
          for (const c of before) {
            p.peer.write(c);
            await sleep(10); // separate reads: several chunks in the stream's buffer
          }
          // The stream's buffer fills to its high-water mark, the rest waits in the kernel.
          await waitFor(() => p.local.readableLength >= p.local.readableHighWaterMark, 5_000, "the stream's buffer fills");
          await sleep(20);
          const io = socketIo(p.local, mode);
          const s = new Sink();
          const early = io.start(s);
          if (mode === 'handle') assert.ok(early !== null && early.length >= p.local.readableHighWaterMark, 'start() returns the buffered bytes');
          else assert.equal(early, null);
          const got = new Received();
          if (early !== null) got.add(early);
          io.resume();
          const after = pattern(300 * KiB, 54);
          await sendInPieces(p.peer, after, 55);
          const want = Buffer.concat([...before, after]);
          await waitFor(() => got.bytes + s.bytes >= want.length, 10_000, 'everything');
          await sleep(20);
          assertSameBytes(Buffer.concat([got.all, s.all]), want, 'early + sink');
        }),
      );

      it("a write the stream still has in flight before start() is not overtaken by the I/O's writes", T, () =>
        withPair(kind, async (p) => {
          p.peer.pause();
          const byStream = pattern(8 * MiB, 61);
          p.local.write(byStream);
          assert.ok(p.local.writableLength > 0, "precondition: the stream's write is still in flight");
          const io = socketIo(p.local, mode);
          started(io);
          const byIo: Buffer[] = [];
          for (let i = 0; i < 200; i++) {
            const c = pattern(100 + i, 62 + i);
            byIo.push(c);
            io.write(c);
          }
          const batch = [pattern(5000, 7), pattern(64 * KiB, 8)];
          byIo.push(...batch);
          io.writeAll(batch);
          const got = new Received();
          p.peer.on('data', got.add);
          p.peer.resume();
          const want = Buffer.concat([byStream, ...byIo]);
          await got.reach(want.length, 'peer');
          await sleep(20);
          assertSameBytes(got.all, want, "peer: the stream's bytes, then the I/O's");
        }),
      );

      it("EOF: the sink has everything, then the socket emits 'end' and 'close' (no error)", T, () =>
        withPair(kind, async (p) => {
          const io = socketIo(p.local, mode);
          const s = started(io);
          const events: string[] = [];
          let atEnd = -1;
          p.local.on('end', () => {
            atEnd = s.bytes;
            events.push('end');
          });
          p.local.on('error', (e: NodeJS.ErrnoException) => events.push(`error:${e.code}`));
          const closed = closeOf(p.local).then(() => events.push('close'));
          const sent = pattern(600 * KiB, 71);
          await sendInPieces(p.peer, sent, 72);
          p.peer.end();
          await closed;
          assert.deepEqual(events, ['end', 'close']);
          assert.equal(atEnd, sent.length, "the sink had all the data at 'end'");
          assertSameBytes(s.all, sent, 'sink');
        }),
      );

      it("peer reset: 'error' ECONNRESET then 'close', as the stream path reports it", T, () =>
        withPair(kind, async (p) => {
          const io = socketIo(p.local, mode);
          const s = started(io);
          const events: string[] = [];
          p.local.on('end', () => events.push('end'));
          p.local.on('error', (e: NodeJS.ErrnoException) => events.push(`error:${e.code}`));
          const closed = closeOf(p.local).then((hadError) => events.push(`close:${String(hadError)}`));
          const sent = pattern(10 * KiB, 81);
          p.peer.write(sent);
          await s.reach(sent.length, 'sink');
          p.peerRaw.resetAndDestroy();
          await closed;
          assert.deepEqual(events, ['error:ECONNRESET', 'close:true']);
        }),
      );

      it("stop(): the socket's own 'data' listeners get what follows; a stream write after whenFlushed follows the I/O's bytes", T, () =>
        withPair(kind, async (p) => {
          const io = socketIo(p.local, mode);
          const s = started(io);
          const got = new Received();
          p.peer.on('data', got.add);
          const a = pattern(20 * KiB, 91);
          p.peer.write(a);
          await s.reach(a.length, 'sink');
          const byIo = [pattern(2 * MiB, 92), pattern(3000, 93)];
          for (const c of byIo) io.write(c);
          if (mode === 'handle' && kind === 'tls') assert.equal(io.busy, true, 'TLS: the write is in flight');
          io.pause(); // stop() must hand back a reading socket even so
          io.stop();
          const byStreamListener = new Received();
          p.local.on('data', byStreamListener.add);
          const b = pattern(300 * KiB, 94);
          await sendInPieces(p.peer, b, 95);
          await byStreamListener.reach(b.length, "the socket's 'data' listener");
          assertSameBytes(byStreamListener.all, b, "socket 'data' after stop()");
          assert.equal(s.bytes, a.length, 'the sink hears nothing after stop()');
          const byStream = pattern(MiB, 96);
          let flushed = false;
          io.whenFlushed(() => {
            flushed = true;
            assert.equal(io.busy, false, 'whenFlushed: nothing in flight');
            p.local.write(byStream);
          });
          const want = Buffer.concat([...byIo, byStream]);
          await got.reach(want.length, 'peer');
          assert.ok(flushed);
          await sleep(20);
          assertSameBytes(got.all, want, "peer: the I/O's bytes, then the stream's");
        }),
      );

      it('writes to a socket the peer reset: no crash, whenFlushed still runs, the socket closes', T, () =>
        withPair(kind, async (p) => {
          const io = socketIo(p.local, mode);
          started(io);
          io.pause(); // the write path, not a read, finds out
          p.peer.pause();
          let flushes = 0;
          for (let i = 0; i < 8; i++) io.write(pattern(MiB, 200 + i));
          io.whenFlushed(() => flushes++);
          await sleep(20);
          p.peer.destroy(); // unread data: the kernel answers with a reset
          if (p.peerRaw !== p.peer) p.peerRaw.destroy();
          const closed = closeOf(p.local);
          for (let i = 0; i < 50 && !p.local.destroyed; i++) {
            io.write(pattern(64 * KiB, 300 + i));
            await sleep(10);
          }
          await closed;
          io.write(pattern(1000, 400)); // after the close: dropped, no throw
          io.whenFlushed(() => flushes++);
          await waitFor(() => flushes === 2, 5_000, `whenFlushed callbacks (ran ${flushes} of 2)`);
          for (const e of p.localErrors) assert.ok(['EPIPE', 'ECONNRESET'].includes(e.code ?? ''), `error ${e.code}`);
        }),
      );

      it('destroying the socket under a write in flight: whenFlushed still runs', T, () =>
        withPair(kind, async (p) => {
          const io = socketIo(p.local, mode);
          started(io);
          p.peer.pause();
          for (let i = 0; i < 8; i++) io.write(pattern(MiB, 500 + i));
          assert.ok(io.pendingBytes > 0, 'precondition: a write is pending');
          let flushed = false;
          io.whenFlushed(() => (flushed = true));
          const closed = closeOf(p.local);
          p.local.destroy();
          await closed;
          await waitFor(() => flushed, 5_000, 'whenFlushed after destroy');
          assert.equal(io.busy, false);
        }),
      );
    });
  }
}
