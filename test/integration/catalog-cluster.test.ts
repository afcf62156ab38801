/**
 * The tenant catalog across instances (issue 13's "done when"): two pgwarden processes (one with
 * two workers) share a real Redis and follow one catalog in a real PostgreSQL; tenants are managed
 * through the admin API of one and served by the other. A tenant created on one instance serves a
 * login on the other within a second; a changed limit applies to new sessions; a disabled or
 * deleted tenant's sessions end 57P01 and its logins get the wrong password's 28P01; a bad body is
 * refused naming the key; the catalog killed mid-run leaves known tenants served, also by an
 * instance restarted during the outage (from its snapshot); changes made while the instances could
 * not reach the catalog arrive when they can again; every call is in the audit, no verifier is.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { spawnProxy, clientConfig, configToml, connectError, testCerts, type ChildProxy, type ProxySpec, type TomlValue } from '../support/proxy.js';
import { startRedis, type RedisServer } from '../support/redis.js';
import { waitFor } from '../support/wait.js';
import type { DevCerts } from '../../src/tools/dev-certs.js';

const TOKEN = 'catalog-cluster-admin-token-4f1e';
const TOKEN_SHA256 = createHash('sha256').update(TOKEN).digest('hex');
const PW_ENV = 'PGWARDEN_TEST_CATALOG_CLUSTER_PW';
const CATALOG_PW = 'catalog-cluster-secret';

interface Reply {
  status: number;
  body: Record<string, unknown>;
  text: string;
}

function admin(port: number, method: string, urlPath: string, body?: unknown): Promise<Reply> {
  const text = body === undefined ? undefined : JSON.stringify(body);
  const headers: Record<string, string> = { authorization: `Bearer ${TOKEN}` };
  if (text !== undefined) Object.assign(headers, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) });
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: urlPath, method, headers, agent: false }, (res) => {
      let out = '';
      res.on('data', (d: Buffer) => (out += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(out) as Record<string, unknown>, text: out }));
    });
    req.on('error', reject);
    req.end(text);
  });
}

async function metric(port: number, name: string): Promise<number | undefined> {
  const text = await new Promise<string>((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (res) => {
        let out = '';
        res.on('data', (d: Buffer) => (out += d.toString()));
        res.on('end', () => resolve(out));
      })
      .on('error', reject);
  });
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.split(' ')[1]);
}

describe('the tenant catalog across instances, managed through the admin API', () => {
  let catalogDb: Cluster;
  let tenantDb: Cluster;
  let redis: RedisServer;
  let certs: DevCerts;
  let dir: string;
  let verifier: string;
  /** Two workers; its admin API is where the tenants are managed. */
  let a: ChildProxy;
  /** One process, restarted during the outage. */
  let b: ChildProxy;
  let specB: ProxySpec;
  const clients: pg.Client[] = [];

  const body = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
    backend: tenantDb.url('postgres'),
    backend_tls: 'disable',
    allow_cidrs: ['127.0.0.0/8', '::1/128'],
    users: { app: { scram: verifier } },
    ...extra,
  });
  const loginCfg = (p: ChildProxy, tenant: string, password = 'app-pass'): pg.ClientConfig =>
    clientConfig({ port: p.port, certs }, { tenant, user: 'app', password });
  const login = async (p: ChildProxy, tenant: string): Promise<pg.Client> => {
    const c = new pg.Client(loginCfg(p, tenant));
    c.on('error', () => undefined);
    await c.connect();
    clients.push(c);
    return c;
  };
  /** Resolves with the SQLSTATE the session is ended with. */
  const endedWith = (c: pg.Client): Promise<string | undefined> =>
    new Promise((resolve) => c.once('error', (err: Error & { code?: string }) => resolve(err.code)));
  /** Logs in until it works (the change is on its way); the time it took from `since`. */
  const firstLogin = async (p: ChildProxy, tenant: string, since: number, within: number): Promise<number> => {
    let last = '';
    await waitFor(
      async () => {
        const c = await login(p, tenant).catch((err: unknown) => ((last = String((err as { code?: string }).code ?? err)), null));
        return c !== null;
      },
      within,
      `a login of ${tenant} on ${p === a ? 'a' : 'b'} (last refusal: ${last})`,
    );
    return Date.now() - since;
  };

  before(async () => {
    process.env[PW_ENV] = CATALOG_PW;
    certs = await testCerts();
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-catalog-cluster-'));
    catalogDb = await startCluster({ users: [{ name: 'pgwarden', password: CATALOG_PW }], databases: ['catalog'] });
    await catalogDb.query('ALTER DATABASE catalog OWNER TO pgwarden');
    tenantDb = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    verifier = await readVerifier(tenantDb, 'app');
    redis = await startRedis();
    const catalog = (name: string): Record<string, TomlValue> => ({
      url: `postgresql://pgwarden@127.0.0.1:${catalogDb.port}/catalog`,
      password_env: PW_ENV,
      snapshot_file: path.join(dir, `${name}.snapshot.json`),
      resync_interval: '1h', // only LISTEN/NOTIFY and the resync at reconnect can pass the tests in time
    });
    const common = { tenants: [], redis: { url: redis.url }, admin: { token_sha256: TOKEN_SHA256 } };
    // `pgwarden catalog init` is what an operator runs first.
    const init = await spawnProxy({ ...common, catalog: catalog('init') }, { [PW_ENV]: CATALOG_PW }).catch((err: unknown) => err);
    assert.ok(init instanceof Error, 'no catalog tables yet: a clear start-up error, not a proxy serving nothing');
    assert.match(init.message, /^proxy exited with 1/, 'it exits (its Redis connection does not keep it alive)');
    assert.match(init.message, /its tables are missing: run "pgwarden catalog init --config FILE"/);
    const cli = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../src/cli.js');
    const initConfig = path.join(dir, 'init.toml');
    await writeFile(initConfig, configToml({ ...common, catalog: catalog('init') }, certs));
    execFileSync(process.execPath, [cli, 'catalog', 'init', '--config', initConfig], { env: { ...process.env, [PW_ENV]: CATALOG_PW } });

    a = await spawnProxy({ ...common, auditFile: path.join(dir, 'a.audit.jsonl'), server: { workers: 2, worker_accept: 'primary' }, catalog: catalog('a') }, { [PW_ENV]: CATALOG_PW });
    specB = { ...common, auditFile: path.join(dir, 'b.audit.jsonl'), catalog: catalog('b') };
    b = await spawnProxy(specB, { [PW_ENV]: CATALOG_PW });
  });

  after(async () => {
    for (const c of clients) await c.end().catch(() => undefined);
    await a?.stop();
    await b?.stop();
    await redis?.stop();
    await catalogDb?.stop();
    await tenantDb?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    Reflect.deleteProperty(process.env, PW_ENV);
  });

  it('a tenant created through one instance serves a login on the other, and on every worker, within a second', async () => {
    const before = await connectError(loginCfg(b, 'acme'));
    assert.equal(before.code, '28P01', 'not there yet: the answer to a wrong password');
    const put = await admin(a.adminPort!, 'PUT', '/tenants/acme', body());
    assert.equal(put.status, 201, put.text);
    const written = Date.now();
    const onB = await firstLogin(b, 'acme', written, 1_000);
    assert.ok(onB < 1_000, `${onB} ms to the first login on the other instance`);
    // Both of a's workers follow the catalog: consecutive logins alternate between them (the primary's
    // round robin, on any Node: worker_accept = "primary"; with reuseport the kernel's hash would decide).
    for (let i = 0; i < 6; i++) await firstLogin(a, 'acme', written, 1_000);
    const listed = await admin(a.adminPort!, 'GET', '/sessions?tenant=acme');
    const workers = new Set((listed.body['sessions'] as { worker: number }[]).map((s) => s.worker));
    assert.equal(workers.size, 2, `sessions on both workers: ${listed.text}`);
    const got = await admin(b.adminPort!, 'GET', '/tenants/acme');
    assert.equal(got.status, 200, got.text);
    assert.deepEqual((got.body['body'] as { users: unknown }).users, { app: {} }, 'the verifier is not read back');
  });

  it('a changed limit applies to new sessions; the running ones keep going', async () => {
    // The cap counts the tenant's sessions on every instance (through Redis): already more than 2.
    const running = [await login(b, 'acme'), await login(b, 'acme')];
    const put = await admin(a.adminPort!, 'PUT', '/tenants/acme', body({ max_client_connections: 2 }));
    assert.equal(put.status, 200, put.text);
    await waitFor(async () => (await connectError(loginCfg(b, 'acme')).catch(() => ({ code: 'ok' }))).code === '53300', 1_000, 'the new cap refuses a login');
    for (const c of running) assert.equal((await c.query<{ n: number }>('select 1 as n')).rows[0]?.n, 1);
    const lifted = await admin(a.adminPort!, 'PUT', '/tenants/acme', body());
    assert.equal(lifted.status, 200, lifted.text);
    await firstLogin(b, 'acme', Date.now(), 1_000);
  });

  it("a disabled or deleted tenant's sessions end with 57P01 on every instance; its logins get the wrong password's 28P01", async () => {
    const wrong = await connectError(loginCfg(b, 'acme', 'not-the-password'));
    assert.equal(wrong.code, '28P01');
    const sessions = [await login(a, 'acme'), await login(b, 'acme')];
    const ends = sessions.map(endedWith);
    const put = await admin(a.adminPort!, 'PUT', '/tenants/acme', body({ enabled: false }));
    assert.equal(put.status, 200, put.text);
    assert.deepEqual(await Promise.all(ends), ['57P01', '57P01']);
    for (const p of [a, b]) {
      const refused = await connectError(loginCfg(p, 'acme'));
      assert.deepEqual({ code: refused.code, message: refused.message }, { code: wrong.code, message: wrong.message });
    }

    assert.equal((await admin(a.adminPort!, 'PUT', '/tenants/globex', body())).status, 201);
    const doomed = await firstLogin(b, 'globex', Date.now(), 1_000).then(() => clients[clients.length - 1]!);
    const ended = endedWith(doomed);
    const del = await admin(a.adminPort!, 'DELETE', '/tenants/globex');
    assert.equal(del.status, 200, del.text);
    assert.equal(await ended, '57P01');
    const refused = await connectError(loginCfg(b, 'globex'));
    assert.deepEqual({ code: refused.code, message: refused.message }, { code: wrong.code, message: wrong.message });
    assert.equal((await admin(a.adminPort!, 'GET', '/tenants/globex')).status, 404);
    assert.equal((await admin(a.adminPort!, 'PUT', '/tenants/acme', body())).status, 200);
    await firstLogin(b, 'acme', Date.now(), 1_000);
  });

  it('users are managed one by one, with a verifier; a bad body is refused naming the key, and nothing is written', async () => {
    const addUser = await admin(a.adminPort!, 'PUT', '/tenants/acme/users/reporting', { scram: verifier, backend_user: 'app' });
    assert.equal(addUser.status, 201, addUser.text);
    const reporting = clientConfig({ port: b.port, certs }, { tenant: 'acme', user: 'reporting', password: 'app-pass' });
    await waitFor(
      async () => {
        const c = new pg.Client(reporting);
        c.on('error', () => undefined); // ended later on purpose (the user is removed)
        return c.connect().then(
          () => (clients.push(c), true),
          () => false,
        );
      },
      1_000,
      'the new user logs in on the other instance',
    );
    const plain = await admin(a.adminPort!, 'PUT', '/tenants/acme/users/intern', { password: 'app-pass' });
    assert.equal(plain.status, 400, plain.text);
    assert.ok(
      (plain.body['problems'] as string[]).some((p) => p.startsWith('tenants.acme.users.intern.password: not accepted')),
      plain.text,
    );
    assert.ok(!plain.text.includes('app-pass'), 'the password is not echoed');

    const bad = await admin(a.adminPort!, 'PUT', '/tenants/acme', body({ max_client_connections: 'lots', pool_mode: 'sometimes' }));
    assert.equal(bad.status, 400, bad.text);
    const problems = bad.body['problems'] as string[];
    assert.ok(
      problems.some((p) => p.startsWith('tenants.acme.max_client_connections:')),
      bad.text,
    );
    assert.ok(
      problems.some((p) => p.startsWith('tenants.acme.pool_mode:')),
      bad.text,
    );
    const still = await admin(a.adminPort!, 'GET', '/tenants/acme');
    assert.equal((still.body['body'] as Record<string, unknown>)['max_client_connections'], undefined, 'nothing written');
    assert.equal((await admin(a.adminPort!, 'DELETE', '/tenants/acme/users/reporting')).status, 200);
  });

  it('the catalog killed mid-run: known tenants go on, also after a restart from the snapshot; it catches up when the catalog returns', async () => {
    assert.equal((await admin(a.adminPort!, 'PUT', '/tenants/initech', body())).status, 201);
    await firstLogin(b, 'initech', Date.now(), 1_000);
    await catalogDb.killHard();
    await firstLogin(a, 'acme', Date.now(), 1_000);
    await firstLogin(b, 'initech', Date.now(), 1_000);
    await waitFor(async () => ((await metric(b.metricsPort!, 'pgwarden_catalog_stale_seconds')) ?? 0) > 0, 5_000, 'b says its copy is stale');
    const refused = await admin(a.adminPort!, 'PUT', '/tenants/hooli', body());
    assert.deepEqual({ status: refused.status, body: refused.body }, { status: 503, body: { error: 'tenant catalog unavailable' } });

    // The snapshot follows the served copy within a few write times (SNAPSHOT_SHARE in catalog/source.ts).
    await waitFor(async () => (await readFile(path.join(dir, 'b.snapshot.json'), 'utf8')).includes('"initech"'), 1_000, "b's snapshot holds the last change");
    await b.stop();
    b = await spawnProxy(specB, { [PW_ENV]: CATALOG_PW });
    await firstLogin(b, 'acme', Date.now(), 1_000);
    await firstLogin(b, 'initech', Date.now(), 1_000);
    assert.match(b.logs(), /tenant catalog unreachable at start: serving the snapshot/, 'b says it serves from the snapshot');

    await catalogDb.restart();
    await waitFor(async () => (await metric(b.metricsPort!, 'pgwarden_catalog_stale_seconds')) === 0, 15_000, 'b back in sync');
    const put = await admin(a.adminPort!, 'PUT', '/tenants/hooli', body());
    assert.equal(put.status, 201, put.text);
    await firstLogin(b, 'hooli', Date.now(), 1_000);
  });

  it('changes made while the instances cannot reach the catalog arrive when they can again', async () => {
    // An outage for the instances only: their role may not log in, their connections are cut.
    await catalogDb.query('ALTER ROLE pgwarden NOLOGIN');
    await catalogDb.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'pgwarden'");
    await waitFor(async () => ((await metric(b.metricsPort!, 'pgwarden_catalog_stale_seconds')) ?? 0) > 0, 5_000, 'b lost the catalog');
    // Meanwhile an operator changes the catalog: nobody is listening to these NOTIFYs.
    await catalogDb.query("INSERT INTO pgwarden_catalog.tenants (id, body) VALUES ('umbrella', $1::jsonb)", [JSON.stringify(body())], 'catalog');
    await catalogDb.query("DELETE FROM pgwarden_catalog.tenants WHERE id = 'initech'", [], 'catalog');
    const early = await connectError(loginCfg(b, 'umbrella')).catch((err: unknown) => {
      // On failure, what b's catalog source did (for a race this test has shown once and not since).
      console.log(
        'b catalog log:',
        b
          .logs()
          .split('\n')
          .filter((l) => /catalog/.test(l))
          .join('\n'),
      );
      throw err;
    });
    assert.equal(early.code, '28P01', 'not seen while cut off');
    const initechSession = await login(b, 'initech');
    const ended = endedWith(initechSession);
    await catalogDb.query('ALTER ROLE pgwarden LOGIN');
    const back = Date.now();
    await firstLogin(b, 'umbrella', back, 10_000);
    await firstLogin(a, 'umbrella', back, 10_000);
    assert.equal(await ended, '57P01', 'the tenant deleted meanwhile has its sessions ended');
    assert.equal((await connectError(loginCfg(a, 'initech'))).code, '28P01');
  });

  it('every call is an admin.command audit record naming its target; no verifier is in any audit record', async () => {
    await a.stop();
    const text = await readFile(path.join(dir, 'a.audit.jsonl'), 'utf8');
    const recs = text
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as { event: string; command?: string; target?: Record<string, string> | null; outcome?: { status: number } });
    const calls = recs.filter((r) => r.event === 'admin.command').map((r) => `${r.command} ${JSON.stringify(r.target)} ${r.outcome?.status}`);
    for (const want of [
      'tenant.put {"tenant":"acme"} 201',
      'tenant.put {"tenant":"acme"} 200',
      'tenant.put {"tenant":"acme"} 400',
      'tenant.get {"tenant":"acme"} 200',
      'tenant.delete {"tenant":"globex"} 200',
      'tenant.get {"tenant":"globex"} 404',
      'tenant.user.put {"tenant":"acme","user":"reporting"} 201',
      'tenant.user.put {"tenant":"acme","user":"intern"} 400',
      'tenant.user.delete {"tenant":"acme","user":"reporting"} 200',
      'tenant.put {"tenant":"hooli"} 503',
      'tenant.put {"tenant":"hooli"} 201',
      'sessions.list {"tenant":"acme"} 200',
    ]) {
      assert.ok(calls.includes(want), `${want} in ${calls.join('\n')}`);
    }
    for (const file of ['a.audit.jsonl', 'b.audit.jsonl']) {
      const t = await readFile(path.join(dir, file), 'utf8');
      assert.ok(!t.includes('SCRAM-SHA-256$') && !t.includes(verifier.split('$')[2]!), `${file}: no verifier`);
      assert.ok(!t.includes('app-pass') && !t.includes(CATALOG_PW), `${file}: no password`);
    }
    assert.ok(
      recs.some((r) => r.event === 'catalog.degraded'),
      'the outage is in the audit',
    );
  });
});
