/**
 * Aggregates pre-authentication noise (bad lengths, probes, handshake failures, slowloris) into
 * one `connection.rejected` record per (reason, source prefix) and window (SECURITY.md §2.3),
 * so a flood cannot turn the audit log into the attack's amplifier.
 */
import { isIPv4 } from 'node:net';
import type { AuditSink } from './log.js';
import type { Metrics } from '../observability/metrics.js';

/** /24 for IPv4, /64 for IPv6. */
export function sourcePrefix(addr: string): string {
  const a = addr.startsWith('::ffff:') && isIPv4(addr.slice(7)) ? addr.slice(7) : addr;
  if (isIPv4(a)) return `${a.split('.').slice(0, 3).join('.')}.0/24`;
  const groups = a.split(':').slice(0, 4).join(':');
  return `${groups}::/64`;
}

export class RejectionAggregator {
  private counts = new Map<string, { reason: string; prefix: string; tenant: string | undefined; count: number }>();
  private windowStart = new Date();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly audit: () => AuditSink,
    private readonly metrics: Metrics,
    windowMs = 10_000,
  ) {
    this.timer = setInterval(() => this.flush(), windowMs);
    this.timer.unref();
  }

  /** `tenant` only for configured tenants (a bounded set), e.g. connection-rate refusals. */
  record(reason: string, addr: string, tenant?: string): void {
    this.metrics.rejections.inc({ reason });
    const prefix = sourcePrefix(addr);
    const key = `${reason}\0${prefix}\0${tenant ?? ''}`;
    const e = this.counts.get(key);
    if (e !== undefined) e.count++;
    else this.counts.set(key, { reason, prefix, tenant, count: 1 });
  }

  flush(): void {
    const end = new Date();
    for (const e of this.counts.values()) {
      this.audit().append({
        event: 'connection.rejected',
        ...(e.tenant === undefined ? {} : { tenant: e.tenant }),
        reason: e.reason,
        source_prefix: e.prefix,
        count: e.count,
        window: { start: this.windowStart.toISOString(), end: end.toISOString() },
      });
    }
    this.counts = new Map();
    this.windowStart = end;
  }

  stop(): void {
    clearInterval(this.timer);
    this.flush();
  }
}
