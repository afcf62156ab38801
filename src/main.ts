/**
 * `pgwarden serve`: loads the config, starts the proxy and wires the signals.
 * SIGHUP reloads (a broken config keeps the old one and says why), SIGTERM/SIGINT drain,
 * a second SIGTERM/SIGINT exits at once.
 */
import { loadConfigFile } from './config/load.js';
import { ConfigError } from './config/schema.js';
import { createLogger } from './observability/logger.js';
import { Proxy, VERSION } from './server.js';
import cluster from 'node:cluster';
import type { Config } from './config/schema.js';
import type { Logger } from './observability/logger.js';
import { runPrimary } from './cluster/primary.js';
import { onShutdownSignals } from './signals.js';
import { IpcAuditSink, IpcBus, IpcLimitStore, PrimaryChannel } from './cluster/ipc.js';

export async function serve(configPath: string): Promise<void> {
  const config = await loadConfigFile(configPath);
  const log = createLogger(config.log.level);
  if (cluster.isWorker) return serveWorker(configPath, config, log);
  if (config.server.workers > 1) return runPrimary(configPath, config, log, VERSION);
  const proxy = await Proxy.start(config, { logger: log });
  // Machine-readable line for scripts and tests that start the proxy on port 0.
  log.info({ event: 'listening', port: proxy.address.port, metrics_port: proxy.metricsAddress?.port ?? null, admin_port: proxy.adminAddress?.port ?? null }, 'listening');

  onShutdownSignals(log, {
    drain: async () => {
      await proxy.drain();
      await proxy.close();
    },
    closeNow: () => proxy.close(),
  });
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

/**
 * One of N workers (see cluster/primary.ts): serves clients on the shared socket, or on its own
 * SO_REUSEPORT listener (worker_accept = "reuseport"); the primary
 * holds the audit log, the metrics and admin listeners, the signals and (without Redis) the limits.
 */
async function serveWorker(configPath: string, config: Config, baseLog: Logger): Promise<void> {
  const workerId = Number(process.env['PGWARDEN_WORKER_ID'] ?? '0');
  const log = baseLog.child({ worker: workerId });
  const channel = new PrimaryChannel();
  const audit = new IpcAuditSink(channel, workerId);
  // With Redis each worker is an instance there; without it the primary keeps limits exact.
  const shared = config.redis === undefined ? { limits: new IpcLimitStore(channel), bus: new IpcBus(channel) } : undefined;
  // worker_accept = "reuseport": this worker listens on the instance's port itself (the primary names it).
  const reusePortEnv = process.env['PGWARDEN_REUSEPORT_PORT'];
  const reusePort = reusePortEnv === undefined ? undefined : { port: Number(reusePortEnv) };
  // The primary's transparency sink reports which tenants' records wait, since when.
  let transparencyOldest = new Map<string, number>();
  channel.on((m) => {
    if (m.k === 'transparencyLag') transparencyOldest = new Map(m.oldest);
  });
  const transparencyLagMs = (tenantId: string): number => {
    const since = transparencyOldest.get(tenantId);
    return since === undefined ? 0 : Math.max(0, Date.now() - since);
  };
  const proxy = await Proxy.start(config, { logger: log, audit, shared, admin: false, workers: config.server.workers, reusePort, transparencyLagMs });
  const exit = (code: number): void => {
    void proxy
      .close()
      .then(() => channel.flush())
      .finally(() => process.exit(code));
  };
  channel.on((m) => {
    switch (m.k) {
      case 'reload':
        loadConfigFile(configPath)
          // The worker count is fixed at start (Proxy's `workers`); the share follows it.
          .then((next) => proxy.reload(next))
          .catch((err: unknown) => log.error({ err: (err as Error).message }, 'reload rejected: keeping the running configuration'));
        return;
      case 'drain':
        void proxy.drain().then(() => exit(0));
        return;
      case 'close':
        exit(1);
        return;
      case 'rpc':
        if (m.op === 'pools') channel.send({ k: 'rpcReply', id: m.id, result: proxy.pools.snapshot() });
        else if (m.op === 'sessions') channel.send({ k: 'rpcReply', id: m.id, result: proxy.sessions.list(m.tenant) });
        else if (m.op === 'limits') channel.send({ k: 'rpcReply', id: m.id, result: proxy.limitRows(m.tenant) });
        else if (m.op === 'terminate') channel.send({ k: 'rpcReply', id: m.id, result: proxy.sessions.terminate(m.session) });
        else {
          proxy.metrics.registry.getMetricsAsJSON().then(
            (result) => channel.send({ k: 'rpcReply', id: m.id, result }),
            (err: unknown) => log.error({ err }, 'metrics collection failed'),
          );
        }
        return;
      case 'init':
      case 'cancel':
      case 'suspension':
      case 'auditHealth':
      case 'revocation':
      case 'rpcReply':
      case 'transparencyLag':
        return; // the bus and the channel handle these
    }
  });
  // The primary is gone (crashed or killed): nobody holds this worker's slots or audit; stop.
  process.on('disconnect', () => exit(1));
  // Terminal signals reach the whole process group; the primary decides what happens.
  process.on('SIGINT', () => undefined);
  process.on('SIGHUP', () => undefined);
  process.on('SIGTERM', () => void proxy.drain().then(() => exit(0)));
  channel.send({ k: 'listening', port: proxy.address.port });
}
