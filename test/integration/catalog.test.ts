/**
 * The tenant catalog against a real PostgreSQL: `pgwarden catalog init` (twice), the store's
 * validated writes, a CatalogSource following NOTIFY within a second and resyncing as the safety
 * net, the catalog killed (the last copy served, stale seconds rising, a new source starting from
 * the snapshot) and restarted (changes made meanwhile arrive).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { startCluster, type Cluster } from '../support/cluster.js';
import { sleep, waitFor } from '../support/wait.js';
import { makeScramVerifier } from '../../src/auth/scram.js';
import type { AuditEvent } from '../../src/audit/record.js';
import { parseConfigText } from '../../src/config/load.js';
import type { Config, TenantConfig } from '../../src/config/schema.js';
import { CatalogSource, CatalogUnavailableError, type CatalogSourceOptions } from '../../src/catalog/source.js';
import { CatalogRefusal, CatalogStore } from '../../src/catalog/store.js';
import { Metrics } from '../../src/observability/metrics.js';

const CLI = path.resolve('dist/src/cli.js');
const PW_ENV = 'PGWARDEN_TEST_CATALOG_PW';
const CATALOG_PW = 'catalog-admin-pw';
const USER_PASSWORD = 'app-password-never-logged';

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, [PW_ENV]: CATALOG_PW }, timeout: 60_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/** A source's world as a test sees it: every onChange, every audit record, every log line. */
interface Watched {
  source: CatalogSource;
  metrics: Metrics;
  changes: { at: number; tenants: ReadonlyMap<string, TenantConfig>; changed: readonly string[] }[];
  audit: AuditEvent[];
  logs: string[];
}

describe('tenant catalog (PostgreSQL)', () => {
  let pg: Cluster;
  let dir: string;
  let configFile: string;
  let config: Config;
  let store: CatalogStore;
  let verifier: string;
  const sources: CatalogSource[] = [];

  const body = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
    backend: 'postgresql://10.0.0.5:5432/app',
    backend_tls: 'disable',
    users: { app: { scram: verifier } },
    ...extra,
  });

  function configText(resync: string, snapshot = 'catalog-snapshot.json'): string {
    return `
[server]
listen = "127.0.0.1:0"
require_tls = false

[pool]
max_backend_connections = 9

[catalog]
url = "postgresql://catalog_admin@127.0.0.1:${pg.port}/catalog"
password_env = "${PW_ENV}"
snapshot_file = "${snapshot}"
resync_interval = "${resync}"
`;
  }

  async function watch(cfg: Config, extra: Partial<CatalogSourceOptions> = {}): Promise<Watched> {
    const metrics = new Metrics();
    const logs: string[] = [];
    const audit: AuditEvent[] = [];
    const changes: Watched['changes'] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        logs.push(chunk.toString('utf8'));
        cb();
      },
    });
    const source = await CatalogSource.start({
      config: cfg.catalog!,
      context: cfg,
      log: pino({ level: 'debug' }, sink),
      metrics,
      audit: { append: (e) => audit.push(e) },
      onChange: (tenants, changed) => changes.push({ at: Date.now(), tenants, changed }),
      reconnectMinMs: 100,
      reconnectMaxMs: 500,
      ...extra,
    });
    sources.push(source);
    return { source, metrics, changes, audit, logs };
  }

  async function staleGauge(m: Metrics): Promise<number> {
    const g = await m.registry.getSingleMetric('pgwarden_catalog_stale_seconds')!.get();
    return g.values[0]?.value ?? NaN;
  }

  before(async () => {
    process.env[PW_ENV] = CATALOG_PW;
    pg = await startCluster({ users: [{ name: 'catalog_admin', password: CATALOG_PW }], databases: ['catalog'] });
    await pg.query('ALTER DATABASE catalog OWNER TO catalog_admin');
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-catalog-'));
    configFile = path.join(dir, 'pgwarden.toml');
    const { writeFile } = await import('node:fs/promises');
    await writeFile(configFile, configText('1h'));
    config = parseConfigText(configText('1h'), dir);
    store = new CatalogStore(config.catalog!, config);
    verifier = await makeScramVerifier(USER_PASSWORD, 4096);
  });

  after(async () => {
    for (const s of sources) await s.close();
    await store?.close();
    await pg?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    Reflect.deleteProperty(process.env, PW_ENV);
  });

  it('catalog init creates the tables and trigger once, and is idempotent', async () => {
    const first = await cli(['catalog', 'init', '--config', configFile]);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /created tenant catalog pgwarden_catalog\.tenants/);
    const second = await cli(['catalog', 'init', '--config', configFile]);
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stdout, /exists; trigger checked/);
    assert.equal(await store.init(), false);
    const triggers = await pg.query<{ n: string }>(
      "SELECT count(*) AS n FROM pg_trigger WHERE tgrelid = 'pgwarden_catalog.tenants'::regclass AND NOT tgisinternal",
      [],
      'catalog',
    );
    assert.equal(Number(triggers.rows[0]!.n), 2);
    assert.ok(!first.stdout.includes(CATALOG_PW) && !first.stderr.includes(CATALOG_PW));
  });

  it('put, get and delete a tenant; put replaces', async () => {
    const created = await store.put('acme', body());
    assert.equal(created.created, true);
    assert.equal(created.tenant.pool.maxBackendConnections, 9, 'the [pool] default of the config applies');
    const row = await store.get('acme');
    assert.deepEqual(row?.body, body());
    assert.ok(row.updatedAt instanceof Date);
    const replaced = await store.put('acme', body({ max_client_connections: 7 }));
    assert.equal(replaced.created, false);
    assert.equal((await store.get('acme'))?.body['max_client_connections'], 7);
    assert.deepEqual((await store.all()).map((r) => r.id), ['acme']);
    assert.equal(await store.delete('acme'), true);
    assert.equal(await store.get('acme'), undefined);
    assert.equal(await store.delete('acme'), false);
  });

  it('refuses a bad body naming the key, and stores nothing', async () => {
    await assert.rejects(store.put('acme', body({ max_backend_connections: 0 })), (err: unknown) => {
      assert.ok(err instanceof CatalogRefusal);
      assert.equal(err.reason, 'invalid');
      assert.deepEqual(err.problems, ['tenants.acme.max_backend_connections: must be an integer from 1 to 100000']);
      return true;
    });
    await assert.rejects(store.put('Not_A_Label', body()), /tenants\.Not_A_Label: tenant id must be a lower-case DNS label/);
    assert.equal(await store.get('acme'), undefined);
  });

  it('users: a verifier is accepted, a plaintext password refused without echoing it; FOR UPDATE keeps concurrent writes', async () => {
    await store.put('acme', body());
    await assert.rejects(store.putUser('acme', 'bob', { password: USER_PASSWORD }), (err: unknown) => {
      assert.ok(err instanceof CatalogRefusal);
      assert.ok(err.problems.some((p) => p.startsWith('tenants.acme.users.bob.password:')), err.problems.join(' | '));
      assert.ok(!err.message.includes(USER_PASSWORD));
      return true;
    });
    await assert.rejects(store.putUser('acme', 'bob', { scram: 'not-a-verifier' }), /tenants\.acme\.users\.bob\.scram: not a SCRAM-SHA-256 verifier/);
    // Concurrent user writes on two connections: each under FOR UPDATE, neither lost.
    const other = new CatalogStore(config.catalog!, config);
    try {
      const results = await Promise.all([
        store.putUser('acme', 'bob', { scram: verifier }),
        other.putUser('acme', 'carol', { scram: verifier, max_connections: 2 }),
      ]);
      assert.deepEqual(results, [{ created: true }, { created: true }]);
    } finally {
      await other.close();
    }
    const users = (await store.get('acme'))?.body['users'] as Record<string, unknown>;
    assert.deepEqual(Object.keys(users).sort(), ['app', 'bob', 'carol']);
    assert.equal(await store.deleteUser('acme', 'bob'), true);
    assert.equal(await store.deleteUser('acme', 'bob'), false);
    await assert.rejects(store.putUser('nope', 'bob', { scram: verifier }), (err: unknown) => err instanceof CatalogRefusal && err.reason === 'not_found');
    await store.delete('acme');
  });

  it('a NOTIFY reaches a CatalogSource within a second (add, change, delete); an invalid row is never served', async () => {
    await store.put('acme', body());
    const w = await watch(config);
    assert.deepEqual([...w.source.tenants.keys()], ['acme']);
    assert.equal(w.source.staleSeconds, 0);
    assert.equal(await staleGauge(w.metrics), 0);

    for (const [what, write, check] of [
      ['insert', () => store.put('globex', body()), (t: ReadonlyMap<string, TenantConfig>) => t.has('globex')],
      ['update', () => store.put('globex', body({ max_client_connections: 3 })), (t: ReadonlyMap<string, TenantConfig>) => t.get('globex')?.maxClientConnections === 3],
      ['delete', () => store.delete('globex'), (t: ReadonlyMap<string, TenantConfig>) => !t.has('globex')],
    ] as const) {
      const t0 = Date.now();
      await write();
      await waitFor(() => w.changes.some((c) => c.at >= t0 && c.changed.includes('globex') && check(c.tenants)), 1000, `${what} reaching the source`);
      assert.ok(check(w.source.tenants), what);
    }

    // A row written behind the store's back that validation refuses: logged, counted, not served.
    const before = w.changes.length;
    await pg.query(`INSERT INTO pgwarden_catalog.tenants (id, body) VALUES ('broken', $1::jsonb)`, [JSON.stringify(body({ users: { x: { password: USER_PASSWORD } } }))], 'catalog');
    await waitFor(() => w.logs.some((l) => l.includes('invalid row, not served')), 1000, 'the invalid row logged');
    assert.equal(w.source.tenants.has('broken'), false);
    assert.equal(w.changes.length, before);
    assert.ok(w.logs.some((l) => l.includes('tenants.broken.users.x.password')));
    for (const l of w.logs) assert.ok(!l.includes(USER_PASSWORD) && !l.includes(verifier), `a secret in the log: ${l}`);
    await pg.query(`DELETE FROM pgwarden_catalog.tenants WHERE id = 'broken'`, [], 'catalog');

    // A reloaded file with other [pool] defaults: every tenant validated again, reported as changed.
    assert.equal(w.source.tenants.get('acme')?.pool.maxBackendConnections, 9);
    w.source.setContext(parseConfigText(configText('1h').replace('max_backend_connections = 9', 'max_backend_connections = 4'), dir));
    assert.equal(w.source.tenants.get('acme')?.pool.maxBackendConnections, 4);
    assert.deepEqual(w.changes.at(-1)?.changed, ['acme']);
  });

  it('a snapshot_file that cannot be written is a start-up error', async () => {
    const cfg = parseConfigText(configText('1h', 'no-such-dir/snapshot.json'), dir);
    await assert.rejects(watch(cfg), (err: unknown) => err instanceof CatalogUnavailableError && /catalog\.snapshot_file .*no-such-dir\/snapshot\.json cannot be written/.test(err.message));
  });

  it('the periodic resync catches a change whose NOTIFY never came', async () => {
    const cfg = parseConfigText(configText('1s', 'resync-snapshot.json'), dir);
    const w = await watch(cfg);
    await pg.query('ALTER TABLE pgwarden_catalog.tenants DISABLE TRIGGER tenants_notify', [], 'catalog');
    try {
      await store.put('initech', body());
      await sleep(300);
      assert.equal(w.source.tenants.has('initech'), false, 'no NOTIFY: not there before the resync');
      await waitFor(() => w.source.tenants.has('initech'), 2500, 'the resync');
    } finally {
      await pg.query('ALTER TABLE pgwarden_catalog.tenants ENABLE TRIGGER tenants_notify', [], 'catalog');
    }
    await store.delete('initech');
    await waitFor(() => !w.source.tenants.has('initech'), 1000, 'the delete');

    // A refused row is logged once, not at every resync, and stays unserved.
    const invalid = (): number => w.logs.filter((l) => l.includes('invalid row')).length;
    await pg.query(`INSERT INTO pgwarden_catalog.tenants (id, body) VALUES ('broken2', '{"backend": 5}'::jsonb)`, [], 'catalog');
    await waitFor(() => invalid() === 1, 1000, 'the invalid row logged');
    const resyncs = async (): Promise<number> => (await w.metrics.registry.getSingleMetric('pgwarden_catalog_resyncs_total')!.get()).values.reduce((a, v) => a + v.value, 0);
    const r0 = await resyncs();
    await waitFor(async () => (await resyncs()) >= r0 + 2, 3500, 'two more resyncs');
    assert.equal(invalid(), 1);
    assert.equal(w.source.tenants.has('broken2'), false);
    await pg.query(`DELETE FROM pgwarden_catalog.tenants WHERE id = 'broken2'`, [], 'catalog');
  });

  it('catalog down: the last copy is served, stale seconds rise, a new source starts from the snapshot; back up: changes made meanwhile arrive', async () => {
    await store.put('acme', body());
    await store.put('globex', body({ max_client_connections: 5 }));
    // Reconnects every 3 s: the changes below are made while the source is certainly not connected.
    const w = await watch(config, { reconnectMinMs: 3000, reconnectMaxMs: 3000 });
    assert.deepEqual([...w.source.tenants.keys()].sort(), ['acme', 'globex']);
    await w.source.snapshotWritten();
    const snapshotFile = config.catalog!.snapshotFile;
    assert.equal((await stat(snapshotFile)).mode & 0o777, 0o600);
    assert.ok((await readFile(snapshotFile, 'utf8')).includes('"globex"'));

    await pg.killHard();
    await waitFor(() => !w.source.connected, 5000, 'the source noticing the catalog is gone');
    const served = w.source.tenants;
    assert.equal(served.get('globex')?.maxClientConnections, 5, 'still served');
    const s1 = await staleGauge(w.metrics);
    await sleep(400);
    const s2 = await staleGauge(w.metrics);
    assert.ok(s1 >= 0 && s2 > s1 && s2 >= 0.4, `stale seconds rising: ${s1} then ${s2}`);
    const enter = w.audit.find((e) => e.event === 'catalog.degraded' && e['state'] === 'enter');
    assert.ok(enter !== undefined, 'catalog.degraded enter audited');
    assert.ok(w.logs.some((l) => l.includes('tenant catalog connection lost')));

    // A new instance starting now: serves the snapshot, and says it is stale.
    const fresh = await watch(config, { reconnectMinMs: 3000, reconnectMaxMs: 3000 });
    assert.equal(fresh.source.tenants.get('globex')?.maxClientConnections, 5);
    assert.ok(fresh.source.tenants.has('acme'));
    assert.equal(fresh.source.connected, false);
    assert.ok((await staleGauge(fresh.metrics)) > 0);
    assert.ok(fresh.audit.some((e) => e.event === 'catalog.degraded' && e['state'] === 'enter' && e['served_from'] === 'snapshot'));
    // Neither catalog nor snapshot: a clear start-up error.
    const noSnapshot = parseConfigText(configText('1h', 'missing/none.json'), dir);
    await assert.rejects(watch(noSnapshot), (err: unknown) => {
      assert.ok(err instanceof CatalogUnavailableError);
      assert.match(err.message, /tenant catalog unreachable .* and no snapshot at .*none\.json/);
      assert.ok(!err.message.includes(CATALOG_PW));
      return true;
    });

    // Back up; changes are made before either source has reconnected.
    await pg.restart();
    await pg.query(`UPDATE pgwarden_catalog.tenants SET body = jsonb_set(body, '{max_client_connections}', '11') WHERE id = 'globex'`, [], 'catalog');
    await pg.query(`DELETE FROM pgwarden_catalog.tenants WHERE id = 'acme'`, [], 'catalog');
    await pg.query(`INSERT INTO pgwarden_catalog.tenants (id, body) VALUES ('umbrella', $1::jsonb)`, [JSON.stringify(body())], 'catalog');
    assert.equal(w.source.connected, false, 'the changes were made while the source was disconnected');
    for (const x of [w, fresh]) {
      await waitFor(() => x.source.tenants.get('globex')?.maxClientConnections === 11 && !x.source.tenants.has('acme') && x.source.tenants.has('umbrella'), 8000, 'the changes made meanwhile').catch((err: unknown) => {
        throw new Error(`${String(err)}\n${x.logs.join('')}`);
      });
      assert.equal(x.source.connected, true);
      assert.equal(await staleGauge(x.metrics), 0);
      const exit = x.audit.find((e) => e.event === 'catalog.degraded' && e['state'] === 'exit');
      assert.ok(exit !== undefined && typeof exit['stale_seconds'] === 'number' && exit['stale_seconds'] > 0.4, `catalog.degraded exit audited: ${JSON.stringify(exit)}`);
      const last = x.changes.at(-1)!;
      assert.deepEqual([...last.changed].sort(), ['acme', 'globex', 'umbrella']);
      for (const e of x.audit) assert.ok(!JSON.stringify(e).includes(verifier));
    }
    // Caught up, the snapshot follows: it holds what the catalog now holds.
    await w.source.snapshotWritten();
    const snap = JSON.parse(await readFile(snapshotFile, 'utf8')) as { tenants: Record<string, unknown> };
    assert.deepEqual(Object.keys(snap.tenants).sort(), ['globex', 'umbrella']);
    // And NOTIFY works again on the new connection.
    await store.put('hooli', body());
    await waitFor(() => w.source.tenants.has('hooli'), 1000, 'a NOTIFY after the reconnect');
  });
});
