/**
 * The session registry without sockets: fake sessions that record what was done to them. Which
 * sessions a list, a termination, a revocation, a drain count and the sweeper reach (S8 included).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { LimitSettings, TenantConfig } from '../../src/config/schema.js';
import type { PgError } from '../../src/errors.js';
import { createLogger } from '../../src/observability/logger.js';
import { SessionRegistry, type LiveSession } from '../../src/session/registry.js';

class FakeSession implements LiveSession {
  readonly ended: { sqlstate: string; reason: string }[] = [];
  readonly checks: (LimitSettings | undefined)[] = [];
  constructor(
    readonly id: string,
    public phase: string,
    readonly tenantId: string | undefined,
    readonly staff: { sub: string; jti: string } | null = null,
  ) {}
  describe(): { id: string } {
    return { id: this.id };
  }
  terminate(err: PgError, reason: 'admin' | 'drain_deadline' | 'tenant_suspended'): void {
    this.ended.push({ sqlstate: err.sqlstate, reason });
    this.phase = 'closed';
  }
  checkTimers(_now: number, current?: LimitSettings): void {
    this.checks.push(current);
  }
}

const log = createLogger('silent');
const LIMITS = { idleTimeoutMs: 1 } as LimitSettings;
const tenant = (id: string, enabled: boolean): TenantConfig => ({ id, enabled, limits: LIMITS }) as unknown as TenantConfig;

function registryOf(...sessions: FakeSession[]): SessionRegistry<FakeSession> {
  const r = new SessionRegistry<FakeSession>(log);
  for (const s of sessions) r.add(s);
  return r;
}

describe('session registry', () => {
  it('lists open sessions, of one tenant or all, and counts the logged-in ones for a drain', () => {
    const a = new FakeSession('a', 'relaying', 'acme');
    const b = new FakeSession('b', 'authenticating', 'acme');
    const c = new FakeSession('c', 'connecting', 'other');
    const d = new FakeSession('d', 'closed', 'acme');
    const r = registryOf(a, b, c, d);
    assert.deepEqual(r.list('acme'), [{ id: 'a' }, { id: 'b' }]);
    assert.deepEqual(r.list(null), [{ id: 'a' }, { id: 'b' }, { id: 'c' }]);
    assert.equal(r.loggedIn(), 2);
    r.remove(d);
    assert.equal(r.size, 3);
    assert.deepEqual([...r].map((s) => s.id), ['a', 'b', 'c']);
  });

  it('terminates one session by id with 57P01, and only an open one', () => {
    const a = new FakeSession('a', 'relaying', 'acme');
    const r = registryOf(a, new FakeSession('b', 'closed', 'acme'));
    assert.equal(r.terminate('b'), false);
    assert.equal(r.terminate('nope'), false);
    assert.equal(r.terminate('a'), true);
    assert.deepEqual(a.ended, [{ sqlstate: '57P01', reason: 'admin' }]);
  });

  it("ends a suspended tenant's sessions and a revoked staff token's, and nobody else's", () => {
    const user = new FakeSession('u', 'relaying', 'acme');
    const other = new FakeSession('o', 'relaying', 'other');
    const jane = new FakeSession('j', 'relaying', 'other', { sub: 'jane', jti: 't1' });
    const joe = new FakeSession('k', 'relaying', 'other', { sub: 'joe', jti: 't2' });
    const r = registryOf(user, other, jane, joe);
    r.terminateTenant('acme');
    assert.deepEqual(user.ended.map((e) => e.reason), ['tenant_suspended']);
    assert.equal(r.terminateStaff({ by: 'sub', id: 'jane', untilMs: Date.now() + 60_000 }), 1);
    assert.deepEqual(jane.ended, [{ sqlstate: '57P01', reason: 'admin' }]);
    assert.deepEqual([other.ended, joe.ended], [[], []]);
  });

  it('S8 at a reload: logged-in sessions of a disabled or removed tenant end, the rest stay', () => {
    const gone = new FakeSession('g', 'relaying', 'gone');
    const disabled = new FakeSession('d', 'connecting', 'off');
    const preauth = new FakeSession('p', 'authenticating', 'off');
    const kept = new FakeSession('k', 'relaying', 'acme');
    const r = registryOf(gone, disabled, preauth, kept);
    r.endSessionsOfGoneTenants(new Map([['acme', tenant('acme', true)], ['off', tenant('off', false)]]));
    assert.deepEqual([gone, disabled].map((s) => s.ended[0]?.reason), ['tenant_suspended', 'tenant_suspended']);
    assert.deepEqual([preauth.ended, kept.ended], [[], []]);
  });

  it("sweeps every session with a tenant against that tenant's current limits, ending relaying ones whose tenant went", async () => {
    const kept = new FakeSession('k', 'relaying', 'acme');
    const late = new FakeSession('l', 'relaying', 'gone'); // was logging in when the reload removed its tenant
    const anon = new FakeSession('a', 'negotiating', undefined);
    const r = registryOf(kept, late, anon);
    r.startSweeper(() => new Map([['acme', tenant('acme', true)]]));
    await new Promise((resolve) => setTimeout(resolve, 250));
    r.stopSweeper();
    assert.ok(kept.checks.length >= 1 && kept.checks.every((l) => l === LIMITS));
    assert.deepEqual(late.ended.map((e) => e.reason), ['tenant_suspended']);
    assert.deepEqual([anon.checks, anon.ended], [[], []]);
  });

  it('terminateAll ends every session with the given reason', () => {
    const a = new FakeSession('a', 'relaying', 'acme');
    const b = new FakeSession('b', 'negotiating', undefined);
    registryOf(a, b).terminateAll('drain_deadline');
    assert.deepEqual([a.ended, b.ended], [[{ sqlstate: '57P01', reason: 'drain_deadline' }], [{ sqlstate: '57P01', reason: 'drain_deadline' }]]);
  });
});
