/**
 * The relay's socket I/O: bytes in and out of one socket, for whichever relay holds it. Two ways
 * behind one interface. `HandleIo` reads through the native stream handle's `onread` and writes
 * with its `writeBuffer`/`writev`, under Node's stream machinery (`stream.Readable`/`Writable`,
 * EventEmitter, nextTick per write): the same native calls a `net.Socket` makes, minus the JS
 * between them. `StreamIo` is the plain `data`/`write`/`drain` path, the fallback where the
 * handle's internals are not what this file expects, and forced by `[server] relay_io = "stream"`.
 *
 * What `HandleIo` keeps exactly as the stream path does:
 * - order of bytes: one write in flight at a time (a TLSWrap accepts no second write before the
 *   first completes, and completes every write asynchronously); what is written meanwhile waits in
 *   a queue and leaves as one `writev` when the write in flight completes. Before its first write it
 *   lets a write the stream still holds finish, so nothing overtakes it;
 * - buffers: a buffer handed to a write is kept referenced by the write request until it completes;
 *   read buffers are fresh per read (the handle's own allocation), so a sink may keep them;
 * - backpressure: `write` says false past the socket's high-water mark, and the sink hears `onDrain`
 *   once everything has gone out, as 'drain';
 * - end of stream and read errors: anything but data is handed to the stream's own `onread`, so
 *   'end', 'error' and 'close' happen as they always did, in the same order (an end of stream behind
 *   bytes held while paused waits for them). A failed write destroys the socket: 'close' as on the
 *   stream path, without the 'error' (EPIPE, ECONNRESET) the stream would emit first, which the
 *   relay's owners only log;
 * - handing back: `stop` restores the stream's `onread` with the handle reading, so the next owner
 *   (the pool, the session's close) finds a normal socket; the close waits (`whenFlushed`) for the
 *   write in flight, since the stream may not write under it.
 *
 * @see https://github.com/nodejs/node/blob/v20.x/lib/internal/stream_base_commons.js (onStreamRead, writeGeneric)
 */
import type { Socket } from 'node:net';

/** Who hears what a socket reads, and that its writes drained. */
export interface IoSink {
  /** Bytes read; the buffer is the sink's to keep. */
  onData(chunk: Buffer): void;
  /** Everything written has gone out after `write` said the socket was full. */
  onDrain(): void;
}

export interface SocketIo {
  readonly socket: Socket;
  /** "handle" or "stream": which way this socket's bytes go. */
  readonly mode: RelayIoMode;
  /**
   * Reads go to `sink` from now on (as they come, unless paused). Returns what the socket had read
   * before and nobody consumed (a paused stream's buffer), for the sink to take first, or null.
   */
  start(sink: IoSink): Buffer | null;
  /** Reads go back to the socket's stream, which reads on; writes in flight still complete. */
  stop(): void;
  pause(): void;
  resume(): void;
  /** Queues `chunk`; false once the socket holds more than its high-water mark. */
  write(chunk: Buffer): boolean;
  /** Writes several buffers as one batch (one writev where the socket allows). */
  writeAll(chunks: readonly Buffer[]): boolean;
  /** Bytes written and not yet taken by the kernel (what send_timeout watches). */
  readonly pendingBytes: number;
  /** A write said false and the drain has not come yet. */
  readonly needDrain: boolean;
  /** Calls `fn` once no write is in flight (at once if none is): the stream may then write and end. */
  whenFlushed(fn: () => void): void;
  /** A write of this I/O is in flight or queued: the stream must not write yet (see whenFlushed). */
  readonly busy: boolean;
}

export type RelayIoMode = 'handle' | 'stream';

// ---------------------------------------------------------------- the stream path

class StreamIo implements SocketIo {
  readonly mode = 'stream';
  private sink: IoSink | null = null;
  /** Paused by the owner: stop() resumes, as the handle path reads on after stop. */
  private paused = false;
  private readonly onData = (chunk: Buffer): void => this.sink!.onData(chunk);
  private readonly onDrain = (): void => this.sink!.onDrain();

  constructor(readonly socket: Socket) {}

  start(sink: IoSink): Buffer | null {
    this.sink = sink;
    this.socket.on('data', this.onData);
    this.socket.on('drain', this.onDrain);
    return null; // a paused stream's buffer comes as 'data' once resumed
  }

  stop(): void {
    this.socket.removeListener('data', this.onData);
    this.socket.removeListener('drain', this.onDrain);
    this.sink = null;
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  pause(): void {
    this.paused = true;
    this.socket.pause();
  }

  resume(): void {
    this.paused = false;
    this.socket.resume();
  }

  write(chunk: Buffer): boolean {
    return this.socket.write(chunk);
  }

  writeAll(chunks: readonly Buffer[]): boolean {
    if (chunks.length === 1) return this.socket.write(chunks[0]!);
    const s = this.socket;
    s.cork();
    let ok = true;
    for (const c of chunks) ok = s.write(c);
    s.uncork();
    return ok;
  }

  get pendingBytes(): number {
    return this.socket.writableLength;
  }

  get needDrain(): boolean {
    return this.socket.writableNeedDrain;
  }

  whenFlushed(fn: () => void): void {
    fn(); // the stream orders its own writes
  }

  get busy(): boolean {
    return false;
  }
}

// ---------------------------------------------------------------- the handle path

/** The native stream handle's surface this file relies on (TCPWrap, TLSWrap, JSStreamSocket-backed TLSWrap). */
interface StreamHandle {
  onread: (arrayBuffer: ArrayBuffer) => unknown;
  reading: boolean;
  readStart(): number;
  readStop(): number;
  writeBuffer(req: WriteReq, data: Buffer): number;
  writev(req: WriteReq, chunks: Buffer[], allBuffers: boolean): number;
}

/** A native WriteWrap with the fields Node's own writes set, plus ours. */
interface WriteReq {
  handle: StreamHandle;
  oncomplete: (this: WriteReq, status: number) => void;
  async: boolean;
  bytes: number;
  buffer: Buffer | Buffer[] | null;
  io: HandleIo;
}

interface StreamWrapBinding {
  WriteWrap: new () => WriteReq;
  streamBaseState: Int32Array;
  kReadBytesOrError: number;
  kArrayBufferOffset: number;
  kBytesWritten: number;
  kLastWriteWasAsync: number;
}

/** Node's stream_wrap binding, if it has what HandleIo needs; null: the stream path only. */
const binding: StreamWrapBinding | null = loadBinding();

function loadBinding(): StreamWrapBinding | null {
  try {
    const b = (process as unknown as { binding(name: string): Partial<StreamWrapBinding> }).binding('stream_wrap');
    const ok =
      typeof b.WriteWrap === 'function' &&
      b.streamBaseState instanceof Int32Array &&
      typeof b.kReadBytesOrError === 'number' &&
      typeof b.kArrayBufferOffset === 'number' &&
      typeof b.kBytesWritten === 'number' &&
      typeof b.kLastWriteWasAsync === 'number';
    return ok ? (b as StreamWrapBinding) : null;
  } catch {
    return null;
  }
}

/** Why handle I/O is unavailable in this Node, or null when it is. Checked once at start-up. */
export function handleIoUnavailable(): string | null {
  if (binding === null) return `process.binding('stream_wrap') lacks WriteWrap/streamBaseState in Node ${process.version}`;
  return null;
}

function handleOf(socket: Socket): StreamHandle | null {
  const h = (socket as unknown as { _handle: Partial<StreamHandle> | null | undefined })._handle;
  if (h === null || h === undefined) return null;
  const ok =
    typeof h.onread === 'function' &&
    typeof h.readStart === 'function' &&
    typeof h.readStop === 'function' &&
    typeof h.writeBuffer === 'function' &&
    typeof h.writev === 'function';
  return ok ? (h as StreamHandle) : null;
}

const EMPTY = Buffer.alloc(0);

/** libuv's end of stream (UV__EOF), the same on every platform. */
const UV_EOF = -4095;

/** Node's default writableHighWaterMark for sockets: past it `write` says false, as the stream does. */
const DEFAULT_HIGH_WATER_MARK = 16 * 1024;

function onWriteComplete(this: WriteReq, status: number): void {
  this.io.afterWrite(status);
}

class HandleIo implements SocketIo {
  readonly mode = 'handle';
  private sink: IoSink | null = null;
  /** The stream's own onread, restored by stop() and called for anything but data. */
  private readonly streamOnread: (arrayBuffer: ArrayBuffer) => unknown;
  /** A write is in flight; later writes wait in `queue`. */
  private inFlight = false;
  private inFlightBytes = 0;
  private queue: Buffer[] = [];
  private queuedBytes = 0;
  private wantDrain = false;
  /** An empty stream write marks the end of what the stream wrote before us (see enqueue). */
  private waitingForStream = false;
  private flushed: (() => void)[] | null = null;
  private readonly highWaterMark: number;
  /**
   * Paused by the owner. readStop stops the next read, not the current one: a TLSWrap hands over
   * every record it decrypted from one read in a row, pause or not. What comes meanwhile waits in
   * `held` (and an end of stream or error behind it, in `heldEnd`) for resume, or stop.
   */
  private paused = false;
  private held: Buffer[] = [];
  private heldEnd = 0;
  private deliverScheduled = false;

  constructor(
    readonly socket: Socket,
    private readonly handle: StreamHandle,
    private readonly b: StreamWrapBinding,
  ) {
    this.streamOnread = handle.onread;
    this.highWaterMark = socket.writableHighWaterMark || DEFAULT_HIGH_WATER_MARK;
  }

  /** Reads as the handle delivers them; `this` is the handle, not needed. */
  private readonly onread = (arrayBuffer: ArrayBuffer): unknown => {
    const state = this.b.streamBaseState;
    const nread = state[this.b.kReadBytesOrError]!;
    if (nread > 0) {
      const sink = this.sink;
      const chunk = Buffer.from(arrayBuffer, state[this.b.kArrayBufferOffset], nread);
      if (this.paused || this.held.length > 0) this.held.push(chunk);
      else if (sink !== null) sink.onData(chunk);
      return undefined;
    }
    if (nread === 0) return undefined;
    if (nread === UV_EOF && this.held.length > 0) {
      this.heldEnd = nread; // after the bytes before it; an error, as the stream's, does not wait
      return undefined;
    }
    // End of stream or an error: the stream's own handling ('end', 'error', 'close'), as always.
    return this.streamOnread.call(this.handle, arrayBuffer);
  };

  start(sink: IoSink): Buffer | null {
    this.sink = sink;
    const s = this.socket;
    // A paused stream's read() returns its whole buffer; a flowing one's, one chunk per call.
    let early: Buffer | null = null;
    while (s.readableLength > 0) {
      const c = s.read() as Buffer | null;
      if (c === null) break;
      early = early === null ? c : Buffer.concat([early, c]);
    }
    this.handle.onread = this.onread; // reading stays as it is: the owner pauses or resumes
    return early;
  }

  stop(): void {
    this.sink = null;
    this.paused = false;
    this.handle.onread = this.streamOnread;
    // Held bytes go to the stream as if it had read them, then the end behind them.
    const held = this.held;
    this.held = [];
    for (const c of held) this.replay(c.length, c);
    const end = this.heldEnd;
    this.heldEnd = 0;
    if (end !== 0) {
      this.replay(end, null);
      return;
    }
    // The next owner finds the socket reading, as a stream's is unless its buffer is full.
    if (!this.handle.reading && !this.socket.destroyed) this.readStart();
  }

  pause(): void {
    this.paused = true;
    if (this.handle.reading && !this.socket.destroyed) {
      this.handle.reading = false;
      this.handle.readStop();
    }
  }

  resume(): void {
    if (this.sink === null) return;
    this.paused = false;
    if (this.held.length > 0) {
      // On the next tick, as a stream's resume: the owner is not re-entered from its own resume().
      if (!this.deliverScheduled) {
        this.deliverScheduled = true;
        process.nextTick(this.deliverHeld);
      }
      return;
    }
    if (!this.handle.reading && !this.socket.destroyed) this.readStart();
  }

  private readonly deliverHeld = (): void => {
    this.deliverScheduled = false;
    if (this.socket.destroyed) this.held = []; // as a destroyed stream's buffer: never delivered
    while (!this.paused && this.sink !== null && this.held.length > 0) this.sink.onData(this.held.shift()!);
    if (this.paused || this.sink === null || this.held.length > 0 || this.socket.destroyed) return;
    const end = this.heldEnd;
    this.heldEnd = 0;
    if (end !== 0) this.replay(end, null);
    else if (!this.handle.reading) this.readStart();
  };

  /** Hands a read to the stream's own onread, as the handle would have: `nread` bytes of `chunk`, or an end/error. */
  private replay(nread: number, chunk: Buffer | null): void {
    const state = this.b.streamBaseState;
    state[this.b.kReadBytesOrError] = nread;
    state[this.b.kArrayBufferOffset] = chunk === null ? 0 : chunk.byteOffset;
    this.streamOnread.call(this.handle, (chunk?.buffer ?? new ArrayBuffer(0)) as ArrayBuffer);
  }

  private readStart(): void {
    this.handle.reading = true;
    const err = this.handle.readStart();
    if (err !== 0) this.socket.destroy();
  }

  write(chunk: Buffer): boolean {
    if (chunk.length === 0) return this.answer();
    if (this.inFlight || this.queue.length > 0 || this.socket.writableLength > 0) this.enqueue(chunk);
    else this.submit(chunk, null);
    return this.answer();
  }

  writeAll(chunks: readonly Buffer[]): boolean {
    // Nothing to write (every frame of a batch answered by the relay itself): a writev of no
    // buffers fails libuv's assertion and aborts the process.
    if (chunks.length === 0) return this.answer();
    if (chunks.length === 1) return this.write(chunks[0]!);
    if (this.inFlight || this.queue.length > 0 || this.socket.writableLength > 0) for (const c of chunks) this.enqueue(c);
    else this.submit(null, chunks.slice());
    return this.answer();
  }

  get pendingBytes(): number {
    return this.inFlightBytes + this.queuedBytes;
  }

  get needDrain(): boolean {
    return this.wantDrain;
  }

  whenFlushed(fn: () => void): void {
    if (!this.busy) fn();
    else (this.flushed ??= []).push(fn);
  }

  get busy(): boolean {
    return this.inFlight || this.queue.length > 0 || this.waitingForStream;
  }

  private answer(): boolean {
    if (this.inFlightBytes + this.queuedBytes < this.highWaterMark) return true;
    this.wantDrain = true;
    return false;
  }

  private enqueue(chunk: Buffer): void {
    this.queue.push(chunk);
    this.queuedBytes += chunk.length;
    // The stream still holds a write (made before the relay took the socket): ours follow it. One
    // empty write behind it tells when it is done; the stream writes nothing after that.
    if (!this.inFlight && !this.waitingForStream) {
      this.waitingForStream = true;
      this.socket.write(EMPTY, this.afterStreamWrites);
    }
  }

  private readonly afterStreamWrites = (): void => {
    this.waitingForStream = false;
    if (!this.inFlight && this.queue.length > 0) this.flushQueue();
    this.settle();
  };

  /** One native write: a buffer, or several as a writev. */
  private submit(one: Buffer | null, many: Buffer[] | null): void {
    if (this.socket.destroyed) return;
    const b = this.b;
    const req = new b.WriteWrap();
    req.handle = this.handle;
    req.oncomplete = onWriteComplete;
    req.async = false;
    req.bytes = 0;
    req.io = this;
    const err = one !== null ? this.handle.writeBuffer(req, one) : this.handle.writev(req, many!, true);
    if (err !== 0) {
      this.socket.destroy();
      return;
    }
    if (b.streamBaseState[b.kLastWriteWasAsync] === 0) return; // the kernel took it all
    req.buffer = one ?? many; // referenced until the write completes
    this.inFlight = true;
    this.inFlightBytes = one !== null ? one.length : byteLength(many!);
  }

  /** The write in flight completed (`status` < 0: failed, or cancelled by the socket's close). */
  afterWrite(status: number): void {
    this.inFlight = false;
    this.inFlightBytes = 0;
    if (status < 0) {
      if (!this.socket.destroyed) this.socket.destroy();
      this.queue = [];
      this.queuedBytes = 0;
    } else if (this.queue.length > 0) {
      this.flushQueue();
    }
    this.settle();
  }

  /** Nothing in flight any more: the drain the sink waits for, then whoever waits for the flush. */
  private settle(): void {
    if (this.inFlight || this.waitingForStream) return;
    if (this.wantDrain) {
      this.wantDrain = false;
      this.sink?.onDrain();
    }
    const f = this.flushed;
    if (f === null || this.busy) return; // the drain's listener may have written again
    this.flushed = null;
    for (const fn of f) fn();
  }

  private flushQueue(): void {
    const q = this.queue;
    this.queue = [];
    this.queuedBytes = 0;
    if (q.length === 1) this.submit(q[0]!, null);
    else this.submit(null, q);
  }
}

function byteLength(chunks: readonly Buffer[]): number {
  let n = 0;
  for (const c of chunks) n += c.length;
  return n;
}

/**
 * The I/O for `socket`: handle I/O when asked for and this socket's handle has the surface it needs
 * (checked per socket: a socket without a native handle takes the stream path), else the stream path.
 */
export function socketIo(socket: Socket, mode: RelayIoMode): SocketIo {
  if (mode === 'handle' && binding !== null) {
    const h = handleOf(socket);
    if (h !== null) return new HandleIo(socket, h, binding);
  }
  return new StreamIo(socket);
}
