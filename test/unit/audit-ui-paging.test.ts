/**
 * The audit view's lists show the newest MAX_ROWS and link the next older page (pages.ts `more`,
 * audit-reader.ts `newest`). Following the links from the first page must reach every matching
 * row, with the filters kept, also when rows share a microsecond at a page's edge and when the
 * log's order strays from the times (as it may under workers).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AuditReader, MAX_ROWS } from '../../src/admin/ui/audit-reader.js';
import { parseFilter } from '../../src/admin/ui/handler.js';
import { sessionsPage, staffPage, type SessionsForm, type StaffForm } from '../../src/admin/ui/pages.js';
import { microsToRfc3339, parseTimeMicros } from '../../src/audit/query-source.js';
import { defaultAuditConfig } from '../../src/config/validate-audit.js';
import type { AuditConfig } from '../../src/config/schema.js';

const BASE_US = Date.parse('2026-01-05T09:00:00Z') * 1000;
const ACME = 1203;
const TIE = [700, 706] as const;
const STAFF = 1100; // these acme sessions all start in one microsecond, across the first page's edge

/** The older page's link in a rendered page, as the browser would follow it; null when there is none. */
function olderLink(page: string): URLSearchParams | null {
  const m = /<a class="older" href="([^"]*)"/.exec(page);
  if (m === null) return null;
  const href = m[1]!.replace(/&amp;/g, '&');
  return new URL(href, 'http://admin.invalid').searchParams;
}

describe('audit view: older pages', () => {
  let dir: string;
  let config: AuditConfig;
  let reader: AuditReader;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-ui-paging-'));
    config = defaultAuditConfig(path.join(dir, 'audit.jsonl'));
    const lines: string[] = [];
    const at = (us: number): string => microsToRfc3339(us);
    for (let i = 0; i < ACME; i++) {
      let us = BASE_US + i * 1000;
      if (i >= TIE[0] && i <= TIE[1]) us = BASE_US + 703 * 1000;
      // Written early, stamped late: with pages taken in log order this one would fall between them.
      if (i === 650) us = BASE_US + 1100 * 1000 + 1;
      lines.push(JSON.stringify({ event: 'session.start', time: at(us), session: { id: `acme-${String(i).padStart(4, '0')}`, ei: 0 }, tenant: 'acme', principal: { kind: 'tenant_user', db_user: 'app', database: 'app' } }));
      if (i % 60 === 0) {
        lines.push(JSON.stringify({ event: 'session.start', time: at(us + 500), session: { id: `other-${i}`, ei: 0 }, tenant: 'other', principal: { kind: 'tenant_user', db_user: 'app', database: 'app' } }));
      }
    }
    for (let i = 0; i < STAFF; i++) {
      lines.push(JSON.stringify({ event: 'staff.access', time: at(BASE_US + 2_000_000_000 + i * 1000), tenant: 'acme', staff: { sub: 'jane@ops', reason_or_ticket: `INC-${i}` }, decision: i % 2 === 0 ? 'allow' : 'deny' }));
    }
    await writeFile(config.file!, `${lines.join('\n')}\n`);
    reader = new AuditReader(() => config);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('sessions: the links from the first page reach every matching session, newest first, filters kept', async () => {
    const seen: string[] = [];
    let form: SessionsForm = { tenant: 'acme' };
    let pages = 0;
    for (;;) {
      const filter = parseFilter(form);
      assert.ok(typeof filter !== 'string', typeof filter === 'string' ? filter : '');
      const { rows, total } = await reader.sessions(filter);
      pages++;
      assert.ok(rows.length <= MAX_ROWS);
      assert.ok(rows.every((r) => r.tenant === 'acme'), 'the tenant filter is kept');
      for (let i = 1; i < rows.length; i++) assert.ok(rows[i - 1]!.start >= rows[i]!.start, 'newest first');
      if (pages === 1) assert.equal(total, ACME);
      seen.push(...rows.map((r) => r.session));
      const next = olderLink(String(sessionsPage('auditor', form, rows, total, null)));
      if (next === null) {
        assert.ok(total <= MAX_ROWS, 'no link only when the page holds them all');
        break;
      }
      assert.equal(next.get('tenant'), 'acme');
      assert.equal(next.get('until'), microsToRfc3339(parseTimeMicros(rows.at(-1)!.start) + 1), 'one microsecond past the oldest shown');
      form = Object.fromEntries(next);
      assert.ok(pages < 10, 'the pages end');
    }
    const unique = new Set(seen);
    assert.equal(unique.size, ACME, 'every acme session on some page');
    assert.ok(unique.has('acme-0650'), 'the one written out of order too');
    // Each older page starts at the oldest start shown before it, so the sessions sharing that
    // microsecond (the tie across the first page's edge among them) show again, rather than on none.
    const repeated = new Set(seen.filter((id, i) => seen.indexOf(id) !== i));
    assert.deepEqual([...repeated].sort(), ['acme-0206', 'acme-0704', 'acme-0705', 'acme-0706']);
    assert.equal(pages, 3);
  });

  it('staff decisions: the older page holds the rest, from the edge row on, with the decision filter kept', async () => {
    const first = await reader.staffDecisions({ decision: 'allow' });
    assert.equal(first.total, STAFF / 2, 'the even ones are allowed');
    const next = olderLink(String(staffPage('auditor', { decision: 'allow' }, first.rows, first.total, null)));
    assert.ok(next !== null);
    assert.equal(next.get('decision'), 'allow');
    const form = Object.fromEntries(next) as StaffForm;
    const filter = parseFilter(form);
    assert.ok(typeof filter !== 'string');
    const older = await reader.staffDecisions({ ...filter, decision: 'allow' });
    const tickets = (rows: readonly Record<string, unknown>[]): string[] => rows.map((r) => (r['staff'] as { reason_or_ticket: string }).reason_or_ticket);
    assert.equal(tickets(first.rows).at(-1), 'INC-100');
    assert.deepEqual(tickets(older.rows), Array.from({ length: 51 }, (_, k) => `INC-${100 - 2 * k}`), 'INC-100 again, then every older allow');
    assert.equal(olderLink(String(staffPage('auditor', form, older.rows, older.total, null))), null);
  });
});
