/**
 * Multi-core serving (`[server] workers = N`, N > 1): the primary process forks N workers that
 * each run a Proxy; it serves nothing itself. How connections reach the workers is
 * `[server] worker_accept` (config/worker-accept.ts): with "primary" the primary accepts each one
 * and hands it to a worker in turn (node:cluster's round robin); with "reuseport" (Node ≥ 22.12)
 * each worker listens on the port itself with SO_REUSEPORT, the kernel picks the worker, and the
 * primary never sees a client connection. Everything below is the same in both modes: a cancel
 * request is relayed by key whichever worker it lands on.
 *
 * The primary owns what must be one per instance: the audit log (one hash chain), the metrics
 * listener (metrics aggregated over workers), the admin API (sessions asked of the workers), the signals, and, without Redis, the limit store,
 * so caps stay exact across workers. With [catalog], each worker follows the catalog itself and the
 * primary only writes to it (the admin API's tenant routes). A worker that dies is replaced, and the slots it held are
 * released at once. With Redis, each worker is an instance of its own there.
 */
import cluster, { type Worker } from 'node:cluster';
import { mergeLimitRows, withClusterCounts, type TenantLimitRow } from '../admin/limits-view.js';
import { AggregatorRegistry } from 'prom-client';
import { randomUUID } from 'node:crypto';
import { loadConfigFile } from '../config/load.js';
import { ConfigError, type Config } from '../config/schema.js';
import { AuditLog } from '../audit/log.js';
import { openAuditStores } from '../audit/pg-sink.js';
import { TransparencySink } from '../audit/transparency.js';
import { backendCa } from '../pool/upstream.js';
import { Metrics } from '../observability/metrics.js';
import type { Logger } from '../observability/logger.js';
import { OperatorListeners } from '../admin/listeners.js';
import { RevocationSet, revocationTtlMs, type StaffRevocation } from '../admin/revocations.js';
import { LocalLimitStore, type Lease } from '../limits/store.js';
import { openSharedState, type SharedState } from './shared-state.js';
import { onShutdownSignals } from '../signals.js';
import { isMessage, type PrimaryMessage, type WorkerMessage } from './ipc.js';
import { CatalogStore } from '../catalog/store.js';
import { CatalogSource } from '../catalog/source.js';
import { resolveWorkerAccept } from '../config/worker-accept.js';

/** A worker that dies sooner than this after its start counts as a crash loop: wait before the next. */
const RESPAWN_BACKOFF_MS = 1_000;

export async function runPrimary(configPath: string, first: Config, log: Logger, version: string): Promise<void> {
  let config = first;
  const instanceId = randomUUID();
  const metrics = new Metrics();
  // The customer's copy of staff records (issue 17) is fed here, where the chain is; the workers hear each tenant's lag.
  const transparency = new TransparencySink(config.audit.transparencySpoolDir, metrics, log);
  const audit = await AuditLog.open(config.audit, instanceId, version, metrics, log, { sinks: [...(await openAuditStores(config.audit, metrics, log)), transparency] });
  const cas = new Map<string, Buffer>();
  // The customer's copy needs each tenant's settings: with [catalog] the primary follows the catalog
  // too (as each worker does), else catalog tenants' staff records would reach no customer table.
  const catalog =
    config.catalog === undefined ? null : await CatalogSource.start({ config: config.catalog, context: config, log, metrics, audit, onChange: () => undefined });
  transparency.attach({
    tenant: (id) => (catalog === null ? config.tenants : catalog.tenants).get(id),
    target: (t) => ({ host: t.backendHost, port: t.backendPort, tls: t.backendTls, ca: t.backendCaPath === undefined ? undefined : backendCa(cas, t.backendCaPath) }),
  });
  // With Redis the workers share limits there; the primary still needs the bus for admin commands.
  const shared: SharedState | null = config.redis === undefined ? null : await openSharedState(config, instanceId, log, () => undefined);
  const limits = new LocalLimitStore();
  /** [catalog]: the admin API's tenant routes write here; the workers follow it themselves. */
  const catalogStore = config.catalog === undefined ? null : new CatalogStore(config.catalog, config);
  const suspended = new Set<string>();
  /** Revocations in force, for workers that start later (their `init`). */
  const revocations = new RevocationSet();
  /** Leases each worker holds in the primary's store: released when the worker dies. */
  const leases = new Map<number, Map<number, Lease>>();
  let nextLease = 1;
  let stopping = false;
  const started = new Map<number, number>();
  const workerIds = new Map<Worker, number>();
  /** Fixed at start, like the worker count. */
  const accept = resolveWorkerAccept(config.server.workerAccept);
  /** The client port: the configured one, or (port 0) the one the first worker got. */
  let port = config.server.listenPort;
  /** Workers forked once the first one listens (reuseport on port 0: they must bind the port it got). */
  let deferred = accept === 'reuseport' && port === 0 ? config.server.workers - 1 : 0;
  /** Workers that have reported their listener; the instance is "listening" once all first ones have. */
  const listening = new Set<number>();

  const broadcast = (m: PrimaryMessage, except?: Worker): void => {
    for (const w of Object.values(cluster.workers ?? {})) if (w !== undefined && w !== except && w.isConnected()) w.send(m);
  };
  audit.onHealthChange((healthy) => broadcast({ k: 'auditHealth', healthy }));
  // Each second, when it changed: which tenants' records wait, since when (each worker ends its own lagging staff sessions).
  let lastLag = '[]';
  const lagTimer = setInterval(() => {
    const oldest = transparency.oldest();
    const text = JSON.stringify(oldest);
    if (text === lastLag) return;
    lastLag = text;
    broadcast({ k: 'transparencyLag', oldest });
  }, 1_000);
  lagTimer.unref();

  const onSuspension = (tenant: string, isSuspended: boolean): void => {
    if (isSuspended) suspended.add(tenant);
    else suspended.delete(tenant);
    audit.append({ event: 'proxy.lifecycle', state: isSuspended ? 'tenant_suspended' : 'tenant_resumed', tenant });
    broadcast({ k: 'suspension', tenant, suspended: isSuspended });
  };
  const onRevocation = (rev: StaffRevocation): void => {
    // With Redis the workers hear it from Redis themselves; the IPC copy is for those without.
    if (revocations.add(rev)) broadcast({ k: 'revocation', rev });
  };
  if (shared !== null) {
    await shared.bus.start({ onCancel: () => undefined, onSuspension, onReload: () => reload(), onRevocation });
    for (const t of shared.bus.suspended()) suspended.add(t);
  }

  const handle = (w: Worker, raw: unknown): void => {
    if (!isMessage(raw)) return;
    const m = raw as WorkerMessage;
    const id = workerIds.get(w) ?? 0;
    switch (m.k) {
      case 'rpc': {
        if (m.op === 'audit') {
          // A worker's fail-closed session waits for this answer before it forwards the statement.
          audit.appendDurable(m.event).then(
            () => w.isConnected() && w.send({ k: 'rpcReply', id: m.id, result: { ok: true, healthy: audit.healthy } } satisfies PrimaryMessage),
            () => w.isConnected() && w.send({ k: 'rpcReply', id: m.id, result: { ok: false, healthy: audit.healthy } } satisfies PrimaryMessage),
          );
          return;
        }
        let result: unknown;
        if (m.op === 'admit') result = limits.admitSync(m.rate, m.lockouts);
        else if (m.op === 'claimOnce') result = limits.claimOnceSync(m.key, m.ttlMs);
        else {
          const r = limits.acquireSync(m.slots);
          if (r.ok) {
            const n = nextLease++;
            let mine = leases.get(id);
            if (mine === undefined) leases.set(id, (mine = new Map<number, Lease>()));
            mine.set(n, r.lease);
            result = { ok: true, lease: n, active: r.active };
          } else result = r;
        }
        w.send({ k: 'rpcReply', id: m.id, result } satisfies PrimaryMessage);
        return;
      }
      case 'release': {
        const mine = leases.get(id);
        mine?.get(m.lease)?.release();
        mine?.delete(m.lease);
        return;
      }
      case 'authFailure':
        limits.noteAuthFailureSync(m.lockouts);
        return;
      case 'audit':
        audit.append(m.event);
        return;
      case 'cancel':
        // The worker that received it does not own the key: the owner (if any) is another worker.
        metrics.workerCancelsRelayed.inc();
        broadcast({ k: 'cancel', msg: m.msg }, w);
        return;
      case 'listening':
        port = m.port;
        listening.add(id);
        // reuseport on port 0: the first worker picked the port; the others join it now.
        while (deferred > 0 && !stopping) {
          deferred--;
          fork();
        }
        return;
      case 'hello':
        w.send({ k: 'init', suspended: [...suspended], revocations: revocations.list() } satisfies PrimaryMessage);
        if (!audit.healthy) w.send({ k: 'auditHealth', healthy: false } satisfies PrimaryMessage);
        return;
      case 'noop':
        return;
      case 'rpcReply':
        poolReplies.get(m.id)?.(m.result);
        return;
    }
  };

  let workerSeq = 0;
  const fork = (): void => {
    const id = ++workerSeq;
    // With reuseport the worker listens itself, on the instance's port once it is known (0: it picks one).
    const env = accept === 'reuseport' ? { PGWARDEN_WORKER_ID: String(id), PGWARDEN_REUSEPORT_PORT: String(port) } : { PGWARDEN_WORKER_ID: String(id) };
    const w = cluster.fork(env);
    workerIds.set(w, id);
    started.set(id, Date.now());
    w.on('message', (raw: unknown) => handle(w, raw));
    w.on('exit', (code, signal) => {
      // Its sessions are gone with it: every slot it held comes back now.
      const mine = leases.get(id);
      for (const l of mine?.values() ?? []) l.release();
      leases.delete(id);
      workerIds.delete(w);
      listening.delete(id);
      if (stopping) return;
      audit.append({ event: 'proxy.lifecycle', state: 'worker_exited', worker: id, pid: w.process.pid ?? null, code, signal, slots_released: mine?.size ?? 0 });
      log.warn({ worker: id, code, signal, slotsReleased: mine?.size ?? 0 }, 'worker exited: starting a replacement');
      const quick = Date.now() - (started.get(id) ?? 0) < RESPAWN_BACKOFF_MS;
      setTimeout(fork, quick ? RESPAWN_BACKOFF_MS : 0);
    });
  };

  // /pools, /metrics and the admin API's sessions: asked of every worker that listens (one still starting is skipped).
  let rpcSeq = 1;
  const poolReplies = new Map<number, (v: unknown) => void>();
  type WorkerRpc = { op: 'pools' | 'metrics' } | { op: 'sessions' | 'limits'; tenant: string | null } | { op: 'terminate'; session: string };
  const askWorkers = async (rpc: WorkerRpc): Promise<{ worker: number; result: unknown }[]> => {
    const views = await Promise.all(
      Object.values(cluster.workers ?? {}).map(
        (w) =>
          new Promise<{ worker: number; result: unknown } | null>((resolve) => {
            const worker = w === undefined ? undefined : workerIds.get(w);
            if (w === undefined || worker === undefined || !listening.has(worker) || !w.isConnected()) return resolve(null);
            const id = rpcSeq++;
            const timer = setTimeout(() => {
              poolReplies.delete(id);
              resolve(null);
            }, 2_000);
            poolReplies.set(id, (result) => {
              clearTimeout(timer);
              poolReplies.delete(id);
              resolve({ worker, result });
            });
            w.send({ k: 'rpc', id, ...rpc } satisfies PrimaryMessage);
          }),
      ),
    );
    return views.filter((v) => v !== null);
  };
  const poolsView = async (): Promise<unknown> => (await askWorkers({ op: 'pools' })).map((v) => ({ worker: v.worker, pools: v.result }));
  const metricsText = async (): Promise<string> => {
    // Counters add up; gauges too (each worker reports its own share), as prom-client's aggregator does.
    const parts = (await askWorkers({ op: 'metrics' })).map((v) => v.result as Parameters<typeof AggregatorRegistry.aggregate>[0][number]);
    // The primary's own share: the audit writer's metrics live only here.
    parts.push(await metrics.registry.getMetricsAsJSON());
    return AggregatorRegistry.aggregate(parts).metrics();
  };

  // The metrics listener (/metrics and /pools gathered from the workers) and the admin API: sessions
  // live in the workers (asked over IPC); the rest goes over the bus, or without Redis straight to the workers.
  const operator = await OperatorListeners.start(config, {
    metrics: { metrics, metricsText, isReady: () => !stopping, log, pools: poolsView },
    api: {
      tokenSha256: () => config.admin?.tokenSha256,
      auditorTokenSha256: () => config.admin?.auditorTokenSha256,
      auditConfig: () => config.audit,
      audit: () => audit,
      log,
      backend: {
        listSessions: async (tenant) =>
          (await askWorkers({ op: 'sessions', tenant })).flatMap((v) => (v.result as object[]).map((s) => ({ ...s, worker: v.worker }))),
        listPools: async () => (await askWorkers({ op: 'pools' })).flatMap((v) => (v.result as object[]).map((p) => ({ ...p, worker: v.worker }))),
        listLimits: async (tenant) =>
          withClusterCounts(mergeLimitRows((await askWorkers({ op: 'limits', tenant })).map((v) => v.result as TenantLimitRow[])), shared?.limits ?? limits),
        terminateSession: async (session) => (await askWorkers({ op: 'terminate', session })).some((v) => v.result === true),
        hasTenant: async (id) => (catalogStore === null ? config.tenants.has(id) : (await catalogStore.get(id)) !== undefined),
        suspend: async (tenant, isSuspended) => {
          if (shared !== null) await shared.bus.publishSuspension(tenant, isSuspended);
          else onSuspension(tenant, isSuspended);
        },
        revokeStaff: async (rev) => {
          if (shared !== null) await shared.bus.publishRevocation(rev);
          else onRevocation(rev);
        },
        reload: async () => {
          if (shared !== null) await shared.bus.publishReload();
          else reload();
        },
        listRevocations: () => revocations.list(),
        revocationTtlMs: () => revocationTtlMs(config.staff),
        tenantCatalog: () => catalogStore,
      },
    },
  });

  function reload(): void {
    loadConfigFile(configPath)
      .then((next) => {
        if (next.server.workers !== config.server.workers || next.server.workerAccept !== config.server.workerAccept) {
          log.warn('server.workers or server.worker_accept changed: takes effect after a restart');
        }
        config = next;
        cas.clear();
        catalogStore?.setContext(next);
        catalog?.setContext(next);
        broadcast({ k: 'reload' });
        audit.append({ event: 'proxy.lifecycle', state: 'reloaded', tenants: [...next.tenants.keys()] });
        log.info({ tenants: next.tenants.size }, 'configuration reloaded: workers told');
      })
      .catch((err: unknown) => {
        const problems = err instanceof ConfigError ? err.problems : [String((err as { message?: unknown } | null | undefined)?.message ?? err)];
        metrics.configReloads.inc({ outcome: 'rejected' });
        log.error({ problems }, 'reload rejected: keeping the running configuration');
      });
  }

  for (let i = deferred; i < config.server.workers; i++) fork();
  await new Promise<void>((resolve) => {
    const check = setInterval(() => {
      if (listening.size >= config.server.workers) {
        clearInterval(check);
        resolve();
      }
    }, 20);
  });
  audit.append({
    event: 'proxy.lifecycle',
    state: 'started',
    instance_id: instanceId,
    workers: config.server.workers,
    worker_accept: accept,
    listen: { host: config.server.listenHost, port },
  });
  const metricsPort = operator.metricsAddress?.port ?? null;
  const adminPort = operator.adminAddress?.port ?? null;
  log.info({ event: 'listening', port, metrics_port: metricsPort, admin_port: adminPort, workers: config.server.workers, worker_accept: accept }, 'listening');

  let finishing: Promise<void> | null = null;
  /** Closes what the primary owns, once (a second signal may arrive during a drain). */
  const finish = (): Promise<void> =>
    (finishing ??= (async () => {
      await operator.close();
      await catalogStore?.close();
      await catalog?.close();
      clearInterval(lagTimer);
      audit.append({ event: 'proxy.lifecycle', state: 'stopped' });
      await audit.close();
      if (shared !== null) {
        await shared.bus.close();
        await shared.limits.close();
      }
      log.info('pgwarden stopped');
      log.flush();
    })());
  const allExited = (): Promise<void> =>
    new Promise((resolve) => {
      const check = (): void => {
        if (Object.keys(cluster.workers ?? {}).length === 0) resolve();
        else setTimeout(check, 20);
      };
      check();
    });

  onShutdownSignals(log, {
    drain: async () => {
      stopping = true; // no respawns, /readyz 503
      audit.append({ event: 'proxy.lifecycle', state: 'draining' });
      broadcast({ k: 'drain' });
      await allExited();
      await finish();
    },
    closeNow: async () => {
      stopping = true;
      broadcast({ k: 'close' });
      await Promise.race([allExited(), new Promise((r) => setTimeout(r, 2_000))]);
      await finish();
    },
  });
  process.on('SIGHUP', reload);
}
