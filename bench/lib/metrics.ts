/** Counter deltas from pgwarden's Prometheus text around a run (pins, pool waits, errors, session ends). */

/** Families whose changes during a run are worth keeping; everything else on /metrics is ignored. */
const FAMILIES = [
  'pgwarden_pool_pins_total',
  'pgwarden_pool_wait_seconds_count',
  'pgwarden_pool_wait_seconds_sum',
  'pgwarden_session_ends_total',
  'pgwarden_errors_total',
  'pgwarden_backend_connects_total',
  'pgwarden_limit_rejections_total',
  'pgwarden_auth_failures_total',
  'pgwarden_connection_rejections_total',
  'pgwarden_transactions_total',
];

/** `series → value` for the families above; series keep their labels, minus `tenant` (there is one). */
export function parseCounters(text: string | null): Map<string, number> {
  const out = new Map<string, number>();
  if (text === null) return out;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-z_]+)(\{[^}]*\})?\s+(\S+)$/.exec(line.trim());
    if (m === null || !FAMILIES.includes(m[1]!)) continue;
    const labels = (m[2] ?? '').replace(/tenant="[^"]*",?/, '').replace(/,}$/, '}').replace('{}', '');
    out.set(`${m[1]!}${labels}`, Number(m[3]));
  }
  return out;
}

/** Series that changed between two scrapes, with the change (rounded to µs for sums of seconds). */
export function counterDeltas(before: Map<string, number>, after: Map<string, number>): Record<string, number> {
  const deltas: Record<string, number> = {};
  for (const [series, value] of after) {
    const d = value - (before.get(series) ?? 0);
    if (d !== 0 && Number.isFinite(d)) deltas[series] = Math.round(d * 1e6) / 1e6;
  }
  return deltas;
}
