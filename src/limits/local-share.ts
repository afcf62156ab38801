/**
 * degraded_local: the share of a cluster-wide limit one instance enforces on its own while Redis is
 * away, given how many instances were live when Redis was last seen. RedisLimitStore
 * (redis-store.ts) decides when to apply them; which limits exist is store.ts's.
 */
import type { LockoutRule, RateRule, SlotRequest } from './store.js';

/** This instance's share of a cluster-wide limit: 0 stays 0, anything else is at least 1. */
export function shareOf(limit: number, instances: number): number {
  return limit <= 0 ? 0 : Math.max(1, Math.floor(limit / instances));
}

export function slotsShare(slots: readonly SlotRequest[], instances: number): SlotRequest[] {
  return slots.map((s) => ({ key: s.key, limit: shareOf(s.limit, instances) }));
}

/** The refill rate is divided exactly; the burst, like every count, is at least 1. */
export function rateShare(rate: RateRule, instances: number): RateRule {
  return { key: rate.key, ratePerSecond: rate.ratePerSecond / instances, burst: shareOf(rate.burst, instances) };
}

/** A lockout scaled to this instance's share, like every other limit in degraded mode. */
export function lockoutShare(l: LockoutRule, instances: number): LockoutRule {
  return { ...l, maxFailures: shareOf(l.maxFailures, instances) };
}
