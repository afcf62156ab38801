/**
 * Backpressure both ways: a client that stops reading a large result stops the upstream too,
 * so pgwarden's memory stays flat; when the client reads again, every byte arrives.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, type RunningProxy } from '../support/proxy.js';
import { rawLogin } from '../support/login.js';
import { typed } from '../support/wire.js';
import { sleep } from '../support/wait.js';


describe('backpressure', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  before(async () => {
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    rp = await startProxy({ tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier: await readVerifier(cluster, 'app') }] }] });
  });
  after(async () => {
    await rp?.close();
    await cluster?.stop();
  });

  it('pauses the upstream while the client does not read, then delivers everything', async () => {
    const w = await rawLogin(rp.port, rp.certs.caCertPem, { tenant: 'acme', user: 'app', password: 'app-pass' });
    const session = [...rp.proxy.sessions].find((s) => s.phase === 'relaying');
    assert.ok(session);
    w.socket.pause();
    global.gc?.();
    const rssBefore = process.memoryUsage().rss;
    // About 200 MB of rows.
    w.write(typed('Q', Buffer.from("select repeat('x', 2000) from generate_series(1, 100000)\0")));
    await sleep(1500);
    const stalledAt = session.bytesOut;
    await sleep(1000);
    assert.equal(session.bytesOut, stalledAt, 'upstream reads stopped while the client did not read');
    assert.ok(stalledAt < 50 * 1024 * 1024, `only socket buffers' worth relayed while paused (${stalledAt} bytes)`);
    const grewBy = process.memoryUsage().rss - rssBefore;
    assert.ok(grewBy < 64 * 1024 * 1024, `RSS grew by ${grewBy} bytes`);

    // Read it all: 100000 DataRows, then CommandComplete and ReadyForQuery.
    w.socket.resume();
    let rows = 0;
    for (;;) {
      const f = await w.frame(30_000);
      assert.ok(f !== null);
      if (f.type === 'D') rows++;
      if (f.type === 'Z') break;
    }
    assert.equal(rows, 100000);
    assert.ok(session.bytesOut > 200_000_000);
    w.end();
  });
});
