/**
 * The audit view reads on its own thread (src/admin/ui/reader-thread.ts): answers are the same
 * as AuditReader's on the proxy's thread, they come from another thread, "no audit" stays
 * distinguishable, reads beyond the queue's bound are refused rather than piled up, and a
 * terminated thread is replaced at the next read.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { AuditLog } from '../../src/audit/log.js';
import type { AuditEvent } from '../../src/audit/record.js';
import { defaultAuditConfig } from '../../src/config/validate-audit.js';
import { Metrics } from '../../src/observability/metrics.js';
import { AuditReader, NoAuditError } from '../../src/admin/ui/audit-reader.js';
import { MAX_QUEUED, ReaderBusyError, ThreadedAuditReader } from '../../src/admin/ui/reader-thread.js';
import type { AuditConfig } from '../../src/config/schema.js';

const STAFF = { kind: 'staff', db_user: 'support_ro', database: 'app', staff: { sub: 'jane@ops', reason_or_ticket: 'OPS-42', jti: 'j1', access: 'read' } };

describe('the audit view reader thread', () => {
  let dir: string;
  let config: AuditConfig;
  let reader: ThreadedAuditReader;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-reader-thread-'));
    config = defaultAuditConfig(path.join(dir, 'audit.jsonl'));
    const audit = await AuditLog.open(config, 'i-1', '0.0.0-test', new Metrics(), pino({ level: 'silent' }));
    const events: AuditEvent[] = [
      { event: 'staff.access', tenant: 'globex', staff: { sub: 'jane@ops', reason_or_ticket: 'OPS-42' }, target: { tenant: 'globex', db_user: 'support_ro', access_level: 'read' }, decision: 'allow' },
      { event: 'session.start', session: { id: 's2', ei: 0 }, tenant: 'globex', principal: STAFF, client: { addr: '10.0.0.9', tls: { version: 'TLSv1.3' } } },
    ];
    for (let i = 0; i < 200; i++) events.push({ event: 'session.query', session: { id: 's2', ei: i + 1 }, tenant: 'globex', principal: STAFF, kind: 'simple', query: `SELECT ${i}` });
    events.push({ event: 'session.end', session: { id: 's2', ei: 201 }, tenant: 'globex', principal: STAFF, reason: 'client_terminate', duration_ms: 10, bytes_in: 1, bytes_out: 2, queries: 200 });
    for (const e of events) audit.append(e);
    await audit.close();
    reader = new ThreadedAuditReader(() => config);
  });
  after(async () => {
    await reader?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('answers what AuditReader answers on this thread', async () => {
    const here = new AuditReader(() => config);
    assert.deepEqual(await reader.sessions({ ticket: 'OPS-42' }), await here.sessions({ ticket: 'OPS-42' }));
    const detail = await reader.session('s2');
    assert.deepEqual(detail, await here.session('s2'));
    assert.equal(detail.statements.length, 200);
    assert.equal(detail.statements[199]?.query, 'SELECT 199');
    assert.deepEqual(await reader.staffDecisions({ decision: 'allow' }), await here.staffDecisions({ decision: 'allow' }));
    const chain = await reader.chain();
    assert.equal(chain.verify?.ok, true);
    assert.deepEqual(chain, await here.chain());
  });

  it('"no audit" stays NoAuditError across the thread', async () => {
    const none = new ThreadedAuditReader(() => ({ ...config, file: undefined, postgres: undefined }));
    try {
      await assert.rejects(none.sessions({}), NoAuditError);
    } finally {
      await none.close();
    }
  });

  it('refuses reads beyond its queue instead of piling them up, and serves the rest in order', async () => {
    const reads = Array.from({ length: MAX_QUEUED + 5 }, () => reader.session('s2'));
    const settled = await Promise.allSettled(reads);
    const refused = settled.filter((s) => s.status === 'rejected');
    assert.ok(refused.length >= 1, 'some reads refused');
    assert.ok(refused.every((s) => s.reason instanceof ReaderBusyError));
    assert.ok(settled.filter((s) => s.status === 'fulfilled').length >= MAX_QUEUED, 'the queued reads were served');
    // Afterwards the reader takes reads again.
    assert.equal((await reader.session('s2')).statements.length, 200);
  });

  it('a terminated thread fails the reads it had and the next read starts a new one', async () => {
    const inFlight = reader.chain();
    await reader.close();
    await assert.rejects(inFlight, /audit reader thread exited/);
    assert.equal((await reader.sessions({})).rows.length, 1);
  });
});
