/**
 * Connections to Redis, as the limit store (limits/redis-store.ts) and the bus (redis-bus.ts) make
 * them: the options both take and their defaults, the member id this process goes by, ioredis
 * options that bound every call, waiting for the first ready without hanging on a Redis that is
 * down, and bounded failure labels. What each client sends over its connection is its own.
 */
import { randomBytes } from 'node:crypto';
import { Redis, type RedisOptions } from 'ioredis';

/** The subset of a pino logger the Redis clients use. */
export interface RedisLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

/** What each Redis client (the limit store, the bus) is given: [redis], and who this instance is. */
export interface RedisClientOptions {
  readonly url: string;
  readonly instanceId: string;
  /** Default "pgwarden:". */
  readonly keyPrefix?: string;
  /** Upper bound for any one Redis call. Default 250. */
  readonly commandTimeoutMs?: number;
  readonly log?: RedisLog;
}

/** A client's options with their defaults, and the member id this process goes by in Redis. */
export interface RedisClientSettings {
  /**
   * `<instanceId>:<boot id>`: a restarted process never inherits (or renews) what its previous
   * incarnation left behind, and two processes never mistake each other for self.
   */
  readonly memberId: string;
  readonly prefix: string;
  readonly commandTimeoutMs: number;
  /** How long to wait for the TCP connect and the first ready: a few command timeouts, at least 1 s. */
  readonly connectTimeoutMs: number;
}

export function redisClientSettings(opts: RedisClientOptions): RedisClientSettings {
  const commandTimeoutMs = opts.commandTimeoutMs ?? 250;
  return {
    memberId: `${opts.instanceId}:${randomBytes(6).toString('hex')}`,
    prefix: opts.keyPrefix ?? 'pgwarden:',
    commandTimeoutMs,
    connectTimeoutMs: connectTimeoutMs(commandTimeoutMs),
  };
}

const RETRY_BASE_MS = 50;
const RETRY_MAX_MS = 1_000;
const RETRY_JITTER_MS = 100;

function connectTimeoutMs(commandTimeoutMs: number): number {
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
    retryStrategy: (times: number) => Math.min(RETRY_BASE_MS * 2 ** Math.min(times - 1, 16), RETRY_MAX_MS) + Math.floor(Math.random() * RETRY_JITTER_MS),
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
