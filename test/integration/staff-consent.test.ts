/**
 * Staff access on request and access transparency (issue 17) against a real PostgreSQL: the
 * customer grants and withdraws with plain SQL through pgwarden, staff get in only while a grant
 * is open and with the lesser access, and the customer reads what staff did in its own table.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey } from 'jose';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { clientConfig, connect, connectError, spawnProxy, startProxy, testCerts, workerPids, type ChildProxy, type ProxySpec, type RunningProxy } from '../support/proxy.js';
import { sleep, waitFor } from '../support/wait.js';
import { AUTH_QUERY_FUNCTION_SQL } from '../support/auth-query-function.js';
import { tenantSqlStatements } from '../../src/auth/tenant-sql.js';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { configToml } from '../support/proxy.js';
import { readAuditFile } from '../support/audit-file.js';

const ISSUER = 'https://sso.pgwarden.test';
const AUDIENCE = 'pgwarden';
const AUTH_PW_ENV = 'PGWARDEN_TEST_CONSENT_AUTH_PW';
const STAFF_PW_ENV = 'PGWARDEN_TEST_CONSENT_STAFF_PW';
const AUTH_PW = 'consent-auth-secret';
const STAFF_PW = 'consent-staff-secret';
const APP_PW = 'app-pass';
const CATALOG_PW_ENV = 'PGWARDEN_TEST_CONSENT_CATALOG_PW';
const CATALOG_PW = 'consent-catalog-secret';
const ADMIN_TOKEN = 'consent-admin-token-5b2c9e71aa';
const CLI = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../src/cli.js');

type Rec = Record<string, unknown> & { event: string; seq: number; id: string; tenant?: string; chain: { hash: string }; session?: { id: string; ei: number } };

/**
 * The customer's server: its admin role `app` (owning schema pgwarden with what `pgwarden
 * tenant-sql` prints), the staff role and the lookup role, SCRAM everywhere; auth_query's function
 * needs a superuser (pg_shadow), so the test installs that one.
 */
async function startCustomerServer(): Promise<Cluster> {
  process.env[AUTH_PW_ENV] = AUTH_PW;
  process.env[STAFF_PW_ENV] = STAFF_PW;
  const cluster = await startCluster({
    auth: 'scram-sha-256',
    users: [
      { name: 'app', password: APP_PW },
      { name: 'staff_rw', password: STAFF_PW },
      { name: 'pgwarden_auth', password: AUTH_PW },
    ],
  });
  await cluster.query('GRANT CREATE ON DATABASE postgres TO app');
  await cluster.query('CREATE SCHEMA pgwarden AUTHORIZATION app');
  for (const sql of AUTH_QUERY_FUNCTION_SQL.filter((q) => !q.startsWith('CREATE SCHEMA'))) await cluster.query(sql);
  const admin = new pg.Client({ host: cluster.host, port: cluster.port, user: 'app', password: APP_PW, database: 'postgres' });
  await admin.connect();
  for (const sql of tenantSqlStatements('pgwarden_auth')) await admin.query(sql);
  await admin.end();
  return cluster;
}

/** The staff IdP's signing key; its JWKS written to dir/jwks.json for [staff] jwks. */
async function writeJwks(dir: string): Promise<CryptoKey> {
  const pair = await generateKeyPair('ES256', { extractable: true });
  const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  await writeFile(path.join(dir, 'jwks.json'), JSON.stringify({ keys: [jwk] }));
  return pair.privateKey;
}

/** Resolves with the error a client gets when the server ends its session (FATAL), or null after `ms`. */
function sessionEnd(c: pg.Client, ms: number): Promise<(Error & { code?: string }) | null> {
  // pg may follow the FATAL with "Connection terminated unexpectedly": nobody needs that one.
  if (c.listenerCount('error') === 0) c.on('error', () => undefined);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(null), ms);
    c.once('error', (err: Error & { code?: string }) => {
      clearTimeout(t);
      resolve(err);
    });
  });
}

describe('staff access on request (issue 17)', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  let dir: string;
  let auditFile: string;
  let key: CryptoKey;
  let spec: ProxySpec;

  async function mint(ticket: string, access: 'read' | 'write', tenant = 'acme'): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ tenant, access, ticket, amr: ['pwd', 'mfa'], jti: randomUUID() })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setSubject('alice@ops.example')
      .setIssuer(ISSUER)
      .setAudience(AUDIENCE)
      .setIssuedAt(now)
      .setExpirationTime(now + 300)
      .sign(key);
  }

  const staff = async (ticket: string, access: 'read' | 'write', tenant = 'acme'): Promise<pg.ClientConfig> =>
    clientConfig(rp, { tenant, user: 'staff', password: await mint(ticket, access, tenant) });
  /** The customer, through pgwarden, as its own admin role. */
  const customer = (): Promise<pg.Client> => connect(rp, { tenant: 'acme', user: 'app', password: APP_PW });

  async function asCustomer(sql: string, params: unknown[] = []): Promise<pg.QueryResult<Record<string, unknown>>> {
    const c = await customer();
    try {
      return await c.query<Record<string, unknown>>(sql, params);
    } finally {
      await c.end();
    }
  }

  async function denials(): Promise<string[]> {
    return (await readAuditFile<Rec>(auditFile)).filter((r) => r.event === 'staff.access' && r['decision'] === 'deny').map((r) => String(r['reason']));
  }

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-consent-'));
    auditFile = path.join(dir, 'audit.jsonl');
    cluster = await startCustomerServer();
    await cluster.query('CREATE TABLE items (id int PRIMARY KEY, name text)');
    await cluster.query("INSERT INTO items VALUES (1, 'one'), (2, 'two')");
    await cluster.query('GRANT SELECT, INSERT, UPDATE, DELETE ON items TO staff_rw, app');
    key = await writeJwks(dir);
    const app = { name: 'app', verifier: await readVerifier(cluster, 'app') };
    const onRequest = {
      staff_access: 'on_request',
      staff_backend_user: 'staff_rw',
      staff_backend_password_env: STAFF_PW_ENV,
      auth_user: 'pgwarden_auth',
      auth_password_env: AUTH_PW_ENV,
    };
    spec = {
      auditFile,
      staff: { jwks: path.join(dir, 'jwks.json'), issuer: ISSUER, audience: AUDIENCE, algorithms: ['ES256'], require_mfa: true, reserved_connections: 4 },
      tenants: [
        { id: 'acme', cluster, users: [app], extra: { ...onRequest, transparency_max_lag: '3s' } },
        { id: 'downco', cluster, users: [app], backendUrl: 'postgresql://127.0.0.1:1/postgres', extra: { ...onRequest, auth_query_timeout: '500ms' } },
      ],
    };
    rp = await startProxy(spec);
  });

  after(async () => {
    await rp?.close();
    await cluster?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses a valid staff token while the customer has granted nothing (28P01, reason in the audit only)', async () => {
    const err = await connectError(await staff('INC-1', 'read'));
    assert.equal(err.code, '28P01');
    assert.match(err.message, /password authentication failed for user "staff"/);
    await waitFor(async () => (await denials()).includes('consent:none'), 5_000, 'audit of consent:none');
  });

  it('lets staff in once the customer grants, with the lesser of the grant and the token', async () => {
    const r = await asCustomer("SELECT pgwarden.grant_support('INC-2', interval '2 hours', 'read') AS until");
    assert.ok(r.rows[0]!['until'] instanceof Date);
    const c = new pg.Client(await staff('INC-2', 'write'));
    await c.connect();
    assert.equal((await c.query<{ n: string }>('SELECT count(*) AS n FROM items')).rows[0]!.n, '2');
    // The token asked for write, the grant said read: read it is.
    await assert.rejects(c.query("INSERT INTO items VALUES (9, 'nine')"), { code: '25006' });
    await c.end();
    const allow = (await readAuditFile<Rec>(auditFile)).filter((r) => r.event === 'staff.access' && r['decision'] === 'allow').at(-1)!;
    assert.equal((allow['target'] as { access_level: string }).access_level, 'read');
    assert.deepEqual((allow['consent'] as { ticket: string; access: string }).ticket, 'INC-2');
    assert.equal((allow['consent'] as { access: string }).access, 'read');
    // The audit keeps the grant's end as the customer's table holds it (to the millisecond).
    assert.equal((allow['consent'] as { expires_at: string }).expires_at, (r.rows[0]!['until'] as Date | undefined)?.toISOString());

    // A write grant and a write token: write.
    await asCustomer("SELECT pgwarden.grant_support('INC-3', interval '1 hour', 'write')");
    const w = new pg.Client(await staff('INC-3', 'write'));
    await w.connect();
    await w.query("UPDATE items SET name = 'uno' WHERE id = 1");
    await w.end();
  });

  it('ends the session within seconds when the customer withdraws the grant (57P01)', async () => {
    await asCustomer("SELECT pgwarden.grant_support('INC-4', interval '1 hour', 'read')");
    const c = new pg.Client(await staff('INC-4', 'read'));
    await c.connect();
    await c.query('SELECT 1');
    const ended = sessionEnd(c, 8_000);
    const t0 = Date.now();
    const revoked = await asCustomer("SELECT pgwarden.revoke_support('INC-4') AS revoked");
    assert.equal(revoked.rows[0]!['revoked'], true);
    const err = await ended;
    assert.ok(err !== null, 'the session was not ended');
    assert.equal(err.code, '57P01');
    assert.match(err.message, /terminating connection because staff access was withdrawn/);
    assert.ok(Date.now() - t0 < 5_000, `ended after ${Date.now() - t0} ms`);
    await c.end().catch(() => undefined);
    // And a new login on that ticket is refused.
    assert.equal((await connectError(await staff('INC-4', 'read'))).code, '28P01');
    await waitFor(async () => (await denials()).includes('consent:revoked'), 5_000, 'audit of consent:revoked');
  });

  it('refuses on an expired grant, and ends a session when its grant expires', async () => {
    await asCustomer("SELECT pgwarden.grant_support('INC-5', interval '1 second', 'read')");
    await sleep(1_300);
    assert.equal((await connectError(await staff('INC-5', 'read'))).code, '28P01');
    await waitFor(async () => (await denials()).includes('consent:expired'), 5_000, 'audit of consent:expired');

    await asCustomer("SELECT pgwarden.grant_support('INC-6', interval '3 seconds', 'read')");
    const c = new pg.Client(await staff('INC-6', 'read'));
    await c.connect();
    const err = await sessionEnd(c, 8_000);
    assert.equal(err?.code, '57P01');
    assert.match(err.message, /staff access was withdrawn/);
    await c.end().catch(() => undefined);
  });

  it('a grant extended during the session keeps it; one narrowed to read ends a write session', async () => {
    await asCustomer("SELECT pgwarden.grant_support('INC-7', interval '3 seconds', 'write')");
    const c = new pg.Client(await staff('INC-7', 'write'));
    await c.connect();
    await asCustomer("SELECT pgwarden.grant_support('INC-7', interval '1 hour', 'write')");
    assert.equal(await sessionEnd(c, 4_500), null, 'the extended grant keeps the session');
    await c.query('SELECT 1');
    const ended = sessionEnd(c, 5_000);
    await asCustomer("SELECT pgwarden.grant_support('INC-7', interval '1 hour', 'read')");
    assert.equal((await ended)?.code, '57P01');
    await c.end().catch(() => undefined);
  });

  it("refuses staff when the tenant's server cannot be asked (fail closed), and the customer's sessions carry on", async () => {
    assert.equal((await connectError(await staff('INC-8', 'read', 'downco'))).code, '28P01');
    await waitFor(async () => (await denials()).includes('consent:unavailable'), 5_000, 'audit of consent:unavailable');

    // acme's lookup role cannot log in: the grant cannot be checked, the customer notices nothing.
    await asCustomer("SELECT pgwarden.grant_support('INC-9', interval '1 hour', 'read')");
    const c = await customer();
    await cluster.query('ALTER ROLE pgwarden_auth NOLOGIN');
    await cluster.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'pgwarden_auth'");
    try {
      assert.equal((await connectError(await staff('INC-9', 'read'))).code, '28P01');
      assert.equal((await c.query<{ n: string }>('SELECT count(*) AS n FROM items')).rows[0]!.n, '2');
      const c2 = await customer();
      await c2.query('SELECT 1');
      await c2.end();
    } finally {
      await cluster.query('ALTER ROLE pgwarden_auth LOGIN');
      await c.end();
    }
    const staffOk = new pg.Client(await staff('INC-9', 'read'));
    await staffOk.connect();
    await staffOk.end();
  });

  /** The operator's records the customer must see: verified staff decisions and staff sessions' records, of acme. */
  async function operatorStaffRecords(): Promise<Rec[]> {
    return (await readAuditFile<Rec>(auditFile)).filter(
      (r) =>
        r.tenant === 'acme' &&
        ((r.event === 'staff.access' && (r['staff'] as { unverified?: boolean }).unverified !== true) ||
          (['session.start', 'session.query', 'session.query_result', 'session.end'].includes(r.event) && (r['principal'] as { kind: string }).kind === 'staff')),
    );
  }

  type Row = { record_id: string; seq: string; sub: string; ticket: string; access: string; event: string; kind: string | null; query: string | null; result: string | null; record_hash: string };
  const customerLog = async (): Promise<Row[]> => (await asCustomer('SELECT * FROM pgwarden.staff_access_log ORDER BY seq')).rows as Row[];

  it("shows the customer, in its own table, every staff access decision and statement with its ticket", async () => {
    await asCustomer("SELECT pgwarden.grant_support('INC-20', interval '1 hour', 'write')");
    const c = new pg.Client(await staff('INC-20', 'write'));
    await c.connect();
    await c.query("UPDATE items SET name = 'two!' WHERE id = 2");
    await c.query('SELECT name FROM items WHERE id = $1', [2]);
    await c.end();
    await waitFor(async () => (await customerLog()).some((r) => r.ticket === 'INC-20' && r.event === 'session_end'), 10_000, "INC-20's session end in the customer's table");
    const rows = (await customerLog()).filter((r) => r.ticket === 'INC-20');
    assert.equal(rows[0]!.event, 'access');
    assert.equal(rows[0]!.result, 'allow');
    assert.equal(rows[0]!.access, 'write');
    assert.equal(rows[0]!.sub, 'alice@ops.example');
    const statements = rows.filter((r) => r.event === 'statement');
    assert.ok(statements.some((r) => r.query === "UPDATE items SET name = 'two!' WHERE id = 2" && r.kind === 'simple'));
    assert.ok(statements.some((r) => r.query === 'SELECT name FROM items WHERE id = $1' && r.kind === 'parse'));
    assert.ok(rows.some((r) => r.event === 'result' && r.result === 'UPDATE 1'));
    // Refusals of verified tokens are there too (the customer sees who asked without a grant).
    assert.ok((await customerLog()).some((r) => r.ticket === 'INC-1' && r.event === 'access' && r.result === 'deny: consent:none'));
  });

  it("the operator's audit and the customer's table agree record for record (same records, order and hashes)", async () => {
    await waitFor(async () => (await customerLog()).length === (await operatorStaffRecords()).length, 10_000, 'the customer table catching up');
    const ops = await operatorStaffRecords();
    const rows = await customerLog();
    assert.deepEqual(
      rows.map((r) => [r.record_id, Number(r.seq), r.record_hash]),
      ops.map((r) => [r.id, r.seq, r.chain.hash]),
    );
    const opStatements = ops.filter((r) => r.event === 'session.query');
    const custStatements = rows.filter((r) => r.event === 'statement');
    assert.equal(custStatements.length, opStatements.length);
    assert.deepEqual(
      custStatements.map((r) => r.query),
      opStatements.map((r) => (r['query'] as string | undefined) ?? null),
    );
    assert.ok(custStatements.length >= 10, `only ${custStatements.length} statements`);
    // No token, password or verifier reaches the customer's table.
    const text = JSON.stringify(rows);
    for (const secret of ['eyJ', AUTH_PW, STAFF_PW, APP_PW, 'SCRAM-SHA-256$']) assert.ok(!text.includes(secret), `the customer's table holds ${secret}`);
    const metrics = await (await fetch(`http://127.0.0.1:${rp.metricsPort}/metrics`)).text();
    for (const line of [
      'pgwarden_staff_consent_checks_total{tenant="acme",outcome="granted"}',
      'pgwarden_staff_consent_checks_total{tenant="acme",outcome="none"}',
      'pgwarden_staff_consent_checks_total{tenant="acme",outcome="withdrawn"}',
      'pgwarden_transparency_records_total{tenant="acme",outcome="delivered"}',
    ]) {
      assert.match(metrics, new RegExp(`^${line.replace(/[{}]/g, '\\$&')} [1-9]`, 'm'), line);
    }
    assert.match(metrics, /^pgwarden_transparency_lag_seconds\{tenant="acme"\} 0$/m);
  });

  it("ends a staff session whose records cannot reach the customer's table within transparency_max_lag, refuses new ones, and delivers the backlog when the server takes it again", async () => {
    await asCustomer("SELECT pgwarden.grant_support('INC-30', interval '1 hour', 'read')");
    const c = new pg.Client(await staff('INC-30', 'read'));
    await c.connect();
    await cluster.query('REVOKE EXECUTE ON FUNCTION pgwarden.record_staff_access(jsonb) FROM pgwarden_auth');
    try {
      const ended = sessionEnd(c, 10_000);
      await c.query('SELECT 30 AS while_undeliverable');
      const err = await ended;
      assert.equal(err?.code, '57P01');
      assert.match(err.message, /access log is unavailable/);
      // The customer's own sessions carry on meanwhile.
      assert.equal((await asCustomer('SELECT count(*)::int AS n FROM items')).rows[0]!['n'], 2);
      assert.equal((await connectError(await staff('INC-30', 'read'))).code, '28P01');
      await waitFor(async () => (await denials()).includes('transparency_lagging'), 5_000, 'audit of transparency_lagging');
    } finally {
      await cluster.query('GRANT EXECUTE ON FUNCTION pgwarden.record_staff_access(jsonb) TO pgwarden_auth');
      await c.end().catch(() => undefined);
    }
    await waitFor(async () => (await customerLog()).some((r) => r.query === 'SELECT 30 AS while_undeliverable'), 15_000, 'the backlog delivered');
    await waitFor(async () => (await customerLog()).length === (await operatorStaffRecords()).length, 10_000, 'the customer table catching up');
    const ops = await operatorStaffRecords();
    assert.deepEqual(
      (await customerLog()).map((r) => r.record_id),
      ops.map((r) => r.id),
    );
  });

  it("a row the customer's table refuses is not skipped: it waits (staff access ends at the lag bound) and arrives, in order, once the table takes it", async () => {
    await asCustomer("SELECT pgwarden.grant_support('INC-31', interval '1 hour', 'read')");
    const c = new pg.Client(await staff('INC-31', 'read'));
    await c.connect();
    // The customer adds a constraint its own table's rows must meet; one staff statement breaks it (SQLSTATE 23514).
    await cluster.query("ALTER TABLE pgwarden.staff_access_log ADD CONSTRAINT no_refused_rows CHECK (query IS NULL OR query NOT LIKE '%refused_row%')");
    try {
      const ended = sessionEnd(c, 10_000);
      await c.query('SELECT 31 AS refused_row');
      await c.query('SELECT 32 AS after_the_refused_row').catch(() => undefined);
      const err = await ended;
      assert.equal(err?.code, '57P01', 'the staff session ends once the refused row has waited transparency_max_lag');
      assert.match(err.message, /access log is unavailable/);
      assert.equal((await connectError(await staff('INC-31', 'read'))).code, '28P01', 'and no staff gets in meanwhile');
      assert.ok(!(await customerLog()).some((r) => r.query === 'SELECT 31 AS refused_row'));
    } finally {
      await cluster.query('ALTER TABLE pgwarden.staff_access_log DROP CONSTRAINT no_refused_rows');
      await c.end().catch(() => undefined);
    }
    await waitFor(async () => (await customerLog()).some((r) => r.query === 'SELECT 31 AS refused_row'), 15_000, 'the held row delivered');
    await waitFor(async () => (await customerLog()).length === (await operatorStaffRecords()).length, 10_000, 'the customer table catching up');
    assert.deepEqual(
      (await customerLog()).map((r) => r.record_id),
      (await operatorStaffRecords()).map((r) => r.id),
      'record for record, none skipped',
    );
  });
});

// The tenant from the configuration file, and from the tenant catalog (which the primary, holding
// the audit log and so the customer's copy, must follow too).
for (const source of ['file', 'catalog'] as const) describe(`staff access on request with server.workers = 2, tenant from the ${source}`, () => {
  let cluster: Cluster;
  let child: ChildProxy;
  let dir: string;
  let key: CryptoKey;
  let base: { port: number; certs: Awaited<ReturnType<typeof testCerts>> };

  const token = async (ticket: string): Promise<string> => {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ tenant: 'acme', access: 'read', ticket, amr: ['pwd', 'mfa'], jti: randomUUID() })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setSubject('bob@ops.example')
      .setIssuer(ISSUER)
      .setAudience(AUDIENCE)
      .setIssuedAt(now)
      .setExpirationTime(now + 300)
      .sign(key);
  };
  const staff = async (ticket: string): Promise<pg.ClientConfig> => clientConfig(base, { tenant: 'acme', user: 'staff', password: await token(ticket) });
  const asCustomer = async (sql: string): Promise<pg.QueryResult<Record<string, unknown>>> => {
    const c = await connect(base, { tenant: 'acme', user: 'app', password: APP_PW });
    try {
      return await c.query<Record<string, unknown>>(sql);
    } finally {
      await c.end();
    }
  };

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-consent-w-'));
    cluster = await startCustomerServer();
    key = await writeJwks(dir);
    const consent = { staff_access: 'on_request', staff_backend_user: 'staff_rw', staff_backend_password_env: STAFF_PW_ENV, auth_user: 'pgwarden_auth', auth_password_env: AUTH_PW_ENV };
    const common = {
      server: { workers: 2 },
      auditFile: path.join(dir, 'audit.jsonl'),
      staff: { jwks: path.join(dir, 'jwks.json'), issuer: ISSUER, audience: AUDIENCE, algorithms: ['ES256'], require_mfa: true, reserved_connections: 6 },
    };
    const verifier = await readVerifier(cluster, 'app');
    if (source === 'file') {
      child = await spawnProxy({ ...common, tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier }], extra: consent }] });
    } else {
      // The catalog in a database of the same server, initialised as an operator would, the tenant put through the admin API.
      await cluster.query(`CREATE ROLE pgwarden_catalog LOGIN PASSWORD '${CATALOG_PW}'`);
      await cluster.query('CREATE DATABASE catalog OWNER pgwarden_catalog');
      process.env[CATALOG_PW_ENV] = CATALOG_PW;
      const spec: ProxySpec = {
        ...common,
        tenants: [],
        admin: { token_sha256: createHash('sha256').update(ADMIN_TOKEN).digest('hex') },
        catalog: { url: `postgresql://pgwarden_catalog@127.0.0.1:${cluster.port}/catalog`, password_env: CATALOG_PW_ENV, snapshot_file: path.join(dir, 'catalog.snapshot.json') },
      };
      const initConfig = path.join(dir, 'init.toml');
      await writeFile(initConfig, configToml(spec, await testCerts()));
      execFileSync(process.execPath, [CLI, 'catalog', 'init', '--config', initConfig], { env: { ...process.env } });
      child = await spawnProxy(spec, { [CATALOG_PW_ENV]: CATALOG_PW, [AUTH_PW_ENV]: AUTH_PW, [STAFF_PW_ENV]: STAFF_PW });
      const body = { backend: cluster.url('postgres'), backend_tls: 'disable', allow_cidrs: ['127.0.0.0/8', '::1/128'], users: { app: { scram: verifier } }, ...consent };
      const put = await fetch(`http://127.0.0.1:${child.adminPort!}/tenants/acme`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      assert.equal(put.status, 201, await put.text());
    }
    base = { port: child.port, certs: await testCerts() };
    // The tenant is served (a catalog tenant reaches the workers within a moment).
    await waitFor(async () => (await connect(base, { tenant: 'acme', user: 'app', password: APP_PW }).then((c) => c.end().then(() => true), () => false)), 10_000, 'acme served');
  });

  after(async () => {
    await child?.stop();
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it('refuses without a grant, lets in after it, copies what staff did through the primary, and every worker ends its sessions at the revoke', async () => {
    assert.equal(workerPids(child.child.pid!).length, 2);
    assert.equal((await connectError(await staff('W-1'))).code, '28P01');
    await asCustomer("SELECT pgwarden.grant_support('W-1', interval '1 hour', 'read')");
    // Several sessions: the primary's round robin (or the kernel) spreads them over both workers.
    const sessions: pg.Client[] = [];
    for (let i = 0; i < 4; i++) {
      const c = new pg.Client(await staff('W-1'));
      c.on('error', () => undefined);
      sessions.push(c);
      await c.connect();
      await c.query(`SELECT ${i} AS from_worker_session`);
    }
    await waitFor(
      async () => (await asCustomer("SELECT count(*)::int AS n FROM pgwarden.staff_access_log WHERE query LIKE 'SELECT % AS from_worker_session'")).rows[0]!['n'] === 4,
      10_000,
      "the workers' statements in the customer's table",
    );
    const starts = (await readAuditFile<Rec>(path.join(dir, 'audit.jsonl'))).filter((r) => r.event === 'session.start' && (r['principal'] as { kind: string }).kind === 'staff');
    assert.equal(new Set(starts.map((r) => r['worker'])).size, 2, 'staff sessions on both workers');
    const ended = sessions.map((c) => sessionEnd(c, 8_000));
    await asCustomer("SELECT pgwarden.revoke_support('W-1')");
    for (const e of await Promise.all(ended)) assert.equal(e?.code, '57P01');
    for (const c of sessions) await c.end().catch(() => undefined);
  });
});
