/**
 * Pre-authentication slots (global and per source address), always per instance: they guard
 * this process's descriptors and memory. Per-tenant and per-user caps live in store.ts.
 */

import type { Lease } from './store.js';
export type { Lease } from './store.js';

class CountLease implements Lease {
  private released = false;
  constructor(
    private readonly counts: Map<string, number>,
    private readonly key: string,
  ) {}
  release(): void {
    if (this.released) return;
    this.released = true;
    const n = (this.counts.get(this.key) ?? 1) - 1;
    if (n <= 0) this.counts.delete(this.key);
    else this.counts.set(this.key, n);
  }
}

function tryAcquire(counts: Map<string, number>, key: string, limit: number): Lease | null {
  const n = counts.get(key) ?? 0;
  if (n >= limit) return null;
  counts.set(key, n + 1);
  return new CountLease(counts, key);
}

/** Pre-auth caps (SECURITY.md rule 9): a flood of slow handshakes cannot take every descriptor. */
export class PreauthLimiter {
  private readonly bySource = new Map<string, number>();
  private total = 0;

  tryAcquire(source: string, maxTotal: number, maxPerSource: number): Lease | null {
    if (this.total >= maxTotal) return null;
    const perSource = tryAcquire(this.bySource, source, maxPerSource);
    if (perSource === null) return null;
    const global = this.tryAcquireGlobal(maxTotal)!; // below the cap: checked above
    return {
      release: () => {
        global.release();
        perSource.release();
      },
    };
  }

  /**
   * A slot under the global cap only: a trusted load balancer's connection while its PROXY header
   * is read (the per-source cap is the client's, known after the header; the balancer's own
   * address would reach it at once).
   */
  tryAcquireGlobal(maxTotal: number): Lease | null {
    if (this.total >= maxTotal) return null;
    this.total++;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.total--;
      },
    };
  }

  get active(): number {
    return this.total;
  }
}
