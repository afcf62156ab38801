/**
 * Chooses where limits and instance messages live: in this process (no [redis] section) or
 * in Redis, shared by every instance. Sessions see only the LimitStore and ClusterBus interfaces.
 */
import type { Config } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import { LocalLimitStore, type LimitMode, type LimitStore } from '../limits/store.js';
import { RedisLimitStore } from '../limits/redis-store.js';
import { LocalBus, type ClusterBus } from './bus.js';
import { RedisBus } from './redis-bus.js';

export interface SharedState {
  readonly limits: LimitStore;
  readonly bus: ClusterBus;
}

export async function openSharedState(
  config: Config,
  instanceId: string,
  log: Logger,
  onModeChange: (mode: LimitMode, cause: string) => void,
): Promise<SharedState> {
  const r = config.redis;
  if (r === undefined) return { limits: new LocalLimitStore(), bus: new LocalBus() };
  const common = { url: r.url, instanceId, keyPrefix: r.keyPrefix, commandTimeoutMs: r.commandTimeoutMs, log };
  // Neither waits on an unreachable Redis: the store starts degraded (and says so through
  // onModeChange), the bus resubscribes when Redis is back.
  const limits = await RedisLimitStore.open({ ...common, leaseTtlMs: r.leaseTtlMs, onModeChange });
  return { limits, bus: new RedisBus(common) };
}
