/**
 * Checks test/support/cluster.ts against a real server: SCRAM over TCP, the stored verifier, TLS,
 * crash and restart, and that stop() leaves nothing behind.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { makeDevCerts, type DevCerts } from '../../src/tools/dev-certs.js';

const ALICE = { name: 'alice', password: 'correct horse battery staple' };

describe('startCluster', () => {
  let certDir: string;
  let certs: DevCerts;
  let cluster: Cluster;

  before(async () => {
    certDir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-certs-'));
    certs = await makeDevCerts({ dir: certDir, hostnames: ['*.pg.test'] });
    cluster = await startCluster({
      auth: 'scram-sha-256',
      ssl: { certPath: certs.serverCertPath, keyPath: certs.serverKeyPath },
      users: [ALICE],
      databases: ['app'],
      settings: { application_name: "pgwarden's test" },
    });
  });

  after(async () => {
    await cluster?.stop();
    await rm(certDir, { recursive: true, force: true });
  });

  /** A TCP client as alice; `ssl` false unless given. */
  async function connectAlice(password: string, extra: Partial<pg.ClientConfig> = {}): Promise<pg.Client> {
    const client = new pg.Client({
      host: cluster.host, port: cluster.port, user: ALICE.name, password, database: 'app', ssl: false, ...extra,
    });
    try {
      await client.connect();
    } catch (err) {
      await client.end().catch(() => undefined);
      throw err;
    }
    return client;
  }

  it('accepts the user password over TCP with SCRAM', async () => {
    const client = await connectAlice(ALICE.password);
    try {
      const { rows } = await client.query<{ user: string; db: string }>('SELECT current_user AS user, current_database() AS db');
      assert.deepEqual(rows, [{ user: 'alice', db: 'app' }]);
    } finally {
      await client.end();
    }
    assert.equal(cluster.url('app'), `postgresql://127.0.0.1:${cluster.port}/app`);
  });

  it('answers a wrong password with 28P01', async () => {
    await assert.rejects(connectAlice('wrong'), { code: '28P01' });
  });

  it('stores a SCRAM verifier', async () => {
    assert.match(await readVerifier(cluster, 'alice'), /^SCRAM-SHA-256\$4096:/);
    await assert.rejects(readVerifier(cluster, 'nobody'), /no password verifier/);
  });

  it('serves TLS with the given certificate, verified against the dev CA', async () => {
    assert.equal((await cluster.query<{ ssl: string }>('SHOW ssl')).rows[0]?.ssl, 'on');
    const client = await connectAlice(ALICE.password, { ssl: { ca: certs.caCertPem, rejectUnauthorized: true } });
    try {
      const { rows } = await client.query<{ ssl: boolean }>('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
      assert.deepEqual(rows, [{ ssl: true }]);
    } finally {
      await client.end();
    }
  });

  it('applies extra settings, quoted', async () => {
    assert.equal((await cluster.query<{ application_name: string }>('SHOW application_name')).rows[0]?.application_name, "pgwarden's test");
  });

  it('survives killHard() and restart() on the same port', async () => {
    const { port } = cluster;
    const before = cluster.pid();
    const victim = await connectAlice(ALICE.password);
    const lost = new Promise<void>((resolve) => victim.on('error', () => resolve())); // 'on': pg may emit more than one error
    await cluster.killHard();
    await lost; // the open connection notices the crash
    await assert.rejects(connectAlice(ALICE.password));
    await cluster.restart();
    assert.equal(cluster.port, port);
    assert.notEqual(cluster.pid(), before);
    assert.equal((await cluster.query<{ one: number }>('SELECT 1 AS one')).rows[0]?.one, 1);
    await cluster.restart(); // clean stop -m fast, then start
    const client = await connectAlice(ALICE.password);
    await client.end();
  });

  it('stop() removes the temp dir and the server', async () => {
    const tempDir = path.dirname(cluster.dataDir);
    assert.ok(existsSync(tempDir));
    await cluster.stop();
    assert.equal(existsSync(tempDir), false);
    await assert.rejects(connectAlice(ALICE.password), { code: 'ECONNREFUSED' });
    await cluster.stop(); // idempotent
  });
});
