/**
 * `[server] worker_accept = "reuseport"` on Node 22 (the proxy runs on the Node 22 binary that
 * PGWARDEN_TEST_NODE22 names; .ci/run fetches one and sets it, the test runner stays on this Node).
 * Each worker listens on the port itself and the kernel picks the worker: the primary holds no
 * listener. Sessions land on both workers and the admin API lists and ends them there; a cancel
 * reaches its query whichever worker it lands on; a worker killed is replaced on the same port;
 * a drain reaches both workers' sessions.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { spawnProxy, connect, connectError, clientConfig, testCerts, listeningLine, listenersOn, workerPids, type ChildProxy } from '../support/proxy.js';
import { waitFor } from '../support/wait.js';
import { sendCancel } from '../support/wire.js';

const NODE22 = process.env['PGWARDEN_TEST_NODE22'];
const TOKEN = 'reuseport-test-token-7c1f';
const TOKEN_SHA256 = createHash('sha256').update(TOKEN).digest('hex');

function call(port: number, method: string, urlPath: string): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: urlPath, method, headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text === '' ? '{}' : text) as Record<string, unknown> }));
    });
    req.on('error', reject);
    req.end();
  });
}

function metric(port: number, name: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve(Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(body)?.[1] ?? 'NaN')));
      })
      .on('error', reject);
  });
}

interface View {
  id: string;
  worker: number;
  client: { port: number };
}

/** The client's end of its connection: the port the proxy sees and lists. */
function localPort(c: pg.Client): number {
  return (c as unknown as { connection: { stream: { localPort: number } } }).connection.stream.localPort;
}

/** The first 'error' event of a connected client. */
function nextError(c: pg.Client): Promise<{ code?: string }> {
  return new Promise((resolve) => c.on('error', (err: Error & { code?: string }) => resolve(err)));
}

describe('workers with reusePort: setup', () => {
  it('has a Node 22 binary to run the proxy on in CI', () => {
    // Locally the suite below is skipped without one; in CI it must run (.ci/run fetches the binary).
    if (process.env['CI'] === 'true') assert.ok(NODE22 !== undefined && NODE22 !== '', 'CI=true but PGWARDEN_TEST_NODE22 is not set');
  });
});

describe('workers with reusePort (Node 22)', { skip: NODE22 === undefined || NODE22 === '' ? 'PGWARDEN_TEST_NODE22 is not set (.ci/run sets it)' : false }, () => {
  let cluster: Cluster;
  let child: ChildProxy;
  let dir: string;
  let base: { port: number; certs: Awaited<ReturnType<typeof testCerts>> };

  before(async () => {
    const version = execFileSync(NODE22!, ['--version'], { encoding: 'utf8' }).trim();
    assert.match(version, /^v(22\.(1[2-9]|[2-9]\d)|2[3-9]\.)/, `PGWARDEN_TEST_NODE22 must be Node ≥ 22.12, is ${version}`);
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-reuseport-'));
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    const verifier = await readVerifier(cluster, 'app');
    child = await spawnProxy(
      {
        server: { workers: 2, worker_accept: 'reuseport' },
        auditFile: path.join(dir, 'audit.jsonl'),
        admin: { token_sha256: TOKEN_SHA256 },
        tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier }] }],
      },
      {},
      NODE22,
    );
    base = { port: child.port, certs: await testCerts() };
  });
  after(async () => {
    await child?.stop();
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  const login = (): Promise<pg.Client> => connect(base, { tenant: 'acme', user: 'app', password: 'app-pass' });
  const list = async (): Promise<View[]> => (await call(child.adminPort!, 'GET', '/sessions')).body['sessions'] as View[];
  /** 20 concurrent logins: all on one of two workers has odds 2^-19, if the kernel spreads them at all. */
  const loginMany = (): Promise<pg.Client[]> => Promise.all(Array.from({ length: 20 }, () => login()));

  it('each worker listens on the port itself; the primary holds no listener', () => {
    assert.equal(listeningLine(child)['worker_accept'], 'reuseport');
    const workers = workerPids(child.child.pid!);
    assert.equal(workers.length, 2);
    const owners = listenersOn(child.port, [child.child.pid!, ...workers]);
    assert.deepEqual([...owners.values()], [0, 1, 1], JSON.stringify([...owners]));
  });

  it('spreads sessions over both workers; the admin API lists and ends them on either', async () => {
    const clients = await loginMany();
    let views: View[] = [];
    await waitFor(async () => (views = await list()).length === clients.length, 5_000, 'every session listed');
    assert.deepEqual([...new Set(views.map((v) => v.worker))].sort(), [1, 2], JSON.stringify(views.map((v) => v.worker)));
    for (const w of [1, 2]) {
      const v = views.find((x) => x.worker === w)!;
      const c = clients.find((x) => localPort(x) === v.client.port)!;
      const err = nextError(c);
      assert.equal((await call(child.adminPort!, 'DELETE', `/sessions/${v.id}`)).status, 200);
      assert.equal((await err).code, '57P01');
    }
    await Promise.all(clients.map((c) => c.end().catch(() => undefined)));
  });

  it('a cancel reaches its query whichever worker the kernel gives it to', async () => {
    // A cancel connection lands on the session's worker (handled there) or on the other (relayed
    // by the primary, counted): repeat until both have happened.
    let local = 0;
    let relayed = 0;
    for (let i = 0; i < 24 && (local === 0 || relayed === 0); i++) {
      const c = await login();
      const q = c.query('select pg_sleep(20)');
      const sleeping = "select count(*)::int as n from pg_stat_activity where query = 'select pg_sleep(20)' and state = 'active'";
      await waitFor(async () => (await cluster.query<{ n: number }>(sleeping)).rows[0]?.n === 1, 10_000, 'the query running');
      const before = await metric(child.metricsPort!, 'pgwarden_worker_cancels_relayed_total');
      const k = c as unknown as { processID: number; secretKey: number };
      await sendCancel(base.port, k.processID, k.secretKey);
      await assert.rejects(q, { code: '57014' });
      if ((await metric(child.metricsPort!, 'pgwarden_worker_cancels_relayed_total')) > before) relayed++;
      else local++;
      await c.end();
    }
    assert.ok(local > 0 && relayed > 0, `cancels handled locally ${local}, relayed ${relayed}`);
  });

  it('a worker killed is replaced, listening on the same port', async () => {
    const before = workerPids(child.child.pid!);
    process.kill(before[0]!, 'SIGKILL');
    let fresh: number | undefined;
    await waitFor(() => (fresh = workerPids(child.child.pid!).find((p) => !before.includes(p))) !== undefined, 10_000, 'a replacement');
    await waitFor(() => listenersOn(child.port, [fresh!]).get(fresh!) === 1, 10_000, 'the replacement listening');
    assert.equal(listenersOn(child.port, [child.child.pid!]).get(child.child.pid!), 0);
    const clients = await loginMany();
    await waitFor(async () => (await list()).length === clients.length, 5_000, 'every session listed');
    assert.equal(new Set((await list()).map((v) => v.worker)).size, 2, 'both workers serve, the replacement too');
    await Promise.all(clients.map((c) => c.end()));
  });

  it('a drain reaches both workers: new logins get 57P03, running sessions finish, exit 0', async () => {
    const clients = await loginMany();
    let views: View[] = [];
    await waitFor(async () => (views = await list()).length === clients.length, 5_000, 'every session listed');
    const workers = [...new Set(views.map((v) => v.worker))];
    assert.equal(workers.length, 2);
    child.child.kill('SIGTERM');
    // Whichever worker a new connection lands on, it drains.
    const refusal = (): Promise<string | undefined> =>
      connectError(clientConfig(base, { tenant: 'acme', user: 'app', password: 'app-pass' })).then((e) => e.code, () => 'logged in');
    await waitFor(async () => (await refusal()) === '57P03', 5_000, 'draining');
    const refused = await Promise.all(Array.from({ length: 8 }, refusal));
    assert.deepEqual(new Set(refused), new Set(['57P03']));
    for (const c of clients) assert.equal((await c.query<{ one: number }>('select 1 as one')).rows[0]?.one, 1);
    await Promise.all(clients.map((c) => c.end()));
    assert.equal(await child.exited, 0);
  });
});
