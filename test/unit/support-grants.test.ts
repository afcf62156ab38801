/**
 * Support grants (issue 17), the pure parts: what a reply from the tenant's server means (a
 * hostile server's odd replies refuse), the lesser access, the SQL a tenant installs, and the
 * re-check that ends sessions (with a fake server).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { GrantReplyInvalid, judgeGrantCheck, judgeOpenGrants, lesserAccess, type SupportGrant, type SupportGrants } from '../../src/auth/support-grants.js';
import { quoteIdent, tenantSqlScript, tenantSqlStatements } from '../../src/auth/tenant-sql.js';
import { CONSENT_RECHECK_GRACE_MS, ConsentWatch, type ConsentSubject } from '../../src/session/consent-watch.js';
import { Metrics } from '../../src/observability/metrics.js';
import { pino } from 'pino';
import type { TenantConfig } from '../../src/config/schema.js';
import { accessLogRow } from '../../src/audit/transparency.js';
import type { AuditRecord } from '../../src/audit/record.js';

/** A GRANT_CHECK_SQL row: the server's expires_at and the time it says is left, then revoked and expired. */
const row = (ticket: string, access: string, ms: number, revoked = false, expired = false, leftMs = 60_000): (string | null)[] => [
  ticket,
  access,
  String(ms),
  String(leftMs),
  String(revoked),
  String(expired),
];
const ASKED = 1_000_000;

describe('judgeGrantCheck', () => {
  it('an open grant', () => {
    assert.deepEqual(judgeGrantCheck({ columns: 6, rows: [row('T', 'write', 1_700_000_000_000)] }, 'T', ASKED), {
      ok: true,
      grant: { ticket: 'T', access: 'write', expiresAtMs: ASKED + 60_000, serverExpiresAtMs: 1_700_000_000_000 },
    });
  });
  it("ends by the time the server says is left, counted on pgwarden's clock from when it asked: the clocks may differ", () => {
    // The server's clock runs an hour ahead of pgwarden's: its expires_at says nothing to pgwarden's clock, the time left does.
    const now = Date.now();
    const check = judgeGrantCheck({ columns: 6, rows: [row('T', 'read', now + 3_600_000 + 120_000, false, false, 120_000)] }, 'T', now);
    assert.ok(check.ok);
    assert.equal(check.grant.expiresAtMs, now + 120_000);
    assert.equal(check.grant.serverExpiresAtMs, now + 3_720_000, 'the audit keeps the customer\'s expires_at as written');
    const open = judgeOpenGrants({ columns: 4, rows: [['T', 'read', String(now - 3_600_000 + 5_000), '5000']] }, ['T'], now);
    assert.equal(open.get('T')?.expiresAtMs, now + 5_000, 'an hour behind: still the time left');
  });
  it('none, revoked, expired', () => {
    assert.deepEqual(judgeGrantCheck({ columns: 6, rows: [] }, 'T', ASKED), { ok: false, why: 'none' });
    assert.deepEqual(judgeGrantCheck({ columns: 6, rows: [row('T', 'read', 1, true, true)] }, 'T', ASKED), { ok: false, why: 'revoked' });
    assert.deepEqual(judgeGrantCheck({ columns: 6, rows: [row('T', 'read', 1, false, true, -5)] }, 'T', ASKED), { ok: false, why: 'expired' });
  });
  it('refuses replies that are not what pgwarden asked for', () => {
    const bad = [
      { columns: 5, rows: [] },
      { columns: 6, rows: [row('T', 'read', 1), row('T', 'read', 1)] },
      { columns: 6, rows: [row('U', 'read', 1)] },
      { columns: 6, rows: [row('T', 'admin', 1)] },
      { columns: 6, rows: [['T', 'read', 'soon', '1', 'false', 'false']] },
      { columns: 6, rows: [['T', 'read', '1', 'a while', 'false', 'false']] },
      { columns: 6, rows: [['T', 'read', '1', null, 'false', 'false']] },
      { columns: 6, rows: [['T', 'read', null, '1', 'false', 'false']] },
      { columns: 6, rows: [['T', 'read', '1', '', 'false', 'false']] },
      { columns: 6, rows: [['T', 'read', '1', '1e3', 'false', 'false']] },
      { columns: 6, rows: [['T', null, '1', '1', 'false', 'false']] },
    ];
    for (const reply of bad) assert.throws(() => judgeGrantCheck(reply, 'T', ASKED), GrantReplyInvalid, JSON.stringify(reply));
    // A state column that is not exactly 'false' never opens access.
    assert.deepEqual(judgeGrantCheck({ columns: 6, rows: [['T', 'read', '1', '1', 'false', null]] }, 'T', ASKED), { ok: false, why: 'expired' });
  });
});

describe('judgeOpenGrants', () => {
  it('maps the asked tickets that are open', () => {
    const m = judgeOpenGrants({ columns: 4, rows: [['A', 'read', '5', '7']] }, ['A', 'B'], ASKED);
    assert.deepEqual([...m], [['A', { ticket: 'A', access: 'read', expiresAtMs: ASKED + 7, serverExpiresAtMs: 5 }]]);
  });
  it('refuses tickets not asked for, duplicates and too many rows', () => {
    assert.throws(() => judgeOpenGrants({ columns: 4, rows: [['C', 'read', '5', '5']] }, ['A'], ASKED), GrantReplyInvalid);
    assert.throws(() => judgeOpenGrants({ columns: 4, rows: [['A', 'read', '5', '5'], ['A', 'read', '5', '5']] }, ['A', 'A'], ASKED), GrantReplyInvalid);
    assert.throws(() => judgeOpenGrants({ columns: 3, rows: [] }, ['A'], ASKED), GrantReplyInvalid);
  });
});

describe('lesserAccess', () => {
  it('write only when both say write', () => {
    assert.equal(lesserAccess('write', 'write'), 'write');
    assert.equal(lesserAccess('write', 'read'), 'read');
    assert.equal(lesserAccess('read', 'write'), 'read');
    assert.equal(lesserAccess('read', 'read'), 'read');
  });
});

describe('tenant SQL', () => {
  it('quotes the lookup role and grants it only reading grants and appending to the log', () => {
    assert.equal(quoteIdent('we"ird'), '"we""ird"');
    const grants = tenantSqlStatements('pgwarden_auth').filter((s) => /^GRANT /.test(s));
    assert.deepEqual(grants, [
      'GRANT USAGE ON SCHEMA pgwarden TO "pgwarden_auth"',
      'GRANT SELECT ON pgwarden.support_grants TO "pgwarden_auth"',
      'GRANT EXECUTE ON FUNCTION pgwarden.record_staff_access(jsonb) TO "pgwarden_auth"',
    ]);
    const script = tenantSqlScript('pgwarden_auth');
    for (const fn of ['grant_support(text, interval, text)', 'revoke_support(text)', 'record_staff_access(jsonb)']) {
      assert.ok(script.includes(`REVOKE ALL ON FUNCTION pgwarden.${fn} FROM PUBLIC`), fn);
    }
    // Every function pins its search_path.
    assert.equal((script.match(/CREATE FUNCTION/g) ?? []).length, (script.match(/SET search_path = pg_catalog/g) ?? []).length);
  });
});

class FakeSession implements ConsentSubject {
  ended: string | null = null;
  expiresAtMs = 0;
  constructor(
    readonly tenantId: string,
    readonly ticket: string,
    readonly access: 'read' | 'write',
  ) {}
  get consentTicket(): string | null {
    return this.ended === null ? this.ticket : null;
  }
  applyGrant(grant: SupportGrant | undefined | 'unverifiable'): boolean {
    if (grant !== undefined && grant !== 'unverifiable' && lesserAccess(grant.access, this.access) === this.access) {
      this.expiresAtMs = grant.expiresAtMs;
      return false;
    }
    this.ended = grant === undefined ? 'withdrawn' : grant === 'unverifiable' ? grant : 'narrowed';
    return true;
  }
}

describe('ConsentWatch', () => {
  const tenant = { id: 'acme', authQuery: {} } as unknown as TenantConfig;
  const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

  it('asks once per tenant for all its tickets and ends the sessions whose grant is gone or narrowed', async () => {
    const asked: string[][] = [];
    let open = new Map<string, SupportGrant>([
      ['A', { ticket: 'A', access: 'write', expiresAtMs: 10, serverExpiresAtMs: 10 }],
      ['B', { ticket: 'B', access: 'read', expiresAtMs: 20, serverExpiresAtMs: 20 }],
    ]);
    const grants = { open: (_t: TenantConfig, _x: unknown, tickets: readonly string[]) => (asked.push([...tickets]), Promise.resolve(open)) } as unknown as SupportGrants;
    const a1 = new FakeSession('acme', 'A', 'write');
    const a2 = new FakeSession('acme', 'A', 'read');
    const b = new FakeSession('acme', 'B', 'write');
    const w = new ConsentWatch(() => [a1, a2, b], { tenants: () => new Map([['acme', tenant]]), target: () => ({ host: 'h', port: 1, tls: 'disable', ca: undefined }), grants, metrics: new Metrics(), log: pino({ level: 'silent' }) });
    w.tick();
    await settle();
    assert.deepEqual(asked, [['A', 'B']]);
    assert.equal(a1.ended, null);
    assert.equal(a1.expiresAtMs, 10);
    assert.equal(b.ended, 'narrowed', 'a read grant ends a write session');
    open = new Map();
    w.tick();
    await settle();
    assert.deepEqual(asked[1], ['A']);
    assert.equal(a1.ended, 'withdrawn');
    assert.equal(a2.ended, 'withdrawn');
  });

  it('keeps sessions through a short outage, ends them when it lasts (fail closed)', async () => {
    const grants = { open: () => Promise.reject(new Error('down')) } as unknown as SupportGrants;
    const s = new FakeSession('acme', 'A', 'read');
    const w = new ConsentWatch(() => [s], { tenants: () => new Map([['acme', tenant]]), target: () => ({ host: 'h', port: 1, tls: 'disable', ca: undefined }), grants, metrics: new Metrics(), log: pino({ level: 'silent' }) });
    const realNow = Date.now;
    let now = realNow();
    Date.now = () => now;
    try {
      w.tick();
      await settle();
      assert.equal(s.ended, null);
      now += CONSENT_RECHECK_GRACE_MS + 1;
      w.tick();
      await settle();
      assert.equal(s.ended, 'unverifiable');
    } finally {
      Date.now = realNow;
    }
  });
});

describe('accessLogRow: what the customer sees of a record', () => {
  const base = { schema: 'pgwarden.audit/v1', id: 'id-1', time: '2026-01-01T00:00:00.000000Z', mono_ns: 1, instance: {}, seq: 7, chain: { prev: null, hash: 'h' }, tenant: 'acme', session: { id: 's', ei: 0 } };
  const staff = { kind: 'staff', staff: { sub: 'alice', reason_or_ticket: 'INC-1', access: 'read' } };
  const rec = (fields: Record<string, unknown>): AuditRecord => ({ ...base, ...fields }) as unknown as AuditRecord;

  it('maps decisions, statements, results and ends of staff sessions', () => {
    const access = accessLogRow(rec({ event: 'staff.access', staff: { sub: 'alice', reason_or_ticket: 'INC-1' }, target: { access_level: 'read' }, decision: 'deny', reason: 'consent:none' }));
    assert.deepEqual(
      { event: access?.event, result: access?.result, ticket: access?.ticket, access: access?.access, record_hash: access?.record_hash, seq: access?.seq },
      { event: 'access', result: 'deny: consent:none', ticket: 'INC-1', access: 'read', record_hash: 'h', seq: 7 },
    );
    const q = accessLogRow(rec({ event: 'session.query', principal: staff, kind: 'simple', query: 'SELECT 1' }));
    assert.equal(q?.event, 'statement');
    assert.equal(q?.query, 'SELECT 1');
    assert.equal(q?.sub, 'alice');
    assert.equal(accessLogRow(rec({ event: 'session.query_result', principal: staff, kind: 'simple', command_tag: 'SELECT 1', sqlstate: null }))?.result, 'SELECT 1');
    assert.equal(accessLogRow(rec({ event: 'session.query_result', principal: staff, kind: 'simple', command_tag: null, sqlstate: '25006' }))?.result, 'error 25006');
    assert.equal(accessLogRow(rec({ event: 'session.end', principal: staff, reason: 'client_terminate' }))?.result, 'client_terminate');
  });

  it("leaves out the tenant's own users, unverified tokens and other events", () => {
    assert.equal(accessLogRow(rec({ event: 'session.query', principal: { kind: 'tenant_user' }, query: 'SELECT secret' })), null);
    assert.equal(accessLogRow(rec({ event: 'staff.access', staff: { unverified: true, sub: 'mallory' }, decision: 'deny' })), null);
    assert.equal(accessLogRow(rec({ event: 'session.auth_failure' })), null);
    assert.equal(accessLogRow(rec({ event: 'audit.checkpoint' })), null);
  });
});
