/**
 * The isolation phase: tenant "steady" runs pgbench -S through pgwarden alone, while tenant "noisy"
 * floods the same pgwarden (flooded), and while noisy floods a second pgwarden process (control:
 * the same load on the machine, but not on steady's proxy). Flooded ÷ alone is what steady loses to
 * its neighbour; control ÷ alone is how much of that the shared CPUs alone would explain.
 * The flood itself (storm, COPY, stalled reader) is flood-worker.ts in a child process.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DevCerts } from '../../src/tools/dev-certs.js';
import { readVerifier, type Cluster } from '../../test/support/cluster.js';
import { configToml, SNI_SUFFIX, type TenantSpec } from '../../test/support/proxy.js';
import { startDaemon, type Daemon } from './child.js';
import { onCleanup } from './cleanup.js';
import { problemLines } from './pgwarden.js';
import { startFlood, type Flood, type FloodReport, type FloodSpec } from './flood.js';
import { runSelectOnly, type Endpoint, type PgbenchFigures } from './pgbench.js';
import { busyPercent, cpuTimes, hostTicks, memory } from './procstat.js';
import type { FloodKind } from './options.js';
import { formatColumns } from './report.js';
import { fmt, median } from './stats.js';

export type Condition = 'alone' | 'flooded' | 'control';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli.js');
const NOISY_USER = 'noisy';
const NOISY_TABLE = 'noisy_bulk';
/** noisy's limits: what the flood runs into. */
const NOISY = { maxClients: 5, backends: 2, ratePerS: 20, bandwidth: '2MB', bandwidthBytes: 2 * 1024 * 1024 } as const;
/** Storm sources: loopback addresses standing for client hosts (the per-address pre-auth cap is not the limit under test). */
const STORM_SOURCES = ['127.0.0.2', '127.0.0.3', '127.0.0.4'];
/** Time for the flood to reach full strength before steady's pgbench starts. */
const FLOOD_LEAD_MS = 1000;
const MB = 1024 * 1024;

export interface IsolationSpec {
  cluster: Cluster;
  certs: DevCerts;
  workDir: string;
  /** steady's role and database: the bench role, owner of pgbench's tables. */
  steady: { user: string; password: string; database: string };
  clients: number;
  jobs: number;
  durationS: number;
  rounds: number;
  floods: FloodKind[];
  stormLanes: number;
  stormPauseMs: number;
  stormRatePerS: number;
  /**
   * `[server] workers` of both pgwarden processes (default 1). CPU and RSS are read for the process
   * the bench started only, so with workers > 1 they leave the workers out.
   */
  workers?: number;
  log: (line: string) => void;
}

export interface IsolationRun extends PgbenchFigures {
  round: number;
  condition: Condition;
  startedAt: string;
  /** Wall time of steady's pgbench run, seconds. */
  elapsedS: number;
  /** steady's proxy: CPU during the run, RSS before and the highest RSS sampled during it. */
  proxyCpuS: number;
  proxyRssMbBefore: number;
  proxyRssMbMax: number;
  hostBusyPct: number;
  loadAvg1mBefore: number;
  /** The flood worker's counts (flooded and control). */
  flood: FloodReport | null;
  /** On the flooded proxy: noisy's relayed bytes to the server per second during steady's run, and to the client since the flood began. */
  noisyClientToServerMBps: number;
  noisyServerToClientMb: number;
  /** Audit records (session.auth_failure) the flooded proxy built during the run. */
  auditAuthFailureRecords: number;
  /** steady's proxy log lines at warning level or above during the run. */
  proxyProblems: string[];
  proxyProblemCount: number;
  ok: boolean;
}

export interface IsolationSummary {
  condition: Condition;
  runs: number;
  failedRuns: number;
  medianTps: number;
  tpsOverAlone: number;
  medianP50Ms: number;
  medianP99Ms: number;
  p99OverAlone: number;
  maxLatencyMs: number;
  medianProxyCpuPct: number;
  maxProxyRssMb: number;
  medianHostBusyPct: number;
  medianStormAttemptsPerS: number;
  medianCopyMBps: number;
  maxStallRelayedMb: number;
  /** Storm refusals by "SQLSTATE message" and other outcomes, summed over runs. */
  refusals: Record<string, number>;
  stormFailures: Record<string, number>;
}

export interface IsolationResult {
  setup: Record<string, unknown>;
  runs: IsolationRun[];
  summaries: IsolationSummary[];
}

interface IsolationProxy {
  name: 'steady+noisy' | 'noisy only';
  port: number;
  pid: number;
  metrics(): Promise<string | null>;
  problems(): string[];
  stop(): Promise<void>;
}

async function listeningPorts(daemon: Daemon, timeoutMs = 15_000): Promise<{ port: number; metrics_port: number }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const line = daemon.output().split('\n').find((l) => l.includes('"event":"listening"'));
    if (line !== undefined) return JSON.parse(line) as { port: number; metrics_port: number };
    if (daemon.hasExited()) throw new Error(`pgwarden exited before listening:\n${daemon.output()}`);
    if (Date.now() > deadline) throw new Error(`pgwarden did not log "listening" within ${timeoutMs} ms:\n${daemon.output()}`);
    await sleep(50);
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `node dist/src/cli.js serve` with the given tenants, at the default log level (info), as the other pgwarden targets run. */
async function startProxy(name: IsolationProxy['name'], certs: DevCerts, tenants: TenantSpec[], workers: number): Promise<IsolationProxy> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-bench-isolation-'));
  onCleanup(`remove ${dir}`, () => rm(dir, { recursive: true, force: true }));
  const configPath = path.join(dir, 'pgwarden.toml');
  await writeFile(configPath, configToml({ requireTls: true, tenants, server: { workers } }, certs).replace('level = "warn"', 'level = "info"'));
  const daemon = startDaemon(process.execPath, [CLI, 'serve', '--config', configPath], { cwd: dir });
  onCleanup(`stop pgwarden (${name})`, () => daemon.stop());
  const ports = await listeningPorts(daemon);
  return {
    name,
    port: ports.port,
    pid: daemon.pid,
    metrics: async () => {
      try {
        const res = await fetch(`http://127.0.0.1:${ports.metrics_port}/metrics`, { signal: AbortSignal.timeout(5000) });
        return res.ok ? await res.text() : null;
      } catch {
        return null;
      }
    },
    problems: () => problemLines(daemon.output()),
    stop: () => daemon.stop(),
  };
}

/** One series from Prometheus text; 0 when absent. */
function series(text: string | null, name: string): number {
  for (const line of (text ?? '').split('\n')) if (line.startsWith(`${name} `)) return Number(line.slice(name.length + 1));
  return 0;
}

const noisyBytes = (text: string | null, direction: string): number =>
  series(text, `pgwarden_relay_bytes_total{tenant="${NOISY_USER}",direction="${direction}"}`);
const authFailureRecords = (text: string | null): number => series(text, 'pgwarden_audit_records_total{event="session.auth_failure"}');

/** Conditions in turn order for `round`: rotated by one each round, so none always runs first or after another. */
function conditionsFor(round: number): Condition[] {
  const all: Condition[] = ['alone', 'flooded', 'control'];
  const k = (round - 1) % all.length;
  return [...all.slice(k), ...all.slice(0, k)];
}

function safeMemoryMb(pid: number): number {
  try {
    return memory(pid).rssMb;
  } catch {
    return Number.NaN;
  }
}

function safeCpuS(pid: number): number {
  try {
    const t = cpuTimes(pid);
    return t.userS + t.systemS;
  } catch {
    return Number.NaN;
  }
}

export async function runIsolation(spec: IsolationSpec): Promise<IsolationResult> {
  const { cluster, certs, steady } = spec;
  const noisyPassword = randomBytes(16).toString('hex');
  await cluster.query(`CREATE ROLE ${NOISY_USER} LOGIN PASSWORD '${noisyPassword}'`);
  await cluster.query(`CREATE UNLOGGED TABLE ${NOISY_TABLE} (payload text)`, [], steady.database);
  await cluster.query(`GRANT INSERT ON ${NOISY_TABLE} TO ${NOISY_USER}`, [], steady.database);
  const noisyVerifier = await readVerifier(cluster, NOISY_USER);
  const noisyTenant: TenantSpec = {
    id: 'noisy',
    cluster,
    database: steady.database,
    users: [{ name: NOISY_USER, verifier: noisyVerifier }],
    maxClientConnections: NOISY.maxClients,
    pool: { pool_mode: 'transaction', max_backend_connections: NOISY.backends },
    limits: { new_connections_per_second: NOISY.ratePerS, max_bandwidth_bytes_per_second: NOISY.bandwidth },
  };
  const steadyTenant: TenantSpec = {
    id: 'steady',
    cluster,
    database: steady.database,
    users: [{ name: steady.user, verifier: await readVerifier(cluster, steady.user) }],
    maxClientConnections: spec.clients + 50,
    pool: { pool_mode: 'session', max_backend_connections: spec.clients + 4 },
  };
  const workers = spec.workers ?? 1;
  const main = await startProxy('steady+noisy', certs, [noisyTenant, steadyTenant], workers);
  const control = await startProxy('noisy only', certs, [noisyTenant], workers);
  const floods = new Set<Flood>();
  onCleanup('kill flood workers', () => {
    for (const f of floods) f.kill();
  });
  const endpoint: Endpoint = { host: `steady.${SNI_SUFFIX}`, port: main.port, user: steady.user, password: steady.password, database: steady.database, caCertPath: certs.caCertPath };
  const floodSpec = (port: number): FloodSpec => ({
    port,
    servername: `noisy.${SNI_SUFFIX}`,
    caPem: certs.caCertPem,
    user: NOISY_USER,
    password: noisyPassword,
    verifier: noisyVerifier,
    database: steady.database,
    storm: spec.floods.includes('storm') ? { lanes: spec.stormLanes, sources: STORM_SOURCES, holdMs: 1000, pauseMs: spec.stormPauseMs, ratePerS: spec.stormRatePerS } : null,
    copy: spec.floods.includes('copy') ? { table: NOISY_TABLE, rowBytes: 1000 } : null,
    // About 2 GB of rows, never read.
    stall: spec.floods.includes('stall') ? { sql: "SELECT repeat('x', 1000) FROM generate_series(1, 2000000)" } : null,
  });
  const load = { clients: spec.clients, jobs: Math.min(spec.clients, spec.jobs), durationS: spec.durationS, protocol: 'simple' as const };

  spec.log(`isolation: warm-up, steady alone (${Math.min(5, spec.durationS)} s, not recorded)`);
  await runSelectOnly(endpoint, { ...load, durationS: Math.min(5, spec.durationS) }, spec.workDir);

  const runs: IsolationRun[] = [];
  for (let round = 1; round <= spec.rounds; round++) {
    for (const condition of conditionsFor(round)) {
      const target = condition === 'flooded' ? main : condition === 'control' ? control : null;
      let flood: Flood | null = null;
      const metricsAtFloodStart = target === null ? null : await target.metrics();
      if (target !== null) {
        flood = startFlood(floodSpec(target.port));
        floods.add(flood);
        await flood.ready;
        await sleep(FLOOD_LEAD_MS);
      }
      const problemsBefore = main.problems().length;
      const metricsBefore = target === null ? null : await target.metrics();
      const loadAvg1mBefore = os.loadavg()[0] ?? Number.NaN;
      const startedAt = new Date().toISOString();
      const rssBefore = safeMemoryMb(main.pid);
      let rssMax = rssBefore;
      const sampler = setInterval(() => (rssMax = Math.max(rssMax, safeMemoryMb(main.pid))), 250);
      const cpuBefore = safeCpuS(main.pid);
      const hostBefore = hostTicks();
      const t0 = performance.now();
      let figures: PgbenchFigures;
      try {
        figures = await runSelectOnly(endpoint, load, spec.workDir);
      } finally {
        clearInterval(sampler);
      }
      const elapsedS = (performance.now() - t0) / 1000;
      const hostBusyPct = busyPercent(hostBefore, hostTicks());
      const proxyCpuS = safeCpuS(main.pid) - cpuBefore;
      rssMax = Math.max(rssMax, safeMemoryMb(main.pid));
      const metricsAfter = target === null ? null : await target.metrics();
      const report = flood === null ? null : await flood.stop();
      if (flood !== null) floods.delete(flood);
      if (target !== null) {
        // noisy's sessions end and its backends close before the next run.
        const deadline = Date.now() + 15_000;
        while (series(await target.metrics(), 'pgwarden_client_connections{tenant="noisy"}') > 0 && Date.now() < deadline) await sleep(100);
        await cluster.query(`TRUNCATE ${NOISY_TABLE}`, [], steady.database);
      }
      const problems = main.problems().slice(problemsBefore);
      const run: IsolationRun = {
        round, condition, startedAt, elapsedS, ...figures,
        proxyCpuS, proxyRssMbBefore: rssBefore, proxyRssMbMax: rssMax, hostBusyPct, loadAvg1mBefore,
        flood: report,
        noisyClientToServerMBps: target === null ? Number.NaN : (noisyBytes(metricsAfter, 'client_to_upstream') - noisyBytes(metricsBefore, 'client_to_upstream')) / elapsedS / MB,
        noisyServerToClientMb: target === null ? Number.NaN : (noisyBytes(metricsAfter, 'upstream_to_client') - noisyBytes(metricsAtFloodStart, 'upstream_to_client')) / MB,
        auditAuthFailureRecords: target === null ? 0 : authFailureRecords(metricsAfter) - authFailureRecords(metricsBefore),
        proxyProblems: problems.slice(0, 20),
        proxyProblemCount: problems.length,
        ok: figures.exitCode === 0 && !figures.aborted && figures.failedTransactions === 0 && figures.errorCount === 0 && figures.transactions > 0,
      };
      runs.push(run);
      spec.log(formatIsolationRun(run));
      await sleep(500);
    }
  }
  await control.stop();
  await main.stop();
  return {
    setup: {
      noisy: { ...NOISY, poolMode: 'transaction', stormSources: STORM_SOURCES, stormLanes: spec.stormLanes, stormPauseMs: spec.stormPauseMs, stormRatePerS: spec.stormRatePerS, floods: spec.floods, floodLeadMs: FLOOD_LEAD_MS },
      steady: { clients: spec.clients, jobs: load.jobs, durationS: spec.durationS, poolMode: 'session', backends: spec.clients + 4 },
      proxies: 'steady+noisy: one pgwarden process with both tenants; noisy only: a second pgwarden process (control)',
      workers,
    },
    runs,
    summaries: summarise(runs),
  };
}

function sumInto(into: Record<string, number>, from: Record<string, number> | undefined): void {
  for (const [k, v] of Object.entries(from ?? {})) into[k] = (into[k] ?? 0) + v;
}

function summarise(runs: IsolationRun[]): IsolationSummary[] {
  const conditions: Condition[] = ['alone', 'flooded', 'control'];
  const summaries: IsolationSummary[] = [];
  for (const condition of conditions) {
    const mine = runs.filter((r) => r.condition === condition);
    if (mine.length === 0) continue;
    const pick = (f: (r: IsolationRun) => number): number => median(mine.map(f));
    const refusals: Record<string, number> = {};
    const stormFailures: Record<string, number> = {};
    for (const r of mine) {
      sumInto(refusals, r.flood?.storm?.refusals);
      sumInto(stormFailures, r.flood?.storm?.failures);
    }
    summaries.push({
      condition,
      runs: mine.length,
      failedRuns: mine.filter((r) => !r.ok).length,
      medianTps: pick((r) => r.tps),
      tpsOverAlone: Number.NaN,
      medianP50Ms: pick((r) => r.p50Ms),
      medianP99Ms: pick((r) => r.p99Ms),
      p99OverAlone: Number.NaN,
      maxLatencyMs: Math.max(...mine.map((r) => r.maxMs)),
      medianProxyCpuPct: pick((r) => (100 * r.proxyCpuS) / r.elapsedS),
      maxProxyRssMb: Math.max(...mine.map((r) => r.proxyRssMbMax)),
      medianHostBusyPct: pick((r) => r.hostBusyPct),
      medianStormAttemptsPerS: pick((r) => stormRate(r.flood)),
      medianCopyMBps: pick((r) => r.noisyClientToServerMBps),
      maxStallRelayedMb: Math.max(...mine.map((r) => (Number.isFinite(r.noisyServerToClientMb) ? r.noisyServerToClientMb : 0))),
      refusals,
      stormFailures,
    });
  }
  const alone = summaries.find((s) => s.condition === 'alone');
  for (const s of summaries) {
    if (alone === undefined || s === alone) continue;
    s.tpsOverAlone = s.medianTps / alone.medianTps;
    s.p99OverAlone = s.medianP99Ms / alone.medianP99Ms;
  }
  return summaries;
}

/** Storm login attempts per second over the flood's lifetime; NaN without a storm. */
function stormRate(report: FloodReport | null): number {
  const storm = report?.storm ?? null;
  return report === null || storm === null ? Number.NaN : storm.attempts / report.durationS;
}

function formatIsolationRun(r: IsolationRun): string {
  const storm = r.flood?.storm ?? null;
  const flood = r.flood === null ? '' : `  storm ${storm === null ? '-' : `${fmt(stormRate(r.flood), 0)} att/s, ${storm.loggedIn} logged in`}` +
    `  copy ${fmt(r.noisyClientToServerMBps, 2)} MB/s  stall ${fmt(r.noisyServerToClientMb, 1)} MB  flooder CPU ${fmt((100 * r.flood.cpuS) / r.flood.durationS, 0)}%`;
  return `round ${r.round} ${r.condition.padEnd(8)} tps ${fmt(r.tps, 0).padStart(6)}  p50 ${fmt(r.p50Ms, 3)}  p99 ${fmt(r.p99Ms, 3)} ms  ` +
    `proxy CPU ${fmt((100 * r.proxyCpuS) / r.elapsedS, 0)}%  RSS ${fmt(r.proxyRssMbMax, 1)} MB  host CPU ${fmt(r.hostBusyPct, 0)}%${flood}${r.ok ? '' : '  FAILED'}`;
}

const ISOLATION_HEADER = ['condition', 'runs', 'TPS', '÷alone', 'p50 ms', 'p99 ms', 'p99 ÷alone', 'max ms', 'proxy CPU%', 'RSS MB', 'host%', 'storm att/s', 'copy MB/s', 'stall MB', 'status'];

/** One row per condition, medians over rounds (max for RSS, latency and the stalled bytes). */
export function formatIsolation(result: IsolationResult): string {
  const rows = result.summaries.map((s) => [
    s.condition, String(s.runs), fmt(s.medianTps, 0), fmt(s.tpsOverAlone, 3), fmt(s.medianP50Ms, 3), fmt(s.medianP99Ms, 3), fmt(s.p99OverAlone, 2),
    fmt(s.maxLatencyMs, 0), fmt(s.medianProxyCpuPct, 0), fmt(s.maxProxyRssMb, 1), fmt(s.medianHostBusyPct, 0), fmt(s.medianStormAttemptsPerS, 0),
    fmt(s.medianCopyMBps, 2), s.condition === 'alone' ? '-' : fmt(s.maxStallRelayedMb, 1), s.failedRuns === 0 ? 'ok' : `FAILED ${s.failedRuns}/${s.runs}`,
  ]);
  return formatColumns(ISOLATION_HEADER, rows);
}

/** Lines under the table: the 20 % bar, the control, and what noisy was answered. */
export function isolationNotes(result: IsolationResult): string[] {
  const flooded = result.summaries.find((s) => s.condition === 'flooded');
  const control = result.summaries.find((s) => s.condition === 'control');
  const lines: string[] = [];
  if (flooded !== undefined) {
    const within = flooded.failedRuns === 0 && flooded.tpsOverAlone >= 0.8 && flooded.p99OverAlone <= 1.2;
    lines.push(`  steady under flood: TPS ×${fmt(flooded.tpsOverAlone, 3)}, p99 ×${fmt(flooded.p99OverAlone, 2)} of alone: ${within ? 'within' : 'NOT within'} 20 %`);
    const total = Object.values(flooded.refusals).reduce((a, b) => a + b, 0);
    for (const [k, v] of Object.entries(flooded.refusals)) lines.push(`  noisy refused: ${v}/${total} ${k}`);
    for (const [k, v] of Object.entries(flooded.stormFailures)) lines.push(`  noisy storm, not an ErrorResponse: ${v} × ${k}`);
    const attempts = result.runs.filter((r) => r.condition === 'flooded').reduce((n, r) => n + (r.flood?.storm?.attempts ?? 0), 0);
    const records = result.runs.filter((r) => r.condition === 'flooded').reduce((n, r) => n + r.auditAuthFailureRecords, 0);
    if (attempts > 0) lines.push(`  audit: ${records} session.auth_failure records for ${attempts} storm attempts`);
  }
  if (control !== undefined) {
    lines.push(`  control (the same flood on another pgwarden process): steady TPS ×${fmt(control.tpsOverAlone, 3)}, p99 ×${fmt(control.p99OverAlone, 2)}: what the shared CPUs alone cost`);
  }
  return lines;
}
