/**
 * `npm run bench`: pgbench -S over TLS against direct PostgreSQL, PgBouncer and pgwarden (session and
 * transaction pooling), alternating targets cell by cell; then pgbench -C (connection rate) and the
 * proxies' memory with thousands of idle TLS clients; on request, one tenant's pgbench while another
 * floods pgwarden (isolation), and pgwarden on a catalog of 10,000 tenants (catalog).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeDevCerts, type DevCerts } from '../src/tools/dev-certs.js';
import { readVerifier, startCluster, type Cluster } from '../test/support/cluster.js';
import { SNI_SUFFIX, type TomlValue } from '../test/support/proxy.js';
import { catalogNotes, formatCatalog, runCatalog, SMALL_TENANTS, USERS_PER_TENANT, type CatalogResult } from './lib/catalog.js';
import { cleanup, cleanupOnSignals, onCleanup, tearingDown } from './lib/cleanup.js';
import { describeEnvironment, openFilesLimit } from './lib/environment.js';
import { measureIdle, type IdleResult } from './lib/idle.js';
import { formatIsolation, isolationNotes, runIsolation, type IsolationResult } from './lib/isolation.js';
import { counterDeltas, parseCounters } from './lib/metrics.js';
import { parseOptions, USAGE, type BenchOptions, type Protocol } from './lib/options.js';
import { initialise, killRunningPgbench, runSelectOnly, type Endpoint } from './lib/pgbench.js';
import { findPgBouncer, startPgBouncer } from './lib/pgbouncer.js';
import { startPgWarden } from './lib/pgwarden.js';
import { resolveWorkerAccept, reusePortAvailable, type WorkerAccept } from '../src/config/worker-accept.js';
import { busyPercent, cpuTimes, hostTicks, memory, ownCpuSeconds, type CpuTimes } from './lib/procstat.js';
import { formatBar } from './lib/bar.js';
import { formatConnect, formatIdle, formatMatrix, formatRun, statusOf, summarise, writeResult, type CellSummary, type Phase, type ResultFile, type RunRecord } from './lib/report.js';
import { parseTargetName, type PoolMode, type ProxyKind, type Target, type TargetName } from './lib/target.js';

const USER = 'bench';
const DATABASE = 'bench';
const RESULTS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bench/results');
/** RLIMIT_NOFILE for the bench and everything it starts: 10 000 idle clients need that many sockets in the worker and the proxy. */
const OPEN_FILES = 65_536;
const isRoot = process.getuid?.() === 0;

interface Setup {
  cluster: Cluster;
  certs: DevCerts;
  password: string;
  workDir: string;
  /** --baseline: another pgwarden checkout, for the baseline-* targets. */
  baseline: string | null;
  /** --pgwarden-node: the Node binary the pgwarden targets run on (null: the bench's). */
  pgwardenNode: string | null;
  /** --baseline-server: extra [server] keys of the baseline targets. */
  baselineServer: Record<string, string | number>;
}

/** What runs where, and with which pool sizes and limits (also written to the JSON). */
interface Plan {
  matrixTargets: TargetName[];
  connectTargets: TargetName[];
  /** Proxies measured with idle clients (each a fresh process in transaction mode). */
  /** Proxies measured with idle clients, each a fresh process in its own pool mode. */
  idleProxies: TargetName[];
  /** Targets started for the matrix and connect phases. */
  running: TargetName[];
  maxClients: number;
  /** Session mode holds a backend per client for the whole session, so its pool must fit every client. */
  sessionPoolSize: number;
  transactionPoolSize: number;
  maxClientConnections: number;
  maxConnections: number;
  /** `[server] workers` of the pgwarden targets (matrix, connect). */
  pgwardenWorkers: number;
}

function log(line: string): void {
  process.stdout.write(`${line}\n`);
}

/**
 * Node has no setrlimit: prlimit(1) raises this process's own RLIMIT_NOFILE, which every child inherits.
 * Root tries OPEN_FILES for both limits (needs CAP_SYS_RESOURCE, which containers often lack); failing
 * that, or not root, the soft limit goes up to the hard one.
 */
function raiseOpenFiles(): void {
  const limits = (): number[] => openFilesLimit().split('/').map((v) => (v === 'unlimited' ? Infinity : Number(v)));
  const set = (soft: number, hard: number): boolean => {
    const text = (n: number): string => (Number.isFinite(n) ? String(n) : 'unlimited');
    try {
      execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${text(soft)}:${text(hard)}`], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  };
  const [soft = Number.NaN, hard = Number.NaN] = limits();
  if (!Number.isFinite(soft) || soft >= OPEN_FILES) return;
  if (isRoot && hard < OPEN_FILES && set(OPEN_FILES, OPEN_FILES)) return;
  if (soft < hard) set(Math.min(hard, OPEN_FILES), hard);
}

/** Whether a phase that runs the --targets (matrix, connect, idle) was asked for: only those run PgBouncer. */
function usesTargets(options: BenchOptions): boolean {
  return options.phases.some((p) => p === 'matrix' || p === 'connect' || p === 'idle');
}

function makePlan(options: BenchOptions, bouncer: string | null): { plan: Plan; skipped: { target: string; reason: string }[] } {
  const skipped: { target: string; reason: string }[] = [];
  const available = options.targets.filter((t) => {
    const proxy = parseTargetName(t)?.proxy;
    if (proxy === 'baseline' && options.baseline === null) {
      skipped.push({ target: t, reason: 'no --baseline DIR given' });
      return false;
    }
    if (bouncer !== null || proxy !== 'pgbouncer') return true;
    if (usesTargets(options)) skipped.push({ target: t, reason: 'pgbouncer is not installed' });
    return false;
  });
  const has = (p: 'matrix' | 'connect' | 'idle'): boolean => options.phases.includes(p);
  const matrixTargets = has('matrix') ? available : [];
  const connectTargets = has('connect') ? available.filter((t) => t === 'direct' || parseTargetName(t)?.mode === 'session') : [];
  const idleProxies: TargetName[] = !has('idle')
    ? []
    : options.idleTargets !== null
      ? options.idleTargets.filter((t) => {
          const proxy = parseTargetName(t)?.proxy;
          if (proxy === 'baseline' && options.baseline === null) skipped.push({ target: t, reason: 'no --baseline DIR given' });
          else if (proxy === 'pgbouncer' && bouncer === null) skipped.push({ target: t, reason: 'pgbouncer is not installed' });
          else return true;
          return false;
        })
      : (['pgbouncer', 'pgwarden'] as const).filter((p) => available.some((t) => parseTargetName(t)?.proxy === p)).map((p) => `${p}-transaction` as const);
  const running = available.filter((t) => matrixTargets.includes(t) || connectTargets.includes(t));
  const maxClients = Math.max(1, ...(has('matrix') ? options.clients : []), ...(has('connect') ? [options.connectClients] : []));
  const sessionPoolSize = Math.max(options.poolSize, maxClients + 4);
  const count = (mode: PoolMode): number => running.filter((t) => parseTargetName(t)?.mode === mode).length;
  // Direct needs one backend per client; each proxy may keep its whole pool open (idle) after its cells.
  const needed = maxClients + count('session') * sessionPoolSize + count('transaction') * options.poolSize + idleProxies.length * 2 + 30;
  return {
    plan: {
      matrixTargets, connectTargets, idleProxies, running, maxClients, sessionPoolSize, transactionPoolSize: options.poolSize,
      maxClientConnections: maxClients + 50, maxConnections: Math.max(300, needed), pgwardenWorkers: options.pgwardenWorkers,
    },
    skipped,
  };
}

/** A temp dir for certificates and pgbench logs, removed at the end. */
async function makeWorkDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-bench-'));
  onCleanup(`remove ${dir}`, () => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Starts the cluster with ssl on (dev certs), SCRAM and room for every client, and loads pgbench's tables as the bench role. */
async function setUp(options: BenchOptions, plan: Plan): Promise<Setup> {
  const workDir = await makeWorkDir();
  const certs = await makeDevCerts({ dir: path.join(workDir, 'certs'), hostnames: [`*.${SNI_SUFFIX}`, SNI_SUFFIX] });
  const password = randomBytes(16).toString('hex');
  log(`starting PostgreSQL (max_connections ${plan.maxConnections})…`);
  const cluster = await startCluster({
    auth: 'scram-sha-256',
    ssl: { certPath: certs.serverCertPath, keyPath: certs.serverKeyPath },
    users: [{ name: USER, password }],
    databases: [DATABASE],
    settings: { max_connections: String(plan.maxConnections) },
  });
  onCleanup('stop PostgreSQL', () => cluster.stop());
  // Since PostgreSQL 15 only the database owner may create tables in `public`.
  await cluster.query(`ALTER DATABASE ${DATABASE} OWNER TO ${USER}`);
  const setup = { cluster, certs, password, workDir, baseline: options.baseline, pgwardenNode: options.pgwardenNode, baselineServer: options.baselineServer };
  // The catalog phase logs in only (no pgbench tables needed).
  if (options.phases.some((p) => p !== 'catalog')) {
    log(`pgbench -i -s ${options.scale}…`);
    await initialise(endpoint(setup, directTarget(cluster)), options.scale);
  }
  return setup;
}

function directTarget(cluster: Cluster): Target {
  return { name: 'direct', port: cluster.port, host: `direct.${SNI_SUFFIX}`, proxyPid: null, problems: () => [], stop: () => Promise.resolve() };
}

function endpoint(setup: Setup, target: Target): Endpoint {
  return { host: target.host, port: target.port, user: USER, password: setup.password, database: DATABASE, caCertPath: setup.certs.caCertPath };
}

interface ProxyLimits {
  poolSize: number;
  maxClients: number;
  /** pgwarden [server] overrides. */
  server?: Record<string, TomlValue>;
}

async function startProxy(
  setup: Setup,
  bouncer: string | null,
  proxy: ProxyKind,
  mode: PoolMode,
  limits: ProxyLimits,
  audit?: { file: string; tenant: Record<string, TomlValue> },
): Promise<Target> {
  const verifier = await readVerifier(setup.cluster, USER);
  const common = { database: DATABASE, user: USER, verifier, certs: setup.certs, mode };
  if (proxy === 'pgbouncer') {
    return startPgBouncer(bouncer!, { ...common, backendPort: setup.cluster.port, poolSize: limits.poolSize, maxClientConn: limits.maxClients });
  }
  return startPgWarden({
    ...(setup.pgwardenNode === null ? {} : { node: setup.pgwardenNode }),
    ...(proxy === 'baseline' ? { cli: path.join(setup.baseline!, 'dist/src/cli.js'), name: `baseline-${mode}` as const } : {}),
    ...common, cluster: setup.cluster, maxBackendConnections: limits.poolSize, maxClientConnections: limits.maxClients,
    ...(limits.server === undefined ? {} : { server: limits.server }),
    ...(audit === undefined ? {} : { auditFile: audit.file, tenantExtra: audit.tenant }),
  });
}

async function startTargets(setup: Setup, plan: Plan, bouncer: string | null): Promise<Target[]> {
  const targets: Target[] = [];
  for (const name of plan.running) {
    const kind = parseTargetName(name);
    if (kind === null) {
      targets.push(directTarget(setup.cluster));
      continue;
    }
    const poolSize = kind.mode === 'session' ? plan.sessionPoolSize : plan.transactionPoolSize;
    const keys = {
      ...(kind.proxy !== 'pgbouncer' && plan.pgwardenWorkers > 1 ? { workers: plan.pgwardenWorkers } : {}),
      ...(kind.proxy === 'baseline' ? setup.baselineServer : {}),
    };
    const server = Object.keys(keys).length === 0 ? {} : { server: keys };
    targets.push(await startProxy(setup, bouncer, kind.proxy, kind.mode, { poolSize, maxClients: plan.maxClientConnections, ...server }));
  }
  return targets;
}

function safeCpu(pid: number | null): CpuTimes {
  if (pid === null) return { userS: Number.NaN, systemS: Number.NaN };
  try {
    return cpuTimes(pid);
  } catch {
    return { userS: Number.NaN, systemS: Number.NaN }; // the proxy has exited
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

interface Cell {
  phase: Phase;
  protocol: Protocol;
  clients: number;
  durationS: number;
  /** pgbench -C (a new login per transaction); default: the connect phase's cells. */
  connectEachTx?: boolean;
}

/** One measured run, with the proxy's CPU time, log problems and (pgwarden) counters around it. */
async function measure(setup: Setup, options: BenchOptions, target: Target, cell: Cell, round: number): Promise<RunRecord> {
  const problemsBefore = target.problems().length;
  const countersBefore = parseCounters((await target.metrics?.()) ?? null);
  const loadAvg1mBefore = os.loadavg()[0] ?? Number.NaN;
  const startedAt = new Date().toISOString();
  // pgbench opens connections synchronously within a thread, so -C needs a thread per client to have `clients` logins in flight.
  const connectEachTx = cell.connectEachTx ?? cell.phase === 'connect';
  const jobs = connectEachTx ? cell.clients : Math.min(cell.clients, options.jobs);
  const cpuBefore = safeCpu(target.proxyPid);
  const hostBefore = hostTicks();
  const figures = await runSelectOnly(
    endpoint(setup, target),
    { clients: cell.clients, jobs, durationS: cell.durationS, protocol: cell.protocol, connectEachTx },
    setup.workDir,
  );
  const hostBusyPct = busyPercent(hostBefore, hostTicks());
  const cpuAfter = safeCpu(target.proxyPid);
  const mem = safeMemory(target.proxyPid);
  const countersAfter = parseCounters((await target.metrics?.()) ?? null);
  const problems = target.problems().slice(problemsBefore);
  const proxyUserS = cpuAfter.userS - cpuBefore.userS;
  const proxySystemS = cpuAfter.systemS - cpuBefore.systemS;
  const per10k = (s: number): number => (s / figures.transactions) * 10_000;
  const record: Omit<RunRecord, 'status'> = {
    phase: cell.phase, target: target.name, protocol: cell.protocol, clients: cell.clients, jobs, durationS: cell.durationS, round, startedAt,
    ...figures,
    proxyCpuS: proxyUserS + proxySystemS, proxyUserS, proxySystemS,
    proxyCpuSPer10kTx: per10k(proxyUserS + proxySystemS), proxyUserSPer10kTx: per10k(proxyUserS), proxySystemSPer10kTx: per10k(proxySystemS),
    proxyRssMb: mem.rssMb, proxyPeakRssMb: mem.peakRssMb, loadAvg1mBefore, hostBusyPct,
    proxyProblems: problems.slice(0, 20), proxyProblemCount: problems.length,
    proxyCounters: counterDeltas(countersBefore, countersAfter),
  };
  return { ...record, status: statusOf(record) };
}

/** Turn k starts at target k mod n, so no target always runs first or right after another. */
function rotated<T>(items: T[], by: number): T[] {
  const k = items.length === 0 ? 0 : by % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}

/** Thrown when a signal started teardown while runs were in flight. */
class Interrupted extends Error {}

async function runRounds(setup: Setup, options: BenchOptions, plan: Plan, targets: Target[]): Promise<RunRecord[]> {
  onCleanup('kill pgbench', killRunningPgbench);
  const byName = (names: TargetName[]): Target[] => targets.filter((t) => names.includes(t.name));
  if (options.warmupS > 0) {
    const warm: Cell = { phase: 'matrix', protocol: 'simple', clients: Math.min(16, plan.maxClients), durationS: options.warmupS };
    for (const target of targets) {
      log(`warm-up ${target.name} (${options.warmupS} s, ${warm.clients} clients, not recorded)`);
      await measure(setup, options, target, warm, 0);
      if (tearingDown()) throw new Interrupted();
    }
  }
  const runs: RunRecord[] = [];
  const run = async (target: Target, cell: Cell, round: number): Promise<void> => {
    const r = await measure(setup, options, target, cell, round);
    if (tearingDown()) throw new Interrupted();
    runs.push(r);
    log(formatRun(r));
    for (const line of [...r.errors.slice(0, 3), ...r.proxyProblems.slice(0, 3)]) log(`    ${target.name}: ${line}`);
  };
  let turn = 0;
  for (let round = 1; round <= options.rounds; round++) {
    for (const protocol of plan.matrixTargets.length > 0 ? options.protocols : []) {
      for (const clients of options.clients) {
        const cell: Cell = { phase: 'matrix', protocol, clients, durationS: options.durationS };
        for (const target of rotated(byName(plan.matrixTargets), turn++)) await run(target, cell, round);
      }
    }
    const connect: Cell = { phase: 'connect', protocol: 'simple', clients: options.connectClients, durationS: options.connectDurationS };
    for (const target of rotated(byName(plan.connectTargets), round - 1)) await run(target, connect, round);
  }
  return runs;
}

/**
 * Fresh proxies, one at a time, stopped afterwards; by default in transaction mode (idle clients
 * hold no backend: in session mode each holds one, so the counts must stay under max_connections).
 */
async function runIdle(setup: Setup, options: BenchOptions, plan: Plan, bouncer: string | null): Promise<IdleResult[]> {
  const results: IdleResult[] = [];
  const most = Math.max(...options.idle);
  for (const name of plan.idleProxies) {
    const { proxy, mode } = parseTargetName(name)!;
    log(`idle clients: ${name}, ${options.idle.join(', ')} connections in batches of ${options.loginBatch}`);
    const target = await startProxy(setup, bouncer, proxy, mode, {
      poolSize: plan.transactionPoolSize,
      maxClients: most + 1000,
      server: { max_preauth_connections: most + 1000, max_preauth_per_source: most + 1000 },
    });
    try {
      results.push(await measureIdle(target, {
        login: {
          port: target.port, servername: target.host, caPem: setup.certs.caCertPem, user: USER, password: setup.password, database: DATABASE,
          timeoutMs: 60_000,
        },
        counts: options.idle,
        batch: options.loginBatch,
        countBackends: async () => (await setup.cluster.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = '${USER}'`)).rows[0]?.n ?? -1,
        log,
      }));
    } finally {
      await target.stop();
    }
    if (tearingDown()) throw new Interrupted();
  }
  return results;
}

interface WorkersRow {
  workers: number;
  /** `[server] worker_accept` of the run ('-' with one worker: a single process accepts itself). */
  accept: WorkerAccept | '-';
  tps: number[];
  cpuSPer10kTx: number[];
  rssMb: number[];
  /** pgbench -C: TLS + SCRAM logins per second, and proxy CPU milliseconds per login. */
  loginsPerS: number[];
  cpuMsPerLogin: number[];
  /** The primary's own share of the proxy CPU in the TPS cell and in the -C cell (with workers; NaN with one). */
  primaryShareTx: number[];
  primaryShareLogins: number[];
}

/** The accept modes the workers phase compares: --worker-accept, else what "auto" means on pgwarden's Node. */
function workerAccepts(options: BenchOptions): WorkerAccept[] {
  const node = options.pgwardenNode ?? process.execPath;
  const version = execFileSync(node, ['--version'], { encoding: 'utf8' }).trim().replace(/^v/, '');
  const available = reusePortAvailable(version);
  if (options.workerAccept === null) return [resolveWorkerAccept('auto', available)];
  if (options.workerAccept.includes('reuseport') && !available) {
    throw new Error(`--worker-accept reuseport: pgwarden's Node (${node}) is ${version}; it needs 22.12 or later on Linux (--pgwarden-node PATH)`);
  }
  return options.workerAccept;
}

/**
 * Scaling over worker processes: pgwarden-transaction with each `--workers` count (and, above one,
 * each accept mode) in turn, a fresh proxy per run, rounds alternating: pgbench -S -M simple at the
 * largest --clients, then pgbench -C (a new TLS + SCRAM login per transaction) at --connect-clients.
 * CPU and RSS are summed over the primary and its workers.
 */
async function runWorkersPhase(setup: Setup, options: BenchOptions, plan: Plan): Promise<WorkersRow[]> {
  const clients = Math.max(...options.clients);
  const accepts = workerAccepts(options);
  const rows: WorkersRow[] = options.workers.flatMap((workers) =>
    (workers === 1 ? ['-' as const] : accepts).map((accept) => ({
      workers, accept, tps: [], cpuSPer10kTx: [], rssMb: [], loginsPerS: [], cpuMsPerLogin: [], primaryShareTx: [], primaryShareLogins: [],
    })),
  );
  log(`workers: pgwarden-transaction with ${options.workers.join(', ')} workers (worker_accept ${accepts.join(', ')}), pgbench -S -M simple at ${clients} clients ` +
    `and -C at ${options.connectClients}, ${options.durationS} s / ${options.connectDurationS} s, ${options.rounds} rounds`);
  for (let round = 0; round < options.rounds; round++) {
    for (const row of rotated(rows, round)) {
      const target = await startProxy(setup, null, 'pgwarden', 'transaction', {
        poolSize: plan.transactionPoolSize,
        maxClients: Math.max(plan.maxClientConnections, clients + 10),
        server: { workers: row.workers, ...(row.accept === '-' ? {} : { worker_accept: row.accept }) },
      });
      try {
        // The primary's own CPU (with workers): what accepting (worker_accept = primary) and the IPC answers cost it.
        const own = (): number => (row.workers > 1 && target.proxyPid !== null ? ownCpuSeconds(target.proxyPid) : Number.NaN);
        const own0 = own();
        const r = await measure(setup, options, target, { phase: 'workers', protocol: 'simple', clients, durationS: options.durationS }, round);
        const own1 = own();
        const c = await measure(setup, options, target, { phase: 'workers', protocol: 'simple', clients: options.connectClients, durationS: options.connectDurationS, connectEachTx: true }, round);
        row.primaryShareTx.push((own1 - own0) / r.proxyCpuS);
        row.primaryShareLogins.push((own() - own1) / c.proxyCpuS);
        row.tps.push(r.tps);
        row.cpuSPer10kTx.push(r.proxyCpuSPer10kTx);
        row.rssMb.push(r.proxyRssMb);
        row.loginsPerS.push(c.tps);
        row.cpuMsPerLogin.push(c.transactions > 0 ? (c.proxyCpuS / c.transactions) * 1000 : Number.NaN);
        const problems = [...r.errors, ...c.errors, ...r.proxyProblems, ...c.proxyProblems].slice(0, 3);
        log(`  round ${round + 1}: ${row.workers} worker(s) ${row.accept}: ${r.tps.toFixed(0)} tps, ${r.proxyCpuSPer10kTx.toFixed(2)} CPU s/10k tx; ` +
          `${c.tps.toFixed(0)} logins/s, ${row.cpuMsPerLogin.at(-1)!.toFixed(2)} CPU ms/login${r.status === 'ok' && c.status === 'ok' ? '' : ` (${r.status}/${c.status})`}`);
        for (const line of problems) log(`    ${line}`);
      } finally {
        await target.stop();
      }
    }
  }
  return rows;
}

function formatWorkers(rows: WorkersRow[]): string {
  const base = median(rows[0]?.tps ?? []);
  const baseLogins = median(rows[0]?.loginsPerS ?? []);
  const lines = ['workers  accept        tps   ÷first  CPU s/10k   logins/s   ÷first  CPU ms/login   primary % (tx / logins)   RSS MB'];
  const pct = (v: number): string => (Number.isFinite(v) ? `${(v * 100).toFixed(0)} %` : '-');
  for (const r of rows) {
    const tps = median(r.tps);
    const logins = median(r.loginsPerS);
    lines.push(
      `${String(r.workers).padStart(7)}  ${r.accept.padEnd(9)} ${tps.toFixed(0).padStart(8)} ${(tps / base).toFixed(2).padStart(8)} ${median(r.cpuSPer10kTx).toFixed(2).padStart(10)} ` +
        `${logins.toFixed(0).padStart(10)} ${(logins / baseLogins).toFixed(2).padStart(8)} ${median(r.cpuMsPerLogin).toFixed(2).padStart(13)} ` +
        `${`${pct(median(r.primaryShareTx))} / ${pct(median(r.primaryShareLogins))}`.padStart(25)} ${median(r.rssMb).toFixed(0).padStart(8)}`,
    );
  }
  return lines.join('\n');
}

interface AuditRow {
  variant: string;
  tps: number[];
  cpuSPer10kTx: number[];
  auditBytesPerTx: number[];
}

/** The statement-audit settings the audit phase compares, cheapest first. */
const AUDIT_VARIANTS: { variant: string; tenant: Record<string, TomlValue> }[] = [
  { variant: 'off', tenant: {} },
  { variant: 'best-effort', tenant: { audit_statements: 'all', audit_parameters: 'full' } },
  { variant: 'fail-closed', tenant: { audit_statements: 'all', audit_parameters: 'full', audit_fail_closed: true } },
];

/**
 * Statement audit's cost: pgwarden-session with audit off, best effort, and fail closed (each
 * statement's record written and fdatasync'd before it is forwarded), pgbench -S at each
 * --protocols value and the largest --clients, a fresh proxy and audit file per run.
 */
async function runAuditPhase(setup: Setup, options: BenchOptions, plan: Plan): Promise<AuditRow[]> {
  const clients = Math.max(...options.clients);
  const rows = options.protocols.flatMap((protocol) => AUDIT_VARIANTS.map((v) => ({ ...v, variant: `${v.variant} -M ${protocol}`, protocol, tps: [] as number[], cpuSPer10kTx: [] as number[], auditBytesPerTx: [] as number[] })));
  log(`audit: pgwarden-session with statement audit off / best-effort / fail-closed, pgbench -S at ${clients} clients, ${options.durationS} s, ${options.rounds} rounds`);
  for (let round = 0; round < options.rounds; round++) {
    for (const row of rotated(rows, round)) {
      const file = path.join(setup.workDir, `audit-${round}-${row.variant.replace(/\W+/g, '_')}.jsonl`);
      const target = await startProxy(setup, null, 'pgwarden', 'session', { poolSize: plan.sessionPoolSize, maxClients: Math.max(plan.maxClientConnections, clients + 10) }, { file, tenant: row.tenant });
      try {
        const before = await fileSize(file);
        const r = await measure(setup, options, target, { phase: 'audit', protocol: row.protocol, clients, durationS: options.durationS }, round);
        const bytes = (await fileSize(file)) - before;
        row.tps.push(r.tps);
        row.cpuSPer10kTx.push(r.proxyCpuSPer10kTx);
        row.auditBytesPerTx.push(r.transactions > 0 ? bytes / r.transactions : 0);
        log(`  round ${round + 1}: ${row.variant}: ${r.tps.toFixed(0)} tps, ${r.proxyCpuSPer10kTx.toFixed(2)} CPU s/10k tx, ${(bytes / Math.max(1, r.transactions)).toFixed(0)} audit B/tx`);
      } finally {
        await target.stop();
        await rm(file, { force: true });
      }
    }
  }
  return rows.map(({ variant, tps, cpuSPer10kTx, auditBytesPerTx }) => ({ variant, tps, cpuSPer10kTx, auditBytesPerTx }));
}

async function fileSize(file: string): Promise<number> {
  try {
    return (await stat(file)).size;
  } catch {
    return 0;
  }
}

function formatAudit(rows: AuditRow[]): string {
  const lines = ['variant                     tps    ÷off  CPU s/10k  audit B/tx'];
  let base = 0;
  for (const r of rows) {
    const tps = median(r.tps);
    if (r.variant.startsWith('off')) base = tps;
    lines.push(`${r.variant.padEnd(22)} ${tps.toFixed(0).padStart(8)} ${(tps / base).toFixed(2).padStart(7)} ${median(r.cpuSPer10kTx).toFixed(2).padStart(10)} ${median(r.auditBytesPerTx).toFixed(0).padStart(11)}`);
  }
  return lines.join('\n');
}

/** steady alone, flooded and control per round, each in turn (isolation.ts); pgwarden only. */
function runIsolationPhase(setup: Setup, options: BenchOptions): Promise<IsolationResult> {
  log(`isolation: steady (${options.isolationClients} clients, pgbench -S -M simple) alone / with noisy flooding the same pgwarden / ` +
    `with noisy flooding another pgwarden (control); floods: ${options.floods.join(', ')}; storm ${options.stormLanes} lanes, pause ${options.stormPauseMs} ms, ` +
    (options.stormRatePerS === 0 ? 'no rate cap' : `at most ${options.stormRatePerS} attempts/s`));
  return runIsolation({
    cluster: setup.cluster, certs: setup.certs, workDir: setup.workDir,
    steady: { user: USER, password: setup.password, database: DATABASE },
    clients: options.isolationClients, jobs: options.jobs, durationS: options.durationS, rounds: options.rounds,
    floods: options.floods, stormLanes: options.stormLanes, stormPauseMs: options.stormPauseMs, stormRatePerS: options.stormRatePerS, log,
  });
}

/**
 * Issue 13's scale figures: pgwarden on a catalog of 10 tenants and of --catalog-tenants (10 users
 * each): start-up, RSS, insert → first login, and the cost of a login (catalog.ts).
 */
async function runCatalogPhase(setup: Setup, options: BenchOptions): Promise<CatalogResult> {
  log(`catalog: pgwarden (1 worker) on a catalog of ${SMALL_TENANTS} and of ${options.catalogTenants} tenants × ${USERS_PER_TENANT} users; ` +
    `${options.catalogLogins} timed logins and ${options.catalogInserts} insert → login samples per catalog`);
  return runCatalog({
    cluster: setup.cluster, certs: setup.certs, workDir: setup.workDir,
    backend: { user: USER, password: setup.password, database: DATABASE, verifier: await readVerifier(setup.cluster, USER) },
    tenants: options.catalogTenants, inserts: options.catalogInserts, logins: options.catalogLogins, log,
  });
}

/** Rough wall time: cells plus connection set-up, warm-ups, the connect phase and the idle phase. */
function estimateSeconds(options: BenchOptions, plan: Plan): number {
  // pgbench's -T includes its connection set-up, so a cell takes its duration plus ~0.3 s (reading logs).
  const cellOverhead = (): number => 0.5;
  let s = 20 + (options.phases.some((p) => p !== 'catalog') ? options.scale * 1.5 : 0);
  s += plan.running.length * (options.warmupS > 0 ? options.warmupS + cellOverhead() : 0);
  s += options.rounds * options.clients.length * options.protocols.length * plan.matrixTargets.length * (options.durationS + cellOverhead());
  s += options.rounds * plan.connectTargets.length * (options.connectDurationS + cellOverhead());
  // Logins run at roughly 150–300 per second on a small machine; each step settles 3 s before reading RSS.
  s += plan.idleProxies.length * (Math.max(...options.idle) / 200 + 3 * (options.idle.length + 1) + 5);
  // Isolation: a warm-up, then per round three runs, each with ~3 s of flood start, stop and settling.
  if (options.phases.includes('isolation')) s += 10 + Math.min(5, options.durationS) + options.rounds * 3 * (options.durationS + 3.5);
  // Workers: per round and row a fresh proxy (~3 s), a TPS cell and a -C cell.
  if (options.phases.includes('workers')) {
    const rows = options.workers.filter((w) => w === 1).length + options.workers.filter((w) => w > 1).length * (options.workerAccept?.length ?? 1);
    s += options.rounds * rows * (options.durationS + options.connectDurationS + 4);
  }
  // A fresh proxy per audit run: its start and stop add about 3 s.
  if (options.phases.includes('audit')) s += options.rounds * options.protocols.length * AUDIT_VARIANTS.length * (options.durationS + 3);
  // Catalog: four proxy starts (each settles 2 s; 10,000 tenants load in about 1.5 s), logins at ~150/s, inserts ~0.3 s each.
  if (options.phases.includes('catalog')) s += 4 * (2.5 + options.catalogTenants / 10_000) + (2 * (options.catalogLogins + 30)) / 150 + 2 * options.catalogInserts * 0.3;
  return Math.round(s);
}

const minutes = (s: number): string => `${Math.floor(s / 60)} min ${String(Math.round(s % 60)).padStart(2, '0')} s`;

/** Lines under the tables for cells that did not simply work, with pgbench's first error and pgwarden's counters. */
function notes(summaries: CellSummary[], runs: RunRecord[]): string[] {
  const lines: string[] = [];
  for (const s of summaries) {
    const mine = runs.filter((r) => r.phase === s.phase && r.protocol === s.protocol && r.clients === s.clients && r.target === s.target);
    const counters = mine.map((r) => r.proxyCounters);
    const interesting = (key: string): boolean =>
      /pool_pins|pool_wait_seconds_count|errors_total|limit_rejections|auth_failures|connection_rejections/.test(key) ||
      (key.startsWith('pgwarden_session_ends_total') && !/reason="(client_terminate|client_eof)"/.test(key));
    const keys = [...new Set(counters.flatMap((c) => Object.keys(c)))].filter(interesting);
    if (s.status === 'ok' && keys.length === 0 && s.proxyProblems === 0) continue;
    const what = s.phase === 'connect' ? `-C ${s.clients}c` : `-M ${s.protocol} ${s.clients}c`;
    const parts = [`${what} ${s.target}: ${s.status}`];
    if (s.starvedClients > 0) parts.push(`${s.starvedClients}/${s.clients} clients ran ≤ 1 transaction, max latency ${Math.round(s.maxLatencyMs)} ms`);
    const firstError = mine.flatMap((r) => r.errors)[0];
    if (firstError !== undefined) parts.push(`pgbench: ${firstError.slice(0, 160)}`);
    const problem = mine.flatMap((r) => r.proxyProblems)[0];
    if (problem !== undefined) parts.push(`proxy: ${problem.slice(0, 200)}`);
    if (keys.length > 0) parts.push(keys.map((k) => `${k.replace(/^pgwarden_/, '')} +${median(counters.map((c) => c[k] ?? 0))}`).join(', '));
    lines.push(`  ${parts.join(' | ')}`);
  }
  return lines;
}

function median(values: number[]): number {
  const v = [...values].sort((a, b) => a - b);
  return v[(v.length - 1) >> 1] ?? 0;
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  if (options === null) return void process.stdout.write(USAGE);
  cleanupOnSignals();
  raiseOpenFiles();
  const openFiles = Number(openFilesLimit().split('/')[0]);
  if (options.phases.includes('idle') && openFiles < Math.max(...options.idle) + 500) {
    log(`warning: open-files limit ${openFiles} is below ${Math.max(...options.idle)} idle clients + 500; raise it (ulimit -n) or lower --idle`);
  }
  const started = Date.now();
  const startedAt = new Date(started).toISOString();
  const wantsBouncer = usesTargets(options) && options.targets.some((t) => parseTargetName(t)?.proxy === 'pgbouncer');
  const bouncer = wantsBouncer ? findPgBouncer() : null;
  const { plan, skipped } = makePlan(options, bouncer);
  const estimatedS = estimateSeconds(options, plan);
  const environment = describeEnvironment(bouncer);
  const cells = options.protocols.length * options.clients.length * plan.matrixTargets.length * options.rounds;
  log(`plan: ${cells} matrix cells (${options.protocols.join('/')} × ${options.clients.join('/')} clients × ${plan.matrixTargets.length} targets × ` +
    `${options.rounds} rounds, ${options.durationS} s each), ${plan.connectTargets.length * options.rounds} connection-rate cells ` +
    `(${options.connectClients} clients, ${options.connectDurationS} s), idle RSS for ${plan.idleProxies.join(', ') || 'none'} at ${options.idle.join('/')} clients` +
    (options.phases.includes('isolation') ? `, isolation ${options.rounds} × 3 runs of ${options.durationS} s` : '') +
    (options.phases.includes('catalog') ? `, catalog of ${SMALL_TENANTS} and ${options.catalogTenants} tenants` : ''));
  log(`pools: session ${plan.sessionPoolSize}, transaction ${plan.transactionPoolSize} backends per proxy; open files ${environment.openFilesLimit}`);
  // The load generator and PostgreSQL share this machine with the proxy: one worker unless asked (README, sizing server.workers).
  log(`pgwarden: [server] workers = ${plan.pgwardenWorkers} in the matrix and connect phases (--pgwarden-workers; default 1, the shared-host setting)` +
    (options.phases.includes('workers') ? `, ${options.workers.join(', ')} in the workers phase (--workers)` : '') +
    `; on Node ${options.pgwardenNode ?? `${process.version} (the bench's)`}`);
  log(`estimated time: about ${minutes(estimatedS)}`);
  const setup = await setUp(options, plan);
  const targets = await startTargets(setup, plan, bouncer);
  const runs = await runRounds(setup, options, plan, targets);
  for (const t of targets) await t.stop();
  const idle = await runIdle(setup, options, plan, bouncer);
  const isolation = options.phases.includes('isolation') ? await runIsolationPhase(setup, options) : null;
  const workers = options.phases.includes('workers') ? await runWorkersPhase(setup, options, plan) : null;
  const audit = options.phases.includes('audit') ? await runAuditPhase(setup, options, plan) : null;
  const catalog = options.phases.includes('catalog') ? await runCatalogPhase(setup, options) : null;

  const summaries = summarise(runs);
  const when = `${options.rounds} round${options.rounds === 1 ? '' : 's'}, median per cell`;
  if (plan.matrixTargets.length > 0) {
    log(`\npgbench -S over TLS, ${options.durationS} s per cell, ${when}; pools: session ${plan.sessionPoolSize}, transaction ${plan.transactionPoolSize} backends`);
    log('÷bouncer: pgwarden TPS / PgBouncer TPS in the same pool mode; ÷direct: pgwarden TPS / direct TPS; CPU s/10k: proxy utime+stime per 10 000 tx\n');
    log(formatMatrix(summaries));
    if (plan.matrixTargets.some((t) => t.startsWith('pgbouncer'))) {
      log('\nissue 15\'s bar: geometric means over the cells above of pgwarden ÷ PgBouncer in the same pool mode (CPU: proxy utime+stime per transaction)\n');
      log(formatBar(summaries));
    }
  }
  if (plan.connectTargets.length > 0) {
    log(`\nconnection rate: pgbench -S -C (new TLS + SCRAM login per transaction), ${options.connectDurationS} s, ${when}\n`);
    log(formatConnect(summaries));
  }
  if (idle.length > 0) {
    log('\nidle TLS clients (logged in, idle), proxies in transaction mode; kB/conn = (RSS − baseline) / open connections\n');
    log(formatIdle(idle));
  }
  if (isolation !== null) {
    log(`\nisolation: steady's pgbench -S (${options.isolationClients} clients, ${options.durationS} s), ${when}; ÷alone = over steady alone; ` +
      'proxy CPU% and RSS are steady\'s pgwarden; storm/copy/stall are noisy\'s on the flooded proxy\n');
    log(formatIsolation(isolation));
    log(isolationNotes(isolation).join('\n'));
  }
  if (workers !== null) {
    log(`\nworkers: pgwarden-transaction, pgbench -S -M simple at ${Math.max(...options.clients)} clients and -C (TLS + SCRAM login per transaction) at ` +
      `${options.connectClients}, ${when}; ÷first = over the first row; CPU and RSS summed over the primary and its workers\n`);
    log(formatWorkers(workers));
  }
  if (audit !== null) {
    log(`\naudit: pgwarden-session, pgbench -S at ${Math.max(...options.clients)} clients, ${when}; ÷off = TPS over statement audit off; audit B/tx = audit file growth per transaction\n`);
    log(formatAudit(audit));
  }
  if (catalog !== null) {
    log(`\ncatalog: pgwarden, 1 worker, tenants from a PostgreSQL catalog (${USERS_PER_TENANT} users each); start = spawn → "listening" without a snapshot file, ` +
      'restart = with the snapshot of the first start; RSS 2 s after the restart\'s "listening", peak = VmHWM; logins: sequential TLS + SCRAM to one tenant, ' +
      'mean and p99 per login; CPU = proxy utime+stime per login; ÷small = over the 10-tenant catalog; ins→login = CatalogStore.put\'s commit → first successful login\n');
    log(formatCatalog(catalog));
    log(catalogNotes(catalog).join('\n'));
  }
  const noteLines = notes(summaries, runs);
  if (noteLines.length > 0) log(`\nnotes:\n${noteLines.join('\n')}`);
  for (const s of skipped) log(`skipped ${s.target}: ${s.reason}`);
  const finished = Date.now();
  const result: ResultFile = {
    startedAt, finishedAt: new Date(finished).toISOString(), elapsedS: Math.round((finished - started) / 1000), estimatedS,
    options, environment,
    setup: {
      ...plan,
      pgwardenPoolTimeout: '30s (default)', pgbouncerQueryWaitTimeout: '120 s (default)',
      idleProxyLimits: { maxClients: Math.max(...options.idle) + 1000, pgwardenMaxPreauth: Math.max(...options.idle) + 1000 },
    },
    skipped, summaries, idle, runs,
  };
  // The isolation figures ride along under their own key (the other phases' shapes stay as they are).
  const withIsolation: ResultFile & { isolation?: IsolationResult; workers?: WorkersRow[]; audit?: AuditRow[]; catalog?: CatalogResult } = {
    ...result, ...(isolation === null ? {} : { isolation }), ...(workers === null ? {} : { workers }), ...(audit === null ? {} : { audit }),
    ...(catalog === null ? {} : { catalog }),
  };
  const file = await writeResult(RESULTS_DIR, withIsolation);
  log(`\nelapsed ${minutes((finished - started) / 1000)} (estimated ${minutes(estimatedS)}); raw figures: ${file}`);
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
