/**
 * The relay (hot path): what both pool modes share once a client is logged in. Client bytes
 * pass the statement-audit gate (when on) and the tenant's bandwidth budget on their way to the
 * mode's own relaying; backend bytes come back the same way. The protocol facts live in
 * ProtocolState, pause reasons in Flow, timeouts in timeouts.ts. The relay never ends a session
 * itself: it tells its host (the session), which alone closes. Per-frame work stays synchronous
 * and allocates no closures (STYLE.md §2).
 */
import { socketIo, type IoSink, type SocketIo } from '../../net/socket-io.js';
import type { LimitSettings, TenantConfig } from '../../config/schema.js';
import { Errors, frameError, PgError } from '../../errors.js';
import type { Backend as PooledBackend, TenantPool } from '../../pool/backend-pool.js';
import { sendUpstreamCancel, type UpstreamLogin } from '../../pool/upstream.js';
import type { ByteRate } from '../../limits/bandwidth.js';
import type { AuditEvent } from '../../audit/record.js';
import type { SessionContext } from '../context.js';
import type { CloseReason, Notice } from '../types.js';
import type { SessionEndFacts } from '../audit-records.js';
import { ProtocolState } from './protocol-state.js';
import { BackendHold, ClientHold, Flow } from './flow.js';
import { SendStall, timeoutVerdict } from './timeouts.js';
import { AuditGate, type AuditGateHost } from './audit-gate.js';
import type { StatementAudit } from './statement-audit.js';

/** What the relay asks of its session. */
export interface RelayHost {
  readonly id: string;
  /** Ends the session: the one close (the relay has released or detached its backend as it should). */
  end(reason: CloseReason, notice: Notice, detail?: string): void;
  /** The error boundary: a PgError to the client, anything else XX000. */
  fail(err: unknown): void;
  /** Statement records, wrapped in the session's envelope. */
  audit(e: AuditEvent): void;
  auditDurable(e: AuditEvent): Promise<void>;
  /** A limit fired during the session (metric and session.end record). */
  noteLimit(limit: string): void;
}

export interface RelaySetup {
  readonly ctx: SessionContext;
  readonly tenant: TenantConfig;
  readonly pool: TenantPool;
  readonly poolKey: string;
  readonly login: UpstreamLogin;
  readonly txStatus: number;
  readonly rates: { readonly clientToServer: ByteRate; readonly serverToClient: ByteRate } | null;
  /** Statement audit, when on: the auditor, fail-closed or not, staff read-only guard. */
  readonly audit: { readonly auditor: StatementAudit; readonly failClosed: boolean; readonly readOnly: boolean } | null;
  /** Bytes the client sent before the relay (counted in bytesIn). */
  readonly bytesBefore: number;
}

export abstract class Relay implements AuditGateHost {
  readonly state: ProtocolState;
  readonly flow: Flow;
  readonly gate: AuditGate | null;
  backend: PooledBackend | null = null;
  bytesIn: number;
  bytesOut = 0;
  /** Whether the session still relays; false once it ends. */
  open = true;
  readonly maxMessageBytes: number;
  protected readonly ctx: SessionContext;
  protected readonly tenant: TenantConfig;
  protected readonly pool: TenantPool;
  protected readonly poolKey: string;
  protected readonly login: UpstreamLogin;
  private readonly upRate: ByteRate | null;
  private readonly downRate: ByteRate | null;
  private readonly stall = new SendStall();
  /** The backend's I/O while attached (the backend keeps it across transactions and sessions). */
  protected backendIo: SocketIo | null = null;
  /** What the client's socket delivers: its bytes, and that its writes drained. */
  readonly clientSink: IoSink;
  private readonly backendSink: IoSink;

  constructor(
    protected readonly host: RelayHost,
    protected readonly client: SocketIo,
    s: RelaySetup,
  ) {
    this.ctx = s.ctx;
    this.tenant = s.tenant;
    this.pool = s.pool;
    this.poolKey = s.poolKey;
    this.login = s.login;
    this.maxMessageBytes = s.tenant.limits.maxMessageBytes;
    this.upRate = s.rates?.clientToServer ?? null;
    this.downRate = s.rates?.serverToClient ?? null;
    this.bytesIn = s.bytesBefore;
    this.flow = new Flow(client);
    this.clientSink = { onData: this.onClientData, onDrain: this.onClientDrain };
    this.backendSink = { onData: this.onBackendData, onDrain: this.onBackendDrain };
    this.state = new ProtocolState(s.txStatus, this.onIdentityParameter);
    this.gate = s.audit === null ? null : new AuditGate(s.audit.auditor, s.audit.failClosed, s.audit.readOnly, this);
    const now = performance.now();
    this.state.lastClientAt = this.state.idleSince = now;
  }

  get txStatus(): number {
    return this.state.txStatus;
  }

  /** Starts relaying: the session-mode backend (if any), then bytes the client pipelined behind its login. */
  start(backend: PooledBackend | null, early: Buffer): void {
    if (backend !== null) this.attach(backend);
    if (early.length > 0) this.onClient(early);
    if (this.open) this.flow.start();
  }

  // ---------------------------------------------------------------- client → backend

  readonly onClientData = (chunk: Buffer): void => {
    if (!this.open) return; // after the end: reading on only to see the peer's FIN
    try {
      this.bytesIn += chunk.length;
      this.onClient(chunk);
    } catch (err) {
      this.host.fail(err);
    }
  };

  private onClient(chunk: Buffer): void {
    if (this.gate !== null) this.gate.onClientChunk(chunk);
    else this.forward(chunk);
  }

  /** Client bytes past the audit gate: budget, then the mode's relaying. */
  forward(chunk: Buffer): void {
    this.state.noteClientActivity(performance.now());
    if (this.upRate !== null && !this.upRate.take(chunk.length, this.onUpBudget)) this.flow.holdClient(ClientHold.Throttled);
    this.relayClient(chunk);
    if (this.state.terminateSeen && this.open) this.endOnTerminate();
  }

  protected abstract relayClient(chunk: Buffer): void;

  /** As PostgreSQL: Terminate ends the session and the server closes the connection. */
  private endOnTerminate(): void {
    this.releaseBackend();
    this.host.end('client_terminate', 'end');
  }

  // ---------------------------------------------------------------- backend → client

  private readonly onBackendData = (chunk: Buffer): void => {
    try {
      this.bytesOut += chunk.length;
      if (this.downRate !== null && !this.downRate.take(chunk.length, this.onDownBudget)) this.flow.holdBackend(BackendHold.Throttled);
      this.relayBackend(chunk);
    } catch (err) {
      this.host.fail(err);
    }
  };

  protected abstract relayBackend(chunk: Buffer): void;

  /** Writes to the client; a full client socket holds the backend until it drains. */
  protected toClient(chunk: Buffer): void {
    if (!this.client.write(chunk)) this.flow.holdBackend(BackendHold.ClientFull);
  }

  /** Writes frames to the client as one batch; a full client socket holds the backend until it drains. */
  protected allToClient(chunks: readonly Buffer[]): void {
    if (!this.client.writeAll(chunks)) this.flow.holdBackend(BackendHold.ClientFull);
  }

  /** Writes to the backend; a full backend socket holds the client until it drains. */
  protected toBackend(chunk: Buffer): void {
    if (!this.backendIo!.write(chunk)) this.flow.holdClient(ClientHold.BackendFull);
  }

  /** Writes frames to the backend as one batch; a full backend socket holds the client until it drains. */
  protected allToBackend(chunks: readonly Buffer[]): void {
    if (!this.backendIo!.writeAll(chunks)) this.flow.holdClient(ClientHold.BackendFull);
  }

  /** A backend that broke the protocol: what was well-formed went out; end at a boundary if there is one. */
  protected backendViolation(err: unknown, atBoundary: boolean): void {
    this.ctx.log.warn({ session: this.host.id, tenant: this.tenant.id, err: err instanceof Error ? err.message : err }, 'backend violated the protocol');
    this.detach(false, false);
    this.host.end('backend_lost', atBoundary ? Errors.upstreamLost().toFrame() : 'destroy');
  }

  private readonly onBackendClose = (): void => {
    if (!this.open) return;
    this.detach(false, false);
    const last = this.state.lastUpstreamError;
    // The server already told the client why (forwarded byte for byte).
    if (last !== null && last.fatal) return this.host.end('backend_terminated', 'end', `backend_terminated:${last.code}`);
    if (this.state.terminateSeen) return this.host.end('client_terminate', 'end');
    this.host.end('backend_lost', this.clientAtBoundary() ? Errors.upstreamLost().toFrame() : 'destroy');
  };

  private readonly onBackendDrain = (): void => this.flow.releaseClient(ClientHold.BackendFull);
  readonly onClientDrain = (): void => this.flow.releaseBackend(BackendHold.ClientFull);
  /** The tenant's client-to-server budget has room again. */
  private readonly onUpBudget = (): void => this.flow.releaseClient(ClientHold.Throttled);
  /** The tenant's server-to-client budget has room again. */
  private readonly onDownBudget = (): void => this.flow.releaseBackend(BackendHold.Throttled);

  // ---------------------------------------------------------------- backend ownership

  protected attach(backend: PooledBackend): void {
    this.backend = backend;
    const io = (backend.io ??= socketIo(backend.socket, this.ctx.relayIo));
    this.backendIo = io;
    backend.hold(this.onBackendClose);
    const early = io.start(this.backendSink);
    this.flow.attach(io);
    if (early !== null) this.onBackendData(early);
  }

  /** Takes the backend off this session; it goes back to the pool (reset first when asked) or is closed. */
  protected detach(reusable: boolean, reset: boolean): void {
    const b = this.backend;
    if (b === null) return;
    this.backend = null;
    this.backendIo = null;
    b.unhold();
    b.io!.stop();
    this.flow.detach();
    this.pool.release(b, reusable, reset);
  }

  /** The client is leaving (or being sent away): its backend goes back clean and reset, or is closed. */
  abstract releaseBackend(): void;

  /** Whether the bytes sent to the client end on a message boundary. */
  abstract clientAtBoundary(): boolean;

  /** Whether the session holds its backend past a transaction (transaction mode: pinned). */
  abstract get pinned(): boolean;

  /** What a FATAL for this session looks like now: the frame at a boundary, else a plain close. */
  noticeFor(err: PgError): Notice {
    return this.clientAtBoundary() ? err.toFrame() : 'destroy';
  }

  /** The session ended: nothing more is read or resumed, budgets forget it, the backend goes. */
  stop(): void {
    this.open = false;
    this.flow.stop();
    this.upRate?.forget(this.onUpBudget);
    this.downRate?.forget(this.onDownBudget);
    this.releaseBackend();
  }

  /** Statement records still open as the session ends (written as abandoned). */
  abandonStatements(): AuditEvent[] {
    const out: AuditEvent[] = [];
    this.gate?.auditor.abandon(out);
    return out;
  }

  /** What session.end says of the relay. */
  endFacts(): Omit<SessionEndFacts, 'reason' | 'backendPid' | 'durationMs' | 'limitsHit'> {
    const s = this.state;
    return {
      pinned: this.pinned,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      messagesIn: s.messagesIn,
      messagesOut: s.messagesOut,
      queries: s.queries,
      statementsAudited: this.gate?.auditor.statementsAudited ?? 0,
      txStatus: s.txStatus,
    };
  }

  // ---------------------------------------------------------------- cancel and timeouts

  /** CancelRequest for this session: reaches the backend running its query, if any; a late one is dropped. */
  cancelRunning(): void {
    const b = this.backend;
    if (b === null) return; // nothing running: as PostgreSQL with a key whose query is done
    b.cancelStarted();
    sendUpstreamCancel(this.ctx.upstreamTarget(this.tenant), b.processId, b.conn.secretKey, this.ctx.config.server.backendConnectTimeoutMs, () =>
      b.cancelFinished(),
    );
  }

  /** The tenant's timeouts (limits as now configured: a reload changes running sessions' timeouts too). */
  checkTimers(now: number, l: LimitSettings): void {
    const pending = this.client.pendingBytes;
    if (this.stall.check(now, pending, this.client.needDrain, l.sendTimeoutMs)) {
      // Nothing can be said to a client that does not read: the socket goes, the backend with it (mid-result).
      this.host.noteLimit('send_timeout');
      this.ctx.log.info({ session: this.host.id, tenant: this.tenant.id, pendingBytes: pending }, 'client stopped reading; send timeout');
      this.client.socket.destroy();
      this.releaseBackend();
      this.host.end('send_timeout', 'none');
      return;
    }
    const s = this.state;
    const busy = s.busy || this.flow.clientHeld(ClientHold.Acquiring);
    if (!busy) s.busySince = 0;
    const v = timeoutVerdict(
      {
        busy,
        busySince: s.busySince,
        queryCancelSent: s.queryCancelSent,
        hasBackend: this.backend !== null,
        idleSince: s.idleSince,
        lastClientAt: s.lastClientAt,
        txStatus: s.txStatus,
        txSince: s.txSince,
      },
      l,
      now,
    );
    if (v === null) return;
    if (v.kind === 'cancel_query') {
      s.queryCancelSent = true;
      this.host.noteLimit('query_timeout');
      this.cancelRunning();
      return;
    }
    this.host.noteLimit(v.reason);
    this.releaseBackend();
    this.host.end(v.reason, this.noticeFor(v.error));
  }

  /** A client frame the reader refused, as the client hears it; over max_message_bytes is a limit, counted. */
  protected clientFrameError(err: unknown): unknown {
    const e = err instanceof Error ? frameError(err, 'relay') : Errors.invalidLength();
    if (e instanceof PgError && e.reason === 'max_message_bytes') this.host.noteLimit('max_message_bytes');
    return e;
  }

  // ---------------------------------------------------------------- audit gate host

  isOpen(): boolean {
    return this.open;
  }

  holdClient(): void {
    this.flow.holdClient(ClientHold.Audit);
  }

  releaseClient(): void {
    this.flow.releaseClient(ClientHold.Audit);
  }

  append(e: AuditEvent): void {
    this.host.audit(e);
  }

  appendDurable(e: AuditEvent): Promise<void> {
    return this.host.auditDurable(e);
  }

  auditFailed(err: unknown): void {
    this.ctx.log.error({ session: this.host.id, tenant: this.tenant.id, err }, 'statement could not be audited: ending the session');
    this.ctx.metrics.errors.inc({ kind: 'internal' });
    this.releaseBackend();
    this.host.end('audit_unavailable', this.noticeFor(Errors.auditUnavailableSession()));
  }

  fail(err: unknown): void {
    this.host.fail(err);
  }

  /** Replies the client receives, matched to the audited statements (session.query_result). */
  protected auditReply(type: number, body: Buffer | null, bodyLength: number): void {
    const out: AuditEvent[] = [];
    this.gate!.onServerFrame(type, body, bodyLength, out);
    for (const e of out) this.host.audit(e);
  }

  private readonly onIdentityParameter = (name: string, value: string): void => {
    // Identity changes are audit-worthy (SECURITY.md §2.4).
    this.ctx.log.info({ session: this.host.id, tenant: this.tenant.id, parameter: name, value }, 'session identity parameter changed');
  };
}
