/**
 * Staff login: the JWT arrives as the password (AuthenticationCleartextPassword, TLS only), is
 * verified, checked for revocation and single use, and the decision is made durable as
 * `staff.access` before any backend connection (SECURITY.md §2.5). A refusal is the same 28P01 as
 * any failed login; the reason goes to the audit only.
 */
import { Errors } from '../../errors.js';
import { AUTHENTICATION_CLEARTEXT_PASSWORD } from '../../protocol/backend.js';
import { Frontend, Limits } from '../../protocol/codes.js';
import { jtiKey } from '../../auth/jwt.js';
import { LimitKeys } from '../../limits/store.js';
import type { SessionContext } from '../context.js';
import type { SessionRecords } from '../audit-records.js';
import { checkAborted, type ClientConn } from '../client-conn.js';
import type { LoginPlan } from './admission.js';
import { AuthFailure, Unaudited, type Authenticated, type Authenticator, type LoginProgress } from './authenticator.js';
import { readAuthMessage } from './auth-message.js';
import { lesserAccess, type SupportGrant } from '../../auth/support-grants.js';
import type { TenantConfig } from '../../config/schema.js';

const passwordLength = (type: number): number => (type === Frontend.Password ? Limits.passwordBytes : -1);

export class StaffLogin implements Authenticator {
  constructor(
    private readonly ctx: SessionContext,
    private readonly records: SessionRecords,
    private readonly signal: AbortSignal,
    private readonly sessionId: string,
  ) {}

  async authenticate(conn: ClientConn, plan: LoginPlan, negotiate: Buffer | null, progress: LoginProgress): Promise<Authenticated> {
    const ctx = this.ctx;
    // Without a working audit log no staff session may start (S10): nothing would record it.
    if (!ctx.audit.healthy) throw Errors.auditUnavailable();
    progress.stage = 'password';
    if (negotiate !== null) conn.send(negotiate, AUTHENTICATION_CLEARTEXT_PASSWORD);
    else conn.send(AUTHENTICATION_CLEARTEXT_PASSWORD);
    // PasswordMessage: one NUL-terminated string, the JWT.
    const body = (await readAuthMessage(conn, passwordLength, 'password')).body;
    // PostgreSQL's recv_password_packet: the string must fill the message exactly.
    if (body.length === 0 || body.indexOf(0) !== body.length - 1) throw Errors.invalidFormat('invalid password packet size');
    const token = body.toString('utf8', 0, body.length - 1);
    progress.clientDone();

    const startup = plan.startup;
    const staffCfg = ctx.config.staff!;
    const decision = await ctx.staffVerifier!.decide(token, startup.tenantId, plan.tenant?.staffAccess ?? 'deny');
    checkAborted(this.signal);
    let reason = plan.failReason ?? (decision.ok ? null : decision.reason);
    const onRequest = plan.tenant?.staffAccess === 'on_request';
    let grant: SupportGrant | null = null;
    if (reason === null && decision.ok) {
      const c = decision.claims;
      const tenant = plan.tenant;
      if (ctx.isStaffRevoked(c.jti, c.sub)) reason = 'jwt_invalid:revoked';
      // The customer's copy of staff records is behind by more than it may be: no new staff session either.
      else if (tenant !== undefined && ctx.isTransparencyLagging(tenant)) reason = 'transparency_lagging';
      else if (onRequest) {
        // Before the token's single use is spent: a login refused for want of a grant may be retried once the customer grants.
        const consent = await this.askConsent(plan.tenant, c.reason_or_ticket);
        checkAborted(this.signal);
        if (typeof consent === 'string') reason = consent;
        else grant = consent;
      }
      if (reason === null && !staffCfg.allowTokenReuse) {
        const ttlMs = c.exp * 1000 - Date.now() + staffCfg.clockToleranceMs;
        const first = await ctx.limits.claimOnce(LimitKeys.staffToken(jtiKey(c.iss, c.jti)), Math.max(1000, ttlMs));
        checkAborted(this.signal);
        if (!first) reason = 'jwt_invalid:replay';
      }
    }
    const granted = decision.ok && reason === null ? (grant === null ? decision.access : lesserAccess(decision.access, grant.access)) : null;
    try {
      await ctx.audit.appendDurable(this.records.staffAccess(conn.sock, decision, granted, reason, onRequest ? grant : undefined));
    } catch (err) {
      checkAborted(this.signal);
      ctx.log.error({ session: this.sessionId, err }, 'staff access decision could not be audited');
      ctx.metrics.errors.inc({ kind: 'internal' });
      throw new Unaudited(Errors.auditUnavailable());
    }
    checkAborted(this.signal);
    if (granted === null || !decision.ok) throw new AuthFailure(Errors.authFailed(startup.user, reason ?? 'jwt_invalid:scope'), 'password');
    const c = decision.claims;
    return {
      kind: 'staff',
      claims: c,
      identity: { sub: c.sub, jti: c.jti, ticket: c.reason_or_ticket, access: granted, expMs: c.exp * 1000, grantExpMs: grant?.expiresAtMs ?? null },
    };
  }

  /**
   * staff_access = "on_request": the customer's open grant for the ticket, or the refusal's audit
   * reason. A server that cannot be asked refuses the login (fail closed).
   */
  private async askConsent(tenant: TenantConfig, ticket: string): Promise<SupportGrant | string> {
    const ctx = this.ctx;
    let outcome: string;
    let result: SupportGrant | string;
    try {
      const check = await ctx.supportGrants.check(tenant, ctx.upstreamTarget(tenant), ticket);
      outcome = check.ok ? 'granted' : check.why;
      result = check.ok ? check.grant : `consent:${check.why}`;
    } catch (err) {
      ctx.log.warn({ session: this.sessionId, tenant: tenant.id, err: (err as Error).message }, 'support grant check failed: staff login refused');
      outcome = 'unavailable';
      result = 'consent:unavailable';
    }
    ctx.metrics.staffConsentChecks.inc({ tenant: tenant.id, outcome });
    return result;
  }
}
