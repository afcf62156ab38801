/**
 * The audit view's chain page verifies rotated files once (audit-reader.ts VerifiedFiles, on
 * verify.ts ChainVerifier): each later view reads only the files after the longest unchanged run
 * and the live file, and its answer is always what verifying every file gives: after appends,
 * after a rotation, after a rotated file is edited (its mtime set back), and with another key.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { appendFile, mkdtemp, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { AuditLog } from '../../src/audit/log.js';
import type { AuditRecord } from '../../src/audit/record.js';
import { auditFileSet, ChainVerifier, verifyAuditFiles } from '../../src/audit/verify.js';
import { defaultAuditConfig } from '../../src/config/validate-audit.js';
import { Metrics } from '../../src/observability/metrics.js';
import { VerifiedFiles } from '../../src/admin/ui/audit-reader.js';

const RECORDS = 60;

describe('audit view: rotated files verified once', () => {
  let dir: string;
  let file: string;
  let written: AuditRecord[];
  const line = (r: AuditRecord): string => `${JSON.stringify(r)}\n`;
  const lines = (from: number, to: number): string => written.slice(from, to).map(line).join('');
  const rotated = (n: number): string => `${file}.2025010${n}T000000.000Z.${n * 10}`;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-verify-cache-'));
    file = path.join(dir, 'audit.jsonl');
    const audit = await AuditLog.open(defaultAuditConfig(path.join(dir, 'scratch.jsonl')), 'i-1', '0.0.0-test', new Metrics(), pino({ level: 'silent' }));
    written = Array.from({ length: RECORDS }, (_, i) =>
      audit.append({ event: 'session.start', session: { id: `s${i}`, ei: 0 }, tenant: 'acme', principal: { kind: 'tenant_user', db_user: 'app', database: 'app' } }),
    );
    await audit.close();
    // Three rotated files (seq 0-9, 10-19, 20-29) and the live file (30-34).
    for (const n of [1, 2, 3]) await writeFile(rotated(n), lines((n - 1) * 10, n * 10));
    await writeFile(file, lines(30, 35));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a verifier resumed from a point after each file ends where one run over all of them does', async () => {
    const files = await auditFileSet(file);
    const whole = await verifyAuditFiles(files);
    assert.equal(whole.ok, true);
    assert.equal(whole.records, 35);
    for (let k = 1; k < files.length; k++) {
      const first = new ChainVerifier();
      for (const f of files.slice(0, k)) assert.ok(await first.file(f));
      const rest = new ChainVerifier({}, first.point());
      for (const f of files.slice(k)) assert.ok(await rest.file(f));
      assert.deepEqual(rest.result(), whole, `resumed after ${k} files`);
    }
  });

  it('reads only what changed, and always answers as a whole verification does', async () => {
    const cache = new VerifiedFiles();
    const check = async (want: { files: number; unchanged: number }, key?: ReturnType<typeof generateKeyPairSync>['publicKey']): Promise<void> => {
      const files = await auditFileSet(file);
      const got = await cache.verify(files, file, key);
      assert.deepEqual({ files: got.files, unchanged: got.unchanged }, want);
      assert.deepEqual(got.result, await verifyAuditFiles(files, key === undefined ? {} : { publicKey: key }));
      const whole = new ChainVerifier(key === undefined ? {} : { publicKey: key });
      for (const f of files) if (!(await whole.file(f))) break;
      assert.deepEqual(got.seen, whole.records());
    };
    await check({ files: 4, unchanged: 0 });
    await check({ files: 1, unchanged: 3 });

    // The live file grows.
    await appendFile(file, lines(35, 40));
    await check({ files: 1, unchanged: 3 });

    // A rotation: the live file becomes the fourth rotated file (a rename: new to the cache), a new live file starts.
    await rename(file, rotated(4));
    await writeFile(file, lines(40, 45));
    await check({ files: 2, unchanged: 3 });
    await check({ files: 1, unchanged: 4 });

    // A rotated file edited in place, same size, its mtime set back to the nanosecond: the change
    // time still gives it away. (A whole second first, so utimes can set it back exactly.)
    const victim = rotated(2);
    const second = new Date('2025-01-02T00:00:00Z');
    await utimes(victim, second, second);
    await check({ files: 4, unchanged: 1 });
    const before = await stat(victim, { bigint: true });
    const text = await readFile(victim, 'utf8');
    await writeFile(victim, text.replace('"s15"', '"s51"'));
    await utimes(victim, second, second);
    const after = await stat(victim, { bigint: true });
    assert.deepEqual([after.ino, after.size, after.mtimeNs], [before.ino, before.size, before.mtimeNs], 'only the change time differs');
    await check({ files: 1, unchanged: 1 });
    const files = await auditFileSet(file);
    const bad = (await cache.verify(files, file, undefined)).result;
    assert.equal(bad.ok, false);
    assert.equal(bad.firstBad?.file, victim);
    assert.match(bad.firstBad?.problem ?? '', /hash mismatch/);

    // Put back: verified again from that file on.
    await writeFile(victim, text);
    await check({ files: 4, unchanged: 1 });

    // Another key: nothing verified under the old one counts.
    const { publicKey } = generateKeyPairSync('ed25519');
    await check({ files: 5, unchanged: 0 }, publicKey);
    await check({ files: 1, unchanged: 4 }, publicKey);
  });
});
