/**
 * GET /limits (`pgwarden show limits`): each served tenant's effective limits (the [limits] and
 * [pool] defaults with the tenant's overrides) beside what it uses now on this instance. A process
 * reports its own use; the primary of a worker set adds up its workers' (mergeLimitRows). With
 * Redis, the answering process adds the cluster-wide count (withClusterCounts).
 * Durations are milliseconds and 0 means off, as in the configuration.
 */
import type { TenantConfig } from '../config/schema.js';
import { LimitKeys, type LimitStore } from '../limits/store.js';

export interface TenantLimitRow {
  readonly tenant: string;
  readonly enabled: boolean;
  readonly pool_mode: string;
  /** Logged-in client sessions now, against max_client_connections. */
  readonly clients: number;
  /**
   * With Redis: the tenant's client slots held by every instance sharing it (what
   * max_client_connections caps cluster-wide; staff in their reserve are not among them), read
   * when asked. null on a single instance, or while Redis is degraded or not answering.
   */
  readonly cluster_clients: number | null;
  readonly max_client_connections: number;
  readonly max_connections_per_user: number;
  readonly new_connections_per_second: number;
  readonly new_connections_burst: number;
  /** Backend connections open now (active and idle), against max_backend_connections. */
  readonly backends: number;
  readonly max_backend_connections: number;
  readonly pool_timeout_ms: number;
  readonly query_timeout_ms: number;
  readonly idle_timeout_ms: number;
  readonly idle_in_transaction_timeout_ms: number;
  readonly transaction_timeout_ms: number;
  readonly max_bandwidth_bytes_per_second: number;
  readonly max_message_bytes: number;
  readonly auth_failure_limit: number;
}

/** One row per tenant, sorted by id; `tenant` non-null: that tenant only (none if it is not served). */
export function limitRows(
  tenants: ReadonlyMap<string, TenantConfig>,
  clients: ReadonlyMap<string, number>,
  backends: ReadonlyMap<string, number>,
  tenant: string | null,
): TenantLimitRow[] {
  const chosen = tenant === null ? [...tenants.values()] : tenants.has(tenant) ? [tenants.get(tenant)!] : [];
  return chosen
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    .map((t) => ({
      tenant: t.id,
      enabled: t.enabled,
      pool_mode: t.pool.mode,
      clients: clients.get(t.id) ?? 0,
      cluster_clients: null,
      max_client_connections: t.maxClientConnections,
      max_connections_per_user: t.limits.maxConnectionsPerUser,
      new_connections_per_second: t.limits.newConnectionsPerSecond,
      new_connections_burst: t.limits.newConnectionsBurst,
      backends: backends.get(t.id) ?? 0,
      max_backend_connections: t.pool.maxBackendConnections,
      pool_timeout_ms: t.pool.poolTimeoutMs,
      query_timeout_ms: t.limits.queryTimeoutMs,
      idle_timeout_ms: t.limits.idleTimeoutMs,
      idle_in_transaction_timeout_ms: t.limits.idleInTransactionTimeoutMs,
      transaction_timeout_ms: t.limits.transactionTimeoutMs,
      max_bandwidth_bytes_per_second: t.limits.maxBandwidthBytesPerSecond,
      max_message_bytes: t.limits.maxMessageBytes,
      auth_failure_limit: t.limits.authFailureLimit,
    }));
}

/** The workers' rows as one instance's: limits from the first worker that serves the tenant, use added up. */
export function mergeLimitRows(perWorker: readonly (readonly TenantLimitRow[])[]): TenantLimitRow[] {
  const merged = new Map<string, TenantLimitRow>();
  for (const rows of perWorker) {
    for (const r of rows) {
      const seen = merged.get(r.tenant);
      merged.set(r.tenant, seen === undefined ? r : { ...seen, clients: seen.clients + r.clients, backends: seen.backends + r.backends });
    }
  }
  return [...merged.values()].sort((a, b) => (a.tenant < b.tenant ? -1 : a.tenant > b.tenant ? 1 : 0));
}

/** The rows with each tenant's cluster-wide client count from the shared limit store (one read for all). */
export async function withClusterCounts(rows: readonly TenantLimitRow[], limits: Pick<LimitStore, 'clusterCounts'>): Promise<TenantLimitRow[]> {
  const counts = rows.length === 0 ? null : await limits.clusterCounts(rows.map((r) => LimitKeys.tenantConnections(r.tenant)));
  return rows.map((r, i) => ({ ...r, cluster_clients: counts?.[i] ?? null }));
}
