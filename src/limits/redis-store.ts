/**
 * RedisLimitStore: the LimitStore shared by every instance through Redis (SECURITY.md rule 9).
 * Connection slots are leases (a count per instance, counted only while the instance renews its
 * liveness), rate tokens and auth cool-downs are Lua scripts of one round trip each, and every call
 * is bounded by `commandTimeoutMs`. When Redis fails or is slow the store enforces this instance's
 * share of each limit locally (`degraded_local`) until the heartbeat finds Redis again. Which keys
 * and limits apply is the caller's business (store.ts).
 *
 * Redis layout (P = keyPrefix):
 *   P instances           ZSET  member → expiry (ms, Redis TIME), renewed by every heartbeat
 *   P conn:…              HASH  member → that instance's slots under the key
 *   P rate:…              HASH  tokens, at (ms): a token bucket
 *   P auth:…:failures     STRING failures within the window (PEXPIRE windowMs)
 *   P auth:…:cooldown     STRING present while the key is locked out (PX cooldownMs)
 * The member is `<instanceId>:<boot id>`, so a restarted process never inherits (and never renews)
 * the counts its previous incarnation left behind.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Redis, type RedisOptions } from 'ioredis';
import {
  LocalLimitStore,
  type AcquireResult,
  type AdmitResult,
  type Lease,
  type LimitMode,
  type LimitStore,
  type LockoutRule,
  type RateRule,
  type SlotRequest,
} from './store.js';

/** The subset of a pino logger the Redis clients use. */
export interface RedisLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

export interface RedisLimitStoreOptions {
  readonly url: string;
  readonly instanceId: string;
  /** Default "pgwarden:". */
  readonly keyPrefix?: string;
  /** Upper bound for any one Redis call. Default 250. */
  readonly commandTimeoutMs?: number;
  /** An instance that stops renewing stops counting after this long. Default 10 000. */
  readonly leaseTtlMs?: number;
  /** Called once per transition between 'redis' and 'degraded_local' (not for the first, healthy start). */
  readonly onModeChange?: (mode: LimitMode, cause: string) => void;
  readonly log?: RedisLog;
}

const DEFAULT_PREFIX = 'pgwarden:';
const DEFAULT_COMMAND_TIMEOUT_MS = 250;
const DEFAULT_LEASE_TTL_MS = 10_000;
const RETRY_BASE_MS = 50;
const RETRY_MAX_MS = 1_000;
const RETRY_JITTER_MS = 100;
/** Keys written per heartbeat script, so one script never blocks Redis for long. */
const HEARTBEAT_CHUNK_KEYS = 100;
/** Heartbeats a recovery may take before local changes stop racing it (then the next tick retries). */
const RECOVERY_ATTEMPTS = 3;

/** How long to wait for the TCP connect and the first ready: a few command timeouts, at least 1 s. */
export function connectTimeoutMs(commandTimeoutMs: number): number {
  return Math.max(1_000, 4 * commandTimeoutMs);
}

/**
 * ioredis options that bound every call: nothing queues while disconnected, in-flight commands fail on
 * disconnect and are never replayed (the caller has already answered from local state), and reconnects
 * back off to at most ~1 s. The caller must attach an 'error' listener and call connect().
 */
export function boundedRedisOptions(commandTimeoutMs: number, connectionName: string) {
  return {
    lazyConnect: true,
    connectionName,
    disableClientInfo: true,
    commandTimeout: commandTimeoutMs,
    connectTimeout: connectTimeoutMs(commandTimeoutMs),
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    retryStrategy: (times: number) =>
      Math.min(RETRY_BASE_MS * 2 ** Math.min(times - 1, 16), RETRY_MAX_MS) + Math.floor(Math.random() * RETRY_JITTER_MS),
  } satisfies RedisOptions;
}

/**
 * Resolves true once `client` is ready; false after `timeoutMs`, or as soon as a connection attempt
 * fails (Redis down: no point waiting, ioredis keeps retrying in the background). Never rejects.
 */
export function waitReady(client: Redis, timeoutMs: number): Promise<boolean> {
  if (client.status === 'ready') return Promise.resolve(true);
  return new Promise((resolve) => {
    const settle = (ready: boolean): void => {
      clearTimeout(timer);
      client.removeListener('ready', onReady);
      client.removeListener('reconnecting', onFailed);
      client.removeListener('end', onFailed);
      resolve(ready);
    };
    const onReady = (): void => settle(true);
    const onFailed = (): void => settle(false);
    const timer = setTimeout(onFailed, timeoutMs);
    client.once('ready', onReady);
    client.once('reconnecting', onFailed);
    client.once('end', onFailed);
  });
}

/** A bounded label for logs, metrics and onModeChange: never the raw error text. */
export function redisFailureCause(err: unknown): string {
  const message = err instanceof Error ? err.message : '';
  if (message === 'Command timed out') return 'timeout';
  if (message.startsWith("Stream isn't writeable") || message === 'Connection is closed.') return 'unreachable';
  if (err instanceof Error && err.name === 'MaxRetriesPerRequestError') return 'connection_lost';
  if (err instanceof Error && err.name === 'ReplyError') return 'redis_error';
  return 'error';
}

// ------------------------------------------------------------------ Lua

interface Script {
  readonly lua: string;
  readonly sha: string;
}

function script(lua: string): Script {
  return { lua, sha: createHash('sha1').update(lua).digest('hex') };
}

/** Shared by the lease scripts. Scripts run with RESP2 replies, so a missing ZSCORE is `false`. */
const LUA_HELPERS = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Renews this instance's liveness, forgets expired instances, returns the live count.
local function renew(instances, member, now, ttl)
  redis.call('ZADD', instances, now + ttl, member)
  redis.call('ZREMRANGEBYSCORE', instances, '-inf', now)
  redis.call('PEXPIRE', instances, ttl * 3)
  return redis.call('ZCARD', instances)
end
-- Sum of the live instances' counts under one key; fields of dead instances are deleted.
local function live_sum(instances, key, member)
  local sum = 0
  local fields = redis.call('HGETALL', key)
  for j = 1, #fields, 2 do
    local field, n = fields[j], tonumber(fields[j + 1]) or 0
    if field == member or redis.call('ZSCORE', instances, field) then
      if n > 0 then sum = sum + n end
    else
      redis.call('HDEL', key, field)
    end
  end
  return sum
end
`;

/**
 * KEYS: instances, then one hash per slot key. ARGV: member, ttlMs, then one limit per key.
 * Returns {1, live, count1, …} (counts after taking the slot) or {0, live, refusedIndex}.
 */
const ACQUIRE = script(`${LUA_HELPERS}
local member, ttl = ARGV[1], tonumber(ARGV[2])
local live = renew(KEYS[1], member, now_ms(), ttl)
local sums = {}
for i = 2, #KEYS do
  local sum = live_sum(KEYS[1], KEYS[i], member)
  if sum >= tonumber(ARGV[i + 1]) then return {0, live, i - 2} end
  sums[i - 1] = sum
end
local out = {1, live}
for i = 2, #KEYS do
  redis.call('HINCRBY', KEYS[i], member, 1)
  redis.call('PEXPIRE', KEYS[i], ttl * 3)
  out[i + 1] = sums[i - 1] + 1
end
return out
`);

/** KEYS: one hash per slot key. ARGV: member. Never leaves a count below zero. */
const RELEASE = script(`
for i = 1, #KEYS do
  if redis.call('HINCRBY', KEYS[i], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[i], ARGV[1]) end
end
return 0
`);

/**
 * KEYS: instances, then hashes. ARGV: member, ttlMs, then this instance's true count per key (0 deletes
 * the field). Returns {live, liveSum1, …}.
 */
const HEARTBEAT = script(`${LUA_HELPERS}
local member, ttl = ARGV[1], tonumber(ARGV[2])
local out = {renew(KEYS[1], member, now_ms(), ttl)}
for i = 2, #KEYS do
  local n = tonumber(ARGV[i + 1])
  if n > 0 then
    redis.call('HSET', KEYS[i], member, n)
    redis.call('PEXPIRE', KEYS[i], ttl * 3)
  else
    redis.call('HDEL', KEYS[i], member)
  end
  out[i] = live_sum(KEYS[1], KEYS[i], member)
end
return out
`);

/** KEYS: instances, then hashes. ARGV: member. What close() leaves behind: nothing. */
const FORGET = script(`
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 2, #KEYS do redis.call('HDEL', KEYS[i], ARGV[1]) end
return 0
`);

/**
 * KEYS: the cool-down keys (ARGV[1] of them), then the bucket if a rate applies. ARGV: lock count,
 * ratePerSecond, burst. Returns 0 ok, 1 rate_limited, 2 locked_out (no token taken when locked out).
 */
const ADMIT = script(`
local locks = tonumber(ARGV[1])
for i = 1, locks do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 2 end
end
if #KEYS == locks then return 0 end
local bucket, rate, burst = KEYS[locks + 1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', bucket, 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
else
  tokens = math.min(burst, tokens + math.max(0, now - at) / 1000 * rate)
end
local result = 1
if tokens >= 1 then
  tokens = tokens - 1
  result = 0
end
redis.call('HSET', bucket, 'tokens', tostring(tokens), 'at', tostring(now))
-- Once the bucket would be full again, forgetting it changes nothing.
redis.call('PEXPIRE', bucket, math.min(math.ceil(math.max(burst, 1) / rate * 1000) + 1000, 86400000))
return result
`);

/**
 * KEYS: (failures, cooldown) per rule. ARGV: (maxFailures, windowMs, cooldownMs) per rule. Failures
 * while a key is already cooling down are not counted (the local store ignores them the same way).
 */
const NOTE_FAILURE = script(`
for i = 1, #KEYS, 2 do
  local j = (i - 1) / 2 * 3
  local max_failures, window, cooldown = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    local n = redis.call('INCR', KEYS[i])
    if n == 1 then redis.call('PEXPIRE', KEYS[i], math.max(1, window)) end
    if n >= max_failures then
      redis.call('SET', KEYS[i + 1], '1', 'PX', cooldown)
      redis.call('DEL', KEYS[i])
    end
  end
end
return 0
`);

const ALL_SCRIPTS = [ACQUIRE, RELEASE, HEARTBEAT, FORGET, ADMIT, NOTE_FAILURE];

/** An integer array reply, or an error: a malformed reply is treated like a failed call. */
function intArray(reply: unknown, minLength: number): number[] {
  if (!Array.isArray(reply) || reply.length < minLength) throw new Error('unexpected reply from Redis script');
  return reply.map((v: unknown) => {
    if (typeof v !== 'number' || !Number.isInteger(v)) throw new Error('unexpected reply from Redis script');
    return v;
  });
}

/** This instance's share of a cluster-wide limit: 0 stays 0, anything else is at least 1. */
function shareOf(limit: number, instances: number): number {
  return limit <= 0 ? 0 : Math.max(1, Math.floor(limit / instances));
}

const UNLIMITED = Number.MAX_SAFE_INTEGER;

// ------------------------------------------------------------------ the store

export class RedisLimitStore implements LimitStore {
  /** Hash field and liveness member of this process: `<instanceId>:<boot id>`. */
  readonly memberId: string;
  private readonly client: Redis;
  /** This instance's own holdings, kept in every mode; the truth the heartbeat writes to Redis. */
  private readonly local = new LocalLimitStore();
  private readonly prefix: string;
  private readonly instancesKey: string;
  private readonly commandTimeoutMs: number;
  private readonly leaseTtlMs: number;
  private readonly onModeChange: ((mode: LimitMode, cause: string) => void) | undefined;
  private readonly log: RedisLog | undefined;
  /** Slot keys whose field may exist in Redis (held now, or held since the last heartbeat). */
  private readonly tracked = new Set<string>();
  /** Acquire scripts in flight per key: counted as held by a heartbeat so it never undercounts. */
  private readonly pending = new Map<string, number>();
  /** Cluster-wide count per tracked key, as last seen. */
  private readonly lastSeen = new Map<string, number>();
  private currentMode: LimitMode = 'redis';
  /** Whether Redis has our scripts and counts (false until the first heartbeat succeeds). */
  private synced = false;
  /** Bumped by every local change Redis does not see (made while not in 'redis' mode). */
  private unsyncedChanges = 0;
  /** Bumped by every failure, so a recovery that raced one does not count. */
  private failures = 0;
  private liveCount = 1;
  private errorLogged = false;
  private closed = false;
  private timer: NodeJS.Timeout | null = null;
  private heartbeatInFlight: Promise<void> | null = null;
  private closing: Promise<void> | null = null;

  private constructor(opts: RedisLimitStoreOptions) {
    this.memberId = `${opts.instanceId}:${randomBytes(6).toString('hex')}`;
    this.prefix = opts.keyPrefix ?? DEFAULT_PREFIX;
    this.instancesKey = `${this.prefix}instances`;
    this.commandTimeoutMs = opts.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.leaseTtlMs = Math.max(1, Math.ceil(opts.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS));
    this.onModeChange = opts.onModeChange;
    this.log = opts.log;
    this.client = new Redis(opts.url, boundedRedisOptions(this.commandTimeoutMs, 'pgwarden-limits'));
  }

  /** Connects and writes the first heartbeat; with Redis down it resolves in degraded_local and keeps trying. */
  static async open(opts: RedisLimitStoreOptions): Promise<RedisLimitStore> {
    const store = new RedisLimitStore(opts);
    await store.start();
    return store;
  }

  get mode(): LimitMode {
    return this.currentMode;
  }

  /** Instances renewing their liveness, as last seen in Redis (at least 1: this one). */
  get liveInstances(): number {
    return this.liveCount;
  }

  async admit(rate: RateRule | null, lockouts: readonly LockoutRule[]): Promise<AdmitResult> {
    const rule = rate !== null && rate.ratePerSecond > 0 ? rate : null;
    if (rule === null && lockouts.length === 0) return 'ok';
    if (!this.usesRedis()) return this.admitLocally(rule, lockouts);
    const keys = lockouts.map((l) => this.cooldownKey(l.key));
    if (rule !== null) keys.push(this.prefix + rule.key);
    try {
      const reply = await this.run(ADMIT, keys, [lockouts.length, rule?.ratePerSecond ?? 0, rule?.burst ?? 0]);
      if (reply === 0) return 'ok';
      if (reply === 1) return 'rate_limited';
      if (reply === 2) return 'locked_out';
      throw new Error('unexpected reply from Redis script');
    } catch (err) {
      this.fail(err);
      return this.admitLocally(rule, lockouts);
    }
  }

  async noteAuthFailure(lockouts: readonly LockoutRule[]): Promise<void> {
    const rules = lockouts.filter((l) => l.maxFailures > 0 && l.cooldownMs > 0);
    if (rules.length === 0) return;
    // Always counted locally too, so a switch to degraded_local keeps the recent failures.
    this.local.noteAuthFailureSync(rules.map((l) => this.localLockout(l)));
    if (!this.usesRedis()) return;
    const keys = rules.flatMap((l) => [`${this.prefix}${l.key}:failures`, this.cooldownKey(l.key)]);
    // PEXPIRE and SET PX take whole milliseconds.
    const args = rules.flatMap((l) => [l.maxFailures, Math.ceil(l.windowMs), Math.ceil(l.cooldownMs)]);
    try {
      await this.run(NOTE_FAILURE, keys, args);
    } catch (err) {
      this.fail(err);
    }
  }

  async claimOnce(key: string, ttlMs: number): Promise<boolean> {
    const ttl = Math.max(1, Math.ceil(ttlMs));
    if (!this.usesRedis()) return this.local.claimOnceSync(key, ttl);
    try {
      const reply = await this.client.set(this.prefix + key, '1', 'PX', ttl, 'NX');
      // Also remembered here, so a later switch to degraded_local still refuses a replay on this instance.
      this.local.claimOnceSync(key, ttl);
      return reply === 'OK';
    } catch (err) {
      this.fail(err);
      return this.local.claimOnceSync(key, ttl);
    }
  }

  async acquire(slots: readonly SlotRequest[]): Promise<AcquireResult> {
    if (slots.length === 0 || !this.usesRedis()) return this.acquireLocally(slots);
    const keys = slots.map((s) => s.key);
    for (const k of keys) {
      this.tracked.add(k);
      this.pending.set(k, (this.pending.get(k) ?? 0) + 1);
    }
    let reply: number[];
    try {
      const raw = await this.run(
        ACQUIRE,
        [this.instancesKey, ...keys.map((k) => this.prefix + k)],
        [this.memberId, this.leaseTtlMs, ...slots.map((s) => s.limit)],
      );
      reply = intArray(raw, 3);
      if (reply[0] === 1 && reply.length !== 2 + keys.length) throw new Error('unexpected reply from Redis script');
    } catch (err) {
      this.endPending(keys);
      // The script may have run (or still run); the next heartbeat overwrites our field with the truth.
      this.fail(err);
      return this.acquireLocally(slots);
    }
    this.endPending(keys);
    const [ok, live = 1, ...counts] = reply;
    this.liveCount = Math.max(1, live);
    if (ok !== 1) return { ok: false, refused: counts[0] ?? 0 };
    // Redis decided; the local store only records this instance's holdings.
    const local = this.local.acquireSync(keys.map((key) => ({ key, limit: UNLIMITED })));
    assert(local.ok, 'a local record without a limit is never refused');
    keys.forEach((k, i) => this.lastSeen.set(k, counts[i] ?? 0));
    return { ok: true, lease: this.wrapLease(local.lease, keys), active: counts };
  }

  active(key: string): number {
    const local = this.local.active(key);
    if (this.currentMode !== 'redis') return local;
    return Math.max(local, this.lastSeen.get(key) ?? 0);
  }

  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  // ---------------------------------------------------------------- internals

  private async start(): Promise<void> {
    this.client.on('error', (err: Error) => {
      // Every reconnect attempt fails the same way while Redis is down: log the first only.
      if (this.errorLogged) return;
      this.errorLogged = true;
      this.log?.warn({ err: err.message, cause: redisFailureCause(err) }, 'limits: Redis connection error');
    });
    this.client.on('close', () => this.markDegraded('connection_lost'));
    this.client.on('ready', () => {
      this.errorLogged = false;
      void this.heartbeat();
    });
    // Failures arrive through 'error' and ioredis keeps reconnecting per retryStrategy.
    this.client.connect().catch(() => undefined);
    await waitReady(this.client, connectTimeoutMs(this.commandTimeoutMs));
    await this.heartbeat();
    this.timer = setInterval(() => void this.heartbeat(), Math.max(50, Math.floor(this.leaseTtlMs / 3)));
    this.timer.unref();
  }

  /** Redis answers only in 'redis' mode; otherwise (and after close) the local share does. */
  private usesRedis(): boolean {
    return this.currentMode === 'redis' && this.synced && !this.closed;
  }

  private acquireLocally(slots: readonly SlotRequest[]): AcquireResult {
    const n = this.liveCount;
    const result = this.local.acquireSync(slots.map((s) => ({ key: s.key, limit: shareOf(s.limit, n) })));
    if (!result.ok) return result;
    const keys = slots.map((s) => s.key);
    for (const k of keys) this.tracked.add(k);
    this.unsyncedChanges++;
    return { ok: true, lease: this.wrapLease(result.lease, keys), active: result.active };
  }

  private admitLocally(rate: RateRule | null, lockouts: readonly LockoutRule[]): AdmitResult {
    const n = this.liveCount;
    const share = rate === null ? null : { key: rate.key, ratePerSecond: rate.ratePerSecond / n, burst: shareOf(rate.burst, n) };
    return this.local.admitSync(share, lockouts.map((l) => this.localLockout(l)));
  }

  /** A lockout scaled to this instance's share, like every other limit in degraded mode. */
  private localLockout(l: LockoutRule): LockoutRule {
    return { ...l, maxFailures: shareOf(l.maxFailures, this.liveCount) };
  }

  private wrapLease(local: Lease, keys: readonly string[]): Lease {
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        local.release();
        for (const k of keys) {
          const seen = this.lastSeen.get(k);
          if (seen !== undefined) this.lastSeen.set(k, Math.max(this.local.active(k), seen - 1));
        }
        if (!this.usesRedis()) {
          // Redis sees this at the next successful heartbeat, which writes the true counts.
          this.unsyncedChanges++;
          return;
        }
        // Fire and forget, bounded by commandTimeout; a lost decrement is repaired by the heartbeat.
        this.run(RELEASE, keys.map((k) => this.prefix + k), [this.memberId]).catch((err: unknown) => this.fail(err));
      },
    };
  }

  private endPending(keys: readonly string[]): void {
    for (const k of keys) {
      const n = (this.pending.get(k) ?? 1) - 1;
      if (n <= 0) this.pending.delete(k);
      else this.pending.set(k, n);
    }
  }

  /** One heartbeat at a time; callers share the one in flight. */
  private heartbeat(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.heartbeatInFlight ??= this.runHeartbeat().finally(() => {
      this.heartbeatInFlight = null;
    });
    return this.heartbeatInFlight;
  }

  /**
   * Renews liveness and writes this instance's true count under every tracked key (repairing any lost
   * increment or decrement), reading back the live instances and cluster-wide counts. Out of 'redis'
   * mode it is also the probe: success means Redis has our state again, so the store switches back.
   */
  private async runHeartbeat(): Promise<void> {
    const recovering = !this.synced || this.currentMode !== 'redis';
    try {
      if (recovering) {
        // Load every script once per (re)connection, so no caller pays a NOSCRIPT round trip later.
        await Promise.all(ALL_SCRIPTS.map((s) => this.client.script('LOAD', s.lua)));
      }
      for (let attempt = 1; ; attempt++) {
        const changesBefore = this.unsyncedChanges;
        const failuresBefore = this.failures;
        await this.writeCounts();
        if (!recovering || this.closed) return;
        // Some other call failed meanwhile: not a clean recovery; the next tick tries again.
        if (failuresBefore !== this.failures) return;
        // Local changes made while the heartbeat was in flight are not in Redis yet: write again.
        if (changesBefore === this.unsyncedChanges) break;
        if (attempt >= RECOVERY_ATTEMPTS) return;
      }
      const wasDegraded = this.currentMode !== 'redis';
      this.synced = true;
      if (wasDegraded) this.setMode('redis', 'recovered');
    } catch (err) {
      this.fail(err);
    }
  }

  private async writeCounts(): Promise<void> {
    const keys = [...this.tracked];
    for (let from = 0; from === 0 || from < keys.length; from += HEARTBEAT_CHUNK_KEYS) {
      if (this.closed) return;
      const chunk = keys.slice(from, from + HEARTBEAT_CHUNK_KEYS);
      // Counts are read in the same tick the script is sent, so any later change reaches Redis after it.
      const counts = chunk.map((k) => this.local.active(k) + (this.pending.get(k) ?? 0));
      const raw = await this.run(HEARTBEAT, [this.instancesKey, ...chunk.map((k) => this.prefix + k)], [this.memberId, this.leaseTtlMs, ...counts]);
      const reply = intArray(raw, 1 + chunk.length);
      this.liveCount = Math.max(1, reply[0] ?? 1);
      chunk.forEach((k, i) => {
        if (counts[i] === 0 && this.local.active(k) === 0 && !this.pending.has(k)) {
          this.tracked.delete(k);
          this.lastSeen.delete(k);
        } else {
          this.lastSeen.set(k, reply[i + 1] ?? 0);
        }
      });
    }
  }

  /** EVALSHA, falling back to EVAL if Redis lost the script (restart, SCRIPT FLUSH). Sends synchronously. */
  private async run(s: Script, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown> {
    try {
      return await this.client.evalsha(s.sha, keys.length, ...keys, ...args);
    } catch (err) {
      if (!(err instanceof Error && err.message.startsWith('NOSCRIPT'))) throw err;
      return await this.client.eval(s.lua, keys.length, ...keys, ...args);
    }
  }

  private cooldownKey(key: string): string {
    return `${this.prefix}${key}:cooldown`;
  }

  private fail(err: unknown): void {
    const cause = redisFailureCause(err);
    if (this.currentMode === 'redis' && !this.closed) {
      this.log?.warn({ err: err instanceof Error ? err.message : String(err), cause }, 'limits: Redis call failed');
    }
    this.markDegraded(cause);
  }

  private markDegraded(cause: string): void {
    if (this.closed) return;
    this.failures++;
    this.synced = false;
    this.setMode('degraded_local', cause);
  }

  private setMode(mode: LimitMode, cause: string): void {
    if (mode === this.currentMode) return;
    this.currentMode = mode;
    if (mode === 'degraded_local') {
      this.log?.warn({ cause, liveInstances: this.liveCount }, 'limits: Redis unavailable, enforcing this instance\'s share locally');
    } else {
      this.log?.info({ cause }, 'limits: Redis available again, counts reconciled');
    }
    try {
      this.onModeChange?.(mode, cause);
    } catch (err) {
      this.log?.warn({ err: err instanceof Error ? err.message : String(err) }, 'limits: onModeChange threw');
    }
  }

  private async shutdown(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.closed = true;
    // A heartbeat already sent reaches Redis before FORGET: same connection, in order.
    if (this.client.status === 'ready') {
      try {
        await this.run(FORGET, [this.instancesKey, ...[...this.tracked].map((k) => this.prefix + k)], [this.memberId]);
      } catch {
        // Best effort: unrenewed, our slots stop counting within leaseTtlMs anyway.
      }
    }
    this.client.disconnect();
  }
}
