/**
 * A pgwarden serving its tenants from the catalog (issue 13, the wiring): a tenant written to the
 * catalog serves logins within a second, without a reload; a changed limit applies to new sessions;
 * a deleted or disabled tenant's sessions end with 57P01 and its logins get the same 28P01 as a
 * wrong password. Real PostgreSQL for both the catalog and the tenant's server, real clients.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, connect, clientConfig, connectError, type RunningProxy } from '../support/proxy.js';
import { waitFor } from '../support/wait.js';
import { parseConfigText } from '../../src/config/load.js';
import { CatalogStore } from '../../src/catalog/store.js';

const PW_ENV = 'PGWARDEN_TEST_CATALOG_SERVE_PW';
const CATALOG_PW = 'catalog-serve-secret';

describe('serving tenants from the catalog', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  let store: CatalogStore;
  let dir: string;
  let verifier: string;
  const clients: pg.Client[] = [];

  const body = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
    backend: cluster.url('postgres'),
    backend_tls: 'disable',
    allow_cidrs: ['0.0.0.0/0', '::/0'],
    users: { app: { scram: verifier } },
    ...extra,
  });
  const login = (tenant: string, password = 'app-pass'): Promise<pg.Client> =>
    connect(rp, { tenant, user: 'app', password }).then((c) => {
      clients.push(c);
      c.on('error', () => undefined);
      return c;
    });

  before(async () => {
    process.env[PW_ENV] = CATALOG_PW;
    cluster = await startCluster({
      users: [
        { name: 'app', password: 'app-pass' },
        { name: 'catalog_admin', password: CATALOG_PW },
      ],
      databases: ['catalog'],
    });
    await cluster.query('ALTER DATABASE catalog OWNER TO catalog_admin');
    verifier = await readVerifier(cluster, 'app');
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-catalog-serve-'));
    const catalog = {
      url: `postgresql://catalog_admin@127.0.0.1:${cluster.port}/catalog`,
      password_env: PW_ENV,
      snapshot_file: path.join(dir, 'snapshot.json'),
      resync_interval: '1h', // only LISTEN/NOTIFY can make the tests below pass in time
    };
    const cfg = parseConfigText(
      `[server]\nlisten = "127.0.0.1:0"\nrequire_tls = false\n\n[catalog]\nurl = "${catalog.url}"\npassword_env = "${PW_ENV}"\nsnapshot_file = "${catalog.snapshot_file}"\n`,
      dir,
    );
    store = new CatalogStore(cfg.catalog!, cfg);
    await store.init();
    rp = await startProxy({ tenants: [], catalog });
  });

  after(async () => {
    for (const c of clients) await c.end().catch(() => undefined);
    await rp?.close();
    await store?.close();
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    Reflect.deleteProperty(process.env, PW_ENV);
  });

  it('a tenant written to the catalog serves a login within a second, with no reload', async () => {
    const refused = await connectError(clientConfig(rp, { tenant: 'acme', user: 'app', password: 'app-pass' }));
    assert.equal(refused.code, '28P01', 'not there yet: the same answer as a wrong password');
    await store.put('acme', body());
    const written = Date.now();
    let c: pg.Client | null = null;
    await waitFor(
      async () => {
        c = await login('acme').catch(() => null);
        return c !== null;
      },
      1_000,
      'a login of the new tenant within a second of the commit',
    );
    assert.ok(Date.now() - written < 1_000);
    const r = await c!.query<{ n: number }>('select 1 as n');
    assert.equal(r.rows[0]?.n, 1);
  });

  it('a changed limit applies to new sessions; the running ones keep theirs', async () => {
    await store.put('capped', body({ max_client_connections: 5 }));
    await waitFor(async () => (await login('capped').catch(() => null)) !== null, 2_000, 'capped serves');
    const first = clients[clients.length - 1]!;
    const second = await login('capped');
    const third = await login('capped');
    // Three sessions are open; a cap of 3 refuses a fourth, and the three go on.
    await store.put('capped', body({ max_client_connections: 3 }));
    // Until the change arrives a fourth login still succeeds: it is closed again and tried anew.
    const refusedByCap = async (): Promise<boolean> => {
      const c = await connect(rp, { tenant: 'capped', user: 'app', password: 'app-pass' }).catch((e: unknown) =>
        e instanceof Error ? e : new Error(String(e)),
      );
      if (c instanceof Error) return (c as Error & { code?: string }).code === '53300';
      await c.end();
      return false;
    };
    await waitFor(refusedByCap, 2_000, 'the new cap refuses a fourth session');
    for (const c of [first, second, third]) assert.equal((await c.query<{ n: number }>('select 2 as n')).rows[0]?.n, 2);
  });

  it("a deleted tenant's sessions end with 57P01, and its logins get the wrong-password 28P01", async () => {
    await store.put('gone', body());
    await waitFor(async () => (await login('gone').catch(() => null)) !== null, 2_000, 'gone serves');
    const c = clients[clients.length - 1]!;
    const ended = new Promise<{ code?: string }>((resolve) => c.once('error', (e: Error & { code?: string }) => resolve(e)));
    assert.equal(await store.delete('gone'), true);
    const err = await ended;
    assert.equal(err.code, '57P01');
    const wrong = await connectError(clientConfig(rp, { tenant: 'acme', user: 'app', password: 'wrong' }));
    const refused = await connectError(clientConfig(rp, { tenant: 'gone', user: 'app', password: 'app-pass' }));
    assert.deepEqual([refused.code, refused.message.replace('"app"', '')], [wrong.code, wrong.message.replace('"app"', '')]);
  });

  it("a disabled tenant's sessions end with 57P01 too", async () => {
    await store.put('paused', body());
    await waitFor(async () => (await login('paused').catch(() => null)) !== null, 2_000, 'paused serves');
    const c = clients[clients.length - 1]!;
    const ended = new Promise<{ code?: string }>((resolve) => c.once('error', (e: Error & { code?: string }) => resolve(e)));
    await store.put('paused', body({ enabled: false }));
    assert.equal((await ended).code, '57P01');
  });
});
