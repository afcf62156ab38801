/**
 * Backend pooling with real clients: reuse and reset in session mode, many clients on few
 * backends in transaction mode, pinning, pool timeout, backends dying while pooled, and cancel
 * requests that never reach a neighbour's query.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import net from 'node:net';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { LimitKeys } from '../../src/limits/store.js';
import { makeScramVerifier } from '../../src/auth/scram.js';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, connect, clientConfig, connectError, libpqConninfo, type RunningProxy } from '../support/proxy.js';
import { serialize } from 'pg-protocol';
import { rawLogin } from '../support/login.js';
import { sendCancel } from '../support/wire.js';
import { sleep, waitFor } from '../support/wait.js';

describe('pooling', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  let verifier: string;
  let fastVerifier: string;

  const backendsOnServer = async (): Promise<number> =>
    (await cluster.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where usename = 'app'")).rows[0]?.n ?? -1;

  before(async () => {
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }], settings: { max_connections: '100' } });
    verifier = await readVerifier(cluster, 'app');
    // A role whose verifier has few iterations: 10,000 logins then cost the client (libpq's
    // PBKDF2) little, so the test measures the proxy's bookkeeping, not the client's hashing.
    fastVerifier = await makeScramVerifier('fast-pass', 16);
    await cluster.query(`create role fast login password '${fastVerifier}'`);
    await cluster.query('create table ledger (id serial primary key, who text, n int)');
    await cluster.query('grant all on ledger, ledger_id_seq to app');
    rp = await startProxy({
      tenants: [
        { id: 'sess', cluster, users: [{ name: 'app', verifier }], pool: { pool_mode: 'session', max_backend_connections: 2 } },
        { id: 'tiny', cluster, users: [{ name: 'app', verifier }], pool: { pool_mode: 'session', max_backend_connections: 1, pool_timeout: '1500ms' } },
        { id: 'txn', cluster, users: [{ name: 'app', verifier }], pool: { pool_mode: 'transaction', max_backend_connections: 3 } },
        { id: 'txfast', cluster, users: [{ name: 'fast', verifier: fastVerifier }], pool: { pool_mode: 'transaction', max_backend_connections: 3 } },
        { id: 'txone', cluster, users: [{ name: 'app', verifier }], pool: { pool_mode: 'transaction', max_backend_connections: 1 } },
        { id: 'cold', cluster, users: [{ name: 'app', verifier }], pool: { pool_mode: 'transaction', max_backend_connections: 5 } },
        { id: 'dbs', cluster, users: [{ name: 'app', verifier }], pool: { pool_mode: 'session', max_backend_connections: 2, backend_idle_timeout: '1s' } },
        { id: 'strict', cluster, users: [{ name: 'app', verifier }], pool: { pool_mode: 'transaction', max_backend_connections: 2, session_state: 'refuse' } },
      ],
    });
  });
  after(async () => {
    await rp?.close();
    await cluster?.stop();
  });

  const pool = (tenant: string): { total: number; idle: number; active: number; waiting: number } => {
    const p = rp.proxy.pools.snapshot().find((x) => x.tenant === tenant);
    assert.ok(p !== undefined, `pool for ${tenant}`);
    return p;
  };

  describe('session mode', () => {
    it('reuses one backend for consecutive clients, reset between them', async () => {
      const a = await connect(rp, { tenant: 'sess', user: 'app', password: 'app-pass' });
      const pidA = (await a.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
      await a.query("set search_path = 'nowhere'");
      await a.query('create temp table scratch (x int)');
      await a.end();
      await waitFor(() => pool('sess').idle === 1);
      const b = await connect(rp, { tenant: 'sess', user: 'app', password: 'app-pass' });
      const r = await b.query<{ pid: number; sp: string; temp: number }>(
        "select pg_backend_pid() as pid, current_setting('search_path') as sp, (select count(*)::int from pg_class where relname = 'scratch') as temp",
      );
      assert.equal(r.rows[0]?.pid, pidA, 'same backend');
      assert.equal(r.rows[0]?.sp, '"$user", public', 'SET was reset');
      assert.equal(r.rows[0]?.temp, 0, 'temp table was discarded');
      await b.end();
    });

    it('closes a backend whose client left in the middle of a transaction', async () => {
      await waitFor(() => pool('sess').active === 0);
      const a = await connect(rp, { tenant: 'sess', user: 'app', password: 'app-pass' });
      a.on('error', () => undefined);
      const pidA = (await a.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
      await a.query('begin');
      (a as unknown as { connection: { stream: net.Socket } }).connection.stream.destroy();
      await waitFor(async () => (await cluster.query<{ n: number }>('select count(*)::int as n from pg_stat_activity where pid = $1', [pidA])).rows[0]?.n === 0);
      const b = await connect(rp, { tenant: 'sess', user: 'app', password: 'app-pass' });
      const pidB = (await b.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
      assert.notEqual(pidB, pidA);
      await b.end();
    });

    it('forgets pool keys nobody uses (a client cycling database names cannot grow the pool map)', async () => {
      const live = await connect(rp, { tenant: 'dbs', user: 'app', password: 'app-pass' });
      const keys = (): number => rp.proxy.pools.snapshot().find((x) => x.tenant === 'dbs')?.keys ?? -1;
      try {
        // The keys of the last second are all there (older ones may already be forgotten on a loaded machine).
        const tried: number[] = [];
        for (let i = 0; i < 40; i++) {
          const e = await connectError(clientConfig(rp, { tenant: 'dbs', user: 'app', password: 'app-pass', database: `nodb_${i}` }));
          assert.equal(e.code, '3D000', e.message);
          tried.push(Date.now());
        }
        const recent = tried.filter((t) => Date.now() - t < 900).length;
        assert.ok(keys() >= 1 + recent && keys() > 1, `a key per database tried (${keys()} keys, ${recent} tried in the last 0.9 s)`);
      } catch (err) {
        await live.end();
        throw err;
      }
      // backend_idle_timeout is 1 s and the reaper runs every second.
      await waitFor(() => keys() === 1, 6000, 'unused keys forgotten');
      // The live session's key stays, and its backend still works.
      assert.equal((await live.query<{ v: number }>('select 7 as v')).rows[0]?.v, 7);
      await live.end();
    });

    it('answers 53300 when no backend frees up within pool_timeout', async () => {
      const holder = await connect(rp, { tenant: 'tiny', user: 'app', password: 'app-pass' });
      const t0 = Date.now();
      let settled = false;
      const waiting = connectError(clientConfig(rp, { tenant: 'tiny', user: 'app', password: 'app-pass' })).finally(() => (settled = true));
      // While tiny's client waits, another tenant is served: waiters never take others' backends.
      await waitFor(() => pool('tiny').waiting === 1);
      const neighbour = await connect(rp, { tenant: 'sess', user: 'app', password: 'app-pass' });
      assert.equal(settled, false, 'the neighbour was served while tiny still waited');
      await neighbour.end();
      const e = await waiting;
      assert.equal(e.code, '53300');
      assert.equal(e.message, 'no backend connection available within pool_timeout');
      assert.ok(Date.now() - t0 >= 1400);
      await holder.end();
      const next = await connect(rp, { tenant: 'tiny', user: 'app', password: 'app-pass' });
      await next.end();
    });

    it('drops a pooled backend that dies while idle, and serves the next client with a new one', async () => {
      const a = await connect(rp, { tenant: 'tiny', user: 'app', password: 'app-pass' });
      const pid = (await a.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
      await a.end();
      await waitFor(() => pool('tiny').idle === 1);
      await cluster.query('select pg_terminate_backend($1)', [pid]);
      await waitFor(() => pool('tiny').total === 0);
      const b = await connect(rp, { tenant: 'tiny', user: 'app', password: 'app-pass' });
      assert.notEqual((await b.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid, pid);
      await b.end();
    });
  });

  describe('transaction mode', () => {
    it('logs 16 clients in at once on a cold pool with a single backend login', async () => {
      const clients = await Promise.all(Array.from({ length: 16 }, () => connect(rp, { tenant: 'cold', user: 'app', password: 'app-pass' })));
      const p = pool('cold');
      assert.equal(p.total, 1, JSON.stringify(p));
      assert.equal(p.active, 0);
      await Promise.all(clients.map((c) => c.end()));
    });

    it('serves 20 clients with 3 backends, every transaction correct', async () => {
      const clients = await Promise.all(Array.from({ length: 20 }, () => connect(rp, { tenant: 'txn', user: 'app', password: 'app-pass' })));
      let peak = 0;
      const watcher = setInterval(() => {
        void backendsOnServer().then((n) => (peak = Math.max(peak, n)));
      }, 20);
      await Promise.all(
        clients.map(async (c, i) => {
          for (let k = 0; k < 15; k++) {
            await c.query('begin');
            await c.query('insert into ledger (who, n) values ($1, $2)', [`c${i}`, k]);
            const r = await c.query<{ s: number }>('select sum(n)::int as s from ledger where who = $1', [`c${i}`]);
            assert.equal(r.rows[0]?.s, (k * (k + 1)) / 2);
            await c.query('commit');
          }
        }),
      );
      clearInterval(watcher);
      assert.ok(pool('txn').total <= 3, JSON.stringify(pool('txn')));
      assert.ok(peak <= 3 + 5 /* other tenants' idle backends of the same role */, `peak ${peak}`);
      const total = (await cluster.query<{ n: number }>("select count(*)::int as n from ledger where who like 'c%'")).rows[0]?.n;
      assert.equal(total, 20 * 15);
      await Promise.all(clients.map((c) => c.end()));
      await cluster.query("delete from ledger where who like 'c%'");
    });

    it('carries named prepared statements across backends (node-postgres), without pinning', async () => {
      const pinsBefore = Number(/^pgwarden_pool_pins_total\{tenant="txn"\} (\d+)/m.exec(await (await fetch(`http://127.0.0.1:${rp.metricsPort}/metrics`)).text())?.[1] ?? 0);
      const clients = await Promise.all(Array.from({ length: 8 }, () => connect(rp, { tenant: 'txn', user: 'app', password: 'app-pass' })));
      const pids = new Set<number>();
      await Promise.all(
        clients.map(async (c, i) => {
          for (let k = 0; k < 40; k++) {
            const r = await c.query<{ v: number; pid: number }>({ name: 'double', text: 'select $1::int * 2 as v, pg_backend_pid() as pid', values: [i * 100 + k] });
            assert.equal(r.rows[0]?.v, (i * 100 + k) * 2);
            pids.add(r.rows[0].pid);
            // A second statement under another name with different text, and the same name reused by every client.
            const t = await c.query<{ s: string }>({ name: `echo${i % 2}`, text: `select $1::text || '${i % 2}' as s`, values: ['x'] });
            assert.equal(t.rows[0]?.s, `x${i % 2}`);
          }
        }),
      );
      assert.ok(pids.size > 1, 'the statements ran on more than one backend');
      assert.ok(pool('txn').total <= 3);
      const server = await cluster.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where usename = 'app'");
      assert.ok((server.rows[0]?.n ?? 99) <= 3 + 5);
      await Promise.all(clients.map((c) => c.end()));
      const pinsAfter = Number(/^pgwarden_pool_pins_total\{tenant="txn"\} (\d+)/m.exec(await (await fetch(`http://127.0.0.1:${rp.metricsPort}/metrics`)).text())?.[1] ?? 0);
      assert.equal(pinsAfter, pinsBefore, 'named statements did not pin');
    });

    it('answers Parse of a statement the backend already has, and Close, itself (raw protocol)', async () => {
      const c1 = await connect(rp, { tenant: 'txone', user: 'app', password: 'app-pass' });
      await c1.query({ name: 'seed', text: 'select 41 + $1::int as v', values: [1] }); // prepares pgw_<hash> on the only backend
      await c1.end();
      const c2 = await connect(rp, { tenant: 'txone', user: 'app', password: 'app-pass' });
      // Same text under another client name: the backend has it, the Parse is answered here.
      const r = await c2.query<{ v: number }>({ name: 'other', text: 'select 41 + $1::int as v', values: [2] });
      assert.equal(r.rows[0]?.v, 43);
      // A statement that fails to prepare reports the server's error, and the session goes on.
      await assert.rejects(c2.query({ name: 'bad', text: 'select from nowhere_table', values: [] }), { code: '42P01' });
      assert.equal((await c2.query<{ v: number }>({ name: 'other', text: 'select 41 + $1::int as v', values: [3] })).rows[0]?.v, 44);
      await c2.end();
    });

    it('answers a lone Parse of a statement the backend has with nothing to forward, and goes on (raw protocol)', async () => {
      // The batch the relay sends to the backend is empty (the Parse is answered here): the proxy
      // must write nothing, not an empty writev (which aborts the process), and keep the session.
      const text = 'select 45 + $1::int as v';
      const login = (): ReturnType<typeof rawLogin> => rawLogin(rp.port, rp.certs.caCertPem, { tenant: 'txone', user: 'app', password: 'app-pass' });
      const untilReady = async (w: Awaited<ReturnType<typeof rawLogin>>): Promise<{ types: string[]; row: string }> => {
        const types: string[] = [];
        let row = '';
        for (;;) {
          const f = await w.frame();
          assert.ok(f !== null, 'the session stays open');
          types.push(f.type);
          if (f.type === 'D') row = f.body.toString('utf8', 6);
          if (f.type === 'Z') return { types, row };
        }
      };
      // The first session prepares the statement on the tenant's only backend (same pool key: same startup parameters).
      const seed = await login();
      seed.write(Buffer.concat([serialize.parse({ name: 'seed', text, types: [] }), serialize.bind({ statement: 'seed', values: ['0'] }), serialize.execute({}), serialize.sync()]));
      assert.deepEqual((await untilReady(seed)).types, ['1', '2', 'D', 'C', 'Z']);
      seed.end();
      const w = await login();
      try {
        w.write(serialize.parse({ name: 'lone', text, types: [] }));
        assert.equal((await w.frame())?.type, '1', 'ParseComplete, answered by the proxy before any Sync');
        await sleep(50);
        w.write(Buffer.concat([serialize.bind({ statement: 'lone', values: ['1'] }), serialize.execute({}), serialize.sync()]));
        const { types, row } = await untilReady(w);
        assert.deepEqual(types, ['2', 'D', 'C', 'Z']);
        assert.equal(row, '46');
      } finally {
        w.end();
      }
      const after = await connect(rp, { tenant: 'txone', user: 'app', password: 'app-pass' });
      assert.equal((await after.query<{ one: number }>('select 1 as one')).rows[0]?.one, 1, 'the proxy still serves');
      await after.end();
    });

    it('keeps a client that changes session state on its backend (pinning) and no one else sees it', async () => {
      const a = await connect(rp, { tenant: 'txone', user: 'app', password: 'app-pass' });
      await a.query("set application_name = 'pinned-one'");
      const b = await connect(rp, { tenant: 'txone', user: 'app', password: 'app-pass' });
      // b needs the only backend, which a keeps: b waits until a leaves.
      const bQuery = b.query<{ a: string }>("select current_setting('application_name') as a");
      await sleep(200);
      assert.equal((await a.query<{ a: string }>("select current_setting('application_name') as a")).rows[0]?.a, 'pinned-one');
      await a.end();
      const r = await bQuery;
      assert.notEqual(r.rows[0]?.a, 'pinned-one', 'the pinned state was reset before b got the backend');
      await b.end();
      const m = await (await fetch(`http://127.0.0.1:${rp.metricsPort}/metrics`)).text();
      assert.match(m, /^pgwarden_pool_pins_total\{tenant="txone"\} [1-9]/m);
    });

    it('refuses session-state statements with 0A000 when session_state = "refuse", keeping transaction status honest', async () => {
      const c = await connect(rp, { tenant: 'strict', user: 'app', password: 'app-pass' });
      const refused = (sql: string): Promise<unknown> =>
        assert.rejects(c.query(sql), { code: '0A000', message: 'statements that change session state are not supported in transaction pooling mode' });
      await refused("set search_path = 'elsewhere'");
      await refused('listen somewhere');
      // Extended protocol with a Bind parameter: the refusal still binds, so the client sees 0A000.
      await assert.rejects(c.query("select set_config('search_path', $1, false)", ['elsewhere']), { code: '0A000' });
      assert.equal((await c.query<{ v: number }>('select 1 as v')).rows[0]?.v, 1);
      // Inside a transaction the refusal aborts it, as any server-side error would.
      await c.query('begin');
      await refused('set statement_timeout = 5');
      await assert.rejects(c.query('select 1'), { code: '25P02' });
      await c.query('rollback');
      // SET LOCAL lives and dies with its transaction: allowed.
      await c.query('begin');
      await c.query("set local search_path = 'elsewhere'");
      assert.equal((await c.query<{ sp: string }>("select current_setting('search_path') as sp")).rows[0]?.sp, 'elsewhere');
      await c.query('commit');
      assert.equal(pool('strict').active, 0, 'not pinned');
      await c.end();
    });

    it('cancels the running query of the client, and a late cancel never hits the next client', async () => {
      const a = await connect(rp, { tenant: 'txone', user: 'app', password: 'app-pass' });
      const { processID, secretKey } = a as unknown as { processID: number; secretKey: number };
      const running = a.query('select pg_sleep(30)').then(() => null, (e: unknown) => e as { code?: string });
      await waitFor(async () => (await cluster.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'")).rows[0]?.n === 1);
      await sendCancel(rp.port, processID, secretKey);
      assert.equal((await running)?.code, '57014');

      // a is idle now (its backend went back to the pool). b runs on that same single backend…
      const b = await connect(rp, { tenant: 'txone', user: 'app', password: 'app-pass' });
      const bRun = b.query<{ v: number }>('select pg_sleep(1), 7 as v');
      await waitFor(async () => (await cluster.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where query like 'select pg_sleep(1)%' and state = 'active'")).rows[0]?.n === 1);
      // …and a's stale key arrives: it must not cancel b.
      await sendCancel(rp.port, processID, secretKey);
      assert.equal((await bRun).rows[0]?.v, 7);
      await Promise.all([a.end(), b.end()]);
    });

    it('ends the session of a client whose backend dies mid-query, and the pool recovers', async () => {
      const c = await connect(rp, { tenant: 'txone', user: 'app', password: 'app-pass' });
      c.on('error', () => undefined); // the connection ends after the query's error
      const q = c.query('select pg_sleep(30)').then(() => null, (e: unknown) => e as { code?: string });
      await waitFor(async () => (await cluster.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'")).rows[0]?.n === 1);
      await cluster.query("select pg_terminate_backend(pid) from pg_stat_activity where query = 'select pg_sleep(30)'");
      assert.equal((await q)?.code, '57P01', 'the server said why, forwarded byte for byte');
      await waitFor(() => pool('txone').active === 0);
      const next = await connect(rp, { tenant: 'txone', user: 'app', password: 'app-pass' });
      assert.equal((await next.query<{ v: number }>('select 5 as v')).rows[0]?.v, 5);
      await next.end();
    });

    it('leaks nothing over 200 short sessions with named statements, and shows pools to operators', async () => {
      for (let round = 0; round < 10; round++) {
        await Promise.all(
          Array.from({ length: 20 }, async (_, i) => {
            const c = await connect(rp, { tenant: 'txn', user: 'app', password: 'app-pass' });
            await c.query({ name: `s${i % 3}`, text: 'select $1::int as v', values: [i] });
            await c.end();
          }),
        );
      }
      await waitFor(() => pool('txn').active === 0 && rp.proxy.sessions.size === 0);
      assert.ok(pool('txn').total <= 3);
      assert.equal(rp.proxy.cancels.size, 0);
      // A backend the pool just closed can still be exiting on the server: wait, then assert.
      const pooled = (): number => rp.proxy.pools.snapshot().reduce((n, p) => n + p.total, 0);
      const onServer = async (): Promise<number> =>
        (await cluster.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where usename = 'app'")).rows[0]?.n ?? -1;
      await waitFor(async () => (await onServer()) === pooled(), 3_000, 'every server connection a pooled one').catch(() => undefined);
      assert.equal(await onServer(), pooled(), 'every server connection is a pooled one');
      const view = (await (await fetch(`http://127.0.0.1:${rp.metricsPort}/pools`)).json()) as { tenant: string; mode: string; total: number; max: number }[];
      const txn = view.find((p) => p.tenant === 'txn');
      assert.equal(txn?.mode, 'transaction');
      assert.equal(txn?.max, 3);
      const m = await (await fetch(`http://127.0.0.1:${rp.metricsPort}/metrics`)).text();
      assert.match(m, /^pgwarden_queries_total\{tenant="txn"\} [1-9]\d*$/m);
      assert.match(m, /^pgwarden_transactions_total\{tenant="txn"\} [1-9]\d*$/m);
      assert.match(m, /^pgwarden_pool_backends\{tenant="txn",state="idle"\} \d+$/m);
      assert.match(m, /^pgwarden_backend_connects_total\{tenant="txn",outcome="ok"\} [1-9]\d*$/m);
    });

    it('leaks no backend, slot or cancel key over 10,000 short TLS sessions (pgbench -C)', async () => {
      const dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-short-'));
      const script = path.join(dir, 'one.sql');
      await writeFile(script, 'select 1;\n');
      try {
        const out = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
          execFile(
            'pgbench',
            // -C: a new connection (TLS handshake, SCRAM, pool checkout) for every transaction.
            ['-n', '-C', '-f', script, '-c', '8', '-j', '2', '-t', '1250', libpqConninfo(rp, { tenant: 'txfast', user: 'fast' })],
            { env: { ...process.env, PGPASSWORD: 'fast-pass' }, timeout: 240_000 },
            (e, stdout, stderr) => resolve({ code: e ? 1 : 0, stdout, stderr }),
          );
        });
        assert.equal(out.code, 0, out.stderr);
        assert.match(out.stdout, /number of transactions actually processed: 10000\/10000/);
        assert.match(out.stdout, /number of failed transactions: 0 /);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
      await waitFor(() => pool('txfast').active === 0 && rp.proxy.sessions.size === 0);
      assert.ok(pool('txfast').total <= 3);
      assert.equal(rp.proxy.cancels.size, 0);
      assert.equal(rp.proxy.limits.active(LimitKeys.tenantConnections('txfast')), 0);
      assert.equal(rp.proxy.preauth.active, 0);
      const onServer = async (): Promise<number> =>
        (await cluster.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where usename = 'fast'")).rows[0]?.n ?? -1;
      await waitFor(async () => (await onServer()) === pool('txfast').total, 3_000, 'every server connection a pooled one').catch(() => undefined);
      assert.equal(await onServer(), pool('txfast').total, 'every server connection is a pooled one');
    });

    it('runs pgbench simple, extended and prepared with 8 clients on 3 backends', async () => {
      const init = await new Promise<{ code: number; err: string }>((resolve) => {
        execFile('pgbench', ['-i', '-s', '1', '-q', '-h', cluster.socketDir, '-p', String(cluster.port), '-U', cluster.superuser, 'postgres'], (e, _o, err) =>
          resolve({ code: e ? 1 : 0, err }),
        );
      });
      assert.equal(init.code, 0, init.err);
      await cluster.query('grant select, update, insert on all tables in schema public to app');
      for (const mode of ['simple', 'extended', 'prepared']) {
        const out = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
          execFile(
            'pgbench',
            ['-n', '-S', '-T', '2', '-c', '8', '-j', '2', '-M', mode, libpqConninfo(rp, { tenant: 'txn', user: 'app' })],
            { env: { ...process.env, PGPASSWORD: 'app-pass' }, timeout: 60_000 },
            (e, stdout, stderr) => resolve({ code: e ? 1 : 0, stdout, stderr }),
          );
        });
        assert.equal(out.code, 0, `${mode}: ${out.stderr}`);
        assert.match(out.stdout, /number of failed transactions: 0 /, mode);
        assert.ok(pool('txn').total <= 3);
      }
    });
  });
});
