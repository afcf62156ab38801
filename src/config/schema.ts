/**
 * The typed Config: what every key of pgwarden.toml becomes once read and checked, and the error
 * that lists what is wrong. Types only: reading TOML is toml-reader.ts's, checking pgwarden's keys
 * validate*.ts's, the environment environment.ts's, the file load.ts's.
 */
import type { BlockList } from 'node:net';
import type { ScramVerifier } from './scram-verifier.js';
import type { WorkerAcceptSetting } from './worker-accept.js';

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

export type PoolMode = 'session' | 'transaction';

/** [pool] with a tenant's overrides: how pool/ keeps that tenant's backend connections. */
export interface PoolSettings {
  readonly mode: PoolMode;
  /** Transaction mode, for statements that leave session state: keep the backend ("pin") or fail them ("refuse"). */
  readonly sessionState: 'pin' | 'refuse';
  readonly maxBackendConnections: number;
  readonly minIdleBackendConnections: number;
  readonly poolTimeoutMs: number;
  readonly backendIdleTimeoutMs: number;
  readonly backendLifetimeMs: number;
  readonly connectTimeoutMs: number;
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
  /**
   * The most any staff token may grant on this tenant ('deny': staff cannot log in at all;
   * 'on_request': only while the tenant's own database holds an open grant for the token's ticket,
   * and at most what that grant says: session/login/consent.ts).
   */
  readonly staffAccess: StaffAccess;
  /**
   * Staff decisions and statements are also written to the tenant's own pgwarden.staff_access_log
   * (always with 'on_request'; this turns it on for 'read' and 'write' too).
   */
  readonly accessTransparency: boolean;
  /** A staff session whose records have waited this long for the tenant's server is ended. */
  readonly transparencyMaxLagMs: number;
  /** Role staff sessions use on the tenant's server, and the env var with its password. */
  readonly staffBackendUser: string | undefined;
  readonly staffBackendPasswordEnv: string | undefined;
  /** Statement audit for this tenant's own users ('all': every statement; staff sessions are always audited). */
  readonly auditStatements: 'none' | 'all';
  /** Bind parameters in statement audit records of tenant users. */
  readonly auditParameters: AuditParameters;
  /** Statement audit must be durable before a statement runs (fail closed, SECURITY.md S10). */
  readonly auditFailClosed: boolean;
  /** Roles not in `users` are looked up on the tenant's own server (auth_query); undefined: they are unknown. */
  readonly authQuery: AuthQuerySettings | undefined;
}

/**
 * auth_query (issue 14): how pgwarden finds the SCRAM verifier of a role the tenant manages itself.
 * The lookup connects as `user` to `database` on the tenant's backend (same host, port and TLS).
 */
export interface AuthQuerySettings {
  readonly user: string;
  /** Env var holding `user`'s password. */
  readonly passwordEnv: string;
  /** One statement with the role name as $1, returning (usename, passwd, valuntil). */
  readonly query: string;
  readonly database: string;
  /** How long a found verifier is used before it is looked up again (0: every login looks up). */
  readonly cacheTtlMs: number;
  /** How long "no such role" (or a refusal) is remembered. */
  readonly negativeCacheTtlMs: number;
  /** Roles remembered per tenant (found and not found). */
  readonly cacheSize: number;
  /** Lookup connections per tenant (and per worker). */
  readonly poolSize: number;
  /** Bound on connecting plus querying. */
  readonly timeoutMs: number;
  /** Lookups per second per tenant (token bucket, burst of twice that): a flood of unknown names cannot hammer the server. */
  readonly lookupsPerSecond: number;
}

export const DEFAULT_AUTH_QUERY = 'SELECT usename, passwd, valuntil FROM pgwarden.get_auth($1)';

export type StaffAccess = 'deny' | 'read' | 'write' | 'on_request';
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
  /**
   * Where records for tenants' pgwarden.staff_access_log wait while a tenant's server is
   * unreachable, one folder per tenant (absolute path; default: audit.file + ".transparency").
   */
  readonly transparencySpoolDir: string | undefined;
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

/**
 * [catalog]: tenants come from a PostgreSQL database (catalog/) instead of [tenants.*]; the file
 * then holds none. The last good copy is kept in snapshotFile for starts while the catalog is down.
 */
export interface CatalogConfig {
  /** postgresql:// URL without a password (TLS settings as URL parameters); the password comes from passwordEnv. */
  readonly url: string;
  readonly passwordEnv: string | undefined;
  /** The schema holding the catalog's tables (lower-case identifier). */
  readonly schema: string;
  /** The last good copy of the catalog (absolute path), written 0600 after every change. */
  readonly snapshotFile: string;
  /** A full re-read this often, besides LISTEN/NOTIFY: the safety net for a missed notification. */
  readonly resyncIntervalMs: number;
}

/** What a tenant falls back to: [pool], [limits] and limits.max_client_connections. */
export interface TenantDefaults {
  readonly pool: PoolSettings;
  readonly limits: LimitSettings;
  readonly maxClientConnections: number;
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
    /**
     * server.tenant_in_user: `app<sep>acme` names user app of tenant acme (the last separator
     * wins), read only when neither SNI nor options names a tenant. undefined: off.
     */
    readonly tenantInUser: string | undefined;
    /** server.default_tenant: the tenant of a connection that names none. undefined: off (T2). */
    readonly defaultTenant: string | undefined;
    readonly authTimeoutMs: number;
    readonly shutdownTimeoutMs: number;
    readonly maxPreauthConnections: number;
    readonly maxPreauthPerSource: number;
    readonly backendConnectTimeoutMs: number;
    readonly mockSecretEnv: string | undefined;
    /** Worker processes (1 = serve in this process); how connections reach them is workerAccept. */
    readonly workers: number;
    /**
     * How the relay moves bytes: "auto" reads and writes through the sockets' native handles
     * (net/socket-io.ts) where this Node has what that needs, "stream" through Node's streams.
     */
    readonly relayIo: 'auto' | 'stream';
    /** How workers get their connections (config/worker-accept.ts); "auto" is resolved at start. */
    readonly workerAccept: WorkerAcceptSetting;
    /** "v2": connections from `proxyProtocolTrusted` start with a PROXY protocol v2 header naming the client. */
    readonly proxyProtocol: 'off' | 'v2';
    /** The load balancers' CIDRs, as written and as a BlockList (empty when off). */
    readonly proxyProtocolTrusted: readonly string[];
    readonly proxyProtocolTrustedList: BlockList;
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
  /**
   * The operators' admin API on its own listener: bearer token checked against tokenSha256 (hex).
   * auditorTokenSha256: a second token that may read the audit in the browser view (/ui/) and
   * nothing else; undefined: only the operator token logs in there.
   */
  readonly admin:
    { readonly listenHost: string; readonly listenPort: number; readonly tokenSha256: string; readonly auditorTokenSha256: string | undefined } | undefined;
  readonly audit: AuditConfig;
  /** Staff access with JWTs; undefined: the staff login path is off (the user name is an ordinary one). */
  readonly staff: StaffConfig | undefined;
  readonly pool: PoolSettings;
  readonly log: { readonly level: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent' };
  /** The tenants of the file; empty with [catalog], whose tenants arrive through catalog/source.ts. */
  readonly tenants: ReadonlyMap<string, TenantConfig>;
  /** [catalog]; undefined: the file's [tenants.*] are the tenants. */
  readonly catalog: CatalogConfig | undefined;
  /** What every tenant falls back to, kept so a catalog tenant is validated exactly as a file one. */
  readonly tenantDefaults: TenantDefaults;
  /** The folder relative paths are resolved against (the config file's), in the file and in catalog tenants. */
  readonly configDir: string;
}

/** A tenant id is a DNS label: it appears as the first label of the SNI host name. */
export const TENANT_ID_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * server.tenant_in_user: 1 to 3 of these characters. Never a letter, digit, '-' or '_' (they
 * occur in tenant ids or common role names), whitespace, quotes, backslash, ',' or '=' (they need
 * escaping in conninfo strings or SCRAM).
 */
export const TENANT_SEPARATOR_RE = /^[.@%#:+~!$&*|/^]{1,3}$/;

export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
  }
}
