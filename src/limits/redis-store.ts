/**
 * RedisLimitStore: the LimitStore shared by every instance through Redis (SECURITY.md rule 9).
 * Connection slots are leases (a count per instance, counted only while the instance renews its
 * liveness), rate tokens and auth cool-downs are Lua scripts of one round trip each (their keys and
 * replies are redis-scripts.ts's), and every call is bounded by `commandTimeoutMs`. When Redis fails
 * or is slow the store enforces this instance's share of each limit locally (`degraded_local`)
 * until the heartbeat finds Redis again. Which keys and limits apply is the caller's business
 * (store.ts); the connection itself is cluster/redis-connection.ts's.
 */
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { boundedRedisOptions, redisClientSettings, redisFailureCause, waitReady, type RedisClientOptions, type RedisLog } from '../cluster/redis-connection.js';
import { lockoutShare, rateShare, slotsShare } from './local-share.js';
import { ACQUIRE, ADMIT, ALL_SCRIPTS, COUNTS, FORGET, HEARTBEAT, NOTE_FAILURE, RELEASE, intArray, runScript, type Script } from './redis-scripts.js';
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

export interface RedisLimitStoreOptions extends RedisClientOptions {
  /** An instance that stops renewing stops counting after this long. Default 10 000. */
  readonly leaseTtlMs?: number;
  /** Called once per transition between 'redis' and 'degraded_local' (not for the first, healthy start). */
  readonly onModeChange?: (mode: LimitMode, cause: string) => void;
}

const DEFAULT_LEASE_TTL_MS = 10_000;
/** Keys written per heartbeat script, so one script never blocks Redis for long. */
const HEARTBEAT_CHUNK_KEYS = 100;
/** Heartbeats a recovery may take before local changes stop racing it (then the next tick retries). */
const RECOVERY_ATTEMPTS = 3;

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
  private readonly connectTimeoutMs: number;
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
    const settings = redisClientSettings(opts);
    this.memberId = settings.memberId;
    this.prefix = settings.prefix;
    this.instancesKey = `${this.prefix}instances`;
    this.connectTimeoutMs = settings.connectTimeoutMs;
    this.leaseTtlMs = Math.max(1, Math.ceil(opts.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS));
    this.onModeChange = opts.onModeChange;
    this.log = opts.log;
    this.client = new Redis(opts.url, boundedRedisOptions(settings.commandTimeoutMs, 'pgwarden-limits'));
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
    this.local.noteAuthFailureSync(rules.map((l) => lockoutShare(l, this.liveCount)));
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

  async clusterCounts(keys: readonly string[]): Promise<readonly number[] | null> {
    if (!this.usesRedis()) return null;
    if (keys.length === 0) return [];
    try {
      const counts = intArray(await this.run(COUNTS, [this.instancesKey, ...keys.map((k) => this.prefix + k)], []), keys.length);
      return counts.length === keys.length ? counts : null;
    } catch {
      // An admin read: it answers "not known" and leaves the mode to the limit calls and the heartbeat.
      return null;
    }
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
    await waitReady(this.client, this.connectTimeoutMs);
    await this.heartbeat();
    this.timer = setInterval(() => void this.heartbeat(), Math.max(50, Math.floor(this.leaseTtlMs / 3)));
    this.timer.unref();
  }

  /** Redis answers only in 'redis' mode; otherwise (and after close) the local share does. */
  private usesRedis(): boolean {
    return this.currentMode === 'redis' && this.synced && !this.closed;
  }

  private acquireLocally(slots: readonly SlotRequest[]): AcquireResult {
    const result = this.local.acquireSync(slotsShare(slots, this.liveCount));
    if (!result.ok) return result;
    const keys = slots.map((s) => s.key);
    for (const k of keys) this.tracked.add(k);
    this.unsyncedChanges++;
    return { ok: true, lease: this.wrapLease(result.lease, keys), active: result.active };
  }

  private admitLocally(rate: RateRule | null, lockouts: readonly LockoutRule[]): AdmitResult {
    const n = this.liveCount;
    return this.local.admitSync(
      rate === null ? null : rateShare(rate, n),
      lockouts.map((l) => lockoutShare(l, n)),
    );
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
        this.run(
          RELEASE,
          keys.map((k) => this.prefix + k),
          [this.memberId],
        ).catch((err: unknown) => this.fail(err));
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

  /** Sends synchronously: the script is on the wire before this returns. */
  private run(s: Script, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown> {
    return runScript(this.client, s, keys, args);
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
      this.log?.warn({ cause, liveInstances: this.liveCount }, "limits: Redis unavailable, enforcing this instance's share locally");
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
