/**
 * The product promise, driver by driver: clients other than node-postgres and psql work through
 * pgwarden unchanged, with TLS to the proxy and the server certificate verified.
 *
 * postgres.js runs in-process; psycopg 2, psycopg 3 and asyncpg run as scripts under Debian's
 * /usr/bin/python3 (the python3 on PATH may lack them); pgjdbc runs as a single-file Java source
 * program against /usr/share/java/postgresql.jar. Each script prints one JSON line asserted here.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import path from 'node:path';
import postgres from 'postgres';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, SNI_SUFFIX, type RunningProxy } from '../support/proxy.js';

const USER = 'app';
const PASSWORD = 'secret-app-drivers';
const TENANT = 'acme';
const PYTHON = '/usr/bin/python3';
const JDBC_JAR = '/usr/share/java/postgresql.jar';
const DRIVERS_DIR = path.resolve(process.cwd(), 'test/integration/drivers');
const UNICODE = 'emoji 🐘🚀👩‍👩‍👧‍👦 CJK 中文 日本語 한국어 combining e\u0301 a\u0308 RTL שלום';

interface DriverResult {
  driver: string;
  version: string;
  user: string;
  application_name: string;
  sum: number;
  unicode_ok: boolean;
  ssl_in_use?: boolean;
  sni_sent?: string | null;
  prepared: { reuses: number; results_ok: boolean; server_statements: number };
  rollback: { rows_after_rollback: number; error_code: string | null; after_ok: boolean };
  bytea: { length: number; equal: boolean; md5_match: boolean };
  [extra: string]: unknown;
}

/** Runs a driver check and parses the JSON line it prints last; the failure carries its output. */
function runCheck(label: string, file: string, args: string[], timeoutMs: number): Promise<DriverResult> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      { cwd: DRIVERS_DIR, env: { ...process.env, PGWARDEN_TEST_PASSWORD: PASSWORD, PYTHONDONTWRITEBYTECODE: '1' }, timeout: timeoutMs, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        const last = stdout.trim().split('\n').pop() ?? '';
        if (err !== null || !last.startsWith('{')) {
          reject(new Error(`${label} failed (${err?.message ?? 'no JSON line'})\nstdout:\n${stdout}\nstderr:\n${stderr}`));
          return;
        }
        resolve(JSON.parse(last) as DriverResult);
      },
    );
  });
}

/** What every driver must have done. */
function assertCommon(r: DriverResult, applicationName: string): void {
  assert.equal(r.user, USER);
  assert.equal(r.application_name, applicationName);
  assert.equal(r.sum, 42);
  assert.equal(r.unicode_ok, true, 'unicode text round trip');
  assert.deepEqual(r.prepared, { reuses: 50, results_ok: true, server_statements: r.prepared.server_statements });
  assert.ok(r.prepared.server_statements >= 1, 'a prepared statement exists on the server');
  assert.deepEqual(r.rollback, { rows_after_rollback: 0, error_code: '22012', after_ok: true });
  assert.deepEqual(r.bytea, { length: 65536, equal: true, md5_match: true });
  if (r.ssl_in_use !== undefined) assert.equal(r.ssl_in_use, true);
}

for (const poolMode of ['session', 'transaction'] as const) describe(`drivers through pgwarden (${poolMode} pooling)`, () => {
  let pgc: Cluster;
  let rp: RunningProxy;
  const sqls: postgres.Sql[] = [];

  before(async () => {
    pgc = await startCluster({ users: [{ name: USER, password: PASSWORD }] });
    const verifier = await readVerifier(pgc, USER);
    // Transaction mode gets three backends, so statements and sessions really move between them;
    // session mode needs one per open client (postgres.js keeps several open here).
    const pool = poolMode === 'transaction' ? { pool_mode: poolMode, max_backend_connections: 3 } : { pool_mode: poolMode };
    rp = await startProxy({ tenants: [{ id: TENANT, cluster: pgc, users: [{ name: USER, verifier }], pool }] });
  });

  after(async () => {
    for (const sql of sqls) await sql.end({ timeout: 5 }).catch(() => undefined);
    await rp?.close();
    await pgc?.stop();
  });

  describe('postgres.js', () => {
    const open = (o: postgres.Options<Record<string, postgres.PostgresType>> = {}): postgres.Sql => {
      const sql = postgres({
        host: '127.0.0.1',
        port: rp.port,
        user: USER,
        password: PASSWORD,
        database: 'postgres',
        // verify-full: the CA, and the tenant's name both as SNI and as the identity checked.
        ssl: { ca: rp.certs.caCertPem, servername: `${TENANT}.${SNI_SUFFIX}`, rejectUnauthorized: true },
        max: 1,
        connect_timeout: 10,
        onnotice: () => undefined,
        connection: { application_name: 'postgresjs-check' },
        ...o,
      });
      sqls.push(sql);
      return sql;
    };

    it('connects with SNI, runs parameterised queries and reuses its prepared statements', async () => {
      const sql = open();
      const [who] = await sql`select current_user as u, current_setting('application_name') as a`;
      assert.deepEqual({ ...who }, { u: USER, a: 'postgresjs-check' });
      for (let i = 0; i < 100; i++) {
        const [row] = await sql`select ${i}::int * 2 as v, ${UNICODE}::text as t`;
        assert.equal(row?.['v'], i * 2);
        assert.equal(row?.['t'], UNICODE);
      }
      // postgres.js prepares by default: one named statement on the server, reused 100 times.
      const stmts = await sql`select count(*)::int as n from pg_prepared_statements where not from_sql and statement = ${'select $1::int * 2 as v, $2::text as t'}`;
      assert.equal(stmts[0]?.['n'], 1);
    });

    it('rolls back a transaction that throws, and keeps working', async () => {
      const sql = open();
      await sql`create temp table t (v int)`;
      await assert.rejects(
        sql.begin(async (tx) => {
          await tx`insert into t values (1), (2)`;
          await tx`select 1 / 0`;
        }),
        { code: '22012' },
      );
      const [n] = await sql`select count(*)::int as n from t`;
      assert.equal(n?.['n'], 0);
      // Savepoint inside a transaction.
      await sql.begin(async (tx) => {
        await tx`insert into t values (1)`;
        await assert.rejects(tx.savepoint(async (sp) => {
          await sp`insert into t values (2)`;
          await sp`select 1 / 0`;
        }), { code: '22012' });
        await tx`insert into t values (3)`;
      });
      const rows = await sql<{ v: number }[]>`select v from t order by v`;
      assert.deepEqual(rows.map((r) => r.v), [1, 3]);
    });

    it('round-trips 64 KiB of random bytea byte for byte', async () => {
      const sql = open();
      const data = randomBytes(64 * 1024);
      const [row] = await sql`select ${data}::bytea as b, md5(${data}::bytea) as h`;
      assert.ok(Buffer.isBuffer(row?.['b']));
      assert.ok(data.equals(row?.['b']));
      assert.equal(row?.['h'], createHash('md5').update(data).digest('hex'));
    });

    it('reads a result through a cursor (portal with row limit) and uses the simple protocol', async () => {
      const sql = open();
      let sum = 0;
      let batches = 0;
      for await (const rows of sql`select i from generate_series(1, 10000) i`.cursor(1000)) {
        batches++;
        for (const r of rows) sum += r['i'] as number;
      }
      assert.equal(batches, 10);
      assert.equal(sum, 50005000);
      const multi = await sql.unsafe('select 1 as a; select 2 as b').simple();
      assert.equal(multi.length, 2);
    });

    it('LISTEN/NOTIFY between two postgres.js clients', async () => {
      const listener = open();
      const notifier = open();
      let resolveMsg: (s: string) => void = () => undefined;
      const got = new Promise<string>((r) => (resolveMsg = r));
      await listener.listen('pgwarden_drivers', (payload) => resolveMsg(payload));
      await notifier`select pg_notify('pgwarden_drivers', ${UNICODE})`;
      const payload = await Promise.race([got, new Promise<never>((_, rej) => setTimeout(() => rej(new Error('no notification in 5 s')), 5000))]);
      assert.equal(payload, UNICODE);
    });

    it('fails verify-full with a wrong server name', async () => {
      const sql = open({ ssl: { ca: rp.certs.caCertPem, servername: 'acme.example.com', rejectUnauthorized: true } });
      await assert.rejects(sql`select 1`, /altnames|does not match|Hostname/i);
    });
  });

  describe('psycopg 2 (libpq)', () => {
    it('SNI + verify-full: query, SQL-level prepared statement, rollback, bytea', async () => {
      const r = await runCheck('psycopg2_check.py', PYTHON, [path.join(DRIVERS_DIR, 'psycopg2_check.py'), JSON.stringify({ port: rp.port, ca: rp.certs.caCertPath, user: USER, tenant: TENANT })], 60_000);
      assert.equal(r.driver, 'psycopg2');
      assertCommon(r, 'psycopg2-check');
    });
  });

  describe('psycopg 3 (libpq)', () => {
    it('SNI + verify-full + channel binding: extended protocol, prepared statement, pipeline, rollback, binary bytea', async () => {
      const r = await runCheck('psycopg3_check.py', PYTHON, [path.join(DRIVERS_DIR, 'psycopg3_check.py'), JSON.stringify({ port: rp.port, ca: rp.certs.caCertPath, user: USER, tenant: TENANT })], 60_000);
      assert.equal(r.driver, 'psycopg3');
      assertCommon(r, 'psycopg3-check');
      assert.equal(r['pipeline_ok'], true, 'libpq pipeline mode');
    });
  });

  describe('asyncpg', () => {
    for (const mode of ['sni', 'options'] as const) {
      it(`tenant from ${mode === 'sni' ? 'SNI (SSLContext sending acme.pg.test)' : 'options=-c pgwarden.tenant (connect to 127.0.0.1)'}`, async () => {
        const r = await runCheck(`asyncpg_check.py (${mode})`, PYTHON, [path.join(DRIVERS_DIR, 'asyncpg_check.py'), JSON.stringify({ port: rp.port, ca: rp.certs.caCertPath, user: USER, tenant: TENANT, mode })], 60_000);
        assert.equal(r.driver, 'asyncpg');
        assertCommon(r, 'asyncpg-check');
        assert.equal(r.sni_sent, mode === 'sni' ? `${TENANT}.${SNI_SUFFIX}` : '127.0.0.1');
        assert.equal(r['copy_sum'], 500500, 'binary COPY');
        assert.equal(r['cursor_sum'], 500500, 'cursor (portal) read');
      });
    }
  });

  describe('pgjdbc', () => {
    it('options=-c pgwarden.tenant + verify-full on 127.0.0.1: prepared statement, batch, rollback, bytea', async () => {
      const r = await runCheck('PgjdbcCheck.java', 'java', ['-cp', JDBC_JAR, path.join(DRIVERS_DIR, 'PgjdbcCheck.java'), String(rp.port), rp.certs.caCertPath, USER, TENANT], 120_000);
      assert.equal(r.driver, 'pgjdbc');
      assertCommon(r, 'pgjdbc-check');
      assert.equal(r['batch_ok'], true, 'executeBatch');
    });
  });
});
