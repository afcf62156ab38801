/**
 * Failed logins to the audit view, per client address: after MAX_FAILURES within WINDOW_MS the
 * address is refused (429) until its window ends, without checking the token. Auditing the
 * refusals is refusals.ts's; this only slows a guesser down.
 */
export const MAX_FAILURES = 10;
export const WINDOW_MS = 5 * 60_000;
/** Addresses remembered at most (oldest forgotten first), so a spray of sources cannot grow memory. */
const MAX_ADDRESSES = 4096;

export class LoginThrottle {
  private readonly failures = new Map<string, { count: number; sinceMs: number }>();

  constructor(private readonly now: () => number = Date.now) {}

  /** Whether this address may try a token now. */
  allows(addr: string): boolean {
    const f = this.failures.get(addr);
    if (f === undefined) return true;
    if (this.now() - f.sinceMs > WINDOW_MS) {
      this.failures.delete(addr);
      return true;
    }
    return f.count < MAX_FAILURES;
  }

  failed(addr: string): void {
    const t = this.now();
    const f = this.failures.get(addr);
    if (f !== undefined && t - f.sinceMs <= WINDOW_MS) {
      f.count++;
      return;
    }
    this.failures.delete(addr);
    if (this.failures.size >= MAX_ADDRESSES) {
      const oldest = this.failures.keys().next().value;
      if (oldest !== undefined) this.failures.delete(oldest);
    }
    this.failures.set(addr, { count: 1, sinceMs: t });
  }

  succeeded(addr: string): void {
    this.failures.delete(addr);
  }
}
