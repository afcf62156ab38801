/**
 * The pool's queueing and ownership (pool/backend-pool.ts, key-pool.ts, backend.ts). The wait
 * queue is tested alone, without sockets; TenantPool against one real PostgreSQL (trust on
 * loopback), driven through its API as sessions drive it: arrival order, pool_timeout (53300),
 * max_backend_connections shared by a tenant's keys, release (reuse, DISCARD ALL, close), the
 * hold a cancel in flight puts on reuse, eviction and reaping of idle backends.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorField } from '../../src/protocol/codes.js';
import { readErrorField } from '../../src/protocol/backend.js';
import { encodeQuery } from '../../src/protocol/frontend.js';
import { FrameReader } from '../../src/protocol/frame-reader.js';
import { Metrics } from '../../src/observability/metrics.js';
import { createLogger } from '../../src/observability/logger.js';
import { PgError } from '../../src/errors.js';
import { poolKey, TenantPool, type Backend } from '../../src/pool/backend-pool.js';
import type { PoolSettings } from '../../src/config/schema.js';
import { WaitQueue } from '../../src/pool/key-pool.js';
import type { UpstreamLogin, UpstreamTarget } from '../../src/pool/upstream.js';
import { startCluster, type Cluster } from '../support/cluster.js';
import { sleep, waitFor } from '../support/wait.js';

const fakeBackend = (n: number): Backend => ({ processId: n }) as unknown as Backend;

describe('WaitQueue (no sockets)', () => {
  it('serves the head first, a key’s first waiter on request, and rejects one key or all', async () => {
    const q = new WaitQueue();
    const results: string[] = [];
    const track = (name: string, p: Promise<Backend>): void => {
      p.then(
        (b) => results.push(`${name}:${b.processId}`),
        (e: unknown) => results.push(`${name}:${(e as Error).message}`),
      );
    };
    track('a1', q.wait('a', 0, 10_000, () => new Error('timeout')));
    track('b1', q.wait('b', 0, 10_000, () => new Error('timeout')));
    track('a2', q.wait('a', 0, 10_000, () => new Error('timeout')));
    track('b2', q.wait('b', 0, 10_000, () => new Error('timeout')));
    assert.equal(q.length, 4);
    assert.equal(q.head?.key, 'a');
    q.takeFirstOf('b')!.resolve(fakeBackend(1));
    q.shift()!.resolve(fakeBackend(2));
    assert.equal(q.head?.key, 'a');
    assert.equal(q.has('b'), true);
    q.failKey('b', new Error('down'));
    assert.equal(q.has('b'), false);
    q.rejectAll(new Error('closed'));
    assert.equal(q.length, 0);
    assert.equal(q.shift(), undefined);
    await sleep(0);
    assert.deepEqual(results.sort(), ['a1:2', 'a2:closed', 'b1:1', 'b2:down']);
  });

  it('a waiter that times out leaves the queue and gets the error of onTimeout', async () => {
    const q = new WaitQueue();
    let counted = 0;
    const slow = q.wait('a', 0, 30, () => {
      counted++;
      return new Error('pool timeout');
    });
    const patient = q.wait('a', 0, 10_000, () => new Error('unexpected'));
    await assert.rejects(slow, /pool timeout/);
    assert.equal(counted, 1);
    assert.equal(q.length, 1);
    q.shift()!.resolve(fakeBackend(7));
    assert.equal((await patient).processId, 7);
  });

  it('a served waiter’s timer is stopped', async () => {
    const q = new WaitQueue();
    let timedOut = false;
    const p = q.wait('a', 0, 20, () => {
      timedOut = true;
      return new Error('timeout');
    });
    q.takeFirstOf('a')!.resolve(fakeBackend(3));
    await p;
    await sleep(50);
    assert.equal(timedOut, false);
  });
});

describe('poolKey', () => {
  it('is the same for the same login whatever the parameter order, and differs by user, database or parameter', () => {
    const login = (user: string, database: string, params: [string, string][]): UpstreamLogin => ({ user, database, params: new Map(params), credential: { kind: 'none' } });
    const k = poolKey(login('u', 'd', [['a', '1'], ['b', '2']]));
    assert.equal(
      poolKey(
        login('u', 'd', [
          ['b', '2'],
          ['a', '1'],
        ]),
      ),
      k,
    );
    assert.notEqual(poolKey(login('v', 'd', [['a', '1'], ['b', '2']])), k);
    assert.notEqual(poolKey(login('u', 'e', [['a', '1'], ['b', '2']])), k);
    assert.notEqual(poolKey(login('u', 'd', [['a', '1'], ['b', '3']])), k);
  });
});

/** Runs one simple query on a backend the test holds; the reply's types, status, first row and SQLSTATE. */
function query(b: Backend, sql: string): Promise<{ status: string; values: string[]; code: string | undefined }> {
  return new Promise((resolve, reject) => {
    const reader = new FrameReader();
    const values: string[] = [];
    let code: string | undefined;
    const onClose = (): void => reject(new Error('backend closed'));
    const onData = (chunk: Buffer): void => {
      reader.push(chunk);
      for (let f = reader.nextTyped(() => 1 << 20); f !== null; f = reader.nextTyped(() => 1 << 20)) {
        if (f.type === 0x45 /* E */) code = readErrorField(f.body, ErrorField.Code);
        if (f.type === 0x44 /* D */ && values.length === 0) {
          let pos = 2;
          for (let i = 0; i < f.body.readUInt16BE(0); i++) {
            const len = f.body.readInt32BE(pos);
            values.push(f.body.toString('utf8', pos + 4, pos + 4 + Math.max(len, 0)));
            pos += 4 + Math.max(len, 0);
          }
        }
        if (f.type === 0x5a /* Z */) {
          b.socket.removeListener('data', onData);
          b.socket.removeListener('close', onClose);
          b.socket.pause();
          resolve({ status: String.fromCharCode(f.body[0]!), values, code });
          return;
        }
      }
    };
    b.socket.on('data', onData);
    b.socket.once('close', onClose);
    b.socket.resume();
    b.socket.write(encodeQuery(sql));
  });
}

describe('TenantPool against PostgreSQL', () => {
  let pg: Cluster;
  let target: UpstreamTarget;
  const metrics = new Metrics();
  const log = createLogger('silent');
  const pools: TenantPool[] = [];

  before(async () => {
    pg = await startCluster({ auth: 'trust' });
    target = { host: pg.host, port: pg.port, tls: 'disable', ca: undefined };
  });
  after(async () => {
    for (const p of pools) p.close();
    await pg?.stop();
  });

  const settings = (over: Partial<PoolSettings> = {}): PoolSettings => ({
    mode: 'transaction',
    sessionState: 'pin',
    maxBackendConnections: 1,
    minIdleBackendConnections: 0,
    poolTimeoutMs: 5_000,
    backendIdleTimeoutMs: 60_000,
    backendLifetimeMs: 3_600_000,
    connectTimeoutMs: 5_000,
    ...over,
  });
  const tenantPool = (over: Partial<PoolSettings> = {}): TenantPool => {
    const p = new TenantPool(`t${pools.length}`, settings(over), metrics, log);
    pools.push(p);
    return p;
  };
  /** Logins that differ only in application_name: distinct keys of one tenant. */
  const login = (app: string): UpstreamLogin => ({ user: pg.superuser, database: 'postgres', params: new Map([['application_name', app]]), credential: { kind: 'none' } });
  const acquire = (p: TenantPool, app: string, extra = 0): Promise<Backend> => p.acquire(poolKey(login(app)), login(app), target, extra);
  const serverProcesses = async (app: string): Promise<number> =>
    Number((await pg.query<{ n: string }>('SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1', [app])).rows[0]!.n);

  it('reuses a released backend: the same server process, with the key’s login parameters', async () => {
    const p = tenantPool();
    const a = await acquire(p, 'reuse');
    assert.equal(a.state, 'active');
    assert.equal(p.parametersFor(poolKey(login('reuse')))?.get('application_name'), 'reuse');
    p.release(a, true, false);
    assert.equal(a.state, 'idle');
    assert.deepEqual(p.size, { total: 1, idle: 1, active: 0, waiting: 0 });
    const again = await acquire(p, 'reuse');
    assert.equal(again, a);
    assert.equal((await query(again, 'SELECT pg_backend_pid()')).values[0], String(a.processId));
    p.release(again, true, false);
  });

  it('serves waiters of a key in arrival order, each with the backend the one before gave back', async () => {
    const p = tenantPool({ maxBackendConnections: 1 });
    const first = await acquire(p, 'order');
    const order: number[] = [];
    const waiting = [1, 2, 3].map((n) =>
      acquire(p, 'order').then((b) => {
        order.push(n);
        return b;
      }),
    );
    await sleep(20);
    assert.equal(p.size.waiting, 3);
    let held = first;
    for (let i = 0; i < 3; i++) {
      p.release(held, true, false);
      held = await waiting[i]!;
      assert.equal(held, first, 'the one backend goes round');
    }
    assert.deepEqual(order, [1, 2, 3]);
    assert.equal(p.size.total, 1);
    p.release(held, true, false);
  });

  it('answers 53300 after pool_timeout and counts it', async () => {
    const p = tenantPool({ maxBackendConnections: 1, poolTimeoutMs: 150 });
    const held = await acquire(p, 'timeout');
    const before = (await metrics.limitRejections.get()).values.find((v) => v.labels.tenant === p.tenantId && v.labels.limit === 'pool_timeout')?.value ?? 0;
    const began = Date.now();
    await assert.rejects(acquire(p, 'timeout'), (err: unknown) => err instanceof PgError && err.sqlstate === '53300');
    assert.ok(Date.now() - began >= 140, 'waited for pool_timeout');
    const counted = (await metrics.limitRejections.get()).values.find((v) => v.labels.tenant === p.tenantId && v.labels.limit === 'pool_timeout')?.value ?? 0;
    assert.equal(counted, before + 1);
    assert.equal(p.size.waiting, 0);
    p.release(held, true, false);
  });

  it('shares max_backend_connections across the keys of a tenant; a staff extra opens one beyond it', async () => {
    const p = tenantPool({ maxBackendConnections: 2, poolTimeoutMs: 150 });
    const a = await acquire(p, 'share-a');
    const b = await acquire(p, 'share-b');
    await assert.rejects(acquire(p, 'share-c'), { sqlstate: '53300' });
    assert.equal(p.size.total, 2);
    const staff = await acquire(p, 'share-c', 1);
    assert.equal(p.size.total, 3);
    assert.equal(await serverProcesses('share-c'), 1);
    for (const x of [a, b, staff]) p.release(x, false, false);
    assert.equal(p.size.total, 0);
  });

  it('evicts another key’s least recently used idle backend to make room', async () => {
    const p = tenantPool({ maxBackendConnections: 2 });
    const older = await acquire(p, 'evict-a');
    const newer = await acquire(p, 'evict-a');
    p.release(older, true, false);
    await sleep(5);
    p.release(newer, true, false);
    const other = await acquire(p, 'evict-b');
    assert.equal(older.state, 'closed');
    assert.equal(newer.state, 'idle');
    assert.deepEqual(p.size, { total: 2, idle: 1, active: 1, waiting: 0 });
    await waitFor(async () => (await serverProcesses('evict-a')) === 1, 5_000, 'the evicted server process to exit');
    p.release(other, true, false);
  });

  it('a waiter of another key gets room once a backend is given back (the freed one is evicted for it)', async () => {
    const p = tenantPool({ maxBackendConnections: 1 });
    const a = await acquire(p, 'cross-a');
    const waiter = acquire(p, 'cross-b');
    await sleep(20);
    p.release(a, true, false);
    const b = await waiter;
    assert.equal(a.state, 'closed');
    assert.notEqual(b.processId, a.processId);
    assert.equal(p.size.total, 1);
    p.release(b, true, false);
  });

  it('release(reusable = false) closes the backend and the next client gets a new server process', async () => {
    const p = tenantPool();
    const a = await acquire(p, 'close');
    p.release(a, false, false);
    assert.equal(a.state, 'closed');
    assert.equal(a.socket.destroyed, true);
    assert.equal(p.size.total, 0);
    const b = await acquire(p, 'close');
    assert.notEqual(b.processId, a.processId);
    p.release(b, true, false);
  });

  it('release(reset = true) runs DISCARD ALL: the next client finds no session state and no prepared statements', async () => {
    const p = tenantPool();
    const a = await acquire(p, 'reset');
    assert.equal((await query(a, "SET search_path = 'evil'")).status, 'I');
    assert.equal((await query(a, 'PREPARE q AS SELECT 1')).status, 'I');
    a.prepared.add('pgw_x');
    p.release(a, true, true);
    assert.equal(a.state, 'resetting');
    await waitFor(() => a.state === 'idle', 5_000, 'the reset to finish');
    assert.equal(a.prepared.size, 0);
    const b = await acquire(p, 'reset');
    assert.equal(b, a);
    assert.equal((await query(b, 'SHOW search_path')).values[0], '"$user", public');
    assert.equal((await query(b, 'EXECUTE q')).code, '26000');
    p.release(b, true, false);
  });

  it('a backend DISCARD ALL fails on (left inside a transaction) is closed, not pooled', async () => {
    const p = tenantPool();
    const a = await acquire(p, 'reset-fail');
    assert.equal((await query(a, 'BEGIN')).status, 'T');
    p.release(a, true, true);
    await waitFor(() => a.state === 'closed', 5_000, 'the backend to close');
    assert.equal(p.size.total, 0);
  });

  it('a cancel in flight holds the backend back from the next client until it is done', async () => {
    const p = tenantPool({ maxBackendConnections: 1 });
    const a = await acquire(p, 'cancel');
    let got: Backend | null = null;
    const waiter = acquire(p, 'cancel').then((b) => (got = b));
    a.cancelStarted();
    p.release(a, true, false);
    await sleep(50);
    assert.equal(got, null, 'not handed over while the cancel is in flight');
    assert.equal(a.state, 'resetting');
    a.cancelFinished();
    assert.equal(await waiter, a);
    p.release(a, true, false);
  });

  it('an idle backend the server closes is dropped', async () => {
    const p = tenantPool();
    const a = await acquire(p, 'server-close');
    p.release(a, true, false);
    await pg.query('SELECT pg_terminate_backend($1)', [a.processId]);
    await waitFor(() => a.state === 'closed', 5_000, 'the pool to notice');
    assert.equal(p.size.total, 0);
  });

  it('reaps idle backends past backend_idle_timeout or backend_lifetime, keeping min_idle, and forgets unused keys', async () => {
    const p = tenantPool({ maxBackendConnections: 3, backendIdleTimeoutMs: 1_000, backendLifetimeMs: 60_000, minIdleBackendConnections: 1 });
    const a = await acquire(p, 'reap');
    const b = await acquire(p, 'reap');
    p.release(a, true, false);
    p.release(b, true, false);
    p.reap(Date.now()); // nothing is old yet
    assert.equal(p.size.idle, 2);
    p.reap(Date.now() + 2_000); // idle too long: one goes, min_idle keeps one
    assert.equal(p.size.idle, 1);
    p.reap(Date.now() + 120_000); // past its lifetime: goes despite min_idle, and min_idle opens a new one
    assert.equal([a, b].filter((x) => x.state === 'closed').length, 2);
    await waitFor(() => p.size.idle >= 1, 5_000, 'min_idle to be topped up');
    await sleep(200);
    assert.deepEqual(p.size, { total: 1, idle: 1, active: 0, waiting: 0 }, 'min_idle opens what is missing, not up to max_backend_connections');
    p.reap(Date.now()); // a reap while one is being opened or idle opens no more
    await sleep(200);
    assert.equal(p.size.total, 1);
    assert.equal(p.keyCount, 1);

    const q = tenantPool({ backendIdleTimeoutMs: 1_000 });
    const c = await acquire(q, 'forget');
    q.release(c, false, false);
    assert.equal(q.keyCount, 1);
    q.reap(Date.now() + 2_000);
    assert.equal(q.keyCount, 0);
  });

  it('concurrent first logins of a key share one backend, which goes back idle', async () => {
    const p = tenantPool({ maxBackendConnections: 3 });
    const key = poolKey(login('first'));
    const [x, y] = await Promise.all([p.loginParameters(key, login('first'), target), p.loginParameters(key, login('first'), target)]);
    assert.equal(x, y);
    assert.equal(x.get('application_name'), 'first');
    assert.deepEqual(p.size, { total: 1, idle: 1, active: 0, waiting: 0 });
  });

  it('close() refuses waiters with 57P01 and closes idle backends', async () => {
    const p = tenantPool({ maxBackendConnections: 1 });
    const a = await acquire(p, 'shutdown');
    const waiter = acquire(p, 'shutdown');
    await sleep(20);
    p.close();
    await assert.rejects(waiter, { sqlstate: '57P01' });
    p.release(a, true, false); // an active backend closes when its session gives it back
    assert.equal(a.state, 'closed');
    assert.equal(p.size.total, 0);
    await assert.rejects(acquire(p, 'shutdown'), { sqlstate: '57P01' });
  });
});
