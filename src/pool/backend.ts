/**
 * One logged-in server connection as the pool holds it: the listeners the pool attaches while it
 * is idle, the cancel requests in flight that hold it back from reuse, and the DISCARD ALL that
 * clears a session-mode client's state. Which backend goes to whom is backend-pool.ts's business.
 */
import type { Socket } from 'node:net';
import { Backend as B, Limits, TxStatus } from '../protocol/codes.js';
import { FrameScanner, type ScanHandler } from '../protocol/frame-reader.js';
import { DISCARD_ALL } from '../protocol/frontend.js';
import type { UpstreamConnection } from './upstream.js';
import type { SocketIo } from '../net/socket-io.js';

/** What the pool does when an idle or resetting backend's server speaks or closes. */
export interface BackendWatchers {
  readonly data: (chunk: Buffer) => void;
  readonly close: () => void;
}

/** One logged-in server connection. `state` changes only in backend-pool.ts. */
export class Backend {
  state: 'idle' | 'active' | 'resetting' | 'closed' = 'active';
  readonly createdAt = Date.now();
  lastUsedAt = Date.now();
  /** Cancel requests sent for this backend and not yet closed by the server: it is not reused before. */
  cancelsInFlight = 0;
  private releaseWhenCancelsDone: (() => void) | null = null;

  /** Server-side prepared statements (transaction mode's statement tracking), oldest first. */
  readonly prepared = new Set<string>();
  /**
   * Who hears the server while the pool holds the backend idle or resetting. The socket's listeners
   * are added once, here: watching and holding are field changes, not listener churn per
   * transaction (transaction mode watches and unwatches a backend at every transaction).
   */
  private watchers: BackendWatchers | null = null;
  /** The close handler of the relay holding the backend, if one does. */
  private holderClose: (() => void) | null = null;
  /** The relay's I/O on this socket, made by the first relay that takes it and kept (net/socket-io.ts). */
  io: SocketIo | null = null;
  /** The pool's watchers for this backend while idle, made once (backend-pool.ts). */
  idleWatchers: BackendWatchers | null = null;

  constructor(
    readonly conn: UpstreamConnection,
    readonly key: string,
  ) {
    const socket = conn.socket;
    // Errors are always followed by 'close', which the owner of the moment handles.
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => this.watchers?.data(chunk));
    socket.on('close', () => {
      this.watchers?.close();
      this.holderClose?.();
    });
  }

  watch(w: BackendWatchers): void {
    this.watchers = w;
  }

  unwatch(): void {
    this.watchers = null;
  }

  /** A relay holds the backend: it hears the close (its reads come through its I/O). */
  hold(onClose: () => void): void {
    this.holderClose = onClose;
  }

  unhold(): void {
    this.holderClose = null;
  }

  get socket(): Socket {
    return this.conn.socket;
  }

  get processId(): number {
    return this.conn.processId;
  }

  /** Called by the cancel path; the backend is held back from reuse until the server closed the cancel connection. */
  cancelStarted(): void {
    this.cancelsInFlight++;
  }

  cancelFinished(): void {
    this.cancelsInFlight = Math.max(0, this.cancelsInFlight - 1);
    if (this.cancelsInFlight === 0 && this.releaseWhenCancelsDone !== null) {
      const f = this.releaseWhenCancelsDone;
      this.releaseWhenCancelsDone = null;
      f();
    }
  }

  /** Runs `f` now, or once the cancels in flight are done. */
  afterCancels(f: () => void): void {
    if (this.cancelsInFlight === 0) f();
    else this.releaseWhenCancelsDone = f;
  }
}

/**
 * Sends DISCARD ALL and calls `done(true)` once the server answers ReadyForQuery 'I' with no
 * ErrorResponse before it; `done(false)` on an error, another status, a close, a frame the
 * scanner refuses, or after `timeoutMs`. `done` runs once, after the listeners are removed.
 */
export function resetBackend(b: Backend, timeoutMs: number, done: (clean: boolean) => void): void {
  let ok = true;
  let finished = false;
  const finish = (clean: boolean): void => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    b.unwatch();
    done(clean);
  };
  const handler: ScanHandler = {
    maxFrameLength: () => Limits.upstreamLoginMessageBytes,
    wantsBody: (type) => type === B.ReadyForQuery,
    onFrame: (type, _len, body) => {
      if (type === B.ErrorResponse) ok = false;
      if (type === B.ReadyForQuery) finish(ok && body?.[0] === TxStatus.Idle);
    },
  };
  const scanner = new FrameScanner(handler);
  b.watch({
    data: (chunk: Buffer) => {
      if (scanner.scan(chunk) >= 0) finish(false);
    },
    close: () => finish(false),
  });
  const timer = setTimeout(() => finish(false), timeoutMs);
  b.prepared.clear(); // DISCARD ALL deallocates them
  b.socket.resume();
  b.socket.write(DISCARD_ALL);
}
