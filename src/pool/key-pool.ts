/**
 * The per-key parts of a tenant's pool: one key's idle backends and login (KeyPool), and the
 * tenant's queue of clients waiting for a backend, in arrival order, each with its pool_timeout.
 * Which waiter is served with what, and when a backend is opened or evicted, is backend-pool.ts's.
 */
import type { Backend } from './backend.js';
import type { UpstreamLogin, UpstreamTarget } from './upstream.js';

/** Backends of one (database, role, startup parameters) key. */
export interface KeyPool {
  readonly key: string;
  /** Idle backends, the most recently idle last. */
  readonly idle: Backend[];
  /** How new backends of this key log in: the latest client's credential (pass-through key or password). */
  login: UpstreamLogin;
  target: UpstreamTarget;
  /** ParameterStatus values from the first login, shown to clients that get a pooled backend. */
  parameters: Map<string, string> | null;
  /** Last acquire: a key nobody used for backend_idle_timeout, with no backend, is forgotten. */
  lastUsedAt: number;
  /** Backends of this key being opened (counted in the tenant's total, not yet open). */
  opening: number;
}

export function newKeyPool(key: string, login: UpstreamLogin, target: UpstreamTarget): KeyPool {
  return { key, idle: [], login, target, parameters: null, lastUsedAt: Date.now(), opening: 0 };
}

/** Takes `b` out of the key's idle list, if it is there. */
export function removeIdle(pool: KeyPool, b: Backend): void {
  const i = pool.idle.indexOf(b);
  if (i >= 0) pool.idle.splice(i, 1);
}

/** A client waiting for a backend of `key`. */
export interface Waiter {
  readonly key: string;
  /** Backends this waiter may open beyond max_backend_connections (a staff session's reserve). */
  readonly extra: number;
  readonly since: number;
  readonly resolve: (b: Backend) => void;
  readonly reject: (e: Error) => void;
  /** performance.now() past which the waiter leaves the queue, rejected with `onTimeout()`. */
  readonly deadline: number;
  readonly onTimeout: () => Error;
}

/**
 * A tenant's waiting clients, oldest first. Every waiter leaves the queue exactly once: served
 * (`shift`, `takeFirstOf`), failed (`failKey`, `rejectAll`) or timed out.
 *
 * One timer for the whole queue, at the earliest deadline, not one per waiter: in transaction mode
 * with more clients than backends most transactions wait, and a setTimeout/clearTimeout pair per
 * transaction was a visible share of the proxy's CPU (issue 15).
 */
export class WaitQueue {
  private readonly waiters: Waiter[] = [];
  private timer: NodeJS.Timeout | null = null;
  /** When `timer` fires (Infinity: not armed). */
  private timerAt = Number.POSITIVE_INFINITY;

  get length(): number {
    return this.waiters.length;
  }

  /** The client that has waited longest. */
  get head(): Waiter | undefined {
    return this.waiters[0];
  }

  /**
   * Queues a client for `key`. After `timeoutMs` it leaves the queue and is rejected with what
   * `onTimeout` returns (the caller counts the refusal there).
   */
  wait(key: string, extra: number, timeoutMs: number, onTimeout: () => Error): Promise<Backend> {
    return new Promise<Backend>((resolve, reject) => {
      const deadline = performance.now() + timeoutMs;
      this.waiters.push({ key, extra, since: Date.now(), resolve, reject, deadline, onTimeout });
      if (deadline < this.timerAt) this.arm(deadline);
    });
  }

  /** Removes the head, to be served. */
  shift(): Waiter | undefined {
    return this.stop(this.waiters.shift());
  }

  /** Removes the longest-waiting client of `key`, to be served. */
  takeFirstOf(key: string): Waiter | undefined {
    const i = this.waiters.findIndex((w) => w.key === key);
    return i < 0 ? undefined : this.stop(this.waiters.splice(i, 1)[0]);
  }

  /** Whether anyone waits for `key`. */
  has(key: string): boolean {
    return this.waiters.some((w) => w.key === key);
  }

  /** Rejects every waiter of `key` with `err` (their server refused or is down). */
  failKey(key: string, err: Error): void {
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i]!;
      if (w.key !== key) continue;
      this.waiters.splice(i, 1);
      this.stop(w);
      w.reject(err);
    }
  }

  /** Rejects every waiter with `err` (the pool is closing). */
  rejectAll(err: Error): void {
    for (const w of this.waiters.splice(0)) {
      this.stop(w);
      w.reject(err);
    }
  }

  /** A waiter left the queue: with nobody left, the timer goes too (nothing keeps a closed pool alive). */
  private stop(w: Waiter | undefined): Waiter | undefined {
    if (this.waiters.length === 0 && this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
      this.timerAt = Number.POSITIVE_INFINITY;
    }
    return w;
  }

  private arm(at: number): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(this.expire, Math.max(0, at - performance.now()));
  }

  /** Rejects the waiters past their deadline (oldest first), then waits for the next deadline. */
  private readonly expire = (): void => {
    this.timer = null;
    this.timerAt = Number.POSITIVE_INFINITY;
    const now = performance.now();
    const expired: Waiter[] = [];
    let next = Number.POSITIVE_INFINITY;
    for (let i = 0; i < this.waiters.length; ) {
      const w = this.waiters[i]!;
      if (w.deadline <= now) {
        this.waiters.splice(i, 1);
        expired.push(w);
      } else {
        if (w.deadline < next) next = w.deadline;
        i++;
      }
    }
    if (next !== Number.POSITIVE_INFINITY) this.arm(next);
    for (const w of expired) w.reject(w.onTimeout());
  };
}
