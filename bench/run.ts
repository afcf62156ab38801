/** `npm run bench`: pgbench -S over TLS against direct PostgreSQL, PgBouncer and pgwarden, alternating in rounds. */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeDevCerts, type DevCerts } from '../src/tools/dev-certs.js';
import { readVerifier, startCluster, type Cluster } from '../test/support/cluster.js';
import { SNI_SUFFIX } from '../test/support/proxy.js';
import { cleanup, cleanupOnSignals, onCleanup, tearingDown } from './lib/cleanup.js';
import { describeEnvironment } from './lib/environment.js';
import { parseOptions, USAGE, type BenchOptions } from './lib/options.js';
import { initialise, killRunningPgbench, runSelectOnly, type Endpoint } from './lib/pgbench.js';
import { findPgBouncer, startPgBouncer } from './lib/pgbouncer.js';
import { startPgWarden } from './lib/pgwarden.js';
import { busyPercent, cpuSeconds, hostTicks, memory } from './lib/procstat.js';
import { formatRun, formatTable, ratios, summarise, writeResult, type RunRecord } from './lib/report.js';
import type { Target, TargetName } from './lib/target.js';

const USER = 'bench';
const DATABASE = 'bench';
const RESULTS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bench/results');

interface Setup {
  cluster: Cluster;
  certs: DevCerts;
  password: string;
  workDir: string;
}

/** A temp dir for certificates and pgbench logs, removed at the end. */
async function makeWorkDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-bench-'));
  onCleanup(`remove ${dir}`, () => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Starts the cluster with ssl on (dev certs) and SCRAM, and loads pgbench's tables as the bench role. */
async function setUp(options: BenchOptions): Promise<Setup> {
  const workDir = await makeWorkDir();
  const certs = await makeDevCerts({ dir: path.join(workDir, 'certs'), hostnames: [`*.${SNI_SUFFIX}`, SNI_SUFFIX] });
  const password = randomBytes(16).toString('hex');
  log('starting PostgreSQL…');
  const cluster = await startCluster({
    auth: 'scram-sha-256',
    ssl: { certPath: certs.serverCertPath, keyPath: certs.serverKeyPath },
    users: [{ name: USER, password }],
    databases: [DATABASE],
  });
  onCleanup('stop PostgreSQL', () => cluster.stop());
  // Since PostgreSQL 15 only the database owner may create tables in `public`.
  await cluster.query(`ALTER DATABASE ${DATABASE} OWNER TO ${USER}`);
  log(`pgbench -i -s ${options.scale}…`);
  const setup = { cluster, certs, password, workDir };
  await initialise(endpoint(setup, directTarget(cluster)), options.scale);
  return setup;
}

function directTarget(cluster: Cluster): Target {
  return { name: 'direct', port: cluster.port, host: `direct.${SNI_SUFFIX}`, proxyPid: null, problems: () => [], stop: () => Promise.resolve() };
}

function endpoint(setup: Setup, target: Target): Endpoint {
  return { host: target.host, port: target.port, user: USER, password: setup.password, database: DATABASE, caCertPath: setup.certs.caCertPath };
}

/** Starts every requested target; PgBouncer is skipped (with the reason) when it is not installed. */
async function startTargets(setup: Setup, options: BenchOptions, bouncer: string | null): Promise<Target[]> {
  const verifier = await readVerifier(setup.cluster, USER);
  const common = { database: DATABASE, user: USER, verifier, certs: setup.certs };
  const targets: Target[] = [];
  for (const name of options.targets) {
    if (name === 'direct') targets.push(directTarget(setup.cluster));
    if (name === 'pgbouncer' && bouncer !== null) {
      targets.push(await startPgBouncer(bouncer, { ...common, backendPort: setup.cluster.port, poolSize: options.clients + 4 }));
    }
    if (name === 'pgwarden') {
      targets.push(await startPgWarden({ ...common, cluster: setup.cluster, maxClientConnections: options.clients + 10 }));
    }
  }
  return targets;
}

function safeCpu(pid: number | null): number {
  if (pid === null) return Number.NaN;
  try {
    return cpuSeconds(pid);
  } catch {
    return Number.NaN; // the proxy has exited
  }
}

function safeMemory(pid: number | null): { rssMb: number; peakRssMb: number } {
  if (pid === null) return { rssMb: Number.NaN, peakRssMb: Number.NaN };
  try {
    return memory(pid);
  } catch {
    return { rssMb: Number.NaN, peakRssMb: Number.NaN };
  }
}

/** One measured run, with the proxy's CPU time and new log problems around it. */
async function measure(setup: Setup, options: BenchOptions, target: Target, round: number, durationS: number): Promise<RunRecord> {
  const problemsBefore = target.problems().length;
  const loadAvg1mBefore = os.loadavg()[0] ?? Number.NaN;
  const startedAt = new Date().toISOString();
  const cpuBefore = safeCpu(target.proxyPid);
  const hostBefore = hostTicks();
  const figures = await runSelectOnly(endpoint(setup, target), { ...options, durationS }, setup.workDir);
  const hostBusyPct = busyPercent(hostBefore, hostTicks());
  const proxyCpuS = safeCpu(target.proxyPid) - cpuBefore;
  const mem = safeMemory(target.proxyPid);
  return {
    target: target.name, round, startedAt, ...figures, proxyCpuS,
    proxyCpuSPer10kTx: (proxyCpuS / figures.transactions) * 10_000,
    proxyRssMb: mem.rssMb, proxyPeakRssMb: mem.peakRssMb, loadAvg1mBefore, hostBusyPct,
    proxyProblems: target.problems().slice(problemsBefore),
  };
}

/** Round r starts at target r mod n, so no target always runs first or right after another. */
function rotated<T>(items: T[], by: number): T[] {
  const k = items.length === 0 ? 0 : by % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}

async function runRounds(setup: Setup, options: BenchOptions, targets: Target[]): Promise<RunRecord[]> {
  onCleanup('kill pgbench', killRunningPgbench);
  if (options.warmupS > 0) {
    for (const target of targets) {
      log(`warm-up ${target.name} (${options.warmupS} s, not recorded)`);
      await measure(setup, options, target, 0, options.warmupS);
      if (tearingDown()) throw new Interrupted();
    }
  }
  const runs: RunRecord[] = [];
  for (let round = 1; round <= options.rounds; round++) {
    for (const target of rotated(targets, round - 1)) {
      const run = await measure(setup, options, target, round, options.durationS);
      if (tearingDown()) throw new Interrupted();
      runs.push(run);
      log(formatRun(run));
      for (const line of [...run.errors, ...run.proxyProblems].slice(0, 5)) log(`  ${target.name}: ${line}`);
    }
  }
  return runs;
}

/** Thrown when a signal started teardown while runs were in flight. */
class Interrupted extends Error {}

function log(line: string): void {
  process.stdout.write(`${line}\n`);
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  if (options === null) return void process.stdout.write(USAGE);
  cleanupOnSignals();
  const startedAt = new Date().toISOString();
  const bouncer = options.targets.includes('pgbouncer') ? findPgBouncer() : null;
  const skipped: { target: TargetName; reason: string }[] =
    options.targets.includes('pgbouncer') && bouncer === null ? [{ target: 'pgbouncer', reason: 'pgbouncer is not installed' }] : [];
  const environment = describeEnvironment(bouncer);
  const setup = await setUp(options);
  const targets = await startTargets(setup, options, bouncer);
  const perRun = options.durationS * options.rounds * targets.length + options.warmupS * targets.length;
  log(`${targets.map((t) => t.name).join(', ')}: ${options.rounds} rounds × ${options.durationS} s, ${options.clients} clients, ` +
    `${options.jobs} threads (about ${Math.ceil(perRun / 60)} min)`);
  const runs = await runRounds(setup, options, targets);
  const summaries = targets.map((t) => summarise(t.name, runs));
  const r = ratios(summaries);
  log(`\n${formatTable(summaries, r)}\n`);
  const file = await writeResult(RESULTS_DIR, {
    startedAt, finishedAt: new Date().toISOString(), options, environment, skipped, summaries, ratios: r, runs,
  });
  log(`raw figures: ${file}`);
}

main().then(
  () => cleanup(),
  async (err: unknown) => {
    if (tearingDown()) return; // a signal handler is already tearing down and will exit
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
    await cleanup();
  },
);
