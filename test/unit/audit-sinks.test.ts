/**
 * The audit log's further stores, without a PostgreSQL: sinks handed to AuditLog.open see every
 * record from the first (the restart audit.gap included) and are closed by the log, also when
 * open() fails; and the PostgreSQL sink's disk spool gives its records back oldest first, across a
 * restart, with a torn line skipped.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { AuditLog } from '../../src/audit/log.js';
import type { RecordSink } from '../../src/audit/record-sink.js';
import type { AuditRecord } from '../../src/audit/record.js';
import { Spool, auditStoreSpoolCounters } from '../../src/audit/spool.js';
import type { StoredRecord } from '../../src/audit/store-table.js';
import { defaultAuditConfig } from '../../src/config/validate-audit.js';
import { Metrics } from '../../src/observability/metrics.js';

const log = pino({ level: 'silent' });

class RecordingSink implements RecordSink {
  readonly records: AuditRecord[] = [];
  closed = 0;
  deliver(record: AuditRecord): void {
    this.records.push(record);
  }
  close(): Promise<void> {
    this.closed++;
    return Promise.resolve();
  }
}

/** A record as the spool holds it: only `time` and an id to tell them apart matter here. */
function stored(n: number): StoredRecord {
  const record = { id: `r${n}`, time: new Date(Date.UTC(2026, 0, 1, 0, 0, n)).toISOString() } as unknown as AuditRecord;
  return { record, line: JSON.stringify(record) };
}

describe('audit sinks', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-audit-sinks-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a sink handed to open() gets every record from the first, the restart gap included, and is closed with the log', async () => {
    const file = path.join(dir, 'chain.jsonl');
    // A first run that never writes "stopped": the next open declares the lost tail.
    const first = await AuditLog.open(defaultAuditConfig(file), 'i-1', '0.0.0-test', new Metrics(), log);
    first.append({ event: 'session.query', n: 1 });
    await first.close();

    const sink = new RecordingSink();
    const audit = await AuditLog.open(defaultAuditConfig(file), 'i-1', '0.0.0-test', new Metrics(), log, { sinks: [sink] });
    audit.append({ event: 'session.query', n: 2 });
    assert.equal(sink.closed, 0);
    await audit.close();
    assert.deepEqual(
      sink.records.map((r) => r.event),
      ['audit.gap', 'session.query'],
    );
    assert.equal(sink.records[0]!['cause'], 'restart');
    assert.deepEqual(
      sink.records.map((r) => r.seq),
      [0, 1],
    );
    assert.equal(sink.closed, 1);
  });

  it('an open() that fails closes the sinks it was handed and rethrows', async () => {
    const sink = new RecordingSink();
    const cfg = { ...defaultAuditConfig(path.join(dir, 'unopened.jsonl')), checkpointKeyPath: path.join(dir, 'no-such-key.pem') };
    await assert.rejects(AuditLog.open(cfg, 'i-1', '0.0.0-test', new Metrics(), log, { sinks: [sink] }), /checkpoint_key .*ENOENT/);
    assert.equal(sink.closed, 1);
    assert.deepEqual(sink.records, []);
  });

  it('the spool gives records back oldest file first, a reserved name before later files, across a restart', async () => {
    const spoolDir = path.join(dir, 'spool');
    const spool = await Spool.open(spoolDir, auditStoreSpoolCounters(new Metrics()), log);
    const reserved = spool.reserve(); // as the sink does for the records it holds in memory
    spool.append([stored(2), stored(3)]);
    await spool.writeFile(reserved, [stored(0), stored(1)]);
    await spool.close();
    spool.append([stored(4)]); // after close: a new file, still in order
    assert.equal(spool.records, 3);
    assert.equal(spool.oldestTimeMs, Date.UTC(2026, 0, 1, 0, 0, 2));
    await spool.close();
    // A crash mid-write leaves a torn last line: it is skipped (the record is still in the audit file).
    const names = (await readdir(spoolDir)).sort();
    assert.equal(names.length, 3);
    await appendFile(path.join(spoolDir, names[2]!), '{"id":"torn');

    const again = await Spool.open(spoolDir, auditStoreSpoolCounters(new Metrics()), log);
    assert.equal(again.files, 3);
    const ids: string[] = [];
    for (let batch = await again.shift(); batch !== null; batch = await again.shift()) {
      ids.push(...batch.entries.map((e) => e.record.id));
      await again.remove(batch.file);
    }
    assert.deepEqual(ids, ['r0', 'r1', 'r2', 'r3', 'r4']);
    assert.equal(again.files, 0);
    assert.deepEqual(await readdir(spoolDir), []);
  });
});
