/**
 * The settings a tenant inherits and may override: [limits] and [pool] give the defaults, a
 * [tenants.<id>] table the same keys for itself. Read twice, with different fallbacks.
 */
import type { LimitSettings, PoolSettings } from './schema.js';
import type { Reader, Tree } from './toml-reader.js';

export const LIMIT_KEYS = [
  'max_connections_per_user', 'new_connections_per_second', 'new_connections_burst', 'auth_failure_limit',
  'auth_failure_window', 'auth_failure_cooldown', 'query_timeout', 'idle_timeout', 'idle_in_transaction_timeout',
  'transaction_timeout', 'send_timeout', 'max_bandwidth_bytes_per_second', 'max_message_bytes',
] as const;

/** The largest client message pgwarden accepts at all (PostgreSQL's own cap is 1 GB). */
export const MAX_MESSAGE_BYTES = 1024 ** 3;

/** Limit settings from `tree` (the [limits] table or a tenant's), falling back to `dflt`. */
export function readLimits(r: Reader, tree: Tree | undefined, path: string, dflt: LimitSettings): LimitSettings {
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

export const POOL_KEYS = ['pool_mode', 'max_backend_connections', 'min_idle_backend_connections', 'pool_timeout', 'backend_idle_timeout', 'backend_lifetime', 'session_state'] as const;

/** Pool settings from `tree` (the [pool] table or a tenant's), falling back to `dflt`. */
export function readPool(r: Reader, tree: Tree | undefined, path: string, dflt: PoolSettings): PoolSettings {
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
