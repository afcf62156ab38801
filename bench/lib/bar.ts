/**
 * Issue 15's bar, read off one run's matrix: per pgwarden target (and its baseline), the geometric
 * means over the cells PgBouncer ran in the same pool mode of TPS ÷ PgBouncer's and proxy CPU per
 * transaction ÷ PgBouncer's, next to the bar for that mode. Cells PgBouncer cannot run (transaction
 * mode with -M prepared) are listed as working or not, outside the means.
 */
import { formatColumns, type CellSummary } from './report.js';
import { parseTargetName } from './target.js';

/** The bar (issue 15), per pool mode: TPS at least, CPU per transaction at most, both × PgBouncer's. */
export const BAR = {
  session: { tps: 0.8, cpu: 1.45 },
  transaction: { tps: 0.75, cpu: 1.7 },
} as const;

export interface BarRow {
  target: string;
  mode: 'session' | 'transaction';
  /** Cells with a PgBouncer cell to compare with. */
  cells: number;
  tpsRatio: number;
  cpuRatio: number;
  /** Cells without a comparable PgBouncer cell, and how many of them ran clean. */
  alone: number;
  aloneOk: number;
}

const ok = (s: CellSummary | undefined): s is CellSummary => s !== undefined && s.status === 'ok';

function geomean(xs: number[]): number {
  const finite = xs.filter((x) => Number.isFinite(x) && x > 0);
  if (finite.length === 0) return Number.NaN;
  return Math.exp(finite.reduce((a, x) => a + Math.log(x), 0) / finite.length);
}

export function barRows(summaries: CellSummary[]): BarRow[] {
  const matrix = summaries.filter((s) => s.phase === 'matrix');
  const rows: BarRow[] = [];
  const targets = [...new Set(matrix.map((s) => s.target))];
  for (const target of targets) {
    const kind = parseTargetName(target);
    if (kind === null || kind.proxy === 'pgbouncer') continue;
    const tps: number[] = [];
    const cpu: number[] = [];
    let alone = 0;
    let aloneOk = 0;
    for (const s of matrix.filter((c) => c.target === target)) {
      const bouncer = matrix.find((o) => o.target === `pgbouncer-${kind.mode}` && o.protocol === s.protocol && o.clients === s.clients);
      if (!ok(bouncer)) {
        alone++;
        if (ok(s)) aloneOk++;
        continue;
      }
      tps.push(ok(s) ? s.medianTps / bouncer.medianTps : Number.NaN);
      cpu.push(ok(s) ? s.medianProxyCpuSPer10kTx / bouncer.medianProxyCpuSPer10kTx : Number.NaN);
    }
    rows.push({ target, mode: kind.mode, cells: tps.length, tpsRatio: geomean(tps), cpuRatio: geomean(cpu), alone, aloneOk });
  }
  return rows;
}

const fmt = (x: number, digits: number): string => (Number.isFinite(x) ? x.toFixed(digits) : '-');

export function formatBar(summaries: CellSummary[]): string {
  const rows = barRows(summaries).map((r) => {
    const bar = BAR[r.mode];
    const verdict = !Number.isFinite(r.tpsRatio) ? '-' : r.tpsRatio >= bar.tps && r.cpuRatio <= bar.cpu ? 'meets' : 'short';
    return [
      r.target, String(r.cells), fmt(r.tpsRatio, 3), `≥ ${bar.tps}`, fmt(r.cpuRatio, 3), `≤ ${bar.cpu}`, verdict,
      r.alone === 0 ? '-' : `${r.aloneOk}/${r.alone} ok`,
    ];
  });
  return formatColumns(['target', 'cells', 'TPS ÷bouncer (geomean)', 'bar', 'CPU/tx ÷bouncer (geomean)', 'bar', 'verdict', 'cells PgBouncer cannot run'], rows);
}
