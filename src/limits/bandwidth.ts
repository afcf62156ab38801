/**
 * Per-tenant bandwidth limits, enforced by backpressure: a session that overdraws its tenant's
 * byte budget pauses the socket it reads from and waits its turn. Waiters are served in arrival
 * order, one refill at a time, so a tenant's sessions share its rate fairly and no session of
 * another tenant ever waits on it (each tenant and direction has its own budget).
 *
 * Nothing is buffered here: the bytes already read are relayed at once (the debt is repaid by
 * waiting), so memory stays bounded by the socket reads in flight.
 */

/** Bytes a session may overdraw before it waits: about 100 ms of the rate, at least 64 KiB. */
function burstFor(bytesPerSecond: number): number {
  return Math.max(65_536, Math.floor(bytesPerSecond / 10));
}

export class ByteRate {
  private tokens: number;
  private at: number;
  private readonly burst: number;
  /** Sessions waiting for budget, in arrival order; each is called once when its turn comes. */
  private readonly waiting = new Set<() => void>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    readonly bytesPerSecond: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.burst = burstFor(bytesPerSecond);
    this.tokens = this.burst;
    this.at = this.now();
  }

  /**
   * Charges `n` bytes already read. Returns true when the reader may go on; false when it must
   * pause its socket until `resume` is called (it has been queued).
   */
  take(n: number, resume: () => void): boolean {
    this.refill();
    this.tokens -= n;
    if (this.tokens >= 0 && this.waiting.size === 0) return true;
    this.waiting.add(resume);
    this.schedule();
    return false;
  }

  /** A session that ends while waiting leaves the queue. */
  forget(resume: () => void): void {
    this.waiting.delete(resume);
    if (this.waiting.size === 0 && this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  get waiters(): number {
    return this.waiting.size;
  }

  private refill(): void {
    const now = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) / 1000) * this.bytesPerSecond);
    this.at = now;
  }

  private schedule(): void {
    if (this.timer !== null) return;
    const deficit = Math.max(1, -this.tokens);
    const ms = Math.max(5, Math.ceil((deficit / this.bytesPerSecond) * 1000));
    this.timer = setTimeout(this.onTimer, ms);
  }

  private readonly onTimer = (): void => {
    this.timer = null;
    this.refill();
    if (this.tokens <= 0) {
      this.schedule();
      return;
    }
    // The debt is repaid: every waiter, in arrival order, may read once more. Each charges what
    // it reads and, while others wait, queues again behind them: round robin, one read per turn.
    // The overdraft this allows (one read per waiter) is repaid before the next round.
    const woken = [...this.waiting];
    this.waiting.clear();
    for (const resume of woken) resume();
  };
}

/** One tenant's budgets, both directions. */
export interface TenantBandwidth {
  readonly clientToServer: ByteRate;
  readonly serverToClient: ByteRate;
}

/** The budgets of every tenant with a bandwidth limit; a reload keeps budgets whose rate is unchanged. */
export class BandwidthRegistry {
  private readonly tenants = new Map<string, TenantBandwidth>();

  /** The tenant's budgets, or null when it has no limit. */
  get(tenantId: string, bytesPerSecond: number): TenantBandwidth | null {
    if (bytesPerSecond <= 0) return null;
    let b = this.tenants.get(tenantId);
    if (b === undefined || b.clientToServer.bytesPerSecond !== bytesPerSecond) {
      // A changed rate applies to sessions that start from now on; running ones keep their budget.
      b = { clientToServer: new ByteRate(bytesPerSecond), serverToClient: new ByteRate(bytesPerSecond) };
      this.tenants.set(tenantId, b);
    }
    return b;
  }

  /** Sessions waiting on each tenant's budgets (metrics). */
  snapshot(): { tenant: string; clientToServer: number; serverToClient: number }[] {
    return [...this.tenants].map(([tenant, b]) => ({ tenant, clientToServer: b.clientToServer.waiters, serverToClient: b.serverToClient.waiters }));
  }
}
