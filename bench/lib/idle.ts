/**
 * The idle phase: how much memory a proxy holds per authenticated, idle TLS client. A forked
 * worker (idle-worker.ts) logs in connections in batches; between steps the proxy's VmRSS is read.
 */
import { fork, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { onCleanup } from './cleanup.js';
import type { OpenedReport, WorkerRequest } from './idle-worker.js';
import type { LoginSpec } from './login.js';
import { cpuTimes, memory } from './procstat.js';
import type { Target, TargetName } from './target.js';

const WORKER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'idle-worker.js');
/** Logins opened and closed before the baseline, so code paths, TLS contexts and JIT are warm. */
const WARMUP_CONNECTIONS = 200;
/** Pause before reading RSS, so allocation bursts of the logins settle. */
const SETTLE_MS = 3000;

export interface IdleLevel {
  /** Connections asked for. */
  clients: number;
  /** Logged in and still open when RSS was read. */
  open: number;
  failed: number;
  lostAfterLogin: number;
  errors: string[];
  /** Wall time to open the connections added at this step, and the rate. */
  openSeconds: number;
  loginsPerS: number;
  /** Proxy CPU (user + system) spent on this step's logins, per 1000 logins. */
  proxyCpuSPer1kLogins: number;
  rssMb: number;
  peakRssMb: number;
  /** (RSS − baseline) / open connections. */
  kbPerConnection: number;
  /** Server connections of the bench role in pg_stat_activity (what idle clients cost PostgreSQL). */
  backends: number;
}

export interface IdleResult {
  target: TargetName;
  baselineRssMb: number;
  levels: IdleLevel[];
  /** Proxy log lines at warning level or above during the phase (first 20). */
  proxyProblems: string[];
  proxyProblemCount: number;
}

class Worker {
  private readonly child: ChildProcess;
  private waiting: ((r: OpenedReport) => void) | null = null;
  private readonly exited: Promise<void>;

  constructor(spec: LoginSpec, batch: number) {
    this.child = fork(WORKER, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
    this.exited = new Promise((resolve) => this.child.once('exit', () => resolve()));
    this.child.on('message', (m: OpenedReport) => {
      const w = this.waiting;
      this.waiting = null;
      w?.(m);
    });
    this.send({ type: 'init', spec, batch });
  }

  private send(msg: WorkerRequest): void {
    this.child.send(msg);
  }

  open(total: number): Promise<OpenedReport> {
    return new Promise((resolve, reject) => {
      this.waiting = resolve;
      this.child.once('exit', (code) => reject(new Error(`idle worker exited (${String(code)}) while opening connections`)));
      this.send({ type: 'open', total });
    });
  }

  /** Closes every connection and ends the worker (SIGKILL if it does not go within 10 s). */
  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    if (this.child.connected) this.send({ type: 'close' });
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(timer);
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function cpu(pid: number): number {
  const t = cpuTimes(pid);
  return t.userS + t.systemS;
}

export interface IdleSpec {
  login: LoginSpec;
  counts: number[];
  batch: number;
  countBackends: () => Promise<number>;
  log: (line: string) => void;
}

/** Warm-up, baseline, then each count in ascending order (cumulative); the worker is gone afterwards. */
export async function measureIdle(target: Target, spec: IdleSpec): Promise<IdleResult> {
  const pid = target.proxyPid!;
  const problemsBefore = target.problems().length;
  const warm = new Worker(spec.login, spec.batch);
  onCleanup('stop idle warm-up worker', () => warm.close());
  const w = await warm.open(WARMUP_CONNECTIONS);
  if (w.failed > 0) spec.log(`  warm-up: ${w.failed} of ${w.attempted} logins failed: ${w.errors.join('; ')}`);
  await warm.close();
  await sleep(SETTLE_MS);
  const baselineRssMb = memory(pid).rssMb;
  spec.log(`  ${target.name}: baseline RSS ${baselineRssMb.toFixed(1)} MB after ${WARMUP_CONNECTIONS} warm-up logins`);

  const worker = new Worker(spec.login, spec.batch);
  onCleanup('stop idle worker', () => worker.close());
  const levels: IdleLevel[] = [];
  try {
    for (const clients of spec.counts) {
      const cpuBefore = cpu(pid);
      const r = await worker.open(clients);
      const proxyCpuS = cpu(pid) - cpuBefore;
      await sleep(SETTLE_MS);
      const mem = memory(pid);
      const level: IdleLevel = {
        clients, open: r.open, failed: r.failed, lostAfterLogin: r.lostAfterLogin, errors: r.errors,
        openSeconds: r.elapsedMs / 1000,
        loginsPerS: r.attempted / (r.elapsedMs / 1000),
        proxyCpuSPer1kLogins: r.attempted > 0 ? (proxyCpuS / r.attempted) * 1000 : Number.NaN,
        rssMb: mem.rssMb, peakRssMb: mem.peakRssMb,
        kbPerConnection: r.open > 0 ? ((mem.rssMb - baselineRssMb) * 1024) / r.open : Number.NaN,
        backends: await spec.countBackends(),
      };
      levels.push(level);
      spec.log(`  ${target.name}: ${level.open} idle (${level.failed} failed, ${level.lostAfterLogin} lost) in ${level.openSeconds.toFixed(1)} s: ` +
        `RSS ${level.rssMb.toFixed(1)} MB, ${level.kbPerConnection.toFixed(1)} kB/connection, ${level.backends} PostgreSQL backends`);
      for (const e of r.errors) spec.log(`    ${e}`);
    }
  } finally {
    await worker.close();
  }
  const problems = target.problems().slice(problemsBefore);
  return { target: target.name, baselineRssMb, levels, proxyProblems: problems.slice(0, 20), proxyProblemCount: problems.length };
}
