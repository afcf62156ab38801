/**
 * auth_query (issue 14) against a real PostgreSQL: roles made with CREATE ROLE … PASSWORD log in
 * through pgwarden, ALTER ROLE … PASSWORD takes over after a refresh, and every role that may not
 * log in (VALID UNTIL past, NOLOGIN, MD5, unknown) is refused exactly like a wrong password.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { startCluster, type Cluster } from '../support/cluster.js';
import { connect, connectError, clientConfig, libpqConninfo, psql, startProxy, testCerts, type RunningProxy } from '../support/proxy.js';
import { makeDevCerts } from '../../src/tools/dev-certs.js';
import { Wire, startupMessage, saslInitial } from '../support/wire.js';
import { makeScramVerifier } from '../../src/auth/scram.js';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { waitFor } from '../support/wait.js';
import { AUTH_QUERY_FUNCTION_SQL } from '../support/auth-query-function.js';

const AUTH_PW_ENV = 'PGWARDEN_TEST_AUTH_QUERY_PW';
const AUTH_PW = 'auth-secret';

/** The README's function, as a superuser runs it in the tenant's database. */
const SETUP = AUTH_QUERY_FUNCTION_SQL;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function metric(rp: RunningProxy, name: string, labels: Record<string, string>): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${rp.metricsPort}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/** The server-first-message's `s=` and `i=` for a login as `user` (raw bytes, no password needed). */
async function saltAndIterations(rp: RunningProxy, tenant: string, user: string): Promise<string> {
  const w = await Wire.connect(rp.port);
  await w.startTls(rp.certs.caCertPem, `${tenant}.pg.test`);
  w.write(startupMessage({ user, database: 'postgres' }));
  const r = await w.frame();
  assert.equal(r?.type, 'R');
  w.write(saslInitial('SCRAM-SHA-256', 'n,,n=,r=abcdefghijklmnop'));
  const cont = await w.frame();
  w.end();
  assert.equal(cont?.type, 'R');
  return /(s=[^,]+,i=\d+)/.exec(cont.body.toString('utf8', 4))![1]!;
}

describe('auth_query: roles the tenant manages itself', () => {
  let pg: Cluster;
  let rp: RunningProxy;
  let dir: string;
  const authKeys = { auth_user: 'pgwarden_auth', auth_password_env: AUTH_PW_ENV };

  before(async () => {
    process.env[AUTH_PW_ENV] = AUTH_PW;
    process.env['PGWARDEN_TEST_AUTH_QUERY_WRONG'] = 'not-the-password';
    pg = await startCluster({ auth: 'scram-sha-256', users: [{ name: 'pgwarden_auth', password: AUTH_PW }] });
    for (const sql of SETUP) await pg.query(sql);
    await pg.query("CREATE ROLE alice LOGIN PASSWORD 'alice-1'");
    await pg.query("CREATE ROLE erin LOGIN PASSWORD 'erin-1'");
    // A trap for an unqualified lookup: found only if the lookup's search_path were not pg_catalog.
    await pg.query(
      `CREATE FUNCTION public.get_auth(p text) RETURNS TABLE(usename name, passwd text, valuntil timestamptz)
         LANGUAGE sql SECURITY DEFINER AS $$ SELECT usename, passwd, valuntil FROM pg_shadow WHERE usename = p $$`,
    );
    await pg.query('GRANT EXECUTE ON FUNCTION public.get_auth(text) TO pgwarden_auth');
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-aq-'));
    rp = await startProxy({
      auditFile: path.join(dir, 'audit.jsonl'),
      tenants: [
        { id: 'acme', cluster: pg, users: [], extra: authKeys },
        { id: 'fresh', cluster: pg, users: [], extra: { ...authKeys, auth_cache_ttl: '0s' } },
        { id: 'flood', cluster: pg, users: [], extra: { ...authKeys, auth_lookups_per_second: 2 } },
        { id: 'down', cluster: pg, users: [], backendUrl: 'postgresql://127.0.0.1:1/postgres', extra: authKeys },
        { id: 'wronguser', cluster: pg, users: [], extra: { auth_user: 'pgwarden_auth', auth_password_env: 'PGWARDEN_TEST_AUTH_QUERY_WRONG' } },
        { id: 'iter', cluster: pg, users: [], extra: authKeys },
        { id: 'trap', cluster: pg, users: [], extra: { ...authKeys, auth_query: 'SELECT usename, passwd, valuntil FROM get_auth($1)' } },
      ],
    });
  });
  after(async () => {
    await rp?.close();
    await pg?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('logs in a role made with CREATE ROLE … PASSWORD (node-postgres and psql), as that role upstream', async () => {
    const c = await connect(rp, { tenant: 'acme', user: 'alice', password: 'alice-1' });
    const r = await c.query<{ u: string; sp: string }>('SELECT current_user AS u');
    assert.equal(r.rows[0]!.u, 'alice');
    await c.end();
    const p = await psql(libpqConninfo(rp, { tenant: 'acme', user: 'alice' }), 'alice-1', ['-c', 'SELECT current_user']);
    assert.equal(p.code, 0, p.stderr);
    assert.equal(p.stdout.trim(), 'alice');
  });

  it('ALTER ROLE … PASSWORD: a failed proof refreshes the cached verifier, the next login uses the new password and the old one stops working', async () => {
    const c = await connect(rp, { tenant: 'acme', user: 'alice', password: 'alice-1' }); // cached now
    await c.end();
    await pg.query("ALTER ROLE alice PASSWORD 'alice-2'");
    await sleep(1_100); // past the per-role refresh interval
    const stale = await connectError(clientConfig(rp, { tenant: 'acme', user: 'alice', password: 'alice-2' }));
    assert.equal(stale.code, '28P01', 'the cached verifier is the old one');
    const c2 = await connect(rp, { tenant: 'acme', user: 'alice', password: 'alice-2' });
    assert.equal((await c2.query<{ u: string }>('SELECT current_user AS u')).rows[0]!.u, 'alice');
    await c2.end();
    const old = await connectError(clientConfig(rp, { tenant: 'acme', user: 'alice', password: 'alice-1' }));
    assert.equal(old.code, '28P01');
    assert.equal(old.message, 'password authentication failed for user "alice"');
  });

  it('with auth_cache_ttl = 0, ALTER ROLE takes effect at the very next login', async () => {
    const c = await connect(rp, { tenant: 'fresh', user: 'erin', password: 'erin-1' });
    await c.end();
    await pg.query("ALTER ROLE erin PASSWORD 'erin-2'");
    const old = await connectError(clientConfig(rp, { tenant: 'fresh', user: 'erin', password: 'erin-1' }));
    assert.equal(old.code, '28P01');
    const c2 = await connect(rp, { tenant: 'fresh', user: 'erin', password: 'erin-2' });
    await c2.end();
  });

  it('refuses VALID UNTIL in the past, NOLOGIN, an MD5 verifier and an unknown role exactly like a wrong password', async () => {
    await pg.query("CREATE ROLE bob LOGIN PASSWORD 'bob-pw' VALID UNTIL '2001-01-01 00:00:00+00'");
    await pg.query("CREATE ROLE carol NOLOGIN PASSWORD 'carol-pw'");
    const md5 = `md5${createHash('md5').update('dave-pwdave').digest('hex')}`;
    await pg.query(`CREATE ROLE dave LOGIN PASSWORD '${md5}'`);
    // Sanity: PostgreSQL stored dave's password as MD5, and pg_shadow lists no NOLOGIN role.
    assert.match(String((await pg.query("SELECT rolpassword FROM pg_authid WHERE rolname = 'dave'")).rows[0]!['rolpassword']), /^md5/);
    assert.equal((await pg.query("SELECT 1 FROM pg_shadow WHERE usename = 'carol'")).rowCount, 0);
    const cases: [string, string][] = [
      ['bob', 'bob-pw'],
      ['carol', 'carol-pw'],
      ['dave', 'dave-pw'],
      ['nosuchrole', 'whatever'],
      ['alice', 'wrong-password'],
    ];
    for (const [user, password] of cases) {
      const e = await connectError(clientConfig(rp, { tenant: 'acme', user, password }));
      assert.equal(e.code, '28P01', user);
      assert.equal(e.message, `password authentication failed for user "${user}"`, user);
    }
    // psql sees the same text for an unknown role and a wrong password.
    const strip = (s: string): string => s.replace(/connection to server at "[^"]*" \([^)]*\), port \d+ failed: /, '').replace(/"[a-z]+"/, '"X"').trim();
    const a = await psql(libpqConninfo(rp, { tenant: 'acme', user: 'alice' }), 'wrong', ['-c', 'select 1']);
    const b = await psql(libpqConninfo(rp, { tenant: 'acme', user: 'ghostly' }), 'wrong', ['-c', 'select 1']);
    assert.notEqual(a.code, 0);
    assert.equal(strip(a.stderr), strip(b.stderr));
    assert.ok(
      (await metric(rp, 'pgwarden_auth_failures_total', { tenant: 'acme', reason: 'unsupported_verifier' })) >= 1,
      'the MD5 refusal is recorded with its own reason',
    );
    assert.ok((await metric(rp, 'pgwarden_auth_failures_total', { tenant: 'acme', reason: 'secret_expired' })) >= 1);
    // The audit has the real reason; what the client was sent is the same 28P01 text for every one.
    type Rec = { event: string; tenant?: string; reason?: string; claimed?: { db_user: string }; outcome?: { sqlstate?: string; message_sent?: string } };
    const want: Record<string, string> = { bob: 'secret_expired', carol: 'unknown_user', dave: 'unsupported_verifier', nosuchrole: 'unknown_user', alice: 'bad_password' };
    let found: Rec[] = [];
    await waitFor(async () => {
      const text = await readFile(path.join(dir, 'audit.jsonl'), 'utf8').catch(() => '');
      found = text
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Rec)
        .filter((r) => r.event === 'session.auth_failure' && r.tenant === 'acme' && r.claimed !== undefined && r.claimed.db_user in want);
      return Object.keys(want).every((u) => found.some((r) => r.claimed!.db_user === u && r.reason === want[u]));
    }, 5_000, 'audit records with each reason');
    for (const r of found) {
      assert.equal(r.outcome?.sqlstate, '28P01');
      assert.equal(r.outcome?.message_sent, `password authentication failed for user "${r.claimed!.db_user}"`);
    }
  });

  it('shows an unknown role the same deterministic salt and the iteration count real roles show, on every attempt', async () => {
    const a = await saltAndIterations(rp, 'acme', 'ghost-x');
    const b = await saltAndIterations(rp, 'acme', 'ghost-x');
    assert.equal(a, b);
    assert.match(a, /,i=4096$/);
    assert.match(await saltAndIterations(rp, 'acme', 'alice'), /,i=4096$/);
    // An MD5 role gets the mock too: also stable.
    assert.equal(await saltAndIterations(rp, 'acme', 'dave'), await saltAndIterations(rp, 'acme', 'dave'));
  });

  it("after a lookup, an unknown role shows the iteration count the tenant's roles have (not always 4096)", async () => {
    await pg.query(`CREATE ROLE ivan LOGIN PASSWORD '${await makeScramVerifier('ivan-pw', 10_000)}'`);
    assert.match(await saltAndIterations(rp, 'iter', 'ghost-y'), /,i=4096$/, 'nothing looked up yet');
    const c = await connect(rp, { tenant: 'iter', user: 'ivan', password: 'ivan-pw' });
    await c.end();
    assert.match(await saltAndIterations(rp, 'iter', 'ghost-y'), /,i=10000$/);
  });

  it("answers 08006 quickly when the tenant's server is down or auth_user cannot log in", async () => {
    for (const tenant of ['down', 'wronguser']) {
      const t0 = performance.now();
      const e = await connectError(clientConfig(rp, { tenant, user: 'alice', password: 'alice-2' }));
      assert.equal(e.code, '08006', tenant);
      assert.equal(e.message, 'could not connect to the tenant database');
      assert.ok(performance.now() - t0 < 2_000, `${tenant}: ${performance.now() - t0} ms`);
    }
  });

  it('looks up with search_path = pg_catalog whatever the client asks (PgBouncer CVE-2025-12819)', async () => {
    // get_auth($1) unqualified would find public.get_auth with the role's default search_path.
    const e = await connectError(clientConfig(rp, { tenant: 'trap', user: 'alice', password: 'alice-2', options: '-c search_path=public' }));
    assert.equal(e.code, '08006');
  });

  it('bounds lookups: unknown names are cached negatively and a flood of random names is throttled', async () => {
    const before = await metric(rp, 'pgwarden_auth_query_lookups_total', { tenant: 'flood' });
    for (let i = 0; i < 5; i++) {
      const e = await connectError(clientConfig(rp, { tenant: 'flood', user: 'repeat-ghost', password: 'x' }));
      assert.equal(e.code, '28P01');
    }
    const afterRepeat = await metric(rp, 'pgwarden_auth_query_lookups_total', { tenant: 'flood' });
    assert.equal(afterRepeat - before, 1, 'one lookup for five logins of one unknown name');
    const t0 = performance.now();
    const codes = new Map<string, number>();
    for (let i = 0; i < 20; i++) {
      const e = await connectError(clientConfig(rp, { tenant: 'flood', user: `r-${randomBytes(6).toString('hex')}`, password: 'x' }));
      codes.set(e.code ?? '', (codes.get(e.code ?? '') ?? 0) + 1);
    }
    const seconds = (performance.now() - t0) / 1000;
    const asked = (await metric(rp, 'pgwarden_auth_query_lookups_total', { tenant: 'flood' })) - afterRepeat;
    const throttled = await metric(rp, 'pgwarden_auth_query_lookups_total', { tenant: 'flood', outcome: 'throttled' });
    const made = asked - throttled;
    assert.ok(made <= 4 + Math.ceil(2 * seconds) + 1, `${made} lookups in ${seconds} s`);
    assert.ok(throttled > 0, 'some were throttled');
    assert.equal((codes.get('28P01') ?? 0) + (codes.get('53300') ?? 0), 20, JSON.stringify([...codes]));
  });

  it("survives a restart of the tenant's server: the idle lookup connection is dropped, the next lookup connects anew", async () => {
    await pg.query("CREATE ROLE rita LOGIN PASSWORD 'rita-pw'");
    const c = await connect(rp, { tenant: 'acme', user: 'erin', password: 'erin-2' }).catch(() => null); // any lookup: leaves an idle connection
    await c?.end();
    await pg.restart();
    const c2 = await connect(rp, { tenant: 'acme', user: 'rita', password: 'rita-pw' });
    assert.equal((await c2.query<{ u: string }>('SELECT current_user AS u')).rows[0]!.u, 'rita');
    await c2.end();
  });
});

describe('auth_query over TLS to the tenant server', () => {
  let tlsPg: Cluster;
  let rp: RunningProxy;
  let otherCaDir: string;

  before(async () => {
    process.env[AUTH_PW_ENV] = AUTH_PW;
    const certs = await testCerts();
    otherCaDir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-aq-otherca-'));
    const otherCa = await makeDevCerts({ dir: otherCaDir, hostnames: ['elsewhere.test'] });
    tlsPg = await startCluster({ ssl: { certPath: certs.serverCertPath, keyPath: certs.serverKeyPath }, users: [{ name: 'pgwarden_auth', password: AUTH_PW }] });
    for (const sql of SETUP) await tlsPg.query(sql);
    await tlsPg.query("CREATE ROLE tina LOGIN PASSWORD 'tina-pw'");
    const keys = { auth_user: 'pgwarden_auth', auth_password_env: AUTH_PW_ENV };
    rp = await startProxy({
      tenants: [
        { id: 'secure', cluster: tlsPg, users: [], backendTls: 'verify-full', backendCa: certs.caCertPath, extra: keys },
        { id: 'wrongca', cluster: tlsPg, users: [], backendTls: 'verify-full', backendCa: otherCa.caCertPath, extra: keys },
      ],
    });
  });
  after(async () => {
    await rp?.close();
    await tlsPg?.stop();
    await rm(otherCaDir, { recursive: true, force: true });
  });

  it('looks up over verified TLS, and refuses a server whose certificate the CA did not sign (08006)', async () => {
    const c = await connect(rp, { tenant: 'secure', user: 'tina', password: 'tina-pw' });
    assert.equal((await c.query<{ ssl: boolean }>('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')).rows[0]!.ssl, true);
    await c.end();
    const lookups = await tlsPg.query<{ ssl: boolean }>("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'pgwarden auth_query'");
    assert.ok(lookups.rows.length > 0 && lookups.rows.every((r) => r.ssl), 'the lookup connection is on TLS');
    const e = await connectError(clientConfig(rp, { tenant: 'wrongca', user: 'tina', password: 'tina-pw' }));
    assert.equal(e.code, '08006');
  });
});
