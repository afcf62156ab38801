/** What the bench measures against: a name, a TLS endpoint on loopback, and the proxy process if any. */

/** `baseline` is another pgwarden build (`--baseline DIR`), for before/after figures in one run. */
export type ProxyKind = 'pgbouncer' | 'pgwarden' | 'baseline';
export type PoolMode = 'session' | 'transaction';
export type TargetName =
  | 'direct'
  | 'pgbouncer-session'
  | 'pgbouncer-transaction'
  | 'pgwarden-session'
  | 'pgwarden-transaction'
  | 'baseline-session'
  | 'baseline-transaction';

export const ALL_TARGETS: readonly TargetName[] = [
  'direct',
  'pgbouncer-session',
  'pgbouncer-transaction',
  'pgwarden-session',
  'pgwarden-transaction',
  'baseline-session',
  'baseline-transaction',
];

/** What runs when --targets is not given (the baseline targets need --baseline). */
export const DEFAULT_TARGETS: readonly TargetName[] = ALL_TARGETS.filter((t) => !t.startsWith('baseline'));

/** The proxy and pool mode a target name stands for; null for direct PostgreSQL. */
export function parseTargetName(name: TargetName): { proxy: ProxyKind; mode: PoolMode } | null {
  if (name === 'direct') return null;
  const [proxy, mode] = name.split('-') as [ProxyKind, PoolMode];
  return { proxy, mode };
}

export interface Target {
  name: TargetName;
  /** TCP port on 127.0.0.1. */
  port: number;
  /** Host name the client verifies and sends as SNI (all match the dev certificate `*.pg.test`). */
  host: string;
  /** The proxy's process id, for CPU and memory; null for direct PostgreSQL. */
  proxyPid: number | null;
  /** Proxy log lines at warning level or above, so far. */
  problems(): string[];
  /** pgwarden's Prometheus text (/metrics), for counters around a run; null for other targets. */
  metrics?: () => Promise<string | null>;
  stop(): Promise<void>;
}
