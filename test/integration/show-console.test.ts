/**
 * `pgwarden show` end to end: a proxy with an admin listener and real sessions, and the real CLI
 * (dist/src/cli.js) as a child process reading them through the admin API: tables, --json equal
 * to the API's answer, the URL and token from the environment, a refused token (never echoed),
 * an unreachable API, usage errors, and --watch redrawing until SIGINT.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, connect, type RunningProxy } from '../support/proxy.js';

const CLI = path.resolve('dist/src/cli.js');
const TOKEN = 'show-console-token-7c1d93e2aa';
const TOKEN_SHA256 = createHash('sha256').update(TOKEN).digest('hex');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** The CLI with only the environment given (none of the test's PGWARDEN_* leaks in). */
function cli(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { PATH: process.env['PATH'] ?? '', ...env }, timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('pgwarden show (the SHOW-style console)', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  let dir: string;
  let tokenFile: string;
  let badTokenFile: string;
  const clients: pg.Client[] = [];
  let admin: string;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-show-'));
    tokenFile = path.join(dir, 'token');
    badTokenFile = path.join(dir, 'bad-token');
    await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
    await writeFile(badTokenFile, 'wrong-token-wrong-token-1234\n', { mode: 0o600 });
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    const users = [{ name: 'app', verifier: await readVerifier(cluster, 'app') }];
    rp = await startProxy({ admin: { token_sha256: TOKEN_SHA256 }, tenants: [
        { id: 'acme', cluster, users },
        { id: 'globex', cluster, users, maxClientConnections: 7, pool: { max_backend_connections: 5 }, limits: { query_timeout: '2s' } },
      ],
    });
    admin = `http://127.0.0.1:${rp.adminPort}`;
    for (const tenant of ['acme', 'acme', 'globex']) {
      const c = await connect(rp, { tenant, user: 'app', password: 'app-pass' });
      await c.query('SELECT 1');
      clients.push(c);
    }
  });
  after(async () => {
    for (const c of clients) await c.end().catch(() => undefined);
    await rp?.close();
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it('show sessions prints a table with each session, its tenant and user', async () => {
    const r = await cli(['show', 'sessions', '--admin', admin, '--token-file', tokenFile]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(lines[0]!, /^ +id +\| tenant \| user +\| database/);
    assert.match(lines[1]!, /^-+(\+-+)+$/);
    assert.equal(lines.filter((l) => /\| acme +\| app +\|/.test(l)).length, 2);
    assert.equal(lines.filter((l) => /\| globex \| app +\|/.test(l)).length, 1);
    assert.equal(lines.at(-1), '(3 rows)');
    // Every data line as wide as the header: the columns line up.
    for (const l of lines.slice(2, -1)) assert.equal(l.indexOf('|'), lines[0]!.indexOf('|'));
  });

  it('--json is what GET /sessions answers; --tenant filters', async () => {
    const r = await cli(['show', 'sessions', '--json', '--admin', admin, '--token-file', tokenFile]);
    assert.equal(r.code, 0, r.stderr);
    const shown = JSON.parse(r.stdout) as { sessions: { id: string; tenant: string }[] };
    const api = (await (await fetch(`${admin}/sessions`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { sessions: { id: string }[] };
    const ids = (l: { id: string }[]): string[] => l.map((s) => s.id).sort();
    assert.deepEqual(ids(shown.sessions), ids(api.sessions));
    assert.equal(shown.sessions.length, 3);
    const one = await cli(['show', 'sessions', '--json', '--tenant', 'globex', '--admin', admin, '--token-file', tokenFile]);
    assert.deepEqual(
      (JSON.parse(one.stdout) as { sessions: { tenant: string }[] }).sessions.map((s) => s.tenant),
      ['globex'],
    );
  });

  it('takes the URL and token from PGWARDEN_ADMIN_URL and PGWARDEN_ADMIN_TOKEN; tenants summarises', async () => {
    const r = await cli(['show', 'tenants'], { PGWARDEN_ADMIN_URL: admin, PGWARDEN_ADMIN_TOKEN: TOKEN });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^ tenant \| sessions \| staff \| users \| queries/);
    assert.match(r.stdout, /\n acme +\| +2 \| +0 \| +1 \|/);
    assert.match(r.stdout, /\n globex \| +1 \| +0 \| +1 \|/);
    assert.ok(!r.stdout.includes(TOKEN) && !r.stderr.includes(TOKEN));
    const json = await cli(['show', 'staff', '--json'], { PGWARDEN_ADMIN_URL: admin, PGWARDEN_ADMIN_TOKEN: TOKEN });
    assert.deepEqual(JSON.parse(json.stdout), { staff: [], revocations: [] });
  });

  it('show staff lists the revocations in force (GET /staff/revocations)', async () => {
    const post = await fetch(`${admin}/staff/revoke`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: '{"sub":"mallory"}' });
    assert.equal(post.status, 200);
    const { until } = (await post.json()) as { until: string };
    const r = await cli(['show', 'staff'], { PGWARDEN_ADMIN_URL: admin, PGWARDEN_ADMIN_TOKEN: TOKEN });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /\nrevocations in force:\n by +\| +id +\| +until\n/);
    assert.ok(r.stdout.includes(` sub | mallory | ${until}`), r.stdout);
    const json = await cli(['show', 'staff', '--json'], { PGWARDEN_ADMIN_URL: admin, PGWARDEN_ADMIN_TOKEN: TOKEN });
    assert.deepEqual((JSON.parse(json.stdout) as { revocations: unknown }).revocations, [{ by: 'sub', id: 'mallory', until }]);
  });

  it('show pools: the sessions\' backend pools from GET /pools, table and --json', async () => {
    const r = await cli(['show', 'pools', '--admin', admin, '--token-file', tokenFile]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^ tenant \| +mode +\| active \| idle \| waiting \| total \| max \| keys/);
    assert.match(r.stdout, /\n acme +\| session \| +2 \| +0 \| +0 \| +2 \|/);
    assert.match(r.stdout, /\n globex +\| session \| +1 \| +0 \| +0 \| +1 \|/);
    const json = await cli(['show', 'pools', '--json'], { PGWARDEN_ADMIN_URL: admin, PGWARDEN_ADMIN_TOKEN: TOKEN });
    const api: unknown = await (await fetch(`${admin}/pools`, { headers: { authorization: `Bearer ${TOKEN}` } })).json();
    assert.deepEqual(JSON.parse(json.stdout), api);
  });

  it("show limits: each tenant's effective limits beside its clients and backends now (GET /limits)", async () => {
    const r = await cli(['show', 'limits', '--admin', admin, '--token-file', tokenFile]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(lines[0]!, /^ tenant \| +mode +\| clients \| max_clients \| per_user \| conn\/s \| burst \| backends \| max_backends \| pool_timeout_ms \| query_timeout_ms/);
    // clients, max_clients, …, backends, max_backends, pool_timeout_ms, query_timeout_ms
    assert.match(r.stdout, /\n acme +\| session \| +2 \| +100 \| +0 \| +0 \| +\d+ \| +2 \| +100 \| +30000 \| +0 \|/);
    assert.match(r.stdout, /\n globex +\| session \| +1 \| +7 \| +0 \| +0 \| +\d+ \| +1 \| +5 \| +30000 \| +2000 \|/);
    assert.equal(lines.at(-1), '(2 rows)');
    const json = await cli(['show', 'limits', '--json', '--tenant', 'globex'], { PGWARDEN_ADMIN_URL: admin, PGWARDEN_ADMIN_TOKEN: TOKEN });
    assert.equal(json.code, 0, json.stderr);
    const api: unknown = await (await fetch(`${admin}/limits?tenant=globex`, { headers: { authorization: `Bearer ${TOKEN}` } })).json();
    assert.deepEqual(JSON.parse(json.stdout), api);
    assert.deepEqual(
      (api as { limits: { tenant: string; clients: number; max_client_connections: number }[] }).limits.map((l) => [l.tenant, l.clients, l.max_client_connections]),
      [['globex', 1, 7]],
    );
  });

  it('a wrong token: "token refused", exit 1, and neither token printed', async () => {
    for (const run of [
      await cli(['show', 'sessions', '--admin', admin, '--token-file', badTokenFile]),
      await cli(['show', 'sessions'], { PGWARDEN_ADMIN_URL: admin, PGWARDEN_ADMIN_TOKEN: 'wrong-token-wrong-token-1234' }),
    ]) {
      assert.equal(run.code, 1);
      assert.match(run.stderr, /token refused by the admin API at http:\/\/127\.0\.0\.1:\d+ \(HTTP 401\)/);
      assert.equal(run.stdout, '');
      assert.ok(!run.stderr.includes('wrong-token') && !run.stderr.includes(TOKEN));
    }
  });

  it('an unreachable admin API, a missing token, an unknown view: messages and non-zero exits', async () => {
    const free = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const { port } = s.address() as net.AddressInfo;
        s.close(() => resolve(port));
      });
    });
    const down = await cli(['show', 'sessions', '--admin', `http://127.0.0.1:${free}`, '--token-file', tokenFile]);
    assert.equal(down.code, 1);
    assert.match(down.stderr, /cannot reach the admin API at http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED/);
    assert.ok(!down.stderr.includes(TOKEN));
    const noToken = await cli(['show', 'sessions', '--admin', admin]);
    assert.equal(noToken.code, 2);
    assert.match(noToken.stderr, /--token-file FILE or PGWARDEN_ADMIN_TOKEN/);
    const unknown = await cli(['show', 'databases', '--admin', admin, '--token-file', tokenFile]);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /unknown view "databases"/);
    assert.match(unknown.stderr, /usage:/);
    const tokenFlag = await cli(['show', 'sessions', '--admin', admin, '--token', TOKEN]);
    assert.equal(tokenFlag.code, 2);
    assert.ok(!tokenFlag.stderr.includes(TOKEN));
  });

  it('--watch N redraws until SIGINT, then exits 0', async () => {
    const child = spawn(process.execPath, [CLI, 'show', 'sessions', '--watch', '0.5'], {
      env: { PATH: process.env['PATH'] ?? '', PGWARDEN_ADMIN_URL: admin, PGWARDEN_ADMIN_TOKEN: TOKEN },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const deadline = Date.now() + 15_000;
    while ((out.match(/\(3 rows\)/g) ?? []).length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    child.kill('SIGINT');
    assert.equal(await exited, 0);
    assert.ok((out.match(/pgwarden show sessions, every 0\.5s/g) ?? []).length >= 2, out);
    assert.ok(!out.includes(TOKEN));
  });
});
