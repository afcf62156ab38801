/** What the bench measures against: a name, a TLS endpoint on loopback, and the proxy process if any. */

export type TargetName = 'direct' | 'pgbouncer' | 'pgwarden';

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
  stop(): Promise<void>;
}
