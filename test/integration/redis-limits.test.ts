/**
 * RedisLimitStore and RedisBus against a real redis-server (test/support/redis.ts): limits shared
 * exactly by two instances, leases of a SIGKILLed instance expiring, the heartbeat repairing counts,
 * bounded calls and local shares while Redis hangs or is down, and convergence once it is back.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { Redis } from 'ioredis';
import { RedisLimitStore } from '../../src/limits/redis-store.js';
import { RedisBus } from '../../src/cluster/redis-bus.js';
import type { BusHandlers, CancelMessage } from '../../src/cluster/bus.js';
import { hashCancelSecret } from '../../src/cancel/registry.js';
import type { StaffRevocation } from '../../src/admin/revocations.js';
import { LimitKeys, type Lease, type LimitMode, type LockoutRule, type SlotRequest } from '../../src/limits/store.js';
import { startRedis, type RedisServer } from '../support/redis.js';
import { sleep, waitFor } from '../support/wait.js';

const PREFIX = 'pgwarden:';
const LEASE_TTL_MS = 1_500;
/** What "returns within about commandTimeout (250 ms)" means on a loaded 2-core machine. */
const BOUNDED_MS = 2_000;

interface Opened {
  readonly store: RedisLimitStore;
  readonly modes: [LimitMode, string][];
}

interface Received extends BusHandlers {
  readonly cancels: CancelMessage[];
  readonly suspensions: [string, boolean][];
  readonly revocations: StaffRevocation[];
  reloads: number;
}

function recorder(): Received {
  const r: Received = {
    cancels: [],
    suspensions: [],
    revocations: [],
    reloads: 0,
    onCancel: (m) => r.cancels.push(m),
    onSuspension: (t, s) => r.suspensions.push([t, s]),
    onReload: () => {
      r.reloads++;
    },
    onRevocation: (rev) => r.revocations.push(rev),
  };
  return r;
}

/** Leases taken by `acquire`, all asserted granted. */
async function take(store: RedisLimitStore, n: number, slots: readonly SlotRequest[]): Promise<Lease[]> {
  const leases: Lease[] = [];
  for (let i = 0; i < n; i++) {
    const r = await store.acquire(slots);
    assert.ok(r.ok, `slot ${i + 1} of ${n} refused`);
    leases.push(r.lease);
  }
  return leases;
}

const releaseAll = (leases: readonly Lease[]): void => leases.forEach((l) => l.release());

async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  const value = await fn();
  return { value, ms: performance.now() - t0 };
}

describe('Redis-shared limits and bus', () => {
  let redis: RedisServer;
  let raw: Redis;
  let a: Opened, b: Opened;
  let busA: RedisBus, busB: RedisBus;
  const gotA = recorder();
  const gotB = recorder();
  const closers: (() => Promise<void>)[] = [];

  const open = async (instanceId: string): Promise<Opened> => {
    const modes: [LimitMode, string][] = [];
    const store = await RedisLimitStore.open({
      url: redis.url,
      instanceId,
      leaseTtlMs: LEASE_TTL_MS,
      onModeChange: (mode, cause) => modes.push([mode, cause]),
    });
    closers.push(() => store.close());
    return { store, modes };
  };

  const openBus = async (instanceId: string, handlers: BusHandlers): Promise<RedisBus> => {
    const bus = new RedisBus({ url: redis.url, instanceId });
    closers.push(() => bus.close());
    await bus.start(handlers);
    return bus;
  };

  /** Every instance's field under a slot key, read straight from Redis. */
  const fieldsOf = async (key: string): Promise<Record<string, string>> => raw.hgetall(PREFIX + key);

  before(async () => {
    redis = await startRedis();
    raw = new Redis(redis.url, { lazyConnect: true });
    raw.on('error', () => undefined); // reconnects by itself after the down/up test
    await raw.connect();
    a = await open('a');
    b = await open('b');
    busA = await openBus('a', gotA);
    busB = await openBus('b', gotB);
  });

  after(async () => {
    for (const close of closers.reverse()) await close();
    raw?.disconnect();
    await redis?.stop();
  });

  it('starts in redis mode without a mode change and sees both instances', () => {
    assert.equal(a.store.mode, 'redis');
    assert.equal(b.store.mode, 'redis');
    assert.deepEqual(a.modes, []);
    assert.equal(b.store.liveInstances, 2);
  });

  it('shares one cap exactly between two instances', async () => {
    const key = LimitKeys.tenantConnections('shared');
    const slot = [{ key, limit: 5 }];
    const onA = await take(a.store, 3, slot);
    const onB = await take(b.store, 2, slot);
    assert.deepEqual(await a.store.acquire(slot), { ok: false, refused: 0 });
    assert.deepEqual(await b.store.acquire(slot), { ok: false, refused: 0 });
    // The heartbeat reads back the cluster-wide count for each instance.
    await waitFor(() => a.store.active(key) === 5 && b.store.active(key) === 5, 3 * LEASE_TTL_MS, 'both see 5');

    onB.pop()?.release();
    // A release is fire-and-forget on B's own connection: A's next command may reach Redis first, so wait
    // for Redis to hold B's decrement (what a client of A would meet a round trip later anyway).
    await waitFor(async () => (await fieldsOf(key))[b.store.memberId] === '1', 2_000, "B's release in Redis");
    const again = await a.store.acquire(slot);
    assert.ok(again.ok);
    assert.deepEqual(again.active, [5]);
    assert.deepEqual(await b.store.acquire(slot), { ok: false, refused: 0 });

    releaseAll([...onA, ...onB, again.lease]);
    await waitFor(async () => Object.keys(await fieldsOf(key)).length === 0, 2_000, 'fields deleted on release');
  });

  it('takes slots under several keys all or nothing', async () => {
    const tenant = { key: LimitKeys.tenantConnections('aon'), limit: 10 };
    const user = { key: LimitKeys.userConnections('aon', 'alice'), limit: 1 };
    const held = await take(b.store, 1, [tenant, user]);
    assert.deepEqual(await a.store.acquire([tenant, user]), { ok: false, refused: 1 });
    // Nothing was taken under the tenant key by the refused request.
    assert.deepEqual(await fieldsOf(tenant.key), { [b.store.memberId]: '1' });
    const tenantOnly = await a.store.acquire([tenant]);
    assert.ok(tenantOnly.ok);
    assert.deepEqual(tenantOnly.active, [2]);
    releaseAll([...held, tenantOnly.lease]);
  });

  it('stops counting the slots of an instance killed with SIGKILL within leaseTtl', async () => {
    const key = LimitKeys.tenantConnections('crash');
    const slot = [{ key, limit: 3 }];
    const child: ChildProcess = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `const { RedisLimitStore } = await import(process.env.STORE_MODULE);
         const store = await RedisLimitStore.open({ url: process.env.REDIS_URL, instanceId: 'child', leaseTtlMs: ${LEASE_TTL_MS} });
         for (let i = 0; i < 2; i++) {
           const r = await store.acquire([{ key: process.env.SLOT_KEY, limit: 3 }]);
           if (!r.ok) { console.log('refused'); process.exit(1); }
         }
         console.log('held ' + store.memberId);
         setInterval(() => {}, 1000);`,
      ],
      {
        env: { ...process.env, STORE_MODULE: new URL('../../src/limits/redis-store.js', import.meta.url).href, REDIS_URL: redis.url, SLOT_KEY: key },
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    const exited = new Promise((resolve) => child.once('exit', resolve));
    try {
      assert.ok(child.stdout !== null);
      const lines = createInterface({ input: child.stdout });
      const first = await new Promise<string>((resolve, reject) => {
        lines.once('line', resolve);
        child.once('exit', () => reject(new Error('child exited before holding its slots')));
      });
      assert.match(first, /^held child:/);
      const childMember = first.slice('held '.length);

      const mine = await take(a.store, 1, slot);
      assert.deepEqual(await a.store.acquire(slot), { ok: false, refused: 0 });
      assert.equal(a.store.liveInstances, 3);

      child.kill('SIGKILL');
      await exited;
      const t0 = performance.now();
      let freed: Lease | null = null;
      while (freed === null && performance.now() - t0 < LEASE_TTL_MS + 3_000) {
        const r = await a.store.acquire(slot);
        if (r.ok) freed = r.lease;
        else await sleep(50);
      }
      const ms = performance.now() - t0;
      assert.ok(freed !== null, 'the dead instance\'s slots never came back');
      assert.ok(ms <= LEASE_TTL_MS + 1_000, `slots came back after ${Math.round(ms)} ms`);
      const fields = await fieldsOf(key);
      assert.equal(fields[childMember], undefined, 'the dead instance\'s field is deleted');
      releaseAll([...mine, freed]);
      await waitFor(() => a.store.liveInstances === 2, 3 * LEASE_TTL_MS, 'the dead instance leaves the live count');
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('shares one token bucket', async () => {
    const rate = { key: LimitKeys.tenantRate('bucket'), ratePerSecond: 0.01, burst: 3 };
    const results = [];
    for (let i = 0; i < 6; i++) results.push(await (i % 2 === 0 ? a : b).store.admit(rate, []));
    assert.deepEqual(results, ['ok', 'ok', 'ok', 'rate_limited', 'rate_limited', 'rate_limited']);
  });

  it('claims a staff token id once across instances, for its TTL only', async () => {
    const key = LimitKeys.staffToken('jti-shared');
    assert.equal(await a.store.claimOnce(key, 1_000), true);
    assert.equal(await b.store.claimOnce(key, 1_000), false, 'a replay on the other instance is refused');
    assert.equal(await a.store.claimOnce(key, 1_000), false);
    const ttl = await raw.pttl(PREFIX + key);
    assert.ok(ttl > 0 && ttl <= 1_000, `ttl ${ttl}`);
    await waitFor(async () => (await raw.exists(PREFIX + key)) === 0, 3_000, 'claim expired');
    assert.equal(await b.store.claimOnce(key, 1_000), true, 'after its expiry the key is free again');
  });

  it('shares lockouts, without taking a token from a locked-out source', async () => {
    const lockout: LockoutRule = { key: LimitKeys.sourceAuth('203.0.113.9'), maxFailures: 3, windowMs: 10_000, cooldownMs: 1_500 };
    const rate = { key: LimitKeys.tenantRate('lockout'), ratePerSecond: 0.01, burst: 10 };
    await a.store.noteAuthFailure([lockout]);
    await a.store.noteAuthFailure([lockout]);
    assert.equal(await b.store.admit(rate, [lockout]), 'ok');
    await a.store.noteAuthFailure([lockout]);
    const lockedAt = performance.now();
    assert.equal(await b.store.admit(rate, [lockout]), 'locked_out');
    assert.equal(await a.store.admit(rate, [lockout]), 'locked_out');
    const tokens = Number(await raw.hget(PREFIX + rate.key, 'tokens'));
    assert.ok(tokens >= 8.99 && tokens < 9.1, `tokens after one admission: ${tokens}`);

    await waitFor(async () => (await b.store.admit(null, [lockout])) === 'ok', 5_000, 'cool-down over');
    assert.ok(performance.now() - lockedAt >= 1_000, 'the cool-down lasted');
  });

  it('repairs a lost increment or decrement at the next heartbeat', async () => {
    const key = LimitKeys.tenantConnections('repair');
    const held = await take(a.store, 1, [{ key, limit: 10 }]);
    await raw.hset(PREFIX + key, a.store.memberId, '7');
    await waitFor(async () => (await fieldsOf(key))[a.store.memberId] === '1', 2 * LEASE_TTL_MS, 'field repaired');
    releaseAll(held);
    await waitFor(async () => (await fieldsOf(key))[a.store.memberId] === undefined, 2 * LEASE_TTL_MS, 'field deleted');
  });

  it('delivers a cancel to the other instance exactly once', async () => {
    const msg = { processId: 4242, secretHash: hashCancelSecret(Buffer.from([1, 2, 3, 4])) };
    busA.publishCancel(msg);
    await waitFor(() => gotB.cancels.length === 1, 2_000, 'cancel delivered');
    assert.deepEqual(gotB.cancels[0], msg);
    await sleep(100); // an echo of our own publish would arrive by now
    assert.deepEqual(gotA.cancels, [msg]);
    assert.equal(gotB.cancels.length, 1);
  });

  it('shares suspensions, including with an instance that starts later', async () => {
    await busA.publishSuspension('acme', true);
    await waitFor(() => busB.suspended().has('acme'), 2_000, 'suspension delivered');
    assert.deepEqual(gotB.suspensions, [['acme', true]]);
    assert.deepEqual(gotA.suspensions, [['acme', true]]);
    assert.deepEqual(await raw.smembers(`${PREFIX}suspended`), ['acme']);

    const gotC = recorder();
    const busC = await openBus('c', gotC);
    assert.deepEqual([...busC.suspended()], ['acme']);
    assert.deepEqual(gotC.suspensions, [], 'the initial set is read, not reported');

    await busB.publishSuspension('acme', false);
    await waitFor(() => !busA.suspended().has('acme') && !busC.suspended().has('acme'), 2_000, 'resume delivered');
    assert.deepEqual(gotC.suspensions, [['acme', false]]);
    await busC.close();
  });

  it('shares staff-token revocations, including with an instance that starts later; lapsed ones are dropped', async () => {
    const rev: StaffRevocation = { by: 'jti', id: 'tok-123', untilMs: Date.now() + 60_000 };
    await busA.publishRevocation(rev);
    await waitFor(() => gotB.revocations.length === 1, 2_000, 'revocation delivered');
    assert.deepEqual(gotB.revocations, [rev]);
    assert.deepEqual(gotA.revocations, [rev], 'applied locally once, its echo ignored');
    assert.equal(await raw.hget(`${PREFIX}revoked`, 'jti:tok-123'), String(rev.untilMs));
    await raw.hset(`${PREFIX}revoked`, 'sub:gone', String(Date.now() - 1_000));

    const gotC = recorder();
    const busC = await openBus('c', gotC);
    assert.deepEqual(gotC.revocations, [rev], 'a starting instance learns the revocations in force');
    await waitFor(async () => (await raw.hget(`${PREFIX}revoked`, 'sub:gone')) === null, 2_000, 'lapsed revocation deleted');
    await busC.close();
    await raw.hdel(`${PREFIX}revoked`, 'jti:tok-123');
  });

  it('ignores malformed messages on the channel', async () => {
    const before = { cancels: gotB.cancels.length, suspensions: gotB.suspensions.length, revocations: gotB.revocations.length, reloads: gotB.reloads };
    const bad = [
      'not json',
      'null',
      '[]',
      '"reload"',
      JSON.stringify({ kind: 'reload' }),
      JSON.stringify({ from: 'x', kind: 'shutdown' }),
      JSON.stringify({ from: 'x', kind: 'cancel', processId: '1', secretHash: 'a'.repeat(64) }),
      JSON.stringify({ from: 'x', kind: 'cancel', processId: 1.5, secretHash: 'a'.repeat(64) }),
      JSON.stringify({ from: 'x', kind: 'cancel', processId: 1, secretHash: 'zz' }),
      JSON.stringify({ from: 'x', kind: 'suspend', tenantId: 'acme', suspended: 'yes' }),
      JSON.stringify({ from: 'x', kind: 'suspend', tenantId: '', suspended: true }),
      JSON.stringify({ from: 'x', kind: 'reload', pad: 'p'.repeat(100_000) }),
      JSON.stringify({ from: 'x', kind: 'revoke', by: 'email', id: 'a', untilMs: Date.now() + 1000 }),
      JSON.stringify({ from: 'x', kind: 'revoke', by: 'jti', id: 'has space', untilMs: Date.now() + 1000 }),
      JSON.stringify({ from: 'x', kind: 'revoke', by: 'sub', id: 'a', untilMs: 'soon' }),
    ];
    for (const m of bad) await raw.publish(`${PREFIX}bus`, m);
    await raw.publish(`${PREFIX}bus`, JSON.stringify({ from: 'someone-else', kind: 'reload' }));
    await waitFor(() => gotB.reloads === before.reloads + 1, 2_000, 'the valid message after them');
    assert.equal(gotB.cancels.length, before.cancels);
    assert.equal(gotB.suspensions.length, before.suspensions);
    assert.equal(gotB.revocations.length, before.revocations);
    assert.equal(busB.suspended().has('acme'), false);
  });

  it('answers within a bound and from local shares while Redis hangs, then recovers', async () => {
    const key = LimitKeys.tenantConnections('hang');
    const degradedBefore = a.modes.length;
    redis.pause();
    try {
      const first = await timed(() => a.store.acquire([{ key, limit: 4 }]));
      assert.ok(first.ms < BOUNDED_MS, `acquire took ${Math.round(first.ms)} ms`);
      assert.ok(first.value.ok);
      assert.equal(a.store.mode, 'degraded_local');
      assert.deepEqual(a.modes.slice(degradedBefore), [['degraded_local', 'timeout']]);
      // Share of 4 over 2 live instances: one more, then refused.
      const second = await a.store.acquire([{ key, limit: 4 }]);
      assert.ok(second.ok);
      assert.deepEqual(await a.store.acquire([{ key, limit: 4 }]), { ok: false, refused: 0 });
      const admit = await timed(() => a.store.admit({ key: LimitKeys.tenantRate('hang'), ratePerSecond: 1, burst: 4 }, []));
      assert.ok(admit.ms < BOUNDED_MS);
      const cancel = hashCancelSecret(Buffer.from([9, 9, 9, 9]));
      busA.publishCancel({ processId: 1, secretHash: cancel }); // fire and forget: must not throw
      first.value.lease.release();
      second.lease.release();
    } finally {
      redis.resume();
    }
    await waitFor(() => a.store.mode === 'redis' && b.store.mode === 'redis', 5_000, 'both back in redis mode');
    assert.deepEqual(a.modes.slice(degradedBefore), [['degraded_local', 'timeout'], ['redis', 'recovered']]);
    await waitFor(async () => Object.keys(await fieldsOf(key)).length === 0, 2 * LEASE_TTL_MS, 'no slot left behind');
  });

  it('enforces local shares while Redis is down and converges once it is back', async () => {
    const key = LimitKeys.tenantConnections('down');
    const slot = [{ key, limit: 4 }];
    const marks = { a: a.modes.length, b: b.modes.length };
    await busA.publishSuspension('globex', true);
    await waitFor(() => busB.suspended().has('globex'), 2_000, 'suspension delivered');
    await redis.stop();
    await waitFor(() => a.store.mode === 'degraded_local' && b.store.mode === 'degraded_local', 2_000, 'both degraded');
    assert.equal(a.modes.length, marks.a + 1);
    assert.equal(b.modes.length, marks.b + 1);
    assert.equal(a.modes.at(-1)?.[0], 'degraded_local');

    // 4 over 2 live instances: 2 each.
    const first = await timed(() => a.store.acquire(slot));
    assert.ok(first.ms < BOUNDED_MS);
    const granted = first.value;
    assert.ok(granted.ok);
    const onA = [granted.lease, ...(await take(a.store, 1, slot))];
    assert.deepEqual(await a.store.acquire(slot), { ok: false, refused: 0 });
    const onB = await take(b.store, 2, slot);
    assert.deepEqual(await b.store.acquire(slot), { ok: false, refused: 0 });
    const note = await timed(() => a.store.noteAuthFailure([{ key: LimitKeys.sourceAuth('198.51.100.1'), maxFailures: 5, windowMs: 1000, cooldownMs: 1000 }]));
    assert.ok(note.ms < BOUNDED_MS);
    const reload = await timed(() => busA.publishReload().then(() => 'published', () => 'rejected'));
    assert.equal(reload.value, 'rejected');
    assert.ok(reload.ms < BOUNDED_MS);

    // An instance starting now neither throws nor hangs.
    const startedDown = await timed(() => open('late'));
    const late = startedDown.value;
    assert.ok(startedDown.ms < BOUNDED_MS, `open took ${Math.round(startedDown.ms)} ms`);
    assert.equal(late.store.mode, 'degraded_local');
    assert.equal(late.modes.length, 1);
    const gotLate = recorder();
    const busStart = await timed(() => openBus('late', gotLate));
    const busLate = busStart.value;
    assert.ok(busStart.ms < BOUNDED_MS, `bus start took ${Math.round(busStart.ms)} ms`);

    await redis.start();
    await waitFor(() => [a, b, late].every((s) => s.store.mode === 'redis'), 5_000, 'all back in redis mode');
    for (const s of [a, b]) assert.deepEqual(s.modes.slice(-2).map(([m]) => m), ['degraded_local', 'redis']);
    assert.deepEqual(late.modes, [late.modes[0], ['redis', 'recovered']]);
    assert.equal(a.modes.length, marks.a + 2);

    // Redis came back empty; the reconciliation wrote both instances' real holdings.
    const fields = await fieldsOf(key);
    assert.deepEqual(fields, { [a.store.memberId]: '2', [b.store.memberId]: '2' });
    await waitFor(() => a.store.active(key) === 4, 2 * LEASE_TTL_MS, 'a sees the cluster-wide count');
    assert.deepEqual(await a.store.acquire(slot), { ok: false, refused: 0 });
    onA.pop()?.release();
    await waitFor(async () => (await fieldsOf(key))[a.store.memberId] === '1', 2_000, 'release counted');
    const freed = await b.store.acquire(slot);
    assert.ok(freed.ok);
    releaseAll([...onA, ...onB, freed.lease]);

    // The subscribers came back, the late one included.
    await waitFor(async () => (await raw.pubsub('NUMSUB', `${PREFIX}bus`))[1] === 3, 5_000, 'every bus subscribed');
    const before = gotB.reloads;
    // The subscribers being back says nothing of A's publishing connection, which reconnects on its own
    // backoff: until it does, publishReload rejects (applied here only), as an operator would see. Retry
    // as an operator would; a rejected publish reaches nobody, so B still hears exactly one.
    await waitFor(() => busA.publishReload().then(() => true, () => false), 5_000, 'A publishes again');
    await waitFor(() => gotB.reloads === before + 1 && gotLate.reloads === 1, 5_000, 'reload delivered after the restart');

    // Redis lost the suspended set; the instances wrote it back instead of lifting the suspension.
    await waitFor(async () => (await raw.smembers(`${PREFIX}suspended`)).includes('globex'), 5_000, 'suspension written back');
    await waitFor(() => busLate.suspended().has('globex'), 5_000, 'the late instance learns it');
    assert.ok(busA.suspended().has('globex') && busB.suspended().has('globex'));
    assert.deepEqual(gotB.suspensions.filter(([t]) => t === 'globex'), [['globex', true]]);
  });
});
