/**
 * Per-tenant limits with real clients on one instance (in-process limit store): each limit is
 * hit and answered with its SQLSTATE, counted in pgwarden_limit_rejections_total and written
 * to the audit log, and the tenant next door never notices.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, connect, clientConfig, connectError, type ProxySpec, type RunningProxy, type TenantSpec } from '../support/proxy.js';
import { sleep, waitFor } from '../support/wait.js';

function request(port: number, method: string, urlPath: string, token?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: urlPath, method, headers: token === undefined ? {} : { authorization: `Bearer ${token}` } }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** The next 'error' event of a connected client (idle timeouts arrive unasked). */
function nextError(c: pg.Client): Promise<{ code?: string; message: string }> {
  return new Promise((resolve) => c.once('error', (err: Error & { code?: string }) => resolve(err)));
}

async function auditRecords(file: string): Promise<Record<string, unknown>[]> {
  const text = await readFile(file, 'utf8');
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

const ADMIN_TOKEN = 'test-admin-token-7c1f';

describe('per-tenant limits', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  let dir: string;
  let auditFile: string;
  let spec: ProxySpec;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-limits-'));
    auditFile = path.join(dir, 'audit.jsonl');
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }, { name: 'other', password: 'other-pass' }] });
    const app = await readVerifier(cluster, 'app');
    const other = await readVerifier(cluster, 'other');
    await cluster.query('create table t (id int)');
    await cluster.query('grant all on t to app');
    const users = [{ name: 'app', verifier: app }, { name: 'other', verifier: other }];
    const tenant = (id: string, extra: Partial<TenantSpec>): TenantSpec => ({ id, cluster, users, ...extra });
    spec = {
      auditFile,
      admin: { token_sha256: createHash('sha256').update(ADMIN_TOKEN).digest('hex') },
      tenants: [
        tenant('calm', {}),
        tenant('peruser', { userMaxConnections: { app: 1 }, limits: { max_connections_per_user: 2 } }),
        tenant('rate', { limits: { new_connections_per_second: 1, new_connections_burst: 2 } }),
        tenant('locks', { limits: { auth_failure_limit: 3, auth_failure_window: '1m', auth_failure_cooldown: '1500ms' } }),
        tenant('timeouts', { limits: { query_timeout: '300ms', idle_in_transaction_timeout: '400ms' } }),
        tenant('txtimeouts', { pool: { pool_mode: 'transaction' }, limits: { query_timeout: '300ms', transaction_timeout: '700ms' } }),
        tenant('idle', { limits: { idle_timeout: '300ms' } }),
        tenant('small', { limits: { max_message_bytes: '64kB' } }),
        tenant('slow', { limits: { max_bandwidth_bytes_per_second: '1MB' } }),
        tenant('suspendme', {}),
        tenant('reloaded', {}),
      ],
    };
    rp = await startProxy(spec);
  });
  after(async () => {
    await rp?.close();
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  const login = (tenant: string, user = 'app', password = `${user}-pass`): Promise<pg.Client> => connect(rp, { tenant, user, password });
  const refusal = (tenant: string, user = 'app', password = `${user}-pass`): Promise<{ code?: string; message: string }> =>
    connectError(clientConfig(rp, { tenant, user, password }));
  const metric = async (tenant: string, limit: string): Promise<number> => {
    const body = (await request(rp.metricsPort, 'GET', '/metrics')).body;
    const m = new RegExp(`^pgwarden_limit_rejections_total\\{tenant="${tenant}",limit="${limit}"\\} (\\d+)$`, 'm').exec(body);
    return m === null ? 0 : Number(m[1]);
  };

  it('per-user caps: users.<name>.max_connections, else the tenant\'s max_connections_per_user (53300 for the role)', async () => {
    const a = await login('peruser', 'app');
    const err = await refusal('peruser', 'app');
    assert.equal(err.code, '53300');
    assert.equal(err.message, 'too many connections for role "app"');
    const o1 = await login('peruser', 'other');
    const o2 = await login('peruser', 'other');
    assert.equal((await refusal('peruser', 'other')).message, 'too many connections for role "other"');
    await a.end();
    const a2 = await login('peruser', 'app'); // the slot came back
    assert.equal(await metric('peruser', 'max_connections_per_user'), 2);
    await Promise.all([a2.end(), o1.end(), o2.end()]);
  });

  it('new_connections_per_second: past the burst, 53300 before any authentication, then no handshake at all while the bucket is dry', async () => {
    const first = await login('rate');
    const second = await login('rate');
    // The bucket (burst 2) is empty: refused before SCRAM, so even a wrong password gets 53300.
    const refused = await refusal('rate', 'app', 'wrong');
    assert.equal(refused.code, '53300');
    assert.equal(refused.message, 'too many connection attempts, please try again later');
    // Until a token can be back (1/rate s), new attempts are cut in the TLS handshake: no
    // key exchange or signature spent on an attempt that is sure to fail.
    const cut = await refusal('rate');
    assert.ok(cut.code === undefined || !/^[0-9A-Z]{5}$/.test(cut.code), `a TLS-level refusal, not a SQLSTATE: ${JSON.stringify(cut)}`);
    const calm = await Promise.all(Array.from({ length: 5 }, () => login('calm')));
    await Promise.all([first, second, ...calm].map((c) => c.end()));
    assert.ok((await metric('rate', 'new_connections_per_second')) >= 2);
    await sleep(1100);
    await (await login('rate')).end(); // a token came back
  });

  it('authentication failures: after N per (tenant, source), a cool-down refuses everyone the same way, then ends', async () => {
    for (let i = 0; i < 3; i++) assert.equal((await refusal('locks', 'app', 'wrong')).code, '28P01');
    const right = await refusal('locks', 'app');
    const unknown = await refusal('locks', 'nobody', 'whatever');
    assert.equal(right.code, '53300');
    assert.deepEqual(unknown, right, 'an unknown user is refused identically (no enumeration)');
    assert.equal(right.message, 'too many connection attempts, please try again later');
    // Another tenant from the same source is not locked by this tenant's counter.
    (await login('calm')).end().catch(() => undefined);
    assert.ok((await metric('locks', 'auth_failures')) >= 2);
    await sleep(1600);
    const c = await login('locks');
    await c.end();
  });

  it('query_timeout cancels a long statement with 57014 and the session goes on (session mode)', async () => {
    const c = await login('timeouts');
    const t0 = Date.now();
    await assert.rejects(c.query('select pg_sleep(10)'), { code: '57014' });
    assert.ok(Date.now() - t0 < 5000, 'cancelled well before the statement would end');
    assert.equal((await c.query<{ x: number }>('select 1 as x')).rows[0]?.x, 1);
    await c.end();
  });

  it('query_timeout in transaction mode reaches the backend running the query', async () => {
    const c = await login('txtimeouts');
    await assert.rejects(c.query('select pg_sleep(10)'), { code: '57014' });
    assert.equal((await c.query<{ x: number }>('select 2 as x')).rows[0]?.x, 2);
    await c.end();
  });

  it('idle_in_transaction_timeout ends the session with 25P03 and rolls the transaction back', async () => {
    const c = await login('timeouts');
    const errP = nextError(c);
    await c.query('begin');
    await c.query('insert into t values (42)');
    const err = await errP;
    assert.equal(err.code, '25P03');
    assert.equal(err.message, 'terminating connection due to idle-in-transaction timeout');
    await c.end().catch(() => undefined);
    await waitFor(async () => (await cluster.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where usename = 'app' and state like 'idle in transaction%'")).rows[0]?.n === 0);
    assert.equal((await cluster.query('select * from t where id = 42')).rowCount, 0, 'rolled back');
  });

  it('transaction_timeout ends a transaction that stays open too long with 25P04, even while it works', async () => {
    const c = await login('txtimeouts');
    c.on('error', () => undefined); // the connection ends after the FATAL
    await c.query('begin');
    // Short statements keep it busy, never idle: only the transaction timeout can fire. The
    // FATAL arrives as the answer to whichever statement is running or next.
    const t0 = Date.now();
    let err: { code?: string; message?: string } | null = null;
    for (let i = 0; i < 100 && err === null; i++) {
      await c.query('select pg_sleep(0.05)').catch((e: unknown) => (err = e as { code?: string }));
    }
    assert.ok(err !== null, 'the transaction was ended');
    assert.equal((err as { code?: string }).code, '25P04');
    assert.ok(Date.now() - t0 < 4000);
    await c.end().catch(() => undefined);
  });

  it('idle_timeout ends an idle session with 57P05; the audit record says why', async () => {
    const c = await login('idle');
    const err = await nextError(c);
    assert.equal(err.code, '57P05');
    assert.equal(err.message, 'terminating connection due to idle-session timeout');
    await c.end().catch(() => undefined);
    await waitFor(async () => (await auditRecords(auditFile)).some((r) => r['event'] === 'session.end' && r['tenant'] === 'idle'));
    const end = (await auditRecords(auditFile)).find((r) => r['event'] === 'session.end' && r['tenant'] === 'idle')!;
    assert.equal(end['reason'], 'idle_timeout');
    assert.deepEqual(end['limits_hit'], ['idle_timeout']);
  });

  it('max_message_bytes: a larger message gets 08P01; a message under it passes; other sessions go on', async () => {
    const bystander = await login('small');
    const c = await login('small');
    assert.equal((await c.query<{ n: number }>('select length($1) as n', ['y'.repeat(30_000)])).rows[0]?.n, 30_000);
    const errP = nextError(c);
    await assert.rejects(c.query('select length($1)', ['x'.repeat(100_000)]), { code: '08P01', message: 'invalid message length' });
    await errP.catch(() => undefined);
    await c.end().catch(() => undefined);
    assert.equal((await bystander.query<{ x: number }>('select 3 as x')).rows[0]?.x, 3);
    await bystander.end();
    assert.equal(await metric('small', 'max_message_bytes'), 1);
  });

  it('max_bandwidth_bytes_per_second slows the tenant\'s transfers by backpressure, not its neighbour\'s', async () => {
    const slow = await login('slow');
    const calm = await login('calm');
    const bytes = 3 * 1024 * 1024;
    const timed = async (c: pg.Client): Promise<number> => {
      const t0 = Date.now();
      const r = await c.query<{ s: string }>('select repeat($1, $2) as s', ['z', bytes]);
      assert.equal(r.rows[0]?.s.length, bytes);
      return Date.now() - t0;
    };
    const [slowMs, calmMs] = await Promise.all([timed(slow), timed(calm)]);
    // 3 MiB at 1 MiB/s with a 100 kB allowance: at least ~2.9 s. The neighbour is not held back.
    assert.ok(slowMs >= 2500, `throttled transfer took ${slowMs} ms`);
    assert.ok(calmMs < slowMs, `unthrottled neighbour took ${calmMs} ms, throttled ${slowMs} ms`);
    await Promise.all([slow.end(), calm.end()]);
  });

  it('suspension through the admin API ends the tenant\'s sessions (57P01) and refuses logins like a disabled tenant, until resumed', async () => {
    assert.equal((await request(rp.adminPort, 'POST', '/tenants/suspendme/suspend')).status, 401, 'no token');
    assert.equal((await request(rp.adminPort, 'POST', '/tenants/suspendme/suspend', 'wrong')).status, 401, 'wrong token');
    const c = await login('suspendme');
    const bystander = await login('calm');
    const errP = nextError(c);
    assert.equal((await request(rp.adminPort, 'POST', '/tenants/suspendme/suspend', ADMIN_TOKEN)).status, 200);
    assert.equal((await errP).code, '57P01');
    await c.end().catch(() => undefined);
    const refused = await refusal('suspendme');
    assert.equal(refused.code, '28P01');
    assert.equal((await bystander.query<{ x: number }>('select 4 as x')).rows[0]?.x, 4);
    assert.equal((await request(rp.adminPort, 'POST', '/tenants/suspendme/resume', ADMIN_TOKEN)).status, 200);
    await (await login('suspendme')).end();
    await bystander.end();
  });

  it('a reload changes the timeouts of running sessions too', async () => {
    const c = await login('reloaded');
    const errP = nextError(c);
    await sleep(400);
    assert.equal((await c.query<{ x: number }>('select 5 as x')).rows[0]?.x, 5, 'no idle timeout yet');
    rp.reload({ ...spec, tenants: spec.tenants.map((t) => (t.id === 'reloaded' ? { ...t, limits: { idle_timeout: '300ms' } } : t)) });
    assert.equal((await errP).code, '57P05');
    await c.end().catch(() => undefined);
  });

  it('every refusal is in the audit log with its reason (admission refusals aggregated), and no secret is', async () => {
    await rp.close(); // flushes the aggregated connection.rejected records
    const records = await auditRecords(auditFile);
    const reasons = new Set(records.filter((r) => r['event'] === 'session.auth_failure').map((r) => r['reason']));
    for (const r of ['too_many_connections', 'tenant_suspended']) assert.ok(reasons.has(r), `audit reason ${r}`);
    // A storm of refused attempts is one record per (reason, source prefix, tenant) and window.
    const aggregated = records.filter((r) => r['event'] === 'connection.rejected');
    for (const [reason, tenant] of [['rate_limited', 'rate'], ['rate_limited_handshake', 'rate'], ['auth_throttled', 'locks']] as const) {
      const rec = aggregated.find((r) => r['reason'] === reason && r['tenant'] === tenant);
      assert.ok(rec !== undefined && (rec['count'] as number) >= 1, `aggregated ${reason} for ${tenant}`);
    }
    assert.ok(!reasons.has('rate_limited') && !reasons.has('auth_throttled'), 'no record per refused attempt');
    const ends = records.filter((r) => r['event'] === 'session.end').map((r) => r['reason']);
    for (const r of ['idle_in_txn_timeout', 'transaction_timeout', 'idle_timeout', 'tenant_suspended', 'limit']) assert.ok(ends.includes(r), `session.end reason ${r}`);
    const text = await readFile(auditFile, 'utf8');
    assert.ok(!text.includes('app-pass') && !text.includes(ADMIN_TOKEN) && !text.includes('SCRAM-SHA-256$'));
  });
});
