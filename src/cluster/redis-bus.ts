/**
 * RedisBus: the ClusterBus over Redis pub/sub, one channel (`<prefix>bus`) on a dedicated subscriber
 * connection, with suspensions also kept in a Redis SET (`<prefix>suspended`) so a starting instance
 * learns them, and staff-token revocations kept in a HASH (`<prefix>revoked`, field `jti:<id>` or
 * `sub:<id>`, value: until when in ms) for the same reason. What a message means (which session to cancel, what a suspension does) is left to the
 * handlers.
 *
 * Delivery: this instance handles its own publishes locally and synchronously (so they work while Redis
 * is down) and ignores their echo from the channel; every other instance handles them once, from the
 * channel. Each handler therefore fires exactly once per publish per instance that is subscribed.
 *
 * Failure: every call is bounded by commandTimeoutMs. publishCancel is fire and forget (logs a warning);
 * publishSuspension and publishReload take effect locally first, then reject if Redis did not take the
 * message, so an operator learns the other instances were not told. start() never waits more than a
 * connect timeout: with Redis down it resolves (logging a warning) and subscribes when Redis comes back.
 * On every reconnect the subscriber resubscribes and the suspended set is re-read (see loadSuspended:
 * losing Redis's data never lifts a suspension).
 */
import { randomBytes } from 'node:crypto';
import { Redis, type ChainableCommander } from 'ioredis';
import { boundedRedisOptions, redisClientSettings, redisFailureCause, waitReady, type RedisClientOptions, type RedisLog } from './redis-connection.js';
import type { BusHandlers, CancelMessage, ClusterBus } from './bus.js';
import { decodeBusMessage, isId, type BusMessage } from './bus-message.js';
import { decodeRevocation, type StaffRevocation } from '../admin/revocations.js';

export type RedisBusOptions = RedisClientOptions;

const LOAD_RETRY_MS = 1_000;
/** KEYS: generation, suspended set. ARGV: a fresh generation id, stored if none is. Returns {generation, members}. */
const LOAD_SUSPENDED = `
local generation = redis.call('GET', KEYS[1])
if not generation then
  generation = ARGV[1]
  redis.call('SET', KEYS[1], generation)
end
return {generation, redis.call('SMEMBERS', KEYS[2])}
`;

export class RedisBus implements ClusterBus {
  /** `from` of our messages: `<instanceId>:<boot id>`, so two processes never mistake each other for self. */
  readonly memberId: string;
  private readonly pub: Redis;
  private readonly sub: Redis;
  private readonly channel: string;
  private readonly suspendedKey: string;
  /** Holds a random id while Redis keeps its data; a new id means the suspended set was lost. */
  private readonly generationKey: string;
  private readonly revokedKey: string;
  private readonly connectTimeoutMs: number;
  private readonly log: RedisLog | undefined;
  private readonly suspendedSet = new Set<string>();
  /** Tenants whose state changed (by message or locally) while a read of the set was in flight: that change is newer. */
  private readonly changedDuringLoad = new Set<string>();
  private handlers: BusHandlers | null = null;
  /** The generation of the data we last read, null before the first read. */
  private generation: string | null = null;
  /** Whether start() has resolved: later loads of the set report differences to the handlers. */
  private started = false;
  private closed = false;
  /** Subscribed on the current subscriber connection. */
  private subscribedNow = false;
  private loading = false;
  private loadAgain = false;
  private onFirstSync: (() => void) | null = null;
  private malformed = 0;
  private subErrorLogged = false;
  private pubErrorLogged = false;
  private cancelFailureLogged = false;
  private closing: Promise<void> | null = null;

  constructor(opts: RedisBusOptions) {
    const { memberId, prefix, commandTimeoutMs, connectTimeoutMs } = redisClientSettings(opts);
    this.memberId = memberId;
    this.channel = `${prefix}bus`;
    this.suspendedKey = `${prefix}suspended`;
    this.generationKey = `${prefix}suspended:generation`;
    this.revokedKey = `${prefix}revoked`;
    this.connectTimeoutMs = connectTimeoutMs;
    this.log = opts.log;
    this.pub = new Redis(opts.url, boundedRedisOptions(commandTimeoutMs, 'pgwarden-bus'));
    // We resubscribe ourselves on every 'ready', which also covers a first subscribe that failed.
    this.sub = new Redis(opts.url, { ...boundedRedisOptions(commandTimeoutMs, 'pgwarden-bus-sub'), autoResubscribe: false });
  }

  async start(handlers: BusHandlers): Promise<void> {
    this.handlers = handlers;
    this.pub.on('error', (err: Error) => {
      if (!this.pubErrorLogged) this.log?.warn({ err: err.message, cause: redisFailureCause(err) }, 'bus: Redis connection error');
      this.pubErrorLogged = true;
    });
    this.sub.on('error', (err: Error) => {
      if (!this.subErrorLogged) this.log?.warn({ err: err.message, cause: redisFailureCause(err) }, 'bus: Redis subscriber connection error');
      this.subErrorLogged = true;
    });
    this.sub.on('message', (channel: string, message: string) => {
      if (channel === this.channel) this.onMessage(message);
    });
    this.sub.on('close', () => {
      this.subscribedNow = false;
    });
    this.sub.on('ready', () => {
      this.subErrorLogged = false;
      this.sub.subscribe(this.channel).then(
        () => {
          this.subscribedNow = true;
          this.syncSuspended();
        },
        (err: unknown) => {
          this.log?.warn({ cause: redisFailureCause(err) }, 'bus: subscribe failed; reconnecting');
          // A subscribe that failed on a live connection would not be retried: force a reconnect.
          if (!this.closed) this.sub.disconnect(true);
        },
      );
    });
    this.pub.on('ready', () => {
      this.pubErrorLogged = false;
      this.cancelFailureLogged = false;
      this.syncSuspended();
    });
    const synced = new Promise<boolean>((resolve) => {
      this.onFirstSync = () => resolve(true);
    });
    this.sub.connect().catch(() => undefined);
    this.pub.connect().catch(() => undefined);
    const limitMs = this.connectTimeoutMs;
    const [subReady, pubReady] = await Promise.all([waitReady(this.sub, limitMs), waitReady(this.pub, limitMs)]);
    const ok = subReady && pubReady && (await Promise.race([synced, sleep(limitMs * 2).then(() => false)]));
    if (!ok) this.log?.warn({}, 'bus: Redis unavailable at start; messages from other instances arrive once it is back');
    this.started = true;
  }

  publishCancel(msg: CancelMessage): void {
    this.handlers?.onCancel(msg);
    // The secret's hash is not logged either: it would let a reader of the logs cancel the query.
    this.publish({ from: this.memberId, kind: 'cancel', processId: msg.processId, secretHash: msg.secretHash }).catch((err: unknown) => {
      // Anyone can send CancelRequests: one line per outage, not one per request.
      if (this.cancelFailureLogged) return;
      this.cancelFailureLogged = true;
      this.log?.warn({ cause: redisFailureCause(err) }, 'bus: cancels not published until Redis is back');
    });
  }

  async publishSuspension(tenantId: string, suspended: boolean): Promise<void> {
    this.applySuspension(tenantId, suspended);
    await this.shareSuspension(tenantId, suspended);
  }

  async publishReload(): Promise<void> {
    this.handlers?.onReload();
    try {
      await this.publish({ from: this.memberId, kind: 'reload' });
    } catch (err) {
      throw new Error('reload applied on this instance only: Redis did not take it', { cause: err });
    }
  }

  /** Applied here, then stored in the hash and published in one transaction (as suspensions are). */
  async publishRevocation(rev: StaffRevocation): Promise<void> {
    this.handlers?.onRevocation(rev);
    const message = JSON.stringify({ from: this.memberId, kind: 'revoke', ...rev } satisfies BusMessage);
    const failure = await execFailure(() => this.pub.multi().hset(this.revokedKey, `${rev.by}:${rev.id}`, String(rev.untilMs)).publish(this.channel, message));
    if (failure !== null) throw new Error('revocation applied on this instance only: Redis did not take it', { cause: failure });
  }

  suspended(): ReadonlySet<string> {
    return this.suspendedSet;
  }

  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  // ---------------------------------------------------------------- internals

  /** Updates the set and tells the others, in one atomic round trip: a reader sees the set before or after. */
  private async shareSuspension(tenantId: string, suspended: boolean): Promise<void> {
    const message = JSON.stringify({ from: this.memberId, kind: 'suspend', tenantId, suspended } satisfies BusMessage);
    const tx = this.pub.multi();
    if (suspended) tx.sadd(this.suspendedKey, tenantId);
    else tx.srem(this.suspendedKey, tenantId);
    const failure = await execFailure(() => tx.publish(this.channel, message));
    if (failure !== null) throw new Error('suspension applied on this instance only: Redis did not take it', { cause: failure });
  }

  private async publish(message: BusMessage): Promise<void> {
    await this.pub.publish(this.channel, JSON.stringify(message));
  }

  private onMessage(raw: string): void {
    const msg = decodeBusMessage(raw);
    if (msg === null) {
      // Logged at 1, 2, 4, 8, … so a flood of junk cannot flood the log.
      this.malformed++;
      if ((this.malformed & (this.malformed - 1)) === 0) this.log?.warn({ chars: raw.length, total: this.malformed }, 'bus: ignored a malformed message');
      return;
    }
    if (msg.from === this.memberId || this.closed) return; // our own: already handled locally
    // A throwing handler must not break the subscriber connection's parser.
    try {
      switch (msg.kind) {
        case 'cancel':
          this.handlers?.onCancel({ processId: msg.processId, secretHash: msg.secretHash });
          break;
        case 'suspend':
          this.applySuspension(msg.tenantId, msg.suspended);
          break;
        case 'reload':
          this.handlers?.onReload();
          break;
        case 'revoke':
          this.handlers?.onRevocation({ by: msg.by, id: msg.id, untilMs: msg.untilMs });
          break;
      }
    } catch (err) {
      this.log?.warn({ kind: msg.kind, err: err instanceof Error ? err.message : String(err) }, 'bus: handler threw');
    }
  }

  /** Handlers hear changes only: a repeated or written-back suspension does not fire them again. */
  private applySuspension(tenantId: string, suspended: boolean): void {
    this.changedDuringLoad.add(tenantId);
    if (this.suspendedSet.has(tenantId) === suspended) return;
    if (suspended) this.suspendedSet.add(tenantId);
    else this.suspendedSet.delete(tenantId);
    this.handlers?.onSuspension(tenantId, suspended);
  }

  /**
   * Reads the suspended set once both connections are up and we are subscribed, so every change is
   * either in what we read or in a message we receive. One read at a time; a failed read is retried
   * every second while connected, and every reconnect starts a fresh one.
   */
  private syncSuspended(): void {
    if (this.closed || !this.subscribedNow || this.pub.status !== 'ready') return;
    if (this.loading) {
      this.loadAgain = true;
      return;
    }
    this.loading = true;
    void this.loadSuspended()
      .then(() => this.loadRevocations())
      .then(
        () => {
          this.onFirstSync?.();
          this.onFirstSync = null;
        },
        (err: unknown) => {
          this.log?.warn({ cause: redisFailureCause(err) }, 'bus: could not read the suspended set');
          setTimeout(() => this.syncSuspended(), LOAD_RETRY_MS).unref();
        },
      )
      .finally(() => {
        this.loading = false;
        if (this.loadAgain) {
          this.loadAgain = false;
          this.syncSuspended();
        }
      });
  }

  /**
   * Reads the suspended set, at start and after every reconnect (messages sent while we were away are
   * lost). After start, changes go to the handler. A tenant a message changed while the read was in
   * flight keeps the message's state, which is newer.
   *
   * If Redis holds the same data as when we last read it (same generation), the set is the truth,
   * resumes included. If not (Redis restarted empty, or we never read it), a missing suspension is not
   * taken as a resume: we keep it and write it back, so losing Redis's data never lifts a suspension.
   */
  private async loadSuspended(): Promise<void> {
    this.changedDuringLoad.clear();
    const reply = await this.pub.eval(LOAD_SUSPENDED, 2, this.generationKey, this.suspendedKey, randomBytes(8).toString('hex'));
    if (this.closed) return;
    if (!Array.isArray(reply) || typeof reply[0] !== 'string' || !Array.isArray(reply[1])) throw new Error('unexpected reply from Redis script');
    const generation = reply[0];
    const members = new Set((reply[1] as unknown[]).filter(isId));
    const sameData = generation === this.generation;
    this.generation = generation;
    const report = this.started;
    for (const t of [...this.suspendedSet]) {
      if (members.has(t) || this.changedDuringLoad.has(t)) continue;
      if (sameData) {
        this.suspendedSet.delete(t);
        if (report) this.handlers?.onSuspension(t, false);
      } else {
        this.log?.info({ tenant: t }, 'bus: suspension missing from Redis, writing it back');
        this.shareSuspension(t, true).catch((err: unknown) => this.log?.warn({ cause: redisFailureCause(err) }, 'bus: suspension not written back'));
      }
    }
    for (const t of members) {
      if (this.suspendedSet.has(t) || this.changedDuringLoad.has(t)) continue;
      this.suspendedSet.add(t);
      if (report) this.handlers?.onSuspension(t, true);
    }
  }

  /**
   * Reads the revocations in force (a starting instance, or one back from an outage, missed their
   * messages) and hands them to the handler; re-applying one already known changes nothing.
   * Lapsed ones are deleted from the hash here, so it stays small without a timer.
   */
  private async loadRevocations(): Promise<void> {
    const all = await this.pub.hgetall(this.revokedKey);
    if (this.closed) return;
    const now = Date.now();
    const lapsed: string[] = [];
    for (const [field, value] of Object.entries(all)) {
      const i = field.indexOf(':');
      const rev = decodeRevocation({ by: field.slice(0, i), id: field.slice(i + 1), untilMs: Number(value) });
      if (rev === null || rev.untilMs <= now) lapsed.push(field);
      else this.handlers?.onRevocation(rev);
    }
    if (lapsed.length > 0) await this.pub.hdel(this.revokedKey, ...lapsed);
  }

  private shutdown(): Promise<void> {
    this.closed = true;
    this.handlers = null;
    this.sub.disconnect();
    this.pub.disconnect();
    return Promise.resolve();
  }
}

/** Builds and runs a MULTI transaction: null when Redis took every command, else what went wrong. Never rejects. */
async function execFailure(build: () => ChainableCommander): Promise<unknown> {
  try {
    const results = await build().exec();
    return results === null ? new Error('transaction aborted') : (results.find(([err]) => err !== null)?.[0] ?? null);
  } catch (err) {
    return err;
  }
}

const sleep = (ms: number): Promise<void> =>
  new Promise((resolve) => {
    setTimeout(resolve, ms).unref();
  });
