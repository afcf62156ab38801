/**
 * [tenants.<id>]: each tenant's server, who may connect and from where, its users and their
 * verifiers, and its overrides of [pool] and [limits] (validate-settings.ts).
 */
import { BlockList, isIP } from 'node:net';
import { DEFAULT_AUTH_QUERY, TENANT_ID_RE, type AuditConfig, type AuthQuerySettings, type AuditParameters, type BackendTls, type StaffAccess, type TenantConfig, type TenantDefaults, type UserConfig } from './schema.js';
import { parseScramVerifier, type ScramVerifier } from './scram-verifier.js';
import { isTable, type Reader, type Tree } from './toml-reader.js';
import { LIMIT_KEYS, POOL_KEYS, readLimits, readPool } from './validate-settings.js';

export type { TenantDefaults };

const TENANT_AUDIT_KEYS = [
  'staff_access', 'staff_backend_user', 'staff_backend_password_env', 'audit_statements', 'audit_parameters', 'audit_fail_closed', 'access_transparency',
  'transparency_max_lag',
] as const;
const AUTH_QUERY_KEYS = [
  'auth_user', 'auth_password_env', 'auth_query', 'auth_database', 'auth_cache_ttl', 'auth_negative_cache_ttl', 'auth_cache_size',
  'auth_pool_size', 'auth_query_timeout', 'auth_lookups_per_second',
] as const;
const TENANT_KEYS = [...AUTH_QUERY_KEYS, 'backend', 'backend_tls', 'backend_ca', 'max_client_connections', 'allow_cidrs', 'enabled', 'databases', 'users', ...POOL_KEYS, ...LIMIT_KEYS, ...TENANT_AUDIT_KEYS];

export function readTenants(r: Reader, tree: Tree, resolvePath: (p: string) => string, defaults: TenantDefaults): Map<string, TenantConfig> {
  const tenants = new Map<string, TenantConfig>();
  // Tenant ids are free-form keys, each checked below.
  const t = tree['tenants'];
  if (t !== undefined && !isTable(t)) r.problems.push('tenants: must be a table');
  for (const [id, raw] of Object.entries((t ?? {}) as Tree)) {
    const tenant = readTenantEntry(r, id, raw, resolvePath, defaults);
    if (tenant !== undefined) tenants.set(id, tenant);
  }
  return tenants;
}

/**
 * One `[tenants.<id>]` table, from the file or (as JSON) from the catalog: the same checks and
 * defaults for both, problems named `tenants.<id>.<key>`. Undefined when the id or the table
 * itself is unusable.
 */
export function readTenantEntry(r: Reader, id: string, raw: unknown, resolvePath: (p: string) => string, defaults: TenantDefaults): TenantConfig | undefined {
  const path = `tenants.${id}`;
  if (!TENANT_ID_RE.test(id)) {
    r.problems.push(`${path}: tenant id must be a lower-case DNS label (a-z, 0-9, '-')`);
    return undefined;
  }
  if (!isTable(raw)) {
    r.problems.push(`${path}: must be a table`);
    return undefined;
  }
  return readTenant(r, id, raw, path, resolvePath, defaults);
}

/** The rules between a tenant and other sections: fail-closed audit needs somewhere durable to write before a statement runs. */
export function checkTenantNeeds(r: Reader, t: TenantConfig, audit: AuditConfig): void {
  if (audit.file === undefined && t.auditFailClosed) r.problems.push(`tenants.${t.id}.audit_fail_closed: needs audit.file`);
  if (t.accessTransparency && audit.transparencySpoolDir === undefined) {
    r.problems.push(`tenants.${t.id}.${t.staffAccess === 'on_request' ? 'staff_access' : 'access_transparency'}: needs audit.transparency_spool_dir (or audit.file)`);
  }
}

function readTenant(r: Reader, id: string, tt: Tree, path: string, resolvePath: (p: string) => string, defaults: TenantDefaults): TenantConfig {
  r.unknownKeys(tt, path, TENANT_KEYS);
  const backend = readBackendUrl(r, tt, path);
  const backendTls = r.str(tt, 'backend_tls', path, 'verify-full') ?? 'verify-full';
  if (!['disable', 'require', 'verify-full'].includes(backendTls)) r.problems.push(`${path}.backend_tls: must be "disable", "require" or "verify-full"`);
  const backendCa = r.str(tt, 'backend_ca', path);
  if (backendTls === 'verify-full' && backendCa === undefined) {
    r.problems.push(`${path}.backend_ca: required when backend_tls = "verify-full"`);
  }
  const allowCidrs = r.strArray(tt, 'allow_cidrs', path, ['0.0.0.0/0', '::/0']);
  const allowList = readCidrList(r, allowCidrs, path);
  const users = readUsers(r, tt, path);
  return {
    id,
    enabled: r.bool(tt, 'enabled', path, true),
    ...backend,
    backendTls: backendTls as BackendTls,
    backendCaPath: backendCa === undefined ? undefined : resolvePath(backendCa),
    maxClientConnections: r.int(tt, 'max_client_connections', path, defaults.maxClientConnections, 0, 1_000_000),
    allowCidrs,
    allowList,
    databases: tt['databases'] === undefined ? undefined : new Set(r.strArray(tt, 'databases', path, [])),
    users,
    pool: readPool(r, tt, path, defaults.pool),
    limits: readLimits(r, tt, path, defaults.limits),
    ...withTransparency(r, path, readTenantAudit(r, tt, path), readAuthQuery(r, tt, path), tt),
  };
}

/**
 * Staff access on request asks the tenant's own server (its grants; the customer's copy of the
 * staff records), through the lookup role: so 'on_request' and access_transparency need auth_user.
 */
function withTransparency<A extends { staffAccess: StaffAccess }>(
  r: Reader,
  path: string,
  audit: A,
  authQuery: AuthQuerySettings | undefined,
  tt: Tree,
): A & Pick<TenantConfig, 'authQuery' | 'accessTransparency' | 'transparencyMaxLagMs'> {
  const onRequest = audit.staffAccess === 'on_request';
  const accessTransparency = r.bool(tt, 'access_transparency', path, onRequest);
  if (onRequest && !accessTransparency) r.problems.push(`${path}.access_transparency: cannot be false with staff_access = "on_request" (the customer sees what staff did)`);
  if ((onRequest || accessTransparency) && authQuery === undefined) {
    r.problems.push(`${path}.${onRequest ? 'staff_access' : 'access_transparency'}: ${onRequest ? '"on_request"' : 'true'} needs auth_user and auth_password_env (the lookup role asks the tenant's server)`);
  }
  return {
    ...audit,
    authQuery,
    accessTransparency,
    transparencyMaxLagMs: r.duration(tt, 'transparency_max_lag', path, 30_000, 1_000, 3_600_000),
  };
}

/**
 * auth_user and auth_password_env turn auth_query on; the other auth_* keys need them. The query
 * must take the role name as $1 (a bind parameter, never spliced into the text).
 */
function readAuthQuery(r: Reader, tt: Tree, path: string): AuthQuerySettings | undefined {
  const user = r.str(tt, 'auth_user', path);
  const passwordEnv = r.str(tt, 'auth_password_env', path);
  r.namesEnv(`${path}.auth_password_env`, passwordEnv);
  if (user === undefined || passwordEnv === undefined) {
    if (user !== undefined || passwordEnv !== undefined || AUTH_QUERY_KEYS.some((k) => tt[k] !== undefined)) {
      r.problems.push(`${path}.auth_user: auth_query needs both auth_user and auth_password_env`);
    }
    return undefined;
  }
  const query = r.str(tt, 'auth_query', path, DEFAULT_AUTH_QUERY) ?? DEFAULT_AUTH_QUERY;
  if (!/\$1(?!\d)/.test(query) || /\$(?:[2-9]|1\d)/.test(query)) r.problems.push(`${path}.auth_query: must use the role name as $1 and no other parameter`);
  return {
    user,
    passwordEnv,
    query,
    database: r.str(tt, 'auth_database', path, 'postgres') ?? 'postgres',
    cacheTtlMs: r.duration(tt, 'auth_cache_ttl', path, 60_000, 0, 86_400_000),
    negativeCacheTtlMs: r.duration(tt, 'auth_negative_cache_ttl', path, 10_000, 0, 3_600_000),
    cacheSize: r.int(tt, 'auth_cache_size', path, 10_000, 1, 10_000_000),
    poolSize: r.int(tt, 'auth_pool_size', path, 2, 1, 20),
    timeoutMs: r.duration(tt, 'auth_query_timeout', path, 3_000, 100, 60_000),
    lookupsPerSecond: r.num(tt, 'auth_lookups_per_second', path, 20, 0.1, 100_000),
  };
}

/** `backend = "postgresql://host:port/database"`: where the tenant's server is, never with credentials. */
function readBackendUrl(r: Reader, tt: Tree, path: string): Pick<TenantConfig, 'backendHost' | 'backendPort' | 'backendDatabase'> {
  const backend = r.str(tt, 'backend', path);
  let backendHost = '';
  let backendPort = 5432;
  let backendDatabase = 'postgres';
  if (backend === undefined) r.problems.push(`${path}.backend: missing (e.g. "postgresql://10.0.0.5:5432/appdb")`);
  else {
    try {
      const u = new URL(backend);
      if (u.protocol !== 'postgresql:' && u.protocol !== 'postgres:') throw new Error('scheme');
      if (u.username !== '' || u.password !== '') {
        r.problems.push(`${path}.backend: must not contain credentials (use users.<name>.backend_password_env)`);
      }
      backendHost = u.hostname.replace(/^\[|\]$/g, '');
      backendPort = u.port === '' ? 5432 : Number(u.port);
      backendDatabase = decodeURIComponent(u.pathname.replace(/^\//, '')) || 'postgres';
      if (backendHost === '') throw new Error('host');
    } catch {
      r.problems.push(`${path}.backend: must be a URL like "postgresql://host:5432/database"`);
    }
  }
  return { backendHost, backendPort, backendDatabase };
}

/** A list of CIDRs (allow_cidrs, server.proxy_protocol_trusted) as a BlockList; a bare address is a /32 (or /128). */
export function readCidrList(r: Reader, cidrs: readonly string[], path: string, key = 'allow_cidrs'): BlockList {
  const allowList = new BlockList();
  for (const c of cidrs) {
    const m = /^([^/]+)(?:\/(\d{1,3}))?$/.exec(c);
    const addr = m?.[1];
    const family = isIP(addr ?? '');
    const prefix = m?.[2] === undefined ? (family === 6 ? 128 : 32) : Number(m[2]);
    if (m === null || family === 0 || prefix > (family === 6 ? 128 : 32)) {
      r.problems.push(`${path}.${key}: "${c}" is not a CIDR like "10.0.0.0/8"`);
      continue;
    }
    allowList.addSubnet(addr!, prefix, family === 6 ? 'ipv6' : 'ipv4');
  }
  return allowList;
}

/** [tenants.<id>.users.<name>]: a SCRAM verifier each, never a password. */
function readUsers(r: Reader, tt: Tree, path: string): Map<string, UserConfig> {
  const users = new Map<string, UserConfig>();
  const u = tt['users'];
  if (u !== undefined && !isTable(u)) r.problems.push(`${path}.users: must be a table`);
  for (const [name, rawUser] of Object.entries((u as Tree | undefined) ?? {})) {
    const upath = `${path}.users.${name}`;
    if (!isTable(rawUser)) {
      r.problems.push(`${upath}: must be a table`);
      continue;
    }
    r.unknownKeys(rawUser, upath, ['scram', 'backend_password_env', 'backend_user', 'max_connections', 'password']);
    // Never echo the value: pgwarden holds verifiers only, never a client's plaintext password.
    if (rawUser['password'] !== undefined) r.problems.push(`${upath}.password: not accepted; give scram, a SCRAM-SHA-256 verifier (make one with "pgwarden hash-password")`);
    const scram = r.str(rawUser, 'scram', upath);
    let verifier: ScramVerifier | undefined;
    if (scram === undefined) r.problems.push(`${upath}.scram: missing (make one with "pgwarden hash-password")`);
    else {
      verifier = parseScramVerifier(scram);
      // Never echo the value: it is a secret.
      if (verifier === undefined) r.problems.push(`${upath}.scram: not a SCRAM-SHA-256 verifier (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)`);
    }
    const envName = r.str(rawUser, 'backend_password_env', upath);
    r.namesEnv(`${upath}.backend_password_env`, envName);
    if (verifier !== undefined) {
      users.set(name, { name, verifier, backendUser: r.str(rawUser, 'backend_user', upath, name) ?? name, backendPasswordEnv: envName, maxConnections: r.int(rawUser, 'max_connections', upath, 0, 0, 1_000_000) });
    }
  }
  return users;
}

function readTenantAudit(
  r: Reader,
  tt: Tree,
  path: string,
): Pick<TenantConfig, 'staffAccess' | 'staffBackendUser' | 'staffBackendPasswordEnv' | 'auditStatements' | 'auditParameters' | 'auditFailClosed'> {
  const staffAccess = r.oneOf<StaffAccess>(tt, 'staff_access', path, ['deny', 'read', 'write', 'on_request'], 'deny');
  const staffBackendUser = r.str(tt, 'staff_backend_user', path);
  const staffBackendPasswordEnv = r.str(tt, 'staff_backend_password_env', path);
  if (staffAccess !== 'deny' && (staffBackendUser === undefined || staffBackendPasswordEnv === undefined)) {
    r.problems.push(`${path}.staff_access: "${staffAccess}" needs staff_backend_user and staff_backend_password_env`);
  }
  r.namesEnv(`${path}.staff_backend_password_env`, staffBackendPasswordEnv);
  return {
    staffAccess,
    staffBackendUser,
    staffBackendPasswordEnv,
    auditStatements: r.oneOf(tt, 'audit_statements', path, ['none', 'all'], 'none'),
    auditParameters: r.oneOf<AuditParameters>(tt, 'audit_parameters', path, ['off', 'redacted', 'full'], 'redacted'),
    auditFailClosed: r.bool(tt, 'audit_fail_closed', path, false),
  };
}
