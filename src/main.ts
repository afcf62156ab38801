/**
 * `pgwarden serve`: loads the config, starts the proxy and wires the signals.
 * SIGHUP reloads (a broken config keeps the old one and says why), SIGTERM/SIGINT drain,
 * a second SIGTERM/SIGINT exits at once.
 */
import { loadConfigFile } from './config/load.js';
import { ConfigError } from './config/schema.js';
import { createLogger } from './observability/logger.js';
import { Proxy } from './server.js';

export async function serve(configPath: string): Promise<void> {
  const config = await loadConfigFile(configPath);
  const log = createLogger(config.log.level);
  const proxy = await Proxy.start(config, { logger: log });
  // Machine-readable line for scripts and tests that start the proxy on port 0.
  log.info({ event: 'listening', port: proxy.address.port, metrics_port: proxy.metricsAddress?.port ?? null }, 'listening');

  let stopping = false;
  let forced = false;
  const shutdown = (signal: string): void => {
    if (stopping) {
      if (forced) return;
      forced = true;
      log.warn({ signal }, 'second signal: exiting now');
      void proxy.close().finally(() => process.exit(1));
      return;
    }
    stopping = true;
    log.info({ signal }, 'shutting down: draining sessions');
    void proxy
      .drain()
      .then(async () => {
        if (forced) return; // the second signal's exit wins
        await proxy.close();
        process.exit(0);
      })
      .catch((err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      });
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  const reload = (): void => {
    loadConfigFile(configPath)
      .then((next) => proxy.reload(next))
      .catch((err: unknown) => {
        proxy.metrics.configReloads.inc({ outcome: 'rejected' });
        const problems = err instanceof ConfigError ? err.problems : [String((err as { message?: unknown } | null | undefined)?.message ?? err)];
        log.error({ problems }, 'reload rejected: keeping the running configuration');
      });
  };
  process.on('SIGHUP', reload);
  // POST /reload on any instance (with Redis: on every instance) re-reads this file too.
  proxy.reloadHook = reload;
}
