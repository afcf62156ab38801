/**
 * The Lua scripts RedisLimitStore (redis-store.ts) runs: each limit decision is one script, so one
 * round trip and atomic in Redis. This file owns the Redis layout and the scripts' replies; when
 * to run which, and what to do when Redis does not answer, is the store's.
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
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';

export interface Script {
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
export const ACQUIRE = script(`${LUA_HELPERS}
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
export const RELEASE = script(`
for i = 1, #KEYS do
  if redis.call('HINCRBY', KEYS[i], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[i], ARGV[1]) end
end
return 0
`);

/**
 * KEYS: instances, then hashes. ARGV: member, ttlMs, then this instance's true count per key (0 deletes
 * the field). Returns {live, liveSum1, …}.
 */
export const HEARTBEAT = script(`${LUA_HELPERS}
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

/**
 * KEYS: instances, then hashes. Read only: the live instances' sum under each hash (an instance is
 * live while its expiry in `instances` is ahead of Redis's clock). Returns {sum1, …}.
 */
export const COUNTS = script(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 2, #KEYS do
  local sum = 0
  local fields = redis.call('HGETALL', KEYS[i])
  for j = 1, #fields, 2 do
    local expiry = tonumber(redis.call('ZSCORE', KEYS[1], fields[j]))
    local n = tonumber(fields[j + 1]) or 0
    if expiry ~= nil and expiry > now and n > 0 then sum = sum + n end
  end
  out[i - 1] = sum
end
return out
`);

/** KEYS: instances, then hashes. ARGV: member. What close() leaves behind: nothing. */
export const FORGET = script(`
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 2, #KEYS do redis.call('HDEL', KEYS[i], ARGV[1]) end
return 0
`);

/**
 * KEYS: the cool-down keys (ARGV[1] of them), then the bucket if a rate applies. ARGV: lock count,
 * ratePerSecond, burst. Returns 0 ok, 1 rate_limited, 2 locked_out (no token taken when locked out).
 */
export const ADMIT = script(`
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
export const NOTE_FAILURE = script(`
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

export const ALL_SCRIPTS = [ACQUIRE, RELEASE, HEARTBEAT, FORGET, ADMIT, NOTE_FAILURE, COUNTS];

/** An integer array reply, or an error: a malformed reply is treated like a failed call. */
export function intArray(reply: unknown, minLength: number): number[] {
  if (!Array.isArray(reply) || reply.length < minLength) throw new Error('unexpected reply from Redis script');
  return reply.map((v: unknown) => {
    if (typeof v !== 'number' || !Number.isInteger(v)) throw new Error('unexpected reply from Redis script');
    return v;
  });
}

/** EVALSHA, falling back to EVAL if Redis lost the script (restart, SCRIPT FLUSH). Sends synchronously. */
export async function runScript(client: Redis, s: Script, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown> {
  try {
    return await client.evalsha(s.sha, keys.length, ...keys, ...args);
  } catch (err) {
    if (!(err instanceof Error && err.message.startsWith('NOSCRIPT'))) throw err;
    return await client.eval(s.lua, keys.length, ...keys, ...args);
  }
}
