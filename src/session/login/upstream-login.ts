/**
 * Step 4, the upstream login: the database check, the tenant's connection slots, and a backend
 * (session mode) or the parameters a transaction-mode client is shown (no backend held until its
 * first transaction). The pool does the connecting; this step decides what to ask it for.
 */
import type { TenantConfig } from '../../config/schema.js';
import { Errors, PgError } from '../../errors.js';
import { LimitKeys, type Lease, type SlotRequest } from '../../limits/store.js';
import { poolKey, type Backend as PooledBackend, type TenantPool } from '../../pool/backend-pool.js';
import type { UpstreamLogin } from '../../pool/upstream.js';
import type { SessionContext } from '../context.js';
import { checkAborted } from '../client-conn.js';
import type { LoginPlan } from './admission.js';
import type { Authenticated } from './authenticator.js';

export interface UpstreamSession {
  readonly login: UpstreamLogin;
  readonly poolKey: string;
  readonly pool: TenantPool;
  /** Staff sessions keep one backend (session semantics): their audit and read-only guard see one server session. */
  readonly transactionMode: boolean;
  /** Session mode: the client's backend for its whole session. Transaction mode: null. */
  readonly backend: PooledBackend | null;
  /** What the client is shown as ParameterStatus. */
  readonly parameters: ReadonlyMap<string, string>;
  /** Sessions of the tenant (or staff slots) active once this one counted (audit). */
  readonly tenantActiveAfter: number;
}

/**
 * `adoptLease` takes the connection slots the moment they are granted (the session releases
 * them exactly once, even if it already ended); `staffSlots` > 0 counts a staff session under
 * its reserve instead of the tenant's slots.
 */
export async function upstreamLogin(
  ctx: SessionContext,
  plan: LoginPlan,
  who: Authenticated,
  staffSlots: number,
  signal: AbortSignal,
  adoptLease: (lease: Lease) => void,
): Promise<UpstreamSession> {
  const tenant = plan.tenant!;
  const startup = plan.startup;
  // Checked after authentication, as PostgreSQL checks a database's existence.
  const database = startup.database ?? tenant.backendDatabase;
  if (tenant.databases !== undefined && !tenant.databases.has(database)) throw Errors.undefinedDatabase(database);
  // A fail-closed tenant's sessions are audited statement by statement: no audit, no session (S10).
  if (tenant.auditFailClosed && !ctx.audit.healthy) throw Errors.auditUnavailable();
  const got = await ctx.limits.acquire(connectionSlots(tenant, plan, staffSlots));
  if (got.ok) adoptLease(got.lease);
  checkAborted(signal);
  if (!got.ok) {
    if (staffSlots > 0) {
      ctx.metrics.limitRejections.inc({ tenant: tenant.id, limit: 'staff_reserved_connections' });
      throw Errors.tooManyConnectionsForRole(startup.user);
    }
    const byUser = got.refused === 1;
    ctx.metrics.limitRejections.inc({ tenant: tenant.id, limit: byUser ? 'max_connections_per_user' : 'max_client_connections' });
    throw byUser ? Errors.tooManyConnectionsForRole(startup.user) : Errors.tooManyConnectionsForDatabase(database);
  }
  const login = upstreamCredentials(tenant, plan, who, database);
  const key = poolKey(login);
  try {
    return await connectUpstream(ctx, tenant, plan, who, login, key, staffSlots, signal, got.active[0] ?? 0);
  } catch (err) {
    // A looked-up verifier the tenant's server no longer holds (ALTER ROLE … PASSWORD): look it up again next time.
    if (plan.lookup && err instanceof PgError && (err.reason === 'backend_auth_failed' || err.reason === 'backend_connect_failed')) {
      ctx.authLookups.forget(tenant.id, startup.user);
    }
    throw err;
  }
}

async function connectUpstream(
  ctx: SessionContext,
  tenant: TenantConfig,
  plan: LoginPlan,
  who: Authenticated,
  login: UpstreamLogin,
  key: string,
  staffSlots: number,
  signal: AbortSignal,
  tenantActiveAfter: number,
): Promise<UpstreamSession> {
  const pool = ctx.pools.get(tenant.id, tenant.pool);
  const transactionMode = who.kind === 'scram' && tenant.pool.mode === 'transaction';
  // The first login of a pool key takes a backend: it proves the credentials work upstream and
  // gives the parameters clients are shown. After that, a transaction-mode client needs none
  // until its first transaction (a session-mode client keeps one for the whole session).
  const target = ctx.upstreamTarget(tenant);
  if (transactionMode) {
    const parameters = await pool.loginParameters(key, login, target);
    checkAborted(signal);
    return { login, poolKey: key, pool, transactionMode, backend: null, parameters, tenantActiveAfter };
  }
  const backend = await pool.acquire(key, login, target, staffSlots);
  try {
    checkAborted(signal);
  } catch (err) {
    pool.release(backend, true, false); // the client left while we waited; the backend is clean
    throw err;
  }
  const parameters = pool.parametersFor(key) ?? backend.conn.parameters;
  return { login, poolKey: key, pool, transactionMode, backend, parameters, tenantActiveAfter };
}

/**
 * The connection slots a session holds: the tenant's and its user's, or for staff (with a
 * reserve) the tenant's staff slots only, so staff can get in while the tenant is at its cap.
 */
function connectionSlots(tenant: TenantConfig, plan: LoginPlan, staffSlots: number): SlotRequest[] {
  if (staffSlots > 0) return [{ key: LimitKeys.staffConnections(tenant.id), limit: staffSlots }];
  const slots: SlotRequest[] = [{ key: LimitKeys.tenantConnections(tenant.id), limit: tenant.maxClientConnections }];
  const user = plan.user;
  // A looked-up role (auth_query) has the tenant's per-user cap.
  const perUser = user === undefined ? (plan.lookup ? tenant.limits.maxConnectionsPerUser : 0) : user.maxConnections > 0 ? user.maxConnections : tenant.limits.maxConnectionsPerUser;
  if (perUser > 0) slots.push({ key: LimitKeys.userConnections(tenant.id, user?.name ?? plan.startup.user), limit: perUser });
  return slots;
}

/** Who logs in upstream, and with what: SCRAM pass-through (the client's key), a configured password, or the staff role. */
function upstreamCredentials(tenant: TenantConfig, plan: LoginPlan, who: Authenticated, database: string): UpstreamLogin {
  const startup = plan.startup;
  if (who.kind === 'staff') {
    // The tenant's staff role; read access also makes every transaction read-only (25006 on
    // a write). A startup parameter is applied after `options`, so a client cannot undo it there.
    const params = new Map(startup.forward);
    if (who.identity.access === 'read') params.set('default_transaction_read_only', 'on');
    return { user: tenant.staffBackendUser!, database, params, credential: { kind: 'password', password: process.env[tenant.staffBackendPasswordEnv!] ?? '' } };
  }
  if (plan.lookup) {
    // auth_query: the role itself, by SCRAM pass-through with the verifier its own server gave.
    return { user: startup.user, database, params: startup.forward, credential: { kind: 'client_key', clientKey: who.clientKey, verifier: who.verifier } };
  }
  const user = plan.user!;
  const password = user.backendPasswordEnv === undefined ? undefined : process.env[user.backendPasswordEnv];
  return {
    user: user.backendUser,
    database,
    params: startup.forward,
    credential: password !== undefined ? { kind: 'password', password } : { kind: 'client_key', clientKey: who.clientKey, verifier: who.verifier },
  };
}
