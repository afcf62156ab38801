/**
 * A worker's share of each tenant's backend pool (`[server] workers` > 1): pools live in the
 * workers, so each may open max_backend_connections / workers backends (at least 1) and the
 * tenant's total stays within its setting. (Client-facing limits are exact across workers through
 * the primary or Redis.) Applied to whatever tenants a worker serves, from the file or the catalog.
 */
import type { TenantConfig } from '../config/schema.js';

export function workerShare(tenants: ReadonlyMap<string, TenantConfig>, workers: number): ReadonlyMap<string, TenantConfig> {
  if (workers <= 1) return tenants;
  const shared = new Map<string, TenantConfig>();
  for (const [id, t] of tenants) {
    const max = Math.max(1, Math.floor(t.pool.maxBackendConnections / workers));
    shared.set(id, {
      ...t,
      pool: { ...t.pool, maxBackendConnections: max, minIdleBackendConnections: Math.min(max, Math.ceil(t.pool.minIdleBackendConnections / workers)) },
    });
  }
  return shared;
}
