/**
 * Flow control as sets of pause reasons: the client is read while nothing holds it (its
 * bandwidth budget, a pool wait, a durable audit write, a backend that takes no more) and the
 * backend is read while nothing holds it (its bandwidth budget, a client that takes no more).
 * One place decides resume, so no path can resume past a hold another path set.
 */
import type { SocketIo } from '../../net/socket-io.js';

export const ClientHold = {
  /** The tenant's client-to-server bandwidth budget is spent. */
  Throttled: 1,
  /** Transaction mode: waiting for a backend from the pool. */
  Acquiring: 2,
  /** A fail-closed statement record is being made durable. */
  Audit: 4,
  /** The backend's socket is over its high-water mark. */
  BackendFull: 8,
} as const;

export const BackendHold = {
  /** The tenant's server-to-client bandwidth budget is spent. */
  Throttled: 1,
  /** The client's socket is over its high-water mark. */
  ClientFull: 2,
} as const;

export class Flow {
  private clientHolds = 0;
  private backendHolds = 0;
  private backend: SocketIo | null = null;
  /** Once stopped (the session ended), nothing is resumed. */
  private stopped = false;

  constructor(private readonly client: SocketIo) {}

  holdClient(reason: number): void {
    this.clientHolds |= reason;
    this.client.pause();
  }

  releaseClient(reason: number): void {
    if ((this.clientHolds & reason) === 0) return;
    this.clientHolds &= ~reason;
    if (this.clientHolds === 0 && !this.stopped) this.client.resume();
  }

  clientHeld(reason: number): boolean {
    return (this.clientHolds & reason) !== 0;
  }

  holdBackend(reason: number): void {
    this.backendHolds |= reason;
    this.backend?.pause();
  }

  releaseBackend(reason: number): void {
    if ((this.backendHolds & reason) === 0) return;
    this.backendHolds &= ~reason;
    if (this.backendHolds === 0 && !this.stopped) this.backend?.resume();
  }

  /** Reads the client from the start of the relay, unless something already holds it. */
  start(): void {
    if (this.clientHolds === 0) this.client.resume();
  }

  /** A backend now serves the client: read it unless a hold says otherwise. */
  attach(backend: SocketIo): void {
    this.backend = backend;
    if (this.backendHolds === 0) backend.resume();
    else backend.pause();
  }

  /** The backend goes back to the pool (or is closed): its holds no longer apply to the client. */
  detach(): void {
    this.backend = null;
    this.releaseClient(ClientHold.BackendFull);
  }

  stop(): void {
    this.stopped = true;
  }
}
