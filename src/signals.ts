/**
 * The shutdown signals, as PgBouncer and PostgreSQL use them (SECURITY.md rule 10): the first
 * SIGTERM/SIGINT drains and exits 0, a second one ends everything at once and exits 1. Shared by
 * the single-process server (main.ts) and the primary of a worker set (cluster/primary.ts).
 */
import type { Logger } from './observability/logger.js';

export interface ShutdownSteps {
  /** Stop taking sessions, let running ones finish (or meet the drain deadline), release everything. */
  drain(): Promise<void>;
  /** End everything now (after a second signal); may run while drain() is still pending. */
  closeNow(): Promise<void>;
}

export function onShutdownSignals(log: Logger, steps: ShutdownSteps): void {
  let stopping = false;
  let forced = false;
  const shutdown = (signal: string): void => {
    if (stopping) {
      if (forced) return;
      forced = true;
      log.warn({ signal }, 'second signal: exiting now');
      void steps.closeNow().finally(() => process.exit(1));
      return;
    }
    stopping = true;
    log.info({ signal }, 'shutting down: draining sessions');
    steps.drain().then(
      () => {
        if (!forced) process.exit(0); // otherwise the second signal's exit wins
      },
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}
