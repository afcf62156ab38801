/**
 * How a login that fails is accounted: metrics, the aggregated pre-auth rejection records, the
 * session.auth_failure record, the authentication-failure cool-downs. The session decides that a
 * login failed and closes; this file only records it, the same way from every step.
 */
import type { PgError } from '../../errors.js';
import type { SessionContext } from '../context.js';
import type { SessionRecords, AuditSubject } from '../audit-records.js';
import type { ClientConn } from '../client-conn.js';
import type { AuthStage } from '../types.js';
import { lockoutRules, type LoginPlan } from './admission.js';

export class LoginFailures {
  constructor(
    private readonly ctx: SessionContext,
    private readonly conn: ClientConn,
    private readonly subject: AuditSubject,
    private readonly records: SessionRecords,
    private readonly source: string,
    private readonly plan: () => LoginPlan | null,
  ) {}

  /** A refused login (wrong proof, bad token…): counted toward cool-downs, audited, logged. */
  authFailed(err: PgError, stage: AuthStage): void {
    this.countAuthFailure(err.reason);
    this.ctx.metrics.errors.inc({ kind: err.kind });
    this.auditAuthFailure(stage, err.reason, err.sqlstate, err.message);
    this.ctx.log.info(
      { session: this.subject.id, tenant: this.subject.tenant?.id ?? null, client: this.conn.remoteAddress, reason: err.reason },
      'authentication failed',
    );
  }

  /** Any other error before the session started: audited if the startup packet was understood, else aggregated. */
  preauthError(err: PgError, stage: AuthStage): void {
    if (this.subject.startup !== null) {
      this.auditAuthFailure(stage, err.reason, err.sqlstate, err.message);
      if (err.kind === 'auth') this.countAuthFailure(err.reason);
    } else {
      this.ctx.rejections.record(err.reason, this.conn.remoteAddress);
    }
  }

  /** The upstream login failed: the server's refusal (R1) or ours. */
  upstreamFailed(reason: string, sqlstate: string, message: string, upstreamLost: boolean, cause?: unknown): void {
    const tenant = this.subject.tenant!.id;
    if (upstreamLost) {
      if (cause !== undefined) this.ctx.log.warn({ session: this.subject.id, tenant, reason, err: cause }, 'backend connect failed');
      this.ctx.metrics.sessions.inc({ tenant, outcome: 'upstream_failed' });
    }
    this.auditAuthFailure('backend_connect', reason, sqlstate, message);
  }

  /**
   * A connection-rate or cool-down refusal. A storm is many of these, so they are aggregated
   * (one connection.rejected record per reason, source prefix and tenant each window), as
   * pre-auth noise is: the audit log must not become the attack's amplifier.
   */
  admissionRefused(reason: 'rate_limited' | 'auth_throttled'): void {
    const tenant = this.subject.tenant?.id;
    this.ctx.metrics.limitRejections.inc({ tenant: tenant ?? 'unknown', limit: reason === 'rate_limited' ? 'new_connections_per_second' : 'auth_failures' });
    this.ctx.metrics.errors.inc({ kind: 'limit' });
    this.ctx.rejections.record(reason, this.conn.remoteAddress, tenant);
    if (reason === 'rate_limited' && tenant !== undefined) this.ctx.noteRateLimited(tenant);
  }

  /** Pre-startup noise (N4) and other unaudited ends: aggregated by reason and source. */
  rejected(reason: string): void {
    this.ctx.rejections.record(reason, this.conn.remoteAddress);
  }

  auditAuthFailure(stage: AuthStage, reason: string, sqlstate: string | undefined, message: string | undefined): void {
    this.ctx.audit.append(this.records.authFailure(this.conn.sock, stage, reason, sqlstate, message));
  }

  private countAuthFailure(reason: string): void {
    const tenant = this.subject.tenant === undefined ? 'unknown' : this.subject.tenant.id;
    this.ctx.metrics.authFailures.inc({ tenant, reason });
    this.ctx.metrics.sessions.inc({ tenant, outcome: 'auth_failed' });
    // Counts toward the cool-downs; a store that cannot be reached just forgets (it is degraded).
    const rules = this.plan()?.lockouts ?? lockoutRules(undefined, this.ctx.config, this.source);
    this.ctx.limits.noteAuthFailure(rules).catch((err: unknown) => this.ctx.log.warn({ err }, 'could not record an authentication failure'));
  }
}
