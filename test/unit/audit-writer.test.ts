/**
 * The audit file writer: durable appends and group commit, write failures on a real /dev/full and
 * recovery with audit.gap, rotation that keeps one chain across files, signed checkpoints, verify
 * naming tampered records across rotated files, and the `audit verify` / `audit keygen` CLI.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createHash, createPublicKey, verify as verifySig } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { AuditLog, type AuditLogOptions } from '../../src/audit/log.js';
import type { RecordSink } from '../../src/audit/record-sink.js';
import type { AuditConfig } from '../../src/config/schema.js';
import { defaultAuditConfig } from '../../src/config/validate-audit.js';
import { recordHash, type AuditRecord } from '../../src/audit/record.js';
import { auditFileSet, verifyAuditFile, verifyAuditFiles } from '../../src/audit/verify.js';
import { rotatedSiblings } from '../../src/audit/files.js';
import { generateCheckpointKey, loadPublicKey } from '../../src/audit/checkpoint.js';
import { formatScramVerifier, mockVerifier } from '../../src/auth/scram.js';
import { Metrics } from '../../src/observability/metrics.js';

const log = pino({ level: 'silent' });
const CLI = path.resolve('dist/src/cli.js');

async function counter(m: { get(): Promise<{ values: { value: number; labels: Record<string, unknown> }[] }> }, labels: Record<string, string> = {}): Promise<number> {
  const { values } = await m.get();
  return values.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((n, v) => n + v.value, 0);
}

async function lines(file: string): Promise<string[]> {
  return (await readFile(file, 'utf8')).split('\n').filter((l) => l.length > 0);
}

async function records(file: string): Promise<AuditRecord[]> {
  return (await lines(file)).map((l) => JSON.parse(l) as AuditRecord);
}

function openLog(cfg: AuditConfig, metrics = new Metrics(), opts: AuditLogOptions = {}): Promise<AuditLog> {
  return AuditLog.open(cfg, 'instance-1', '0.0.0-test', metrics, log, opts);
}

/** Recomputes prev and hash from index `from` on: what a forger who can rewrite the file does. */
function rechain(ls: string[], from: number): string[] {
  const out = [...ls];
  let prev = from === 0 ? null : (JSON.parse(out[from - 1]!) as AuditRecord).chain.hash;
  for (let i = from; i < out.length; i++) {
    const rec = JSON.parse(out[i]!) as AuditRecord;
    rec.chain.prev = prev;
    rec.chain.hash = recordHash(rec);
    prev = rec.chain.hash;
    out[i] = JSON.stringify(rec);
  }
  return out;
}

async function rewrite(file: string, ls: readonly string[]): Promise<void> {
  await writeFile(file, `${ls.join('\n')}\n`);
}

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr });
    });
  });
}

const waitFor = async (cond: () => boolean, ms = 5_000): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
};

describe('audit writer', () => {
  let dir: string;
  let keyFile: string;
  let otherKeyFile: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-audit-writer-'));
    keyFile = path.join(dir, 'checkpoint.pem');
    otherKeyFile = path.join(dir, 'other.pem');
    for (const f of [keyFile, otherKeyFile]) {
      const k = generateCheckpointKey();
      await writeFile(f, k.privatePem, { mode: 0o600 });
      await writeFile(`${f}.pub`, k.publicPem);
    }
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  describe('durable appends', () => {
    it('resolves only once the record is in the file, with one fdatasync', async () => {
      const file = path.join(dir, 'durable.jsonl');
      const metrics = new Metrics();
      const audit = await openLog(defaultAuditConfig(file), metrics);
      const p = audit.appendDurable({ event: 'session.query', marker: 'first-durable' });
      // Nothing is written inside the caller's turn: the batch starts after it.
      assert.equal(readFileSync(file, 'utf8'), '');
      await p;
      const recs = await records(file);
      assert.equal(recs.length, 1);
      assert.equal(recs[0]!['marker'], 'first-durable');
      assert.equal(await counter(metrics.auditFsyncs), 1);
      assert.equal(await counter(metrics.auditWrites), 1);
      // Best-effort appends are written but not synced.
      audit.append({ event: 'session.query', marker: 'plain' });
      await audit.flush();
      assert.equal((await records(file)).length, 2);
      assert.equal(await counter(metrics.auditFsyncs), 1);
      assert.equal(audit.healthy, true);
      await audit.close();
    });

    it('concurrent durable appends share writes and fdatasyncs (group commit), in call order', async () => {
      const file = path.join(dir, 'group.jsonl');
      const metrics = new Metrics();
      const audit = await openLog(defaultAuditConfig(file), metrics);
      await Promise.all(Array.from({ length: 200 }, (_, i) => audit.appendDurable({ event: 'session.query', n: i })));
      assert.equal(await counter(metrics.auditWrites), 1, 'one write for 200 records appended in one turn');
      assert.equal(await counter(metrics.auditFsyncs), 1);
      // Waves that arrive while a write is in flight accumulate into the next batch.
      const waves: Promise<void>[] = [];
      for (let w = 0; w < 20; w++) {
        for (let i = 0; i < 10; i++) waves.push(audit.appendDurable({ event: 'session.query', n: 200 + w * 10 + i }));
        await new Promise((r) => setImmediate(r));
      }
      await Promise.all(waves);
      const fsyncs = await counter(metrics.auditFsyncs);
      assert.ok(fsyncs - 1 <= 20 && fsyncs - 1 >= 1, `200 more durable appends in 20 waves took ${fsyncs - 1} fdatasyncs`);
      const recs = await records(file);
      assert.deepEqual(
        recs.map((r) => r['n']),
        Array.from({ length: 400 }, (_, i) => i),
      );
      await audit.close();
      assert.equal((await verifyAuditFile(file)).ok, true);
    });

    it('with fsync = false a durable append resolves once written, without fdatasync', async () => {
      const file = path.join(dir, 'nofsync.jsonl');
      const metrics = new Metrics();
      const audit = await openLog({ ...defaultAuditConfig(file), fsync: false }, metrics);
      await audit.appendDurable({ event: 'session.query' });
      assert.equal((await records(file)).length, 1);
      await audit.close();
      assert.equal(await counter(metrics.auditFsyncs), 0);
    });
  });

  describe('write failures', () => {
    it('/dev/full: appendDurable rejects, healthy turns false, append does not throw, failures are counted', async () => {
      const metrics = new Metrics();
      const audit = await openLog(defaultAuditConfig('/dev/full'), metrics, { retryMs: 50 });
      assert.equal(audit.healthy, true);
      assert.doesNotThrow(() => audit.append({ event: 'proxy.lifecycle', state: 'started' }));
      await assert.rejects(audit.appendDurable({ event: 'session.query', query: 'SELECT 1' }), /audit log write failed \(ENOSPC\)/);
      assert.equal(audit.healthy, false);
      // While unhealthy, durable appends fail closed at once.
      const t0 = Date.now();
      await assert.rejects(audit.appendDurable({ event: 'session.query' }), /unavailable \(ENOSPC\)/);
      assert.ok(Date.now() - t0 < 40, 'no wait for the retry');
      assert.doesNotThrow(() => audit.append({ event: 'session.end' }));
      // The retry loop keeps trying (and failing) every retryMs: 3 failures within ~150 ms, or 2 s on a loaded box.
      let failures = 0;
      for (const deadline = Date.now() + 2_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 20))) {
        failures = await counter(metrics.auditWriteFailures, { cause: 'ENOSPC' });
        if (failures >= 3) break;
      }
      assert.ok(failures >= 3, `failures counted: ${failures}`);
      assert.equal(await counter(metrics.auditHealthy), 0);
      assert.ok((await counter(metrics.auditQueueRecords)) >= 3, 'records stay queued in memory');
      await audit.close(); // does not hang
    });

    it('recovers: queued records are written, dropped ones are declared by one audit.gap, sinks see every record', async () => {
      const link = path.join(dir, 'switch.jsonl');
      const real = path.join(dir, 'switch-real.jsonl');
      await symlink('/dev/full', link);
      const metrics = new Metrics();
      const audit = await openLog(defaultAuditConfig(link), metrics, { retryMs: 30, maxQueueRecords: 5 });
      const delivered: AuditRecord[] = [];
      const sink: RecordSink = { deliver: (r) => delivered.push(r), close: () => Promise.resolve() };
      audit.addSink(sink);
      const healthChanges: boolean[] = [];
      audit.onHealthChange((h) => healthChanges.push(h));
      for (let i = 0; i < 3; i++) audit.append({ event: 'session.query', n: i });
      await audit.flush();
      assert.equal(audit.healthy, false);
      for (let i = 3; i < 13; i++) audit.append({ event: 'session.query', n: i }); // 3, 4 fit; 5..12 dropped
      await assert.rejects(audit.appendDurable({ event: 'session.query', n: 13 }), /unavailable/);
      assert.equal(await counter(metrics.auditDropped), 9);
      // The disk comes back: the path now leads to a writable file.
      await unlink(link);
      await symlink(real, link);
      await waitFor(() => audit.healthy);
      audit.append({ event: 'session.query', n: 'after' });
      await audit.close();
      assert.deepEqual(healthChanges, [false, true]);

      const recs = await records(real);
      assert.deepEqual(
        recs.map((r) => r.seq),
        [0, 1, 2, 3, 4, 14, 15],
      );
      const gap = recs[5]!;
      assert.equal(gap.event, 'audit.gap');
      assert.deepEqual({ from: gap['from_seq'], to: gap['to_seq'], cause: gap['cause'], n: gap['dropped_estimate'] }, { from: 5, to: 13, cause: 'ENOSPC', n: 9 });
      const v = await verifyAuditFile(real);
      assert.equal(v.ok, true, JSON.stringify(v.firstBad));
      assert.equal(v.gaps.length, 1);
      assert.deepEqual([v.gaps[0]!.fromSeq, v.gaps[0]!.toSeq], [5, 13]);
      // The other store saw the whole chain, including the records the file had to drop and the gap.
      assert.deepEqual(
        delivered.map((r) => r.seq),
        Array.from({ length: 16 }, (_, i) => i),
      );
      delivered.forEach((r, i) => i > 0 && assert.equal(r.chain.prev, delivered[i - 1]!.chain.hash));

      // A gap record that does not match the hole is no excuse: moving from_seq breaks the hash,
      // and deleting a kept record before a gap is still a broken chain.
      const ls = await lines(real);
      await rewrite(real, rechain([...ls.slice(0, 4), ...ls.slice(5)], 4));
      const cut = await verifyAuditFile(real);
      assert.equal(cut.ok, false);
      assert.equal(cut.firstBad?.line, 5);
    });
  });

  describe('rotation', () => {
    it('by size: many files, one unbroken chain, no record lost or reordered, durable waiters resolve', async () => {
      const sub = await mkdtemp(path.join(dir, 'rot-'));
      const file = path.join(sub, 'audit.jsonl');
      const metrics = new Metrics();
      const audit = await openLog({ ...defaultAuditConfig(file), rotateBytes: 2_000 }, metrics);
      const waits: Promise<void>[] = [];
      for (let i = 0; i < 60; i++) {
        if (i % 3 === 0) waits.push(audit.appendDurable({ event: 'session.query', n: i }));
        else audit.append({ event: 'session.query', n: i });
        // Rotation cuts between batches: let each few records be a batch of their own.
        if (i % 7 === 0) await audit.flush();
      }
      await Promise.all(waits);
      await audit.close();
      const rotated = await rotatedSiblings(file);
      assert.ok(rotated.length >= 3, `rotated files: ${rotated.length}`);
      for (const f of rotated) {
        assert.match(path.basename(f), /^audit\.jsonl\.\d{8}T\d{6}\.\d{3}Z\.\d+(-\d+)?$/);
        // Cut only once past rotate_bytes (never a tiny file right after a rotation).
        assert.ok((await stat(f)).size >= 2_000, `${f}: ${(await stat(f)).size} bytes`);
      }
      assert.ok(await counter(metrics.auditRotations, { outcome: 'rotated' }) >= 3);
      const set = await auditFileSet(file);
      assert.equal(set.length, rotated.length + 1);
      const all: AuditRecord[] = [];
      for (const f of set) all.push(...(await records(f)));
      assert.deepEqual(
        all.map((r) => r['n']),
        Array.from({ length: 60 }, (_, i) => i),
      );
      // The first record of each file continues the chain of the previous one.
      all.forEach((r, i) => i > 0 && assert.equal(r.chain.prev, all[i - 1]!.chain.hash));
      const v = await verifyAuditFiles(set);
      assert.equal(v.ok, true, JSON.stringify(v.firstBad));
      assert.equal(v.records, 60);
      assert.equal(v.files, set.length);

      // A restart on the same path continues the same chain after the rotated files. The first
      // boot never wrote "stopped", so the second opens with an audit.gap (restart) saying so.
      const again = await openLog({ ...defaultAuditConfig(file), rotateBytes: 2_000 });
      again.append({ event: 'proxy.lifecycle', state: 'started' });
      await again.close();
      const v2 = await verifyAuditFiles(await auditFileSet(file));
      assert.equal(v2.ok, true, JSON.stringify(v2.firstBad));
      assert.equal(v2.records, 62);
    });

    it('by size under a steady stream: every rotated file is past rotate_bytes, the chain is whole', async () => {
      const sub = await mkdtemp(path.join(dir, 'rot-stream-'));
      const file = path.join(sub, 'audit.jsonl');
      const audit = await openLog({ ...defaultAuditConfig(file), rotateBytes: 3_000 });
      for (let i = 0; i < 300; i++) {
        audit.append({ event: 'session.query', n: i });
        await new Promise((r) => setImmediate(r));
      }
      await audit.close();
      const rotated = await rotatedSiblings(file);
      assert.ok(rotated.length >= 2, `rotated files: ${rotated.length}`);
      // Records that arrive during a rotation form the next batch (group commit), so files vary.
      for (const f of rotated) assert.ok((await stat(f)).size >= 3_000, `${f}: ${(await stat(f)).size} bytes`);
      const v = await verifyAuditFiles(await auditFileSet(file));
      assert.equal(v.ok, true, JSON.stringify(v.firstBad));
      assert.equal(v.records, 300);
    });

    it('quick restarts with rotation and checkpoints: the files sort in chain order and all verify', async () => {
      const sub = await mkdtemp(path.join(dir, 'rot-boots-'));
      const file = path.join(sub, 'audit.jsonl');
      const cfg: AuditConfig = { ...defaultAuditConfig(file), checkpointKeyPath: keyFile, checkpointEveryRecords: 4, rotateBytes: 1_500 };
      for (let boot = 0; boot < 3; boot++) {
        const audit = await openLog(cfg);
        for (let i = 0; i < 11; i++) {
          audit.append({ event: 'session.query', boot, n: i });
          if (i % 3 === 0) await audit.flush();
        }
        audit.append({ event: 'proxy.lifecycle', state: 'stopped' }); // a clean stop: no restart gap
        await audit.close();
      }
      const set = await auditFileSet(file);
      assert.ok(set.length >= 4, `files: ${set.length}`);
      const v = await verifyAuditFiles(set, { publicKey: await loadPublicKey(`${keyFile}.pub`) });
      assert.equal(v.ok, true, JSON.stringify(v.firstBad));
      assert.ok(v.checkpoints >= 9);
      assert.equal(v.records, 36 + v.checkpoints);
      assert.equal(v.uncovered, 0, 'each boot ends with a checkpoint');
    });

    it('by interval: the file is cut after rotate_interval, the chain goes on', async () => {
      const sub = await mkdtemp(path.join(dir, 'rot-int-'));
      const file = path.join(sub, 'audit.jsonl');
      const audit = await openLog({ ...defaultAuditConfig(file), rotateIntervalMs: 100 });
      audit.append({ event: 'session.query', n: 0 });
      await audit.flush();
      await new Promise((r) => setTimeout(r, 300));
      audit.append({ event: 'session.query', n: 1 });
      await audit.close();
      const set = await auditFileSet(file);
      assert.ok(set.length >= 2, `files: ${set.length}`);
      const v = await verifyAuditFiles(set);
      assert.equal(v.ok, true, JSON.stringify(v.firstBad));
      assert.equal(v.records, 2);
    });
  });

  describe('signed checkpoints', () => {
    let sub: string;
    let file: string;
    let set: string[];
    let original: Map<string, string[]>;
    let cpCount: number;
    const cfg = (): AuditConfig => ({ ...defaultAuditConfig(file), checkpointKeyPath: keyFile, checkpointEveryRecords: 10, checkpointOrigin: 'audit.example/pgwarden', rotateBytes: 4_000 });

    before(async () => {
      sub = await mkdtemp(path.join(dir, 'cp-'));
      file = path.join(sub, 'audit.jsonl');
      const metrics = new Metrics();
      const audit = await openLog(cfg(), metrics);
      for (let i = 0; i < 45; i++) {
        audit.append({ event: 'session.query', n: i, query: `SELECT ${i}` });
        if (i % 5 === 0) await audit.flush();
      }
      await audit.close();
      // Every 10 records, at each rotation (so each file ends signed), and at close.
      cpCount = await counter(metrics.auditCheckpoints);
      assert.ok(cpCount >= 5, `checkpoints: ${cpCount}`);
      set = await auditFileSet(file);
      original = new Map();
      for (const f of set) original.set(f, await lines(f));
    });
    const restore = async (): Promise<void> => {
      for (const [f, ls] of original) await rewrite(f, ls);
    };

    it('are C2SP checkpoints: the body and key id can be checked independently', async () => {
      const all: AuditRecord[] = [];
      for (const f of set) all.push(...(await records(f)));
      const cps = all.filter((r) => r.event === 'audit.checkpoint');
      assert.equal(cps.length, cpCount);
      const pub = await loadPublicKey(`${keyFile}.pub`);
      const raw = Buffer.from(pub.export({ format: 'jwk' }).x!, 'base64url');
      const kid = createHash('sha256').update(Buffer.concat([Buffer.from('audit.example/pgwarden\n'), Buffer.from([1]), raw])).digest().subarray(0, 4).toString('hex');
      let from = 0;
      for (const cp of cps) {
        assert.equal(cp['key_id'], kid);
        assert.equal(cp['sig_alg'], 'ed25519');
        assert.equal(cp['first_seq'], from);
        assert.equal(cp['last_seq'], cp.seq - 1);
        assert.equal(cp['count'], cp.seq - from);
        assert.equal(cp['head_hash'], cp.chain.prev);
        const body = `audit.example/pgwarden\n${cp.seq}\n${Buffer.from(cp['head_hash'] as string, 'hex').toString('base64')}\n`;
        assert.equal(verifySig(null, Buffer.from(body), createPublicKey(pub.export({ format: 'pem', type: 'spki' })), Buffer.from(cp['signature'] as string, 'base64')), true);
        from = cp.seq + 1;
      }
      // Each rotated file ends with a checkpoint: it is signed up to its last line.
      for (const f of set.slice(0, -1)) assert.equal((original.get(f)!.at(-1) ?? '').includes('"event":"audit.checkpoint"'), true, f);
    });

    it('verify with the right key: every checkpoint verified across the rotated files', async () => {
      await restore();
      const v = await verifyAuditFiles(set, { publicKey: await loadPublicKey(`${keyFile}.pub`) });
      assert.equal(v.ok, true, JSON.stringify(v.firstBad));
      assert.equal(v.checkpoints, cpCount);
      assert.equal(v.records, 45 + cpCount);
      assert.equal(v.uncovered, 0);
      assert.ok(v.files >= 2);
    });

    it('verify with a wrong key fails at the first checkpoint', async () => {
      await restore();
      const v = await verifyAuditFiles(set, { publicKey: await loadPublicKey(`${otherKeyFile}.pub`) });
      assert.equal(v.ok, false);
      assert.match(v.firstBad!.problem, /another key/);
      const first = (await records(set[0]!)).findIndex((r) => r.event === 'audit.checkpoint');
      assert.deepEqual([v.firstBad!.file, v.firstBad!.line], [set[0], first + 1]);
    });

    it('a rewritten history with re-chained, re-headed checkpoints fails the signature (and only with the key)', async () => {
      await restore();
      // The forger edits one record and rewrites everything after it, across files, checkpoint heads included.
      const sizes = set.map((f) => original.get(f)!.length);
      const all = set.flatMap((f) => original.get(f)!);
      const rec = JSON.parse(all[2]!) as AuditRecord;
      rec['query'] = 'SELECT harmless';
      all[2] = JSON.stringify(rec);
      let prev = (JSON.parse(all[1]!) as AuditRecord).chain.hash;
      for (let i = 2; i < all.length; i++) {
        const r = JSON.parse(all[i]!) as AuditRecord;
        if (r.event === 'audit.checkpoint') r['head_hash'] = prev;
        r.chain.prev = prev;
        r.chain.hash = recordHash(r);
        prev = r.chain.hash;
        all[i] = JSON.stringify(r);
      }
      let at = 0;
      for (const [i, f] of set.entries()) {
        await rewrite(f, all.slice(at, at + sizes[i]!));
        at += sizes[i]!;
      }
      // Without the key the rewrite passes: the chain alone proves nothing against a forger.
      const unsigned = await verifyAuditFiles(set);
      assert.equal(unsigned.ok, true, JSON.stringify(unsigned.firstBad));
      const v = await verifyAuditFiles(set, { publicKey: await loadPublicKey(`${keyFile}.pub`) });
      const cpIdx = all.findIndex((l) => l.includes('"event":"audit.checkpoint"'));
      assert.equal(v.ok, false);
      assert.deepEqual([v.firstBad!.file, v.firstBad!.line, v.firstBad!.id], [set[0], cpIdx + 1, (JSON.parse(all[cpIdx]!) as AuditRecord).id]);
      assert.match(v.firstBad!.problem, /signature does not verify/);
    });

    it('a checkpoint whose head does not match the records it covers is named', async () => {
      await restore();
      const f = set[0]!;
      const ls = [...original.get(f)!];
      const rec = JSON.parse(ls[1]!) as AuditRecord;
      rec['query'] = 'SELECT changed';
      ls[1] = JSON.stringify(rec);
      const forged = rechain(ls, 1); // the checkpoint keeps its signed (old) head_hash
      await rewrite(f, forged);
      const cpIdx = forged.findIndex((l) => l.includes('"event":"audit.checkpoint"'));
      const v = await verifyAuditFiles(set);
      assert.equal(v.ok, false);
      assert.deepEqual([v.firstBad!.file, v.firstBad!.line], [f, cpIdx + 1]);
      assert.match(v.firstBad!.problem, /head does not match/);
    });

    it('an edited, a deleted and reordered records are named by file and line across rotated files', async () => {
      const f = set[1]!;
      const ls = original.get(f)!;
      // Edited.
      await restore();
      const rec = JSON.parse(ls[3]!) as AuditRecord;
      rec['query'] = 'DROP TABLE x';
      await rewrite(f, [...ls.slice(0, 3), JSON.stringify(rec), ...ls.slice(4)]);
      let v = await verifyAuditFiles(set);
      assert.deepEqual([v.ok, v.firstBad?.file, v.firstBad?.line, v.firstBad?.id], [false, f, 4, rec.id]);
      assert.match(v.firstBad!.problem, /hash mismatch/);
      // Deleted: the first record of a rotated file.
      await restore();
      await rewrite(f, ls.slice(1));
      v = await verifyAuditFiles(set);
      assert.deepEqual([v.ok, v.firstBad?.file, v.firstBad?.line], [false, f, 1]);
      assert.match(v.firstBad!.problem, /chain broken/);
      // Reordered.
      await restore();
      await rewrite(f, [ls[0]!, ls[2]!, ls[1]!, ...ls.slice(3)]);
      v = await verifyAuditFiles(set);
      assert.deepEqual([v.ok, v.firstBad?.file, v.firstBad?.line], [false, f, 2]);
      assert.match(v.firstBad!.problem, /chain broken/);
      // A whole rotated file removed.
      await restore();
      v = await verifyAuditFiles(set.filter((x) => x !== f));
      assert.equal(v.ok, false);
      assert.equal(v.firstBad?.line, 1);
      assert.match(v.firstBad.problem, /chain broken/);
      await restore();
    });

    it('a checkpoint is written after checkpoint_interval when records are new', async () => {
      const f = path.join(sub, 'interval.jsonl');
      const audit = await openLog({ ...defaultAuditConfig(f), checkpointKeyPath: keyFile, checkpointIntervalMs: 100 });
      audit.append({ event: 'session.query' });
      await new Promise((r) => setTimeout(r, 250));
      await audit.flush();
      const recs = await records(f);
      assert.deepEqual(
        recs.map((r) => r.event),
        ['session.query', 'audit.checkpoint'],
        'one checkpoint: nothing new after the first',
      );
      await audit.close();
      assert.equal((await records(f)).length, 2, 'nothing new at close: no further checkpoint');
    });
  });

  describe('CLI', () => {
    let sub: string;
    let file: string;
    before(async () => {
      sub = await mkdtemp(path.join(dir, 'cli-'));
      file = path.join(sub, 'audit.jsonl');
    });

    it('audit keygen writes a 0600 private key and a public key, and never overwrites', async () => {
      const key = path.join(sub, 'key.pem');
      const r = await run(['audit', 'keygen', '--out', key]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /key id [0-9a-f]{8} for origin "pgwarden"/);
      assert.match(r.stdout, /BEGIN PUBLIC KEY/);
      assert.doesNotMatch(r.stdout, /PRIVATE/);
      assert.equal((await stat(key)).mode & 0o777, 0o600);
      assert.match(await readFile(key, 'utf8'), /BEGIN PRIVATE KEY/);
      assert.match(await readFile(`${key}.pub`, 'utf8'), /BEGIN PUBLIC KEY/);
      const before = await readFile(key, 'utf8');
      const again = await run(['audit', 'keygen', '--out', key]);
      assert.equal(again.code, 1);
      assert.match(again.stderr, /EEXIST|exists/);
      assert.equal(await readFile(key, 'utf8'), before);
    });

    it('audit verify: OK with counts across rotated files, with --public-key and with --config; FAILED names the record', async () => {
      const key = path.join(sub, 'key.pem');
      const cfg: AuditConfig = { ...defaultAuditConfig(file), checkpointKeyPath: key, checkpointEveryRecords: 7, rotateBytes: 3_000 };
      const audit = await openLog(cfg);
      for (let i = 0; i < 30; i++) {
        audit.append({ event: 'session.query', n: i });
        if (i % 4 === 0) await audit.flush();
      }
      await audit.close();
      const files = (await auditFileSet(file)).length;
      assert.ok(files >= 2);

      const ok = await run(['audit', 'verify', '--public-key', `${key}.pub`, file]);
      assert.equal(ok.code, 0, ok.stdout + ok.stderr);
      const m = new RegExp(`^OK: (\\d+) records in ${files} files, (\\d+) checkpoints verified; head [0-9a-f]{64}$`, 'm').exec(ok.stdout);
      assert.ok(m !== null, ok.stdout);
      const cps = Number(m[2]);
      assert.ok(cps >= 4);
      assert.equal(Number(m[1]), 30 + cps);

      const unsigned = await run(['audit', 'verify', file]);
      assert.equal(unsigned.code, 0);
      assert.match(unsigned.stdout, /signatures NOT checked/);

      const conf = path.join(sub, 'pgwarden.toml');
      const verifier = formatScramVerifier(mockVerifier(Buffer.from('cli-test'), 'acme', 'alice'));
      await writeFile(
        conf,
        `[server]\nlisten = "127.0.0.1:6432"\nrequire_tls = false\n\n[audit]\nfile = "${file}"\ncheckpoint_key = "${key}"\nrotate_bytes = 3000\n\n` +
          `[tenants.acme]\nbackend = "postgresql://10.0.0.5:5432/appdb"\nbackend_tls = "disable"\n\n[tenants.acme.users.alice]\nscram = "${verifier}"\n`,
      );
      const viaConfig = await run(['audit', 'verify', '--config', conf]);
      assert.equal(viaConfig.code, 0, viaConfig.stdout + viaConfig.stderr);
      assert.match(viaConfig.stdout, new RegExp(`, ${cps} checkpoints verified`));

      const wrong = await run(['audit', 'verify', '--public-key', `${otherKeyFile}.pub`, file]);
      assert.equal(wrong.code, 1);
      assert.match(wrong.stdout, /^FAILED: .+:\d+ \(id [0-9a-f-]{36}\): checkpoint signed with another key/m);

      // Tampering in a rotated file, found through the live path; files given as a glob work too.
      const set = await auditFileSet(file);
      const ls = await lines(set[0]!);
      const rec = JSON.parse(ls[2]!) as AuditRecord;
      rec['n'] = 999;
      await rewrite(set[0]!, [...ls.slice(0, 2), JSON.stringify(rec), ...ls.slice(3)]);
      const bad = await run(['audit', 'verify', '--public-key', `${key}.pub`, file]);
      assert.equal(bad.code, 1);
      assert.equal(bad.stdout.split('\n')[0], `FAILED: ${set[0]}:3 (id ${rec.id}): hash mismatch: the record was altered`);
      const globbed = await run(['audit', 'verify', ...[...set].reverse()]);
      assert.equal(globbed.code, 1);
      assert.match(globbed.stdout, new RegExp(`^FAILED: ${set[0]!.replace(/[.]/g, '\\.')}:3 `));

      const missing = await run(['audit', 'verify', path.join(sub, 'nope.jsonl')]);
      assert.equal(missing.code, 1);
      assert.match(missing.stderr, /ENOENT/);
    });
  });
});
