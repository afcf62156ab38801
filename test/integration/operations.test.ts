/**
 * What operators and scripts rely on: metrics and health endpoints, reload under load and on
 * SIGHUP (bad config kept out, new certificates in), drain on SIGTERM, and the CLI commands.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { connectError, startProxy, connect, clientConfig, configToml, spawnProxy, testCerts, type RunningProxy, type ProxySpec } from '../support/proxy.js';
import { makeDevCerts } from '../../src/tools/dev-certs.js';
import { verifyAuditFile } from '../../src/audit/verify.js';
import { LimitKeys } from '../../src/limits/store.js';
import { waitFor } from '../support/wait.js';

const CLI = path.resolve('dist/src/cli.js');

function run(cmd: string, args: string[], input?: string, env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { env: { ...process.env, ...env }, timeout: 120_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
    child.stdin?.end(input ?? '');
  });
}

async function get(port: number, p: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${p}`);
  return { status: res.status, body: await res.text() };
}


describe('operations', () => {
  let cluster: Cluster;
  let verifier: string;
  let otherVerifier: string;
  let dir: string;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-ops-'));
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }, { name: 'other', password: 'other-pass' }] });
    verifier = await readVerifier(cluster, 'app');
    otherVerifier = await readVerifier(cluster, 'other');
  });
  after(async () => {
    await cluster?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  describe('in process', () => {
    let rp: RunningProxy;
    let spec: ProxySpec;
    before(async () => {
      spec = { tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier }] }] };
      rp = await startProxy(spec);
    });
    after(async () => rp?.close());

    it('serves /metrics, /healthz and /readyz', async () => {
      const c = await connect(rp, { tenant: 'acme', user: 'app', password: 'app-pass' });
      await c.query('select repeat($1, 1000)', ['x']);
      await connectError(clientConfig(rp, { tenant: 'acme', user: 'app', password: 'wrong' }));
      const m = await get(rp.metricsPort, '/metrics');
      assert.equal(m.status, 200);
      assert.match(m.body, /^pgwarden_client_connections\{tenant="acme"\} 1$/m);
      assert.match(m.body, /^pgwarden_sessions_total\{tenant="acme",outcome="started"\} \d+$/m);
      assert.match(m.body, /^pgwarden_auth_failures_total\{tenant="acme",reason="bad_password"\} 1$/m);
      assert.match(m.body, /^pgwarden_relay_bytes_total\{tenant="acme",direction="upstream_to_client"\} [1-9]\d*$/m);
      assert.match(m.body, /^pgwarden_relay_messages_total\{tenant="acme",direction="client_to_upstream"\} [1-9]\d*$/m);
      assert.match(m.body, /^pgwarden_tls_handshakes_total\{outcome="ok",version="TLSv1\.3"\} \d+$/m);
      assert.match(m.body, /^pgwarden_backend_connect_duration_seconds_count\{tenant="acme",outcome="ok"\} \d+$/m);
      assert.match(m.body, /^pgwarden_process_resident_memory_bytes \d+/m);
      assert.ok(!m.body.includes('app-pass') && !m.body.includes('SCRAM-SHA-256$'));
      assert.equal((await get(rp.metricsPort, '/healthz')).status, 200);
      assert.equal((await get(rp.metricsPort, '/readyz')).status, 200);
      assert.equal((await get(rp.metricsPort, '/nope')).status, 404);
      await c.end();
    });

    it('leaves nothing behind after many short sessions, failed logins and aborted handshakes', async () => {
      for (let round = 0; round < 10; round++) {
        await Promise.all([
          ...Array.from({ length: 20 }, async () => {
            const c = await connect(rp, { tenant: 'acme', user: 'app', password: 'app-pass' });
            await c.query('select 1');
            await c.end();
          }),
          ...Array.from({ length: 5 }, () => connectError(clientConfig(rp, { tenant: 'acme', user: 'app', password: 'nope' }))),
          ...Array.from({ length: 5 }, async () => {
            const s = net.connect({ host: '127.0.0.1', port: rp.port });
            await new Promise((r) => s.once('connect', r));
            s.destroy(); // gone before the startup packet
          }),
        ]);
      }
      await waitFor(() => rp.proxy.sessions.size === 0);
      assert.equal(rp.proxy.cancels.size, 0);
      assert.equal(rp.proxy.preauth.active, 0);
      assert.equal(rp.proxy.limits.active(LimitKeys.tenantConnections('acme')), 0);
      const m = await get(rp.metricsPort, '/metrics');
      assert.match(m.body, /^pgwarden_client_connections\{tenant="acme"\} 0$/m);
      assert.match(m.body, /^pgwarden_preauth_connections 0$/m);
      // Backends went back to the pool: none is lent out, and the server sees no more than the pool's cap.
      await waitFor(() => rp.proxy.pools.snapshot().every((p) => p.active === 0 && p.waiting === 0));
      const pool = rp.proxy.pools.snapshot().find((p) => p.tenant === 'acme');
      assert.ok(pool !== undefined && pool.total <= pool.max && pool.idle === pool.total, JSON.stringify(pool));
      const onServer = async (): Promise<number | undefined> =>
        (await cluster.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where usename = 'app'")).rows[0]?.n;
      await waitFor(async () => (await onServer()) === pool.total, 3_000, 'server count matches the pool').catch(() => undefined);
      assert.equal(await onServer(), pool.total);
    });

    it('reloads under load without disturbing running sessions', async () => {
      const clients = await Promise.all(Array.from({ length: 8 }, () => connect(rp, { tenant: 'acme', user: 'app', password: 'app-pass' })));
      let queries = 0;
      let stop = false;
      const load = clients.map(async (c) => {
        while (!stop) {
          const r = await c.query<{ s: string }>('select sum(g) as s from generate_series(1, 100) g');
          assert.equal(r.rows[0]?.s, '5050');
          queries++;
        }
      });
      // Add a tenant user, then take the first user away; running sessions keep their config.
      const withOther: ProxySpec = { tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier }, { name: 'other', verifier: otherVerifier }] }] };
      for (let i = 0; i < 5; i++) {
        rp.reload(i % 2 === 0 ? withOther : spec);
        await new Promise((r) => setTimeout(r, 100));
      }
      rp.reload(withOther);
      const other = await connect(rp, { tenant: 'acme', user: 'other', password: 'other-pass' });
      assert.equal((await other.query<{ u: string }>('select current_user as u')).rows[0]?.u, 'other');
      await other.end();
      rp.reload({ tenants: [{ id: 'acme', cluster, users: [{ name: 'other', verifier: otherVerifier }] }] });
      const gone = await connectError(clientConfig(rp, { tenant: 'acme', user: 'app', password: 'app-pass' }));
      assert.equal(gone.code, '28P01');
      stop = true;
      await Promise.all(load);
      assert.ok(queries > 50, `queries ran during reloads: ${queries}`);
      await Promise.all(clients.map((c) => c.end()));
      rp.reload(spec);
    });
  });

  describe('as a child process', () => {
    it('SIGHUP keeps the old config when the new one is broken, and loads new certificates', async () => {
      const spec: ProxySpec = { tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier }] }] };
      const child = await spawnProxy(spec);
      try {
        const base = { port: child.port, certs: await testCerts() };
        await writeFile(child.configPath, '[server]\nlisten = "nonsense"\n');
        child.child.kill('SIGHUP');
        await waitFor(() => child.logs().includes('reload rejected'));
        assert.match(child.logs(), /server\.listen: must be/);
        const c = await connect(base, { tenant: 'acme', user: 'app', password: 'app-pass' });
        await c.end();

        // New certificates from a new CA: after SIGHUP, new sessions verify against the new CA only.
        const fresh = await makeDevCerts({ dir: path.join(child.dir, 'newcerts'), hostnames: ['*.pg.test'] });
        await writeFile(child.configPath, configToml(spec, fresh, child.port));
        child.child.kill('SIGHUP');
        await waitFor(async () => {
          try {
            const cc = await connect({ port: child.port, certs: fresh }, { tenant: 'acme', user: 'app', password: 'app-pass' });
            await cc.end();
            return true;
          } catch {
            return false;
          }
        });
        const old = await connectError(clientConfig(base, { tenant: 'acme', user: 'app', password: 'app-pass' }));
        assert.match(old.message, /self.signed|unable to verify|certificate/i);
      } finally {
        await child.stop();
      }
    });

    it('drains on SIGTERM: 57P03 for new sessions, 57P01 at the deadline, clean exit, audit intact', async () => {
      const auditFile = path.join(dir, 'drain-audit.jsonl');
      const spec: ProxySpec = { auditFile, server: { shutdown_timeout: '1500ms' }, tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier }] }] };
      const child = await spawnProxy(spec);
      const base = { port: child.port, certs: await testCerts() };
      try {
        const idle = await connect(base, { tenant: 'acme', user: 'app', password: 'app-pass' });
        const ended = new Promise<{ code?: string }>((resolve) => idle.on('error', (e) => resolve(e as { code?: string })));
        child.child.kill('SIGTERM');
        await waitFor(() => child.logs().includes('draining'));
        const refused = await connectError(clientConfig(base, { tenant: 'acme', user: 'app', password: 'app-pass' }));
        assert.equal(refused.code, '57P03');
        assert.equal(refused.message, 'the database system is shutting down');
        assert.equal((await get(child.metricsPort!, '/readyz')).status, 503);
        const err = await ended;
        assert.equal(err.code, '57P01');
        assert.equal(await child.exited, 0);
        const v = await verifyAuditFile(auditFile);
        assert.equal(v.ok, true, JSON.stringify(v.firstBad));
        const records = (await readFile(auditFile, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { event: string; reason?: string; state?: string });
        assert.ok(records.some((r) => r.event === 'session.end' && r.reason === 'drain_deadline'));
        assert.equal(records.at(-1)?.state, 'stopped');
      } finally {
        await child.stop();
      }
    });

    it('exits at once on a second SIGTERM', async () => {
      const child = await spawnProxy({ server: { shutdown_timeout: '60s' }, tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier }] }] });
      const base = { port: child.port, certs: await testCerts() };
      try {
        const idle = await connect(base, { tenant: 'acme', user: 'app', password: 'app-pass' });
        idle.on('error', () => undefined);
        child.child.kill('SIGTERM');
        await waitFor(() => child.logs().includes('draining'));
        const t0 = Date.now();
        child.child.kill('SIGTERM');
        assert.equal(await child.exited, 1);
        assert.ok(Date.now() - t0 < 5000);
      } finally {
        await child.stop();
      }
    });
  });

  describe('command line', () => {
    it('hash-password prints a verifier PostgreSQL accepts for that password', async () => {
      const r = await run(process.execPath, [CLI, 'hash-password'], 'correct horse\n');
      assert.equal(r.code, 0, r.stderr);
      const v = r.stdout.trim();
      assert.match(v, /^SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$/);
      await cluster.query(`ALTER ROLE other PASSWORD '${v}'`);
      const c = new pg.Client({ host: '127.0.0.1', port: cluster.port, user: 'other', password: 'correct horse', database: 'postgres' });
      await c.connect();
      await c.end();
      await cluster.query(`ALTER ROLE other PASSWORD '${otherVerifier}'`);
    });

    it('check-config names the offending key', async () => {
      const certs = await testCerts();
      const good = path.join(dir, 'good.toml');
      await writeFile(good, configToml({ tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier }] }] }, certs));
      const ok = await run(process.execPath, [CLI, 'check-config', '--config', good]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.match(ok.stdout, /OK \(1 tenant\)/);
      const bad = path.join(dir, 'bad.toml');
      await writeFile(bad, (await readFile(good, 'utf8')).replace('max_client_connections = 100', 'max_client_connections = -5'));
      const r = await run(process.execPath, [CLI, 'check-config', '--config', bad]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /tenants\.acme\.max_client_connections: must be an integer/);
    });

    it('audit verify accepts an intact log and names the first altered record', async () => {
      const auditFile = path.join(dir, 'cli-audit.jsonl');
      const rp = await startProxy({ auditFile, tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier }] }] });
      for (let i = 0; i < 3; i++) {
        const c = await connect(rp, { tenant: 'acme', user: 'app', password: 'app-pass' });
        await c.end();
      }
      await new Promise((r) => setTimeout(r, 100));
      await rp.close();
      const ok = await run(process.execPath, [CLI, 'audit', 'verify', auditFile]);
      assert.equal(ok.code, 0, ok.stdout + ok.stderr);
      const lines = (await readFile(auditFile, 'utf8')).trim().split('\n');
      assert.ok(lines.length >= 7);
      lines[3] = lines[3]!.replace('"acme"', '"evil"');
      await writeFile(auditFile, `${lines.join('\n')}\n`);
      const bad = await run(process.execPath, [CLI, 'audit', 'verify', auditFile]);
      assert.equal(bad.code, 1);
      assert.match(bad.stdout, /FAILED: .*cli-audit\.jsonl:4 .*hash mismatch/);
    });
  });
});

