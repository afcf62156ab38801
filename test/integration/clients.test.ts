/**
 * The product promise with the two reference clients: node-postgres (`pg`) and libpq (psql,
 * pgbench) work through pgwarden unchanged. Every connection goes through the proxy with TLS,
 * SNI `acme.pg.test` and verify-full against the test CA, to a real PostgreSQL cluster.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import pg from 'pg';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, clientConfig, libpqConninfo, psql, SNI_SUFFIX, type RunningProxy } from '../support/proxy.js';

const USER = 'app';
const PASSWORD = 'secret-app-clients';
const TENANT = 'acme';

const md5 = (data: string | Buffer): string => createHash('md5').update(data).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls until `check` is true; fails with `what` after `timeoutMs`. */
async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** A CancelRequest (16 bytes): length, 80877102, process id, secret key. */
function cancelRequest(processId: number, secretKey: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeInt32BE(16, 0);
  b.writeInt32BE(80877102, 4);
  b.writeInt32BE(processId, 8);
  b.writeInt32BE(secretKey, 12);
  return b;
}

interface RawOutcome {
  /** Bytes the proxy sent back. */
  received: number;
  /** Whether the proxy closed the connection within the wait. */
  closed: boolean;
}

/** Writes a CancelRequest on a plain TCP connection, as libpq up to 16 does, and watches the reply. */
function plainCancel(port: number, msg: Buffer, waitMs = 3_000): Promise<RawOutcome> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let received = 0;
    const timer = setTimeout(() => {
      sock.destroy();
      resolve({ received, closed: false });
    }, waitMs);
    sock.on('data', (d: Buffer) => (received += d.length));
    sock.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    sock.on('close', () => {
      clearTimeout(timer);
      resolve({ received, closed: true });
    });
    sock.on('connect', () => sock.write(msg));
  });
}

/** SSLRequest, TLS with SNI, then the CancelRequest inside TLS, as libpq 17 does for TLS sessions. */
function tlsCancel(rp: RunningProxy, msg: Buffer, waitMs = 3_000): Promise<RawOutcome> {
  return new Promise((resolve, reject) => {
    const raw = net.connect({ host: '127.0.0.1', port: rp.port });
    const fail = (err: Error): void => {
      clearTimeout(timer);
      raw.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new Error('TLS cancel: no answer')), waitMs + 5_000);
    raw.on('error', fail);
    raw.on('connect', () => {
      const req = Buffer.alloc(8);
      req.writeInt32BE(8, 0);
      req.writeInt32BE(80877103, 4);
      raw.write(req);
    });
    raw.once('data', (answer: Buffer) => {
      if (answer.length !== 1 || answer[0] !== 0x53 /* S */) return fail(new Error(`SSLRequest answered ${answer.toString('hex')}`));
      const sec = tls.connect({ socket: raw, servername: `${TENANT}.${SNI_SUFFIX}`, ca: rp.certs.caCertPem, ALPNProtocols: ['postgresql'] });
      let received = 0;
      sec.on('error', fail);
      sec.on('data', (d: Buffer) => (received += d.length));
      sec.on('secureConnect', () => {
        sec.write(msg);
        clearTimeout(timer);
        const wait = setTimeout(() => {
          sec.destroy();
          resolve({ received, closed: false });
        }, waitMs);
        sec.on('close', () => {
          clearTimeout(wait);
          resolve({ received, closed: true });
        });
      });
    });
  });
}

interface ToolRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<ToolRun> {
  return new Promise((resolve) => {
    execFile(file, args, { env, timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : null;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('clients through pgwarden: node-postgres, psql, pgbench', () => {
  let pgc: Cluster;
  let rp: RunningProxy;
  const clients: pg.Client[] = [];
  let conninfo: string;

  /** A node-postgres client through the proxy (SNI + verify-full), closed in after(). */
  async function client(extra: { applicationName?: string; options?: string } = {}): Promise<pg.Client> {
    const c = new pg.Client(clientConfig(rp, { tenant: TENANT, user: USER, password: PASSWORD, ...extra }));
    await c.connect();
    c.on('error', () => undefined); // a test that breaks a connection on purpose asserts on the query
    clients.push(c);
    return c;
  }

  const sql = (args: string[], input?: string, extra?: string): ReturnType<typeof psql> =>
    psql(extra === undefined ? conninfo : `${conninfo} ${extra}`, PASSWORD, args, input);

  before(async () => {
    pgc = await startCluster({ users: [{ name: USER, password: PASSWORD }] });
    // PostgreSQL 15+ no longer lets every role create in public.
    await pgc.query(`GRANT CREATE ON SCHEMA public TO ${USER}`);
    await pgc.query(`GRANT CREATE ON DATABASE postgres TO ${USER}`);
    const verifier = await readVerifier(pgc, USER);
    rp = await startProxy({ tenants: [{ id: TENANT, cluster: pgc, users: [{ name: USER, verifier }] }] });
    conninfo = libpqConninfo(rp, { tenant: TENANT, user: USER, extra: 'client_encoding=UTF8' });
  });

  after(async () => {
    for (const c of clients) await c.end().catch(() => undefined);
    await rp?.close();
    await pgc?.stop();
  });

  describe('simple and extended protocol', () => {
    it('simple protocol: several statements in one query string', async () => {
      const c = await client();
      const results = (await c.query('select 1 as a; select 2 as b, 3 as c')) as unknown as pg.QueryResult[];
      assert.equal(results.length, 2);
      assert.deepEqual(results[0]?.rows, [{ a: 1 }]);
      assert.deepEqual(results[1]?.rows, [{ b: 2, c: 3 }]);
    });

    it('extended protocol: parameters of several types, including NULL', async () => {
      const c = await client();
      const r = await c.query(
        'select $1::int + $2::int as sum, $3::text as t, $4::numeric * 2 as n, $5::timestamptz as ts, $6::int is null as isnull, $7::jsonb as j',
        [40, 2, "it's", '1.25', '2024-02-29T12:34:56.789Z', null, JSON.stringify({ k: [1, 'two'] })],
      );
      assert.deepEqual(r.rows, [{ sum: 42, t: "it's", n: '2.50', ts: new Date('2024-02-29T12:34:56.789Z'), isnull: true, j: { k: [1, 'two'] } }]);
    });

    it('named prepared statements reused many times, interleaved', async () => {
      const c = await client();
      for (let i = 0; i < 300; i++) {
        const a = await c.query<{ v: number }>({ name: 'double', text: 'select $1::int * 2 as v', values: [i] });
        assert.equal(a.rows[0]?.v, i * 2);
        const b = await c.query<{ s: string }>({ name: 'concat', text: "select $1::text || '-' || $2::text as s", values: [`x${i}`, 'y'] });
        assert.equal(b.rows[0]?.s, `x${i}-y`);
      }
      const r = await c.query<{ name: string }>("select name from pg_prepared_statements where name in ('double', 'concat') order by name");
      assert.deepEqual(r.rows.map((x) => x.name), ['concat', 'double']);
    });

    it('queued queries (several in flight) come back in order', async () => {
      const c = await client();
      const all = await Promise.all(Array.from({ length: 50 }, (_, i) => c.query<{ v: number }>('select $1::int as v', [i])));
      assert.deepEqual(all.map((r) => r.rows[0]?.v), Array.from({ length: 50 }, (_, i) => i));
    });

    it('an error in the extended protocol leaves the connection usable', async () => {
      const c = await client();
      await assert.rejects(c.query('select 1 / $1::int', [0]), { code: '22012' });
      await assert.rejects(c.query({ name: 'bad', text: 'select * from no_such_table', values: [] }), { code: '42P01' });
      const r = await c.query<{ v: number }>('select $1::int as v', [5]);
      assert.equal(r.rows[0]?.v, 5);
    });

    it('a transaction with an error inside: 25P02 until ROLLBACK, then the connection works', async () => {
      const c = await client();
      await c.query('create temp table tx (v int)');
      await c.query('begin');
      await c.query('insert into tx values (1)');
      await assert.rejects(c.query('select 1 / 0'), { code: '22012' });
      await assert.rejects(c.query('select 1'), { code: '25P02' });
      await c.query('rollback');
      const r = await c.query<{ n: number }>('select count(*)::int as n from tx');
      assert.equal(r.rows[0]?.n, 0);
      await c.query('begin');
      await c.query('insert into tx values (2)');
      await c.query('commit');
      const r2 = await c.query<{ v: number }>('select v from tx');
      assert.deepEqual(r2.rows, [{ v: 2 }]);
    });

    it('savepoints: ROLLBACK TO keeps the work before the savepoint', async () => {
      const c = await client();
      await c.query('create temp table sp (v int)');
      await c.query('begin');
      await c.query('insert into sp values (1)');
      await c.query('savepoint s1');
      await c.query('insert into sp values (2)');
      await assert.rejects(c.query('insert into sp values ($1::int)', ['not a number']), { code: '22P02' });
      await c.query('rollback to savepoint s1');
      await c.query('insert into sp values (3)');
      await c.query('savepoint s2');
      await c.query('insert into sp values (4)');
      await c.query('release savepoint s2');
      await c.query('commit');
      const r = await c.query<{ v: number }>('select v from sp order by v');
      assert.deepEqual(r.rows.map((x) => x.v), [1, 3, 4]);
    });
  });

  describe('large results', () => {
    it('cursors: DECLARE/FETCH in a transaction, and WITH HOLD after commit', async () => {
      const c = await client();
      await c.query('begin');
      await c.query('declare cur cursor for select i from generate_series(1, 10000) i');
      let sum = 0;
      let batches = 0;
      for (;;) {
        const r = await c.query<{ i: number }>('fetch 1000 from cur');
        if (r.rows.length === 0) break;
        batches++;
        for (const row of r.rows) sum += row.i;
      }
      await c.query('close cur');
      await c.query('commit');
      assert.equal(batches, 10);
      assert.equal(sum, 50005000);

      await c.query('begin');
      await c.query('declare held cursor with hold for select i from generate_series(1, 100) i');
      await c.query('commit');
      const r = await c.query<{ i: number }>('fetch all from held');
      assert.equal(r.rows.length, 100);
      await c.query('close held');
    });

    it('a 100k-row result matches the server-side checksum', async () => {
      const c = await client();
      const r = await c.query<{ i: number; h: string }>('select i, md5(i::text) as h from generate_series(1, 100000) i order by i');
      assert.equal(r.rows.length, 100000);
      let sum = 0;
      const h = createHash('md5');
      for (const row of r.rows) {
        sum += row.i;
        h.update(row.h);
      }
      const s = await c.query<{ sum: string; h: string }>("select sum(i)::text as sum, md5(string_agg(md5(i::text), '' order by i)) as h from generate_series(1, 100000) i");
      assert.equal(String(sum), s.rows[0]?.sum);
      assert.equal(h.digest('hex'), s.rows[0]?.h);
    });

    it('a 10 MB single value, both directions', async () => {
      const c = await client();
      const n = (10 * 1024 * 1024) / 32;
      const down = await c.query<{ s: string }>(`select string_agg(md5(i::text), '' order by i) as s from generate_series(1, ${n}) i`);
      const s = down.rows[0]?.s ?? '';
      assert.equal(s.length, 10 * 1024 * 1024);
      const serverMd5 = await c.query<{ h: string }>(`select md5(string_agg(md5(i::text), '' order by i)) as h from generate_series(1, ${n}) i`);
      assert.equal(md5(s), serverMd5.rows[0]?.h);

      const up = randomBytes(5 * 1024 * 1024).toString('hex'); // 10 MiB of text
      const r = await c.query<{ len: number; h: string }>('select length($1::text) as len, md5($1::text) as h', [up]);
      assert.deepEqual(r.rows[0], { len: up.length, h: md5(up) });
    });
  });

  describe('COPY via psql', () => {
    const ROWS = 50_000;
    const rows = (from: number, to: number): string => {
      const out: string[] = [];
      for (let i = from; i <= to; i++) out.push(`${i}\tname-${i}\n`);
      return out.join('');
    };
    const sumTo = (n: number): number => (n * (n + 1)) / 2;

    it('COPY FROM STDIN (inline in the script) and COPY TO STDOUT, 50k rows', async () => {
      const script = `create table copy_in (id int primary key, name text);\ncopy copy_in (id, name) from stdin;\n${rows(1, ROWS)}\\.\nselect count(*) || '|' || sum(id) || '|' || md5(string_agg(name, ',' order by id)) from copy_in;\n`;
      const r = await sql(['-q'], script);
      assert.equal(r.code, 0, r.stderr);
      const expectedNames = Array.from({ length: ROWS }, (_, k) => `name-${k + 1}`).join(',');
      assert.equal(r.stdout.trim(), `${ROWS}|${sumTo(ROWS)}|${md5(expectedNames)}`);

      const out = await sql(['-c', 'copy (select id, name from copy_in order by id) to stdout']);
      assert.equal(out.code, 0, out.stderr);
      assert.equal(out.stdout, rows(1, ROWS));
    });

    it('\\copy FROM pstdin with 50k rows', async () => {
      const make = await sql(['-c', 'create table copy_meta (id int, name text)']);
      assert.equal(make.code, 0, make.stderr);
      const r = await sql(['-c', '\\copy copy_meta from pstdin'], rows(1, ROWS));
      assert.equal(r.code, 0, r.stderr);
      const check = await sql(['-c', 'select count(*), sum(id) from copy_meta']);
      assert.equal(check.stdout.trim(), `${ROWS}|${sumTo(ROWS)}`);
      const out = await sql(['-c', '\\copy copy_meta to pstdout']);
      assert.equal(out.code, 0, out.stderr);
      const lines = out.stdout.split('\n').filter((l) => l !== '');
      assert.equal(lines.length, ROWS);
      assert.equal(lines.reduce((acc, l) => acc + Number(l.split('\t')[0]), 0), sumTo(ROWS));
    });

    it('a bad row mid-stream reports the error and the session stays usable', async () => {
      const bad = `${rows(1, 25_000)}oops\tbad-row\n${rows(25_002, ROWS)}`;
      const script = [
        'create table copy_bad (id int, name text);',
        "insert into copy_bad values (0, 'before');",
        'select pg_backend_pid() as pid \\gset',
        'copy copy_bad from stdin;',
        `${bad}\\.`,
        "select 'after|' || count(*) || '|' || (pg_backend_pid() = :pid) from copy_bad;",
        '',
      ].join('\n');
      const r = await sql(['-q', '-v', 'ON_ERROR_STOP=0'], script);
      assert.match(r.stderr, /invalid input syntax for type integer: "oops"/);
      assert.match(r.stderr, /COPY copy_bad, line 25001/);
      // Same session (same backend), the COPY rolled back entirely.
      assert.equal(r.stdout.trim(), 'after|1|true');
    });
  });

  describe('LISTEN/NOTIFY', () => {
    it('delivers notifications between two clients, transactional NOTIFY only at commit', async () => {
      const listener = await client();
      const notifier = await client();
      const got: pg.Notification[] = [];
      listener.on('notification', (n) => got.push(n));
      await listener.query('listen pgwarden_chan');
      const payload = 'hello 🐘 中文';
      await notifier.query('select pg_notify($1, $2)', ['pgwarden_chan', payload]);
      await waitFor('the first notification', () => Promise.resolve(got.length === 1), 5_000);
      const pid = (await notifier.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
      assert.equal(got[0]?.channel, 'pgwarden_chan');
      assert.equal(got[0]?.payload, payload);
      assert.equal(got[0]?.processId, pid);

      await notifier.query('begin');
      await notifier.query("notify pgwarden_chan, 'in-tx'");
      await sleep(300);
      assert.equal(got.length, 1, 'not delivered before commit');
      await notifier.query('commit');
      await waitFor('the committed notification', () => Promise.resolve(got.length === 2), 5_000);
      assert.equal(got[1]?.payload, 'in-tx');
      await listener.query('unlisten *');
    });
  });

  describe('encodings and binary data', () => {
    const samples = [
      'emoji 🐘🚀 ZWJ 👩‍👩‍👧‍👦 flags 🇫🇷🇯🇵',
      'CJK 中文 日本語 한국어 𠜎𠜱 (astral)',
      'combining e\u0301 a\u0308 o\u0302\u0323 vs precomposed é ä',
      "RTL שלום مرحبا and quotes ' \" \\",
    ];

    it('unicode round-trips through parameters, literals and a table', async () => {
      const c = await client();
      await c.query('create temp table u (id int, s text)');
      for (const [i, s] of samples.entries()) {
        const p = await c.query<{ s: string; bytes: number; chars: number }>('select $1::text as s, octet_length($1::text) as bytes, char_length($1::text) as chars', [s]);
        assert.deepEqual(p.rows[0], { s, bytes: Buffer.byteLength(s), chars: Array.from(s).length });
        const lit = await c.query<{ s: string }>(`select ${c.escapeLiteral(s)}::text as s`);
        assert.equal(lit.rows[0]?.s, s);
        await c.query('insert into u values ($1, $2)', [i, s]);
      }
      const back = await c.query<{ s: string }>('select s from u order by id');
      assert.deepEqual(back.rows.map((r) => r.s), samples);
      // And via psql: UTF-8 bytes out exactly as sent.
      const r = await sql(['-c', `select ${c.escapeLiteral(samples.join('|'))}`]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, `${samples.join('|')}\n`);
    });

    it('random 64 KiB bytea round-trips byte for byte (hex and escape output)', async () => {
      const c = await client();
      const data = randomBytes(64 * 1024);
      const r = await c.query<{ b: Buffer; h: string; n: number }>('select $1::bytea as b, md5($1::bytea) as h, length($1::bytea) as n', [data]);
      assert.ok(data.equals(r.rows[0]!.b));
      assert.equal(r.rows[0]?.h, md5(data));
      assert.equal(r.rows[0]?.n, data.length);
      await c.query('create temp table blobs (b bytea)');
      await c.query('insert into blobs values ($1)', [data]);
      await c.query("set bytea_output = 'escape'");
      const e = await c.query<{ b: Buffer }>('select b from blobs');
      assert.ok(data.equals(e.rows[0]!.b));
    });

    it('client_encoding LATIN1 as a startup parameter still works for ASCII', async () => {
      // libpq sends client_encoding as a startup parameter of its own.
      const p = await psql(libpqConninfo(rp, { tenant: TENANT, user: USER, extra: 'client_encoding=LATIN1' }), PASSWORD, ['-c', 'show client_encoding', '-c', "select 'ascii' || 42"]);
      assert.equal(p.code, 0, p.stderr);
      assert.equal(p.stdout, 'LATIN1\nascii42\n');
      // node-postgres sends no client_encoding at startup (and PostgreSQL ignores one in options,
      // directly as through the proxy), so it switches with SET; ASCII still round-trips.
      const c = await client();
      await c.query("set client_encoding = 'LATIN1'");
      const r = await c.query<{ e: string; s: string }>("select current_setting('client_encoding') as e, 'plain ascii ' || $1::text as s", ['ok']);
      assert.deepEqual(r.rows[0], { e: 'LATIN1', s: 'plain ascii ok' });
    });
  });

  describe('SET/SHOW and startup parameters', () => {
    it('SET search_path and SET LOCAL behave as on a direct connection', async () => {
      const c = await client();
      await c.query('create schema if not exists s1');
      await c.query('set search_path to s1, public');
      assert.equal((await c.query<{ search_path: string }>('show search_path')).rows[0]?.search_path, 's1, public');
      await c.query('create table in_s1 (v int)');
      const where = await c.query<{ n: string }>("select n.nspname as n from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.relname = 'in_s1'");
      assert.equal(where.rows[0]?.n, 's1');
      await c.query('begin');
      await c.query("set local statement_timeout = '1234ms'");
      assert.equal((await c.query<{ statement_timeout: string }>('show statement_timeout')).rows[0]?.statement_timeout, '1234ms');
      await c.query('commit');
      assert.equal((await c.query<{ statement_timeout: string }>('show statement_timeout')).rows[0]?.statement_timeout, '0');
      await c.query('reset search_path');
      assert.equal((await c.query<{ search_path: string }>('show search_path')).rows[0]?.search_path, '"$user", public');
    });

    it('SHOW application_name is what the client sent (pg and psql)', async () => {
      const c = await client({ applicationName: 'pgwarden-clients-test' });
      assert.equal((await c.query<{ application_name: string }>('show application_name')).rows[0]?.application_name, 'pgwarden-clients-test');
      const act = await pgc.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where application_name = 'pgwarden-clients-test' and usename = $1", [USER]);
      assert.equal(act.rows[0]?.n, 1);
      const p = await sql(['-c', 'show application_name'], undefined, 'application_name=psql-through-pgwarden');
      assert.equal(p.code, 0, p.stderr);
      assert.equal(p.stdout, 'psql-through-pgwarden\n');
    });

    it('options=-c settings reach the server', async () => {
      const c = await client({ options: '-c search_path=s2,public -c statement_timeout=5min' });
      const r = await c.query<{ sp: string; st: string }>("select current_setting('search_path') as sp, current_setting('statement_timeout') as st");
      assert.deepEqual(r.rows[0], { sp: 's2,public', st: '5min' });
    });
  });

  describe('cancel', () => {
    const CANCEL_DEADLINE_MS = 5_000;
    const activeSleeps = async (appName: string): Promise<number> => {
      const r = await pgc.query<{ n: number }>(
        "select count(*)::int as n from pg_stat_activity where state = 'active' and query like 'select pg_sleep(%' and application_name = $1",
        [appName],
      );
      return r.rows[0]!.n;
    };
    /** Cancels leftovers from the superuser side, so a failed cancel costs seconds, not 30. */
    const cancelLeftovers = async (appName: string): Promise<void> => {
      await pgc.query('select pg_cancel_backend(pid) from pg_stat_activity where application_name = $1', [appName]);
    };
    /** The query's error, or 'still running' when it outlives the deadline. */
    const outcome = async (settled: Promise<unknown>): Promise<unknown> =>
      Promise.race([settled, sleep(CANCEL_DEADLINE_MS).then(() => 'still running')]);

    it('psql SIGINT (libpq plaintext CancelRequest, no SNI) cancels with 57014 although require_tls is on', async () => {
      const app = 'psql-cancel';
      const child = spawn('psql', ['-X', '-At', '-v', 'VERBOSITY=verbose', '-d', `${conninfo} application_name=${app}`, '-c', 'select pg_sleep(30)'], {
        env: { ...process.env, PGPASSWORD: PASSWORD, PGCONNECT_TIMEOUT: '10' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      try {
        await waitFor('psql to be running pg_sleep', async () => (await activeSleeps(app)) === 1);
        child.kill('SIGINT');
        const code = await outcome(exited);
        assert.notEqual(code, 'still running', `psql still running ${CANCEL_DEADLINE_MS} ms after SIGINT: the cancel did not cancel`);
        assert.equal(code, 1);
        assert.match(stderr, /ERROR:\s+57014: canceling statement due to user request/);
      } finally {
        if (child.exitCode === null) child.kill('SIGKILL');
        await exited;
        await cancelLeftovers(app);
      }
    });

    // The same key, two ways a driver sends it: plaintext on a new connection (libpq up to 16,
    // node-postgres, pgjdbc) and inside TLS (libpq 17).
    const transports = [
      { name: 'a plaintext CancelRequest with the key a pg client got cancels its query (57014)', app: 'pg-cancel', send: (req: Buffer) => plainCancel(rp.port, req) },
      { name: 'a CancelRequest inside TLS (libpq 17 style) cancels too', app: 'tls-cancel', send: (req: Buffer) => tlsCancel(rp, req) },
    ];
    for (const t of transports) {
      it(t.name, async () => {
        const c = await client({ applicationName: t.app });
        const { processID, secretKey } = c as unknown as { processID: number; secretKey: number };
        const settled = c.query('select pg_sleep(30)').then(() => 'completed', (e: unknown) => e);
        try {
          await waitFor('pg to be running pg_sleep', async () => (await activeSleeps(t.app)) === 1);
          const out = await t.send(cancelRequest(processID, secretKey));
          assert.deepEqual(out, { received: 0, closed: true }, 'no reply, closed');
          const err = await outcome(settled);
          assert.notEqual(err, 'still running', `query still running ${CANCEL_DEADLINE_MS} ms after the CancelRequest`);
          assert.equal((err as { code?: string }).code, '57014');
        } finally {
          await cancelLeftovers(t.app);
          await settled;
        }
        assert.equal((await c.query<{ v: number }>('select 1 as v')).rows[0]?.v, 1);
      });
    }

    it('a CancelRequest with a random or wrong key gets no reply, is closed, and cancels nothing', async () => {
      const app = 'bogus-cancel';
      const c = await client({ applicationName: app });
      const { processID, secretKey } = c as unknown as { processID: number; secretKey: number };
      const q = c.query<{ v: number }>('select pg_sleep(1.5), 42 as v');
      await waitFor('pg to be running pg_sleep', async () => (await activeSleeps(app)) === 1);
      const random = await plainCancel(rp.port, cancelRequest(randomInt(1, 0x7fffffff), randomInt(0, 0x7fffffff)));
      assert.deepEqual(random, { received: 0, closed: true });
      const wrongSecret = await plainCancel(rp.port, cancelRequest(processID, secretKey ^ 1));
      assert.deepEqual(wrongSecret, { received: 0, closed: true });
      const r = await q;
      assert.equal(r.rows[0]?.v, 42);
    });
  });

  describe('pgbench', () => {
    before(async () => {
      const init = await run('pgbench', ['-i', '-s', '1', '-q', '-h', pgc.socketDir, '-p', String(pgc.port), '-U', pgc.superuser, 'postgres'], { ...process.env, PGPASSWORD: '' }, 120_000);
      assert.equal(init.code, 0, init.stderr);
      await pgc.query(`GRANT SELECT ON ALL TABLES IN SCHEMA public TO ${USER}`);
    });

    for (const mode of ['simple', 'extended', 'prepared']) {
      it(`pgbench -S -M ${mode} through the proxy: no failed transactions`, async () => {
        const r = await run('pgbench', ['-n', '-S', '-T', '3', '-c', '4', '-M', mode, libpqConninfo(rp, { tenant: TENANT, user: USER })], {
          ...process.env,
          PGPASSWORD: PASSWORD,
          PGCONNECT_TIMEOUT: '10',
        });
        const out = `${r.stdout}\n${r.stderr}`;
        assert.equal(r.code, 0, out);
        assert.match(out, /number of failed transactions: 0 \(/, out);
        const tps = /tps = ([\d.]+)/.exec(out);
        assert.ok(tps !== null && Number(tps[1]) > 0, out);
        const processed = /number of transactions actually processed: (\d+)/.exec(out);
        assert.ok(processed !== null && Number(processed[1]) > 0, out);
      });
    }
  });
});
