/**
 * pgwarden's keys: which sections and keys exist, their defaults and bounds, and the rules that
 * span sections. Turns a parsed TOML tree into one Config and the list of problems. The sections
 * with most keys have their own files: validate-tenants.ts, validate-audit.ts, validate-settings.ts.
 */
import { availableParallelism } from 'node:os';
import type { FileValidation } from './environment.js';
import { TENANT_ID_RE, TENANT_SEPARATOR_RE, type Config, type LimitSettings, type TenantConfig } from './schema.js';
import { Reader, type Tree } from './toml-reader.js';
import { readAudit, readStaff } from './validate-audit.js';
import { LIMIT_KEYS, MAX_MESSAGE_BYTES, POOL_KEYS, readLimits, readPool } from './validate-settings.js';
import { readCatalog } from './validate-catalog.js';
import { reusePortAvailable, WORKER_ACCEPT_SETTINGS } from './worker-accept.js';
import { checkTenantNeeds, readCidrList, readTenants } from './validate-tenants.js';

/**
 * Checks a parsed TOML tree against pgwarden's keys; `resolvePath` makes file paths absolute (relative
 * to the config file). Collects every problem instead of stopping at the first, in the order of the
 * sections below; the environment is checked after (environment.ts).
 */
export function validateConfigTree(tree: Tree, resolvePath: (p: string) => string): FileValidation<Config> {
  const r = new Reader();
  r.unknownKeys(tree, '', ['server', 'metrics', 'admin', 'audit', 'staff', 'log', 'pool', 'limits', 'redis', 'catalog', 'tenants']);
  const server = readServer(r, tree, resolvePath);
  const { limits, sourceLimits, defaultMaxClients } = readLimitSection(r, tree);
  const redis = readRedis(r, tree);
  const { metrics, admin } = readOperatorListeners(r, tree);
  const audit = readAudit(r, tree, resolvePath);
  const staff = readStaff(r, tree, resolvePath);
  const level = readLogLevel(r, tree);
  const pool = readPool(r, r.section(tree, 'pool', 'pool', POOL_KEYS), 'pool', {
    mode: 'session',
    sessionState: 'pin',
    maxBackendConnections: 100,
    minIdleBackendConnections: 0,
    poolTimeoutMs: 30_000,
    backendIdleTimeoutMs: 600_000,
    backendLifetimeMs: 3_600_000,
    connectTimeoutMs: server.backendConnectTimeoutMs,
  });
  const tenantDefaults = { pool, limits, maxClientConnections: defaultMaxClients };
  const catalog = readCatalog(r, tree, resolvePath);
  // With [catalog] the file holds no tenants (readCatalog names each one as a problem).
  const tenants = catalog === undefined ? readTenants(r, tree, resolvePath, tenantDefaults) : new Map<string, TenantConfig>();

  // Fail-closed audit needs somewhere durable to write before a statement runs.
  if (audit.file === undefined && staff !== undefined) r.problems.push('staff: needs audit.file (staff statements are audited before they run)');
  for (const t of tenants.values()) checkTenantNeeds(r, t, audit);
  // A typo here would send every connection that names no tenant to a tenant that does not exist.
  if (catalog === undefined && server.defaultTenant !== undefined && TENANT_ID_RE.test(server.defaultTenant) && !tenants.has(server.defaultTenant)) {
    r.problems.push(`server.default_tenant: no [tenants.${server.defaultTenant}] in this file`);
  }
  const config: Config = {
    server,
    metrics,
    admin,
    audit,
    staff,
    pool,
    limits: sourceLimits,
    redis,
    log: { level },
    tenants,
    catalog,
    tenantDefaults,
    configDir: resolvePath('.'),
  };
  return { config, problems: r.problems, envReferences: r.envReferences };
}

function readServer(r: Reader, tree: Tree, resolvePath: (p: string) => string): Config['server'] {
  const s = r.section(tree, 'server', 'server', [
    'listen', 'tls_cert', 'tls_key', 'tls_min_version', 'require_tls', 'sni_suffix', 'tenant_in_user', 'default_tenant', 'auth_timeout',
    'shutdown_timeout', 'max_preauth_connections', 'max_preauth_per_source', 'backend_connect_timeout', 'mock_secret_env', 'workers',
    'worker_accept', 'proxy_protocol', 'proxy_protocol_trusted', 'relay_io',
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
  const tenantInUser = r.str(s, 'tenant_in_user', 'server');
  if (tenantInUser !== undefined && !TENANT_SEPARATOR_RE.test(tenantInUser)) {
    r.problems.push('server.tenant_in_user: must be 1 to 3 of the characters . @ % # : + ~ ! $ & * | / ^ (like ".")');
  }
  const defaultTenant = r.str(s, 'default_tenant', 'server');
  if (defaultTenant !== undefined && !TENANT_ID_RE.test(defaultTenant)) {
    r.problems.push('server.default_tenant: must be a tenant id (lower-case letters, digits and "-", at most 63)');
  }
  const proxyProtocol = r.oneOf(s, 'proxy_protocol', 'server', ['off', 'v2'] as const, 'off');
  const proxyProtocolTrusted = r.strArray(s, 'proxy_protocol_trusted', 'server', []);
  if (proxyProtocol === 'v2' && proxyProtocolTrusted.length === 0) {
    r.problems.push('server.proxy_protocol_trusted: must list the load balancers\' CIDRs when proxy_protocol = "v2"');
  }
  if (proxyProtocol === 'off' && proxyProtocolTrusted.length > 0) r.problems.push('server.proxy_protocol_trusted: is set but server.proxy_protocol is "off"');
  const workerAccept = r.oneOf(s, 'worker_accept', 'server', WORKER_ACCEPT_SETTINGS, 'auto');
  if (workerAccept === 'reuseport' && !reusePortAvailable()) {
    r.problems.push(`server.worker_accept: "reuseport" needs Node 22.12 or later on Linux (this is Node ${process.versions.node} on ${process.platform}); use "auto" or "primary"`);
  }
  return {
    listenHost: listen.host,
    listenPort: listen.port,
    tlsCertPath: tlsCert === undefined ? undefined : resolvePath(tlsCert),
    tlsKeyPath: tlsKey === undefined ? undefined : resolvePath(tlsKey),
    tlsMinVersion: tlsMin === 'TLSv1.3' ? 'TLSv1.3' : 'TLSv1.2',
    requireTls,
    sniSuffix,
    tenantInUser,
    defaultTenant,
    authTimeoutMs: r.duration(s, 'auth_timeout', 'server', 60_000, 100, 600_000),
    shutdownTimeoutMs: r.duration(s, 'shutdown_timeout', 'server', 30_000, 0, 86_400_000),
    maxPreauthConnections: r.int(s, 'max_preauth_connections', 'server', 2_000, 1, 1_000_000),
    maxPreauthPerSource: r.int(s, 'max_preauth_per_source', 'server', 200, 1, 1_000_000),
    backendConnectTimeoutMs: r.duration(s, 'backend_connect_timeout', 'server', 10_000, 100, 600_000),
    mockSecretEnv: r.str(s, 'mock_secret_env', 'server'),
    // One worker per core by default (each is a process; the primary only coordinates).
    workers: r.int(s, 'workers', 'server', availableParallelism(), 1, 256),
    workerAccept,
    proxyProtocol,
    relayIo: r.oneOf(s, 'relay_io', 'server', ['auto', 'stream'] as const, 'auto'),
    proxyProtocolTrusted,
    proxyProtocolTrustedList: readCidrList(r, proxyProtocolTrusted, 'server', 'proxy_protocol_trusted'),
  };
}

/** [limits]: the tenants' default limits (validate-settings.ts) and the source-wide ones. */
function readLimitSection(r: Reader, tree: Tree): { limits: LimitSettings; sourceLimits: Config['limits']; defaultMaxClients: number } {
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
  return { limits, sourceLimits, defaultMaxClients };
}

function readRedis(r: Reader, tree: Tree): Config['redis'] {
  const rd = r.section(tree, 'redis', 'redis', ['url', 'key_prefix', 'command_timeout', 'lease_ttl']);
  if (rd === undefined) return undefined;
  const url = r.str(rd, 'url', 'redis');
  if (url === undefined || !/^rediss?:\/\/./.test(url)) r.problems.push('redis.url: must be a URL like "redis://127.0.0.1:6379"');
  return {
    url: url ?? '',
    keyPrefix: r.str(rd, 'key_prefix', 'redis', 'pgwarden:') ?? 'pgwarden:',
    commandTimeoutMs: r.duration(rd, 'command_timeout', 'redis', 250, 10, 10_000),
    leaseTtlMs: r.duration(rd, 'lease_ttl', 'redis', 10_000, 1000, 600_000),
  };
}

/** [metrics] and [admin]: the operators' listeners (admin/listeners.ts). */
function readOperatorListeners(r: Reader, tree: Tree): Pick<Config, 'metrics' | 'admin'> {
  // admin_token_env is listed as known only so that the problem reported is the hint below.
  const m = r.section(tree, 'metrics', 'metrics', ['listen', 'admin_token_env']);
  if (m?.['admin_token_env'] !== undefined) r.problems.push('metrics.admin_token_env: removed; commands are on the [admin] listener (listen, token_sha256)');
  const metricsListen = m === undefined ? undefined : r.listen(m, 'listen', 'metrics', '127.0.0.1:9187');
  const ad = r.section(tree, 'admin', 'admin', ['listen', 'token_sha256', 'auditor_token_sha256']);
  let admin: Config['admin'];
  if (ad !== undefined) {
    const adminListen = r.listen(ad, 'listen', 'admin', '127.0.0.1:9188');
    const tokenSha256 = (r.str(ad, 'token_sha256', 'admin') ?? '').toLowerCase();
    // Never echo the value: it stands for a secret.
    if (!/^[0-9a-f]{64}$/.test(tokenSha256)) r.problems.push('admin.token_sha256: must be the hex SHA-256 of the admin token (make one with "pgwarden hash-token")');
    const auditor = r.str(ad, 'auditor_token_sha256', 'admin')?.toLowerCase();
    if (auditor !== undefined && !/^[0-9a-f]{64}$/.test(auditor)) r.problems.push('admin.auditor_token_sha256: must be the hex SHA-256 of the auditor token (make one with "pgwarden hash-token")');
    if (auditor !== undefined && auditor === tokenSha256) r.problems.push('admin.auditor_token_sha256: must differ from admin.token_sha256 (the auditor token may only read the audit)');
    admin = { listenHost: adminListen.host, listenPort: adminListen.port, tokenSha256, auditorTokenSha256: auditor };
  }
  return { metrics: metricsListen === undefined ? undefined : { listenHost: metricsListen.host, listenPort: metricsListen.port }, admin };
}

function readLogLevel(r: Reader, tree: Tree): Config['log']['level'] {
  const l = r.section(tree, 'log', 'log', ['level']);
  const level = r.str(l, 'level', 'log', 'info') ?? 'info';
  const levels = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
  if (!(levels as readonly string[]).includes(level)) r.problems.push(`log.level: must be one of ${levels.join(', ')}`);
  return level as Config['log']['level'];
}
