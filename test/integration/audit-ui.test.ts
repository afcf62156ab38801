/**
 * The audit view (/ui/ on the admin listener) in a real browser: headless Chromium driven by
 * puppeteer-core against a running pgwarden whose audit log holds real sessions (a tenant user, two
 * staff sessions with tickets, a refused staff login). Logs in with the auditor token, filters by
 * ticket, opens the staff session and reads its statements in order; checks the cookie, the
 * security headers, escaping of hostile statement text, and that the auditor token is refused by
 * the admin API. With PGWARDEN_UI_SCREENSHOTS=1 it also writes docs/images/audit-ui-*.png.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createHash, randomUUID } from 'node:crypto';
import pg from 'pg';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey } from 'jose';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import {
  clientConfig,
  connect,
  connectError,
  spawnProxy,
  startProxy,
  testCerts,
  type ChildProxy,
  type ProxySpec,
  type RunningProxy,
} from '../support/proxy.js';
import { waitFor } from '../support/wait.js';
import { generateCheckpointKey } from '../../src/audit/checkpoint.js';
import { initStore, newStoreClient } from '../../src/audit/store-table.js';

const CHROMIUM = process.env['PGWARDEN_TEST_CHROMIUM'] ?? '/usr/bin/chromium';
const HAVE_CHROMIUM = existsSync(CHROMIUM);
const SCREENSHOTS = process.env['PGWARDEN_UI_SCREENSHOTS'] === '1';
const ISSUER = 'https://sso.pgwarden.test';
const AUDIENCE = 'pgwarden';
const STAFF_PW_ENV = 'PGWARDEN_TEST_UI_STAFF_PW';
const ADMIN_TOKEN = 'audit-ui-operator-token-5d0c1f9a7b';
const AUDITOR_TOKEN = 'audit-ui-auditor-token-93be4a6c21';
const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');
const HOSTILE = `SELECT '<img src=x onerror=alert(1)>' AS "</td><script>alert(2)</script>"`;
const STAFF_STATEMENTS = ['SELECT count(*) AS n FROM items', 'SELECT name FROM items WHERE id = 1', 'SELECT 1 / 0'];

/** A staff token as the SSO would mint it (tenant acme, read, ticket INC-4711 unless `over` says otherwise). */
function mintToken(key: CryptoKey, over: Record<string, unknown>): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ tenant: 'acme', access: 'read', ticket: 'INC-4711', amr: ['pwd', 'mfa'], jti: randomUUID(), ...over })
    .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
    .setSubject(typeof over['sub'] === 'string' ? over['sub'] : 'alice@ops.example')
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setIssuedAt(now)
    .setExpirationTime(now + 300)
    .sign(key);
}

/** Writes a JWKS with one ES256 key (kid k1) into `dir`; its private key signs the tokens. */
async function staffKeys(dir: string): Promise<CryptoKey> {
  const pair = await generateKeyPair('ES256', { extractable: true });
  const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  await writeFile(path.join(dir, 'jwks.json'), JSON.stringify({ keys: [jwk] }));
  return pair.privateKey;
}

/** Logs in as a script would (no browser): the session cookie's `name=value`. */
async function loginCookie(ui: string, token: string): Promise<string> {
  const r = await fetch(`${ui}/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token }).toString(),
    redirect: 'manual',
  });
  assert.equal(r.status, 303);
  return (r.headers.get('set-cookie') ?? '').split(';')[0]!;
}

describe('audit view prerequisites', () => {
  it('has Chromium to drive in CI', () => {
    // Locally the browser suite below is skipped without it; in CI it must run (.ci/run installs it).
    if (process.env['CI'] === 'true') assert.ok(HAVE_CHROMIUM, `CI=true but there is no Chromium at ${CHROMIUM}`);
  });
});

describe('audit view in a browser', { skip: HAVE_CHROMIUM ? false : `no Chromium at ${CHROMIUM} (apt-get install chromium)` }, () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  let dir: string;
  let auditFile: string;
  let key: CryptoKey;
  let browser: Browser;
  let page: Page;
  let ui: string;
  let spec: ProxySpec;

  const mint = (over: Record<string, unknown>): Promise<string> => mintToken(key, over);

  // The DOM is read by expressions run in the page (this project's TypeScript has no DOM types).
  const q = JSON.stringify;
  /** Each matching element's text, trimmed. */
  const texts = async (sel: string): Promise<string[]> =>
    (await page.evaluate(`[...document.querySelectorAll(${q(sel)})].map((e) => e.textContent.trim())`)) as string[];
  const text = async (sel: string): Promise<string> => (await texts(sel))[0] ?? '';
  /** The table rows' cells' text. */
  const cells = async (rowSel: string): Promise<string[][]> =>
    (await page.evaluate(
      `[...document.querySelectorAll(${q(rowSel)})].map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent.trim()))`,
    )) as string[][];
  const count = async (sel: string): Promise<number> => (await texts(sel)).length;

  async function shot(name: string): Promise<void> {
    if (!SCREENSHOTS) return;
    await mkdir('docs/images', { recursive: true });
    await page.screenshot({ path: `docs/images/audit-ui-${name}.png`, fullPage: true });
  }

  async function records(): Promise<Record<string, unknown>[]> {
    await rp.proxy.audit.flush();
    return (await readFile(auditFile, 'utf8'))
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-audit-ui-'));
    auditFile = path.join(dir, 'audit.jsonl');
    await writeFile(path.join(dir, 'checkpoint.key'), generateCheckpointKey().privatePem, { mode: 0o600 });
    process.env[STAFF_PW_ENV] = 'staff-ro-secret';
    cluster = await startCluster({
      users: [
        { name: 'app', password: 'app-pass' },
        { name: 'staff_ro', password: 'staff-ro-secret' },
      ],
    });
    await cluster.query('CREATE TABLE items (id int PRIMARY KEY, name text)');
    await cluster.query("INSERT INTO items VALUES (1, 'one'), (2, 'two')");
    await cluster.query('GRANT SELECT ON items TO staff_ro, app');
    key = await staffKeys(dir);
    const app = { name: 'app', verifier: await readVerifier(cluster, 'app') };
    spec = {
      auditFile,
      audit: { checkpoint_key: path.join(dir, 'checkpoint.key'), checkpoint_every_records: 10 },
      admin: { token_sha256: sha256(ADMIN_TOKEN), auditor_token_sha256: sha256(AUDITOR_TOKEN) },
      staff: { jwks: path.join(dir, 'jwks.json'), issuer: ISSUER, audience: AUDIENCE, algorithms: ['ES256'], require_mfa: true },
      tenants: [
        {
          id: 'acme',
          cluster,
          users: [app],
          extra: { staff_access: 'read', staff_backend_user: 'staff_ro', staff_backend_password_env: STAFF_PW_ENV, audit_statements: 'all' },
        },
        { id: 'globex', cluster, users: [app] },
      ],
    };
    rp = await startProxy(spec);
    ui = `http://127.0.0.1:${rp.adminPort}/ui`;

    // A tenant user whose statement text is hostile HTML.
    const tenantUser = new pg.Client(clientConfig(rp, { tenant: 'acme', user: 'app', password: 'app-pass' }));
    await tenantUser.connect();
    await tenantUser.query(HOSTILE);
    await tenantUser.end();
    // The staff session under test, and another one under another ticket.
    const staff = new pg.Client(clientConfig(rp, { tenant: 'acme', user: 'staff', password: await mint({}) }));
    await staff.connect();
    await staff.query(STAFF_STATEMENTS[0]!);
    await staff.query(STAFF_STATEMENTS[1]!);
    await assert.rejects(staff.query(STAFF_STATEMENTS[2]!), { code: '22012' });
    await staff.end();
    const other = new pg.Client(clientConfig(rp, { tenant: 'acme', user: 'staff', password: await mint({ sub: 'bob@ops.example', ticket: 'CHG-100' }) }));
    await other.connect();
    await other.query('SELECT 42');
    await other.end();
    // A refused staff login: tenant globex allows no staff access.
    const refused = await connectError(
      clientConfig(rp, { tenant: 'globex', user: 'staff', password: await mint({ tenant: 'globex', sub: 'mallory@ops.example', ticket: 'INC-9' }) }),
    );
    assert.equal(refused.code, '28P01');
    await waitFor(async () => (await records()).filter((r) => r['event'] === 'session.end').length >= 3, 10_000, 'three session.end records');

    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking', '--no-first-run'],
    });
    page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 800 });
  });

  after(async () => {
    await browser?.close();
    await rp?.close();
    await cluster?.stop();
    Reflect.deleteProperty(process.env, STAFF_PW_ENV);
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it('sends to the login page, with the security headers, and refuses a wrong token', async () => {
    const first = await page.goto(`${ui}/`);
    assert.equal(new URL(page.url()).pathname, '/ui/login');
    const h = first!.headers();
    assert.equal(
      h['content-security-policy'],
      "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    assert.equal(h['x-content-type-options'], 'nosniff');
    assert.equal(h['referrer-policy'], 'no-referrer');
    assert.equal(h['cache-control'], 'no-store');
    await shot('login');
    await page.type('input[name=token]', 'not-the-token-at-all-0000');
    const [wrong] = await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    assert.equal(wrong!.status(), 401);
    assert.match(await text('.error'), /Token refused/);
    assert.deepEqual(await browser.cookies(), []);
  });

  it('logs in with the auditor token: an HttpOnly, SameSite=Strict cookie that is not the token', async () => {
    await page.type('input[name=token]', AUDITOR_TOKEN);
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    assert.equal(new URL(page.url()).pathname, '/ui/sessions');
    const cookies = await browser.cookies();
    assert.equal(cookies.length, 1);
    const c = cookies[0]!;
    assert.equal(c.name, 'pgwarden_ui');
    assert.equal(c.httpOnly, true);
    assert.equal(c.sameSite, 'Strict');
    assert.equal(c.path, '/ui/');
    assert.ok(!c.value.includes(AUDITOR_TOKEN) && c.value !== sha256(AUDITOR_TOKEN));
    assert.match(c.value, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(await page.evaluate('document.cookie'), '', 'no script can read the cookie');
    assert.match(await text('header .role'), /auditor/);
    const rows = await count('table.sessions tbody tr');
    assert.equal(rows, 3, 'the tenant user and the two staff sessions');
    await shot('sessions');
  });

  it('filters by ticket, opens the staff session and shows its statements in order with results', async () => {
    await page.type('input[name=ticket]', 'INC-4711');
    await Promise.all([page.waitForNavigation(), page.click('form.filters button[type=submit]')]);
    assert.equal(new URL(page.url()).searchParams.get('ticket'), 'INC-4711');
    const rows = await cells('table.sessions tbody tr');
    assert.equal(rows.length, 1);
    assert.equal(rows[0]![1], 'acme');
    assert.equal(rows[0]![3], 'alice@ops.example');
    assert.equal(rows[0]![4], 'INC-4711');
    assert.equal(rows[0]![9], 'client_terminate');
    await shot('filter-ticket');
    await Promise.all([page.waitForNavigation(), page.click('table.sessions tbody tr a')]);
    assert.match(new URL(page.url()).pathname, /^\/ui\/sessions\/[0-9a-f-]{36}$/);
    const facts = await text('dl.facts');
    assert.match(facts, /alice@ops\.example/);
    assert.match(facts, /INC-4711/);
    assert.match(facts, /allow read/);
    const statements = await cells('table.statements tbody tr');
    assert.deepEqual(
      statements.map((s) => s[3]),
      STAFF_STATEMENTS,
    );
    assert.match(statements[0]![4]!, /^SELECT 1 · 1 row/);
    assert.match(statements[1]![4]!, /^SELECT 1 · 1 row/);
    assert.match(statements[2]![4]!, /^ERROR 22012/);
    await shot('session');
  });

  it('shows hostile statement text as text', async () => {
    await page.goto(`${ui}/sessions?user=app`);
    await Promise.all([page.waitForNavigation(), page.click('table.sessions tbody tr a')]);
    const shown = await text('table.statements pre');
    assert.equal(shown, HOSTILE);
    assert.equal(await count('main img, main script'), 0, 'no element came from the statement');
  });

  it('lists staff decisions, allow and deny with the reason', async () => {
    await page.goto(`${ui}/staff`);
    const rows = await cells('table.staff tbody tr');
    assert.equal(rows.length, 3);
    const deny = rows.find((r) => r[1] === 'deny')!;
    assert.match(deny[2]!, /jwt_invalid:scope/);
    assert.match(deny[3]!, /mallory@ops\.example/);
    assert.equal(rows.filter((r) => r[1] === 'allow').length, 2);
    await shot('staff');
    await page.goto(`${ui}/staff?decision=deny`);
    assert.equal(await count('table.staff tbody tr'), 1);
  });

  it('shows the chain verified, its last checkpoint and no gaps', async () => {
    await page.goto(`${ui}/chain`);
    const shown = (await text('main')).replace(/\s+/g, ' ');
    assert.match(shown, /Chain verified: \d+ records in 1 file, \d+ checkpoints? with signatures checked/);
    assert.match(shown, /Head hash ?[0-9a-f]{64}/);
    assert.match(shown, /No gap records/);
    await shot('chain');
  });

  it('logs out: the session ends on the server, the cookie is cleared', async () => {
    const before = (await browser.cookies())[0]!.value;
    await Promise.all([page.waitForNavigation(), page.click('form.logout button')]);
    assert.equal(new URL(page.url()).pathname, '/ui/login');
    assert.deepEqual(await browser.cookies(), []);
    // The old id is worth nothing now.
    const replay = await fetch(`${ui}/sessions`, { headers: { cookie: `pgwarden_ui=${before}` }, redirect: 'manual' });
    assert.equal(replay.status, 303);
    assert.equal(replay.headers.get('location'), '/ui/login');
  });

  it('refuses a login form sent from another site', async () => {
    const r = await fetch(`${ui}/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', origin: 'http://evil.example' },
      body: new URLSearchParams({ token: AUDITOR_TOKEN }).toString(),
      redirect: 'manual',
    });
    assert.equal(r.status, 403);
    assert.equal(r.headers.get('set-cookie'), null);
  });

  it('the auditor token is refused by the admin API (403), writes and reads alike; the operator token is not', async () => {
    const api = `http://127.0.0.1:${rp.adminPort}`;
    const call = (method: string, p: string, token: string, body?: object): Promise<Response> =>
      fetch(`${api}${p}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
    for (const [method, p, body] of [
      ['POST', `/sessions/${randomUUID()}/terminate`],
      ['DELETE', `/sessions/${randomUUID()}`],
      ['POST', '/tenants/acme/suspend'],
      ['POST', '/staff/revoke', { sub: 'alice@ops.example' }],
      ['POST', '/reload'],
      ['GET', '/sessions'],
      ['GET', '/pools'],
    ] as const) {
      const r = await call(method, p, AUDITOR_TOKEN, body);
      assert.equal(r.status, 403, `${method} ${p}`);
      assert.deepEqual(await r.json(), { error: 'the auditor token may only read the audit (/ui/)' });
    }
    assert.equal((await call('GET', '/sessions', ADMIN_TOKEN)).status, 200);
    // Nothing was suspended by the refused call: acme still serves.
    const c = new pg.Client(clientConfig(rp, { tenant: 'acme', user: 'app', password: 'app-pass' }));
    await c.connect();
    await c.end();
  });

  it('the operator token logs in to the view too; logins, logouts, page reads and refusals are audited without a token', async () => {
    const login = await fetch(`${ui}/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: ADMIN_TOKEN }).toString(),
      redirect: 'manual',
    });
    assert.equal(login.status, 303);
    assert.match(login.headers.get('set-cookie') ?? '', /^pgwarden_ui=[A-Za-z0-9_-]{43}; Path=\/ui\/; HttpOnly; SameSite=Strict$/);
    const recs = (await records()).filter((r) => r['event'] === 'admin.command');
    const summary = recs.map(
      (r) => `${String(r['command'])} ${typeof r['role'] === 'string' ? r['role'] : '-'} ${String((r['outcome'] as { status: number }).status)}`,
    );
    for (const want of [
      'ui.login - 401',
      'ui.login auditor 303',
      'ui.logout auditor 303',
      'ui.login - 401',
      'session.terminate auditor 403',
      'reload auditor 403',
      'sessions.list - 200',
      'ui.login operator 303',
    ]) {
      assert.ok(summary.includes(want), `${want} in ${summary.join(', ')}`);
    }
    // Reading the audit is audited: the auditor's ticket search and the session it opened, in that order.
    const reads = recs.filter((r) => r['command'] === 'ui.read' && r['role'] === 'auditor').map((r) => r['target'] as { page: string; filter?: Record<string, string> });
    const search = reads.findIndex((t) => t.page === 'sessions' && t.filter?.['ticket'] === 'INC-4711');
    assert.ok(search >= 0, `the ticket search is audited: ${JSON.stringify(reads)}`);
    assert.match(reads[search + 1]?.page ?? '', /^sessions\/[0-9a-f-]{36}$/, 'then the session it opened');
    assert.ok(reads.some((t) => t.page === 'chain') && reads.some((t) => t.page === 'staff'));
    const text = await readFile(auditFile, 'utf8');
    for (const secret of [ADMIN_TOKEN, AUDITOR_TOKEN, 'not-the-token-at-all']) assert.ok(!text.includes(secret), 'no token in the audit log');
  });

  it("a reload that rotates the auditor token ends the logins made with it, not the operator's", async () => {
    const auditor = await loginCookie(ui, AUDITOR_TOKEN);
    const operator = await loginCookie(ui, ADMIN_TOKEN);
    const status = async (cookie: string): Promise<number> => (await fetch(`${ui}/sessions`, { headers: { cookie }, redirect: 'manual' })).status;
    assert.equal(await status(auditor), 200);
    rp.reload({ ...spec, admin: { ...spec.admin, auditor_token_sha256: sha256(`${AUDITOR_TOKEN}-rotated`) } });
    assert.equal(await status(auditor), 303);
    assert.equal(await status(operator), 200);
    await loginCookie(ui, `${AUDITOR_TOKEN}-rotated`);
  });
});

describe('audit view reading the PostgreSQL store', () => {
  const STORE_PW_ENV = 'PGWARDEN_TEST_UI_STORE_PW';
  let store: Cluster;
  let cluster: Cluster;
  let rp: RunningProxy;
  let dir: string;
  let ui: string;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-audit-ui-store-'));
    process.env[STORE_PW_ENV] = 'ui-store-secret';
    store = await startCluster({ users: [{ name: 'auditw', password: 'ui-store-secret' }], databases: ['audit'] });
    await store.query('GRANT CREATE ON SCHEMA public TO auditw', [], 'audit');
    const storeUrl = `postgresql://auditw@127.0.0.1:${store.port}/audit`;
    const client = newStoreClient(storeUrl, STORE_PW_ENV);
    await client.connect();
    await initStore(client, 'ui_audit');
    await client.end();
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    const app = { name: 'app', verifier: await readVerifier(cluster, 'app') };
    // No [audit] file (so no staff access either: staff needs one): the store is the only copy, and the view reads it.
    rp = await startProxy({
      auditPostgres: { url: storeUrl, password_env: STORE_PW_ENV, table: 'ui_audit', spool_dir: path.join(dir, 'spool'), flush_interval: '50ms' },
      admin: { token_sha256: sha256(ADMIN_TOKEN), auditor_token_sha256: sha256(AUDITOR_TOKEN) },
      tenants: [
        { id: 'acme', cluster, users: [app], extra: { audit_statements: 'all' } },
        { id: 'globex', cluster, users: [app] },
      ],
    });
    ui = `http://127.0.0.1:${rp.adminPort}/ui`;
    for (const tenant of ['acme', 'globex']) {
      const c = new pg.Client(clientConfig(rp, { tenant, user: 'app', password: 'app-pass' }));
      await c.connect();
      await c.query('SELECT 7 AS seven');
      await c.end();
    }
    await waitFor(
      async () => (await store.query<{ n: string }>("SELECT count(*) AS n FROM ui_audit WHERE event = 'session.end'", [], 'audit')).rows[0]!.n === '2',
      20_000,
      'both session.end records in the store',
    );
  });

  after(async () => {
    await rp?.close();
    await cluster?.stop();
    await store?.stop();
    Reflect.deleteProperty(process.env, STORE_PW_ENV);
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it("filters in the store and shows a session's statements, with their results", async () => {
    const cookie = await loginCookie(ui, AUDITOR_TOKEN);
    const get = async (p: string): Promise<{ status: number; body: string }> => {
      const r = await fetch(`${ui}${p}`, { headers: { cookie }, redirect: 'manual' });
      return { status: r.status, body: await r.text() };
    };
    const all = await get('/sessions');
    assert.equal(all.status, 200);
    assert.equal(all.body.match(/href="\/ui\/sessions\/[0-9a-f-]{36}"/g)?.length, 2);
    const one = await get('/sessions?tenant=acme');
    const links = one.body.match(/\/ui\/sessions\/[0-9a-f-]{36}/g) ?? [];
    assert.equal(links.length, 1);
    const session = await get(links[0].slice('/ui'.length));
    assert.equal(session.status, 200);
    assert.match(session.body, /<pre>SELECT 7 AS seven<\/pre>/);
    assert.match(session.body, /SELECT 1 · 1 row/);
    const chain = await get('/chain');
    assert.match(chain.body, /Read from the PostgreSQL store/);
    assert.match((await get('/staff')).body, /0 decisions/);
  });
});

describe('audit view with workers (served by the primary)', () => {
  let cluster: Cluster;
  let child: ChildProxy;
  let dir: string;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-audit-ui-workers-'));
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    const app = { name: 'app', verifier: await readVerifier(cluster, 'app') };
    child = await spawnProxy({
      server: { workers: 2, worker_accept: 'primary' },
      auditFile: path.join(dir, 'audit.jsonl'),
      admin: { token_sha256: sha256(ADMIN_TOKEN), auditor_token_sha256: sha256(AUDITOR_TOKEN) },
      tenants: [{ id: 'acme', cluster, users: [app], extra: { audit_statements: 'all' } }],
    });
  });

  after(async () => {
    await child?.stop();
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it("shows the workers' sessions from the primary's audit log; the API refuses the auditor there too", async () => {
    const c = await connect({ port: child.port, certs: await testCerts() }, { tenant: 'acme', user: 'app', password: 'app-pass' });
    await c.query('SELECT 5 AS five');
    await c.end();
    const ui = `http://127.0.0.1:${child.adminPort!}/ui`;
    const cookie = await loginCookie(ui, AUDITOR_TOKEN);
    const page = async (p: string): Promise<string> => (await fetch(`${ui}${p}`, { headers: { cookie } })).text();
    let list = '';
    await waitFor(async () => /client_terminate/.test((list = await page('/sessions?tenant=acme'))), 10_000, 'the session ended in the audit view');
    const link = /\/ui(\/sessions\/[0-9a-f-]{36})/.exec(list);
    assert.ok(link !== null, list);
    assert.match(await page(link[1]!), /<pre>SELECT 5 AS five<\/pre>/);
    const r = await fetch(`http://127.0.0.1:${child.adminPort!}/reload`, { method: 'POST', headers: { authorization: `Bearer ${AUDITOR_TOKEN}` } });
    assert.equal(r.status, 403);
  });
});
