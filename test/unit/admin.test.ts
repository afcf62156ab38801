/**
 * The admin API's pieces without a network: the token check against the configured hash, the
 * revocation set (matching, expiry, bounds), what the bus accepts as a revocation, and
 * `pgwarden hash-token`.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { tokenMatches } from '../../src/admin/api.js';
import { decodeRevocation, MAX_REVOCATION_MS, RevocationSet, revocationMatches, revocationTtlMs } from '../../src/admin/revocations.js';
import type { StaffConfig } from '../../src/config/schema.js';

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

describe('admin token', () => {
  it('matches only the token whose SHA-256 is configured', () => {
    const h = sha('correct horse battery staple');
    assert.equal(tokenMatches('correct horse battery staple', h), true);
    assert.equal(tokenMatches('correct horse battery stapl', h), false);
    assert.equal(tokenMatches('', h), false);
    assert.equal(tokenMatches(h, h), false, 'the hash itself is not the token');
    assert.equal(tokenMatches('x', 'not hex'), false, 'a broken hash matches nothing (and does not throw)');
  });
});

describe('staff revocations', () => {
  const staff = { sub: 'alice', jti: 'tok-1' };
  const now = 1_700_000_000_000;

  it('match by token id or by person', () => {
    assert.equal(revocationMatches({ by: 'jti', id: 'tok-1' }, staff), true);
    assert.equal(revocationMatches({ by: 'jti', id: 'alice' }, staff), false);
    assert.equal(revocationMatches({ by: 'sub', id: 'alice' }, staff), true);
    assert.equal(revocationMatches({ by: 'sub', id: 'tok-1' }, staff), false);
  });

  it('are remembered until their time, and never longer than a day', () => {
    const set = new RevocationSet();
    assert.equal(set.add({ by: 'jti', id: 'tok-1', untilMs: now + 1000 }, now), true);
    assert.equal(set.add({ by: 'sub', id: 'bob', untilMs: now + 10 * MAX_REVOCATION_MS }, now), true);
    assert.equal(set.add({ by: 'sub', id: 'old', untilMs: now - 1 }, now), false, 'already lapsed');
    assert.equal(set.has('tok-1', 'someone', now + 999), true);
    assert.equal(set.has('tok-1', 'someone', now + 1000), false);
    assert.equal(set.has('any', 'bob', now + MAX_REVOCATION_MS - 1), true);
    assert.equal(set.has('any', 'bob', now + MAX_REVOCATION_MS), false, 'capped at a day');
    assert.equal(set.has('tok-2', 'old', now), false);
    // A later revocation of the same token extends it; an earlier one does not shorten it.
    set.add({ by: 'jti', id: 'tok-9', untilMs: now + 5000 }, now);
    set.add({ by: 'jti', id: 'tok-9', untilMs: now + 100 }, now);
    assert.equal(set.has('tok-9', 'x', now + 4000), true);
    assert.deepEqual(set.list(now + 4000), [{ by: 'jti', id: 'tok-9', untilMs: now + 5000 }]);
  });

  it('are bounded in number: when full, the one that lapses first goes', () => {
    const set = new RevocationSet();
    for (let i = 0; i < 10_000; i++) set.add({ by: 'jti', id: `t${i}`, untilMs: now + 10_000 + i }, now);
    assert.equal(set.size, 10_000);
    set.add({ by: 'sub', id: 'late', untilMs: now + 60_000 }, now);
    assert.equal(set.size, 10_000);
    assert.equal(set.has('t0', 'x', now), false, 'the soonest to lapse was dropped');
    assert.equal(set.has('t1', 'x', now), true);
    assert.equal(set.has('none', 'late', now), true);
  });

  it('from the bus: only well-formed ones, and never for more than a day', () => {
    const t = Date.now();
    assert.deepEqual(decodeRevocation({ by: 'jti', id: 'a-b.c', untilMs: t + 1000 }), { by: 'jti', id: 'a-b.c', untilMs: t + 1000 });
    for (const bad of [null, 'jti', { by: 'email', id: 'a', untilMs: t }, { by: 'sub', id: '', untilMs: t }, { by: 'sub', id: 'a b', untilMs: t }, { by: 'sub', id: 'x'.repeat(257), untilMs: t }, { by: 'sub', id: 'a', untilMs: 'soon' }, { by: 'sub', id: 'a', untilMs: Infinity }]) {
      assert.equal(decodeRevocation(bad), null, JSON.stringify(bad));
    }
    const far = decodeRevocation({ by: 'sub', id: 'a', untilMs: t + 100 * MAX_REVOCATION_MS });
    assert.ok(far !== null && far.untilMs <= Date.now() + MAX_REVOCATION_MS);
  });

  it('last as long as a token valid now can: the staff tokens\' maximum lifetime plus tolerance, at most a day', () => {
    assert.equal(revocationTtlMs(undefined), MAX_REVOCATION_MS);
    const staff = { maxTokenLifetimeMs: 3_600_000, clockToleranceMs: 30_000 } as StaffConfig;
    assert.equal(revocationTtlMs(staff), 3_630_000);
    assert.equal(revocationTtlMs({ ...staff, maxTokenLifetimeMs: 7 * MAX_REVOCATION_MS }), MAX_REVOCATION_MS);
  });
});

describe('pgwarden hash-token', () => {
  const cli = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../src/cli.js');
  const run = (args: string[], input = ''): { status: number | null; stdout: string; stderr: string } => {
    const r = spawnSync(process.execPath, [cli, 'hash-token', ...args], { input, encoding: 'utf8' });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  };

  it('prints the SHA-256 of the token read on stdin (one trailing newline ignored)', () => {
    const r = run([], 'a-long-enough-admin-token\n');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, `token_sha256 = "${sha('a-long-enough-admin-token')}"\n`);
  });

  it('--auditor names the audit view key', () => {
    const r = run(['--auditor'], 'a-long-enough-auditor-token\n');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, `auditor_token_sha256 = "${sha('a-long-enough-auditor-token')}"\n`);
  });

  it('refuses a short token', () => {
    const r = run([], 'short\n');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /too short/);
    assert.ok(!r.stdout.includes(sha('short')));
  });

  it('--generate makes a random token and its hash', () => {
    const a = run(['--generate']);
    const b = run(['--generate']);
    assert.equal(a.status, 0, a.stderr);
    const m = /^token: ([A-Za-z0-9_-]{43})\ntoken_sha256 = "([0-9a-f]{64})"\n$/.exec(a.stdout);
    assert.ok(m !== null, a.stdout);
    assert.equal(m[2], sha(m[1]!));
    assert.notEqual(a.stdout, b.stdout);
  });
});
