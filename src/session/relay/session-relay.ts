/**
 * Session mode: the client keeps one backend for its whole session, and bytes pass as they
 * came, scanned (not parsed) for frame boundaries and the few facts the relay needs. Terminate
 * stays here: the backend is pooled, so it never sees it.
 */
import { Backend, Frontend, frontendMaxLength, Limits } from '../../protocol/codes.js';
import { FrameScanner, type ScanHandler } from '../../protocol/frame-reader.js';
import { Relay, type RelayHost, type RelaySetup } from './relay.js';
import type { SocketIo } from '../../net/socket-io.js';

const BACKEND_TYPES = new Set<number>(Object.values(Backend));
/** terminateAt when no Terminate is pending in the chunk being relayed. */
const NO_TERMINATE = Number.MAX_SAFE_INTEGER;

export class SessionRelay extends Relay {
  private readonly clientScanner: FrameScanner;
  private readonly backendScanner: FrameScanner;
  /** Where the client's Terminate began in the chunk being relayed (negative: in an earlier chunk). */
  private terminateAt = NO_TERMINATE;
  /** Bytes of the Terminate reached the backend (it began in a chunk already forwarded): not reusable. */
  private terminateLeaked = false;

  constructor(host: RelayHost, client: SocketIo, s: RelaySetup) {
    super(host, client, s);
    this.clientScanner = new FrameScanner(this.clientHandler);
    this.backendScanner = new FrameScanner(this.backendHandler);
  }

  get pinned(): boolean {
    return false;
  }

  private readonly clientHandler: ScanHandler = {
    maxFrameLength: (type) => frontendMaxLength(type, this.maxMessageBytes),
    wantsBody: () => false,
    onFrame: (type, _length, body) => {
      // Nothing after Terminate counts: PostgreSQL reads no further either.
      if (this.state.terminateSeen) return;
      this.state.noteClientFrame(type, body);
      if (type === Frontend.Terminate) this.terminateAt = this.clientScanner.frameStart;
    },
  };

  private readonly backendHandler: ScanHandler = {
    maxFrameLength: (type) => (BACKEND_TYPES.has(type) ? Limits.largeMessageBytes : -1),
    wantsBody: (type) =>
      type === Backend.ReadyForQuery ||
      type === Backend.ErrorResponse ||
      type === Backend.ParameterStatus ||
      (type === Backend.CommandComplete && this.gate !== null),
    onFrame: (type, length, body) => {
      this.state.noteBackendFrame(type, body);
      // The client receives exactly the backend's frames.
      if (this.gate !== null) this.auditReply(type, body, length - 4);
    },
  };

  protected relayClient(chunk: Buffer): void {
    const bad = this.clientScanner.scan(chunk);
    if (bad >= 0) {
      if (bad > 0) this.forwardToBackend(chunk.subarray(0, bad));
      throw this.clientFrameError(this.clientScanner.error);
    }
    this.forwardToBackend(chunk);
  }

  /**
   * Scanned client bytes go to the backend as they came, up to the Terminate: it is the client's
   * last message and stays here (the backend is pooled), and nothing after it is sent.
   */
  private forwardToBackend(chunk: Buffer): void {
    const at = this.terminateAt;
    if (at === NO_TERMINATE) {
      this.toBackend(chunk);
      return;
    }
    if (at < 0) this.terminateLeaked = true; // its first bytes went out with an earlier chunk
    else if (at > 0) this.toBackend(chunk.subarray(0, at));
  }

  protected relayBackend(chunk: Buffer): void {
    const scanner = this.backendScanner;
    const boundaryBefore = scanner.atBoundary;
    const bad = scanner.scan(chunk);
    if (bad >= 0) {
      // A hostile or broken server: pass what was well-formed, then end at that boundary. If the
      // bad frame began in an earlier chunk, its first bytes already went out: no clean boundary.
      if (bad > 0) this.client.write(chunk.subarray(0, bad));
      this.backendViolation(scanner.error?.message, bad > 0 || boundaryBefore);
      return;
    }
    if (this.state.unsolicitedReply) {
      // Nothing of this chunk goes out: the client never asked for what it answers.
      this.backendViolation('ReadyForQuery without a request', boundaryBefore);
      return;
    }
    this.toClient(chunk);
  }

  clientAtBoundary(): boolean {
    return this.backendScanner.atBoundary;
  }

  releaseBackend(): void {
    const clean = !this.terminateLeaked && this.state.clean && this.clientScanner.atBoundary && this.backendScanner.atBoundary;
    this.detach(clean, true);
  }
}
