/** Summarises the runs per target, prints the comparison table and writes the raw JSON result. */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Environment } from './environment.js';
import type { BenchOptions } from './options.js';
import type { PgbenchFigures } from './pgbench.js';
import { fmt, median } from './stats.js';
import type { TargetName } from './target.js';

export interface RunRecord extends PgbenchFigures {
  target: TargetName;
  round: number;
  startedAt: string;
  /** Proxy utime + stime during the run; NaN for direct. */
  proxyCpuS: number;
  proxyCpuSPer10kTx: number;
  proxyRssMb: number;
  proxyPeakRssMb: number;
  loadAvg1mBefore: number;
  /** Share of all CPUs busy during the run (pgbench, PostgreSQL, the proxy and anything else), percent. */
  hostBusyPct: number;
  /** Proxy log lines at warning level or above that appeared during this run. */
  proxyProblems: string[];
}

export interface TargetSummary {
  target: TargetName;
  runs: number;
  medianTps: number;
  medianLatencyAvgMs: number;
  medianP50Ms: number;
  medianP99Ms: number;
  medianProxyCpuSPer10kTx: number;
  maxProxyRssMb: number;
  medianHostBusyPct: number;
  failedTransactions: number;
  runsWithErrors: number;
  proxyProblems: number;
}

export interface Ratios {
  pgwardenOverPgbouncerTps: number;
  pgwardenOverDirectTps: number;
  pgwardenAddedP50MsVsDirect: number;
  pgwardenAddedP99MsVsDirect: number;
}

function maxFinite(values: number[]): number {
  const finite = values.filter(Number.isFinite);
  return finite.length === 0 ? Number.NaN : Math.max(...finite);
}

export function summarise(target: TargetName, runs: RunRecord[]): TargetSummary {
  const mine = runs.filter((r) => r.target === target);
  const pick = (f: (r: RunRecord) => number): number => median(mine.map(f));
  return {
    target,
    runs: mine.length,
    medianTps: pick((r) => r.tps),
    medianLatencyAvgMs: pick((r) => r.latencyAvgMs),
    medianP50Ms: pick((r) => r.p50Ms),
    medianP99Ms: pick((r) => r.p99Ms),
    medianProxyCpuSPer10kTx: pick((r) => r.proxyCpuSPer10kTx),
    maxProxyRssMb: maxFinite(mine.map((r) => r.proxyRssMb)),
    medianHostBusyPct: pick((r) => r.hostBusyPct),
    failedTransactions: mine.reduce((n, r) => n + r.failedTransactions, 0),
    runsWithErrors: mine.filter((r) => r.exitCode !== 0 || r.errors.length > 0).length,
    proxyProblems: mine.reduce((n, r) => n + r.proxyProblems.length, 0),
  };
}

export function ratios(summaries: TargetSummary[]): Ratios {
  const get = (t: TargetName): TargetSummary | undefined => summaries.find((s) => s.target === t);
  const warden = get('pgwarden');
  const nan = Number.NaN;
  return {
    pgwardenOverPgbouncerTps: (warden?.medianTps ?? nan) / (get('pgbouncer')?.medianTps ?? nan),
    pgwardenOverDirectTps: (warden?.medianTps ?? nan) / (get('direct')?.medianTps ?? nan),
    pgwardenAddedP50MsVsDirect: (warden?.medianP50Ms ?? nan) - (get('direct')?.medianP50Ms ?? nan),
    pgwardenAddedP99MsVsDirect: (warden?.medianP99Ms ?? nan) - (get('direct')?.medianP99Ms ?? nan),
  };
}

const HEADER = ['target', 'runs', 'TPS', 'avg lat ms', 'p50 ms', 'p99 ms', 'proxy CPU s/10k tx', 'proxy RSS MB', 'host CPU %', 'failed tx', 'error runs'];

function row(s: TargetSummary): string[] {
  return [
    s.target, String(s.runs), fmt(s.medianTps, 0), fmt(s.medianLatencyAvgMs, 3), fmt(s.medianP50Ms, 3), fmt(s.medianP99Ms, 3),
    fmt(s.medianProxyCpuSPer10kTx, 3), fmt(s.maxProxyRssMb, 1), fmt(s.medianHostBusyPct, 0), String(s.failedTransactions), String(s.runsWithErrors),
  ];
}

/** A plain-text table: medians over rounds, then the ratios. */
export function formatTable(summaries: TargetSummary[], r: Ratios): string {
  const rows = [HEADER, ...summaries.map(row)];
  const widths = HEADER.map((_, i) => Math.max(...rows.map((cells) => cells[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [
    line(rows[0]!),
    widths.map((w) => '-'.repeat(w)).join('  '),
    ...rows.slice(1).map(line),
    '',
    `pgwarden/PgBouncer TPS: ${fmt(r.pgwardenOverPgbouncerTps, 3)}   pgwarden/direct TPS: ${fmt(r.pgwardenOverDirectTps, 3)}`,
    `pgwarden added latency vs direct: p50 ${fmt(r.pgwardenAddedP50MsVsDirect, 3)} ms, p99 ${fmt(r.pgwardenAddedP99MsVsDirect, 3)} ms`,
  ].join('\n');
}

/** One progress line per finished run. */
export function formatRun(r: RunRecord): string {
  const cpu = Number.isFinite(r.proxyCpuS) ? `  proxy CPU ${fmt(r.proxyCpuS, 2)} s (${fmt(r.proxyCpuSPer10kTx, 3)} s/10k tx)` : '';
  const trouble = r.exitCode !== 0 || r.errors.length > 0 ? `  pgbench exit ${r.exitCode}, ${r.errors.length} error lines` : '';
  const problems = r.proxyProblems.length > 0 ? `  ${r.proxyProblems.length} proxy warnings` : '';
  return `round ${r.round} ${r.target.padEnd(9)} tps ${fmt(r.tps, 0).padStart(6)}  avg ${fmt(r.latencyAvgMs, 3)} ms  ` +
    `p50 ${fmt(r.p50Ms, 3)}  p99 ${fmt(r.p99Ms, 3)} ms  host CPU ${fmt(r.hostBusyPct, 0)}%${cpu}${trouble}${problems}`;
}

export interface ResultFile {
  startedAt: string;
  finishedAt: string;
  options: BenchOptions;
  environment: Environment;
  skipped: { target: TargetName; reason: string }[];
  summaries: TargetSummary[];
  ratios: Ratios;
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
