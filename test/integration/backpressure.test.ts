/**
 * Backpressure both ways: a client that stops reading a large result stops the upstream too,
 * so pgwarden's memory stays flat; when the client reads again, every byte arrives. A client
 * that never reads again is closed by the send timeout, and its backend with it.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, type RunningProxy } from '../support/proxy.js';
import { rawLogin } from '../support/login.js';
import { typed } from '../support/wire.js';
import { sleep, waitFor } from '../support/wait.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';


describe('backpressure', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  let dir: string;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgwarden-bp-'));
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    const users = [{ name: 'app', verifier: await readVerifier(cluster, 'app') }];
    rp = await startProxy({
      auditFile: path.join(dir, 'audit.jsonl'),
      tenants: [
        { id: 'acme', cluster, users },
        { id: 'stall', cluster, users, limits: { send_timeout: '1s' } },
        { id: 'stalltx', cluster, users, limits: { send_timeout: '1s' }, pool: { pool_mode: 'transaction', max_backend_connections: 1 } },
      ],
    });
  });
  after(async () => {
    await rp?.close();
    await cluster?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('relays through the I/O path the run asks for (handle unless PGWARDEN_TEST_RELAY_IO says otherwise)', async () => {
    // `npm test` runs this file on both paths: a silent fallback to streams would make one run test nothing new.
    const want = process.env['PGWARDEN_TEST_RELAY_IO'] === 'stream' ? 'stream' : 'handle';
    const text = await (await fetch(`http://127.0.0.1:${rp.metricsPort}/metrics`)).text();
    assert.match(text, new RegExp(`^pgwarden_relay_io\\{mode="${want}"\\} 1$`, 'm'));
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

  for (const tenant of ['stall', 'stalltx']) {
    it(`closes a client that stops reading a 1 GB result after send_timeout, and its backend (${tenant === 'stall' ? 'session' : 'transaction'} mode)`, async () => {
      const w = await rawLogin(rp.port, rp.certs.caCertPem, { tenant, user: 'app', password: 'app-pass' });
      const session = [...rp.proxy.sessions].find((s) => s.phase === 'relaying' && s.tenantId === tenant);
      assert.ok(session);
      try {
        w.socket.pause();
        global.gc?.();
        const rssBefore = process.memoryUsage().rss;
        // 1 000 000 rows of 1 000 bytes: about 1 GB that the client will never take.
        w.write(typed('Q', Buffer.from("select repeat('y', 1000) /* stalled */ from generate_series(1, 1000000)\0")));
        const started = Date.now();
        await waitFor(() => session.phase === 'closed', 15_000, 'the session is closed by the send timeout');
        const took = Date.now() - started;
        assert.ok(took >= 900, `not before send_timeout (${took} ms)`);
        assert.ok(session.bytesOut < 64 * 1024 * 1024, `only socket buffers' worth was read from the server (${session.bytesOut} bytes)`);
        const grewBy = process.memoryUsage().rss - rssBefore;
        assert.ok(grewBy < 64 * 1024 * 1024, `RSS grew by ${grewBy} bytes`);
        // The backend that was producing the result is gone, not parked in the pool mid-result.
        await waitFor(async () => {
          const r = await cluster.query("select count(*)::int as n from pg_stat_activity where query like '%/* stalled */%' and pid <> pg_backend_pid()");
          return (r.rows[0] as { n: number }).n === 0;
        }, 10_000, 'the stalled backend ended');
        // The tenant still serves a new client.
        const w2 = await rawLogin(rp.port, rp.certs.caCertPem, { tenant, user: 'app', password: 'app-pass' });
        w2.write(typed('Q', Buffer.from('select 1\0')));
        let sawRow = false;
        for (;;) {
          const f = await w2.frame(10_000);
          assert.ok(f !== null);
          if (f.type === 'D') sawRow = true;
          if (f.type === 'Z') break;
        }
        assert.ok(sawRow);
        w2.end();
        // The audit says why.
        await waitFor(() => fs.readFileSync(path.join(dir, 'audit.jsonl'), 'utf8').includes(session.id), 5_000, 'audit written');
        const ends = fs
          .readFileSync(path.join(dir, 'audit.jsonl'), 'utf8')
          .split('\n')
          .filter((l) => l.includes('"session.end"') && l.includes(session.id))
          .map((l) => JSON.parse(l) as { reason?: string });
        assert.equal(ends.length, 1);
        assert.equal(ends[0]!.reason, 'send_timeout');
      } finally {
        w.socket.destroy();
      }
    });
  }
});
