/** Summarises runs per cell, prints the comparison tables and writes the raw JSON result. */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Environment } from './environment.js';
import type { IdleResult } from './idle.js';
import type { BenchOptions, Protocol } from './options.js';
import type { PgbenchFigures } from './pgbench.js';
import { fmt, median } from './stats.js';
import { parseTargetName, type TargetName } from './target.js';

export type Phase = 'matrix' | 'connect' | 'workers' | 'audit';
/**
 * ok; starved: some clients completed at most one transaction (they waited for a backend all run);
 * unsupported: PgBouncer in transaction mode with -M prepared (statements are per server connection);
 * failed: pgbench exited non-zero, aborted clients, failed transactions, error lines, or no transactions at all.
 */
export type Status = 'ok' | 'starved' | 'unsupported' | 'failed';

export interface RunRecord extends PgbenchFigures {
  phase: Phase;
  target: TargetName;
  protocol: Protocol;
  clients: number;
  jobs: number;
  durationS: number;
  round: number;
  startedAt: string;
  status: Status;
  /** Proxy utime + stime during the run, and each alone; NaN for direct. */
  proxyCpuS: number;
  proxyUserS: number;
  proxySystemS: number;
  proxyCpuSPer10kTx: number;
  proxyUserSPer10kTx: number;
  proxySystemSPer10kTx: number;
  proxyRssMb: number;
  proxyPeakRssMb: number;
  loadAvg1mBefore: number;
  /** Share of all CPUs busy during the run (pgbench, PostgreSQL, the proxy and anything else), percent. */
  hostBusyPct: number;
  /** Proxy log lines at warning level or above that appeared during this run (first 20), and how many. */
  proxyProblems: string[];
  proxyProblemCount: number;
  /** pgwarden only: counters that changed during the run (pins, pool waits, errors, session ends). */
  proxyCounters: Record<string, number>;
}

/** Errors pgbench gets when its prepared statements live on another server connection than the one it got. */
const MISSING_PREPARED = /prepared statement "[^"]*" (does not exist|already exists)/;

export function statusOf(r: Omit<RunRecord, 'status'>): Status {
  const troubled = r.exitCode !== 0 || r.aborted || r.failedTransactions > 0 || r.errorCount > 0 || !Number.isFinite(r.tps) || r.transactions === 0;
  if (troubled && r.target === 'pgbouncer-transaction' && r.protocol === 'prepared' && r.errors.some((e) => MISSING_PREPARED.test(e))) return 'unsupported';
  if (troubled) return 'failed';
  if (r.clients > 1 && r.clientsWithAtMostOneTx > 0 && r.medianTxPerClient > 10) return 'starved';
  return 'ok';
}

export interface CellSummary {
  phase: Phase;
  protocol: Protocol;
  clients: number;
  target: TargetName;
  runs: number;
  /** The worst status over the rounds. */
  status: Status;
  medianTps: number;
  medianLatencyAvgMs: number;
  medianConnectionTimeMs: number;
  medianP50Ms: number;
  medianP99Ms: number;
  maxLatencyMs: number;
  medianProxyCpuSPer10kTx: number;
  medianProxyUserSPer10kTx: number;
  medianProxySystemSPer10kTx: number;
  maxProxyRssMb: number;
  medianHostBusyPct: number;
  failedTransactions: number;
  /** Most clients that ran at most one transaction in any round. */
  starvedClients: number;
  runsWithErrors: number;
  proxyProblems: number;
  /** pgwarden rows: TPS over PgBouncer's in the same pool mode (direct for the session row of the connect phase), and over direct. */
  tpsOverPgbouncer: number;
  tpsOverDirect: number;
}

const SEVERITY: Record<Status, number> = { ok: 0, starved: 1, failed: 2, unsupported: 3 };

function maxFinite(values: number[]): number {
  const finite = values.filter(Number.isFinite);
  return finite.length === 0 ? Number.NaN : Math.max(...finite);
}

function summariseCell(mine: RunRecord[]): CellSummary {
  const first = mine[0]!;
  const pick = (f: (r: RunRecord) => number): number => median(mine.map(f));
  return {
    phase: first.phase,
    protocol: first.protocol,
    clients: first.clients,
    target: first.target,
    runs: mine.length,
    status: mine.map((r) => r.status).reduce((a, b) => (SEVERITY[b] > SEVERITY[a] ? b : a), 'ok'),
    medianTps: pick((r) => r.tps),
    medianLatencyAvgMs: pick((r) => r.latencyAvgMs),
    medianConnectionTimeMs: pick((r) => r.connectionTimeMs),
    medianP50Ms: pick((r) => r.p50Ms),
    medianP99Ms: pick((r) => r.p99Ms),
    maxLatencyMs: maxFinite(mine.map((r) => r.maxMs)),
    medianProxyCpuSPer10kTx: pick((r) => r.proxyCpuSPer10kTx),
    medianProxyUserSPer10kTx: pick((r) => r.proxyUserSPer10kTx),
    medianProxySystemSPer10kTx: pick((r) => r.proxySystemSPer10kTx),
    maxProxyRssMb: maxFinite(mine.map((r) => r.proxyRssMb)),
    medianHostBusyPct: pick((r) => r.hostBusyPct),
    failedTransactions: mine.reduce((n, r) => n + r.failedTransactions, 0),
    starvedClients: Math.max(...mine.map((r) => (r.clients > 1 ? r.clientsWithAtMostOneTx : 0))),
    runsWithErrors: mine.filter((r) => r.exitCode !== 0 || r.errorCount > 0).length,
    proxyProblems: mine.reduce((n, r) => n + r.proxyProblemCount, 0),
    tpsOverPgbouncer: Number.NaN,
    tpsOverDirect: Number.NaN,
  };
}

const comparable = (s: CellSummary | undefined): s is CellSummary => s !== undefined && (s.status === 'ok' || s.status === 'starved');

/** One summary per (phase, protocol, clients, target) in first-seen order, with pgwarden's ratios filled in. */
export function summarise(runs: RunRecord[]): CellSummary[] {
  const cells = new Map<string, RunRecord[]>();
  for (const r of runs) {
    const key = `${r.phase}|${r.protocol}|${r.clients}|${r.target}`;
    cells.set(key, [...(cells.get(key) ?? []), r]);
  }
  const summaries = [...cells.values()].map(summariseCell);
  const find = (s: CellSummary, target: TargetName): CellSummary | undefined =>
    summaries.find((o) => o.phase === s.phase && o.protocol === s.protocol && o.clients === s.clients && o.target === target);
  for (const s of summaries) {
    const kind = parseTargetName(s.target);
    if ((kind?.proxy !== 'pgwarden' && kind?.proxy !== 'baseline') || !comparable(s)) continue;
    const bouncer = find(s, `pgbouncer-${kind.mode}`);
    const direct = find(s, 'direct');
    if (comparable(bouncer)) s.tpsOverPgbouncer = s.medianTps / bouncer.medianTps;
    if (comparable(direct)) s.tpsOverDirect = s.medianTps / direct.medianTps;
  }
  return summaries;
}

/** Right-aligned columns except the first `leftColumns`; a row of null is a blank separator line. */
export function formatColumns(header: string[], rows: (string[] | null)[], leftColumns = 1): string {
  const real = rows.filter((r): r is string[] => r !== null);
  const widths = header.map((h, i) => Math.max(h.length, ...real.map((cells) => cells[i]!.length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i < leftColumns ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map((r) => (r === null ? '' : line(r)))].join('\n');
}

function statusText(s: CellSummary): string {
  if (s.status === 'starved') return `starved ${s.starvedClients}/${s.clients}`;
  if (s.status === 'failed') return `FAILED (${s.runsWithErrors} runs, ${s.failedTransactions} failed tx)`;
  if (s.status === 'unsupported') return 'unsupported';
  return s.proxyProblems > 0 ? `ok, ${s.proxyProblems} proxy warnings` : 'ok';
}

const cpuSplit = (s: CellSummary): string =>
  Number.isFinite(s.medianProxyCpuSPer10kTx) ? `${fmt(s.medianProxyUserSPer10kTx, 2)}/${fmt(s.medianProxySystemSPer10kTx, 2)}` : '-';

const MATRIX_HEADER = ['-M', 'clients', 'target', 'TPS', '÷bouncer', '÷direct', 'avg ms', 'p50 ms', 'p99 ms', 'max ms', 'CPU s/10k', 'usr/sys', 'RSS MB', 'host%', 'status'];

/** pgbench -S cells: medians over rounds; ratios on pgwarden rows; a blank line between (protocol, clients) groups. */
export function formatMatrix(summaries: CellSummary[]): string {
  const rows: (string[] | null)[] = [];
  let group = '';
  for (const s of summaries.filter((c) => c.phase === 'matrix')) {
    const key = `${s.protocol}|${s.clients}`;
    if (group !== '' && key !== group) rows.push(null);
    group = key;
    rows.push([
      s.protocol, String(s.clients), s.target, fmt(s.medianTps, 0), fmt(s.tpsOverPgbouncer, 3), fmt(s.tpsOverDirect, 3),
      fmt(s.medianLatencyAvgMs, 3), fmt(s.medianP50Ms, 3), fmt(s.medianP99Ms, 3), fmt(s.maxLatencyMs, 0),
      fmt(s.medianProxyCpuSPer10kTx, 3), cpuSplit(s), fmt(s.maxProxyRssMb, 1), fmt(s.medianHostBusyPct, 0), statusText(s),
    ]);
  }
  return formatColumns(MATRIX_HEADER, rows, 3);
}

const CONNECT_HEADER = ['target', 'clients', 'TPS (conn/s)', '÷bouncer', '÷direct', 'avg connect ms', 'avg lat ms', 'p50 ms', 'p99 ms', 'CPU s/10k', 'usr/sys', 'RSS MB', 'host%', 'status'];

/** pgbench -C cells: a new TLS + SCRAM login per transaction. */
export function formatConnect(summaries: CellSummary[]): string {
  const rows = summaries.filter((c) => c.phase === 'connect').map((s) => [
    s.target, String(s.clients), fmt(s.medianTps, 0), fmt(s.tpsOverPgbouncer, 3), fmt(s.tpsOverDirect, 3), fmt(s.medianConnectionTimeMs, 3),
    fmt(s.medianLatencyAvgMs, 3), fmt(s.medianP50Ms, 3), fmt(s.medianP99Ms, 3), fmt(s.medianProxyCpuSPer10kTx, 3), cpuSplit(s),
    fmt(s.maxProxyRssMb, 1), fmt(s.medianHostBusyPct, 0), statusText(s),
  ]);
  return formatColumns(CONNECT_HEADER, rows);
}

const IDLE_HEADER = ['target', 'idle clients', 'open', 'failed', 'baseline MB', 'RSS MB', 'kB/conn', '÷bouncer', 'PG backends', 'logins/s', 'CPU s/1k logins'];

/** Idle-connection memory per proxy and count, with pgwarden's kB per connection over PgBouncer's. */
export function formatIdle(results: IdleResult[]): string {
  const bouncer = results.find((r) => r.target.startsWith('pgbouncer'));
  const rows: string[][] = [];
  for (const r of results) {
    for (const l of r.levels) {
      const other = r.target.startsWith('pgwarden') || r.target.startsWith('baseline') ? bouncer?.levels.find((b) => b.clients === l.clients) : undefined;
      rows.push([
        r.target, String(l.clients), String(l.open), String(l.failed), fmt(r.baselineRssMb, 1), fmt(l.rssMb, 1), fmt(l.kbPerConnection, 1),
        other === undefined ? '-' : fmt(l.kbPerConnection / other.kbPerConnection, 2), String(l.backends), fmt(l.loginsPerS, 0), fmt(l.proxyCpuSPer1kLogins, 3),
      ]);
    }
  }
  return formatColumns(IDLE_HEADER, rows);
}

/** One progress line per finished run. */
export function formatRun(r: RunRecord): string {
  const cpu = Number.isFinite(r.proxyCpuS)
    ? `  proxy CPU ${fmt(r.proxyCpuS, 2)} s (${fmt(r.proxyCpuSPer10kTx, 3)} s/10k tx, usr ${fmt(r.proxyUserS, 2)} sys ${fmt(r.proxySystemS, 2)})`
    : '';
  const trouble = r.status === 'ok' ? '' : `  ${r.status.toUpperCase()}: exit ${r.exitCode}, ${r.errorCount} error lines, ${r.failedTransactions} failed tx` +
    (r.clientsWithAtMostOneTx > 0 ? `, ${r.clientsWithAtMostOneTx}/${r.clients} clients ran ≤ 1 tx` : '');
  const problems = r.proxyProblemCount > 0 ? `  ${r.proxyProblemCount} proxy warnings` : '';
  const what = r.phase === 'connect' ? `-C ${r.clients}c` : `${r.protocol} ${r.clients}c`;
  return `round ${r.round} ${what.padEnd(12)} ${r.target.padEnd(21)} tps ${fmt(r.tps, 0).padStart(6)}  avg ${fmt(r.latencyAvgMs, 3)} ms  ` +
    `p50 ${fmt(r.p50Ms, 3)}  p99 ${fmt(r.p99Ms, 3)} ms  host CPU ${fmt(r.hostBusyPct, 0)}%${cpu}${trouble}${problems}`;
}

export interface ResultFile {
  startedAt: string;
  finishedAt: string;
  elapsedS: number;
  estimatedS: number;
  options: BenchOptions;
  environment: Environment;
  /** What each target was configured with (pool sizes, limits, max_connections). */
  setup: Record<string, unknown>;
  skipped: { target: string; reason: string }[];
  summaries: CellSummary[];
  idle: IdleResult[];
  runs: RunRecord[];
}

/** Writes `<dir>/<timestamp>.json` (NaN becomes null) and returns its path. */
export async function writeResult(dir: string, result: ResultFile): Promise<string> {
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, `${result.startedAt.replace(/[:.]/g, '-')}.json`);
  const json = JSON.stringify(result, (_key, value: unknown) => (typeof value === 'number' && !Number.isFinite(value) ? null : value), 2);
  await writeFile(file, `${json}\n`);
  return file;
}
