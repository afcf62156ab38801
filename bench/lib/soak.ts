/**
 * The soak's judgement (scripts/soak.ts): samples of the proxy over time, the least-squares slope
 * of RSS and open file descriptors over the second half of the run, and the rule that calls the
 * run flat. Kept apart from the run so the rule is tested (test/unit/soak.test.ts).
 */

export interface SoakSample {
  /** Seconds since the load started. */
  t: number;
  rssMb: number;
  fds: number;
  /** Event-loop delay, p99 over prom-client's window, in ms. */
  loopP99Ms: number;
  /** Audit records queued, not yet written. */
  auditQueue: number;
  sessions: number;
  /** Transactions per second through pgwarden since the previous sample. */
  tps: number;
}

/** Least-squares slope of y over x (per unit of x); 0 with fewer than two distinct x. */
export function slope(xs: readonly number[], ys: readonly number[]): number {
  const n = Math.min(xs.length, ys.length);
  if (n < 2) return 0;
  let mx = 0;
  let my = 0;
  for (let i = 0; i < n; i++) {
    mx += xs[i]!;
    my += ys[i]!;
  }
  mx /= n;
  my /= n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my);
    den += (xs[i]! - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

/** The rule, stated once: the report prints it. */
export const FLAT_RULE =
  'flat = over the second half of the run, RSS grows less than 1 MB/min and fds less than 1/min, ' +
  'the last RSS is within 20 % of the warm-up peak (first 20 % of the run), and the last fd count within 10 of the warm-up peak';

export interface SoakVerdict {
  flat: boolean;
  rssFirst: number;
  rssWarm: number;
  rssPeak: number;
  rssLast: number;
  fdsFirst: number;
  fdsWarm: number;
  fdsPeak: number;
  fdsLast: number;
  /** MB per minute over the second half. */
  rssSlope: number;
  /** fds per minute over the second half. */
  fdsSlope: number;
  reasons: string[];
}

export function judge(samples: readonly SoakSample[]): SoakVerdict {
  if (samples.length < 4) throw new Error(`too few samples to judge (${samples.length})`);
  const end = samples[samples.length - 1]!.t;
  const warm = samples.filter((s) => s.t <= end * 0.2);
  const half = samples.filter((s) => s.t >= end / 2);
  const minutes = half.map((s) => s.t / 60);
  const v: SoakVerdict = {
    flat: true,
    rssFirst: samples[0]!.rssMb,
    rssWarm: Math.max(...(warm.length > 0 ? warm : samples.slice(0, 1)).map((s) => s.rssMb)),
    rssPeak: Math.max(...samples.map((s) => s.rssMb)),
    rssLast: samples[samples.length - 1]!.rssMb,
    fdsFirst: samples[0]!.fds,
    fdsWarm: Math.max(...(warm.length > 0 ? warm : samples.slice(0, 1)).map((s) => s.fds)),
    fdsPeak: Math.max(...samples.map((s) => s.fds)),
    fdsLast: samples[samples.length - 1]!.fds,
    rssSlope: slope(minutes, half.map((s) => s.rssMb)),
    fdsSlope: slope(minutes, half.map((s) => s.fds)),
    reasons: [],
  };
  if (v.rssSlope >= 1) v.reasons.push(`RSS grows ${v.rssSlope.toFixed(2)} MB/min over the second half`);
  if (v.fdsSlope >= 1) v.reasons.push(`fds grow ${v.fdsSlope.toFixed(2)}/min over the second half`);
  if (v.rssLast > v.rssWarm * 1.2) v.reasons.push(`last RSS ${v.rssLast.toFixed(1)} MB is over 1.2 × the warm-up peak ${v.rssWarm.toFixed(1)} MB`);
  if (v.fdsLast > v.fdsWarm + 10) v.reasons.push(`last fds ${v.fdsLast} is over the warm-up peak ${v.fdsWarm} + 10`);
  v.flat = v.reasons.length === 0;
  return v;
}
