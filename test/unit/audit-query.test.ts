/**
 * Reading the audit back from files (`audit query | sessions`): times, rotated files in order,
 * each filter, session rows with the staff block, and output that cannot drive a terminal.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { AuditLog } from '../../src/audit/log.js';
import { defaultAuditConfig } from '../../src/config/validate-audit.js';
import type { AuditEvent, AuditRecord } from '../../src/audit/record.js';
import { Metrics } from '../../src/observability/metrics.js';
import { storeColumns } from '../../src/audit/store-table.js';
import { FileSource, auditFiles, microsToRfc3339, parseTimeMicros, type AuditFilter } from '../../src/audit/query-source.js';
import { eventRow, formatSessions, jsonLine, listSessions } from '../../src/audit/query-report.js';
import { runAuditStoreCommand } from '../../src/audit/query.js';

const log = pino({ level: 'silent' });
const STAFF = { kind: 'staff', db_user: 'support_ro', database: 'app', staff: { sub: 'jane@ops', reason_or_ticket: 'OPS-42', jti: 'j1', access: 'read' } };
const ALICE = { kind: 'tenant_user', db_user: 'alice', database: 'app' };
const tls = { version: 'TLSv1.3' };

/** s1: alice@acme (ended), s2: staff on globex (ended), s3: bob@acme (open). */
const EVENTS: AuditEvent[] = [
  { event: 'proxy.lifecycle', state: 'started' },
  { event: 'session.start', session: { id: 's1', ei: 0 }, tenant: 'acme', principal: ALICE, client: { addr: '10.0.0.1', tls } },
  { event: 'session.query', session: { id: 's1', ei: 1 }, tenant: 'acme', principal: ALICE, kind: 'simple', query: 'SELECT 1' },
  { event: 'staff.access', tenant: 'globex', staff: { sub: 'jane@ops', reason_or_ticket: 'OPS-42' }, target: { tenant: 'globex', db_user: 'support_ro', access_level: 'read' }, decision: 'allow' },
  { event: 'session.start', session: { id: 's2', ei: 0 }, tenant: 'globex', principal: STAFF, client: { addr: '10.0.0.9', tls } },
  { event: 'session.query', session: { id: 's2', ei: 1 }, tenant: 'globex', principal: STAFF, kind: 'simple', query: 'SELECT * FROM t\u001b[2J' },
  { event: 'session.end', session: { id: 's1', ei: 2 }, tenant: 'acme', principal: ALICE, reason: 'client_terminate', duration_ms: 1500, bytes_in: 100, bytes_out: 2000, queries: 1 },
  { event: 'session.auth_failure', tenant: 'acme', stage: 'sasl_final', claimed: { tenant: 'acme', db_user: 'mallory', database: 'app' }, reason: 'bad_password' },
  { event: 'session.end', session: { id: 's2', ei: 2 }, tenant: 'globex', principal: STAFF, reason: 'auth_expired', duration_ms: 61_000, bytes_in: 10, bytes_out: 20, queries: 1 },
  { event: 'session.start', session: { id: 's3', ei: 0 }, tenant: 'acme', principal: { ...ALICE, db_user: 'bob' }, client: { addr: '10.0.0.2', tls: { version: null } } },
];

async function collect(src: FileSource, f: AuditFilter): Promise<AuditRecord[]> {
  const out: AuditRecord[] = [];
  for await (const r of src.records(f)) out.push(r as AuditRecord);
  return out;
}

describe('audit query: times', () => {
  it('reads RFC 3339 with microseconds and offsets, dates, and spans ago', () => {
    assert.equal(parseTimeMicros('2025-01-31T12:00:00.123456Z'), Date.UTC(2025, 0, 31, 12) * 1000 + 123456);
    assert.equal(parseTimeMicros('2025-01-31T14:00:00.5+02:00'), Date.UTC(2025, 0, 31, 12) * 1000 + 500000);
    assert.equal(parseTimeMicros('2025-01-31'), Date.UTC(2025, 0, 31) * 1000);
    const now = Date.UTC(2025, 0, 31, 12);
    assert.equal(parseTimeMicros('90m', now), (now - 90 * 60_000) * 1000);
    assert.equal(parseTimeMicros('2d', now), (now - 2 * 86_400_000) * 1000);
    assert.throws(() => parseTimeMicros('yesterday'), /not a time/);
    assert.throws(() => parseTimeMicros('2025-13-45T00:00:00Z'), /not a time/);
    assert.equal(microsToRfc3339(Date.UTC(2025, 0, 31, 12) * 1000 + 7), '2025-01-31T12:00:00.000007Z');
  });
});

describe('audit query: files', () => {
  let dir: string;
  let file: string;
  let written: AuditRecord[];

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-aq-'));
    file = path.join(dir, 'audit.jsonl');
    // Two rotated files (named as the writer names them) and the live file; split at arbitrary points.
    const audit = await AuditLog.open(defaultAuditConfig(path.join(dir, 'scratch.jsonl')), 'i-1', '0.0.0-test', new Metrics(), log);
    written = EVENTS.map((e) => audit.append(e));
    await audit.close();
    const line = (r: AuditRecord): string => `${JSON.stringify(r)}\n`;
    await writeFile(`${file}.20250102T000000.000Z.4`, written.slice(4, 7).map(line).join(''));
    await writeFile(`${file}.20250101T000000.000Z.0`, written.slice(0, 4).map(line).join(''));
    await writeFile(file, written.slice(7).map(line).join('') + '{"torn":');
    await mkdir(`${file}.spool`); // the sink's default spool dir is no audit file
    await writeFile(`${file}.notes`, 'not audit\n');
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('finds the rotated files oldest first, then the live file', async () => {
    assert.deepEqual(await auditFiles(file), [`${file}.20250101T000000.000Z.0`, `${file}.20250102T000000.000Z.4`, file]);
    await assert.rejects(auditFiles(path.join(dir, 'missing.jsonl')), /no audit file/);
  });

  it('reads every record in chain order and counts a torn line', async () => {
    const src = new FileSource(file);
    const all = await collect(src, {});
    assert.deepEqual(all.map((r) => r.id), written.map((r) => r.id));
    assert.equal(src.skipped, 1);
  });

  it('filters by tenant, user, staff, session, event and time', async () => {
    const src = new FileSource(file);
    const ids = async (f: AuditFilter): Promise<number[]> => (await collect(src, f)).map((r) => r.seq);
    assert.deepEqual(await ids({ tenant: 'globex' }), [3, 4, 5, 8]);
    assert.deepEqual(await ids({ user: 'alice' }), [1, 2, 6]);
    assert.deepEqual(await ids({ user: 'mallory' }), [7], 'a failed login is found by the user it claimed');
    assert.deepEqual(await ids({ staff: 'jane@ops' }), [3, 4, 5, 8]);
    assert.deepEqual(await ids({ session: 's1' }), [1, 2, 6]);
    assert.deepEqual(await ids({ events: ['session.end', 'staff.access'] }), [3, 6, 8]);
    assert.deepEqual(await ids({ events: ['session.*'] }), [1, 2, 4, 5, 6, 7, 8, 9]);
    assert.deepEqual(await ids({ tenant: 'acme', events: ['session.start'] }), [1, 9]);
    const t = (seq: number): number => parseTimeMicros(written[seq]!.time);
    assert.deepEqual(await ids({ sinceUs: t(4), untilUs: t(6) }), [4, 5], 'since is inclusive, until exclusive');
    assert.deepEqual(await ids({ tenant: 'nobody' }), []);
  });

  it('lists sessions with who, ticket, client, TLS, duration, statements, bytes and end', async () => {
    const rows = await listSessions(new FileSource(file), {});
    assert.deepEqual(rows.map((r) => [r.session, r.tenant, r.user, r.staff, r.ticket, r.client, r.tls, r.duration_ms, r.statements, r.bytes_in, r.bytes_out, r.end]), [
      ['s1', 'acme', 'alice', null, null, '10.0.0.1', 'TLSv1.3', 1500, 1, 100, 2000, 'client_terminate'],
      ['s2', 'globex', 'support_ro', 'jane@ops', 'OPS-42', '10.0.0.9', 'TLSv1.3', 61_000, 1, 10, 20, 'auth_expired'],
      ['s3', 'acme', 'bob', null, null, '10.0.0.2', null, null, null, null, null, 'open'],
    ]);
    const staffOnly = await listSessions(new FileSource(file), { staff: 'jane@ops' });
    assert.deepEqual(staffOnly.map((r) => r.session), ['s2']);
    const text = formatSessions(rows);
    assert.match(text, /^START +SESSION +TENANT +USER +STAFF +TICKET +CLIENT +TLS +DURATION +STMTS +BYTES IN\/OUT +END\n/);
    assert.match(text, /s2 +globex +support_ro +jane@ops +OPS-42 +10\.0\.0\.9 +TLSv1\.3 +1m01s +1 +10\/20 +auth_expired\n/);
    assert.match(text, /s3 .* open\n$/);
  });

  it('escapes control characters in the table; --json is one canonical object per line', async () => {
    const [q] = await collect(new FileSource(file), { session: 's2', events: ['session.query'] });
    const row = eventRow(q!).join(' ');
    assert.ok(!row.includes('\u001b'), 'no raw ESC reaches the terminal');
    assert.match(row, /\\u001b\[2J/);
    const line = jsonLine(q);
    assert.equal(line.split('\n').length, 2);
    assert.deepEqual(JSON.parse(line), q);
  });

  it('runs as a command: --file, filters, --json, usage errors', async () => {
    let out = '';
    let err = '';
    const run = (args: string[]): Promise<number | null> => {
      out = '';
      err = '';
      return runAuditStoreCommand(args, (s) => (out += s), (s) => (err += s));
    };
    assert.equal(await run(['query', '--file', file, '--tenant', 'acme', '--event', 'session.end', '--json']), 0);
    assert.deepEqual(out.trim().split('\n').map((l) => (JSON.parse(l) as AuditRecord).seq), [6]);
    assert.match(err, /skipped 1 unreadable line/);
    assert.equal(await run(['sessions', '--file', file, '--json']), 0);
    assert.equal(out.trim().split('\n').length, 3);
    assert.equal(await run(['query', '--file', file, '--since', 'soon']), 2);
    assert.match(err, /not a time/);
    assert.equal(await run(['query', '--file', file, '--postgres', 'postgresql://x@127.0.0.1/a']), 2);
    assert.equal(await run(['query', '--file', path.join(dir, 'nope.jsonl')]), 2);
    assert.equal(await run(['verify', file]), null, 'other audit subcommands are not this module’s');
  });

  it('derives the searchable columns the store indexes', () => {
    assert.deepEqual(storeColumns(written[4]!), { tenant: 'globex', session_id: 's2', db_user: 'support_ro', staff_sub: 'jane@ops', ticket: 'OPS-42', client_addr: '10.0.0.9' });
    assert.deepEqual(storeColumns(written[3]!), { tenant: 'globex', session_id: null, db_user: 'support_ro', staff_sub: 'jane@ops', ticket: 'OPS-42', client_addr: null });
  });
});
