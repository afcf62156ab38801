/**
 * Issue 14 part 3, against a real PostgreSQL with real clients: clients that connect by IP address
 * (no SNI) and set no `options` name their tenant in the user name (`[server] tenant_in_user`) or
 * get `[server] default_tenant`. SNI and options still come first; an unknown tenant named in the
 * user name gets the wrong password's 28P01, byte for byte, after a full SCRAM exchange; the
 * audit says how each tenant was named; the admin list and cancel requests see the stripped user.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { connect, connectError, libpqConninfo, psql, startProxy, type ProxySpec, type RunningProxy } from '../support/proxy.js';
import { Wire, startupMessage } from '../support/wire.js';
import { waitFor } from '../support/wait.js';
import { ScramClientExchange } from '../../src/auth/scram.js';
import { verifyAuditFile } from '../../src/audit/verify.js';

const APP_PASS = 'app-pass-naming';
const FL_PASS = 'first-last-pass';
const TOKEN = 'tenant-naming-admin-token-7c1d';
const TOKEN_SHA256 = createHash('sha256').update(TOKEN).digest('hex');

type AuditRec = Record<string, unknown> & { event: string; session?: { id: string } };

/** libpq by IP address: `host=127.0.0.1` sends no SNI; verify-ca checks the chain, not the name. */
function ipConninfo(rp: RunningProxy, user: string, extra = '', dbname: string | null = 'postgres'): string {
  const db = dbname === null ? '' : `dbname=${dbname}`;
  return `host=127.0.0.1 port=${rp.port} user=${user} ${db} sslmode=verify-ca sslrootcert=${rp.certs.caCertPath} ${extra}`;
}

/** node-postgres by IP address: pg sets `servername` only for a host name, so no SNI goes out. */
function ipClientConfig(rp: RunningProxy, user: string, password: string, applicationName?: string, database = 'postgres'): pg.ClientConfig {
  return {
    host: '127.0.0.1',
    port: rp.port,
    user,
    password,
    database,
    ...(applicationName === undefined ? {} : { application_name: applicationName }),
    ssl: { ca: rp.certs.caCertPem, checkServerIdentity: () => undefined },
    connectionTimeoutMillis: 10_000,
  };
}

/**
 * A SCRAM login with raw bytes that must fail: the authentication requests seen before the
 * ErrorResponse (10 = SASL, 11 = SASL continue: the exchange went the whole way) and the
 * ErrorResponse's exact body.
 */
async function rawFailure(rp: RunningProxy, o: { user: string; password: string; sni?: string }): Promise<{ auth: number[]; error: Buffer }> {
  const w = await Wire.connect(rp.port);
  try {
    await w.startTls(rp.certs.caCertPem, o.sni);
    w.write(startupMessage({ user: o.user, database: 'postgres' }));
    const scram = new ScramClientExchange({ kind: 'password', password: o.password });
    const auth: number[] = [];
    for (;;) {
      const f = await w.frame(10_000);
      if (f === null) throw new Error(`closed without an ErrorResponse (auth ${JSON.stringify(auth)})`);
      if (f.type === 'E') return { auth, error: f.body };
      if (f.type !== 'R') throw new Error(`unexpected ${f.type}`);
      const code = f.body.readUInt32BE(0);
      auth.push(code);
      if (code === 10) w.write(serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256', scram.clientFirst()));
      else if (code === 11) w.write(serialize.sendSCRAMClientFinalMessage(await scram.serverFirst(f.body.toString('utf8', 4))));
      else throw new Error(`unexpected authentication request ${code}`);
    }
  } finally {
    w.end();
  }
}

function adminSessions(port: number): Promise<Record<string, unknown>[]> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: '/sessions', method: 'GET', headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => {
        try {
          resolve((JSON.parse(text) as { sessions: Record<string, unknown>[] }).sessions);
        } catch (err) {
          reject(err instanceof Error ? err : new Error(String(err)));
        }
      });
    });
    req.on('error', reject);
    req.end();
  });
}

describe('tenant naming without SNI or options', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  let plain: RunningProxy;
  let dir: string;
  let auditFile: string;

  const audit = async (): Promise<AuditRec[]> => {
    await rp.proxy.audit.flush();
    const text = await readFile(auditFile, 'utf8');
    return text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as AuditRec);
  };
  const starts = async (appName: string): Promise<AuditRec[]> =>
    (await audit()).filter((r) => {
      if (r.event !== 'session.start') return false;
      const app = (r['client'] as { application_name: { value: string } | null }).application_name;
      return app?.value === appName;
    });

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-naming-'));
    auditFile = path.join(dir, 'audit.jsonl');
    cluster = await startCluster({
      users: [
        { name: 'app', password: APP_PASS },
        { name: 'first.last', password: FL_PASS },
      ],
      databases: ['acmedb', 'globexdb', 'app'],
    });
    const appVerifier = await readVerifier(cluster, 'app');
    const flVerifier = await readVerifier(cluster, 'first.last');
    const tenants: ProxySpec['tenants'] = [
      {
        id: 'acme',
        cluster,
        database: 'acmedb',
        users: [
          { name: 'app', verifier: appVerifier },
          { name: 'first.last', verifier: flVerifier },
        ],
      },
      { id: 'globex', cluster, database: 'globexdb', users: [{ name: 'app', verifier: appVerifier }] },
    ];
    rp = await startProxy({
      auditFile,
      admin: { token_sha256: TOKEN_SHA256 },
      server: { tenant_in_user: '.', default_tenant: 'globex' },
      tenants,
    });
    // The same tenants with both settings left at their default (off).
    plain = await startProxy({ metrics: false, tenants });
  });

  after(async () => {
    await plain?.close();
    await rp?.close();
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it('psql by IP address logs in as app.acme: user app of tenant acme', async () => {
    const r = await psql(ipConninfo(rp, 'app.acme', 'application_name=naming-psql', 'acmedb'), APP_PASS, ['-c', 'select current_user, current_database()']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'app|acmedb');
    const [start] = await starts('naming-psql');
    assert.ok(start !== undefined, 'session.start audited');
    assert.equal(start['tenant'], 'acme');
    assert.equal(start['tenant_from'], 'user');
    assert.equal((start['principal'] as { db_user: string }).db_user, 'app');
    assert.equal((start['client'] as { tls: { sni: string | null } }).tls.sni, null, 'no SNI was sent');
  });

  it('node-postgres by IP address logs in as first.last.acme (the last dot wins)', async () => {
    const c = new pg.Client(ipClientConfig(rp, 'first.last.acme', FL_PASS, 'naming-pg', 'acmedb'));
    await c.connect();
    try {
      const r = await c.query<{ u: string; d: string }>('select current_user as u, current_database() as d');
      assert.deepEqual(r.rows[0], { u: 'first.last', d: 'acmedb' });
    } finally {
      await c.end();
    }
    const [start] = await starts('naming-pg');
    assert.equal(start?.['tenant_from'], 'user');
    assert.equal((start?.['client'] as { tls: { sni: string | null } }).tls.sni, null);
  });

  it('a user name without the separator gets default_tenant', async () => {
    const c = new pg.Client(ipClientConfig(rp, 'app', APP_PASS, 'naming-default', 'globexdb'));
    await c.connect();
    try {
      const r = await c.query<{ u: string; d: string }>('select current_user as u, current_database() as d');
      assert.deepEqual(r.rows[0], { u: 'app', d: 'globexdb' });
    } finally {
      await c.end();
    }
    const [start] = await starts('naming-default');
    assert.equal(start?.['tenant'], 'globex');
    assert.equal(start?.['tenant_from'], 'default');
  });

  it('an SNI client with the role first.last is unaffected (the user name is not split)', async () => {
    const c = await connect(rp, { tenant: 'acme', user: 'first.last', password: FL_PASS, database: 'acmedb', applicationName: 'naming-sni' });
    try {
      const r = await c.query<{ u: string; d: string }>('select current_user as u, current_database() as d');
      assert.deepEqual(r.rows[0], { u: 'first.last', d: 'acmedb' });
    } finally {
      await c.end();
    }
    const [start] = await starts('naming-sni');
    assert.equal(start?.['tenant_from'], 'sni');
    // psql too, SNI by host name.
    const p = await psql(libpqConninfo(rp, { tenant: 'acme', user: 'first.last', database: 'acmedb' }), FL_PASS, ['-c', 'select current_user']);
    assert.equal(p.code, 0, p.stderr);
    assert.equal(p.stdout.trim(), 'first.last');
  });

  it('options name the tenant before the user name', async () => {
    // Without options this user name would go to default_tenant (globex).
    const r = await psql(ipConninfo(rp, 'app', "options='-c pgwarden.tenant=acme' application_name=naming-options"), APP_PASS, ['-c', 'select current_user']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'app');
    const [start] = await starts('naming-options');
    assert.equal(start?.['tenant'], 'acme');
    assert.equal(start?.['tenant_from'], 'options');
  });

  it('with no database given, the database the driver derives from the user name is the stripped user name', async () => {
    const r = await psql(ipConninfo(rp, 'app.acme', 'application_name=naming-nodb', null), APP_PASS, ['-c', 'select current_user, current_database()']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'app|app');
    const c = new pg.Client({ ...ipClientConfig(rp, 'app.acme', APP_PASS), database: undefined });
    await c.connect();
    try {
      assert.equal((await c.query<{ d: string }>('select current_database() as d')).rows[0]?.d, 'app');
    } finally {
      await c.end();
    }
  });

  it('SNI and options disagreeing stay 28000, whatever the user name says', async () => {
    const r = await psql(libpqConninfo(rp, { tenant: 'acme', user: 'app.acme', extra: "options='-c pgwarden.tenant=globex'" }), APP_PASS, ['-c', 'select 1']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /FATAL: {2}inconsistent tenant identifiers in connection request/);
  });

  it('an invalid tenant id in the user name: 28000 invalid tenant identifier', async () => {
    const e = await connectError(ipClientConfig(rp, 'app.ACME', APP_PASS));
    assert.equal(e.code, '28000');
    assert.equal(e.message, 'invalid tenant identifier');
  });

  it("an unknown tenant in the user name gets the wrong password's 28P01, byte for byte, after a full SCRAM exchange", async () => {
    const wrongPassword = await rawFailure(rp, { user: 'app.acme', password: 'wrong' });
    const unknownTenant = await rawFailure(rp, { user: 'app.nosuch', password: APP_PASS });
    const unknownBySni = await rawFailure(rp, { user: 'app', password: APP_PASS, sni: 'nosuch.pg.test' });
    const wrongBySni = await rawFailure(rp, { user: 'app', password: 'wrong', sni: 'acme.pg.test' });
    for (const f of [wrongPassword, unknownTenant, unknownBySni, wrongBySni]) assert.deepEqual(f.auth, [10, 11], 'SASL, then SASL continue: a full exchange');
    assert.match(wrongPassword.error.toString('latin1'), /C28P01\0Mpassword authentication failed for user "app"\0/);
    assert.ok(unknownTenant.error.equals(wrongPassword.error), `${unknownTenant.error.toString('latin1')} vs ${wrongPassword.error.toString('latin1')}`);
    assert.ok(unknownBySni.error.equals(wrongPassword.error));
    assert.ok(wrongBySni.error.equals(wrongPassword.error));

    // psql prints the same for both.
    const strip = (s: string): string => s.replace(/connection to server at "[^"]*"(?: \([^)]*\))?, port \d+ failed: /, '').trim();
    const a = await psql(ipConninfo(rp, 'app.acme'), 'wrong', ['-c', 'select 1']);
    const b = await psql(ipConninfo(rp, 'app.nosuch'), APP_PASS, ['-c', 'select 1']);
    assert.notEqual(a.code, 0);
    assert.equal(strip(a.stderr), strip(b.stderr));

    // The audit has the real reasons and says the tenant was named in the user name.
    const failures = (await audit()).filter((r) => r.event === 'session.auth_failure');
    type Claimed = { tenant: string; tenant_from: string; db_user: string };
    const claimed = (r: AuditRec): Claimed => r['claimed'] as Claimed;
    const unknown = failures.find((r) => r['reason'] === 'unknown_tenant' && claimed(r).tenant === 'nosuch' && claimed(r).tenant_from === 'user');
    assert.ok(unknown !== undefined, 'unknown_tenant audited with tenant_from user');
    assert.equal(claimed(unknown).db_user, 'app');
    assert.ok(failures.some((r) => r['reason'] === 'bad_password' && claimed(r).tenant === 'acme' && claimed(r).tenant_from === 'user'));
    assert.ok(failures.some((r) => r['reason'] === 'unknown_tenant' && claimed(r).tenant_from === 'sni'));
  });

  it('the admin session list shows the stripped user, and psql SIGINT cancels the session', async () => {
    const app = 'naming-cancel';
    const child = spawn('psql', ['-X', '-At', '-d', ipConninfo(rp, 'app.acme', `application_name=${app}`), '-c', 'select pg_sleep(30)'], {
      env: { ...process.env, PGPASSWORD: APP_PASS, PGCONNECT_TIMEOUT: '10' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const sleeping = async (): Promise<number> =>
      (
        await cluster.query<{ n: number }>(
          "select count(*)::int as n from pg_stat_activity where state = 'active' and query like 'select pg_sleep(%' and application_name = $1",
          [app],
        )
      ).rows[0]!.n;
    try {
      await waitFor(async () => (await sleeping()) === 1, 10_000, 'psql running pg_sleep');
      const sessions = await adminSessions(rp.adminPort);
      const mine = sessions.filter((s) => s['tenant'] === 'acme');
      assert.ok(mine.length >= 1, JSON.stringify(sessions));
      for (const s of mine) assert.equal(s['user'], 'app', JSON.stringify(s));
      child.kill('SIGINT');
      const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('still running'), 5_000))]);
      assert.equal(code, 1, `psql: ${String(code)}`);
      assert.match(stderr, /canceling statement due to user request/);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
      await cluster.query('select pg_cancel_backend(pid) from pg_stat_activity where application_name = $1', [app]);
    }
  });

  it('both settings are off by default: a user name with a dot names no tenant', async () => {
    const r = await psql(ipConninfo(plain, 'app.acme'), APP_PASS, ['-c', 'select 1']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /FATAL: {2}no tenant specified in connection request/);
    const e = await connectError(ipClientConfig(plain, 'app', APP_PASS));
    assert.equal(e.code, '28000');
    assert.equal(e.message, 'no tenant specified in connection request');
  });

  it('the audit log verifies and holds no password', async () => {
    await rp.proxy.audit.flush();
    const text = await readFile(auditFile, 'utf8');
    for (const secret of [APP_PASS, FL_PASS, 'SCRAM-SHA-256$']) assert.ok(!text.includes(secret), `no ${secret} in the audit`);
    const v = await verifyAuditFile(auditFile);
    assert.equal(v.ok, true, JSON.stringify(v.firstBad));
  });
});
