/**
 * Backend connections per tenant, pooled by (database, role, startup parameters).
 * A tenant's pools share its `max_backend_connections`; a client waiting for a backend is
 * served in arrival order and only ever by its own tenant's backends. Idle backends are watched
 * (a server that closes or talks out of turn is dropped), reaped after `backend_idle_timeout` or
 * `backend_lifetime`, and reset with DISCARD ALL when a session-mode client leaves.
 * Sessions decide when to take and give back; this file decides which connection and when to open
 * one. The connection wrapper and its reset are in backend.ts, a key's idle list and the wait
 * queue in key-pool.ts.
 */
import { TERMINATE } from '../protocol/frontend.js';
import { Errors, PgError } from '../errors.js';
import type { Metrics } from '../observability/metrics.js';
import type { Logger } from '../observability/logger.js';
import { Backend, resetBackend } from './backend.js';
import { newKeyPool, removeIdle, WaitQueue, type KeyPool } from './key-pool.js';
import { connectUpstream, type UpstreamConnection, type UpstreamLogin, type UpstreamTarget } from './upstream.js';
import type { PoolMode, PoolSettings } from '../config/schema.js';

export { Backend } from './backend.js';

/** All pools of one tenant. */
export class TenantPool {
  private readonly pools = new Map<string, KeyPool>();
  private readonly waiters = new WaitQueue();
  private readonly all = new Set<Backend>();
  /** Backends open or being opened: the number max_backend_connections caps. */
  private total = 0;
  private closed = false;

  constructor(
    readonly tenantId: string,
    public settings: PoolSettings,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {}

  get size(): { total: number; idle: number; active: number; waiting: number } {
    let idle = 0;
    for (const p of this.pools.values()) idle += p.idle.length;
    return { total: this.total, idle, active: this.total - idle, waiting: this.waiters.length };
  }

  /** Parameters a client of this key is shown at login (from the key's first backend). */
  parametersFor(key: string): Map<string, string> | null {
    return this.pools.get(key)?.parameters ?? null;
  }

  /** First logins of a key in flight: concurrent ones wait for it instead of each opening a backend. */
  private readonly firstLogins = new Map<string, Promise<Map<string, string>>>();

  /**
   * The parameters for a transaction-mode login. The first login of a key logs a backend in (which
   * proves the credentials work upstream) and gives it straight back; logins at the same moment
   * share that one; later ones need no backend at all.
   */
  async loginParameters(key: string, login: UpstreamLogin, target: UpstreamTarget): Promise<Map<string, string>> {
    const known = this.parametersFor(key);
    if (known !== null) return known;
    let first = this.firstLogins.get(key);
    if (first === undefined) {
      first = this.acquire(key, login, target).then((b) => {
        this.release(b, true, false);
        return this.parametersFor(key) ?? b.conn.parameters;
      });
      this.firstLogins.set(key, first);
      const forget = (): void => void this.firstLogins.delete(key);
      first.then(forget, forget);
    }
    return first;
  }

  /**
   * A backend for `key`: an idle one, a new one if the tenant has room (evicting another key's
   * idle backend if that makes room), or the next one freed, within pool_timeout.
   * `extra` lets this caller open that many beyond max_backend_connections (a staff session's
   * reserve: the caller caps how many such sessions there are), ahead of the queue.
   * Throws PgError (08006 when the server cannot be reached, 53300 on pool timeout) or UpstreamRefused.
   */
  async acquire(key: string, login: UpstreamLogin, target: UpstreamTarget, extra = 0): Promise<Backend> {
    if (this.closed) throw Errors.adminShutdown('pool_closed');
    const pool = this.keyPool(key, login, target);
    const ready = this.takeIdle(pool);
    if (ready !== null) return ready;
    if (this.hasRoom(extra) || this.evictIdleOtherThan(key, extra)) return this.open(pool);
    const since = Date.now();
    const backend = await this.waiters.wait(key, extra, this.settings.poolTimeoutMs, () => {
      this.metrics.limitRejections.inc({ tenant: this.tenantId, limit: 'pool_timeout' });
      return Errors.poolTimeout();
    });
    this.metrics.poolWaitSeconds.observe({ tenant: this.tenantId }, (Date.now() - since) / 1000);
    return backend;
  }

  /**
   * An idle backend for `key` at once, or null (then `acquire`): transaction mode takes one per
   * transaction, and most of the time one is idle, so this path has no promise and no wait.
   */
  tryAcquireIdle(key: string, login: UpstreamLogin, target: UpstreamTarget): Backend | null {
    if (this.closed) return null;
    return this.takeIdle(this.keyPool(key, login, target));
  }

  private keyPool(key: string, login: UpstreamLogin, target: UpstreamTarget): KeyPool {
    let pool = this.pools.get(key);
    if (pool === undefined) {
      pool = newKeyPool(key, login, target);
      this.pools.set(key, pool);
    } else {
      pool.login = login;
      pool.target = target;
      pool.lastUsedAt = Date.now();
    }
    return pool;
  }

  /**
   * Gives a backend back. `reusable` says the session left it at a message boundary, idle, with
   * nothing outstanding; `reset` runs DISCARD ALL first (session mode).
   */
  release(b: Backend, reusable: boolean, reset: boolean): void {
    if (b.state === 'closed') return;
    b.lastUsedAt = Date.now();
    if (!reusable || this.closed || this.expired(b) || b.socket.destroyed) {
      this.destroy(b);
      return;
    }
    b.state = 'resetting';
    // The relay's last writes go out before anything the pool writes (a TLS socket takes one write at a time).
    const io = b.io;
    if (io !== null && io.busy) io.whenFlushed(() => this.afterRelay(b, reset));
    else this.afterRelay(b, reset);
  }

  private afterRelay(b: Backend, reset: boolean): void {
    if (b.cancelsInFlight === 0) this.reuse(b, reset);
    else b.afterCancels(() => this.reuse(b, reset));
  }

  private reuse(b: Backend, reset: boolean): void {
    if (b.state === 'closed') return;
    if (b.socket.destroyed) this.destroy(b);
    else if (reset) this.reset(b);
    else this.makeIdle(b);
  }

  /** Closes a backend that is broken or whose session ended mid-conversation. */
  destroy(b: Backend): void {
    if (b.state === 'closed') return;
    const wasIdle = b.state === 'idle';
    b.state = 'closed';
    this.all.delete(b);
    if (wasIdle) {
      const pool = this.pools.get(b.key);
      if (pool !== undefined) removeIdle(pool, b);
    }
    b.unwatch();
    // Terminate, unless a relay's write is still in flight: the stream may not write under it.
    if (!b.socket.destroyed && b.io?.busy !== true) b.socket.end(TERMINATE);
    b.socket.destroy();
    this.total--;
    this.serviceWaiters();
  }

  /** Closes idle backends past their idle timeout or lifetime (keeping min_idle per key), and tops up min_idle. */
  reap(now = Date.now()): void {
    this.forgetUnusedKeys(now);
    for (const pool of this.pools.values()) {
      for (const b of [...pool.idle]) {
        const tooOld = now - b.createdAt >= this.settings.backendLifetimeMs;
        const idleTooLong = now - b.lastUsedAt >= this.settings.backendIdleTimeoutMs && pool.idle.length > this.settings.minIdleBackendConnections;
        if (tooOld || idleTooLong) this.destroy(b);
      }
      // Backends being opened count: `open` is asynchronous, so without them this loop would open up to the cap.
      while (pool.idle.length + pool.opening < this.settings.minIdleBackendConnections && this.total < this.settings.maxBackendConnections && !this.closed) {
        this.open(pool).then(
          (b) => this.release(b, true, false),
          (err: unknown) => this.log.warn({ tenant: this.tenantId, err: (err as Error).message }, 'could not open an idle backend'),
        );
      }
    }
  }

  /**
   * Forgets keys (user, database, parameters) that have no backend, no waiter and no login in
   * flight and were not used for backend_idle_timeout. Without this, a client cycling through
   * database names would grow the map without bound, and each entry would keep the last
   * client's upstream credential in memory long after anyone needed it.
   */
  private forgetUnusedKeys(now: number): void {
    if (this.pools.size === 0) return;
    const inUse = new Set<string>();
    for (const b of this.all) inUse.add(b.key);
    for (const [key, pool] of this.pools) {
      if (pool.idle.length === 0 && pool.opening === 0 && !inUse.has(key) && !this.waiters.has(key) && !this.firstLogins.has(key) && now - pool.lastUsedAt >= this.settings.backendIdleTimeoutMs) {
        this.pools.delete(key);
      }
    }
  }

  /** Keys known to the pool (for tests and /pools). */
  get keyCount(): number {
    return this.pools.size;
  }

  /** Closes every idle backend and refuses waiters; active ones close with their sessions. */
  close(): void {
    this.closed = true;
    this.waiters.rejectAll(Errors.adminShutdown('pool_closed'));
    for (const pool of this.pools.values()) for (const b of [...pool.idle]) this.destroy(b);
  }

  // ---------------------------------------------------------------- internals

  private expired(b: Backend): boolean {
    return Date.now() - b.createdAt >= this.settings.backendLifetimeMs;
  }

  private takeIdle(pool: KeyPool): Backend | null {
    for (;;) {
      const b = pool.idle.pop(); // LIFO: the warmest connection first
      if (b === undefined) return null;
      if (b.socket.destroyed || this.expired(b)) {
        b.state = 'active'; // so destroy() does not look for it in the idle list again
        this.destroy(b);
        continue;
      }
      this.activate(b);
      return b;
    }
  }

  private activate(b: Backend): void {
    b.state = 'active';
    b.unwatch();
    // A relay reading through the handle takes the reads from under the stream, which stays
    // flowing (no pause and resume per transaction); the stream path needs it paused until then.
    if (b.io?.mode !== 'handle') b.socket.pause();
  }

  private async open(pool: KeyPool): Promise<Backend> {
    this.total++;
    const began = process.hrtime.bigint();
    let conn: UpstreamConnection;
    pool.opening++;
    try {
      conn = await connectUpstream(pool.target, pool.login, this.settings.connectTimeoutMs);
    } catch (err) {
      pool.opening--;
      this.total--;
      this.metrics.backendConnects.inc({ tenant: this.tenantId, outcome: 'error' });
      this.metrics.backendConnectSeconds.observe({ tenant: this.tenantId, outcome: 'error' }, Number(process.hrtime.bigint() - began) / 1e9);
      // The server is down or refuses: waiters of this key would get the same answer, now.
      this.waiters.failKey(pool.key, err instanceof PgError ? err : Errors.upstreamConnect('backend_connect_failed', err));
      this.serviceWaiters();
      throw err;
    }
    pool.opening--;
    this.metrics.backendConnects.inc({ tenant: this.tenantId, outcome: 'ok' });
    this.metrics.backendConnectSeconds.observe({ tenant: this.tenantId, outcome: 'ok' }, Number(process.hrtime.bigint() - began) / 1e9);
    pool.parameters ??= new Map(conn.parameters);
    const b = new Backend(conn, pool.key);
    this.all.add(b);
    if (this.closed) {
      this.destroy(b);
      throw Errors.adminShutdown('pool_closed');
    }
    return b;
  }

  private makeIdle(b: Backend): void {
    if (this.closed) {
      this.destroy(b);
      return;
    }
    // A waiter of the same key takes it at once; otherwise it goes idle, watched.
    const w = this.waiters.takeFirstOf(b.key);
    if (w !== undefined) {
      this.activate(b);
      w.resolve(b);
      return;
    }
    const pool = this.pools.get(b.key);
    if (pool === undefined) {
      this.destroy(b);
      return;
    }
    b.state = 'idle';
    // An idle server may only speak to say it is going away (FATAL) or to notify: drop it either way.
    b.watch((b.idleWatchers ??= { data: () => this.destroy(b), close: () => this.destroy(b) }));
    if (b.socket.isPaused()) b.socket.resume();
    pool.idle.push(b);
    this.serviceWaiters();
  }

  /** DISCARD ALL, then idle if the server answers ReadyForQuery 'I' without an error; else closed. */
  private reset(b: Backend): void {
    resetBackend(b, this.settings.connectTimeoutMs, (clean) => {
      if (clean) this.makeIdle(b);
      else this.destroy(b);
    });
  }

  /** Whether a caller allowed `extra` backends beyond the cap may open one now. */
  private hasRoom(extra: number): boolean {
    return this.total < this.settings.maxBackendConnections + extra;
  }

  /**
   * Closes other keys' idle backends, least recently used first, until there is room (more than one
   * when staff reserves left the tenant above its cap). False if there is still none.
   */
  private evictIdleOtherThan(key: string, extra: number): boolean {
    while (!this.hasRoom(extra)) {
      let victim: Backend | undefined;
      for (const pool of this.pools.values()) {
        if (pool.key === key) continue;
        for (const b of pool.idle) if (victim === undefined || b.lastUsedAt < victim.lastUsedAt) victim = b;
      }
      if (victim === undefined) return false;
      this.destroy(victim);
    }
    return true;
  }

  private serviceWaiters(): void {
    for (let w = this.waiters.head; w !== undefined && !this.closed; w = this.waiters.head) {
      const pool = this.pools.get(w.key);
      if (pool === undefined) break;
      const idle = this.takeIdle(pool);
      if (idle === null && !(this.hasRoom(w.extra) || this.evictIdleOtherThan(w.key, w.extra))) break;
      this.waiters.shift();
      if (idle !== null) w.resolve(idle);
      else this.open(pool).then(w.resolve, w.reject);
    }
  }
}

/** Every tenant's pool, the reaper, and reconfiguration on reload. */
export class PoolManager {
  private readonly tenants = new Map<string, TenantPool>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    this.timer = setInterval(() => {
      for (const t of this.tenants.values()) t.reap();
    }, 1000);
    this.timer.unref();
  }

  /** The tenant's pool, created or updated with the current settings. */
  get(tenantId: string, settings: PoolSettings): TenantPool {
    let t = this.tenants.get(tenantId);
    if (t === undefined) {
      t = new TenantPool(tenantId, settings, this.metrics, this.log);
      this.tenants.set(tenantId, t);
    } else if (t.settings !== settings) {
      t.settings = settings;
    }
    return t;
  }

  /** After a reload: pools of tenants that are gone are closed. */
  retain(tenantIds: ReadonlySet<string>): void {
    for (const [id, t] of this.tenants) {
      if (!tenantIds.has(id)) {
        t.close();
        this.tenants.delete(id);
      }
    }
  }

  snapshot(): { tenant: string; mode: PoolMode; total: number; idle: number; active: number; waiting: number; max: number; keys: number }[] {
    return [...this.tenants.values()].map((t) => ({ tenant: t.tenantId, mode: t.settings.mode, max: t.settings.maxBackendConnections, keys: t.keyCount, ...t.size }));
  }

  close(): void {
    clearInterval(this.timer);
    for (const t of this.tenants.values()) t.close();
  }
}

/** The pool key: backends are shared only by clients whose login would be identical. */
export function poolKey(login: UpstreamLogin): string {
  return JSON.stringify([login.database, login.user, [...login.params].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))]);
}
