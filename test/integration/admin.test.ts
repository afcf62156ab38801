/**
 * The admin API (`[admin]`): bearer-token auth against the configured hash, the session list with
 * real clients, terminate, suspend/resume, staff-token revocation, reload, JSON errors, and an
 * `admin.command` audit record for every call; then the same API on the primary of two workers.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, spawnProxy, connect, clientConfig, connectError, configToml, testCerts, type ChildProxy, type ProxySpec, type RunningProxy } from '../support/proxy.js';
import { waitFor } from '../support/wait.js';
import { workerPids } from '../support/proxy.js';
import type { SessionContext } from '../../src/session/context.js';
import type { StaffIdentity } from '../../src/session/client-session.js';
import { readAuditFile } from '../support/audit-file.js';

const TOKEN = 'admin-test-token-5b2e9d0c41';
const TOKEN_SHA256 = createHash('sha256').update(TOKEN).digest('hex');

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Record<string, unknown>;
  text: string;
}

function call(port: number, method: string, urlPath: string, o: { token?: string | null; body?: string; authorization?: string } = {}): Promise<Reply> {
  const headers: Record<string, string> = {};
  const token = o.token === undefined ? TOKEN : o.token;
  if (o.authorization !== undefined) headers['authorization'] = o.authorization;
  else if (token !== null) headers['authorization'] = `Bearer ${token}`;
  if (o.body !== undefined) headers['content-type'] = 'application/json';
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: urlPath, method, headers }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => {
        let body: Record<string, unknown>;
        try {
          body = JSON.parse(text) as Record<string, unknown>;
        } catch {
          body = { unparsed: text };
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text });
      });
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

/** The client's end of its connection: the port the proxy sees and lists. */
function localPort(c: pg.Client): number {
  return (c as unknown as { connection: { stream: { localPort: number } } }).connection.stream.localPort;
}

/** The first 'error' event of a connected client (later ones, e.g. the socket closing, are expected). */
function nextError(c: pg.Client): Promise<{ code?: string; message: string }> {
  return new Promise((resolve) => c.on('error', (err: Error & { code?: string }) => resolve(err)));
}

interface View {
  id: string;
  tenant: string | null;
  user: string | null;
  client: { addr: string; port: number };
  started_at: string;
  phase: string;
  bytes_in: number;
  bytes_out: number;
  staff: unknown;
  worker?: number;
}

describe('admin API', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  let dir: string;
  let auditFile: string;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-admin-'));
    auditFile = path.join(dir, 'audit.jsonl');
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    const verifier = await readVerifier(cluster, 'app');
    const users = [{ name: 'app', verifier }];
    rp = await startProxy({
      auditFile,
      admin: { token_sha256: TOKEN_SHA256 },
      tenants: [
        { id: 'acme', cluster, users },
        { id: 'other', cluster, users },
        { id: 'susp', cluster, users },
      ],
    });
  });
  after(async () => {
    await rp?.close();
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  const login = (tenant: string): Promise<pg.Client> => connect(rp, { tenant, user: 'app', password: 'app-pass', applicationName: 'admin-test' });
  const sessions = async (query = ''): Promise<View[]> => {
    const r = await call(rp.adminPort, 'GET', `/sessions${query}`);
    assert.equal(r.status, 200, r.text);
    return r.body['sessions'] as View[];
  };

  it('listens on its own port, and the metrics listener no longer takes commands', async () => {
    assert.ok(rp.adminPort > 0 && rp.adminPort !== rp.metricsPort);
    const r = await call(rp.metricsPort, 'POST', '/tenants/acme/suspend');
    assert.equal(r.status, 405);
    assert.equal(rp.proxy.bus.suspended().has('acme'), false);
  });

  it('refuses calls without the token, or with a wrong one (401, WWW-Authenticate: Bearer), and does nothing', async () => {
    const c = await login('acme');
    const [id] = (await sessions('?tenant=acme')).map((s) => s.id);
    for (const o of [{ token: null }, { token: 'wrong' }, { token: `${TOKEN}x` }, { authorization: `Basic ${TOKEN}` }, { authorization: TOKEN }]) {
      for (const [method, url] of [['POST', '/tenants/acme/suspend'], ['GET', '/sessions'], ['DELETE', `/sessions/${id}`], ['POST', '/reload'], ['GET', '/nowhere']] as const) {
        const r = await call(rp.adminPort, method, url, o);
        assert.equal(r.status, 401, `${method} ${url} with ${JSON.stringify(o)}`);
        assert.match(String(r.headers['www-authenticate']), /^Bearer realm="pgwarden-admin"/);
        assert.equal(r.headers['content-type'], 'application/json');
        assert.equal(typeof r.body['error'], 'string');
        assert.ok(!('sessions' in r.body));
      }
    }
    assert.equal(rp.proxy.bus.suspended().has('acme'), false, 'not suspended');
    assert.equal((await c.query<{ x: number }>('select 1 as x')).rows[0]?.x, 1, 'the session still runs');
    await c.end();
  });

  it('lists sessions: tenant, user, client address, start, bytes, state, and no secret', async () => {
    const a = await login('acme');
    const o = await login('other');
    await a.query('select repeat($1, 1000)', ['x']);
    const all = await sessions();
    const mine = all.find((s) => s.tenant === 'acme' && s.client.port === localPort(a));
    assert.ok(mine !== undefined, JSON.stringify(all));
    assert.equal(mine.user, 'app');
    assert.match(mine.client.addr, /127\.0\.0\.1$/);
    assert.equal(mine.phase, 'relaying');
    assert.equal(mine.staff, null);
    assert.ok(mine.bytes_in > 0 && mine.bytes_out > 1000, `bytes ${mine.bytes_in}/${mine.bytes_out}`);
    assert.ok(Math.abs(Date.parse(mine.started_at) - Date.now()) < 60_000);
    assert.ok(all.some((s) => s.tenant === 'other'));
    const onlyOther = await sessions('?tenant=other');
    assert.ok(onlyOther.length >= 1 && onlyOther.every((s) => s.tenant === 'other'));
    const r = await call(rp.adminPort, 'GET', '/sessions?tenant=bad%20id');
    assert.equal(r.status, 400);
    const text = (await call(rp.adminPort, 'GET', '/sessions')).text;
    for (const secret of ['app-pass', 'SCRAM-SHA-256$', TOKEN, TOKEN_SHA256, 'secret', 'password']) assert.ok(!text.includes(secret), `no ${secret}`);
    await Promise.all([a.end(), o.end()]);
  });

  it('terminates a session: the client gets 57P01; a second time is 404', async () => {
    for (const how of ['DELETE', 'POST'] as const) {
      const c = await login('acme');
      const bystander = await login('acme');
      // The session list shows the client's port: that is how an operator tells `c` from the bystander.
      const target = (await sessions('?tenant=acme')).find((s) => s.client.port === localPort(c))!;
      assert.ok(target !== undefined);
      const errP = nextError(c);
      const url = how === 'DELETE' ? `/sessions/${target.id}` : `/sessions/${target.id}/terminate`;
      const r = await call(rp.adminPort, how, url);
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.body, { session: target.id, terminated: true });
      const err = await errP;
      assert.equal(err.code, '57P01');
      assert.match(err.message, /terminating connection due to administrator command/);
      assert.equal((await call(rp.adminPort, how, url)).status, 404);
      assert.equal((await bystander.query<{ x: number }>('select 2 as x')).rows[0]?.x, 2, 'the other session is untouched');
      await c.end().catch(() => undefined);
      await bystander.end();
    }
    assert.equal((await call(rp.adminPort, 'DELETE', '/sessions/not-a-uuid')).status, 400);
  });

  it('suspends a tenant (its sessions end with 57P01, logins fail with 28P01) and resumes it', async () => {
    const c = await login('susp');
    const bystander = await login('acme');
    const errP = nextError(c);
    const r = await call(rp.adminPort, 'POST', '/tenants/susp/suspend');
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.body, { tenant: 'susp', suspended: true });
    assert.equal((await errP).code, '57P01');
    await c.end().catch(() => undefined);
    assert.equal((await connectError(clientConfig(rp, { tenant: 'susp', user: 'app', password: 'app-pass' }))).code, '28P01');
    assert.equal((await bystander.query<{ x: number }>('select 3 as x')).rows[0]?.x, 3);
    assert.equal((await call(rp.adminPort, 'POST', '/tenants/nosuch/suspend')).status, 404);
    assert.equal((await call(rp.adminPort, 'POST', '/tenants/BAD!/suspend')).status, 400);
    const back = await call(rp.adminPort, 'POST', '/tenants/susp/resume');
    assert.deepEqual(back.body, { tenant: 'susp', suspended: false });
    await (await login('susp')).end();
    await bystander.end();
  });

  it('revokes a staff token by jti or sub: remembered (isStaffRevoked) and its sessions end with 57P01', async () => {
    const ctx = (): SessionContext => (rp.proxy as unknown as { ctx: SessionContext }).ctx;
    assert.equal(ctx().isStaffRevoked('tok-1', 'alice'), false);
    const r = await call(rp.adminPort, 'POST', '/staff/revoke', { body: JSON.stringify({ jti: 'tok-1' }) });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.body['revoked'], { jti: 'tok-1' });
    // Without [staff] the revocation is kept the full bound: a day.
    const until = Date.parse(String(r.body['until']));
    assert.ok(until > Date.now() + 23 * 3600_000 && until <= Date.now() + 24 * 3600_000 + 1000, String(r.body['until']));
    assert.equal(ctx().isStaffRevoked('tok-1', 'anyone'), true);
    assert.equal(ctx().isStaffRevoked('tok-2', 'alice'), false);

    // Matching by person across several sessions, on sessions given a verified staff identity
    // directly (the session's own record of who it is); staff.test.ts revokes real JWT staff logins end to end.
    const asStaff = async (sub: string, jti: string): Promise<pg.Client> => {
      const c = await login('other');
      const s = [...rp.proxy.sessions].find((x) => x.describe().client.port === localPort(c))!;
      const identity: StaffIdentity = { sub, jti, ticket: 'T-1', access: 'read', expMs: Date.now() + 600_000, grantExpMs: null };
      (s as unknown as { subject: { staffIdentity: StaffIdentity } }).subject.staffIdentity = identity;
      assert.deepEqual(s.staff, identity);
      return c;
    };
    const bob = await asStaff('bob', 'tok-b1');
    const bob2 = await asStaff('bob', 'tok-b2');
    const carol = await asStaff('carol', 'tok-c1');
    const listed = (await sessions('?tenant=other')).filter((s) => s.staff !== null);
    assert.equal(listed.length, 3, 'staff sessions are listed with their staff block');
    const errs = [nextError(bob), nextError(bob2)];
    const bySub = await call(rp.adminPort, 'POST', '/staff/revoke', { body: JSON.stringify({ sub: 'bob' }) });
    assert.equal(bySub.status, 200, bySub.text);
    for (const e of await Promise.all(errs)) assert.equal(e.code, '57P01');
    assert.equal((await carol.query<{ x: number }>('select 4 as x')).rows[0]?.x, 4, 'another person is untouched');
    assert.equal(ctx().isStaffRevoked('tok-new', 'bob'), true, 'new tokens of the person too');
    const cErr = nextError(carol);
    assert.equal((await call(rp.adminPort, 'POST', '/staff/revoke', { body: '{"jti":"tok-c1"}' })).status, 200);
    assert.equal((await cErr).code, '57P01');
    await Promise.all([bob, bob2, carol].map((c) => c.end().catch(() => undefined)));

    for (const [body, why] of [
      ['{"jti":', 'not JSON'],
      ['[]', 'array'],
      ['{}', 'empty'],
      ['{"jti":"a","sub":"b"}', 'both'],
      ['{"jti":42}', 'not a string'],
      ['{"jti":""}', 'empty string'],
      ['{"email":"x"}', 'unknown key'],
      [JSON.stringify({ jti: 'x'.repeat(300) }), 'too long'],
    ] as const) {
      const bad = await call(rp.adminPort, 'POST', '/staff/revoke', { body });
      assert.equal(bad.status, 400, why);
      assert.equal(typeof bad.body['error'], 'string', why);
    }
    assert.equal(ctx().isStaffRevoked('a', 'b'), false);
  });

  it('answers unknown routes 404, wrong methods 405 (with Allow), big bodies 413, all as JSON errors', async () => {
    const nf = await call(rp.adminPort, 'GET', '/nowhere');
    assert.equal(nf.status, 404);
    assert.deepEqual(nf.body, { error: 'not found' });
    const wm = await call(rp.adminPort, 'GET', '/reload');
    assert.equal(wm.status, 405);
    assert.equal(wm.headers['allow'], 'POST');
    assert.equal(typeof wm.body['error'], 'string');
    assert.equal((await call(rp.adminPort, 'POST', '/sessions')).status, 405);
    const big = await call(rp.adminPort, 'POST', '/staff/revoke', { body: JSON.stringify({ jti: 'x', pad: 'p'.repeat(70 * 1024) }) });
    assert.equal(big.status, 413);
    assert.equal(typeof big.body['error'], 'string');
    // The listener still serves after refusing a body it did not read.
    assert.equal((await call(rp.adminPort, 'GET', '/sessions')).status, 200);
  });

  it('reload is accepted (202)', async () => {
    const r = await call(rp.adminPort, 'POST', '/reload');
    assert.equal(r.status, 202);
    assert.deepEqual(r.body, { status: 'reload requested' });
  });

  it('writes an admin.command audit record for every call, refused ones included, and never the token', async () => {
    await rp.close();
    const recs = (await readAuditFile(auditFile)).filter((r) => r['event'] === 'admin.command');
    const by = (command: string, status: number): Record<string, unknown>[] =>
      recs.filter((r) => r['command'] === command && (r['outcome'] as { status: number }).status === status);
    // 25 refused calls above: 20 recorded one by one in a minute, the rest counted in one record
    // (more one by one if the minute happened to roll over during the test).
    const refused = recs.filter((r) => (r['outcome'] as { status: number }).status === 401);
    const single = refused.filter((r) => r['count'] === undefined).length;
    const counted = refused.reduce((n, r) => n + ((r['count'] as number | undefined) ?? 0), 0);
    assert.ok(single >= 20, `${single} refusals recorded one by one`);
    assert.equal(single + counted, 25);
    assert.ok(by('tenant.suspend', 401).length >= 1);
    assert.deepEqual(by('tenant.suspend', 401)[0]?.['outcome'], { success: false, status: 401 });
    assert.match((by('tenant.suspend', 401)[0]?.['client'] as { addr: string }).addr, /127\.0\.0\.1$/);
    assert.ok(by('sessions.list', 200).length >= 5);
    assert.equal(by('sessions.list', 400).length, 1);
    assert.equal(by('session.terminate', 200).length, 2);
    assert.equal(by('session.terminate', 404).length, 2);
    assert.deepEqual(by('tenant.suspend', 200)[0]?.['target'], { tenant: 'susp' });
    assert.deepEqual(by('tenant.suspend', 200)[0]?.['outcome'], { success: true, status: 200 });
    assert.equal(by('tenant.resume', 200).length, 1);
    assert.deepEqual(by('staff.revoke', 200).map((r) => r['target']), [{ jti: 'tok-1' }, { sub: 'bob' }, { jti: 'tok-c1' }]);
    assert.equal(by('staff.revoke', 400).length, 8);
    assert.equal(by('staff.revoke', 413).length, 1);
    assert.equal(by('reload', 202).length, 1);
    assert.equal(by('unknown', 404).length, 1);
    const text = await readFile(auditFile, 'utf8');
    assert.ok(!text.includes(TOKEN) && !text.includes(TOKEN_SHA256), 'neither the token nor its hash');
  });
});


describe('admin API with two workers', () => {
  let cluster: Cluster;
  let child: ChildProxy;
  let spec: ProxySpec;
  let dir: string;
  let auditFile: string;
  let verifier: string;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-admin-workers-'));
    auditFile = path.join(dir, 'audit.jsonl');
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    verifier = await readVerifier(cluster, 'app');
    spec = { server: { workers: 2, worker_accept: 'primary' }, auditFile, admin: { token_sha256: TOKEN_SHA256 }, tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier }] }] };
    child = await spawnProxy(spec);
  });
  after(async () => {
    await child?.stop();
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  const base = async (): Promise<{ port: number; certs: Awaited<ReturnType<typeof testCerts>> }> => ({ port: child.port, certs: await testCerts() });
  const login = async (tenant = 'acme'): Promise<pg.Client> => connect(await base(), { tenant, user: 'app', password: 'app-pass' });
  const list = async (): Promise<View[]> => (await call(child.adminPort!, 'GET', '/sessions')).body['sessions'] as View[];

  it('lists the sessions of both workers, and ends one on either', async () => {
    assert.ok(child.adminPort !== null && child.adminPort > 0);
    // Connections alternate between workers (the primary's round robin, pinned on any Node); four cover both.
    const clients = await Promise.all(Array.from({ length: 4 }, () => login()));
    let views: View[] = [];
    await waitFor(async () => (views = await list()).length === 4, 5_000, 'four sessions listed');
    const workers = new Set(views.map((v) => v.worker));
    assert.deepEqual([...workers].sort(), [1, 2], JSON.stringify(views));
    assert.ok(views.every((v) => v.tenant === 'acme' && v.user === 'app'));
    for (const w of [1, 2]) {
      const v = views.find((x) => x.worker === w)!;
      const i = clients.findIndex((c) => localPort(c) === v.client.port);
      assert.ok(i >= 0);
      const errP = nextError(clients[i]!);
      const r = await call(child.adminPort, 'DELETE', `/sessions/${v.id}`);
      assert.equal(r.status, 200, r.text);
      assert.equal((await errP).code, '57P01');
    }
    assert.equal((await call(child.adminPort, 'DELETE', `/sessions/${views[0]!.id}`)).status, 404);
    await Promise.all(clients.map((c) => c.end().catch(() => undefined)));
  });

  it('revocations reach every worker, and a worker started later', async () => {
    const revokedLines = (): string[] => child.logs().split('\n').filter((l) => l.includes('"msg":"staff token revoked"') && l.includes('"id":"dave"'));
    const r = await call(child.adminPort!, 'POST', '/staff/revoke', { body: '{"sub":"dave"}' });
    assert.equal(r.status, 200, r.text);
    await waitFor(() => new Set(revokedLines().map((l) => (JSON.parse(l) as { worker: number }).worker)).size === 2, 5_000, 'both workers');
    const before = workerPids(child.child.pid!);
    process.kill(before[0]!, 'SIGKILL');
    await waitFor(() => revokedLines().length === 3, 10_000, 'the replacement worker learns the revocation');
  });

  it('suspends across workers and reloads every worker', async () => {
    const clients = await Promise.all(Array.from({ length: 2 }, () => login()));
    const errs = clients.map((c) => nextError(c));
    assert.equal((await call(child.adminPort!, 'POST', '/tenants/acme/suspend')).status, 200);
    for (const e of await Promise.all(errs)) assert.equal(e.code, '57P01');
    await Promise.all(clients.map((c) => c.end().catch(() => undefined)));
    assert.equal((await connectError(clientConfig(await base(), { tenant: 'acme', user: 'app', password: 'app-pass' }))).code, '28P01');
    assert.equal((await call(child.adminPort!, 'POST', '/tenants/acme/resume')).status, 200);
    await waitFor(async () => {
      const c = await login().catch(() => null);
      await c?.end();
      return c !== null;
    }, 5_000, 'resumed');

    // A tenant added to the file is served by both workers after POST /reload.
    const next: ProxySpec = { ...spec, tenants: [...spec.tenants, { id: 'late', cluster, users: [{ name: 'app', verifier }] }] };
    await writeFile(child.configPath, configToml(next, await testCerts()).replace('level = "warn"', 'level = "info"'));
    assert.equal((await call(child.adminPort!, 'POST', '/reload')).status, 202);
    await waitFor(async () => {
      const got = await Promise.allSettled(Array.from({ length: 4 }, () => login('late')));
      await Promise.all(got.map((g) => (g.status === 'fulfilled' ? g.value.end() : Promise.resolve())));
      return got.every((g) => g.status === 'fulfilled');
    }, 10_000, 'the new tenant on both workers');
    const recs = (await readAuditFile(auditFile)).filter((x) => x['event'] === 'admin.command').map((x) => x['command']);
    for (const c of ['sessions.list', 'session.terminate', 'staff.revoke', 'tenant.suspend', 'tenant.resume', 'reload']) assert.ok(recs.includes(c), c);
  });
});
