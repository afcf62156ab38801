/**
 * Backend connections per tenant, pooled by (database, role, startup parameters).
 * A tenant's pools share its `max_backend_connections`; a client waiting for a backend is
 * served in arrival order and only ever by its own tenant's backends. Idle backends are watched
 * (a server that closes or talks out of turn is dropped), reaped after `backend_idle_timeout` or
 * `backend_lifetime`, and reset with DISCARD ALL when a session-mode client leaves.
 * Sessions decide when to take and give back; this file decides which connection and when to open one.
 */
import type { Socket } from 'node:net';
import { Backend as B } from '../protocol/codes.js';
import { FrameScanner, type ScanHandler } from '../protocol/frame-reader.js';
import { Limits } from '../protocol/codes.js';
import { Errors, PgError } from '../errors.js';
import type { Metrics } from '../observability/metrics.js';
import type { Logger } from '../observability/logger.js';
import { connectUpstream, type UpstreamConnection, type UpstreamLogin, type UpstreamTarget } from './upstream.js';
import type { PoolMode, PoolSettings } from '../config/schema.js';

/** One logged-in server connection. `state` changes only in this file. */
export class Backend {
  state: 'idle' | 'active' | 'resetting' | 'closed' = 'active';
  readonly createdAt = Date.now();
  lastUsedAt = Date.now();
  /** Cancel requests sent for this backend and not yet closed by the server: it is not reused before. */
  cancelsInFlight = 0;
  private releaseWhenCancelsDone: (() => void) | null = null;

  /** Server-side prepared statements (transaction mode's statement tracking), oldest first. */
  readonly prepared = new Set<string>();
  /** Listeners the pool attaches while the backend is idle or resetting (removed one by one, never all). */
  watchers: { data: (chunk: Buffer) => void; close: () => void } | null = null;

  constructor(
    readonly conn: UpstreamConnection,
    readonly key: string,
    readonly pool: TenantPool,
  ) {
    // Errors are always followed by 'close', which the owner of the moment handles.
    conn.socket.on('error', () => undefined);
  }

  watch(data: (chunk: Buffer) => void, close: () => void): void {
    this.unwatch();
    this.watchers = { data, close };
    this.conn.socket.on('data', data);
    this.conn.socket.on('close', close);
  }

  unwatch(): void {
    if (this.watchers === null) return;
    this.conn.socket.removeListener('data', this.watchers.data);
    this.conn.socket.removeListener('close', this.watchers.close);
    this.watchers = null;
  }

  get socket(): Socket {
    return this.conn.socket;
  }

  get processId(): number {
    return this.conn.processId;
  }

  /** Called by the cancel path; the backend is held back from reuse until the server closed the cancel connection. */
  cancelStarted(): void {
    this.cancelsInFlight++;
  }

  cancelFinished(): void {
    this.cancelsInFlight = Math.max(0, this.cancelsInFlight - 1);
    if (this.cancelsInFlight === 0 && this.releaseWhenCancelsDone !== null) {
      const f = this.releaseWhenCancelsDone;
      this.releaseWhenCancelsDone = null;
      f();
    }
  }

  /** Runs `f` now, or once the cancels in flight are done. */
  afterCancels(f: () => void): void {
    if (this.cancelsInFlight === 0) f();
    else this.releaseWhenCancelsDone = f;
  }
}

interface KeyPool {
  readonly key: string;
  readonly idle: Backend[];
  /** How new backends of this key log in: the latest client's credential (pass-through key or password). */
  login: UpstreamLogin;
  target: UpstreamTarget;
  /** ParameterStatus values from the first login, shown to clients that get a pooled backend. */
  parameters: Map<string, string> | null;
  /** Last acquire: a key nobody used for backend_idle_timeout, with no backend, is forgotten. */
  lastUsedAt: number;
  /** Backends of this key being opened (not yet in `all`). */
  opening: number;
}

interface Waiter {
  readonly key: string;
  /** Backends this waiter may open beyond max_backend_connections (a staff session's reserve). */
  readonly extra: number;
  readonly since: number;
  readonly resolve: (b: Backend) => void;
  readonly reject: (e: Error) => void;
  timer: NodeJS.Timeout | null;
}

const DISCARD_ALL = (() => {
  const text = Buffer.from('DISCARD ALL\0');
  const b = Buffer.allocUnsafe(5 + text.length);
  b[0] = 0x51; // Q
  b.writeUInt32BE(4 + text.length, 1);
  text.copy(b, 5);
  return b;
})();

const TERMINATE = Buffer.from([0x58, 0, 0, 0, 4]);

/** All pools of one tenant. */
export class TenantPool {
  private readonly pools = new Map<string, KeyPool>();
  private readonly waiters: Waiter[] = [];
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
    let pool = this.pools.get(key);
    if (pool === undefined) {
      pool = { key, idle: [], login, target, parameters: null, lastUsedAt: Date.now(), opening: 0 };
      this.pools.set(key, pool);
    } else {
      pool.login = login;
      pool.target = target;
      pool.lastUsedAt = Date.now();
    }
    const ready = this.takeIdle(pool);
    if (ready !== null) return ready;
    if (this.hasRoom(extra) || this.evictIdleOtherThan(key, extra)) return this.open(pool);
    const since = Date.now();
    const backend = await new Promise<Backend>((resolve, reject) => {
      const w: Waiter = { key, extra, since, resolve, reject, timer: null };
      w.timer = setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        this.metrics.limitRejections.inc({ tenant: this.tenantId, limit: 'pool_timeout' });
        reject(Errors.poolTimeout());
      }, this.settings.poolTimeoutMs);
      this.waiters.push(w);
    });
    this.metrics.poolWaitSeconds.observe({ tenant: this.tenantId }, (Date.now() - since) / 1000);
    return backend;
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
    b.afterCancels(() => {
      if (b.state === 'closed') return;
      if (reset) this.reset(b);
      else this.makeIdle(b);
    });
  }

  /** Closes a backend that is broken or whose session ended mid-conversation. */
  destroy(b: Backend): void {
    if (b.state === 'closed') return;
    const wasIdle = b.state === 'idle';
    b.state = 'closed';
    this.all.delete(b);
    if (wasIdle) {
      const pool = this.pools.get(b.key);
      const i = pool?.idle.indexOf(b) ?? -1;
      if (pool !== undefined && i >= 0) pool.idle.splice(i, 1);
    }
    b.unwatch();
    if (!b.socket.destroyed) b.socket.end(TERMINATE);
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
      while (pool.idle.length < this.settings.minIdleBackendConnections && this.total < this.settings.maxBackendConnections && !this.closed) {
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
    for (const w of this.waiters) inUse.add(w.key);
    for (const [key, pool] of this.pools) {
      if (pool.idle.length === 0 && pool.opening === 0 && !inUse.has(key) && !this.firstLogins.has(key) && now - pool.lastUsedAt >= this.settings.backendIdleTimeoutMs) {
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
    for (const w of this.waiters.splice(0)) {
      if (w.timer !== null) clearTimeout(w.timer);
      w.reject(Errors.adminShutdown('pool_closed'));
    }
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
    b.socket.pause();
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
      this.failWaiters(pool.key, err as Error);
      this.serviceWaiters();
      throw err;
    }
    pool.opening--;
    this.metrics.backendConnects.inc({ tenant: this.tenantId, outcome: 'ok' });
    this.metrics.backendConnectSeconds.observe({ tenant: this.tenantId, outcome: 'ok' }, Number(process.hrtime.bigint() - began) / 1e9);
    pool.parameters ??= new Map(conn.parameters);
    const b = new Backend(conn, pool.key, this);
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
    const i = this.waiters.findIndex((w) => w.key === b.key);
    if (i >= 0) {
      const w = this.waiters.splice(i, 1)[0]!;
      if (w.timer !== null) clearTimeout(w.timer);
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
    b.watch(
      () => this.destroy(b),
      () => this.destroy(b),
    );
    b.socket.resume();
    pool.idle.push(b);
    this.serviceWaiters();
  }

  /** DISCARD ALL, then idle if the server answers CommandComplete and ReadyForQuery 'I'; else closed. */
  private reset(b: Backend): void {
    const s = b.socket;
    let ok = true;
    let done = false;
    const finish = (good: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      b.unwatch();
      if (good) this.makeIdle(b);
      else this.destroy(b);
    };
    const handler: ScanHandler = {
      maxFrameLength: () => Limits.upstreamLoginMessageBytes,
      wantsBody: (type) => type === B.ReadyForQuery,
      onFrame: (type, _len, body) => {
        if (type === B.ErrorResponse) ok = false;
        if (type === B.ReadyForQuery) finish(ok && body?.[0] === 0x49);
      },
    };
    const scanner = new FrameScanner(handler);
    b.watch(
      (chunk: Buffer) => {
        if (scanner.scan(chunk) >= 0) finish(false);
      },
      () => finish(false),
    );
    const timer = setTimeout(() => finish(false), this.settings.connectTimeoutMs);
    b.prepared.clear(); // DISCARD ALL deallocates them
    s.resume();
    s.write(DISCARD_ALL);
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
    while (this.waiters.length > 0 && !this.closed) {
      const w = this.waiters[0]!;
      const pool = this.pools.get(w.key);
      if (pool === undefined) break;
      const idle = this.takeIdle(pool);
      if (idle === null && !(this.hasRoom(w.extra) || this.evictIdleOtherThan(w.key, w.extra))) break;
      this.waiters.shift();
      if (w.timer !== null) clearTimeout(w.timer);
      if (idle !== null) w.resolve(idle);
      else this.open(pool).then(w.resolve, w.reject);
    }
  }

  private failWaiters(key: string, err: Error): void {
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i]!;
      if (w.key !== key) continue;
      this.waiters.splice(i, 1);
      if (w.timer !== null) clearTimeout(w.timer);
      w.reject(err instanceof PgError ? err : Errors.upstreamConnect('backend_connect_failed', err));
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
