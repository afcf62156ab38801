/**
 * The typed Config and its validation. Turns the parsed TOML tree into one immutable Config
 * or a list of problems, each naming the offending key and why. Reading files is load.ts's job.
 */
import { BlockList, isIP } from 'node:net';
import { availableParallelism } from 'node:os';
import { parseScramVerifier, type ScramVerifier } from '../auth/scram.js';
import type { PoolSettings } from '../pool/backend-pool.js';

export type BackendTls = 'disable' | 'require' | 'verify-full';

export interface UserConfig {
  readonly name: string;
  /** The client's verifier; pgwarden never holds a client's plaintext password. */
  readonly verifier: ScramVerifier;
  /** Role on the tenant's server (defaults to the user's name). */
  readonly backendUser: string;
  /** Name of the env var holding the backend password; absent means SCRAM pass-through. */
  readonly backendPasswordEnv: string | undefined;
  /** Sessions this user may hold at once (0 = only the tenant's caps apply). */
  readonly maxConnections: number;
}

/**
 * Per-tenant limits ([limits] defaults with the tenant's overrides). 0 turns a limit off, except
 * max_message_bytes which is always bounded.
 */
export interface LimitSettings {
  readonly maxConnectionsPerUser: number;
  readonly newConnectionsPerSecond: number;
  readonly newConnectionsBurst: number;
  /** Authentication failures per (tenant, source address) within the window before a cool-down. */
  readonly authFailureLimit: number;
  readonly authFailureWindowMs: number;
  readonly authFailureCooldownMs: number;
  readonly queryTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly idleInTransactionTimeoutMs: number;
  readonly transactionTimeoutMs: number;
  /** How long output may wait for a client that reads nothing before the session is closed. */
  readonly sendTimeoutMs: number;
  readonly maxBandwidthBytesPerSecond: number;
  readonly maxMessageBytes: number;
}

export interface TenantConfig {
  readonly id: string;
  readonly enabled: boolean;
  readonly backendHost: string;
  readonly backendPort: number;
  readonly backendDatabase: string;
  readonly backendTls: BackendTls;
  readonly backendCaPath: string | undefined;
  readonly maxClientConnections: number;
  readonly allowCidrs: readonly string[];
  readonly allowList: BlockList;
  /** Databases a client may ask for on the tenant's server; undefined = any (the server's grants decide). */
  readonly databases: ReadonlySet<string> | undefined;
  readonly users: ReadonlyMap<string, UserConfig>;
  /** [pool] defaults with this tenant's overrides. */
  readonly pool: PoolSettings;
  /** [limits] defaults with this tenant's overrides. */
  readonly limits: LimitSettings;
  /** The most any staff token may grant on this tenant ('deny': staff cannot log in at all). */
  readonly staffAccess: StaffAccess;
  /** Role staff sessions use on the tenant's server, and the env var with its password. */
  readonly staffBackendUser: string | undefined;
  readonly staffBackendPasswordEnv: string | undefined;
  /** Statement audit for this tenant's own users ('all': every statement; staff sessions are always audited). */
  readonly auditStatements: 'none' | 'all';
  /** Bind parameters in statement audit records of tenant users. */
  readonly auditParameters: AuditParameters;
  /** Statement audit must be durable before a statement runs (fail closed, SECURITY.md S10). */
  readonly auditFailClosed: boolean;
}

export type StaffAccess = 'deny' | 'read' | 'write';
export type AuditParameters = 'off' | 'redacted' | 'full';

/** [staff]: staff log in with a short-lived JWT as the password (issue 5). */
export interface StaffConfig {
  /** The database user name that selects the staff login path. */
  readonly loginUser: string;
  /** A JWKS file (absolute path) or an https URL. */
  readonly jwks: string;
  readonly issuer: string;
  readonly audience: string;
  readonly algorithms: readonly string[];
  readonly requireMfa: boolean;
  readonly allowTokenReuse: boolean;
  /** A token whose exp - iat (or exp - now when it has no iat) exceeds this is refused: short-lived only. */
  readonly maxTokenLifetimeMs: number;
  readonly clockToleranceMs: number;
  readonly auditParameters: AuditParameters;
  /**
   * Per tenant, staff sessions allowed on top of the tenant's own caps (0: staff count against them).
   * They are counted apart from max_client_connections, cluster-wide, and each may open a backend
   * beyond max_backend_connections: an operator can get in while the tenant is at its caps.
   */
  readonly reservedConnections: number;
}

/** [audit]: the tamper-evident log, its rotation and checkpoints, and the optional PostgreSQL store. */
export interface AuditConfig {
  /** JSON-lines file (absolute path); undefined: records are only counted. */
  readonly file: string | undefined;
  /** Rotate when the file reaches this size (0: never). */
  readonly rotateBytes: number;
  /** Rotate after this long (0: never). */
  readonly rotateIntervalMs: number;
  /** Durable appends (fail-closed sessions) wait for fdatasync, not only write(2). */
  readonly fsync: boolean;
  /** Ed25519 private key (PEM, absolute path) for signed checkpoints; undefined: no checkpoints. */
  readonly checkpointKeyPath: string | undefined;
  readonly checkpointEveryRecords: number;
  readonly checkpointIntervalMs: number;
  /** The checkpoint origin line (C2SP tlog-checkpoint). */
  readonly checkpointOrigin: string;
  /** Statement text kept in a record (the rest is counted and hashed). */
  readonly queryMaxBytes: number;
  /** Each bind parameter value kept in a record (as pgaudit.log_parameter_max_size). */
  readonly paramMaxBytes: number;
  readonly postgres: AuditPostgresConfig | undefined;
}

export interface AuditPostgresConfig {
  /** postgresql:// URL without a password; the password comes from passwordEnv. */
  readonly url: string;
  readonly passwordEnv: string | undefined;
  readonly table: string;
  /** Where events wait while the store is down (absolute path). */
  readonly spoolDir: string;
  readonly batchSize: number;
  readonly flushIntervalMs: number;
}

export interface Config {
  readonly server: {
    readonly listenHost: string;
    readonly listenPort: number;
    readonly tlsCertPath: string | undefined;
    readonly tlsKeyPath: string | undefined;
    readonly tlsMinVersion: 'TLSv1.2' | 'TLSv1.3';
    readonly requireTls: boolean;
    readonly sniSuffix: string;
    readonly authTimeoutMs: number;
    readonly shutdownTimeoutMs: number;
    readonly maxPreauthConnections: number;
    readonly maxPreauthPerSource: number;
    readonly backendConnectTimeoutMs: number;
    readonly mockSecretEnv: string | undefined;
    /** Worker processes sharing the listen socket (1 = serve in this process). */
    readonly workers: number;
  };
  /** Source-wide limits that are not per tenant. */
  readonly limits: {
    /** Authentication failures per source address (any tenant) within the window before a cool-down. */
    readonly authFailuresPerSource: number;
    readonly authFailureWindowMs: number;
    readonly authFailureCooldownMs: number;
  };
  /** Shared limits and the instance bus; undefined = one instance, in-process state. */
  readonly redis: { readonly url: string; readonly keyPrefix: string; readonly commandTimeoutMs: number; readonly leaseTtlMs: number } | undefined;
  /** The read-only metrics listener (/metrics, /healthz, /readyz, /pools); commands are on `admin`. */
  readonly metrics: { readonly listenHost: string; readonly listenPort: number } | undefined;
  /** The operators' admin API on its own listener: bearer token checked against tokenSha256 (hex). */
  readonly admin: { readonly listenHost: string; readonly listenPort: number; readonly tokenSha256: string } | undefined;
  readonly audit: AuditConfig;
  /** Staff access with JWTs; undefined: the staff login path is off (the user name is an ordinary one). */
  readonly staff: StaffConfig | undefined;
  readonly pool: PoolSettings;
  readonly log: { readonly level: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent' };
  readonly tenants: ReadonlyMap<string, TenantConfig>;
}

/** A tenant id is a DNS label: it appears as the first label of the SNI host name. */
export const TENANT_ID_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
  }
}

type Tree = Record<string, unknown>;

/** Collects problems while reading typed values out of the TOML tree. */
class Reader {
  readonly problems: string[] = [];

  section(tree: Tree, key: string, path: string, known: readonly string[], required = false): Tree | undefined {
    const v = tree[key];
    if (v === undefined) {
      if (required) this.problems.push(`${path}: missing section`);
      return undefined;
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      this.problems.push(`${path}: must be a table`);
      return undefined;
    }
    this.unknownKeys(v as Tree, path, known);
    return v as Tree;
  }

  unknownKeys(tree: Tree, path: string, known: readonly string[]): void {
    for (const k of Object.keys(tree)) {
      if (!known.includes(k)) this.problems.push(`${path === '' ? k : `${path}.${k}`}: unknown key`);
    }
  }

  str(tree: Tree | undefined, key: string, path: string, dflt?: string): string | undefined {
    const v = tree?.[key];
    if (v === undefined) return dflt;
    if (typeof v !== 'string') {
      this.problems.push(`${path}.${key}: must be a string`);
      return dflt;
    }
    return v;
  }

  bool(tree: Tree | undefined, key: string, path: string, dflt: boolean): boolean {
    const v = tree?.[key];
    if (v === undefined) return dflt;
    if (typeof v !== 'boolean') {
      this.problems.push(`${path}.${key}: must be true or false`);
      return dflt;
    }
    return v;
  }

  num(tree: Tree | undefined, key: string, path: string, dflt: number, min: number, max: number): number {
    const v = tree?.[key];
    if (v === undefined) return dflt;
    const n = typeof v === 'bigint' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isFinite(n) || n < min || n > max) {
      this.problems.push(`${path}.${key}: must be a number from ${min} to ${max}`);
      return dflt;
    }
    return n;
  }

  /** Sizes: an integer of bytes, or "64kB", "16MB", "1GB" (powers of 1024, as PostgreSQL's units). */
  bytes(tree: Tree | undefined, key: string, path: string, dflt: number, min: number, max: number): number {
    const v = tree?.[key];
    if (v === undefined) return dflt;
    const n = parseBytes(v);
    if (n === undefined || n < min || n > max) {
      this.problems.push(`${path}.${key}: must be a size like "16MB" from ${min} to ${max} bytes`);
      return dflt;
    }
    return n;
  }

  int(tree: Tree | undefined, key: string, path: string, dflt: number, min: number, max: number): number {
    const v = tree?.[key];
    if (v === undefined) return dflt;
    const n = typeof v === 'bigint' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
      this.problems.push(`${path}.${key}: must be an integer from ${min} to ${max}`);
      return dflt;
    }
    return n;
  }

  /** Durations: "250ms", "30s", "5m", "1h", or an integer of milliseconds. */
  duration(tree: Tree | undefined, key: string, path: string, dfltMs: number, minMs: number, maxMs: number): number {
    const v = tree?.[key];
    if (v === undefined) return dfltMs;
    const ms = parseDurationMs(v);
    if (ms === undefined || ms < minMs || ms > maxMs) {
      this.problems.push(`${path}.${key}: must be a duration like "30s" from ${minMs} ms to ${maxMs} ms`);
      return dfltMs;
    }
    return ms;
  }

  strArray(tree: Tree | undefined, key: string, path: string, dflt: readonly string[]): readonly string[] {
    const v = tree?.[key];
    if (v === undefined) return dflt;
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
      this.problems.push(`${path}.${key}: must be an array of strings`);
      return dflt;
    }
    return v;
  }

  listen(tree: Tree | undefined, key: string, path: string, dflt: string): { host: string; port: number } {
    const s = this.str(tree, key, path, dflt) ?? dflt;
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(s);
    const port = m ? Number(m[3]) : NaN;
    if (!m || port > 65535) {
      this.problems.push(`${path}.${key}: must be "host:port" (IPv6 as "[::1]:port")`);
      return { host: '127.0.0.1', port: 0 };
    }
    return { host: (m[1] ?? m[2])!, port };
  }
}

export function parseDurationMs(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v;
  if (typeof v === 'bigint' && v >= 0n) return Number(v);
  if (typeof v !== 'string') return undefined;
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)$/.exec(v.trim());
  if (!m) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
  return Math.round(Number(m[1]) * unit);
}

export function parseBytes(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v;
  if (typeof v === 'bigint' && v >= 0n) return Number(v);
  if (typeof v !== 'string') return undefined;
  const m = /^(\d+)\s*(B|kB|MB|GB)$/.exec(v.trim());
  if (!m) return undefined;
  const unit = { B: 1, kB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 }[m[2] as 'B' | 'kB' | 'MB' | 'GB'];
  return Number(m[1]) * unit;
}

const LIMIT_KEYS = [
  'max_connections_per_user', 'new_connections_per_second', 'new_connections_burst', 'auth_failure_limit',
  'auth_failure_window', 'auth_failure_cooldown', 'query_timeout', 'idle_timeout', 'idle_in_transaction_timeout',
  'transaction_timeout', 'send_timeout', 'max_bandwidth_bytes_per_second', 'max_message_bytes',
] as const;

/** The largest client message pgwarden accepts at all (PostgreSQL's own cap is 1 GB). */
const MAX_MESSAGE_BYTES = 1024 ** 3;

function readLimits(r: Reader, tree: Tree | undefined, path: string, dflt: LimitSettings): LimitSettings {
  const rate = r.num(tree, 'new_connections_per_second', path, dflt.newConnectionsPerSecond, 0, 1_000_000);
  return {
    maxConnectionsPerUser: r.int(tree, 'max_connections_per_user', path, dflt.maxConnectionsPerUser, 0, 1_000_000),
    newConnectionsPerSecond: rate,
    // A burst defaults to one second's worth (at least 1).
    newConnectionsBurst: r.int(tree, 'new_connections_burst', path, tree?.['new_connections_per_second'] === undefined ? dflt.newConnectionsBurst : Math.max(1, Math.ceil(rate)), 1, 1_000_000),
    authFailureLimit: r.int(tree, 'auth_failure_limit', path, dflt.authFailureLimit, 0, 1_000_000),
    authFailureWindowMs: r.duration(tree, 'auth_failure_window', path, dflt.authFailureWindowMs, 1000, 86_400_000),
    authFailureCooldownMs: r.duration(tree, 'auth_failure_cooldown', path, dflt.authFailureCooldownMs, 100, 86_400_000),
    queryTimeoutMs: r.duration(tree, 'query_timeout', path, dflt.queryTimeoutMs, 0, 7 * 86_400_000),
    idleTimeoutMs: r.duration(tree, 'idle_timeout', path, dflt.idleTimeoutMs, 0, 7 * 86_400_000),
    idleInTransactionTimeoutMs: r.duration(tree, 'idle_in_transaction_timeout', path, dflt.idleInTransactionTimeoutMs, 0, 7 * 86_400_000),
    transactionTimeoutMs: r.duration(tree, 'transaction_timeout', path, dflt.transactionTimeoutMs, 0, 7 * 86_400_000),
    sendTimeoutMs: r.duration(tree, 'send_timeout', path, dflt.sendTimeoutMs, 0, 86_400_000),
    maxBandwidthBytesPerSecond: r.bytes(tree, 'max_bandwidth_bytes_per_second', path, dflt.maxBandwidthBytesPerSecond, 0, 100 * 1024 ** 3),
    maxMessageBytes: r.bytes(tree, 'max_message_bytes', path, dflt.maxMessageBytes, 1024, MAX_MESSAGE_BYTES),
  };
}

const POOL_KEYS = ['pool_mode', 'max_backend_connections', 'min_idle_backend_connections', 'pool_timeout', 'backend_idle_timeout', 'backend_lifetime', 'session_state'] as const;

/** Pool settings from `tree` (the [pool] table or a tenant's), falling back to `dflt`. */
function readPool(r: Reader, tree: Tree | undefined, path: string, dflt: PoolSettings): PoolSettings {
  const mode = r.str(tree, 'pool_mode', path, dflt.mode) ?? dflt.mode;
  if (mode !== 'session' && mode !== 'transaction') r.problems.push(`${path}.pool_mode: must be "session" or "transaction"`);
  const sessionState = r.str(tree, 'session_state', path, dflt.sessionState) ?? dflt.sessionState;
  if (sessionState !== 'pin' && sessionState !== 'refuse') r.problems.push(`${path}.session_state: must be "pin" or "refuse"`);
  const settings: PoolSettings = {
    mode: mode === 'transaction' ? 'transaction' : 'session',
    sessionState: sessionState === 'refuse' ? 'refuse' : 'pin',
    maxBackendConnections: r.int(tree, 'max_backend_connections', path, dflt.maxBackendConnections, 1, 100_000),
    minIdleBackendConnections: r.int(tree, 'min_idle_backend_connections', path, dflt.minIdleBackendConnections, 0, 100_000),
    poolTimeoutMs: r.duration(tree, 'pool_timeout', path, dflt.poolTimeoutMs, 0, 3_600_000),
    backendIdleTimeoutMs: r.duration(tree, 'backend_idle_timeout', path, dflt.backendIdleTimeoutMs, 1000, 86_400_000),
    backendLifetimeMs: r.duration(tree, 'backend_lifetime', path, dflt.backendLifetimeMs, 1000, 7 * 86_400_000),
    connectTimeoutMs: dflt.connectTimeoutMs,
  };
  if (settings.minIdleBackendConnections > settings.maxBackendConnections) {
    r.problems.push(`${path}.min_idle_backend_connections: must not exceed max_backend_connections`);
  }
  return settings;
}

/** Validates a parsed TOML tree. `resolvePath` makes file paths absolute (relative to the config file). */
export function validateConfig(tree: Tree, resolvePath: (p: string) => string): Config {
  const r = new Reader();
  r.unknownKeys(tree, '', ['server', 'metrics', 'admin', 'audit', 'staff', 'log', 'pool', 'limits', 'redis', 'tenants']);
  const s = r.section(tree, 'server', 'server', [
    'listen', 'tls_cert', 'tls_key', 'tls_min_version', 'require_tls', 'sni_suffix', 'auth_timeout',
    'shutdown_timeout', 'max_preauth_connections', 'max_preauth_per_source', 'backend_connect_timeout', 'mock_secret_env', 'workers',
  ], true);
  const listen = r.listen(s, 'listen', 'server', '127.0.0.1:6432');
  const tlsCert = r.str(s, 'tls_cert', 'server');
  const tlsKey = r.str(s, 'tls_key', 'server');
  if ((tlsCert === undefined) !== (tlsKey === undefined)) r.problems.push('server.tls_cert: tls_cert and tls_key go together');
  const tlsMin = r.str(s, 'tls_min_version', 'server', 'TLSv1.2');
  if (tlsMin !== 'TLSv1.2' && tlsMin !== 'TLSv1.3') r.problems.push('server.tls_min_version: must be "TLSv1.2" or "TLSv1.3"');
  const requireTls = r.bool(s, 'require_tls', 'server', true);
  if (requireTls && tlsCert === undefined) r.problems.push('server.require_tls: is true but no server.tls_cert/tls_key is set');
  const sniSuffix = (r.str(s, 'sni_suffix', 'server', '') ?? '').toLowerCase().replace(/^\./, '');
  if (sniSuffix !== '' && !/^[a-z0-9.-]+$/.test(sniSuffix)) r.problems.push('server.sni_suffix: must be a DNS name like "db.example.com"');

  const server: Config['server'] = {
    listenHost: listen.host,
    listenPort: listen.port,
    tlsCertPath: tlsCert === undefined ? undefined : resolvePath(tlsCert),
    tlsKeyPath: tlsKey === undefined ? undefined : resolvePath(tlsKey),
    tlsMinVersion: tlsMin === 'TLSv1.3' ? 'TLSv1.3' : 'TLSv1.2',
    requireTls,
    sniSuffix,
    authTimeoutMs: r.duration(s, 'auth_timeout', 'server', 60_000, 100, 600_000),
    shutdownTimeoutMs: r.duration(s, 'shutdown_timeout', 'server', 30_000, 0, 86_400_000),
    maxPreauthConnections: r.int(s, 'max_preauth_connections', 'server', 2_000, 1, 1_000_000),
    maxPreauthPerSource: r.int(s, 'max_preauth_per_source', 'server', 200, 1, 1_000_000),
    backendConnectTimeoutMs: r.duration(s, 'backend_connect_timeout', 'server', 10_000, 100, 600_000),
    mockSecretEnv: r.str(s, 'mock_secret_env', 'server'),
    // One worker per core by default (each is a process; the primary only coordinates).
    workers: r.int(s, 'workers', 'server', availableParallelism(), 1, 256),
  };

  const limTree = r.section(tree, 'limits', 'limits', [...LIMIT_KEYS, 'max_client_connections', 'auth_failures_per_source']);
  const limits = readLimits(r, limTree, 'limits', {
    maxConnectionsPerUser: 0,
    newConnectionsPerSecond: 0,
    newConnectionsBurst: 1,
    authFailureLimit: 20,
    authFailureWindowMs: 60_000,
    authFailureCooldownMs: 60_000,
    queryTimeoutMs: 0,
    idleTimeoutMs: 0,
    idleInTransactionTimeoutMs: 0,
    transactionTimeoutMs: 0,
    // A client that reads nothing for two minutes while its result waits is gone (or hostile).
    sendTimeoutMs: 120_000,
    maxBandwidthBytesPerSecond: 0,
    maxMessageBytes: MAX_MESSAGE_BYTES,
  });
  const defaultMaxClients = r.int(limTree, 'max_client_connections', 'limits', 100, 0, 1_000_000);
  const sourceLimits: Config['limits'] = {
    authFailuresPerSource: r.int(limTree, 'auth_failures_per_source', 'limits', 100, 0, 1_000_000),
    authFailureWindowMs: limits.authFailureWindowMs,
    authFailureCooldownMs: limits.authFailureCooldownMs,
  };
  const rd = r.section(tree, 'redis', 'redis', ['url', 'key_prefix', 'command_timeout', 'lease_ttl']);
  let redis: Config['redis'];
  if (rd !== undefined) {
    const url = r.str(rd, 'url', 'redis');
    if (url === undefined || !/^rediss?:\/\/./.test(url)) r.problems.push('redis.url: must be a URL like "redis://127.0.0.1:6379"');
    redis = {
      url: url ?? '',
      keyPrefix: r.str(rd, 'key_prefix', 'redis', 'pgwarden:') ?? 'pgwarden:',
      commandTimeoutMs: r.duration(rd, 'command_timeout', 'redis', 250, 10, 10_000),
      leaseTtlMs: r.duration(rd, 'lease_ttl', 'redis', 10_000, 1000, 600_000),
    };
  }

  // admin_token_env is listed as known only so that the problem reported is the hint below.
  const m = r.section(tree, 'metrics', 'metrics', ['listen', 'admin_token_env']);
  if (m?.['admin_token_env'] !== undefined) r.problems.push('metrics.admin_token_env: removed; commands are on the [admin] listener (listen, token_sha256)');
  const metricsListen = m === undefined ? undefined : r.listen(m, 'listen', 'metrics', '127.0.0.1:9187');
  const ad = r.section(tree, 'admin', 'admin', ['listen', 'token_sha256']);
  let admin: Config['admin'];
  if (ad !== undefined) {
    const adminListen = r.listen(ad, 'listen', 'admin', '127.0.0.1:9188');
    const tokenSha256 = (r.str(ad, 'token_sha256', 'admin') ?? '').toLowerCase();
    // Never echo the value: it stands for a secret.
    if (!/^[0-9a-f]{64}$/.test(tokenSha256)) r.problems.push('admin.token_sha256: must be the hex SHA-256 of the admin token (make one with "pgwarden hash-token")');
    admin = { listenHost: adminListen.host, listenPort: adminListen.port, tokenSha256 };
  }
  const audit = readAudit(r, tree, resolvePath);
  const staff = readStaff(r, tree, resolvePath);
  const l = r.section(tree, 'log', 'log', ['level']);
  const level = r.str(l, 'level', 'log', 'info') ?? 'info';
  const levels = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
  if (!(levels as readonly string[]).includes(level)) r.problems.push(`log.level: must be one of ${levels.join(', ')}`);

  const poolTree = r.section(tree, 'pool', 'pool', POOL_KEYS);
  const pool = readPool(r, poolTree, 'pool', {
    mode: 'session',
    sessionState: 'pin',
    maxBackendConnections: 100,
    minIdleBackendConnections: 0,
    poolTimeoutMs: 30_000,
    backendIdleTimeoutMs: 600_000,
    backendLifetimeMs: 3_600_000,
    connectTimeoutMs: server.backendConnectTimeoutMs,
  });

  const tenants = new Map<string, TenantConfig>();
  // Tenant ids are free-form keys, each checked below.
  const t = tree['tenants'];
  if (t !== undefined && (typeof t !== 'object' || t === null || Array.isArray(t))) r.problems.push('tenants: must be a table');
  for (const [id, raw] of Object.entries((t ?? {}) as Tree)) {
    const path = `tenants.${id}`;
    if (!TENANT_ID_RE.test(id)) {
      r.problems.push(`${path}: tenant id must be a lower-case DNS label (a-z, 0-9, '-')`);
      continue;
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      r.problems.push(`${path}: must be a table`);
      continue;
    }
    const tt = raw as Tree;
    r.unknownKeys(tt, path, ['backend', 'backend_tls', 'backend_ca', 'max_client_connections', 'allow_cidrs', 'enabled', 'databases', 'users', ...POOL_KEYS, ...LIMIT_KEYS, ...TENANT_AUDIT_KEYS]);
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
    const backendTls = r.str(tt, 'backend_tls', path, 'verify-full') ?? 'verify-full';
    if (!['disable', 'require', 'verify-full'].includes(backendTls)) r.problems.push(`${path}.backend_tls: must be "disable", "require" or "verify-full"`);
    const backendCa = r.str(tt, 'backend_ca', path);
    if (backendTls === 'verify-full' && backendCa === undefined) {
      r.problems.push(`${path}.backend_ca: required when backend_tls = "verify-full"`);
    }
    const allowCidrs = r.strArray(tt, 'allow_cidrs', path, ['0.0.0.0/0', '::/0']);
    const allowList = new BlockList();
    for (const c of allowCidrs) {
      const m = /^([^/]+)(?:\/(\d{1,3}))?$/.exec(c);
      const addr = m?.[1];
      const family = isIP(addr ?? '');
      const prefix = m?.[2] === undefined ? (family === 6 ? 128 : 32) : Number(m[2]);
      if (m === null || family === 0 || prefix > (family === 6 ? 128 : 32)) {
        r.problems.push(`${path}.allow_cidrs: "${c}" is not a CIDR like "10.0.0.0/8"`);
        continue;
      }
      allowList.addSubnet(addr!, prefix, family === 6 ? 'ipv6' : 'ipv4');
    }
    const users = new Map<string, UserConfig>();
    const u = tt['users'];
    if (u !== undefined && (typeof u !== 'object' || u === null || Array.isArray(u))) r.problems.push(`${path}.users: must be a table`);
    for (const [name, rawUser] of Object.entries((u as Tree | undefined) ?? {})) {
      const upath = `${path}.users.${name}`;
      if (typeof rawUser !== 'object' || rawUser === null || Array.isArray(rawUser)) {
        r.problems.push(`${upath}: must be a table`);
        continue;
      }
      const ut = rawUser as Tree;
      r.unknownKeys(ut, upath, ['scram', 'backend_password_env', 'backend_user', 'max_connections']);
      const scram = r.str(ut, 'scram', upath);
      let verifier: ScramVerifier | undefined;
      if (scram === undefined) r.problems.push(`${upath}.scram: missing (make one with "pgwarden hash-password")`);
      else {
        verifier = parseScramVerifier(scram);
        // Never echo the value: it is a secret.
        if (verifier === undefined) r.problems.push(`${upath}.scram: not a SCRAM-SHA-256 verifier (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)`);
      }
      const envName = r.str(ut, 'backend_password_env', upath);
      if (envName !== undefined && process.env[envName] === undefined) {
        r.problems.push(`${upath}.backend_password_env: environment variable ${envName} is not set`);
      }
      if (verifier !== undefined) {
        users.set(name, { name, verifier, backendUser: r.str(ut, 'backend_user', upath, name) ?? name, backendPasswordEnv: envName, maxConnections: r.int(ut, 'max_connections', upath, 0, 0, 1_000_000) });
      }
    }
    tenants.set(id, {
      id,
      enabled: r.bool(tt, 'enabled', path, true),
      backendHost,
      backendPort,
      backendDatabase,
      backendTls: backendTls as BackendTls,
      backendCaPath: backendCa === undefined ? undefined : resolvePath(backendCa),
      maxClientConnections: r.int(tt, 'max_client_connections', path, defaultMaxClients, 0, 1_000_000),
      allowCidrs,
      allowList,
      databases: tt['databases'] === undefined ? undefined : new Set(r.strArray(tt, 'databases', path, [])),
      users,
      pool: readPool(r, tt, path, pool),
      limits: readLimits(r, tt, path, limits),
      ...readTenantAudit(r, tt, path),
    });
  }

  // Fail-closed audit needs somewhere durable to write before a statement runs.
  if (audit.file === undefined) {
    if (staff !== undefined) r.problems.push('staff: needs audit.file (staff statements are audited before they run)');
    for (const t of tenants.values()) if (t.auditFailClosed) r.problems.push(`tenants.${t.id}.audit_fail_closed: needs audit.file`);
  }
  if (r.problems.length > 0) throw new ConfigError(r.problems);
  return {
    server,
    metrics: metricsListen === undefined ? undefined : { listenHost: metricsListen.host, listenPort: metricsListen.port },
    admin,
    audit,
    staff,
    pool,
    limits: sourceLimits,
    redis,
    log: { level: level as Config['log']['level'] },
    tenants,
  };
}

const TENANT_AUDIT_KEYS = ['staff_access', 'staff_backend_user', 'staff_backend_password_env', 'audit_statements', 'audit_parameters', 'audit_fail_closed'] as const;

function oneOf<T extends string>(r: Reader, tree: Tree | undefined, key: string, path: string, allowed: readonly T[], dflt: T): T {
  const v = r.str(tree, key, path, dflt) ?? dflt;
  if ((allowed as readonly string[]).includes(v)) return v as T;
  r.problems.push(`${path}.${key}: must be ${allowed.map((a) => `"${a}"`).join(', ')}`);
  return dflt;
}

function readTenantAudit(
  r: Reader,
  tt: Tree,
  path: string,
): Pick<TenantConfig, 'staffAccess' | 'staffBackendUser' | 'staffBackendPasswordEnv' | 'auditStatements' | 'auditParameters' | 'auditFailClosed'> {
  const staffAccess = oneOf<StaffAccess>(r, tt, 'staff_access', path, ['deny', 'read', 'write'], 'deny');
  const staffBackendUser = r.str(tt, 'staff_backend_user', path);
  const staffBackendPasswordEnv = r.str(tt, 'staff_backend_password_env', path);
  if (staffAccess !== 'deny' && (staffBackendUser === undefined || staffBackendPasswordEnv === undefined)) {
    r.problems.push(`${path}.staff_access: "${staffAccess}" needs staff_backend_user and staff_backend_password_env`);
  }
  if (staffBackendPasswordEnv !== undefined && process.env[staffBackendPasswordEnv] === undefined) {
    r.problems.push(`${path}.staff_backend_password_env: environment variable ${staffBackendPasswordEnv} is not set`);
  }
  return {
    staffAccess,
    staffBackendUser,
    staffBackendPasswordEnv,
    auditStatements: oneOf(r, tt, 'audit_statements', path, ['none', 'all'], 'none'),
    auditParameters: oneOf<AuditParameters>(r, tt, 'audit_parameters', path, ['off', 'redacted', 'full'], 'redacted'),
    auditFailClosed: r.bool(tt, 'audit_fail_closed', path, false),
  };
}

function readStaff(r: Reader, tree: Tree, resolvePath: (p: string) => string): StaffConfig | undefined {
  const st = r.section(tree, 'staff', 'staff', [
    'login_user', 'jwks', 'issuer', 'audience', 'algorithms', 'require_mfa', 'allow_token_reuse', 'max_token_lifetime', 'clock_tolerance', 'audit_parameters',
    'reserved_connections',
  ]);
  if (st === undefined) return undefined;
  const jwks = r.str(st, 'jwks', 'staff');
  if (jwks === undefined) r.problems.push('staff.jwks: missing (a JWKS file path or an https:// URL)');
  const issuer = r.str(st, 'issuer', 'staff');
  if (issuer === undefined) r.problems.push('staff.issuer: missing');
  const audience = r.str(st, 'audience', 'staff');
  if (audience === undefined) r.problems.push('staff.audience: missing');
  const algorithms = r.strArray(st, 'algorithms', 'staff', ['ES256', 'RS256', 'EdDSA']);
  const known = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'];
  // Asymmetric only: a shared-secret (HS*) token could be minted by anyone holding the verifier's key.
  for (const alg of algorithms) if (!known.includes(alg)) r.problems.push(`staff.algorithms: "${alg}" is not one of ${known.join(', ')}`);
  if (algorithms.length === 0) r.problems.push('staff.algorithms: must not be empty');
  const loginUser = r.str(st, 'login_user', 'staff', 'staff') ?? 'staff';
  if (loginUser === '') r.problems.push('staff.login_user: must not be empty');
  return {
    loginUser,
    jwks: jwks === undefined ? '' : /^https:\/\//.test(jwks) ? jwks : resolvePath(jwks),
    issuer: issuer ?? '',
    audience: audience ?? '',
    algorithms,
    requireMfa: r.bool(st, 'require_mfa', 'staff', true),
    allowTokenReuse: r.bool(st, 'allow_token_reuse', 'staff', false),
    maxTokenLifetimeMs: r.duration(st, 'max_token_lifetime', 'staff', 3_600_000, 1000, 86_400_000),
    clockToleranceMs: r.duration(st, 'clock_tolerance', 'staff', 5_000, 0, 300_000),
    auditParameters: oneOf<AuditParameters>(r, st, 'audit_parameters', 'staff', ['off', 'redacted', 'full'], 'full'),
    reservedConnections: r.int(st, 'reserved_connections', 'staff', 3, 0, 1000),
  };
}

/** [audit] with every default and the given file: for tools and tests that open a log directly. */
export function defaultAuditConfig(file?: string): AuditConfig {
  return { ...readAudit(new Reader(), {}, (p) => p), file };
}

function readAudit(r: Reader, tree: Tree, resolvePath: (p: string) => string): AuditConfig {
  const a = r.section(tree, 'audit', 'audit', [
    'file', 'rotate_bytes', 'rotate_interval', 'fsync', 'checkpoint_key', 'checkpoint_every_records', 'checkpoint_interval', 'checkpoint_origin',
    'query_max_bytes', 'param_max_bytes', 'postgres',
  ]);
  const file = r.str(a, 'file', 'audit');
  const key = r.str(a, 'checkpoint_key', 'audit');
  const pgTree = a === undefined ? undefined : r.section(a, 'postgres', 'audit.postgres', ['url', 'password_env', 'table', 'spool_dir', 'batch_size', 'flush_interval']);
  let postgres: AuditPostgresConfig | undefined;
  if (pgTree !== undefined) {
    const url = r.str(pgTree, 'url', 'audit.postgres');
    let urlOk = false;
    if (url !== undefined) {
      try {
        const u = new URL(url);
        urlOk = u.protocol === 'postgresql:' || u.protocol === 'postgres:';
        if (u.password !== '') r.problems.push('audit.postgres.url: must not contain a password (use audit.postgres.password_env)');
      } catch {
        urlOk = false;
      }
    }
    if (!urlOk) r.problems.push('audit.postgres.url: must be a URL like "postgresql://audit@127.0.0.1:5432/audit"');
    const passwordEnv = r.str(pgTree, 'password_env', 'audit.postgres');
    if (passwordEnv !== undefined && process.env[passwordEnv] === undefined) r.problems.push(`audit.postgres.password_env: environment variable ${passwordEnv} is not set`);
    const table = r.str(pgTree, 'table', 'audit.postgres', 'pgwarden_audit') ?? 'pgwarden_audit';
    if (!/^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?$/.test(table)) r.problems.push('audit.postgres.table: must be a lower-case identifier, optionally schema-qualified');
    const spool = r.str(pgTree, 'spool_dir', 'audit.postgres');
    const spoolDir = spool !== undefined ? resolvePath(spool) : file !== undefined ? `${resolvePath(file)}.spool` : undefined;
    if (spoolDir === undefined) r.problems.push('audit.postgres.spool_dir: required when audit.file is not set');
    postgres = {
      url: url ?? '',
      passwordEnv,
      table,
      spoolDir: spoolDir ?? '',
      batchSize: r.int(pgTree, 'batch_size', 'audit.postgres', 500, 1, 100_000),
      flushIntervalMs: r.duration(pgTree, 'flush_interval', 'audit.postgres', 200, 10, 60_000),
    };
  }
  const origin = r.str(a, 'checkpoint_origin', 'audit', 'pgwarden') ?? 'pgwarden';
  if (!/^[\x21-\x7e]+$/.test(origin)) r.problems.push('audit.checkpoint_origin: must be printable ASCII without spaces');
  return {
    file: file === undefined ? undefined : resolvePath(file),
    rotateBytes: r.bytes(a, 'rotate_bytes', 'audit', 0, 0, 1024 ** 4),
    rotateIntervalMs: r.duration(a, 'rotate_interval', 'audit', 0, 0, 366 * 86_400_000),
    fsync: r.bool(a, 'fsync', 'audit', true),
    checkpointKeyPath: key === undefined ? undefined : resolvePath(key),
    checkpointEveryRecords: r.int(a, 'checkpoint_every_records', 'audit', 1000, 1, 10_000_000),
    checkpointIntervalMs: r.duration(a, 'checkpoint_interval', 'audit', 60_000, 100, 86_400_000),
    checkpointOrigin: origin,
    queryMaxBytes: r.bytes(a, 'query_max_bytes', 'audit', 16 * 1024, 64, 1024 ** 2),
    paramMaxBytes: r.bytes(a, 'param_max_bytes', 'audit', 1024, 0, 1024 ** 2),
    postgres,
  };
}
