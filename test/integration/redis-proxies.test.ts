/**
 * Two pgwarden processes sharing limits through a real redis-server: one tenant cap held exactly
 * across both, a cancel that lands on the other instance, an instance killed with SIGKILL whose
 * slots come back within the lease TTL, and Redis stopped mid-test: both keep serving on their
 * local share (degraded, audited, in metrics), then converge when Redis is back.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { spawnProxy, connect, testCerts, type ChildProxy, type ProxySpec } from '../support/proxy.js';
import { startRedis, type RedisServer } from '../support/redis.js';
import { sendCancel } from '../support/wire.js';
import { waitFor } from '../support/wait.js';

const ADMIN_TOKEN = 'redis-proxies-admin-token-7f3a';

function get(port: number, urlPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: urlPath }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}


describe('several instances sharing limits through Redis', () => {
  let cluster: Cluster;
  let redis: RedisServer;
  let a: ChildProxy;
  let b: ChildProxy;
  let dir: string;
  let spec: ProxySpec;
  const certs = testCerts();

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-redis-proxies-'));
    redis = await startRedis();
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    const verifier = await readVerifier(cluster, 'app');
    spec = {
      redis: { url: redis.url, lease_ttl: '2s', command_timeout: '200ms' },
      admin: { token_sha256: createHash('sha256').update(ADMIN_TOKEN).digest('hex') },
      tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier }], maxClientConnections: 4 }],
    };
    a = await spawnProxy({ ...spec, auditFile: path.join(dir, 'a.jsonl') });
    b = await spawnProxy({ ...spec, auditFile: path.join(dir, 'b.jsonl') });
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    await redis?.stop();
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  /** The tenant's row of GET /limits on one instance: its clients, the cluster's, the cap. */
  const clients = async (p: ChildProxy): Promise<{ clients: number; cluster_clients: number | null; max_client_connections: number }> => {
    const res = await fetch(`http://127.0.0.1:${p.adminPort}/limits?tenant=acme`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(res.status, 200);
    const [row] = ((await res.json()) as { limits: { clients: number; cluster_clients: number | null; max_client_connections: number }[] }).limits;
    return { clients: row!.clients, cluster_clients: row!.cluster_clients, max_client_connections: row!.max_client_connections };
  };
  const login = async (p: ChildProxy): Promise<pg.Client> => {
    const c = await connect({ port: p.port, certs: await certs }, { tenant: 'acme', user: 'app', password: 'app-pass' });
    c.on('error', () => undefined);
    return c;
  };
  const tryLogins = async (p: ChildProxy, n: number): Promise<{ ok: pg.Client[]; codes: (string | undefined)[] }> => {
    const r = await Promise.allSettled(Array.from({ length: n }, () => login(p)));
    return {
      ok: r.flatMap((x) => (x.status === 'fulfilled' ? [x.value] : [])),
      codes: r.flatMap((x) => (x.status === 'rejected' ? [(x.reason as { code?: string }).code] : [])),
    };
  };

  it('holds one tenant cap exactly across two instances', async () => {
    const onA = await tryLogins(a, 3);
    assert.equal(onA.ok.length, 3);
    const onB = await tryLogins(b, 3);
    assert.equal(onB.ok.length, 1, 'cap 4: one slot left for B');
    assert.deepEqual(onB.codes, ['53300', '53300']);
    // GET /limits: each instance's own clients, and the tenant's across both, read from Redis.
    assert.deepEqual(await clients(a), { clients: 3, cluster_clients: 4, max_client_connections: 4 });
    assert.deepEqual(await clients(b), { clients: 1, cluster_clients: 4, max_client_connections: 4 });
    await onA.ok[0]!.end();
    await waitFor(async () => {
      const again = await tryLogins(b, 1);
      await Promise.all(again.ok.map((c) => c.end()));
      return again.ok.length === 1;
    });
    await Promise.all([...onA.ok.slice(1), ...onB.ok].map((c) => c.end()));
  });

  it('a CancelRequest sent to the other instance reaches the query', async () => {
    const c = await login(a);
    // Expect the rejection before sending the cancel: it may arrive before sendCancel resolves.
    const cancelled = assert.rejects(c.query('select pg_sleep(20)'), { code: '57014' });
    await waitFor(async () => (await cluster.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where query = 'select pg_sleep(20)' and state = 'active'")).rows[0]?.n === 1);
    const k = c as unknown as { processID: number; secretKey: number };
    await sendCancel(b.port, k.processID, k.secretKey);
    await cancelled;
    await c.end();
  });

  it('an instance killed with SIGKILL gives its slots back within the lease TTL', async () => {
    // The sessions of the tests before were released fire and forget on A's own Redis connection:
    // wait until all 4 slots are free to B (a release is seen cluster-wide one round trip later).
    let held = await tryLogins(b, 4);
    await waitFor(async () => {
      if (held.ok.length === 4) return true;
      await Promise.all(held.ok.map((c) => c.end()));
      held = await tryLogins(b, 4);
      return false;
    }, 5_000, 'all 4 slots free to B');
    assert.equal((await tryLogins(a, 1)).codes[0], '53300');
    b.child.kill('SIGKILL');
    await b.exited;
    const t0 = Date.now();
    await waitFor(async () => {
      const got = await tryLogins(a, 4);
      await Promise.all(got.ok.map((c) => c.end()));
      return got.ok.length === 4;
    }, 10_000);
    assert.ok(Date.now() - t0 < 8_000, `slots back after ${Date.now() - t0} ms (lease TTL 2 s)`);
    b = await spawnProxy({ ...spec, auditFile: path.join(dir, 'b2.jsonl') });
  });

  it('keeps serving on a local share while Redis is down, then converges when it is back', async () => {
    const held = await tryLogins(a, 1);
    await redis.stop();
    // Both instances notice on their next call or heartbeat.
    const t0 = Date.now();
    const during = await tryLogins(a, 1);
    assert.ok(Date.now() - t0 < 3_000, 'no hang while Redis is down');
    await waitFor(async () => /^pgwarden_limits_degraded 1$/m.test(await get(a.metricsPort!, '/metrics')), 10_000);
    // Two live instances, cap 4: each may hold 2 on its own. A holds 2 now (1 before + 1 during).
    assert.equal(during.ok.length, 1);
    const over = await tryLogins(a, 1);
    assert.deepEqual(over.codes, ['53300'], 'the local share is enforced');
    assert.deepEqual(await clients(a), { clients: 2, cluster_clients: null, max_client_connections: 4 }, 'degraded: the cluster-wide count is not known');
    const onB = await tryLogins(b, 2);
    assert.equal(onB.ok.length, 2);
    await redis.start();
    await waitFor(async () => /^pgwarden_limits_degraded 0$/m.test(await get(a.metricsPort!, '/metrics')), 15_000);
    await waitFor(async () => /^pgwarden_limits_degraded 0$/m.test(await get(b.metricsPort!, '/metrics')), 15_000);
    // Converged: the four held slots count cluster-wide again, so a fifth is refused on either.
    await waitFor(async () => (await tryLogins(b, 1)).codes[0] === '53300', 10_000);
    const audit = await readFile(path.join(dir, 'a.jsonl'), 'utf8');
    assert.match(audit, /"event":"limits\.degraded"[^\n]*"state":"enter"/);
    assert.match(audit, /"event":"limits\.degraded"[^\n]*"state":"exit"/);
    await Promise.all([...held.ok, ...during.ok, ...onB.ok].map((c) => c.end()));
  });

  it("with workers, the primary's GET /limits adds its workers' clients and reads the cluster's from Redis", async () => {
    const w = await spawnProxy({ ...spec, server: { workers: 2 }, auditFile: path.join(dir, 'w.jsonl') });
    try {
      // The sessions of the test before are released fire and forget: wait for them to be gone.
      await waitFor(async () => (await clients(a)).cluster_clients === 0, 10_000, 'no slots held');
      const onW = await tryLogins(w, 2);
      const onA = await tryLogins(a, 1);
      assert.equal(onW.ok.length + onA.ok.length, 3);
      assert.deepEqual(await clients(w), { clients: 2, cluster_clients: 3, max_client_connections: 4 });
      await Promise.all([...onW.ok, ...onA.ok].map((c) => c.end()));
    } finally {
      await w.stop();
    }
  });
});
