/**
 * Connection quotas as leases, rates, cool-downs and bandwidth budgets (a double release must never free a slot someone else holds) and
 * proxy-issued cancel keys (found only with the right secret, unique, gone once released).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CancelRegistry, hashCancelSecret, type CancelTarget } from '../../src/cancel/registry.js';
import { PreauthLimiter, type Lease } from '../../src/limits/connections.js';
import { LimitKeys, LocalLimitStore, sourceKey } from '../../src/limits/store.js';
import { ByteRate } from '../../src/limits/bandwidth.js';

function mustLease(lease: Lease | null, label: string): Lease {
  assert.ok(lease !== null, `${label}: expected a slot`);
  return lease;
}

const T = LimitKeys.tenantConnections;

/** A LocalLimitStore acquire of one key, as the session does for a tenant. */
function take(store: LocalLimitStore, tenant: string, limit: number): Lease | null {
  const r = store.acquireSync([{ key: T(tenant), limit }]);
  return r.ok ? r.lease : null;
}

describe('LocalLimitStore: connection slots', () => {
  it('caps a tenant at its limit, independently of other tenants', () => {
    const store = new LocalLimitStore();
    const a = mustLease(take(store, 'acme', 2), 'a');
    const b = mustLease(take(store, 'acme', 2), 'b');
    assert.equal(take(store, 'acme', 2), null);
    assert.equal(store.active(T('acme')), 2);
    const g = mustLease(take(store, 'globex', 1), 'globex');
    assert.equal(take(store, 'globex', 1), null);
    assert.equal(store.active(T('globex')), 1);
    for (const l of [a, b, g]) l.release();
    assert.equal(store.active(T('acme')), 0);
    assert.equal(store.active(T('globex')), 0);
  });

  it('a limit of 0 admits nobody', () => {
    const store = new LocalLimitStore();
    assert.equal(take(store, 'acme', 0), null);
    assert.equal(store.active(T('acme')), 0);
  });

  it("a double release never frees another holder's slot", () => {
    const store = new LocalLimitStore();
    const a = mustLease(take(store, 'acme', 2), 'a');
    mustLease(take(store, 'acme', 2), 'b');
    a.release();
    a.release();
    a.release();
    assert.equal(store.active(T('acme')), 1, 'b still holds its slot');
    mustLease(take(store, 'acme', 2), 'c');
    assert.equal(take(store, 'acme', 2), null, 'b and c hold both slots');
  });

  it('a lowered limit applies to new acquisitions', () => {
    const store = new LocalLimitStore();
    mustLease(take(store, 'acme', 5), 'a');
    mustLease(take(store, 'acme', 5), 'b');
    assert.equal(take(store, 'acme', 2), null);
    assert.equal(take(store, 'acme', 1), null);
  });

  it('several keys are taken all or nothing, and the refusal names the full key', () => {
    const store = new LocalLimitStore();
    const slots = [{ key: T('acme'), limit: 3 }, { key: LimitKeys.userConnections('acme', 'alice'), limit: 1 }];
    const first = store.acquireSync(slots);
    assert.ok(first.ok);
    assert.deepEqual(first.active, [1, 1]);
    const second = store.acquireSync(slots);
    assert.deepEqual(second, { ok: false, refused: 1 });
    assert.equal(store.active(T('acme')), 1, 'the tenant slot was not taken for a refused user');
    first.lease.release();
    assert.equal(store.active(LimitKeys.userConnections('acme', 'alice')), 0);
  });
});

describe('LocalLimitStore: connection rate and authentication cool-down', () => {
  it('a token bucket admits its burst, then the rate', () => {
    let now = 0;
    const store = new LocalLimitStore(() => now);
    const rule = { key: LimitKeys.tenantRate('acme'), ratePerSecond: 2, burst: 3 };
    const verdicts = Array.from({ length: 5 }, () => store.admitSync(rule, []));
    assert.deepEqual(verdicts, ['ok', 'ok', 'ok', 'rate_limited', 'rate_limited']);
    now += 500; // one token back
    assert.equal(store.admitSync(rule, []), 'ok');
    assert.equal(store.admitSync(rule, []), 'rate_limited');
    now += 10_000; // refilled, but never above the burst
    assert.deepEqual(Array.from({ length: 4 }, () => store.admitSync(rule, [])), ['ok', 'ok', 'ok', 'rate_limited']);
    assert.equal(store.admitSync({ ...rule, key: LimitKeys.tenantRate('globex') }, []), 'ok', 'another tenant has its own bucket');
  });

  it('N failures within the window start a cool-down; it ends on time; failures outside the window do not add up', () => {
    let now = 0;
    const store = new LocalLimitStore(() => now);
    const rule = { key: LimitKeys.tenantSourceAuth('acme', '10.0.0.1'), maxFailures: 3, windowMs: 60_000, cooldownMs: 5_000 };
    store.noteAuthFailureSync([rule]);
    store.noteAuthFailureSync([rule]);
    assert.equal(store.admitSync(null, [rule]), 'ok');
    store.noteAuthFailureSync([rule]);
    assert.equal(store.admitSync(null, [rule]), 'locked_out');
    assert.equal(store.admitSync(null, [{ ...rule, key: LimitKeys.tenantSourceAuth('acme', '10.0.0.2') }]), 'ok', 'another source is not affected');
    now += 5_001;
    assert.equal(store.admitSync(null, [rule]), 'ok', 'the cool-down ended');
    // Two failures, then the window passes: the count starts again.
    store.noteAuthFailureSync([rule]);
    store.noteAuthFailureSync([rule]);
    now += 120_000;
    store.noteAuthFailureSync([rule]);
    assert.equal(store.admitSync(null, [rule]), 'ok');
  });

  it('a locked-out source takes no rate token', () => {
    const store = new LocalLimitStore(() => 0);
    const lock = { key: LimitKeys.sourceAuth('10.0.0.9'), maxFailures: 1, windowMs: 60_000, cooldownMs: 60_000 };
    const rate = { key: LimitKeys.tenantRate('acme'), ratePerSecond: 1, burst: 1 };
    store.noteAuthFailureSync([lock]);
    assert.equal(store.admitSync(rate, [lock]), 'locked_out');
    assert.equal(store.admitSync(rate, []), 'ok', 'the token was still there');
  });
});

describe('sourceKey', () => {
  it('keeps IPv4, unwraps IPv4-mapped IPv6 and groups IPv6 by /64', () => {
    assert.equal(sourceKey('192.0.2.7'), '192.0.2.7');
    assert.equal(sourceKey('::ffff:192.0.2.7'), '192.0.2.7');
    assert.equal(sourceKey('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
    assert.equal(sourceKey('2001:db8:1:2:bbbb:cccc:dddd:eeee'), '2001:db8:1:2::/64');
    assert.equal(sourceKey('2001:db8::1'), '2001:db8:0:0::/64');
    assert.equal(sourceKey('::1'), '0:0:0:0::/64');
  });
});

describe('ByteRate', () => {
  it('lets a reader through within its budget, pauses it when overdrawn and wakes waiters in arrival order', async () => {
    const rate = new ByteRate(1_000_000); // burst 100 000 bytes
    const woken: string[] = [];
    assert.equal(rate.take(60_000, () => woken.push('a')), true);
    assert.equal(rate.take(60_000, () => woken.push('a')), false, 'overdrawn: a waits');
    assert.equal(rate.take(1, () => woken.push('b')), false, 'b queues behind a even for one byte');
    assert.equal(rate.waiters, 2);
    // 20 000 bytes of debt at 1 MB/s: about 20 ms.
    await new Promise((r) => setTimeout(r, 80));
    assert.deepEqual(woken, ['a', 'b']);
    assert.equal(rate.waiters, 0);
  });

  it('a session that leaves while waiting is forgotten', async () => {
    const rate = new ByteRate(100_000);
    const woken: string[] = [];
    const a = (): void => void woken.push('a');
    rate.take(200_000, a);
    rate.forget(a);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(woken, []);
  });
});

describe('PreauthLimiter', () => {
  it('caps per source and globally', () => {
    const p = new PreauthLimiter();
    mustLease(p.tryAcquire('10.0.0.1', 3, 2), '1a');
    mustLease(p.tryAcquire('10.0.0.1', 3, 2), '1b');
    assert.equal(p.tryAcquire('10.0.0.1', 3, 2), null, 'per-source cap');
    assert.equal(p.active, 2, 'a per-source refusal takes no global slot');
    mustLease(p.tryAcquire('10.0.0.2', 3, 2), '2a');
    assert.equal(p.tryAcquire('10.0.0.3', 3, 2), null, 'global cap');
    assert.equal(p.active, 3);
  });

  it('a double release never frees another holder\'s slot', () => {
    const p = new PreauthLimiter();
    const a = mustLease(p.tryAcquire('10.0.0.1', 2, 2), 'a');
    mustLease(p.tryAcquire('10.0.0.1', 2, 2), 'b');
    a.release();
    a.release();
    assert.equal(p.active, 1);
    mustLease(p.tryAcquire('10.0.0.1', 2, 2), 'c');
    assert.equal(p.tryAcquire('10.0.0.1', 2, 2), null, 'per source: b and c');
    assert.equal(p.tryAcquire('10.0.0.9', 2, 2), null, 'global: b and c');
  });

  it('releases return both the source slot and the global slot', () => {
    const p = new PreauthLimiter();
    const leases = Array.from({ length: 4 }, (_, i) => mustLease(p.tryAcquire(`10.0.0.${i % 2}`, 4, 2), `l${i}`));
    assert.equal(p.active, 4);
    for (const l of leases) l.release();
    assert.equal(p.active, 0);
    for (let i = 0; i < 4; i++) mustLease(p.tryAcquire(`10.0.0.${i % 2}`, 4, 2), `again ${i}`);
  });
});

function target(tenantId: string): CancelTarget & { cancels: number } {
  return {
    tenantId,
    cancels: 0,
    cancel() {
      this.cancels++;
    },
  };
}

describe('CancelRegistry', () => {
  it('issue → lookup → release', () => {
    const reg = new CancelRegistry();
    const t = target('acme');
    const key = reg.issue(t);
    assert.ok(Number.isInteger(key.processId) && key.processId >= 1 && key.processId <= 0x7fffffff);
    assert.equal(key.secretKey.length, 4, 'protocol 3.0 keys are 4 bytes');
    assert.equal(reg.size, 1);
    assert.equal(reg.lookup(key.processId, Buffer.from(key.secretKey)), t);
    reg.release(key.processId);
    assert.equal(reg.size, 0);
    assert.equal(reg.lookup(key.processId, key.secretKey), undefined);
    reg.release(key.processId); // releasing twice is harmless
  });

  it('a cancel relayed between instances matches only with the right secret under the same cluster key', () => {
    const reg = new CancelRegistry();
    const t = target('acme');
    const key = reg.issue(t);
    const clusterKey = Buffer.from('shared-cluster-key');
    const hash = hashCancelSecret(key.secretKey, clusterKey);
    assert.notEqual(hash, hashCancelSecret(key.secretKey), 'keyed, not a plain hash of 4 bytes');
    assert.equal(reg.lookupByHash(key.processId, hash, clusterKey), t);
    assert.equal(reg.lookupByHash(key.processId, hash, Buffer.from('another-key')), undefined);
    const wrong = Buffer.from(key.secretKey);
    wrong[0] = (wrong[0]! + 1) & 0xff;
    assert.equal(reg.lookupByHash(key.processId, hashCancelSecret(wrong, clusterKey), clusterKey), undefined);
    assert.equal(reg.lookupByHash(key.processId, 'not-hex', clusterKey), undefined);
    assert.equal(reg.lookupByHash(key.processId + 1, hash, clusterKey), undefined);
  });

  it('a wrong, shorter, longer or empty secret finds nothing', () => {
    const reg = new CancelRegistry();
    const key = reg.issue(target('acme'));
    const wrong = Buffer.from(key.secretKey);
    wrong[3] = wrong[3]! ^ 1;
    assert.equal(reg.lookup(key.processId, wrong), undefined);
    assert.equal(reg.lookup(key.processId, key.secretKey.subarray(0, 3)), undefined);
    assert.equal(reg.lookup(key.processId, Buffer.concat([key.secretKey, Buffer.from([0])])), undefined);
    assert.equal(reg.lookup(key.processId, Buffer.alloc(0)), undefined);
    assert.equal(reg.lookup(key.processId + 1, key.secretKey), undefined, 'unknown process id');
  });

  it('1000 issued keys are unique and each finds only its own session', () => {
    const reg = new CancelRegistry();
    const issued = Array.from({ length: 1000 }, (_, i) => {
      const t = target(`t${i}`);
      return { t, key: reg.issue(t) };
    });
    assert.equal(new Set(issued.map((e) => e.key.processId)).size, 1000, 'process ids are unique');
    assert.equal(new Set(issued.map((e) => `${e.key.processId}:${e.key.secretKey.toString('hex')}`)).size, 1000);
    assert.equal(reg.size, 1000);
    for (const e of issued) assert.equal(reg.lookup(e.key.processId, e.key.secretKey), e.t);
    // A neighbour's secret does not open another session (skip the rare equal secrets).
    for (let i = 0; i < issued.length - 1; i++) {
      const a = issued[i]!.key;
      const b = issued[i + 1]!.key;
      if (!a.secretKey.equals(b.secretKey)) assert.equal(reg.lookup(a.processId, b.secretKey), undefined);
    }
    // Releasing half leaves the other half intact.
    issued.forEach((e, i) => {
      if (i % 2 === 0) reg.release(e.key.processId);
    });
    assert.equal(reg.size, 500);
    issued.forEach((e, i) => assert.equal(reg.lookup(e.key.processId, e.key.secretKey), i % 2 === 0 ? undefined : e.t));
  });
});
