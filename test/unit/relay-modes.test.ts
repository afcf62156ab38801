/**
 * SessionRelay and TransactionRelay driven by bytes: in-memory Duplex streams stand in for the
 * client socket and the pooled backend's socket, a fake pool hands out and takes back that backend,
 * and a host records how the session ends. No network.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { socketIo, type SocketIo } from '../../src/net/socket-io.js';
import { pino } from 'pino';
import { SessionRelay } from '../../src/session/relay/session-relay.js';
import { TransactionRelay } from '../../src/session/relay/transaction-relay.js';
import type { Relay, RelayHost, RelaySetup } from '../../src/session/relay/relay.js';
import { Metrics } from '../../src/observability/metrics.js';
import { PgError } from '../../src/errors.js';
import type { AuditEvent } from '../../src/audit/record.js';
import type { CloseReason, Notice } from '../../src/session/types.js';
import { encodeFrame, cstring } from '../../src/protocol/frame.js';
import { encodeErrorResponse, encodeReadyForQuery } from '../../src/protocol/backend.js';
import { encodeQuery, TERMINATE } from '../../src/protocol/frontend.js';
import { Frontend, TxStatus } from '../../src/protocol/codes.js';
import { decodeError } from '../support/wire.js';
import { StatementAudit } from '../../src/session/relay/statement-audit.js';

// ---------------------------------------------------------------- frames

const query = (sql: string): Buffer => encodeQuery(sql);
const sync = (): Buffer => encodeFrame(Frontend.Sync);
const parse = (sql: string): Buffer => encodeFrame(Frontend.Parse, cstring(''), cstring(sql), Buffer.alloc(2));
const bind = (): Buffer => encodeFrame(Frontend.Bind, cstring(''), cstring(''), Buffer.alloc(6));
const execute = (): Buffer => encodeFrame(Frontend.Execute, cstring(''), Buffer.alloc(4));
const commandComplete = (tag: string): Buffer => encodeFrame(0x43 /* C */, cstring(tag));
const rfqI = (): Buffer => encodeReadyForQuery(TxStatus.Idle);
const rfqT = (): Buffer => encodeReadyForQuery(TxStatus.InTransaction);
const EMPTY = Buffer.alloc(0);

// ---------------------------------------------------------------- stand-ins

/** A socket stand-in: records what is written to it; `push` plays bytes arriving from the peer. */
class MemorySocket extends Duplex {
  readonly written: Buffer[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.written.push(Buffer.from(chunk));
    cb();
  }
  override _read(): void {
    // Bytes arrive through push().
  }
  get bytes(): Buffer {
    return Buffer.concat(this.written);
  }
  asSocket(): Socket {
    return this as unknown as Socket;
  }
  /** The stream path's I/O over this socket, as a relay takes its client. */
  asIo(): SocketIo {
    return socketIo(this.asSocket(), 'stream');
  }
}

/** What relay.ts uses of a pooled backend. */
class FakeBackend {
  readonly socket = new MemorySocket();
  readonly processId = 4242;
  readonly prepared = new Set<string>();
  io: SocketIo | null = null;
  readonly conn = { secretKey: Buffer.alloc(4, 7), txStatus: TxStatus.Idle, parameters: new Map<string, string>(), tlsVersion: null, socket: this.socket };
  cancels = 0;
  private holder: (() => void) | null = null;
  /** As Backend: the holding relay hears the socket's close. */
  hold(onClose: () => void): void {
    this.holder = onClose;
    this.socket.on('close', onClose);
  }
  unhold(): void {
    if (this.holder !== null) this.socket.removeListener('close', this.holder);
    this.holder = null;
  }
  cancelStarted(): void {
    this.cancels++;
  }
  cancelFinished(): void {
    this.cancels--;
  }
}

interface Release {
  readonly b: FakeBackend;
  readonly reusable: boolean;
  readonly reset: boolean;
}

/** What relay.ts uses of a TenantPool: acquire and release. */
class FakePool {
  readonly backends: FakeBackend[] = [];
  readonly releases: Release[] = [];
  acquires = 0;
  /** The next acquire waits for this (when set). */
  gate: Promise<void> | null = null;

  /** Backends tryAcquireIdle hands out at once (none unless a test puts some here). */
  readonly idle: FakeBackend[] = [];
  tryAcquireIdle(): FakeBackend | null {
    return this.idle.pop() ?? null;
  }
  async acquire(): Promise<FakeBackend> {
    this.acquires++;
    if (this.gate !== null) await this.gate;
    const b = new FakeBackend();
    this.backends.push(b);
    return b;
  }
  release(b: FakeBackend, reusable: boolean, reset: boolean): void {
    this.releases.push({ b, reusable, reset });
  }
}

/** The session, as far as the relay sees it: it records the one end (and stops the relay, as the session does). */
class Host implements RelayHost {
  readonly id = 'test-session';
  readonly ends: { reason: CloseReason; notice: Notice; detail: string | undefined }[] = [];
  readonly fails: unknown[] = [];
  readonly limits: string[] = [];
  relay: Relay | null = null;

  end(reason: CloseReason, notice: Notice, detail?: string): void {
    this.ends.push({ reason, notice, detail });
    this.relay?.stop();
  }
  fail(err: unknown): void {
    this.fails.push(err);
    this.relay?.releaseBackend();
    this.relay?.stop();
  }
  readonly audited: AuditEvent[] = [];
  audit(e: AuditEvent): void {
    this.audited.push(e);
  }
  auditDurable(e: AuditEvent): Promise<void> {
    this.audited.push(e);
    return Promise.resolve();
  }
  noteLimit(limit: string): void {
    this.limits.push(limit);
  }
}

function setup(pool: FakePool, sessionState: 'pin' | 'refuse' = 'pin', audit: RelaySetup['audit'] = null): RelaySetup {
  const ctx = { metrics: new Metrics(), log: pino({ level: 'silent' }), relayIo: 'stream', config: {}, upstreamTarget: () => ({}) };
  const tenant = { id: 'acme', limits: { maxMessageBytes: 1 << 20 }, pool: { sessionState } };
  return {
    ctx: ctx as unknown as RelaySetup['ctx'],
    tenant: tenant as unknown as RelaySetup['tenant'],
    pool: pool as unknown as RelaySetup['pool'],
    poolKey: 'acme/app/app',
    login: {} as unknown as RelaySetup['login'],
    txStatus: TxStatus.Idle,
    rates: null,
    audit,
    bytesBefore: 0,
  };
}

/** Lets stream events and promise callbacks run. */
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

function sessionMode(): { relay: SessionRelay; host: Host; pool: FakePool; client: MemorySocket; backend: FakeBackend } {
  const pool = new FakePool();
  const host = new Host();
  const client = new MemorySocket();
  const backend = new FakeBackend();
  const relay = new SessionRelay(host, client.asIo(), setup(pool));
  host.relay = relay;
  relay.start(backend as unknown as Parameters<SessionRelay['start']>[0], EMPTY);
  return { relay, host, pool, client, backend };
}

function transactionMode(sessionState: 'pin' | 'refuse' = 'pin'): { relay: TransactionRelay; host: Host; pool: FakePool; client: MemorySocket } {
  const pool = new FakePool();
  const host = new Host();
  const client = new MemorySocket();
  const relay = new TransactionRelay(host, client.asIo(), setup(pool, sessionState));
  host.relay = relay;
  relay.start(null, EMPTY);
  return { relay, host, pool, client };
}

function assertProtocolViolation(err: unknown, message: string): void {
  assert.ok(err instanceof PgError, `a PgError, got ${String(err)}`);
  assert.equal(err.sqlstate, '08P01');
  assert.equal(err.message, message);
  assert.equal(err.severity, 'FATAL');
  // As the client would hear it.
  const wire = decodeError(err.toFrame().subarray(5));
  assert.equal(wire.code, '08P01');
  assert.equal(wire.message, message);
}

// ---------------------------------------------------------------- session mode

describe('SessionRelay', () => {
  it('forwards client bytes to the backend unchanged, and counts them', () => {
    const { relay, backend, host } = sessionMode();
    const chunk = Buffer.concat([query('SELECT 1'), parse('SELECT $1'), bind(), execute(), sync()]);
    relay.onClientData(chunk);
    assert.deepEqual(backend.socket.bytes, chunk);
    assert.equal(relay.bytesIn, chunk.length);
    assert.equal(relay.state.rfqExpected, 2);
    assert.deepEqual(host.ends, []);
    assert.deepEqual(host.fails, []);
    assert.deepEqual(host.audited, [], 'statement audit is off');
  });

  it('forwards a frame split at every offset, byte for byte', () => {
    const frame = query('SELECT now()');
    for (let cut = 1; cut < frame.length; cut++) {
      const { relay, backend } = sessionMode();
      relay.onClientData(frame.subarray(0, cut));
      assert.deepEqual(backend.socket.bytes, frame.subarray(0, cut), 'scanned, not buffered');
      relay.onClientData(frame.subarray(cut));
      assert.deepEqual(backend.socket.bytes, frame);
      assert.equal(relay.state.rfqExpected, 1, `cut ${cut}`);
    }
  });

  it('forwards backend bytes to the client unchanged and tracks the status', async () => {
    const { relay, backend, client } = sessionMode();
    relay.onClientData(query('BEGIN'));
    const reply = Buffer.concat([commandComplete('BEGIN'), rfqT()]);
    backend.socket.push(reply);
    await settle();
    assert.deepEqual(client.bytes, reply);
    assert.equal(relay.bytesOut, reply.length);
    assert.equal(relay.txStatus, TxStatus.InTransaction);
    assert.equal(relay.state.busy, false);
  });

  it('forwards pipelined bytes the client sent behind its login', () => {
    const pool = new FakePool();
    const host = new Host();
    const backend = new FakeBackend();
    const relay = new SessionRelay(host, new MemorySocket().asIo(), setup(pool));
    host.relay = relay;
    const early = query('SELECT 1');
    relay.start(backend as unknown as Parameters<SessionRelay['start']>[0], early);
    assert.deepEqual(backend.socket.bytes, early);
  });

  it('strips a trailing Terminate, then ends with client_terminate (backend owing a reply is not reused)', () => {
    const { relay, backend, host, pool } = sessionMode();
    const q = query('INSERT INTO t VALUES (1)');
    relay.onClientData(Buffer.concat([q, TERMINATE]));
    assert.deepEqual(backend.socket.bytes, q, 'the pooled backend never sees Terminate');
    assert.deepEqual(host.ends, [{ reason: 'client_terminate', notice: 'end', detail: undefined }]);
    assert.equal(pool.releases.length, 1);
    assert.equal(pool.releases[0]!.b, backend);
    assert.equal(pool.releases[0]!.reusable, false, 'a ReadyForQuery is still owed');
    assert.equal(relay.open, false);
  });

  it('a Terminate on its own at idle: nothing forwarded, the backend goes back reusable and reset', async () => {
    const { relay, backend, host, pool } = sessionMode();
    relay.onClientData(query('SELECT 1'));
    backend.socket.push(Buffer.concat([commandComplete('SELECT 1'), rfqI()]));
    await settle();
    const before = backend.socket.bytes.length;
    relay.onClientData(TERMINATE);
    assert.equal(backend.socket.bytes.length, before);
    assert.deepEqual(host.ends, [{ reason: 'client_terminate', notice: 'end', detail: undefined }]);
    assert.deepEqual(
      pool.releases.map((r) => [r.reusable, r.reset]),
      [[true, true]],
    );
  });

  it('a Terminate split across chunks: its first byte went to the backend, so the backend is not reused', () => {
    const { relay, backend, host, pool } = sessionMode();
    relay.onClientData(TERMINATE.subarray(0, 1));
    relay.onClientData(TERMINATE.subarray(1));
    assert.deepEqual(backend.socket.bytes, TERMINATE.subarray(0, 1), 'the scanner forwards bytes as they come');
    assert.deepEqual(
      host.ends.map((e) => e.reason),
      ['client_terminate'],
    );
    assert.equal(pool.releases.length, 1);
    assert.equal(pool.releases[0]!.reusable, false, 'a backend that saw part of a Terminate is closed, not pooled');
  });

  it('a Terminate inside a chunk: what came before it is forwarded, nothing after it', () => {
    const { relay, backend, host } = sessionMode();
    const insert = query('INSERT INTO t VALUES (1)');
    relay.onClientData(Buffer.concat([insert, TERMINATE, sync()]));
    assert.deepEqual(backend.socket.bytes, insert, 'the statement before the Terminate runs, as on PostgreSQL');
    assert.deepEqual(
      host.ends.map((e) => e.reason),
      ['client_terminate'],
    );
    assert.equal(relay.state.rfqExpected, 1, 'nothing after the Terminate is counted');
  });

  it('two Terminates in one chunk: nothing reaches the backend and it goes back reusable', () => {
    const { relay, backend, pool } = sessionMode();
    relay.onClientData(Buffer.concat([TERMINATE, TERMINATE]));
    assert.deepEqual(backend.socket.bytes, EMPTY);
    assert.equal(pool.releases[0]!.reusable, true);
  });

  it('bytes that arrive after the session ended are ignored', () => {
    const { relay, backend, host } = sessionMode();
    host.end('admin', 'none');
    relay.onClientData(query('SELECT 1'));
    assert.deepEqual(backend.socket.bytes, EMPTY);
    assert.deepEqual(host.fails, []);
  });

  it('gives the backend back unusable when the session ends inside a transaction', async () => {
    const { relay, backend, pool } = sessionMode();
    relay.onClientData(query('BEGIN'));
    backend.socket.push(Buffer.concat([commandComplete('BEGIN'), rfqT()]));
    await settle();
    relay.onClientData(TERMINATE);
    assert.deepEqual(
      pool.releases.map((r) => r.reusable),
      [false],
    );
  });

  it('a bad client frame type: the frames before it go, then fail() with 08P01 invalid frontend message type', () => {
    const { relay, backend, host, pool } = sessionMode();
    const good = query('SELECT 1');
    relay.onClientData(Buffer.concat([good, Buffer.from('z\0\0\0\x04'), query('SELECT 2')]));
    assert.deepEqual(backend.socket.bytes, good);
    assert.equal(host.fails.length, 1);
    assertProtocolViolation(host.fails[0], 'invalid frontend message type 122');
    assert.deepEqual(
      pool.releases.map((r) => r.reusable),
      [false],
      'the client stream is broken',
    );
  });

  it('a bad client frame length fails with 08P01 invalid message length', () => {
    const { relay, backend, host } = sessionMode();
    relay.onClientData(Buffer.from([Frontend.Query, 0, 0, 0, 3]));
    assert.equal(backend.socket.bytes.length, 0);
    assertProtocolViolation(host.fails[0], 'invalid message length');
  });

  it('a backend that closes ends the session with backend_lost and 08006 at a boundary', async () => {
    const { backend, host, pool } = sessionMode();
    backend.socket.destroy();
    await settle();
    assert.equal(host.ends.length, 1);
    assert.equal(host.ends[0]!.reason, 'backend_lost');
    const notice = host.ends[0]!.notice;
    assert.ok(Buffer.isBuffer(notice));
    assert.equal(decodeError(notice.subarray(5)).code, '08006');
    assert.deepEqual(
      pool.releases.map((r) => r.reusable),
      [false],
    );
  });

  it('a ReadyForQuery nobody asked for: nothing of it reaches the client, backend_lost with 08006, the backend is closed', async () => {
    const { relay, backend, host, pool, client } = sessionMode();
    relay.onClientData(query('SELECT 1'));
    backend.socket.push(Buffer.concat([commandComplete('SELECT 1'), rfqI()]));
    await settle();
    const answered = client.bytes.length;
    assert.equal(host.ends.length, 0, 'the answer to the query passes');
    // A hostile server: another ReadyForQuery, then the reply to a query the client has not sent yet.
    backend.socket.push(Buffer.concat([rfqI(), commandComplete('SELECT 1')]));
    await settle();
    assert.equal(client.bytes.length, answered, 'none of it is forwarded');
    assert.deepEqual(
      host.ends.map((e) => e.reason),
      ['backend_lost'],
    );
    const notice = host.ends[0]!.notice;
    assert.ok(Buffer.isBuffer(notice));
    assert.equal(decodeError(notice.subarray(5)).code, '08006');
    assert.deepEqual(
      pool.releases.map((r) => r.reusable),
      [false],
    );
  });

  it('a backend that closes after its own FATAL: backend_terminated, the client already has the error', async () => {
    const { backend, host, client } = sessionMode();
    const fatal = encodeErrorResponse({ severity: 'FATAL', code: '57P01', message: 'terminating connection due to administrator command' });
    backend.socket.push(fatal);
    await settle();
    backend.socket.destroy();
    await settle();
    assert.deepEqual(client.bytes, fatal);
    assert.deepEqual(host.ends, [{ reason: 'backend_terminated', notice: 'end', detail: 'backend_terminated:57P01' }]);
  });

  it('a backend frame of an unknown type: what was well-formed goes out, then backend_lost', async () => {
    const { backend, host, client, pool } = sessionMode();
    const good = commandComplete('SELECT 1');
    backend.socket.push(Buffer.concat([good, Buffer.from('!\0\0\0\x04')]));
    await settle();
    assert.deepEqual(client.bytes, good);
    assert.equal(host.ends[0]!.reason, 'backend_lost');
    assert.ok(Buffer.isBuffer(host.ends[0]!.notice), 'at a boundary: the client hears 08006');
    assert.deepEqual(
      pool.releases.map((r) => r.reusable),
      [false],
    );
  });
});

// ---------------------------------------------------------------- transaction mode

describe('TransactionRelay', () => {
  it('acquires a backend on the first message, holding the client meanwhile, then sends it', async () => {
    const { relay, pool, client } = transactionMode();
    assert.equal(pool.acquires, 0, 'no backend while idle');
    let open!: () => void;
    pool.gate = new Promise<void>((r) => (open = r));
    const q = query('SELECT 1');
    relay.onClientData(q);
    assert.equal(pool.acquires, 1);
    assert.equal(client.isPaused(), true, 'held while acquiring');
    relay.onClientData(sync()); // may still arrive: waits with the query, no second acquire
    assert.equal(pool.acquires, 1);
    open();
    await settle();
    const b = pool.backends[0]!;
    assert.deepEqual(b.socket.bytes, Buffer.concat([q, sync()]));
    assert.equal(client.isPaused(), false);
    assert.equal(relay.backend, b);
  });

  it('takes an idle backend at once when the pool has one: no acquire, no hold, the frames go out in the same call', () => {
    const { relay, pool, client } = transactionMode();
    const idle = new FakeBackend();
    pool.idle.push(idle);
    const q = Buffer.concat([query('SELECT 1'), query('SELECT 2')]);
    relay.onClientData(q);
    assert.equal(pool.acquires, 0, 'the promise path is not taken');
    assert.equal(relay.backend, idle);
    assert.deepEqual(idle.socket.bytes, q, 'sent before onClientData returned');
    assert.equal(client.isPaused(), false, 'never held');
    // Its reply frees it, and the next transaction takes the one the pool offers next.
    idle.socket.push(Buffer.concat([commandComplete('SELECT 1'), rfqI(), commandComplete('SELECT 1'), rfqI()]));
    return settle().then(() => {
      assert.equal(relay.backend, null);
      assert.deepEqual(pool.releases.map((r) => [r.b, r.reusable, r.reset]), [[idle, true, false]]);
    });
  });

  it("gives the backend back (reusable, no reset) after ReadyForQuery 'I' with nothing owed", async () => {
    const { relay, pool, client } = transactionMode();
    relay.onClientData(query('SELECT 1'));
    await settle();
    const b = pool.backends[0]!;
    const reply = Buffer.concat([encodeFrame(0x54, Buffer.from([0, 0])), commandComplete('SELECT 0'), rfqI()]);
    b.socket.push(reply);
    await settle();
    assert.deepEqual(client.bytes, reply);
    assert.deepEqual(
      pool.releases.map((r) => [r.b, r.reusable, r.reset]),
      [[b, true, false]],
    );
    assert.equal(relay.backend, null);
    assert.equal(b.socket.isPaused(), false, 'the pool reads it from now on');
  });

  it('a ReadyForQuery nobody asked for ends the session (backend_lost) instead of freeing the backend early', async () => {
    const { relay, host, pool, client } = transactionMode();
    relay.onClientData(query('BEGIN'));
    await settle();
    const b = pool.backends[0]!;
    b.socket.push(Buffer.concat([commandComplete('BEGIN'), rfqT(), rfqI()]));
    await settle();
    assert.deepEqual(
      host.ends.map((e) => e.reason),
      ['backend_lost'],
    );
    assert.deepEqual(client.bytes, EMPTY, 'nothing of the chunk is forwarded');
    assert.deepEqual(
      pool.releases.map((r) => r.reusable),
      [false],
    );
  });

  it('keeps the backend while owed replies remain', async () => {
    const { relay, pool } = transactionMode();
    relay.onClientData(Buffer.concat([query('SELECT 1'), query('SELECT 2')]));
    await settle();
    const b = pool.backends[0]!;
    b.socket.push(Buffer.concat([commandComplete('SELECT 1'), rfqI()]));
    await settle();
    assert.equal(pool.releases.length, 0, 'the second ReadyForQuery is still owed');
    b.socket.push(Buffer.concat([commandComplete('SELECT 1'), rfqI()]));
    await settle();
    assert.equal(pool.releases.length, 1);
  });

  it("keeps the backend while 'T', across messages, and gives it back at 'I'", async () => {
    const { relay, pool } = transactionMode();
    relay.onClientData(query('BEGIN'));
    await settle();
    const b = pool.backends[0]!;
    b.socket.push(Buffer.concat([commandComplete('BEGIN'), rfqT()]));
    await settle();
    assert.equal(pool.releases.length, 0);
    assert.equal(relay.backend, b);
    relay.onClientData(query('COMMIT'));
    assert.equal(pool.acquires, 1, 'the same backend serves the transaction');
    assert.deepEqual(b.socket.bytes, Buffer.concat([query('BEGIN'), query('COMMIT')]));
    b.socket.push(Buffer.concat([commandComplete('COMMIT'), rfqI()]));
    await settle();
    assert.deepEqual(
      pool.releases.map((r) => r.reusable),
      [true],
    );
    relay.onClientData(query('SELECT 1'));
    assert.equal(pool.acquires, 2, 'the next transaction takes a backend again');
  });

  it('keeps the backend for an unsynced extended-protocol batch', async () => {
    const { relay, pool } = transactionMode();
    relay.onClientData(Buffer.concat([parse('SELECT 1'), bind(), execute(), encodeFrame(Frontend.Flush)]));
    await settle();
    const b = pool.backends[0]!;
    b.socket.push(Buffer.concat([encodeFrame(0x31), encodeFrame(0x32), commandComplete('SELECT 1')]));
    await settle();
    assert.equal(pool.releases.length, 0);
    relay.onClientData(sync());
    b.socket.push(rfqI());
    await settle();
    assert.deepEqual(
      pool.releases.map((r) => r.reusable),
      [true],
    );
  });

  it('pins the backend on a statement that leaves session state (session_state = pin)', async () => {
    const { relay, pool } = transactionMode('pin');
    relay.onClientData(query('SET search_path = app'));
    await settle();
    const b = pool.backends[0]!;
    assert.deepEqual(b.socket.bytes, query('SET search_path = app'));
    b.socket.push(Buffer.concat([commandComplete('SET'), rfqI()]));
    await settle();
    assert.equal(relay.pinned, true);
    assert.equal(pool.releases.length, 0);
    assert.equal(relay.backend, b);
  });

  it('refuses such a statement through the server (session_state = refuse), and stays unpinned', async () => {
    const { relay, pool } = transactionMode('refuse');
    relay.onClientData(query('SET search_path = app'));
    await settle();
    const sent = pool.backends[0]!.socket.bytes;
    assert.equal(sent[0], Frontend.Query);
    assert.match(sent.toString('utf8', 5), /ERRCODE = 'feature_not_supported'/);
    assert.doesNotMatch(sent.toString('utf8', 5), /search_path/);
    assert.equal(relay.pinned, false);
  });

  it('Terminate at idle: no backend taken, ends with client_terminate', () => {
    const { relay, pool, host } = transactionMode();
    relay.onClientData(TERMINATE);
    assert.equal(pool.acquires, 0);
    assert.deepEqual(host.ends, [{ reason: 'client_terminate', notice: 'end', detail: undefined }]);
  });

  it('Terminate while holding a backend: not forwarded, the backend is given back', async () => {
    const { relay, pool, host } = transactionMode();
    relay.onClientData(query('BEGIN'));
    await settle();
    const b = pool.backends[0]!;
    b.socket.push(Buffer.concat([commandComplete('BEGIN'), rfqT()]));
    await settle();
    relay.onClientData(TERMINATE);
    assert.deepEqual(b.socket.bytes, query('BEGIN'));
    assert.equal(host.ends[0]!.reason, 'client_terminate');
    assert.deepEqual(
      pool.releases.map((r) => r.reusable),
      [false],
      'inside a transaction: not reusable',
    );
  });

  it('a bad client frame type fails with 08P01 invalid frontend message type', async () => {
    const { relay, host, pool } = transactionMode();
    relay.onClientData(query('BEGIN'));
    await settle();
    const b = pool.backends[0]!;
    b.socket.push(Buffer.concat([commandComplete('BEGIN'), rfqT()]));
    await settle();
    const good = query('SELECT 1');
    relay.onClientData(Buffer.concat([good, Buffer.from('\x01\0\0\0\x04')]));
    assert.deepEqual(b.socket.bytes, Buffer.concat([query('BEGIN'), good]), 'what came before the bad frame still goes');
    assertProtocolViolation(host.fails[0], 'invalid frontend message type 1');
  });

  it('bytes that arrive after the session ended take no backend', async () => {
    const { relay, host, pool } = transactionMode();
    host.end('admin', 'none');
    relay.onClientData(query('SELECT 1'));
    await settle();
    assert.equal(pool.acquires, 0, 'a closed session never queues for a backend');
    assert.deepEqual(host.fails, []);
  });

  it('statements before a Terminate, sent while no backend was held, still run; that backend is then closed', async () => {
    const { relay, pool, host } = transactionMode();
    let open!: () => void;
    pool.gate = new Promise<void>((r) => (open = r));
    const insert = query('INSERT INTO t VALUES (1)');
    relay.onClientData(Buffer.concat([insert, TERMINATE]));
    assert.deepEqual(
      host.ends.map((e) => e.reason),
      ['client_terminate'],
      'the session ends at the Terminate',
    );
    open();
    await settle();
    assert.equal(pool.backends.length, 1);
    assert.deepEqual(pool.backends[0]!.socket.bytes, insert, 'the INSERT reaches a backend, as it would reach PostgreSQL');
    assert.deepEqual(
      pool.releases.map((r) => r.reusable),
      [false],
      'nobody reads its reply: closed, not pooled',
    );
  });

  it('does not take a backend for a session that ended while acquiring; gives it straight back', async () => {
    const { relay, pool, host } = transactionMode();
    let open!: () => void;
    pool.gate = new Promise<void>((r) => (open = r));
    relay.onClientData(query('SELECT 1'));
    host.end('admin', 'end');
    open();
    await settle();
    assert.equal(pool.backends.length, 1);
    assert.deepEqual(
      pool.releases.map((r) => [r.b, r.reusable]),
      [[pool.backends[0], true]],
    );
    assert.equal(pool.backends[0]!.socket.bytes.length, 0, 'nothing was sent on it');
  });
});

// ---------------------------------------------------------------- session mode with statement audit

describe('SessionRelay with statement audit', () => {
  function audited(failClosed: boolean): { relay: SessionRelay; host: Host; client: MemorySocket; backend: FakeBackend; durable: (() => void)[] } {
    let ei = 0;
    const auditor = new StatementAudit({ params: 'full', queryMaxBytes: 1024, paramMaxBytes: 64 }, () => ++ei);
    const pool = new FakePool();
    const durable: (() => void)[] = [];
    const host = new Host();
    host.auditDurable = (e: AuditEvent): Promise<void> => {
      host.audited.push(e);
      return new Promise<void>((r) => durable.push(r));
    };
    const client = new MemorySocket();
    const backend = new FakeBackend();
    const relay = new SessionRelay(host, client.asIo(), setup(pool, 'pin', { auditor, failClosed, readOnly: false }));
    host.relay = relay;
    relay.start(backend as unknown as Parameters<SessionRelay['start']>[0], EMPTY);
    return { relay, host, client, backend, durable };
  }

  it('records the statement, forwards it, and matches the reply the client receives', async () => {
    const { relay, host, backend } = audited(false);
    relay.onClientData(query('UPDATE t SET x = 1'));
    assert.deepEqual(backend.socket.bytes, query('UPDATE t SET x = 1'));
    assert.deepEqual(
      host.audited.map((e) => e['event']),
      ['session.query'],
    );
    backend.socket.push(Buffer.concat([commandComplete('UPDATE 3'), rfqI()]));
    await settle();
    assert.deepEqual(
      host.audited.map((e) => e['event']),
      ['session.query', 'session.query_result'],
    );
    assert.equal(host.audited[1]!['command_tag'], 'UPDATE 3');
    assert.equal(host.audited[1]!['ref'], host.audited[0]!['ei']);
  });

  it('fail closed: the client is held and nothing reaches the backend until the record is durable', async () => {
    const { relay, host, client, backend, durable } = audited(true);
    relay.onClientData(query('DELETE FROM t'));
    assert.equal(backend.socket.bytes.length, 0);
    assert.equal(client.isPaused(), true);
    assert.equal(host.audited.length, 1);
    durable[0]!();
    await settle();
    assert.deepEqual(backend.socket.bytes, query('DELETE FROM t'));
    assert.equal(client.isPaused(), false);
  });

  it('fail closed: a failed durable write ends the session with audit_unavailable, nothing forwarded', async () => {
    const { relay, host, backend } = audited(true);
    host.auditDurable = (): Promise<void> => Promise.reject(new Error('store down'));
    relay.onClientData(query('DELETE FROM t'));
    await settle();
    assert.equal(backend.socket.bytes.length, 0);
    assert.equal(host.ends.length, 1);
    assert.equal(host.ends[0]!.reason, 'audit_unavailable');
    const notice = host.ends[0]!.notice;
    assert.ok(Buffer.isBuffer(notice), 'the client hears why, at a boundary');
    assert.equal(decodeError(notice.subarray(5)).severity, 'FATAL');
  });
});
