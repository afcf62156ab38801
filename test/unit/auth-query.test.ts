/**
 * auth_query without a server: judging a lookup's reply (anything unexpected is a refusal) and the
 * cache around lookups (TTLs, the per-role refresh after a failed proof, throttling, one lookup
 * for concurrent logins of one role), with a fake runner and a fake clock.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { judgeAuthReply, parseTimestamptz, type LookupResult } from '../../src/auth/auth-query-reply.js';
import { AuthLookups, LookupThrottled, type LookupOutcome, type LookupRunner } from '../../src/auth/auth-query.js';
import { makeScramVerifier, parseScramVerifier, type ScramVerifier } from '../../src/auth/scram.js';
import { PgError } from '../../src/errors.js';
import { DEFAULT_AUTH_QUERY, type AuthQuerySettings, type TenantConfig } from '../../src/config/schema.js';
import { parseConfigText } from '../../src/config/load.js';

const NOW = Date.UTC(2026, 0, 1);
const verifierOf = async (password: string, saltByte: number): Promise<ScramVerifier> =>
  parseScramVerifier(await makeScramVerifier(password, 4096, Buffer.alloc(16, saltByte)))!;

describe('judgeAuthReply', () => {
  let scram = '';
  it('accepts exactly one row (usename, SCRAM verifier, valuntil null or future) for the role asked about', async () => {
    scram = await makeScramVerifier('pw', 4096, Buffer.alloc(16, 1));
    const ok = judgeAuthReply(3, [['alice', scram, null]], 'alice', NOW);
    assert.equal(ok.ok, true);
    assert.equal(judgeAuthReply(3, [['alice', scram, '2030-01-01 00:00:00+00']], 'alice', NOW).ok, true);
    assert.equal(judgeAuthReply(3, [['alice', scram, 'infinity']], 'alice', NOW).ok, true);
  });

  const reason = (r: LookupResult): string => (r.ok ? 'ok' : r.reason);

  it('refuses with the reason the audit records', () => {
    const cases: [number, unknown, string][] = [
      [3, [], 'unknown_user'],
      [3, [['alice', null, null]], 'no_password'],
      [3, [['alice', scram, '2001-01-01 00:00:00+00']], 'secret_expired'],
      [3, [['alice', scram, '-infinity']], 'secret_expired'],
      [3, [['alice', scram, '2030-01-01 00:00:00+00 BC']], 'secret_expired'],
      [3, [['alice', 'md5' + 'a'.repeat(32), null]], 'unsupported_verifier'],
      [3, [['alice', 'plaintext-password', null]], 'unsupported_verifier'],
    ];
    for (const [fields, rows, want] of cases) assert.equal(reason(judgeAuthReply(fields, rows, 'alice', NOW)), want, JSON.stringify(rows));
  });

  it('treats anything unexpected from a hostile server as auth_query_invalid, never a throw', () => {
    const cases: [number, unknown][] = [
      [3, null],
      [3, 'rows'],
      [3, [['alice', scram, null], ['alice', scram, null]]],
      [2, [['alice', scram]]],
      [4, [['alice', scram, null, 'x']]],
      [3, [['bob', scram, null]]],
      [3, [['ALICE', scram, null]]],
      [3, [[1, scram, null]]],
      [3, [['alice', 42, null]]],
      [3, [['alice', scram, 12]]],
      [3, [['alice', scram, 'tomorrow']]],
      [3, [['alice', scram, '2030-13-01 00:00:00+00']]],
      [3, [['alice', 'SCRAM-SHA-256$4096:AAAA$short:short', null]]],
      [3, [['alice', 'SCRAM-SHA-256$' + 'A'.repeat(5000), null]]],
      [3, [{ usename: 'alice', passwd: scram, valuntil: null }]],
      [3, [['alice', scram]]],
    ];
    for (const [fields, rows] of cases) assert.equal(reason(judgeAuthReply(fields, rows, 'alice', NOW)), 'auth_query_invalid', JSON.stringify(rows).slice(0, 80));
  });

  it("parses PostgreSQL's ISO timestamptz output", () => {
    assert.equal(parseTimestamptz('2026-01-01 00:00:00+00'), NOW);
    assert.equal(parseTimestamptz('2026-01-01 01:30:00+01:30'), NOW);
    assert.equal(parseTimestamptz('2025-12-31 19:00:00.5-05'), NOW + 500);
    assert.ok(parseTimestamptz('0001-01-01 00:00:00+00')! < Date.UTC(1000, 0, 1));
    assert.equal(parseTimestamptz('infinity'), Infinity);
    assert.equal(parseTimestamptz('2026-01-01T00:00:00Z'), undefined);
    assert.equal(parseTimestamptz('x'.repeat(100)), undefined);
  });
});

const SETTINGS: AuthQuerySettings = {
  user: 'pgwarden_auth',
  passwordEnv: 'X',
  query: DEFAULT_AUTH_QUERY,
  database: 'postgres',
  cacheTtlMs: 60_000,
  negativeCacheTtlMs: 10_000,
  cacheSize: 100,
  poolSize: 2,
  timeoutMs: 1000,
  lookupsPerSecond: 2,
};
const TARGET = { host: '127.0.0.1', port: 5432, tls: 'disable' as const, ca: undefined };
const tenant = (s: Partial<AuthQuerySettings> = {}): TenantConfig => ({ id: 'acme', authQuery: { ...SETTINGS, ...s } }) as unknown as TenantConfig;

/** A fake server: answers from `roles`, counts lookups; a fake clock. */
async function harness(s: Partial<AuthQuerySettings> = {}) {
  const v1 = await verifierOf('one', 1);
  const v2 = await verifierOf('two', 2);
  const roles = new Map<string, LookupResult>([['alice', { ok: true, verifier: v1 }]]);
  const clock = { t: 1_000_000 };
  const outcomes: LookupOutcome[] = [];
  let asked = 0;
  let failWith: Error | null = null;
  let gate: Promise<void> | null = null;
  const runner = (): LookupRunner => ({
    run: async (user) => {
      asked++;
      if (gate !== null) await gate;
      if (failWith !== null) throw failWith;
      return roles.get(user) ?? { ok: false, reason: 'unknown_user' };
    },
    query: () => Promise.reject(new Error('not used here')),
    close: () => undefined,
  });
  const lookups = new AuthLookups(
    { onLookup: (_t, o) => outcomes.push(o), onCache: () => undefined, onError: () => undefined },
    { now: () => clock.t, runner },
  );
  const t = tenant(s);
  return {
    v1,
    v2,
    roles,
    clock,
    outcomes,
    lookups,
    asked: () => asked,
    failWith: (e: Error | null): void => {
      failWith = e;
    },
    setGate: (g: Promise<void> | null): void => {
      gate = g;
    },
    find: (user: string) => lookups.find(t, TARGET, user),
  };
}

describe('AuthLookups: cache, refresh, throttling', () => {
  it('caches a found verifier for auth_cache_ttl and a refusal for auth_negative_cache_ttl', async () => {
    const h = await harness();
    assert.equal((await h.find('alice')).ok, true);
    assert.equal((await h.find('alice')).ok, true);
    assert.equal(h.asked(), 1);
    assert.deepEqual(await h.find('ghost'), { ok: false, reason: 'unknown_user' });
    await h.find('ghost');
    assert.equal(h.asked(), 2);
    h.clock.t += 10_001; // the negative entry is gone, the positive one not
    await h.find('ghost');
    await h.find('alice');
    assert.equal(h.asked(), 3);
    h.clock.t += 50_000;
    await h.find('alice');
    assert.equal(h.asked(), 4);
  });

  it('a failed proof refreshes a role at most once per interval, and only for the verifier it was checked against', async () => {
    const h = await harness();
    const first = await h.find('alice');
    assert.ok(first.ok);
    h.roles.set('alice', { ok: true, verifier: h.v2 }); // ALTER ROLE … PASSWORD
    h.lookups.proofFailed('acme', 'alice', first.verifier); // just fetched: no refresh yet
    assert.equal(((await h.find('alice')) as { verifier: unknown }).verifier, h.v1);
    h.clock.t += 1_000;
    h.lookups.proofFailed('acme', 'alice', h.v2); // not the cached one: ignored
    assert.equal(((await h.find('alice')) as { verifier: unknown }).verifier, h.v1);
    h.lookups.proofFailed('acme', 'alice', first.verifier);
    assert.equal(((await h.find('alice')) as { verifier: unknown }).verifier, h.v2, 'the next login sees the new verifier');
    assert.equal(h.asked(), 2);
    // A storm of wrong passwords right after the refresh makes no further lookup.
    for (let i = 0; i < 10; i++) {
      const r = await h.find('alice');
      if (r.ok) h.lookups.proofFailed('acme', 'alice', r.verifier);
    }
    assert.equal(h.asked(), 2);
  });

  it('keeps the iteration counts of the verifiers it found (for the mock of that tenant)', async () => {
    const h = await harness();
    h.roles.set('bob', { ok: true, verifier: { ...h.v1, iterations: 10_000 } });
    h.roles.set('carl', { ok: true, verifier: { ...h.v1, iterations: 10_000 } });
    await h.find('alice');
    await h.find('bob');
    await h.find('carl');
    await h.find('ghost');
    assert.deepEqual([...h.lookups.iterationsSeen('acme')!], [[4096, 1], [10_000, 2]]);
  });

  it('forget() drops a role (the upstream refused the verifier pgwarden used)', async () => {
    const h = await harness();
    await h.find('alice');
    h.lookups.forget('acme', 'alice');
    await h.find('alice');
    assert.equal(h.asked(), 2);
  });

  it('auth_cache_ttl = 0 looks up at every login', async () => {
    const h = await harness({ cacheTtlMs: 0 });
    await h.find('alice');
    await h.find('alice');
    assert.equal(h.asked(), 2);
  });

  it('concurrent logins of one role share one lookup', async () => {
    const h = await harness();
    let open!: () => void;
    h.setGate(new Promise<void>((r) => (open = r)));
    const all = Promise.all([h.find('alice'), h.find('alice'), h.find('alice')]);
    open();
    const results = await all;
    assert.ok(results.every((r) => r.ok));
    assert.equal(h.asked(), 1);
  });

  it('throttles lookups per tenant (burst twice the rate) with 53300, and refills over time', async () => {
    const h = await harness({ lookupsPerSecond: 2 });
    for (let i = 0; i < 4; i++) await h.find(`ghost-${i}`);
    await assert.rejects(h.find('ghost-4'), (e: unknown) => e instanceof PgError && e.sqlstate === '53300' && e.reason === 'auth_query_throttled');
    assert.equal(h.asked(), 4);
    assert.deepEqual(h.outcomes.slice(-1), ['throttled']);
    await h.find('ghost-0'); // cached: no token needed
    h.clock.t += 500; // one token back
    await h.find('ghost-5');
    assert.equal(h.asked(), 5);
  });

  it('a server that cannot be asked is 08006 and nothing is cached', async () => {
    const h = await harness();
    h.failWith(new Error('ECONNREFUSED'));
    await assert.rejects(h.find('alice'), (e: unknown) => e instanceof PgError && e.sqlstate === '08006' && e.message === 'could not connect to the tenant database');
    h.failWith(new LookupThrottled());
    await assert.rejects(h.find('alice'), (e: unknown) => e instanceof PgError && e.sqlstate === '53300');
    h.failWith(null);
    assert.equal((await h.find('alice')).ok, true);
    assert.deepEqual(h.outcomes, ['error', 'throttled', 'found']);
  });
});

describe('auth_query config keys', () => {
  const base = (extra: string): string => `[server]\nlisten = "127.0.0.1:0"\nrequire_tls = false\n\n[tenants.acme]\nbackend = "postgresql://10.0.0.5:5432/app"\nbackend_tls = "disable"\n${extra}\n`;
  const problems = (extra: string): string[] => {
    try {
      parseConfigText(base(extra), '/tmp');
      return [];
    } catch (err) {
      return (err as { problems?: string[] }).problems ?? [String(err)];
    }
  };

  it('reads auth_user, auth_password_env and the defaults', () => {
    process.env['PGWARDEN_UNIT_AQ'] = 'x';
    const c = parseConfigText(base('auth_user = "pgwarden_auth"\nauth_password_env = "PGWARDEN_UNIT_AQ"'), '/tmp');
    const a = c.tenants.get('acme')!.authQuery!;
    assert.equal(a.user, 'pgwarden_auth');
    assert.equal(a.query, DEFAULT_AUTH_QUERY);
    assert.equal(a.database, 'postgres');
    assert.equal(a.poolSize, 2);
    assert.equal(parseConfigText(base(''), '/tmp').tenants.get('acme')!.authQuery, undefined);
  });

  it('names what is wrong', () => {
    process.env['PGWARDEN_UNIT_AQ'] = 'x';
    assert.ok(problems('auth_user = "a"').some((p) => p.includes('needs both auth_user and auth_password_env')));
    assert.ok(problems('auth_cache_ttl = "1s"').some((p) => p.includes('needs both')));
    assert.ok(problems('auth_user = "a"\nauth_password_env = "PGWARDEN_UNIT_AQ_UNSET"').some((p) => p.includes('PGWARDEN_UNIT_AQ_UNSET')));
    assert.ok(problems('auth_user = "a"\nauth_password_env = "PGWARDEN_UNIT_AQ"\nauth_query = "SELECT 1"').some((p) => p.includes('$1')));
    assert.ok(problems('auth_user = "a"\nauth_password_env = "PGWARDEN_UNIT_AQ"\nauth_query = "SELECT $1, $2"').some((p) => p.includes('$1')));
  });
});
