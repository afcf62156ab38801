/**
 * The limit store: every limit the connect path checks, behind one interface, so a single
 * instance keeps its state in process (LocalLimitStore, here) and several instances share it
 * through Redis (RedisLimitStore, redis-store.ts) without the session knowing which.
 *
 * Each method is one atomic step (one Redis round trip): `admit` (auth cool-down, then the
 * connection-rate token), `acquire` (connection slots under several keys, all or nothing),
 * `noteAuthFailure`. Keys are built by the caller (see keys below) and are never attacker-sized:
 * tenants are configured ids, sources are addresses (IPv6 grouped by /64).
 */
import { LRUCache } from 'lru-cache';

export type LimitMode = 'local' | 'redis' | 'degraded_local';

/** A held slot. release() is idempotent, so a double release can never free someone else's slot. */
export interface Lease {
  release(): void;
}

export interface SlotRequest {
  readonly key: string;
  /** Cap under this key; 0 refuses everything. */
  readonly limit: number;
}

export type AcquireResult =
  | { readonly ok: true; readonly lease: Lease; /** count under each key, this one included */ readonly active: readonly number[] }
  | { readonly ok: false; /** index of the first key that was full */ readonly refused: number };

/** Token bucket: `ratePerSecond` refill, at most `burst` tokens. */
export interface RateRule {
  readonly key: string;
  readonly ratePerSecond: number;
  readonly burst: number;
}

/** After `maxFailures` authentication failures within `windowMs`, refuse for `cooldownMs`. */
export interface LockoutRule {
  readonly key: string;
  readonly maxFailures: number;
  readonly windowMs: number;
  readonly cooldownMs: number;
}

export type AdmitResult = 'ok' | 'rate_limited' | 'locked_out';

export interface LimitStore {
  readonly mode: LimitMode;
  /** Before authentication: refuses a source in cool-down, then takes a connection-rate token. */
  admit(rate: RateRule | null, lockouts: readonly LockoutRule[]): Promise<AdmitResult>;
  /** Counts one failed authentication under every rule; reaching maxFailures starts the cool-down. */
  noteAuthFailure(lockouts: readonly LockoutRule[]): Promise<void>;
  /** Takes one slot under every key, or none. */
  acquire(slots: readonly SlotRequest[]): Promise<AcquireResult>;
  /**
   * Slots held under `key` as last seen by this instance: exact for the in-process store; with
   * Redis, the cluster-wide count from this instance's last acquire or heartbeat for that key
   * (0 for keys only other instances hold). For audit and metrics, never for decisions.
   */
  active(key: string): number;
  /**
   * Single use: true the first time `key` is claimed within `ttlMs`, false after (a staff
   * token's jti until its expiry). With Redis it holds cluster-wide; degraded, per instance.
   */
  claimOnce(key: string, ttlMs: number): Promise<boolean>;
  /**
   * Slots held under each key by every live instance sharing this store, read now (the admin
   * API's GET /limits); null when nothing is shared (a single instance, or Redis degraded or not
   * answering). Never for decisions.
   */
  clusterCounts(keys: readonly string[]): Promise<readonly number[] | null>;
  close(): Promise<void>;
}

/** Key builders: one place, so local and Redis stores see the same names. */
export const LimitKeys = {
  tenantConnections: (tenant: string) => `conn:t:${tenant}`,
  userConnections: (tenant: string, user: string) => `conn:u:${tenant}:${user}`,
  /** Staff sessions on a tenant: counted apart from its users, under [staff] reserved_connections. */
  staffConnections: (tenant: string) => `conn:s:${tenant}`,
  tenantRate: (tenant: string) => `rate:t:${tenant}`,
  /** A staff token's id (verified, but its characters are the issuer's: hashed by the caller). */
  staffToken: (jtiHash: string) => `once:jti:${jtiHash}`,
  tenantSourceAuth: (tenant: string, source: string) => `auth:ts:${tenant}:${source}`,
  sourceAuth: (source: string) => `auth:s:${source}`,
};

/**
 * The address a limit is kept for: IPv4 as is (IPv4-mapped IPv6 unwrapped), IPv6 by its /64,
 * since one host commonly holds a whole /64 and would otherwise get a fresh budget per address.
 */
export function sourceKey(addr: string): string {
  const v4 = addr.startsWith('::ffff:') && addr.includes('.') ? addr.slice(7) : addr;
  if (!v4.includes(':')) return v4;
  const [head = '', tail = ''] = v4.split('::', 2);
  const h = head === '' ? [] : head.split(':');
  const t = tail === '' ? [] : tail.split(':');
  const groups = v4.includes('::') ? [...h, ...Array<string>(Math.max(0, 8 - h.length - t.length)).fill('0'), ...t] : h;
  return `${groups.slice(0, 4).map((g) => (parseInt(g, 16) || 0).toString(16)).join(':')}::/64`;
}

// ------------------------------------------------------------------ in-process implementation

interface Bucket {
  tokens: number;
  at: number;
}

interface Failures {
  count: number;
  windowEnds: number;
  lockedUntil: number;
}

/**
 * In-process state: exact on one instance (and in the primary for workers). Rate buckets and
 * failure counters for sources live in bounded LRU caches, so a spray of addresses cannot
 * grow memory without bound; losing an entry only ever forgets, never blocks.
 */
/**
 * Slots held in a LocalLimitStore. A class, not a closure: a session holds its lease for life, and
 * a closure's context per session is memory an idle session does not need (issue 15).
 */
class LocalLease implements Lease {
  private released = false;

  constructor(
    private readonly counts: Map<string, number>,
    private readonly keys: readonly string[],
  ) {}

  release(): void {
    if (this.released) return;
    this.released = true;
    for (const k of this.keys) {
      const n = (this.counts.get(k) ?? 1) - 1;
      if (n <= 0) this.counts.delete(k);
      else this.counts.set(k, n);
    }
  }
}

export class LocalLimitStore implements LimitStore {
  readonly mode: LimitMode = 'local';
  private readonly counts = new Map<string, number>();
  private readonly buckets = new LRUCache<string, Bucket>({ max: 100_000 });
  private readonly failures = new LRUCache<string, Failures>({ max: 100_000 });
  /** Claimed single-use keys until their TTL (wall clock: a token's exp is wall-clock time). */
  private readonly claimed = new LRUCache<string, true>({ max: 100_000, ttlAutopurge: false });

  constructor(private readonly now: () => number = () => performance.now()) {}

  admit(rate: RateRule | null, lockouts: readonly LockoutRule[]): Promise<AdmitResult> {
    return Promise.resolve(this.admitSync(rate, lockouts));
  }

  admitSync(rate: RateRule | null, lockouts: readonly LockoutRule[]): AdmitResult {
    const now = this.now();
    for (const l of lockouts) {
      const f = this.failures.get(l.key);
      if (f !== undefined && f.lockedUntil > now) return 'locked_out';
    }
    if (rate !== null && !this.takeToken(rate, now)) return 'rate_limited';
    return 'ok';
  }

  noteAuthFailure(lockouts: readonly LockoutRule[]): Promise<void> {
    this.noteAuthFailureSync(lockouts);
    return Promise.resolve();
  }

  claimOnce(key: string, ttlMs: number): Promise<boolean> {
    return Promise.resolve(this.claimOnceSync(key, ttlMs));
  }

  claimOnceSync(key: string, ttlMs: number): boolean {
    if (this.claimed.has(key)) return false;
    this.claimed.set(key, true, { ttl: Math.max(1, Math.ceil(ttlMs)) });
    return true;
  }

  noteAuthFailureSync(lockouts: readonly LockoutRule[]): void {
    const now = this.now();
    for (const l of lockouts) {
      if (l.maxFailures <= 0) continue;
      let f = this.failures.get(l.key);
      if (f === undefined || (f.windowEnds <= now && f.lockedUntil <= now)) {
        f = { count: 0, windowEnds: now + l.windowMs, lockedUntil: 0 };
        this.failures.set(l.key, f);
      }
      f.count++;
      if (f.count >= l.maxFailures && f.lockedUntil <= now) {
        f.lockedUntil = now + l.cooldownMs;
        // The cool-down starts a fresh window afterwards.
        f.windowEnds = f.lockedUntil;
        f.count = 0;
      }
    }
  }

  acquire(slots: readonly SlotRequest[]): Promise<AcquireResult> {
    return Promise.resolve(this.acquireSync(slots));
  }

  acquireSync(slots: readonly SlotRequest[]): AcquireResult {
    for (let i = 0; i < slots.length; i++) {
      const s = slots[i]!;
      if ((this.counts.get(s.key) ?? 0) >= s.limit) return { ok: false, refused: i };
    }
    const active = slots.map((s) => {
      const n = (this.counts.get(s.key) ?? 0) + 1;
      this.counts.set(s.key, n);
      return n;
    });
    return { ok: true, lease: new LocalLease(this.counts, slots.map((s) => s.key)), active };
  }

  active(key: string): number {
    return this.counts.get(key) ?? 0;
  }

  /** Nothing shared: this instance's counts are all there is. */
  clusterCounts(): Promise<readonly number[] | null> {
    return Promise.resolve(null);
  }

  /** Every key with a slot held, and its count (the Redis store reconciles from this). */
  snapshot(): ReadonlyMap<string, number> {
    return this.counts;
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  private takeToken(rule: RateRule, now: number): boolean {
    if (rule.ratePerSecond <= 0) return true;
    let b = this.buckets.get(rule.key);
    if (b === undefined) {
      b = { tokens: rule.burst, at: now };
      this.buckets.set(rule.key, b);
    } else {
      b.tokens = Math.min(rule.burst, b.tokens + ((now - b.at) / 1000) * rule.ratePerSecond);
      b.at = now;
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
}
