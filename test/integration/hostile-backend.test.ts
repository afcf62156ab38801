/**
 * The tenant's server is untrusted input (SECURITY.md rule 6): a scripted hostile backend gets
 * clear 08006 answers to its clients, quickly, and never takes the proxy or other sessions down.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, connect, clientConfig, connectError, type RunningProxy } from '../support/proxy.js';
import { startHostileBackend, type HostileBackend, type HostileScript } from '../support/hostile-backend.js';
import { rawLogin } from '../support/login.js';
import { typed } from '../support/wire.js';

const SCRIPTS: HostileScript[] = ['bad_length_after_login', 'error_without_sqlstate', 'huge_scram_iterations', 'bytes_after_ssl_answer'];

describe('hostile tenant servers', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  const backends = new Map<HostileScript, HostileBackend>();

  before(async () => {
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    const verifier = await readVerifier(cluster, 'app');
    for (const s of SCRIPTS) backends.set(s, await startHostileBackend(s));
    rp = await startProxy({
      tenants: [
        { id: 'good', cluster, users: [{ name: 'app', verifier }] },
        {
          id: 'bad-length-tx',
          cluster,
          backendUrl: `postgresql://127.0.0.1:${backends.get('bad_length_after_login')!.port}/postgres`,
          users: [{ name: 'app', verifier }],
          pool: { pool_mode: 'transaction' },
        },
        ...SCRIPTS.map((s) => ({
          id: s.replace(/_/g, '-'),
          cluster,
          backendUrl: `postgresql://127.0.0.1:${backends.get(s)!.port}/postgres`,
          backendTls: s === 'bytes_after_ssl_answer' ? ('require' as const) : ('disable' as const),
          users: [{ name: 'app', verifier }],
        })),
      ],
    });
  });
  after(async () => {
    await rp?.close();
    for (const b of backends.values()) await b.close();
    await cluster?.stop();
  });

  for (const tenant of ['bad-length-after-login', 'bad-length-tx']) it(`ends the session with 08006 when the server breaks framing mid-session (${tenant.endsWith('tx') ? 'transaction' : 'session'} mode)`, async () => {
    const w = await rawLogin(rp.port, rp.certs.caCertPem, { tenant, user: 'app', password: 'app-pass' });
    w.write(typed('Q', Buffer.from('select 1\0')));
    const first = await w.frame();
    assert.equal(first?.type, 'T', 'the well-formed frame before the bad one is passed on');
    const err = await w.error();
    assert.equal(err?.code, '08006');
    assert.equal(err?.message, 'connection to the tenant database was lost');
    assert.ok(await w.waitClosed());
  });

  for (const script of ['error_without_sqlstate', 'huge_scram_iterations', 'bytes_after_ssl_answer'] as const) {
    it(`answers 08006 at login, quickly, when the server ${script.replace(/_/g, ' ')}`, async () => {
      const t0 = Date.now();
      const e = await connectError(clientConfig(rp, { tenant: script.replace(/_/g, '-'), user: 'app', password: 'app-pass' }));
      assert.equal(e.code, '08006');
      assert.equal(e.message, 'could not connect to the tenant database');
      assert.ok(Date.now() - t0 < 3000, `took ${Date.now() - t0} ms`);
      assert.ok(backends.get(script)!.connections() >= 1, 'the hostile server was really reached');
    });
  }

  it('keeps serving everyone else', async () => {
    const c = await connect(rp, { tenant: 'good', user: 'app', password: 'app-pass' });
    assert.equal((await c.query<{ v: number }>('select 3 as v')).rows[0]?.v, 3);
    await c.end();
  });
});
