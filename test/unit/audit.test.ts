/**
 * The audit hash chain: records written by AuditLog verify; an edited, removed or reordered
 * record is caught at the right line; a restart continues the chain; ids are UUIDv7.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { AuditLog } from '../../src/audit/log.js';
import { defaultAuditConfig } from '../../src/config/validate-audit.js';
import { AUDIT_SCHEMA, recordHash, rfc3339Micros, uuidv7, type AuditEvent, type AuditRecord } from '../../src/audit/record.js';
import { ChainVerifier, verifyAuditFile } from '../../src/audit/verify.js';
import { Metrics } from '../../src/observability/metrics.js';

const log = pino({ level: 'silent' });
const UUIDV7_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

const EVENTS: readonly AuditEvent[] = [
  { event: 'proxy.lifecycle', state: 'started' },
  { event: 'session.start', session: { id: 's1', ei: 0 }, tenant: 'acme', principal: { kind: 'tenant_user', db_user: 'alice', database: 'app' } },
  { event: 'session.query', session: { id: 's1', ei: 1 }, tenant: 'acme', kind: 'simple', query: 'SELECT 1' },
  { event: 'session.auth_failure', tenant: 'acme', stage: 'sasl_final', reason: 'bad_password', outcome: { success: false, sqlstate: '28P01' } },
  { event: 'session.end', session: { id: 's1', ei: 2 }, tenant: 'acme', reason: 'client_terminate', duration_ms: 12 },
];

async function writeLog(file: string, events: readonly AuditEvent[], metrics: Metrics): Promise<AuditRecord[]> {
  const audit = await AuditLog.open(defaultAuditConfig(file), 'instance-1', '0.0.0-test', metrics, log);
  const records = events.map((e) => audit.append(e));
  await audit.close();
  return records;
}

async function lines(file: string): Promise<string[]> {
  return (await readFile(file, 'utf8')).split('\n').filter((l) => l.length > 0);
}

async function rewrite(file: string, ls: readonly string[]): Promise<void> {
  await writeFile(file, `${ls.join('\n')}\n`);
}

describe('audit log hash chain', () => {
  let dir: string;
  let metrics: Metrics;
  let original: string[];
  let written: AuditRecord[];
  const file = (): string => path.join(dir, 'audit.jsonl');

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-audit-'));
    metrics = new Metrics();
    written = await writeLog(file(), EVENTS, metrics);
    original = await lines(file());
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes one JSON line per record with the envelope filled in', () => {
    assert.equal(original.length, EVENTS.length);
    const bootId = written[0]!.instance.boot_id;
    let prev: string | null = null;
    original.forEach((line, i) => {
      const rec = JSON.parse(line) as AuditRecord;
      assert.equal(rec.schema, AUDIT_SCHEMA);
      assert.equal(rec.event, EVENTS[i]!.event);
      assert.match(rec.id, UUIDV7_RE);
      assert.match(rec.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
      assert.equal(typeof rec.mono_ns, 'number');
      assert.equal(rec.seq, i);
      assert.deepEqual(rec.instance, { id: 'instance-1', version: '0.0.0-test', boot_id: bootId });
      assert.equal(rec.chain.prev, prev);
      assert.equal(rec.chain.hash, recordHash(rec));
      assert.deepEqual(rec, written[i]);
      prev = rec.chain.hash;
    });
  });

  it('counts records in pgwarden_audit_records_total', async () => {
    const metric = await metrics.auditRecords.get();
    const total = metric.values.reduce((n, v) => n + v.value, 0);
    assert.equal(total, EVENTS.length);
  });

  it('verifies', async () => {
    const result = await verifyAuditFile(file());
    assert.equal(result.ok, true, JSON.stringify(result.firstBad));
    assert.equal(result.records, EVENTS.length);
    assert.equal(result.head, written[written.length - 1]!.chain.hash);
  });

  it('an edited field in the middle record fails at that line with "hash mismatch"', async () => {
    const tampered = [...original];
    const rec = JSON.parse(tampered[2]!) as AuditRecord;
    rec['query'] = 'SELECT 2';
    tampered[2] = JSON.stringify(rec);
    await rewrite(file(), tampered);
    const result = await verifyAuditFile(file());
    assert.equal(result.ok, false);
    assert.equal(result.firstBad?.line, 3);
    assert.equal(result.firstBad?.id, rec.id);
    assert.match(result.firstBad?.problem ?? '', /hash mismatch/);
  });

  it('an edited record with a recomputed hash breaks the chain at the next line', async () => {
    const tampered = [...original];
    const rec = JSON.parse(tampered[2]!) as AuditRecord;
    rec['query'] = 'SELECT 2';
    rec.chain.hash = recordHash(rec);
    tampered[2] = JSON.stringify(rec);
    await rewrite(file(), tampered);
    const result = await verifyAuditFile(file());
    assert.equal(result.ok, false);
    assert.equal(result.firstBad?.line, 4);
    assert.match(result.firstBad?.problem ?? '', /chain broken/);
  });

  it('a deleted middle line fails at the next one with "chain broken"', async () => {
    const tampered = original.filter((_, i) => i !== 2);
    await rewrite(file(), tampered);
    const result = await verifyAuditFile(file());
    assert.equal(result.ok, false);
    assert.equal(result.firstBad?.line, 3);
    assert.equal(result.firstBad?.id, (JSON.parse(original[3]!) as AuditRecord).id);
    assert.match(result.firstBad?.problem ?? '', /chain broken/);
  });

  it('two swapped lines fail', async () => {
    const tampered = [...original];
    [tampered[1], tampered[2]] = [tampered[2]!, tampered[1]!];
    await rewrite(file(), tampered);
    const result = await verifyAuditFile(file());
    assert.equal(result.ok, false);
    assert.equal(result.firstBad?.line, 2);
    assert.match(result.firstBad?.problem ?? '', /chain broken/);
  });

  it('a line that is not JSON fails at that line', async () => {
    const tampered = [...original];
    tampered[1] = tampered[1]!.slice(0, 20);
    await rewrite(file(), tampered);
    const result = await verifyAuditFile(file());
    assert.equal(result.ok, false);
    assert.equal(result.firstBad?.line, 2);
    assert.match(result.firstBad?.problem ?? '', /JSON/);
  });

  it('reopened on the same file (a new boot), the chain continues and still verifies', async () => {
    // The first boot ends without "stopped" (as after a crash), so the new one first says so.
    await rewrite(file(), original);
    const more = await writeLog(file(), [{ event: 'proxy.lifecycle', state: 'started' }, { event: 'proxy.lifecycle', state: 'stopped' }], metrics);
    const all = await lines(file());
    assert.equal(all.length, EVENTS.length + 3);
    const gap = JSON.parse(all[EVENTS.length]!) as AuditRecord & { cause?: string; previous_boot?: string; from_seq?: number; to_seq?: null; torn_line?: boolean };
    assert.deepEqual([gap.event, gap.cause, gap.previous_boot, gap.from_seq, gap.to_seq, gap.torn_line], ['audit.gap', 'restart', written[0]!.instance.boot_id, EVENTS.length, null, false]);
    assert.notEqual(gap.instance.boot_id, written[0]!.instance.boot_id, 'new boot id');
    assert.equal(gap.seq, 0, 'seq restarts per boot');
    assert.equal(gap.chain.prev, written[written.length - 1]!.chain.hash, 'links to the last head');
    const first = more[0]!;
    assert.equal(first.chain.prev, gap.chain.hash);
    assert.equal(more[1]!.chain.prev, first.chain.hash);

    const result = await verifyAuditFile(file());
    assert.equal(result.ok, true, JSON.stringify(result.firstBad));
    assert.equal(result.records, EVENTS.length + 3);
    assert.equal(result.head, more[1]!.chain.hash);
    // The audit view's chain page takes its gap records from the verification: the restart's is one.
    const verifier = new ChainVerifier();
    assert.ok(await verifier.file(file()));
    assert.deepEqual(verifier.records().gaps.map((g) => [g['event'], g['cause'], g['seq']]), [['audit.gap', 'restart', 0]]);

    // The second boot ended with "stopped": a third boot opens without a gap.
    const third = await writeLog(file(), [{ event: 'proxy.lifecycle', state: 'started' }], metrics);
    assert.equal(third[0]!.seq, 0);
    assert.equal(third[0]!.chain.prev, more[1]!.chain.hash);
    assert.equal((await lines(file())).length, EVENTS.length + 4);

    // Removing the last record of the first boot is caught at the first record of the second.
    const tampered = all.filter((_, i) => i !== EVENTS.length - 1);
    await rewrite(file(), tampered);
    const broken = await verifyAuditFile(file());
    assert.equal(broken.ok, false);
    assert.equal(broken.firstBad?.line, EVENTS.length);
    assert.match(broken.firstBad?.problem ?? '', /chain broken/);
  });

  it('after a crash mid-write (a torn last line), a restart declares the gap, links to the last whole record and starts a new line', async () => {
    const f = path.join(dir, 'torn.jsonl');
    const first = await writeLog(f, EVENTS.slice(0, 3), metrics);
    await appendFile(f, '{"schema":"pgwarden.audit/v1","event":"sess');
    const more = await writeLog(f, [{ event: 'proxy.lifecycle', state: 'started' }], metrics);
    const all = await lines(f);
    assert.equal(all.length, 6);
    const gap = JSON.parse(all[4]!) as AuditRecord & { cause?: string; from_seq?: number; torn_line?: boolean };
    assert.deepEqual([gap.event, gap.cause, gap.from_seq, gap.torn_line], ['audit.gap', 'restart', 3, true]);
    assert.equal(gap.chain.prev, first[2]!.chain.hash);
    assert.deepEqual(JSON.parse(all[5]!), more[0]);
    // The torn line is evidence of the crash: verify names it rather than skipping it.
    const result = await verifyAuditFile(f);
    assert.equal(result.ok, false);
    assert.deepEqual([result.firstBad?.file, result.firstBad?.line], [f, 4]);
    assert.match(result.firstBad?.problem ?? '', /not valid JSON/);
  });

  it('event fields cannot overwrite the envelope (seq, id, instance, schema)', async () => {
    const f = path.join(dir, 'envelope.jsonl');
    const audit = await AuditLog.open(defaultAuditConfig(f), 'instance-1', '0.0.0-test', metrics, log);
    audit.append({ event: 'proxy.lifecycle', state: 'started' });
    const rec = audit.append({ event: 'session.query', seq: 41, id: 'not-a-uuid', schema: 'other', instance: { id: 'x', version: 'y', boot_id: 'z' } });
    await audit.close();
    assert.equal(rec.seq, 1);
    assert.match(rec.id, UUIDV7_RE);
    assert.equal(rec.schema, AUDIT_SCHEMA);
    assert.equal(rec.instance.boot_id, audit.bootId);
    const result = await verifyAuditFile(f);
    assert.equal(result.ok, true, JSON.stringify(result.firstBad));
  });

  it('a log without a file only counts', async () => {
    const audit = await AuditLog.open(defaultAuditConfig(), 'instance-1', '0.0.0-test', metrics, log);
    const a = audit.append({ event: 'proxy.lifecycle', state: 'started' });
    const b = audit.append({ event: 'proxy.lifecycle', state: 'stopped' });
    assert.equal(a.chain.prev, null);
    assert.equal(b.chain.prev, a.chain.hash);
    await audit.close();
  });
});

describe('uuidv7 and timestamps', () => {
  it('has the RFC 9562 layout and carries the millisecond timestamp', () => {
    for (const ms of [0, 1, 1_700_000_000_123, 2 ** 48 - 1]) {
      const id = uuidv7(ms);
      assert.match(id, UUIDV7_RE);
      assert.equal(parseInt(id.replace(/-/g, '').slice(0, 12), 16), ms);
    }
  });

  it('sorts in time order across milliseconds', () => {
    const times = [1, 2, 255, 256, 65_535, 65_536, 1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_999, 2 ** 41, 2 ** 48 - 1];
    const ids = times.map((t) => uuidv7(t));
    assert.deepEqual([...ids].sort(), ids);
  });

  it('is unique', () => {
    const ids = new Set(Array.from({ length: 10_000 }, () => uuidv7(1_700_000_000_000)));
    assert.equal(ids.size, 10_000);
  });

  it('rfc3339Micros keeps microseconds', () => {
    assert.equal(rfc3339Micros(1_700_000_000_123_456_789n), '2023-11-14T22:13:20.123456Z');
    assert.equal(rfc3339Micros(0n), '1970-01-01T00:00:00.000000Z');
    // The text up to the second is kept from the previous call: same second, the next one, and back.
    assert.equal(rfc3339Micros(1_700_000_000_999_999_999n), '2023-11-14T22:13:20.999999Z');
    assert.equal(rfc3339Micros(1_700_000_001_000_000_000n), '2023-11-14T22:13:21.000000Z');
    assert.equal(rfc3339Micros(1_700_000_001_000_001_999n), '2023-11-14T22:13:21.000001Z');
    assert.equal(rfc3339Micros(1_700_000_000_500_000_000n), '2023-11-14T22:13:20.500000Z');
  });
});
