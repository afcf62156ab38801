/**
 * `[server] workers = 2`: two worker processes behind one listen socket, with the primary holding
 * the limits (no Redis), the audit log and the admin listener. Caps stay exact across workers, a
 * cancel that lands on the other worker still reaches the query, a worker killed with SIGKILL gives
 * its slots back at once and is replaced, and the audit chain stays one verifiable chain.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { X509Certificate } from 'node:crypto';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { spawnProxy, connect, testCerts, type ChildProxy } from '../support/proxy.js';
import { verifyAuditFile } from '../../src/audit/verify.js';
import { waitFor } from '../support/wait.js';
import { listeningLine, listenersOn, workerPids } from '../support/proxy.js';
import { resolveWorkerAccept } from '../../src/config/worker-accept.js';
import { sendCancel } from '../support/wire.js';
import { readAuditFile } from '../support/audit-file.js';

function get(port: number, urlPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: urlPath }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}



describe('workers', () => {
  let cluster: Cluster;
  let child: ChildProxy;
  let dir: string;
  let auditFile: string;
  let base: { port: number; certs: Awaited<ReturnType<typeof testCerts>> };

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-workers-'));
    auditFile = path.join(dir, 'audit.jsonl');
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    const verifier = await readVerifier(cluster, 'app');
    child = await spawnProxy({
      server: { workers: 2 },
      auditFile,
      tenants: [
        { id: 'acme', cluster, users: [{ name: 'app', verifier }], maxClientConnections: 3 },
        { id: 'txn', cluster, users: [{ name: 'app', verifier }], pool: { pool_mode: 'transaction', max_backend_connections: 2 } },
      ],
    });
    base = { port: child.port, certs: await testCerts() };
  });
  after(async () => {
    await child?.stop();
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  const login = (tenant = 'acme'): Promise<pg.Client> => connect(base, { tenant, user: 'app', password: 'app-pass' });

  it('runs two workers that both serve sessions', async () => {
    const workers = workerPids(child.child.pid!);
    assert.equal(workers.length, 2);
    // worker_accept = "auto": on Node 20 the primary holds the one listener and hands connections
    // over; where Node has reusePort, each worker holds its own (workers-reuseport.test.ts).
    const accept = resolveWorkerAccept('auto');
    assert.equal(listeningLine(child)['worker_accept'], accept);
    const owners = listenersOn(child.port, [child.child.pid!, ...workers]);
    assert.deepEqual([...owners.values()], accept === 'primary' ? [1, 0, 0] : [0, 1, 1], JSON.stringify([...owners]));
    const clients = await Promise.all(Array.from({ length: 6 }, () => login('txn')));
    await Promise.all(clients.map((c) => c.query('select pg_sleep(0.2)')));
    // Pools live in the workers, each with its share: the tenant's 2 backends in total, not 2 each.
    const onServer = (await cluster.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where usename = 'app'")).rows[0]?.n ?? -1;
    assert.ok(onServer >= 1 && onServer <= 2, `${onServer} backends for max_backend_connections = 2`);
    await Promise.all(clients.map((c) => c.end()));
    await waitFor(async () => new Set((await readAuditFile(auditFile)).filter((r) => r['event'] === 'session.start').map((r) => r['worker'])).size === 2);
  });

  it('keeps a tenant cap exact across workers', async () => {
    const results = await Promise.allSettled(Array.from({ length: 7 }, () => login()));
    const ok = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const refused = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as { code?: string }] : []));
    assert.equal(ok.length, 3, 'exactly the cap');
    assert.ok(refused.every((e) => e.code === '53300'));
    await Promise.all(ok.map((c) => c.end()));
    await waitFor(async () => {
      const again = await Promise.allSettled(Array.from({ length: 3 }, () => login()));
      const got = again.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      await Promise.all(got.map((c) => c.end()));
      return got.length === 3;
    });
  });

  it('a cancel that lands on the other worker reaches the query', async () => {
    // Cancel connections alternate between workers (round robin): two in a row cover both.
    for (let i = 0; i < 2; i++) {
      const c = await login('txn');
      const q = c.query('select pg_sleep(20)');
      await waitFor(async () => (await cluster.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where query = 'select pg_sleep(20)' and state = 'active'")).rows[0]?.n === 1);
      const k = c as unknown as { processID: number; secretKey: number };
      await sendCancel(base.port, k.processID, k.secretKey);
      await assert.rejects(q, { code: '57014' });
      await c.end();
    }
  });

  it('a worker killed with SIGKILL gives back its slots at once and is replaced', async () => {
    const held = await Promise.all(Array.from({ length: 3 }, () => login()));
    for (const c of held) c.on('error', () => undefined);
    const before = workerPids(child.child.pid!);
    assert.equal(before.length, 2);
    process.kill(before[0]!, 'SIGKILL');
    await waitFor(() => workerPids(child.child.pid!).filter((p) => !before.includes(p)).length === 1, 10_000);
    // The replacement serves once it listens (it answers /pools from then on).
    await waitFor(async () => (JSON.parse((await get(child.metricsPort!, '/pools')).body) as unknown[]).length === 2, 10_000);
    const exited = (await readAuditFile(auditFile)).find((r) => r['event'] === 'proxy.lifecycle' && r['state'] === 'worker_exited');
    assert.ok(exited !== undefined, 'audited');
    assert.ok((exited['slots_released'] as number) >= 1, 'the dead worker held slots and they were released');
    // Sessions on the survivor keep theirs; the cap admits exactly what the dead worker held.
    const alive = (await Promise.all(held.map(async (c) => ((await c.query('select 1').then(() => true, () => false)) ? c : null)))).filter((c) => c !== null);
    const results = await Promise.allSettled(Array.from({ length: 3 }, () => login()));
    const fresh = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    assert.equal(fresh.length + alive.length, 3);
    await Promise.all([...held, ...fresh].map((c) => c.end().catch(() => undefined)));
  });

  it('aggregates metrics over workers and keeps one verifiable audit chain', async () => {
    const m = await get(child.metricsPort!, '/metrics');
    assert.equal(m.status, 200);
    assert.match(m.body, /^pgwarden_sessions_total\{tenant="acme",outcome="started"\} \d+$/m);
    // The audit writer runs in the primary; its metrics are part of the sum.
    assert.match(m.body, /^pgwarden_audit_healthy 1$/m);
    assert.match(m.body, /^pgwarden_audit_writes_total [1-9]\d*$/m);
    // States, ages and deadlines are folded as max or min, not summed over the processes: the
    // certificate's expiry is the file's, and each process's 1 for its relay path stays 1.
    const certs = await testCerts();
    const notAfter = Math.floor(Date.parse(new X509Certificate(await readFile(certs.serverCertPath)).validTo) / 1000);
    assert.match(m.body, new RegExp(`^pgwarden_tls_certificate_expiry_timestamp_seconds\\{certificate="server"\\} ${notAfter}$`, 'm'));
    assert.match(m.body, /^pgwarden_relay_io\{mode="(handle|stream)"\} 1$/m);
    assert.match(m.body, /^pgwarden_limits_degraded 0$/m);
    const pools = JSON.parse((await get(child.metricsPort!, '/pools')).body) as { worker: number; pools: unknown[] }[];
    assert.equal(pools.length, 2);
    child.child.kill('SIGTERM');
    assert.equal(await child.exited, 0);
    const v = await verifyAuditFile(auditFile);
    assert.equal(v.ok, true, JSON.stringify(v));
    const recs = await readAuditFile(auditFile);
    assert.equal(recs[recs.length - 1]?.['state'], 'stopped');
  });
});
