/**
 * The fault matrix (issue 6): a tenant's server killed mid-query, mid-COPY and mid-transaction in
 * each pool mode, a server that accepts and never answers, a server restarted while clients wait
 * for a backend, a reload with a broken config and with new certificates under load, and SIGTERM
 * under load. Each asserts what the client sees, that nothing committed is lost or invented, that
 * other tenants never notice, and that nothing is left behind.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { clientConfig, configToml, connect, connectError, spawnProxy, startProxy, testCerts, type ProxySpec, type RunningProxy } from '../support/proxy.js';
import { rawLogin } from '../support/login.js';
import { decodeError, Wire } from '../support/wire.js';
import { waitFor } from '../support/wait.js';
import { makeDevCerts } from '../../src/tools/dev-certs.js';
import { verifyAuditFile } from '../../src/audit/verify.js';

interface AuditRecord {
  [key: string]: unknown;
  event: string;
  reason?: string;
  session?: { id: string };
  query?: string;
}

async function auditRecords(file: string): Promise<AuditRecord[]> {
  return (await readFile(file, 'utf8'))
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as AuditRecord);
}

/** Clients of one tenant running a statement in a loop until stopped; counts and keeps errors. */
function steadyLoad(clients: pg.Client[], sql: (worker: number, n: number) => string): { stop(): Promise<{ ok: number; errors: { worker: number; code: string | undefined; message: string }[] }> } {
  let running = true;
  let ok = 0;
  const errors: { worker: number; code: string | undefined; message: string }[] = [];
  const loops = clients.map(async (c, worker) => {
    for (let n = 0; running; n++) {
      try {
        await c.query(sql(worker, n));
        ok++;
      } catch (err) {
        errors.push({ worker, code: (err as { code?: string }).code, message: (err as Error).message });
        return; // this client's connection is gone
      }
    }
  });
  return {
    stop: async () => {
      running = false;
      await Promise.all(loops);
      return { ok, errors };
    },
  };
}

describe('faults', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  let dir: string;
  let silent: net.Server;
  const silentSockets = new Set<net.Socket>();
  let stalling: net.Server;
  const stallingSockets = new Set<net.Socket>();
  let bystander: pg.Client;
  let bystanderQueries = 0;
  const bystanderErrors: string[] = [];
  let bystanderRunning = true;
  let bystanderLoop: Promise<void>;

  const auditFile = (): string => path.join(dir, 'audit.jsonl');
  const pool = (tenant: string): { total: number; active: number; waiting: number } => {
    const p = rp.proxy.pools.snapshot().find((x) => x.tenant === tenant);
    return p ?? { total: 0, active: 0, waiting: 0 };
  };
  const sessionOf = (tenant: string): string => {
    const s = [...rp.proxy.sessions].filter((x) => x.tenantId === tenant && x.phase === 'relaying');
    assert.equal(s.length, 1, `one session of ${tenant}`);
    return s[0]!.id;
  };

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-faults-'));
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    await cluster.query('CREATE TABLE faults (id serial PRIMARY KEY, v text)');
    await cluster.query('GRANT ALL ON faults TO app');
    await cluster.query('GRANT ALL ON SEQUENCE faults_id_seq TO app');
    // A server that accepts and never says a word, and one that asks for SCRAM and then stalls.
    silent = net.createServer((s) => {
      s.resume(); // read and drop, so pgwarden's close is seen
      silentSockets.add(s);
      s.on('close', () => silentSockets.delete(s));
      s.on('error', () => undefined);
    });
    stalling = net.createServer((s) => {
      stallingSockets.add(s);
      s.on('close', () => stallingSockets.delete(s));
      s.on('error', () => undefined);
      s.once('data', () => s.write(Buffer.from([0x52, 0, 0, 0, 23, 0, 0, 0, 10, ...Buffer.from('SCRAM-SHA-256\0\0')])));
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    await new Promise<void>((r) => stalling.listen(0, '127.0.0.1', r));
    const users = [{ name: 'app', verifier: await readVerifier(cluster, 'app') }];
    const at = (srv: net.Server): string => `postgresql://127.0.0.1:${(srv.address() as net.AddressInfo).port}/postgres`;
    rp = await startProxy({
      auditFile: auditFile(),
      server: { backend_connect_timeout: '500ms' },
      tenants: [
        { id: 'sess', cluster, users, pool: { pool_mode: 'session', max_backend_connections: 3 } },
        { id: 'txn', cluster, users, pool: { pool_mode: 'transaction', max_backend_connections: 3 } },
        { id: 'other', cluster, users },
        { id: 'silent', cluster, users, backendUrl: at(silent) },
        { id: 'silenttx', cluster, users, backendUrl: at(silent), pool: { pool_mode: 'transaction' } },
        { id: 'stalling', cluster, users, backendUrl: at(stalling) },
      ],
    });
    bystander = await connect(rp, { tenant: 'other', user: 'app', password: 'app-pass' });
    bystanderLoop = (async () => {
      while (bystanderRunning) {
        try {
          await bystander.query('SELECT 1');
          bystanderQueries++;
        } catch (err) {
          bystanderErrors.push((err as Error).message);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
  });

  after(async () => {
    bystanderRunning = false;
    await bystanderLoop;
    await bystander.end();
    await rp?.close();
    for (const s of [...silentSockets, ...stallingSockets]) s.destroy();
    await new Promise((r) => silent.close(r));
    await new Promise((r) => stalling.close(r));
    await cluster?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const terminate = async (marker: string, state: string): Promise<void> => {
    const find = `select pid from pg_stat_activity where query like '%${marker}%' and state = '${state}' and pid <> pg_backend_pid()`;
    await waitFor(async () => (await cluster.query(find)).rowCount === 1, 10_000, `the backend running ${marker} (${state})`);
    await cluster.query(`select pg_terminate_backend(pid) from (${find}) t`);
  };

  for (const tenant of ['sess', 'txn'] as const) {
    const mode = tenant === 'sess' ? 'session' : 'transaction';

    it(`backend killed mid-query (${mode} mode): the client gets the server's 57P01, the pool recovers, no one else notices`, async () => {
      const before = bystanderQueries;
      const c = await connect(rp, { tenant, user: 'app', password: 'app-pass' });
      c.on('error', () => undefined);
      const marker = `kill-${tenant}-query`;
      const id = sessionOf(tenant);
      const q = c.query(`select pg_sleep(30) /* ${marker} */`).then(() => null, (e: unknown) => e as { code?: string; message: string });
      await terminate(marker, 'active');
      const err = await q;
      assert.equal(err?.code, '57P01', 'the server said why (R1), forwarded byte for byte');
      await waitFor(() => pool(tenant).active === 0 && ![...rp.proxy.sessions].some((s) => s.id === id), 5000, 'session and backend released');
      const next = await connect(rp, { tenant, user: 'app', password: 'app-pass' });
      assert.equal((await next.query<{ v: number }>('select 5 as v')).rows[0]?.v, 5);
      await next.end();
      await rp.proxy.audit.flush();
      const end = (await auditRecords(auditFile())).find((r) => r.event === 'session.end' && r.session?.id === id);
      assert.equal(end?.reason, 'backend_terminated:57P01');
      assert.ok(bystanderQueries > before, 'the bystander kept running');
      assert.deepEqual(bystanderErrors, []);
    });

    it(`backend killed mid-transaction (${mode} mode): the uncommitted row is gone, COMMIT is never reported done`, async () => {
      const c = await connect(rp, { tenant, user: 'app', password: 'app-pass' });
      const marker = `kill-${tenant}-tx`;
      const gone = new Promise<{ code?: string }>((resolve) => c.on('error', (e) => resolve(e as { code?: string })));
      await c.query('BEGIN');
      await c.query(`INSERT INTO faults (v) VALUES ('${marker}')`);
      const id = sessionOf(tenant);
      await terminate(marker, 'idle in transaction');
      // The server's FATAL reaches the idle client at once (session pinned to its backend in both modes).
      assert.equal((await gone).code, '57P01');
      const commit = await c.query('COMMIT').then(() => 'committed', (e: unknown) => (e as Error).message);
      assert.notEqual(commit, 'committed');
      assert.equal((await cluster.query(`select count(*)::int as n from faults where v = '${marker}'`)).rows[0]?.n, 0);
      await waitFor(() => pool(tenant).active === 0 && ![...rp.proxy.sessions].some((s) => s.id === id), 5000, 'session and backend released');
      const next = await connect(rp, { tenant, user: 'app', password: 'app-pass' });
      await next.query(`INSERT INTO faults (v) VALUES ('${marker}-after')`);
      await next.end();
      assert.equal((await cluster.query(`select count(*)::int as n from faults where v = '${marker}-after'`)).rows[0]?.n, 1);
    });

    it(`backend killed mid-COPY FROM STDIN (${mode} mode): 57P01 to the client, no row of the COPY lands`, async () => {
      const w = await rawLogin(rp.port, rp.certs.caCertPem, { tenant, user: 'app', password: 'app-pass' });
      const marker = `kill-${tenant}-copy`;
      const id = sessionOf(tenant);
      w.write(serialize.query(`COPY faults (v) FROM STDIN /* ${marker} */`));
      const g = await w.frame();
      assert.equal(g?.type, 'G');
      for (let i = 0; i < 100; i++) w.write(serialize.copyData(Buffer.from(`${marker}\n`)));
      await terminate(marker, 'active');
      const err = await w.error();
      assert.equal(err?.code, '57P01');
      assert.ok(await w.waitClosed());
      assert.equal((await cluster.query(`select count(*)::int as n from faults where v = '${marker}'`)).rows[0]?.n, 0);
      await waitFor(() => pool(tenant).active === 0 && ![...rp.proxy.sessions].some((s) => s.id === id), 5000, 'session and backend released');
      await rp.proxy.audit.flush();
      const end = (await auditRecords(auditFile())).find((r) => r.event === 'session.end' && r.session?.id === id);
      assert.equal(end?.reason, 'backend_terminated:57P01');
    });
  }

  for (const tenant of ['sess', 'txn'] as const) {
    it(`backend killed mid-COPY TO STDOUT (${tenant === 'sess' ? 'session' : 'transaction'} mode): the rows sent so far, then the server's 57P01, then a close`, async () => {
      const w = await rawLogin(rp.port, rp.certs.caCertPem, { tenant, user: 'app', password: 'app-pass' });
      const marker = `kill-${tenant}-copyout`;
      const id = sessionOf(tenant);
      // Wide rows produced slowly: the server flushes CopyData every few rows, for minutes.
      w.write(serialize.query(`COPY (select repeat('x', 2000) || g, pg_sleep(0.005) from generate_series(1, 100000) g) TO STDOUT /* ${marker} */`));
      assert.equal((await w.frame())?.type, 'H');
      assert.equal((await w.frame())?.type, 'd', 'CopyData is flowing');
      await terminate(marker, 'active');
      const before = new Set<string>();
      let err: ReturnType<typeof decodeError> | null = null;
      for (let f = await w.frame(); f !== null; f = await w.frame()) {
        if (f.type === 'E') {
          err = decodeError(f.body);
          break;
        }
        before.add(f.type);
      }
      assert.deepEqual([...before].filter((t) => t !== 'd'), [], 'only CopyData before the error');
      assert.deepEqual(err, { severity: 'FATAL', code: '57P01', message: 'terminating connection due to administrator command' });
      assert.ok(await w.waitClosed());
      await waitFor(() => pool(tenant).active === 0 && ![...rp.proxy.sessions].some((s) => s.id === id), 5000, 'session and backend released');
      await rp.proxy.audit.flush();
      const end = (await auditRecords(auditFile())).find((r) => r.event === 'session.end' && r.session?.id === id);
      assert.equal(end?.reason, 'backend_terminated:57P01');
      assert.deepEqual(bystanderErrors, []);
    });
  }

  for (const tenant of ['silent', 'silenttx']) {
    it(`a server that accepts and never answers (${tenant === 'silent' ? 'session' : 'transaction'} mode): 08006 within backend_connect_timeout, its sockets closed`, async () => {
      const t0 = Date.now();
      const e = await connectError(clientConfig(rp, { tenant, user: 'app', password: 'app-pass' }));
      const took = Date.now() - t0;
      assert.equal(e.code, '08006');
      assert.equal(e.message, 'could not connect to the tenant database');
      assert.ok(took >= 450 && took < 3000, `answered after ${took} ms (backend_connect_timeout 500 ms)`);
      await waitFor(() => silentSockets.size === 0, 3000, `pgwarden closed its sockets to the silent server (${silentSockets.size} open)`);
      assert.equal(pool(tenant).total, 0);
      assert.deepEqual(bystanderErrors, []);
    });
  }

  it('a server that asks for SCRAM and then stalls: 08006 within backend_connect_timeout, its socket closed', async () => {
    const t0 = Date.now();
    const e = await connectError(clientConfig(rp, { tenant: 'stalling', user: 'app', password: 'app-pass' }));
    assert.equal(e.code, '08006');
    assert.ok(Date.now() - t0 < 3000, `answered after ${Date.now() - t0} ms`);
    await waitFor(() => stallingSockets.size === 0, 3000, 'socket to the stalling server closed');
  });

  it('leaves the bystander untouched and nothing behind', async () => {
    await waitFor(() => [...rp.proxy.sessions].filter((s) => s.tenantId !== 'other').length === 0, 5000, 'no session but the bystander');
    assert.equal(rp.proxy.preauth.active, 0);
    for (const t of ['sess', 'txn']) assert.equal(pool(t).active, 0);
    assert.deepEqual(bystanderErrors, []);
    assert.ok(bystanderQueries > 20, `the bystander ran ${bystanderQueries} queries`);
  });
});

describe('faults: a server restarted while clients wait for a backend', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  before(async () => {
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    const users = [{ name: 'app', verifier: await readVerifier(cluster, 'app') }];
    rp = await startProxy({
      tenants: [
        { id: 'rsess', cluster, users, pool: { pool_mode: 'session', max_backend_connections: 1, pool_timeout: '20s' } },
        { id: 'rtxn', cluster, users, pool: { pool_mode: 'transaction', max_backend_connections: 1, pool_timeout: '20s' } },
      ],
    });
  });
  after(async () => {
    await rp?.close();
    await cluster?.stop();
  });

  it('every waiting client ends, with its rows or a SQLSTATE, none hangs, and new clients are served after the restart', async () => {
    const pool = (tenant: string): { active: number; waiting: number } => rp.proxy.pools.snapshot().find((x) => x.tenant === tenant) ?? { active: 0, waiting: 0 };
    // Each tenant's only backend is held: session mode by a connected client, transaction mode by an open transaction.
    const holderS = await connect(rp, { tenant: 'rsess', user: 'app', password: 'app-pass' });
    const holderT = await connect(rp, { tenant: 'rtxn', user: 'app', password: 'app-pass' });
    for (const h of [holderS, holderT]) h.on('error', () => undefined);
    await holderT.query('BEGIN');
    // Session mode: clients wait at login; transaction mode: logged in, their query waits.
    const waiters = [
      ...Array.from({ length: 3 }, async () => {
        const c = await connect(rp, { tenant: 'rsess', user: 'app', password: 'app-pass' });
        c.on('error', () => undefined);
        try {
          return `ok:${(await c.query<{ v: number }>('select 1 as v')).rows[0]?.v}`;
        } finally {
          await c.end().catch(() => undefined);
        }
      }),
      ...(await Promise.all(Array.from({ length: 3 }, () => connect(rp, { tenant: 'rtxn', user: 'app', password: 'app-pass' })))).map(async (c) => {
        c.on('error', () => undefined);
        try {
          return `ok:${(await c.query<{ v: number }>('select 1 as v')).rows[0]?.v}`;
        } finally {
          await c.end().catch(() => undefined);
        }
      }),
    ].map((p) => p.catch((e: unknown) => `error:${(e as { code?: string }).code ?? (e as Error).message}`));
    await waitFor(() => pool('rsess').waiting === 3 && pool('rtxn').waiting === 3, 10_000, 'six clients waiting for a backend');
    await cluster.killHard();
    await cluster.restart();
    const outcomes = await Promise.race([Promise.all(waiters), new Promise<string[]>((r) => setTimeout(() => r(['hung']), 25_000))]);
    assert.equal(outcomes.length, 6, `no client hung: ${outcomes.join(' ')}`);
    for (const o of outcomes) assert.match(o, /^(ok:1|error:(08006|57P01|57P03|53300))$/, `a clean end: ${outcomes.join(' ')}`);
    await holderS.end().catch(() => undefined);
    await holderT.end().catch(() => undefined);
    await waitFor(() => pool('rsess').active === 0 && pool('rtxn').active === 0 && rp.proxy.sessions.size === 0, 10_000, 'everything released');
    for (const tenant of ['rsess', 'rtxn']) {
      const c = await connect(rp, { tenant, user: 'app', password: 'app-pass' });
      assert.equal((await c.query<{ v: number }>('select 9 as v')).rows[0]?.v, 9);
      await c.end();
    }
  });

  it('transaction mode, a clean restart (fast shutdown, then start) while clients wait: each hears 57P01, 57P03 or 08006, never XX000', async (t) => {
    // Unlike a SIGKILL, a fast shutdown keeps the postmaster answering for a moment with 57P03
    // ("shutting down", then "starting up"): the refusal reaches a waiter's backend login.
    const pool = (): { active: number; waiting: number } => rp.proxy.pools.snapshot().find((x) => x.tenant === 'rtxn') ?? { active: 0, waiting: 0 };
    const ends = async (): Promise<string> => (await (await fetch(`http://127.0.0.1:${rp.metricsPort}/metrics`)).text()).split('\n').filter((l) => l.startsWith('pgwarden_session_ends_total{tenant="rtxn"')).join(' ');
    const holder = await connect(rp, { tenant: 'rtxn', user: 'app', password: 'app-pass' });
    const holderEnd = holder.query('select pg_sleep(30)').then(() => 'ok', (e: unknown) => `error:${(e as { code?: string }).code ?? (e as Error).message}`);
    holder.on('error', () => undefined);
    await waitFor(async () => (await cluster.query("select 1 from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'")).rowCount === 1, 5000, 'holder running');
    const waiters = (await Promise.all(Array.from({ length: 4 }, () => connect(rp, { tenant: 'rtxn', user: 'app', password: 'app-pass' })))).map(async (c) => {
      c.on('error', () => undefined);
      try {
        return `ok:${(await c.query<{ v: number }>('select 1 as v')).rows[0]?.v}`;
      } catch (e) {
        return `error:${(e as { code?: string }).code ?? (e as Error).message}`;
      } finally {
        await c.end().catch(() => undefined);
      }
    });
    await waitFor(() => pool().waiting === 4, 10_000, 'four clients waiting for the backend');
    await cluster.restart();
    const outcomes = await Promise.race([Promise.all([holderEnd, ...waiters]), new Promise<string[]>((r) => setTimeout(() => r(['hung']), 25_000))]);
    assert.equal(outcomes.length, 5, `no client hung: ${outcomes.join(' ')}`);
    t.diagnostic(`holder and waiters: ${outcomes.join(' ')}`);
    assert.equal(outcomes[0], 'error:57P01', 'the holder heard the server shut down');
    for (const o of outcomes) assert.match(o, /^(ok:1|error:(08006|57P01|57P03|53300))$/, `a clean end: ${outcomes.join(' ')}`);
    await holder.end().catch(() => undefined);
    await waitFor(() => pool().active === 0 && rp.proxy.sessions.size === 0, 10_000, 'everything released');
    // The audit reason is the backend's, not 'internal' (which would say pgwarden failed).
    assert.doesNotMatch(await ends(), /reason="internal"/);
    const c = await connect(rp, { tenant: 'rtxn', user: 'app', password: 'app-pass' });
    assert.equal((await c.query<{ v: number }>('select 9 as v')).rows[0]?.v, 9);
    await c.end();
  });

  it('a backend process SIGKILLed mid-transaction (each mode; the server then restarts itself): 08006 "connection to the tenant database was lost", then a close; the row is gone; served again after recovery', async () => {
    await cluster.query('CREATE TABLE IF NOT EXISTS hard_rows (v text)');
    await cluster.query('GRANT ALL ON hard_rows TO app');
    const lostEnds = async (tenant: string): Promise<number> =>
      Number(new RegExp(`^pgwarden_session_ends_total\\{tenant="${tenant}",reason="backend_lost"\\} (\\d+)$`, 'm').exec(await (await fetch(`http://127.0.0.1:${rp.metricsPort}/metrics`)).text())?.[1] ?? 0);
    const ready = async (w: Wire): Promise<string> => {
      for (;;) {
        const f = await w.frame();
        assert.ok(f !== null && f.type !== 'E', 'a reply, not an error or a close');
        if (f.type === 'Z') return f.body.toString('latin1');
      }
    };
    // One mode at a time: a crash makes the postmaster end every other backend (57P02), which would race with a second kill.
    for (const tenant of ['rsess', 'rtxn']) {
      const lostBefore = await lostEnds(tenant);
      const w = await rawLogin(rp.port, rp.certs.caCertPem, { tenant, user: 'app', password: 'app-pass' });
      w.write(serialize.query('BEGIN'));
      assert.equal(await ready(w), 'T');
      w.write(serialize.query(`INSERT INTO hard_rows (v) VALUES ('${tenant}')`));
      assert.equal(await ready(w), 'T');
      // SIGKILL the backend itself (as the OOM killer would), found from a direct connection. Not
      // killHard(): with the postmaster killed first, a backend may still say FATAL 57P01 "unexpected
      // postmaster exit" before its own SIGKILL lands; a killed backend says nothing.
      const pids = (await cluster.query<{ pid: number }>("select pid from pg_stat_activity where state = 'idle in transaction' and query like 'INSERT INTO hard_rows%'")).rows.map((r) => r.pid);
      assert.equal(pids.length, 1);
      process.kill(pids[0]!, 'SIGKILL');
      // No backend is left to say why: pgwarden does, at a message boundary (R4).
      assert.deepEqual(await w.error(), { severity: 'FATAL', code: '08006', message: 'connection to the tenant database was lost' });
      assert.ok(await w.waitClosed());
      // The postmaster resets every backend and recovers by itself (restart_after_crash).
      await waitFor(() => cluster.query('select 1').then(() => true, () => false), 30_000, 'the server recovered');
      assert.equal((await cluster.query<{ n: number }>('select count(*)::int as n from hard_rows where v = $1', [tenant])).rows[0]?.n, 0, 'the uncommitted row is gone');
      await waitFor(() => rp.proxy.sessions.size === 0 && (rp.proxy.pools.snapshot().find((x) => x.tenant === tenant)?.active ?? 0) === 0, 5000, 'everything released');
      assert.equal((await lostEnds(tenant)) - lostBefore, 1, 'the session ended backend_lost');
      // The pool reconnects: its dead backends were dropped (the recovery ended the idle ones too).
      const c = await connect(rp, { tenant, user: 'app', password: 'app-pass' });
      await c.query('BEGIN');
      await c.query(`INSERT INTO hard_rows (v) VALUES ('${tenant}-after')`);
      await c.query('COMMIT');
      await c.end();
      assert.equal((await cluster.query<{ n: number }>('select count(*)::int as n from hard_rows where v = $1', [`${tenant}-after`])).rows[0]?.n, 1);
    }
  });
});

describe('faults: signals under load (child process)', () => {
  let cluster: Cluster;
  let dir: string;
  let verifier: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-faults-sig-'));
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    await cluster.query('CREATE TABLE drain_rows (worker int, n int, PRIMARY KEY (worker, n))');
    await cluster.query('GRANT ALL ON drain_rows TO app');
    verifier = await readVerifier(cluster, 'app');
  });
  after(async () => {
    await cluster?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('SIGHUP with a broken config, then with new certificates, under load: no client error, new sessions see the new certificate', async () => {
    const spec: ProxySpec = { tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier }] }] };
    const child = await spawnProxy(spec);
    const old = await testCerts();
    const fresh = await makeDevCerts({ dir: path.join(dir, 'newcerts'), hostnames: ['*.pg.test'] });
    const peer = async (ca: string): Promise<string> => {
      const w = await Wire.connect(child.port);
      await w.startTls(ca, 'acme.pg.test');
      assert.ok(w.socket instanceof tls.TLSSocket);
      const fp = w.socket.getPeerCertificate().fingerprint256;
      w.end();
      return fp;
    };
    try {
      const base = { port: child.port, certs: old };
      const clients = await Promise.all(Array.from({ length: 6 }, () => connect(base, { tenant: 'acme', user: 'app', password: 'app-pass' })));
      const load = steadyLoad(clients, () => 'SELECT count(*) FROM pg_class');
      // New connections meanwhile, trusting both CAs, so they work before and after the switch.
      let churned = 0;
      const churnErrors: string[] = [];
      let churning = true;
      const bothCas = (): pg.ClientConfig => {
        const cfg = clientConfig(base, { tenant: 'acme', user: 'app', password: 'app-pass' });
        return { ...cfg, ssl: { ca: [old.caCertPem, fresh.caCertPem], servername: 'acme.pg.test', rejectUnauthorized: true } };
      };
      const churn = (async () => {
        while (churning) {
          const c = new pg.Client(bothCas());
          try {
            await c.connect();
            await c.query('SELECT 1');
            churned++;
          } catch (e) {
            churnErrors.push((e as Error).message);
          } finally {
            await c.end().catch(() => undefined);
          }
        }
      })();
      const before = await peer(old.caCertPem);
      await writeFile(child.configPath, '[server]\nlisten = "nonsense"\n');
      child.child.kill('SIGHUP');
      await waitFor(() => child.logs().includes('reload rejected'), 5000, 'broken config rejected');
      assert.equal(await peer(old.caCertPem), before, 'the old certificate is still served after a rejected reload');
      await writeFile(child.configPath, configToml(spec, fresh, child.port));
      child.child.kill('SIGHUP');
      await waitFor(async () => (await peer(fresh.caCertPem).catch(() => before)) !== before, 10_000, 'the new certificate is served');
      await new Promise((r) => setTimeout(r, 500)); // a little more load after the switch
      churning = false;
      await churn;
      const result = await load.stop();
      assert.deepEqual(result.errors, [], 'the running sessions never noticed');
      assert.ok(result.ok > 50, `${result.ok} statements ran on the running sessions during the reloads`);
      assert.deepEqual(churnErrors, []);
      assert.ok(churned > 3, `${churned} new sessions during the reloads`);
      for (const c of clients) await c.end();
    } finally {
      await child.stop();
    }
  });

  it('a restart after SIGKILL opens the audit with audit.gap (restart) naming the lost boot; after SIGTERM it does not', async () => {
    const auditFile = path.join(dir, 'restart-audit.jsonl');
    const spec: ProxySpec = { auditFile, tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier }] }] };
    const certs = await testCerts();
    const boots = async (): Promise<(AuditRecord & { cause?: string; previous_boot?: string; from_seq?: number; instance: { boot_id: string }; seq: number })[]> =>
      (await auditRecords(auditFile)) as (AuditRecord & { cause?: string; previous_boot?: string; from_seq?: number; instance: { boot_id: string }; seq: number })[];
    const first = await spawnProxy(spec);
    const c = await connect({ port: first.port, certs }, { tenant: 'acme', user: 'app', password: 'app-pass' });
    c.on('error', () => undefined);
    await c.query('select 1');
    await waitFor(async () => (await boots()).some((r) => r.event === 'session.start'), 5000, 'session.start written');
    first.child.kill('SIGKILL');
    await first.exited;
    await first.stop();
    const killed = (await boots()).at(-1)!;
    const second = await spawnProxy(spec);
    try {
      await waitFor(async () => (await boots()).some((r) => r.instance.boot_id !== killed.instance.boot_id), 5000, 'the second boot wrote');
      const opening = (await boots()).find((r) => r.instance.boot_id !== killed.instance.boot_id)!;
      assert.deepEqual([opening.event, opening.cause, opening.previous_boot, opening.from_seq, opening.seq], ['audit.gap', 'restart', killed.instance.boot_id, killed.seq + 1, 0]);
      second.child.kill('SIGTERM');
      assert.equal(await second.exited, 0);
    } finally {
      await second.stop();
    }
    const bootIds = new Set((await boots()).map((r) => r.instance.boot_id));
    const third = await spawnProxy(spec);
    try {
      await waitFor(async () => (await boots()).some((r) => !bootIds.has(r.instance.boot_id)), 5000, 'the third boot wrote');
      const opening = (await boots()).find((r) => !bootIds.has(r.instance.boot_id))!;
      assert.deepEqual([opening.event, opening['state']], ['proxy.lifecycle', 'started'], 'a clean stop before it: no gap');
    } finally {
      await third.stop();
    }
    const v = await verifyAuditFile(auditFile);
    assert.equal(v.ok, true, JSON.stringify(v.firstBad));
  });

  it('SIGTERM under load: 57P03 for new sessions, 57P01 at the deadline, exit 0, every committed row in the audit, every session ended', async () => {
    const auditFile = path.join(dir, 'drain-audit.jsonl');
    const child = await spawnProxy({
      auditFile,
      server: { shutdown_timeout: '1500ms' },
      tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier }], extra: { audit_statements: 'all' } }],
    });
    try {
      const base = { port: child.port, certs: await testCerts() };
      const clients = await Promise.all(Array.from({ length: 6 }, () => connect(base, { tenant: 'acme', user: 'app', password: 'app-pass' })));
      for (const c of clients) c.on('error', () => undefined);
      const load = steadyLoad(clients, (worker, n) => `INSERT INTO drain_rows (worker, n) VALUES (${worker}, ${n})`);
      await waitFor(async () => ((await cluster.query<{ n: number }>('select count(*)::int as n from drain_rows')).rows[0]?.n ?? 0) > 100, 10_000, 'rows committed under load');
      child.child.kill('SIGTERM');
      await waitFor(() => child.logs().includes('draining'), 5000, 'draining');
      const refused = await connectError(clientConfig(base, { tenant: 'acme', user: 'app', password: 'app-pass' }));
      assert.equal(refused.code, '57P03');
      // Running sessions go on working through the drain; the deadline ends them, then the process exits.
      assert.equal(await child.exited, 0);
      const result = await load.stop();
      // Every client ran until the drain deadline ended its session with 57P01 (at a message boundary).
      assert.equal(result.errors.length, 6, JSON.stringify(result.errors));
      for (const e of result.errors) assert.ok(e.code === '57P01' || /terminated|Connection terminated/i.test(e.message), JSON.stringify(e));
      const v = await verifyAuditFile(auditFile);
      assert.equal(v.ok, true, JSON.stringify(v.firstBad));
      const records = await auditRecords(auditFile);
      const starts = new Set(records.filter((r) => r.event === 'session.start').map((r) => r.session!.id));
      const ends = new Set(records.filter((r) => r.event === 'session.end').map((r) => r.session!.id));
      assert.equal(starts.size, 6);
      assert.deepEqual([...starts].filter((id) => !ends.has(id)), [], 'every session has its end');
      const audited = new Set(records.filter((r) => r.event === 'session.query').map((r) => r.query));
      const rows = (await cluster.query<{ worker: number; n: number }>('select worker, n from drain_rows')).rows;
      assert.ok(rows.length > 100);
      const missing = rows.filter((r) => !audited.has(`INSERT INTO drain_rows (worker, n) VALUES (${r.worker}, ${r.n})`));
      assert.deepEqual(missing, [], 'every committed row has its audited statement');
    } finally {
      await child.stop();
    }
  });
});
