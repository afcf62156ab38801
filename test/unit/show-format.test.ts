/**
 * `pgwarden show`'s pure part: the psql-style table (alignment, row count, hostile cells) and the
 * tenant, staff and pool rows built from the admin API's answers.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { cellText, formatTable, poolRows, render, staffRows, tenantRows, type Column } from '../../src/tools/show.js';

const cols: Column[] = [
  { header: 'tenant', value: (r) => r['tenant'] },
  { header: 'n', value: (r) => r['n'], align: 'right' },
];

describe('show: table formatter', () => {
  it('aligns like psql: centred headers, dashes joined by +, numbers right-aligned, a row count', () => {
    const t = formatTable(cols, [
      { tenant: 'acme', n: 5 },
      { tenant: 'b', n: 1234 },
    ]);
    assert.equal(t, [' tenant |  n', '--------+------', ' acme   |    5', ' b      | 1234', '(2 rows)', ''].join('\n'));
  });
  it('prints headers and "(0 rows)" for no rows, "(1 row)" for one', () => {
    assert.equal(formatTable(cols, []), [' tenant | n', '--------+---', '(0 rows)', ''].join('\n'));
    assert.match(formatTable(cols, [{ tenant: 'x', n: 1 }]), /\(1 row\)\n$/);
  });
  it('shows null empty, objects as JSON, and control characters as "?" so a cell cannot break the table', () => {
    assert.equal(cellText(null), '');
    assert.equal(cellText(undefined), '');
    assert.equal(cellText({ a: 1 }), '{"a":1}');
    assert.equal(cellText('a\nb\x1b[2J'), 'a?b?[2J');
    const lines = formatTable(cols, [{ tenant: 'evil\nname', n: null }]).split('\n');
    assert.equal(lines.length, 5);
  });
});

describe('show: views from the API answers', () => {
  const sessions = [
    { id: 's1', tenant: 'acme', user: 'app', database: 'db', staff: null, queries: 2, bytes_in: 10, bytes_out: 20, client: { addr: '127.0.0.1', port: 5000 } },
    { id: 's2', tenant: 'acme', user: 'app', database: 'db', staff: null, queries: 1, bytes_in: 1, bytes_out: 2, client: { addr: '127.0.0.1', port: 5001 } },
    { id: 's3', tenant: 'zeta', user: 'staff', database: 'db', staff: { sub: 'alice', ticket: 'T-1', access: 'read', jti: 'j1', expires_at: '2030-01-01T00:00:00Z' }, queries: 0, bytes_in: 0, bytes_out: 0 },
    { id: 's4', tenant: null, user: null, database: null, staff: null, queries: 0, bytes_in: 0, bytes_out: 0 },
  ];
  it('tenants: sessions, staff sessions, distinct users and counters per tenant, sorted; unknown tenants left out', () => {
    assert.deepEqual(tenantRows(sessions), [
      { tenant: 'acme', sessions: 2, staff: 0, users: 1, queries: 3, bytes_in: 11, bytes_out: 22 },
      { tenant: 'zeta', sessions: 1, staff: 1, users: 1, queries: 0, bytes_in: 0, bytes_out: 0 },
    ]);
  });
  it('tenants: served tenants without sessions are listed with zeros', () => {
    const rows = tenantRows(sessions, ['acme', 'beta']);
    assert.deepEqual(
      rows.map((r) => [r['tenant'], r['sessions']]),
      [
        ['acme', 2],
        ['beta', 0],
        ['zeta', 1],
      ],
    );
    assert.match(render('tenants', { sessions, limits: [{ tenant: 'beta' }] }).table, /\n beta +\| +0 \|/);
  });
  it('staff: the revocations in force after the staff sessions', () => {
    const revocations = [{ by: 'jti', id: 'tok-9', until: '2030-01-01T00:00:00.000Z' }];
    const { table, json } = render('staff', { sessions, revocations });
    assert.deepEqual(json, { staff: staffRows(sessions), revocations });
    assert.match(table, /\(1 row\)\n\nrevocations in force:\n by +\| +id +\| +until\n-+\+-+\+-+\n jti \| tok-9 \| 2030-01-01T00:00:00\.000Z\n\(1 row\)\n$/);
  });
  it('staff: one row per staff session with its token claims', () => {
    assert.deepEqual(staffRows(sessions), [{ sub: 'alice', ticket: 'T-1', access: 'read', jti: 'j1', expires_at: '2030-01-01T00:00:00Z', tenant: 'zeta', database: 'db', session: 's3' }]);
  });
  it('sessions: the table names tenant, user and client', () => {
    const { table, json } = render('sessions', { sessions });
    assert.deepEqual(json, { sessions });
    assert.match(table, /^ +id +\| tenant \| user/);
    assert.match(table, /s1 +\| acme +\| app +\|/);
    assert.match(table, /127\.0\.0\.1:5000/);
    assert.match(table, /\(4 rows\)/);
  });
  it('pools: the rows of GET /pools, with a worker column when they name workers', () => {
    const pool = { tenant: 'acme', mode: 'session', total: 2, idle: 1, active: 1, waiting: 0, max: 10, keys: 1 };
    assert.deepEqual(poolRows({ pools: [pool] }), { rows: [pool], workers: false });
    assert.equal(poolRows({ pools: [{ ...pool, worker: 2 }] }).workers, true);
    assert.match(render('pools', { pools: [pool] }).table, /^ tenant \| +mode +\| active \| idle \| waiting \| total \| max \| keys\n/);
    assert.match(render('pools', { pools: [{ ...pool, worker: 2 }] }).table, /^ worker \| tenant/);
    assert.throws(() => poolRows([pool]), /unexpected answer/);
  });
});
