/** Runs pgwarden as a child process (`node dist/src/cli.js serve`, on --pgwarden-node's Node if given): with one tenant in front of the cluster, or (spawnPgWarden) any config. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DevCerts } from '../../src/tools/dev-certs.js';
import type { Cluster } from '../../test/support/cluster.js';
import { configToml, SNI_SUFFIX, type TomlValue } from '../../test/support/proxy.js';
import { startDaemon, type Daemon } from './child.js';
import { onCleanup } from './cleanup.js';
import type { PoolMode, Target } from './target.js';

const TENANT = 'bench';
/** pino's numeric level for "warn"; anything at or above it counts as a problem. */
const PINO_WARN = 40;
const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli.js');

export interface PgWardenSpec {
  cluster: Cluster;
  database: string;
  user: string;
  verifier: string;
  certs: DevCerts;
  mode: PoolMode;
  maxClientConnections: number;
  /** The tenant's max_backend_connections. */
  maxBackendConnections: number;
  /** Extra [server] keys (e.g. max_preauth_connections for the idle phase, worker_accept for the workers phase). */
  server?: Record<string, TomlValue>;
  /** The Node binary to run pgwarden on; default the bench's. */
  node?: string;
  /** Worker processes (`[server] workers`); default 1. CPU and memory are summed over them. */
  workers?: number;
  /** Extra tenant keys (e.g. audit_statements) and an audit file (the audit phase). */
  tenantExtra?: Record<string, TomlValue>;
  auditFile?: string;
  /** Another build's cli.js (the baseline targets); default this checkout's. */
  cli?: string;
  /** The target's name; default pgwarden-<mode>. */
  name?: `baseline-${PoolMode}`;
}

/** The config the tests use (require_tls, backend_tls = "disable", metrics on), at the default log level. */
function configText(spec: PgWardenSpec): string {
  const toml = configToml(
    {
      requireTls: true,
      tenants: [{
        id: TENANT,
        cluster: spec.cluster,
        database: spec.database,
        users: [{ name: spec.user, verifier: spec.verifier }],
        maxClientConnections: spec.maxClientConnections,
        pool: { pool_mode: spec.mode, max_backend_connections: spec.maxBackendConnections },
        ...(spec.tenantExtra === undefined ? {} : { extra: spec.tenantExtra }),
      }],
      server: { workers: spec.workers ?? 1, ...spec.server },
      ...(spec.auditFile === undefined ? {} : { auditFile: spec.auditFile }),
    },
    spec.certs,
  );
  // The "listening" line is logged at info, which is also the proxy's default level.
  return toml.replace('level = "warn"', 'level = "info"');
}

/** The proxy's `"event":"listening"` log line: its ports, and when it was written (pino's ISO `time`). */
export interface ListeningLine {
  port: number;
  metrics_port: number | null;
  time: string;
}

/** Resolves with the proxy's `"event":"listening"` log line. */
function listeningLine(daemon: Daemon, timeoutMs = 15_000): Promise<ListeningLine> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const poll = (): void => {
      const line = daemon.output().split('\n').find((l) => l.includes('"event":"listening"'));
      if (line !== undefined) return resolve(JSON.parse(line) as ListeningLine);
      if (daemon.hasExited()) return reject(new Error(`pgwarden exited before listening:\n${daemon.output()}`));
      if (Date.now() > deadline) return reject(new Error(`pgwarden did not log "listening" within ${timeoutMs} ms:\n${daemon.output()}`));
      setTimeout(poll, 50);
    };
    poll();
  });
}

/** Log lines at warn or above, and anything that is not pino JSON (stack traces, Node warnings). */
export function problemLines(output: string): string[] {
  return output.split('\n').filter((line) => {
    if (line.trim() === '') return false;
    try {
      const level = (JSON.parse(line) as { level?: unknown }).level;
      return typeof level !== 'number' || level >= PINO_WARN;
    } catch {
      return true;
    }
  });
}

/** GET /metrics from the proxy's metrics listener; null when it does not answer. */
export async function scrape(port: number): Promise<string | null> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(5000) });
    return res.ok ? await res.text() : null;
  } catch {
    return null;
  }
}

/** A pgwarden child process that has logged "listening", with its wall-clock spawn time for start-up figures. */
export interface PgWardenProcess {
  daemon: Daemon;
  listening: ListeningLine;
  /** Date.now() just before the spawn. */
  spawnedAtMs: number;
}

/**
 * `node <cli> serve --config <toml>` in a temp dir (removed at cleanup), resolved once it logs
 * "listening"; the config must log at info or below. `env` is added to this process's environment.
 */
export async function spawnPgWarden(
  toml: string,
  opts: { cli?: string; node?: string; env?: Record<string, string>; listenTimeoutMs?: number } = {},
): Promise<PgWardenProcess> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-bench-proxy-'));
  onCleanup(`remove ${dir}`, () => rm(dir, { recursive: true, force: true }));
  const configPath = path.join(dir, 'pgwarden.toml');
  await writeFile(configPath, toml);
  const spawnedAtMs = Date.now();
  const daemon = startDaemon(opts.node ?? process.execPath, [opts.cli ?? CLI, 'serve', '--config', configPath], { cwd: dir, env: { ...process.env, ...opts.env } });
  onCleanup('stop pgwarden', () => daemon.stop());
  const listening = await listeningLine(daemon, opts.listenTimeoutMs);
  return { daemon, listening, spawnedAtMs };
}

export async function startPgWarden(spec: PgWardenSpec): Promise<Target> {
  const {
    daemon,
    listening: { port, metrics_port: metricsPort },
  } = await spawnPgWarden(configText(spec), { ...(spec.cli === undefined ? {} : { cli: spec.cli }), ...(spec.node === undefined ? {} : { node: spec.node }) });
  return {
    name: spec.name ?? `pgwarden-${spec.mode}`,
    port,
    host: `${TENANT}.${SNI_SUFFIX}`,
    proxyPid: daemon.pid,
    problems: () => problemLines(daemon.output()),
    metrics: () => (metricsPort === null ? Promise.resolve(null) : scrape(metricsPort)),
    stop: () => daemon.stop(),
  };
}
