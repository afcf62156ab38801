/**
 * How pgwarden logs in to tenant servers: SCRAM pass-through, a configured password, TLS to the
 * backend with verification, and the 08006 answers when that login cannot happen.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { connectError, startProxy, connect, clientConfig, testCerts, type RunningProxy } from '../support/proxy.js';
import { makeScramVerifier } from '../../src/auth/scram.js';
import { makeDevCerts } from '../../src/tools/dev-certs.js';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../support/ports.js';

describe('upstream login', () => {
  let tlsPg: Cluster;
  let rp: RunningProxy;
  let otherCaDir: string;

  before(async () => {
    const certs = await testCerts();
    otherCaDir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-otherca-'));
    const otherCa = await makeDevCerts({ dir: otherCaDir, hostnames: ['elsewhere.test'] });
    tlsPg = await startCluster({
      ssl: { certPath: certs.serverCertPath, keyPath: certs.serverKeyPath },
      users: [
        { name: 'app', password: 'app-pass' },
        { name: 'svc', password: 'backend-only-secret' },
      ],
    });
    const appVerifier = await readVerifier(tlsPg, 'app');
    process.env['PGWARDEN_TEST_SVC_PASSWORD'] = 'backend-only-secret';
    rp = await startProxy({
      tenants: [
        // Pass-through over verified TLS: the client's key logs in, pgwarden holds no password.
        { id: 'secure', cluster: tlsPg, backendTls: 'verify-full', backendCa: certs.caCertPath, users: [{ name: 'app', verifier: appVerifier }] },
        // The client knows "client-pass"; pgwarden logs in as svc with the password from the env.
        {
          id: 'pw',
          cluster: tlsPg,
          backendTls: 'require',
          users: [{ name: 'alice', verifier: await makeScramVerifier('client-pass'), backendUser: 'svc', backendPasswordEnv: 'PGWARDEN_TEST_SVC_PASSWORD' }],
        },
        // The configured verifier is not the server's: pass-through cannot log in.
        { id: 'mismatch', cluster: tlsPg, backendTls: 'require', users: [{ name: 'app', verifier: await makeScramVerifier('app-pass') }] },
        // The server's certificate is not signed by this CA.
        { id: 'wrongca', cluster: tlsPg, backendTls: 'verify-full', backendCa: otherCa.caCertPath, users: [{ name: 'app', verifier: appVerifier }] },
        // Nothing listens there.
        { id: 'down', cluster: tlsPg, backendUrl: `postgresql://127.0.0.1:${await freePort()}/postgres`, users: [{ name: 'app', verifier: appVerifier }] },
      ],
    });
  });

  after(async () => {
    await rp?.close();
    await tlsPg?.stop();
    await rm(otherCaDir, { recursive: true, force: true });
    delete process.env['PGWARDEN_TEST_SVC_PASSWORD'];
  });

  it('passes the client through with SCRAM pass-through over verify-full TLS', async () => {
    const c = await connect(rp, { tenant: 'secure', user: 'app', password: 'app-pass' });
    const r = await c.query<{ u: string; ssl: boolean }>('select current_user as u, ssl from pg_stat_ssl where pid = pg_backend_pid()');
    assert.equal(r.rows[0]!.u, 'app');
    assert.equal(r.rows[0]!.ssl, true);
    await c.end();
  });

  it('logs in with the configured backend password and role', async () => {
    const c = await connect(rp, { tenant: 'pw', user: 'alice', password: 'client-pass' });
    assert.equal((await c.query<{ u: string }>('select current_user as u')).rows[0]!.u, 'svc');
    await c.end();
    // The backend password is not a client password.
    const e = await connectError(clientConfig(rp, { tenant: 'pw', user: 'alice', password: 'backend-only-secret' }));
    assert.equal(e.code, '28P01');
  });

  it('answers 08006 when the backend refuses the proxy, without naming the backend role', async () => {
    const e = await connectError(clientConfig(rp, { tenant: 'mismatch', user: 'app', password: 'app-pass' }));
    assert.equal(e.code, '08006');
    assert.equal(e.message, 'could not connect to the tenant database');
  });

  it('answers 08006 when the backend certificate does not verify', async () => {
    const e = await connectError(clientConfig(rp, { tenant: 'wrongca', user: 'app', password: 'app-pass' }));
    assert.equal(e.code, '08006');
  });

  it('answers 08006 quickly when the backend is down', async () => {
    const t0 = Date.now();
    const e = await connectError(clientConfig(rp, { tenant: 'down', user: 'app', password: 'app-pass' }));
    assert.equal(e.code, '08006');
    assert.ok(Date.now() - t0 < 3000);
  });

  it('tells the client when its backend goes away mid-session (08006 at a message boundary)', async () => {
    const c = await connect(rp, { tenant: 'secure', user: 'app', password: 'app-pass' });
    const pid = (await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
    const ended = new Promise<{ code?: string }>((resolve) => c.on('error', (e) => resolve(e as { code?: string })));
    await tlsPg.query('select pg_terminate_backend($1)', [pid]);
    const err = await ended;
    // PostgreSQL says why (57P01 FATAL, forwarded byte for byte).
    assert.equal(err.code, '57P01');
  });
});
