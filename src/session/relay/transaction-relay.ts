/**
 * Transaction mode: the client holds a backend from the first message of a transaction until
 * the server says ReadyForQuery 'I' and owes it nothing more. Whole frames both ways: client
 * frames wait in `pending` until a backend serves them, prepared statements are renamed for the
 * backend at hand (tx-statements.ts), and statements that leave session state pin the backend
 * (or are refused, with session_state = "refuse").
 */
import type { SocketIo } from '../../net/socket-io.js';
import { PgError } from '../../errors.js';
import { Backend, Frontend, frontendMaxLength, Limits } from '../../protocol/codes.js';
import { FrameReader, type Frame } from '../../protocol/frame-reader.js';
import { UpstreamRefused, type UpstreamTarget } from '../../pool/upstream.js';
import type { Backend as PooledBackend } from '../../pool/backend-pool.js';
import { ReplyQueue, StatementTracker, type Expectation } from './tx-statements.js';
import { ClientHold } from './flow.js';
import { refusedStatement } from './refusals.js';
import { Relay, type RelayHost, type RelaySetup } from './relay.js';

const BACKEND_TYPES = new Set<number>(Object.values(Backend));
const backendMaxLength = (type: number): number => (BACKEND_TYPES.has(type) ? Limits.largeMessageBytes : -1);

export class TransactionRelay extends Relay {
  private readonly clientReader = new FrameReader();
  private readonly backendReader = new FrameReader();
  private readonly statements = new StatementTracker();
  private readonly replies = new ReplyQueue();
  /** Client frames waiting for a backend; the client is held meanwhile. */
  private pending: Frame[] = [];
  private isPinned = false;
  /** Frames the client sent before its Terminate while no backend was held: sent once one comes, then it is closed. */
  private lastWords: Frame[] = [];
  private readonly clientMaxLength = (type: number): number => frontendMaxLength(type, this.maxMessageBytes);
  /** Where the tenant's server is, as the session started (a reload changes new sessions only). */
  private readonly target: UpstreamTarget;

  constructor(host: RelayHost, client: SocketIo, s: RelaySetup) {
    super(host, client, s);
    this.state.inspectSessionState = true;
    this.target = s.ctx.upstreamTarget(s.tenant);
  }

  get pinned(): boolean {
    return this.isPinned;
  }

  protected relayClient(chunk: Buffer): void {
    this.clientReader.push(chunk);
    for (;;) {
      let f: Frame | null;
      try {
        f = this.clientReader.nextTyped(this.clientMaxLength);
      } catch (err) {
        this.flushClientFrames(); // what came before the bad frame still goes
        throw this.clientFrameError(err);
      }
      if (f === null) break;
      this.state.noteClientFrame(f.type, f.type === Frontend.Query || f.type === Frontend.Parse ? f.body : null);
      if (this.state.terminateSeen) break;
      if (this.state.sessionStateSeen) {
        this.state.sessionStateSeen = false;
        if (this.tenant.pool.sessionState === 'refuse') f = refusedStatement(f);
        else this.pin();
      }
      this.pending.push(f);
    }
    this.flushClientFrames();
  }

  /** Sends the queued client frames, rewritten for the backend at hand; takes a backend first if needed. */
  private flushClientFrames(): void {
    if (this.pending.length === 0) return;
    let b = this.backend;
    if (b === null) {
      if (this.flow.clientHeld(ClientHold.Acquiring)) return; // one is on its way
      b = this.pool.tryAcquireIdle(this.poolKey, this.login, this.target);
      if (b === null) {
        this.acquire();
        return;
      }
      this.attach(b);
    }
    const frames = this.pending;
    this.pending = [];
    const out: Buffer[] = [];
    const expect: Expectation[] = [];
    for (const f of frames) this.statements.rewrite(f.type, f.body, f.raw, b, out, expect);
    for (const e of expect) this.replies.push(e);
    this.allToBackend(coalesce(out));
    // Our own replies that nothing the backend owes precedes (e.g. ParseComplete of a statement it has).
    const mine: Buffer[] = [];
    this.replies.flushSynth(mine);
    if (mine.length === 0) return;
    if (this.gate !== null) for (const m of mine) this.auditReply(m[0]!, m.subarray(5), m.length - 5);
    this.allToClient(mine);
  }

  /** A backend for the client's next transaction; its frames wait in `pending`. */
  private acquire(): void {
    if (this.flow.clientHeld(ClientHold.Acquiring)) return;
    this.flow.holdClient(ClientHold.Acquiring);
    this.pool.acquire(this.poolKey, this.login, this.target).then(
      (b) => {
        if (!this.open) {
          this.sendLastWords(b);
          return;
        }
        try {
          this.attach(b);
          this.flushClientFrames();
          this.flow.releaseClient(ClientHold.Acquiring);
        } catch (err) {
          this.host.fail(err);
        }
      },
      (err: unknown) => {
        if (!this.open) return;
        // No backend could be opened (the server restarting or down). The client is at a message
        // boundary: it hears the server's refusal as sent (R1, e.g. 57P03) or 08006 (R3), not XX000.
        if (err instanceof UpstreamRefused || (err instanceof PgError && err.kind === 'upstream')) {
          this.ctx.metrics.errors.inc({ kind: 'upstream' });
          this.releaseBackend();
          if (err instanceof UpstreamRefused) this.host.end('backend_terminated', err.frame, `backend_terminated:${err.sqlstate}`);
          else this.host.end('backend_lost', err.toFrame());
          return;
        }
        this.host.fail(err);
      },
    );
  }

  /** From now on this client keeps its backend (SET, LISTEN, temp tables…). */
  private pin(): void {
    if (this.isPinned) return;
    this.isPinned = true;
    this.state.inspectSessionState = false;
    this.ctx.metrics.poolPins.inc({ tenant: this.tenant.id });
  }

  /** Whole backend frames, matched to what was asked; the backend goes back when nothing is owed. */
  protected relayBackend(chunk: Buffer): void {
    const reader = this.backendReader;
    reader.push(chunk);
    const out: Buffer[] = [];
    for (;;) {
      let f: Frame | null;
      try {
        f = reader.nextTyped(backendMaxLength);
      } catch (err) {
        this.writeToClient(out);
        this.backendViolation(err, true);
        return;
      }
      if (f === null) break;
      this.state.noteBackendFrame(
        f.type,
        f.type === Backend.ReadyForQuery || f.type === Backend.ErrorResponse || f.type === Backend.ParameterStatus ? f.body : null,
      );
      this.replies.onReply(f.type, f.raw, out);
    }
    if (this.state.unsolicitedReply) {
      this.backendViolation('ReadyForQuery without a request', true);
      return;
    }
    // Audit what the client receives (replies to injected messages are not its).
    if (this.gate !== null) for (const raw of out) this.auditReply(raw[0]!, raw.subarray(5), raw.length - 5);
    this.writeToClient(out);
    const b = this.backend;
    if (b !== null && !this.isPinned && this.pending.length === 0 && this.replies.empty && this.backendIsClean()) {
      this.detach(true, false); // the pool reads it from now on (detach leaves it reading)
    }
  }

  private writeToClient(out: Buffer[]): void {
    if (out.length !== 0) this.allToClient(coalesce(out));
  }

  private backendIsClean(): boolean {
    return this.state.clean && this.backendReader.buffered === 0;
  }

  /** Whole frames only go to the client. */
  clientAtBoundary(): boolean {
    return true;
  }

  /**
   * The session ended while a backend was on its way. If the client had sent statements before
   * its Terminate, they still run, as on PostgreSQL (which reads up to the Terminate); the backend
   * is then closed, since nobody reads its replies. Otherwise it goes back unused.
   */
  private sendLastWords(b: PooledBackend): void {
    const frames = this.lastWords;
    this.lastWords = [];
    if (frames.length === 0) {
      this.pool.release(b, true, false);
      return;
    }
    const out: Buffer[] = [];
    for (const f of frames) this.statements.rewrite(f.type, f.body, f.raw, b, out, []);
    for (const part of out) b.socket.write(part);
    this.pool.release(b, false, false);
  }

  releaseBackend(): void {
    if (this.state.terminateSeen && this.backend === null && this.pending.length > 0) this.lastWords = this.pending;
    this.pending = [];
    this.detach(this.backendIsClean(), this.isPinned);
  }
}

/** Joins frames that sit back to back in the same received buffer, so they go out as one write. */
function coalesce(parts: Buffer[]): Buffer[] {
  if (parts.length < 2) return parts;
  const out: Buffer[] = [];
  let run = parts[0]!;
  for (let i = 1; i < parts.length; i++) {
    const p = parts[i]!;
    if (p.buffer === run.buffer && p.byteOffset === run.byteOffset + run.length) {
      run = Buffer.from(run.buffer, run.byteOffset, run.length + p.length);
    } else {
      out.push(run);
      run = p;
    }
  }
  out.push(run);
  return out;
}
