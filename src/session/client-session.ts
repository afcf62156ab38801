/**
 * One client connection, start to end, as a recipe read top to bottom (run()):
 *   accept → handshake → admission → authenticate → upstream login → greeting → relay → close.
 * Each step lives in its own file (login/, relay/) and returns a result or throws; this file
 * alone writes `phase`, owns what the session holds (SessionResources, released once), ends the
 * session in one place (close) and is the one error boundary: a throw ends this connection,
 * never the process. Pre-auth steps await their frames; the signal aborts them when the client
 * leaves, the pre-auth deadline passes or an operator ends the session.
 */
import { randomUUID } from 'node:crypto';
import type { Socket } from 'node:net';
import type { LimitSettings, TenantConfig } from '../config/schema.js';
import { Errors, PgError, sanitizeName } from '../errors.js';
import { encodeGreeting } from '../protocol/backend.js';
import { TxStatus, type TxStatusByte } from '../protocol/codes.js';
import { UpstreamRefused } from '../pool/upstream.js';
import { sourceKey } from '../limits/store.js';
import type { ClientAddress } from '../net/proxy-header.js';
import type { Lease } from '../limits/connections.js';
import { hashCancelSecret, type CancelTarget } from '../cancel/registry.js';
import type { AuditEvent } from '../audit/record.js';
import type { Metrics, TrafficSource } from '../observability/metrics.js';
import type { SessionContext } from './context.js';
import type { CloseReason, Notice, Phase, PreauthEnd, SessionView, StaffIdentity } from './types.js';
import { Aborted, ClientConn } from './client-conn.js';
import { SessionResources } from './resources.js';
import { SessionRecords, type AuditSubject } from './audit-records.js';
import { handshake, rateShieldedHandshake, type TlsFacts } from './login/handshake.js';
import { admit, type LoginPlan } from './login/admission.js';
import { AuthFailure, Unaudited, type Authenticated, type Authenticator, type LoginProgress } from './login/authenticator.js';
import { ScramLogin } from './login/scram-login.js';
import { StaffLogin } from './login/staff-login.js';
import { ConfiguredVerifiers } from './login/verifiers.js';
import { upstreamLogin, type UpstreamSession } from './login/upstream-login.js';
import type { Relay, RelayHost } from './relay/relay.js';
import { SessionRelay } from './relay/session-relay.js';
import { TransactionRelay } from './relay/transaction-relay.js';
import { statementAuditFor } from './relay/audit-gate.js';
import { TrafficFold } from './relay/traffic.js';
import { describeSession } from './view.js';
import { lesserAccess, type SupportGrant } from '../auth/support-grants.js';
import { LoginFailures } from './login/failures.js';

export type { CloseReason, Phase, SessionView, StaffIdentity } from './types.js';

/** The reason the session's signal carries once the session ends (steps throw Aborted, never this). */
const SESSION_ENDED = Object.freeze({ sessionEnded: true });

/** Where a connection comes from, as the accept path found it. */
export interface SessionOrigin {
  /** The client's address (the peer's, or a trusted balancer's PROXY header's). */
  readonly client: ClientAddress;
  /** Client bytes already read (those that followed a PROXY header), or null. */
  readonly prefix: Buffer | null;
  /** performance.now() at accept: the pre-auth deadline counts from there. */
  readonly acceptedAt: number;
  /** proxy_protocol is on and this peer is not trusted: a PROXY header from it is refused. */
  readonly refuseProxyHeader: boolean;
}

/**
 * What only the login needs: its abort signal, how a failure is accounted, how far it got. The
 * session drops it once the relay starts, so an idle session does not keep it (issue 15).
 */
interface PreauthState {
  readonly abort: AbortController;
  readonly failures: LoginFailures;
  readonly progress: LoginProgress;
}

export class ClientSession implements TrafficSource, RelayHost, CancelTarget {
  readonly id = randomUUID();
  readonly startedAt = Date.now();
  private currentPhase: Phase = 'negotiating';
  private readonly ctx: SessionContext;
  /** Null once the session relays (and never read after that). */
  private preauth: PreauthState | null;
  private readonly conn: ClientConn;
  private readonly res: SessionResources;
  private readonly subject: AuditSubject;
  private readonly records: SessionRecords;
  private readonly source: string;
  private plan: LoginPlan | null = null;
  private relay: Relay | null = null;
  /** The staff reserve this session is counted under (read once, at connect); 0: the tenant's own slots. */
  private staffSlots = 0;
  /** staff_access = "on_request": when the customer's grant expires (ms since the epoch); null for any other session. */
  private grantExpMs: number | null = null;
  private loginBackendPid = 0;
  /** Limits that fired during the session (audit `session.end`). */
  private readonly limitEvents: string[] = [];
  private readonly traffic = new TrafficFold();

  private readonly refuseProxyHeader: boolean;

  constructor(socket: Socket, ctx: SessionContext, preauthLease: Lease, origin: SessionOrigin) {
    this.ctx = ctx;
    this.refuseProxyHeader = origin.refuseProxyHeader;
    const abort = new AbortController();
    this.conn = new ClientConn(
      socket,
      origin.client,
      { data: this.onClientData, error: this.onClientError, close: this.onClientClose },
      abort.signal,
    );
    this.source = sourceKey(this.conn.remoteAddress);
    // Closures the login alone uses are made here, not as fields: they go with the pre-auth state.
    this.res = new SessionResources(ctx, preauthLease, () => this.onDeadline(), origin.acceptedAt);
    const tls: TlsFacts = { negotiation: 'none', version: null, cipher: null, sni: undefined, alpn: null };
    this.subject = {
      id: this.id,
      remoteAddress: this.conn.remoteAddress,
      remotePort: this.conn.remotePort,
      via: this.conn.via,
      tls,
      startup: null,
      tenant: undefined,
      staffClaims: null,
      staffIdentity: null,
    };
    this.records = new SessionRecords(this.subject);
    this.preauth = {
      abort,
      failures: new LoginFailures(ctx, this.conn, this.subject, this.records, this.source, () => this.plan),
      progress: { stage: 'startup', clientDone: () => this.onClientDone() },
    };
    if (origin.prefix !== null && origin.prefix.length > 0) this.conn.push(origin.prefix);
    void this.run();
  }

  // ---------------------------------------------------------------- the recipe

  private async run(): Promise<void> {
    const ctx = this.ctx;
    const { abort, failures, progress } = this.preauth!;
    try {
      const hs = await handshake(
        this.conn,
        {
          tls: ctx.tls,
          refuseProxyHeader: this.refuseProxyHeader,
          onTlsPhase: (inHandshake) => this.setPhase(inHandshake ? 'tls_handshake' : 'negotiating'),
          onSni: (name) => rateShieldedHandshake(ctx, name, this.conn.remoteAddress),
          onTlsDone: (version) => ctx.metrics.tlsHandshakes.inc({ outcome: 'ok', version: version ?? 'unknown' }),
          sniCheckNeeded: () => ctx.anyRateShielded(),
        },
        this.subject.tls,
      );
      if (hs.kind === 'refused') {
        // Pre-startup noise: aggregated audit, then close without a message (N4).
        failures.rejected(hs.reason);
        if (hs.reason === 'proxy_protocol:untrusted') {
          ctx.metrics.proxyProtocolHeaders.inc({ outcome: 'untrusted' });
          ctx.log.info({ session: this.id, client: this.conn.remoteAddress }, 'PROXY protocol header from an untrusted address: closed');
        }
        this.close('refused', 'destroy');
        return;
      }
      if (hs.kind === 'cancel') {
        this.forwardCancel(hs.processId, hs.secretKey);
        return;
      }

      const admission = admit({
        params: hs.params,
        tls: this.subject.tls,
        config: ctx.config,
        remoteAddress: this.conn.remoteAddress,
        source: this.source,
        draining: ctx.isDraining(),
        isSuspended: (id) => ctx.isSuspended(id),
      });
      if (!admission.ok) {
        this.subject.startup = admission.startup;
        throw admission.error;
      }
      const plan = (this.plan = admission.plan);
      this.subject.startup = plan.startup;
      this.subject.tenant = plan.tenant;
      // Admission (auth cool-down, connection rate) before any SCRAM work, and the same answer
      // for every user name, so it reveals nothing about accounts. One limit-store round trip.
      this.setPhase('admitting');
      const verdict = await ctx.limits.admit(plan.rate, plan.lockouts);
      if (this.closed) return;
      if (verdict !== 'ok') {
        const reason = verdict === 'rate_limited' ? 'rate_limited' : 'auth_throttled';
        failures.admissionRefused(reason);
        this.close('admission_refused', Errors.tooManyAttempts(reason).toFrame());
        return;
      }

      this.setPhase('authenticating');
      const who = await this.authenticator(plan, abort.signal).authenticate(this.conn, plan, hs.negotiate, progress);
      if (who.kind === 'staff') {
        this.subject.staffClaims = who.claims;
        this.subject.staffIdentity = who.identity;
        this.staffSlots = ctx.config.staff?.reservedConnections ?? 0;
        this.grantExpMs = who.identity.grantExpMs;
      }

      let up: UpstreamSession;
      try {
        up = await upstreamLogin(ctx, plan, who, this.staffSlots, abort.signal, (lease) => this.res.adoptLease(lease));
      } catch (err) {
        this.upstreamFailed(err);
        return;
      }
      this.greetAndRelay(plan.tenant!, up, who);
    } catch (err) {
      this.fail(err);
    }
  }

  private authenticator(plan: LoginPlan, signal: AbortSignal): Authenticator {
    if (plan.staff) return new StaffLogin(this.ctx, this.records, signal, this.id);
    const binding = this.subject.tls.negotiation === 'none' ? null : (this.ctx.tls?.endpointBinding ?? null);
    const lookups = { lookups: this.ctx.authLookups, target: (t: TenantConfig) => this.ctx.upstreamTarget(t) };
    return new ScramLogin(new ConfiguredVerifiers(this.ctx.config, this.ctx.mockSecret, lookups), binding);
  }

  /** Everything the client needs to start, in one write; then the relay takes the connection. */
  private greetAndRelay(tenant: TenantConfig, up: UpstreamSession, who: Authenticated): void {
    const ctx = this.ctx;
    const backend = up.backend;
    this.loginBackendPid = backend?.processId ?? 0;
    const txStatus = (backend?.conn.txStatus ?? TxStatus.Idle) as TxStatusByte;
    // The session is its own cancel target: no closure and target object per session.
    const key = this.res.issueCancelKey(this);
    this.conn.send(
      encodeGreeting({
        saslFinal: who.kind === 'scram' ? who.serverFinal : null,
        parameters: up.parameters,
        processId: key.processId,
        secretKey: key.secretKey,
        txStatus,
      }),
    );

    this.res.leavePreauth();
    ctx.metrics.clientConnections.inc({ tenant: tenant.id });
    ctx.metrics.sessions.inc({ tenant: tenant.id, outcome: 'started' });
    ctx.metrics.liveSessions.add(this);
    const audit = statementAuditFor(ctx, tenant, who.kind === 'staff' ? who.identity : null, () => this.records.nextEi());
    const bw = ctx.bandwidth.get(tenant.id, tenant.limits.maxBandwidthBytesPerSecond);
    const setup = {
      ctx,
      tenant,
      pool: up.pool,
      poolKey: up.poolKey,
      login: up.login,
      txStatus,
      rates: bw ?? null,
      audit,
      bytesBefore: this.conn.bytesIn,
    };
    const io = this.conn.relayIo(ctx.relayIo);
    const relay = up.transactionMode ? new TransactionRelay(this, io, setup) : new SessionRelay(this, io, setup);
    this.relay = relay;
    this.setPhase('relaying');
    // What only the login used goes now: an idle session keeps what its relay, audit and end need.
    this.preauth = null;
    this.plan = null;
    ctx.audit.append(
      this.records.sessionStart(this.conn.sock, {
        parameters: up.parameters,
        backendPid: backend?.processId ?? null,
        backendTls: backend?.conn.tlsVersion ?? null,
        channelBinding: who.kind === 'scram' && who.channelBinding,
        statementAudit: audit === null ? 'none' : audit.failClosed ? 'fail_closed' : 'best_effort',
        tenantActiveAfter: up.tenantActiveAfter,
        staffSlots: this.staffSlots,
        limitMode: ctx.limits.mode,
      }),
    );
    ctx.log.info(
      {
        session: this.id,
        tenant: tenant.id,
        user: sanitizeName(this.subject.startup!.user),
        client: this.conn.remoteAddress,
        ...(this.conn.via === null ? {} : { via: this.conn.via.addr }),
        tls: this.subject.tls.version,
      },
      'session started',
    );

    // Bytes the client pipelined behind its login go first; a bad frame among them ends the session here.
    relay.start(backend, this.conn.handOver(relay.clientSink));
  }

  // ---------------------------------------------------------------- phase and the one close

  get phase(): Phase {
    return this.currentPhase;
  }

  private get closed(): boolean {
    return this.currentPhase === 'closed';
  }

  private setPhase(p: Phase): void {
    if (this.currentPhase !== 'closed') this.currentPhase = p;
  }

  /**
   * Ends the connection, once: the relay stops (its backend goes back clean or is closed), the
   * client hears `notice`, a started session is accounted and audited, and what it held is released.
   */
  end(reason: CloseReason, notice: Notice, detail?: string): void {
    this.close(reason, notice, detail);
  }

  private close(reason: CloseReason | PreauthEnd, notice: Notice, detail?: string): void {
    if (this.closed) return;
    const started = this.currentPhase === 'relaying';
    this.currentPhase = 'closed';
    // A reason of our own: abort() without one builds a DOMException and its stack trace.
    this.preauth?.abort.abort(SESSION_ENDED);
    this.conn.interrupt();
    this.relay?.stop();
    this.conn.endWith(notice);
    if (started) this.accountEnd(reason as CloseReason, detail ?? reason);
    else this.ctx.log.debug({ session: this.id, reason }, 'connection closed before login');
    this.res.releaseAll();
    this.ctx.onClosed(this);
  }

  /** A started session ends: metrics, the statement audit's open records, session.end, the log. */
  private accountEnd(reason: CloseReason, detail: string): void {
    const ctx = this.ctx;
    const tenant = this.subject.tenant!.id;
    const relay = this.relay!;
    this.foldTraffic(ctx.metrics);
    ctx.metrics.liveSessions.delete(this);
    ctx.metrics.clientConnections.dec({ tenant });
    ctx.metrics.sessionEnds.inc({ tenant, reason });
    for (const e of relay.abandonStatements()) this.audit(e);
    ctx.audit.append(
      this.records.sessionEnd({
        ...relay.endFacts(),
        reason: detail,
        backendPid: this.loginBackendPid,
        durationMs: Date.now() - this.startedAt,
        limitsHit: this.limitEvents,
      }),
    );
    ctx.log.info(
      { session: this.id, tenant, reason: detail, durationMs: Date.now() - this.startedAt, bytesIn: relay.bytesIn, bytesOut: relay.bytesOut },
      'session ended',
    );
  }

  // ---------------------------------------------------------------- the error boundary and refusals

  /** PgError goes to the client as is, anything else is a bug (XX000). */
  fail(err: unknown): void {
    if (this.closed || err instanceof Aborted) return;
    if (err instanceof AuthFailure) {
      this.preauth!.failures.authFailed(err.error, err.stage);
      this.close('auth_failed', err.error.toFrame());
      return;
    }
    if (err instanceof Unaudited) {
      this.close('auth_failed', err.error.toFrame());
      return;
    }
    const pgErr = err instanceof PgError ? err : Errors.internal();
    if (!(err instanceof PgError)) this.ctx.log.error({ session: this.id, err }, 'internal error in session');
    this.ctx.metrics.errors.inc({ kind: pgErr.kind });
    if (this.currentPhase === 'relaying') {
      const reason =
        pgErr.kind === 'client' ? 'protocol_violation' : pgErr.reason === 'pool_timeout' ? 'pool_timeout' : pgErr.kind === 'limit' ? 'limit' : 'internal';
      this.close(reason, pgErr.toFrame());
      return;
    }
    const { failures, progress } = this.preauth!;
    failures.preauthError(pgErr, progress.stage);
    this.close('error', pgErr.toFrame());
  }

  /** The upstream login failed: the server's own refusal as sent (R1), or ours. */
  private upstreamFailed(err: unknown): void {
    if (this.closed || err instanceof Aborted) return;
    if (err instanceof UpstreamRefused) {
      this.preauth!.failures.upstreamFailed(`backend_refused:${err.sqlstate}`, err.sqlstate, '(backend error)', true);
      this.close('upstream_failed', err.frame);
    } else if (err instanceof PgError) {
      this.preauth!.failures.upstreamFailed(err.reason, err.sqlstate, err.message, err.kind === 'upstream', err.cause);
      this.close('upstream_failed', err.toFrame());
    } else {
      this.fail(err);
    }
  }

  /** A CancelRequest: to our own session, or over the bus to whichever instance (or worker) owns the key. No reply whatever the outcome (R5). */
  private forwardCancel(processId: number, secretKey: Buffer): void {
    const target = this.ctx.cancels.lookup(processId, secretKey);
    if (target !== undefined) target.cancel();
    else this.ctx.bus.publishCancel({ processId, secretHash: hashCancelSecret(secretKey, this.ctx.mockSecret) });
    this.close('cancel', 'end_soon');
  }

  // ---------------------------------------------------------------- events from the client and the clock

  private readonly onClientData = (chunk: Buffer): void => {
    if (!this.closed) this.conn.push(chunk); // after close: reading on only to see the peer's FIN
  };

  private readonly onClientError = (err: Error): void => {
    if (this.currentPhase === 'tls_handshake') {
      this.ctx.metrics.tlsHandshakes.inc({ outcome: 'failed', version: 'none' });
      this.preauth!.failures.rejected('tls_handshake_failed');
      this.close('tls_failed', 'destroy');
      return;
    }
    this.ctx.log.debug({ session: this.id, err: err.message }, 'client socket error');
  };

  private readonly onClientClose = (): void => {
    const phase = this.currentPhase;
    if (phase === 'closed') return;
    if (phase === 'relaying') {
      this.close(this.relay!.state.terminateSeen ? 'client_terminate' : 'client_eof', 'none');
      return;
    }
    const { failures, progress } = this.preauth!;
    if (phase === 'authenticating' || phase === 'connecting') {
      failures.auditAuthFailure(progress.stage, 'client_aborted', undefined, undefined);
      return this.close('client_aborted', 'destroy');
    }
    failures.rejected(this.subject.startup === null ? 'client_aborted' : 'client_aborted_startup');
    this.close('client_aborted', 'none');
  };

  private onDeadline(): void {
    const phase = this.currentPhase;
    if (phase === 'closed' || phase === 'relaying') return;
    const { failures, progress } = this.preauth!;
    if (phase === 'authenticating' || phase === 'connecting') {
      failures.auditAuthFailure(progress.stage, 'auth_timeout', '08006', 'authentication timed out');
      return this.close('auth_timeout', Errors.authTimeout().toFrame());
    }
    // Still in the startup packet or TLS handshake: close silently, as PostgreSQL does.
    failures.rejected('auth_timeout');
    this.close('auth_timeout', 'destroy');
  }

  /** The client's part of the login is done: nothing more is read until the relay starts. */
  private onClientDone(): void {
    this.preauth!.progress.stage = 'backend_connect';
    this.setPhase('connecting');
    this.conn.sock.pause();
  }

  // ---------------------------------------------------------------- what the proxy asks of a session

  /** Operator, drain or reload: FATAL at a message boundary, then close. */
  terminate(err: PgError, reason: CloseReason): void {
    if (this.closed) return;
    const relay = this.relay;
    if (relay === null || this.currentPhase !== 'relaying') {
      this.close(reason, err.toFrame());
      return;
    }
    relay.releaseBackend();
    this.close(reason, relay.noticeFor(err));
  }

  /** The sweeper, ten times a second: staff token expiry and revocation, then the tenant's timeouts. */
  checkTimers(now: number, current?: LimitSettings): void {
    if (this.currentPhase !== 'relaying') return;
    const staff = this.subject.staffIdentity;
    if (staff !== null) {
      if (Date.now() >= staff.expMs) {
        this.terminate(Errors.staffAccessExpired(), 'auth_expired');
        return;
      }
      if (this.grantExpMs !== null && Date.now() >= this.grantExpMs) {
        this.terminate(Errors.staffAccessWithdrawn(), 'staff_withdrawn');
        return;
      }
      // The customer must be able to see what this session does: not for longer than transparency_max_lag.
      if (this.ctx.isTransparencyLagging(this.subject.tenant!)) {
        this.ctx.log.warn({ session: this.id, tenant: this.tenantId }, "staff session ended: its records cannot reach the customer's staff_access_log");
        this.terminate(Errors.transparencyLagging(), 'transparency_lag');
        return;
      }
      if (this.ctx.isStaffRevoked(staff.jti, staff.sub)) {
        this.terminate(Errors.adminShutdown('staff_revoked'), 'staff_revoked');
        return;
      }
    }
    this.relay!.checkTimers(now, current ?? this.subject.tenant!.limits);
  }

  /** The ticket whose grant let this staff session in (on_request), while it relays; else null (ConsentSubject). */
  get consentTicket(): string | null {
    return this.grantExpMs === null || this.currentPhase !== 'relaying' ? null : this.subject.staffIdentity!.ticket;
  }

  /**
   * The re-check found the grant (it may have been extended), or none open, or could not ask for
   * too long: the session ends unless an open grant still allows its access. True if it ended.
   */
  applyGrant(grant: SupportGrant | undefined | 'unverifiable'): boolean {
    const staff = this.subject.staffIdentity;
    if (this.consentTicket === null || staff === null) return false;
    if (grant !== undefined && grant !== 'unverifiable' && lesserAccess(grant.access, staff.access) === staff.access) {
      this.grantExpMs = grant.expiresAtMs;
      return false;
    }
    this.ctx.log.info({ session: this.id, tenant: this.tenantId, why: grant === 'unverifiable' ? 'unverifiable' : grant === undefined ? 'withdrawn' : 'narrowed' }, 'staff session ended: the customer\'s grant is gone');
    this.terminate(Errors.staffAccessWithdrawn(), 'staff_withdrawn');
    return true;
  }

  /** A CancelRequest with this session's key: reaches its backend if that runs something (CancelTarget). */
  cancel(): void {
    this.relay?.cancelRunning();
  }

  noteLimit(limit: string): void {
    this.ctx.metrics.limitRejections.inc({ tenant: this.subject.tenant!.id, limit });
    if (this.limitEvents.length < 16) this.limitEvents.push(limit);
  }

  audit(e: AuditEvent): void {
    this.ctx.audit.append(this.records.envelope(e));
  }

  auditDurable(e: AuditEvent): Promise<void> {
    return this.ctx.audit.appendDurable(this.records.envelope(e));
  }

  get tenantId(): string | undefined {
    return this.subject.tenant?.id;
  }

  get userName(): string | undefined {
    return this.subject.startup?.user;
  }

  /** The staff token behind this session (null for a tenant user's session). */
  get staff(): StaffIdentity | null {
    return this.subject.staffIdentity;
  }

  get bytesIn(): number {
    return this.relay?.bytesIn ?? this.conn.bytesIn;
  }

  get bytesOut(): number {
    return this.relay?.bytesOut ?? 0;
  }

  /** What the admin API lists: no secrets, user-supplied names sanitized. */
  describe(): SessionView {
    return describeSession(this.subject, this.currentPhase, this.startedAt, this.relay, this.conn.bytesIn);
  }

  /** Adds what moved since the last fold to the traffic counters (at scrape time and at the end). */
  foldTraffic(m: Metrics): void {
    if (this.relay !== null) this.traffic.fold(m, this.subject.tenant!.id, this.relay);
  }
}
