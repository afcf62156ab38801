/**
 * auth_query (issue 14): the SCRAM verifiers of roles a tenant manages itself, looked up on the
 * tenant's own server through a small pool of lookup connections per tenant (never the clients'
 * backend pool), cached with a TTL (found) or a shorter one (not found, refused), at most
 * `auth_lookups_per_second` lookups per tenant. What a reply means is auth-query-reply.ts's; which
 * verifier a login uses (and the mock for a refusal) is session/login/verifiers.ts's.
 *
 * The lookup connection takes nothing from the client's startup packet: its user, database and
 * options are the tenant's config, search_path is fixed to pg_catalog (PgBouncer CVE-2025-12819),
 * and the role name travels as the bind parameter $1.
 */
import pg from 'pg';
import { LRUCache } from 'lru-cache';
import type { AuthQuerySettings, TenantConfig } from '../config/schema.js';
import type { ScramVerifier } from '../config/scram-verifier.js';
import { Errors } from '../errors.js';
import { judgeAuthReply, type LookupResult } from './auth-query-reply.js';

/** Where the tenant's server is (the backend's host, port and TLS settings). */
export interface LookupTarget {
  readonly host: string;
  readonly port: number;
  readonly tls: 'disable' | 'require' | 'verify-full';
  readonly ca: Buffer | undefined;
}

/** How a lookup ended, for pgwarden_auth_query_lookups_total{outcome}. */
export type LookupOutcome = 'found' | 'refused' | 'error' | 'throttled';

export interface AuthLookupHooks {
  onLookup(tenant: string, outcome: LookupOutcome): void;
  onCache(tenant: string, result: 'hit' | 'miss'): void;
  onError(tenant: string, err: unknown): void;
}

/** Startup options of every lookup connection: constants, never the client's. */
const FIXED_OPTIONS = '-c search_path=pg_catalog -c DateStyle=ISO -c TimeZone=UTC';
const LOOKUP_OPTIONS = `${FIXED_OPTIONS} -c default_transaction_read_only=on`;
/**
 * The one connection that writes the customer's staff_access_log (audit/transparency.ts): the same
 * but for read-only transactions, which its one call (a SECURITY DEFINER function) needs off.
 */
const WRITER_OPTIONS = `${FIXED_OPTIONS} -c default_transaction_read_only=off`;
/** A lookup connection unused this long is closed. */
const IDLE_CLOSE_MS = 30_000;
/** A reply bigger than this (a hostile server's huge rows) ends the connection: the lookup fails. */
const MAX_REPLY_BYTES = 64 * 1024;
/** A failed proof refreshes a role's cached verifier at most this often. */
export const REFRESH_MIN_INTERVAL_MS = 1_000;
/** Logins waiting for a lookup connection, per tenant, beyond which they are throttled. */
const MAX_WAITING = 64;

interface Entry {
  readonly result: LookupResult;
  readonly fetchedAtMs: number;
}

/** Connecting or querying the tenant's server failed (down, wrong auth_user, timeout, hostile reply size). */
export class LookupFailed extends Error {}

/** A reply as text: the column count and the rows, every value a string or null (no driver type parsing). */
export interface RawReply {
  readonly columns: number;
  readonly rows: readonly (readonly (string | null)[])[];
}

/** Runs lookups against one tenant's server (a pool of pg connections; tests give a fake). */
export interface LookupRunner {
  run(user: string, now: () => number): Promise<LookupResult>;
  /**
   * Any other statement of pgwarden's own (schema-qualified, parameters bound) over the same
   * connections, with the same bounds (support grants, session/consent).
   */
  query(text: string, values: readonly unknown[], now: () => number): Promise<RawReply>;
  close(): void;
}

export interface AuthLookupOptions {
  readonly refreshMinIntervalMs?: number;
  readonly now?: () => number;
  readonly runner?: (settings: AuthQuerySettings, target: LookupTarget) => LookupRunner;
}

export class AuthLookups {
  private readonly tenants = new Map<string, TenantLookups>();
  private readonly refreshMinIntervalMs: number;
  private readonly now: () => number;
  private readonly runner: (settings: AuthQuerySettings, target: LookupTarget) => LookupRunner;

  constructor(
    private readonly hooks: AuthLookupHooks,
    opts: AuthLookupOptions = {},
  ) {
    this.refreshMinIntervalMs = opts.refreshMinIntervalMs ?? REFRESH_MIN_INTERVAL_MS;
    this.now = opts.now ?? Date.now;
    this.runner = opts.runner ?? ((settings, target) => new LookupPool(settings, target));
  }

  /**
   * The verifier of `user` on `tenant`'s server, or why it may not log in. Throws PgError 08006
   * (the server cannot be asked) or 53300 (too many lookups right now).
   */
  async find(tenant: TenantConfig, target: LookupTarget, user: string): Promise<LookupResult> {
    const t = this.stateFor(tenant, target);
    const hit = t.cache.get(user);
    if (hit !== undefined) {
      this.hooks.onCache(tenant.id, 'hit');
      return hit.result;
    }
    this.hooks.onCache(tenant.id, 'miss');
    let pending = t.inflight.get(user);
    if (pending === undefined) {
      if (!t.takeToken(this.now())) {
        this.hooks.onLookup(tenant.id, 'throttled');
        throw Errors.tooManyAttempts('auth_query_throttled');
      }
      pending = this.lookup(t, tenant.id, user).finally(() => t.inflight.delete(user));
      t.inflight.set(user, pending);
    }
    return pending;
  }

  private async lookup(t: TenantLookups, tenantId: string, user: string): Promise<LookupResult> {
    let result: LookupResult;
    try {
      result = await t.pool.run(user, this.now);
    } catch (err) {
      this.hooks.onLookup(tenantId, err instanceof LookupThrottled ? 'throttled' : 'error');
      if (err instanceof LookupThrottled) throw Errors.tooManyAttempts('auth_query_throttled');
      this.hooks.onError(tenantId, err);
      throw Errors.upstreamConnect('auth_query_failed', err);
    }
    this.hooks.onLookup(tenantId, result.ok ? 'found' : 'refused');
    if (result.ok) t.noteIterations(result.verifier.iterations);
    const ttl = result.ok ? t.settings.cacheTtlMs : t.settings.negativeCacheTtlMs;
    if (ttl > 0) t.cache.set(user, { result, fetchedAtMs: this.now() }, { ttl });
    return result;
  }

  /**
   * Runs one of pgwarden's own statements on the tenant's lookup connections (the pool auth_query
   * uses, without its token bucket: callers are past a verified staff token or a timer). Throws
   * LookupFailed (or LookupThrottled) when the server cannot be asked.
   */
  query(tenant: TenantConfig, target: LookupTarget, text: string, values: readonly unknown[]): Promise<RawReply> {
    return this.stateFor(tenant, target).pool.query(text, values, this.now);
  }

  /**
   * A proof failed against `verifier`, found by a lookup: the password may have changed, so the
   * next login looks the role up again, at most once per refresh interval per role (a storm of
   * wrong passwords for one role makes about one lookup a second).
   */
  proofFailed(tenantId: string, user: string, verifier: ScramVerifier): void {
    const t = this.tenants.get(tenantId);
    const entry = t?.cache.get(user);
    if (t === undefined || entry === undefined || !entry.result.ok || entry.result.verifier !== verifier) return;
    if (this.now() - entry.fetchedAtMs >= this.refreshMinIntervalMs) t.cache.delete(user);
  }

  /**
   * Iteration counts of the verifiers found on the tenant's server (count → how many lookups), so
   * a mock verifier can show the count real roles there show (its scram_iterations may not be 4096).
   */
  iterationsSeen(tenantId: string): ReadonlyMap<number, number> | undefined {
    return this.tenants.get(tenantId)?.iterations;
  }

  /** The tenant's server refused the verifier pgwarden used (it changed there): look it up again next time. */
  forget(tenantId: string, user: string): void {
    this.tenants.get(tenantId)?.cache.delete(user);
  }

  /** Keeps the state of these tenants only (a reload or catalog change removed the others). */
  retain(ids: ReadonlySet<string>): void {
    for (const [id, t] of this.tenants) {
      if (ids.has(id)) continue;
      t.pool.close();
      this.tenants.delete(id);
    }
  }

  close(): void {
    for (const t of this.tenants.values()) t.pool.close();
    this.tenants.clear();
  }

  /** A tenant whose auth_* settings or server changed starts afresh: new pool, empty cache. */
  private stateFor(tenant: TenantConfig, target: LookupTarget): TenantLookups {
    const settings = tenant.authQuery!;
    const key = JSON.stringify([target.host, target.port, target.tls, target.ca?.toString('base64') ?? null, settings]);
    let t = this.tenants.get(tenant.id);
    if (t !== undefined && t.key !== key) {
      t.pool.close();
      t = undefined;
    }
    if (t === undefined) {
      t = new TenantLookups(key, settings, this.runner(settings, target), this.now);
      this.tenants.set(tenant.id, t);
    }
    return t;
  }
}

/** Too many logins already wait for a lookup connection. */
export class LookupThrottled extends Error {}

/** One tenant's cache, in-flight lookups, token bucket and pool. */
class TenantLookups {
  readonly cache: LRUCache<string, Entry>;
  readonly inflight = new Map<string, Promise<LookupResult>>();
  readonly iterations = new Map<number, number>();
  private tokens: number;
  private readonly burst: number;
  private lastRefillMs: number;

  constructor(
    readonly key: string,
    readonly settings: AuthQuerySettings,
    readonly pool: LookupRunner,
    now: () => number,
  ) {
    this.lastRefillMs = now();
    this.cache = new LRUCache<string, Entry>({ max: settings.cacheSize, ttl: Math.max(settings.cacheTtlMs, settings.negativeCacheTtlMs, 1),
      ttlResolution: 0,
      perf: { now },
    });
    this.burst = Math.max(1, Math.ceil(settings.lookupsPerSecond * 2));
    this.tokens = this.burst;
  }

  /** A few distinct counts at most in practice; bounded all the same (a hostile server could vary them). */
  noteIterations(n: number): void {
    if (this.iterations.size >= 64 && !this.iterations.has(n)) return;
    this.iterations.set(n, (this.iterations.get(n) ?? 0) + 1);
  }

  takeToken(nowMs: number): boolean {
    this.tokens = Math.min(this.burst, this.tokens + ((nowMs - this.lastRefillMs) / 1000) * this.settings.lookupsPerSecond);
    this.lastRefillMs = nowMs;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

/** Text for every column: pgwarden judges the values itself (no driver type parsing). */
const AS_TEXT = { getTypeParser: () => (v: string) => v } as unknown as pg.CustomTypesConfig;

/** Which connections a pool opens: read-only lookups (auth_query, grants) or the transparency writer. */
export type LookupMode = 'lookup' | 'writer';

/**
 * At most `poolSize` lookup connections to one tenant's server; idle ones close after a while.
 * Exported for the transparency writer, which opens its own (mode 'writer', pool size 1).
 */
export class LookupPool implements LookupRunner {
  private readonly idle: { client: pg.Client; timer: NodeJS.Timeout }[] = [];
  private busy = 0;
  private readonly waiting: (() => void)[] = [];
  private closed = false;

  constructor(
    private readonly settings: AuthQuerySettings,
    private readonly target: LookupTarget,
    private readonly mode: LookupMode = 'lookup',
  ) {}

  async run(user: string, now: () => number): Promise<LookupResult> {
    const res = await this.query(this.settings.query, [user], now);
    return judgeAuthReply(res.columns, res.rows, user, now());
  }

  async query(text: string, values: readonly unknown[], now: () => number): Promise<RawReply> {
    const deadline = now() + this.settings.timeoutMs;
    await this.slot(deadline, now);
    let client: pg.Client | undefined;
    let healthy = false;
    try {
      client = this.takeIdle() ?? (await this.connect());
      const res = await withTimeout(
        client.query<(string | null)[]>({ text, values: [...values], rowMode: 'array', types: AS_TEXT }),
        Math.max(1, deadline - now()),
        client,
      );
      healthy = true;
      return { columns: res.fields.length, rows: res.rows };
    } finally {
      if (client !== undefined) this.giveBack(client, healthy);
      this.busy--;
      this.waiting.shift()?.();
    }
  }

  private slot(deadline: number, now: () => number): Promise<void> {
    if (this.closed) return Promise.reject(new LookupFailed('lookup pool closed'));
    if (this.busy < this.settings.poolSize) {
      this.busy++;
      return Promise.resolve();
    }
    if (this.waiting.length >= MAX_WAITING) return Promise.reject(new LookupThrottled());
    return new Promise((resolve, reject) => {
      const go = (): void => {
        clearTimeout(timer);
        this.busy++;
        resolve();
      };
      const timer = setTimeout(() => {
        const i = this.waiting.indexOf(go);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(new LookupFailed('timed out waiting for a lookup connection'));
      }, Math.max(1, deadline - now()));
      this.waiting.push(go);
    });
  }

  private takeIdle(): pg.Client | undefined {
    const e = this.idle.pop();
    if (e === undefined) return undefined;
    clearTimeout(e.timer);
    return e.client;
  }

  private async connect(): Promise<pg.Client> {
    const t = this.target;
    const client = new pg.Client({
      host: t.host,
      port: t.port,
      user: this.settings.user,
      password: process.env[this.settings.passwordEnv] ?? '',
      database: this.settings.database,
      options: this.mode === 'writer' ? WRITER_OPTIONS : LOOKUP_OPTIONS,
      application_name: this.mode === 'writer' ? 'pgwarden transparency' : 'pgwarden auth_query',
      // verify-full: the CA's chain and the host name (pg sends SNI for a name; an address is checked against IP SANs).
      ssl: t.tls === 'disable' ? false : t.tls === 'require' ? { rejectUnauthorized: false } : { ...(t.ca === undefined ? {} : { ca: t.ca }), rejectUnauthorized: true },
      connectionTimeoutMillis: this.settings.timeoutMs,
      statement_timeout: this.settings.timeoutMs,
    });
    client.on('error', () => undefined); // a dropped idle connection is noticed at its next use
    guardStreams(client);
    try {
      await client.connect();
    } catch (err) {
      destroy(client);
      throw new LookupFailed('could not connect for auth_query', { cause: err });
    }
    return client;
  }

  private giveBack(client: pg.Client, healthy: boolean): void {
    if (!healthy || this.closed) {
      destroy(client);
      return;
    }
    byteCounter(client).n = 0;
    const drop = (): void => {
      const i = this.idle.findIndex((e) => e.client === client);
      if (i < 0) return;
      clearTimeout(this.idle[i]!.timer);
      this.idle.splice(i, 1);
      destroy(client);
    };
    const timer = setTimeout(drop, IDLE_CLOSE_MS);
    timer.unref();
    // A server restart or a dropped idle connection must not cost the next login its lookup.
    if (!IDLE_WATCHED.has(client)) {
      IDLE_WATCHED.add(client);
      client.on('end', drop);
      client.on('error', drop);
    }
    this.idle.push({ client, timer });
  }

  close(): void {
    this.closed = true;
    for (const e of this.idle.splice(0)) {
      clearTimeout(e.timer);
      destroy(e.client);
    }
  }
}

/** pg keeps its socket on `connection.stream` (replaced by the TLS socket after SSLRequest). */
type DataStream = NodeJS.EventEmitter & { destroy(err?: Error): void };
interface WithStream {
  connection: { stream: DataStream; attachListeners(stream: DataStream): void };
}
const COUNTERS = new WeakMap<pg.Client, { n: number }>();
const IDLE_WATCHED = new WeakSet<pg.Client>();
const byteCounter = (client: pg.Client): { n: number } => COUNTERS.get(client) ?? { n: 0 };

/**
 * The tenant's server is hostile input, and pg parses its bytes in a socket 'data' listener: a
 * malformed message (a DataRow claiming more bytes than it holds) throws there, which would be an
 * uncaught exception taking the whole process down (found by the auth_query fuzzer). So every
 * stream pg reads from (the TCP socket, or the TLS socket after SSLRequest) gets its listeners
 * wrapped: a throw ends that one lookup connection. pg also buffers whole results, so more than
 * MAX_REPLY_BYTES per lookup (login included) ends the connection too.
 */
function guardStreams(client: pg.Client): void {
  const counter = { n: 0 };
  COUNTERS.set(client, counter);
  const conn = (client as unknown as WithStream).connection;
  const attach = conn.attachListeners.bind(conn);
  conn.attachListeners = (stream: DataStream): void => {
    const before = new Set(stream.listeners('data'));
    attach(stream);
    for (const listener of stream.listeners('data')) {
      if (before.has(listener)) continue;
      stream.removeListener('data', listener as (...args: unknown[]) => void);
      stream.on('data', (chunk: Buffer) => {
        counter.n += chunk.length;
        if (counter.n > MAX_REPLY_BYTES) {
          stream.destroy(new Error('auth_query reply too large'));
          return;
        }
        try {
          (listener as (chunk: Buffer) => void).call(stream, chunk);
        } catch (err) {
          stream.destroy(err instanceof Error ? err : new Error(String(err)));
        }
      });
    }
  };
}

function destroy(client: pg.Client): void {
  try {
    (client as unknown as WithStream).connection.stream.destroy();
  } catch {
    // not connected yet
  }
  client.end().catch(() => undefined);
}

async function withTimeout<T>(p: Promise<T>, ms: number, client: pg.Client): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          destroy(client);
          reject(new LookupFailed('auth_query timed out'));
        }, ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
