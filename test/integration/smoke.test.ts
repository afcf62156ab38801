import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, connect, libpqConninfo, psql, type RunningProxy } from '../support/proxy.js';

describe('smoke', () => {
  let pgc: Cluster;
  let rp: RunningProxy;
  before(async () => {
    pgc = await startCluster({ users: [{ name: 'app', password: 'secret-app' }] });
    const verifier = await readVerifier(pgc, 'app');
    rp = await startProxy({ tenants: [{ id: 'acme', cluster: pgc, users: [{ name: 'app', verifier }] }] });
  });
  after(async () => {
    await rp?.close();
    await pgc?.stop();
  });
  it('pg client works through the proxy', async () => {
    const c = await connect(rp, { tenant: 'acme', user: 'app', password: 'secret-app' });
    const r = await c.query<{ two: number; u: string }>('select 1 + 1 as two, current_user as u');
    assert.equal(r.rows[0]?.two, 2);
    assert.equal(r.rows[0]?.u, 'app');
    await c.end();
  });
  it('psql with channel_binding=require works', async () => {
    const r = await psql(libpqConninfo(rp, { tenant: 'acme', user: 'app', extra: 'channel_binding=require' }), 'secret-app', ['-c', 'select 42']);
    assert.equal(r.stderr, '');
    assert.equal(r.stdout.trim(), '42');
  });
});
