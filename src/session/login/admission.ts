/**
 * Step 2, admission: a pure function from the startup packet, the configuration and the client's
 * source to a login plan: which tenant and user (or staff), why the login will fail if it will
 * (told only after a full exchange, rule 3), and which limits to take before any SCRAM work. No
 * I/O; the limit store and the authenticator act on the plan.
 */
import { isIPv4 } from 'node:net';
import type { Config, TenantConfig, UserConfig } from '../../config/schema.js';
import { Errors, type PgError } from '../../errors.js';
import { resolveStartup, type ResolvedStartup } from '../../routing/resolve.js';
import { LimitKeys, type LockoutRule, type RateRule } from '../../limits/store.js';
import type { TlsFacts } from './handshake.js';

export interface AdmissionInput {
  readonly params: Map<string, string>;
  readonly tls: TlsFacts;
  readonly config: Config;
  /** The client's address, and as the limits key it (IPv6 by /64). */
  readonly remoteAddress: string;
  readonly source: string;
  readonly draining: boolean;
  readonly isSuspended: (tenantId: string) => boolean;
}

export interface LoginPlan {
  readonly startup: ResolvedStartup;
  readonly tenant: TenantConfig | undefined;
  /** The configured user; undefined for staff, for a login that will fail and for a looked-up one. */
  readonly user: UserConfig | undefined;
  /** Not a configured user, but the tenant has auth_query: the verifier comes from the tenant's server. */
  readonly lookup: boolean;
  /** The user name is [staff] login_user: a JWT in a cleartext password exchange instead of SCRAM. */
  readonly staff: boolean;
  /** Why the login will fail, decided now and told only after a full exchange (rule 3). */
  readonly failReason: string | null;
  /** The tenant's connection rate, taken before any SCRAM work (null: none applies). */
  readonly rate: RateRule | null;
  /** Authentication-failure cool-downs that apply to this attempt. */
  readonly lockouts: LockoutRule[];
}

export type Admission =
  | { readonly ok: true; readonly plan: LoginPlan }
  /** `startup` is known when the refusal came after the packet was understood (the audit names it). */
  | { readonly ok: false; readonly startup: ResolvedStartup | null; readonly error: PgError };

export function admit(i: AdmissionInput): Admission {
  if (i.draining) return { ok: false, startup: null, error: Errors.shuttingDown() };
  let startup: ResolvedStartup;
  try {
    startup = resolveStartup(i.params, i.tls.sni, i.config.server);
  } catch (err) {
    if (err instanceof Error && 'sqlstate' in err) return { ok: false, startup: null, error: err as PgError };
    throw err;
  }
  // T1: before any authentication request (cancel requests were handled in the handshake).
  if (i.config.server.requireTls && i.tls.negotiation === 'none') return { ok: false, startup, error: Errors.tlsRequired() };
  const tenant = i.config.tenants.get(startup.tenantId);
  // Staff: a JWT as the password, which only TLS may carry (before any authentication request).
  const staff = i.config.staff !== undefined && startup.user === i.config.staff.loginUser;
  if (staff && i.tls.negotiation === 'none') return { ok: false, startup, error: Errors.tlsRequired() };
  let failReason: string | null = null;
  if (tenant === undefined) failReason = 'unknown_tenant';
  else if (!tenant.enabled) failReason = 'tenant_disabled';
  else if (i.isSuspended(tenant.id)) failReason = 'tenant_suspended';
  else if (!isAllowedSource(tenant, i.remoteAddress)) failReason = 'source_not_allowed';
  const user = staff ? undefined : tenant?.users.get(startup.user);
  // With auth_query, a role not in `users` is looked up on the tenant's server (the authenticator does it).
  const lookup = failReason === null && user === undefined && !staff && tenant!.authQuery !== undefined;
  if (failReason === null && user === undefined && !staff && !lookup) failReason = 'unknown_user';
  const rate =
    failReason === null && tenant!.limits.newConnectionsPerSecond > 0
      ? { key: LimitKeys.tenantRate(tenant!.id), ratePerSecond: tenant!.limits.newConnectionsPerSecond, burst: tenant!.limits.newConnectionsBurst }
      : null;
  return {
    ok: true,
    plan: { startup, tenant, user: failReason === null ? user : undefined, lookup, staff, failReason, rate, lockouts: lockoutRules(tenant, i.config, i.source) },
  };
}

/** Authentication-failure cool-downs that apply to an attempt: per (tenant, source) and per source. */
export function lockoutRules(tenant: TenantConfig | undefined, config: Config, source: string): LockoutRule[] {
  const rules: LockoutRule[] = [];
  if (tenant !== undefined && tenant.limits.authFailureLimit > 0) {
    rules.push({
      key: LimitKeys.tenantSourceAuth(tenant.id, source),
      maxFailures: tenant.limits.authFailureLimit,
      windowMs: tenant.limits.authFailureWindowMs,
      cooldownMs: tenant.limits.authFailureCooldownMs,
    });
  }
  const g = config.limits;
  if (g.authFailuresPerSource > 0) {
    rules.push({
      key: LimitKeys.sourceAuth(source),
      maxFailures: g.authFailuresPerSource,
      windowMs: g.authFailureWindowMs,
      cooldownMs: g.authFailureCooldownMs,
    });
  }
  return rules;
}

/**
 * Per-tenant allowlist; IPv4-mapped IPv6 addresses are checked as IPv4. BlockList.check builds a
 * SocketAddress each call (~9 µs), so answers are kept per tenant config object (replaced, never
 * changed, when the tenant changes: no stale answer) and address, a bounded number in all.
 */
function isAllowedSource(tenant: TenantConfig, addr: string): boolean {
  let known = allowAnswers.get(tenant);
  if (known === undefined) allowAnswers.set(tenant, (known = new Map<string, boolean>()));
  let ok = known.get(addr);
  if (ok === undefined) {
    const v4 = addr.startsWith('::ffff:') ? addr.slice(7) : addr;
    ok = isIPv4(v4) ? tenant.allowList.check(v4, 'ipv4') : tenant.allowList.check(addr, 'ipv6');
    if (++allowAnswerCount > MAX_ALLOW_ANSWERS) {
      allowAnswers = new WeakMap();
      allowAnswerCount = 1;
      allowAnswers.set(tenant, (known = new Map<string, boolean>()));
    }
    known.set(addr, ok);
  }
  return ok;
}
const MAX_ALLOW_ANSWERS = 16_384;
let allowAnswers = new WeakMap<TenantConfig, Map<string, boolean>>();
let allowAnswerCount = 0;
