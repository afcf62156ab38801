/**
 * Connections to Redis, as the limit store (limits/redis-store.ts) and the bus (redis-bus.ts) make
 * them: options that bound every call, waiting for the first ready without hanging on a Redis that
 * is down, and bounded failure labels. What each client sends over its connection is its own.
 */
import { Redis, type RedisOptions } from 'ioredis';

/** The subset of a pino logger the Redis clients use. */
export interface RedisLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

/** Where our keys and channel live unless [redis] key_prefix says otherwise. */
export const DEFAULT_KEY_PREFIX = 'pgwarden:';
/** Upper bound for any one Redis call unless [redis] command_timeout_ms says otherwise. */
export const DEFAULT_COMMAND_TIMEOUT_MS = 250;

const RETRY_BASE_MS = 50;
const RETRY_MAX_MS = 1_000;
const RETRY_JITTER_MS = 100;

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
