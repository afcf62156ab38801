/**
 * Connection quotas as leases (a double release must never free a slot someone else holds) and
 * proxy-issued cancel keys (found only with the right secret, unique, gone once released).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CancelRegistry, type CancelTarget } from '../../src/cancel/registry.js';
import { LocalConnectionLimiter, PreauthLimiter, type Lease } from '../../src/limits/connections.js';

function mustLease(lease: Lease | null, label: string): Lease {
  assert.ok(lease !== null, `${label}: expected a slot`);
  return lease;
}

describe('LocalConnectionLimiter', () => {
  it('caps a tenant at its limit, independently of other tenants', () => {
    const limiter = new LocalConnectionLimiter();
    const a = mustLease(limiter.tryAcquireTenant('acme', 2), 'a');
    const b = mustLease(limiter.tryAcquireTenant('acme', 2), 'b');
    assert.equal(limiter.tryAcquireTenant('acme', 2), null);
    assert.equal(limiter.tenantActive('acme'), 2);
    const g = mustLease(limiter.tryAcquireTenant('globex', 1), 'globex');
    assert.equal(limiter.tryAcquireTenant('globex', 1), null);
    assert.equal(limiter.tenantActive('globex'), 1);
    for (const l of [a, b, g]) l.release();
    assert.equal(limiter.tenantActive('acme'), 0);
    assert.equal(limiter.tenantActive('globex'), 0);
  });

  it('a limit of 0 admits nobody', () => {
    const limiter = new LocalConnectionLimiter();
    assert.equal(limiter.tryAcquireTenant('acme', 0), null);
    assert.equal(limiter.tenantActive('acme'), 0);
  });

  it('a double release never frees another holder\'s slot', () => {
    const limiter = new LocalConnectionLimiter();
    const a = mustLease(limiter.tryAcquireTenant('acme', 2), 'a');
    mustLease(limiter.tryAcquireTenant('acme', 2), 'b');
    a.release();
    a.release();
    a.release();
    assert.equal(limiter.tenantActive('acme'), 1, 'b still holds its slot');
    mustLease(limiter.tryAcquireTenant('acme', 2), 'c');
    assert.equal(limiter.tryAcquireTenant('acme', 2), null, 'b and c hold both slots');
  });

  it('a lowered limit applies to new acquisitions', () => {
    const limiter = new LocalConnectionLimiter();
    mustLease(limiter.tryAcquireTenant('acme', 5), 'a');
    mustLease(limiter.tryAcquireTenant('acme', 5), 'b');
    assert.equal(limiter.tryAcquireTenant('acme', 2), null);
    assert.equal(limiter.tryAcquireTenant('acme', 1), null);
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
