/**
 * The admin API answers as its OpenAPI document (GET /openapi.json) says. The document drives
 * the test: every operation is called with the request each of its response examples names
 * (openapi.ts explains the convention), and must answer that status with a body its schema
 * accepts and the headers it lists; every other method on a documented path must be 405, and
 * paths beside the documented ones 404. In reverse, api.ts's route table must be exactly the
 * document's operations, so a route without documentation fails here. Every call is audited.
 * The instance under test takes its tenants from a catalog (the tenant routes write there); the
 * `fileSource` cases ask one whose file is the source, `catalogDown` one whose catalog is gone.
 * With workers, the session list (which then names each session's worker) fits the schema too.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { ADMIN_ROUTES } from '../../src/admin/api.js';
import { OPENAPI, type Example, type Method, type OpenApiDocument, type Operation, type Reference, type Response } from '../../src/admin/openapi.js';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, spawnProxy, connect, testCerts, type ChildProxy, type RunningProxy } from '../support/proxy.js';
import { startRedis, type RedisServer } from '../support/redis.js';
import { CatalogStore } from '../../src/catalog/store.js';
import { parseConfigText } from '../../src/config/load.js';
import { resolve, validate } from '../support/json-schema.js';

const TOKEN = 'openapi-test-token-8d41c7a2e9';
const TOKEN_SHA256 = createHash('sha256').update(TOKEN).digest('hex');
const AUDITOR_TOKEN = 'openapi-test-auditor-token-51f0c3';
const METHODS: readonly Method[] = ['get', 'put', 'post', 'delete'];
/** Methods tried on every path besides its own; PATCH has no route anywhere. */
const PROBED_METHODS = ['GET', 'PUT', 'POST', 'DELETE', 'PATCH'] as const;
const CATALOG_PW_ENV = 'PGWARDEN_TEST_OPENAPI_CATALOG_PW';
const CATALOG_PW = 'openapi-catalog-secret';

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: unknown;
  text: string;
}

function call(port: number, method: string, urlPath: string, o: { token?: string | null; body?: string } = {}): Promise<Reply> {
  const headers: Record<string, string> = {};
  const token = o.token === undefined ? TOKEN : o.token;
  if (token !== null) headers['authorization'] = `Bearer ${token}`;
  if (o.body !== undefined) {
    headers['content-type'] = 'application/json';
    // As curl sends it; without it Node's client sends a GET's body unframed, and the server refuses the request itself.
    headers['content-length'] = String(Buffer.byteLength(o.body));
  }
  return new Promise((done, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: urlPath, method, headers, agent: false }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => {
        let body: unknown;
        try {
          body = JSON.parse(text) as unknown;
        } catch {
          body = { unparsed: text };
        }
        done({ status: res.statusCode ?? 0, headers: res.headers, body, text });
      });
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

/** One documented case: an operation, and a response example naming the request that gets it. */
interface Case {
  path: string;
  method: Method;
  op: Operation;
  status: string;
  response: Response;
  name: string;
}

const deref = (doc: OpenApiDocument, r: Response | Reference): Response => ('$ref' in r ? (resolve(doc, r.$ref) as Response) : r);
const first = (examples: Readonly<Record<string, Example>>): Example | undefined => Object.values(examples)[0];

function operations(doc: OpenApiDocument): { path: string; method: Method; op: Operation }[] {
  return Object.entries(doc.paths).flatMap(([p, item]) =>
    METHODS.flatMap((method) => (item[method] === undefined ? [] : [{ path: p, method, op: item[method] }])),
  );
}

function cases(doc: OpenApiDocument): Case[] {
  return operations(doc).flatMap(({ path: p, method, op }) =>
    Object.entries(op.responses).flatMap(([status, r]) => {
      const response = deref(doc, r);
      return Object.keys(response.content['application/json'].examples).map((name) => ({ path: p, method, op, status, response, name }));
    }),
  );
}

/** A documented path with `{name}` as a regular expression, as a router would match it. */
const templateRe = (p: string): RegExp =>
  new RegExp(
    `^${p
      .split('/')
      .map((s) => (/^\{\w+\}$/.test(s) ? '[^/]+' : s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
      .join('/')}$`,
  );

/** The path with each parameter's first example (no fixture: for calls refused before the command runs). */
function samplePath(p: string, op: Operation): string {
  let out = p;
  for (const param of op.parameters ?? []) {
    const ex = first(param.examples);
    if (param.in === 'path' && ex !== undefined) out = out.replace(`{${param.name}}`, encodeURIComponent(String(ex.value)));
  }
  return out;
}

describe('admin API as its OpenAPI document says', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  /** An instance with Redis, stopped: commands shared over Redis answer 503 there. */
  let shared: RunningProxy;
  /** An instance whose catalog database is gone: the tenant routes answer 503 there. */
  let down: RunningProxy;
  let store: CatalogStore;
  let redis: RedisServer;
  let dir: string;
  let auditFile: string;
  let doc: OpenApiDocument;
  const clients: pg.Client[] = [];
  /** What each call on `rp` should leave in the audit: command and status. */
  const audited: { command: string; status: number }[] = [];

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-openapi-'));
    auditFile = path.join(dir, 'audit.jsonl');
    process.env[CATALOG_PW_ENV] = CATALOG_PW;
    cluster = await startCluster({
      users: [
        { name: 'app', password: 'app-pass' },
        { name: 'catalog_admin', password: CATALOG_PW },
      ],
      databases: ['catalog', 'catalog_gone'],
    });
    for (const db of ['catalog', 'catalog_gone']) await cluster.query(`ALTER DATABASE ${db} OWNER TO catalog_admin`);
    const verifier = await readVerifier(cluster, 'app');
    const users = [{ name: 'app', verifier }];
    const catalogOf = (db: string): Record<string, string> => ({
      url: `postgresql://catalog_admin@127.0.0.1:${cluster.port}/${db}`,
      password_env: CATALOG_PW_ENV,
      snapshot_file: path.join(dir, `${db}.snapshot.json`),
    });
    const storeOf = (db: string): CatalogStore => {
      const c = catalogOf(db);
      const cfg = parseConfigText(
        `[server]\nlisten = "127.0.0.1:0"\nrequire_tls = false\n[catalog]\nurl = "${c.url}"\npassword_env = "${CATALOG_PW_ENV}"\nsnapshot_file = "${c.snapshot_file}"\n`,
        dir,
      );
      return new CatalogStore(cfg.catalog!, cfg);
    };
    // The tenants the documented examples name: acme (with users app and reporting) and initech.
    store = storeOf('catalog');
    await store.init();
    const body = { backend: cluster.url('postgres'), backend_tls: 'disable', allow_cidrs: ['127.0.0.0/8', '::1/128'] };
    await store.put('acme', { ...body, users: { app: { scram: verifier }, reporting: { scram: verifier } } });
    await store.put('initech', { ...body, users: { app: { scram: verifier } } });
    rp = await startProxy({
      auditFile,
      admin: { token_sha256: TOKEN_SHA256, auditor_token_sha256: createHash('sha256').update(AUDITOR_TOKEN).digest('hex') },
      tenants: [],
      catalog: catalogOf('catalog'),
    });
    const gone = storeOf('catalog_gone');
    await gone.init();
    await gone.close();
    down = await startProxy({ admin: { token_sha256: TOKEN_SHA256 }, tenants: [], catalog: catalogOf('catalog_gone') });
    await cluster.query('DROP DATABASE catalog_gone WITH (FORCE)');
    redis = await startRedis();
    shared = await startProxy({
      redis: { url: redis.url, command_timeout: '200ms' },
      admin: { token_sha256: TOKEN_SHA256 },
      tenants: [{ id: 'acme', cluster, users }],
    });
    await redis.stop();
    // The document that drives the test is the one served.
    const r = await call(rp.adminPort, 'GET', '/openapi.json');
    assert.equal(r.status, 200, r.text);
    audited.push({ command: 'openapi.get', status: 200 });
    doc = r.body as OpenApiDocument;
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.end().catch(() => undefined)));
    await rp?.close();
    await shared?.close();
    await down?.close();
    await store?.close();
    await redis?.stop();
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    Reflect.deleteProperty(process.env, CATALOG_PW_ENV);
  });

  /** A live session of tenant acme on `rp`: its id (`x-fixture: "session"`). */
  const openSession = async (): Promise<string> => {
    const c = await connect(rp, { tenant: 'acme', user: 'app', password: 'app-pass' });
    c.on('error', () => undefined); // ended by the API on purpose
    clients.push(c);
    const port = (c as unknown as { connection: { stream: { localPort: number } } }).connection.stream.localPort;
    const s = [...rp.proxy.sessions].find((x) => x.describe().client.port === port);
    assert.ok(s !== undefined, 'the fixture session is listed');
    return s.describe().id;
  };

  it('serves src/admin/openapi.ts as it is', () => {
    assert.deepEqual(doc, JSON.parse(JSON.stringify(OPENAPI)));
    assert.equal(doc.openapi, '3.1.0');
  });

  it('documents exactly the routes api.ts has, with their audit commands', () => {
    const routed = ADMIN_ROUTES.map((r) => `${r.method} ${r.path} ${r.command}`).sort();
    const documented = operations(doc)
      .map(({ path: p, method, op }) => `${method.toUpperCase()} ${p} ${op['x-audit-command']}`)
      .sort();
    assert.deepEqual(documented, routed);
  });

  it('is consistent: path parameters as in the template, examples valid, every status with a case, ids unique', () => {
    const ids = new Set<string>();
    for (const { path: p, method, op } of operations(doc)) {
      const where = `${method.toUpperCase()} ${p}`;
      assert.ok(!ids.has(op.operationId), `${where}: operationId ${op.operationId} is unique`);
      ids.add(op.operationId);
      const inTemplate = [...p.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort();
      const declared = (op.parameters ?? [])
        .filter((x) => x.in === 'path')
        .map((x) => x.name)
        .sort();
      assert.deepEqual(declared, inTemplate, `${where}: path parameters`);
      for (const param of op.parameters ?? []) {
        const ex = first(param.examples);
        assert.ok(ex !== undefined, `${where}: ${param.name} has examples`);
        assert.deepEqual(validate(param.schema, ex.value, doc), [], `${where}: the first example of ${param.name} is valid`);
      }
      const body = op.requestBody?.content['application/json'];
      const success = Object.entries(op.responses).filter(([s]) => s.startsWith('2'));
      assert.ok(success.length > 0, `${where}: a success status`);
      for (const [status, r] of Object.entries(op.responses)) {
        const response = deref(doc, r);
        const media = response.content['application/json'];
        assert.ok(Object.keys(media.examples).length > 0, `${where} ${status}: an example, the case that produces it`);
        for (const [name, ex] of Object.entries(media.examples)) {
          assert.deepEqual(validate(media.schema, ex.value, doc), [], `${where} ${status} ${name}: the example fits the schema`);
          // A success's request must itself be valid.
          if (status.startsWith('2') && body !== undefined) {
            const req = body.examples[name] ?? first(body.examples);
            assert.ok(req !== undefined);
            assert.deepEqual(validate(body.schema, req.value, doc), [], `${where} ${name}: the request body example is valid`);
          }
        }
      }
    }
    for (const name of ['NotFound', 'MethodNotAllowed']) assert.ok(doc.components.responses[name] !== undefined, name);
  });

  it('answers each documented case with its status, a body its schema accepts and the headers it lists', async () => {
    const all = cases(doc);
    assert.ok(all.length > 20, `${all.length} cases`);
    // A session that stays: lists are checked item by item, not only as empty arrays.
    await openSession();
    for (const c of all) {
      const where = `${c.method.toUpperCase()} ${c.path} ${c.status} ${c.name}`;
      // The request: parameters and body from the examples of this name, else their first (valid) one.
      let url = c.path;
      const query = new URLSearchParams();
      for (const param of c.op.parameters ?? []) {
        const ex = param.examples[c.name] ?? (param.required ? first(param.examples) : undefined);
        if (ex === undefined) continue;
        const value = ex['x-fixture'] === 'session' ? await openSession() : String(ex.value);
        if (param.in === 'path') url = url.replace(`{${param.name}}`, encodeURIComponent(value));
        else query.set(param.name, value);
      }
      if (query.size > 0) url += `?${query.toString()}`;
      const bodyExamples = c.op.requestBody?.content['application/json'].examples;
      const bodyExample = bodyExamples === undefined ? undefined : (bodyExamples[c.name] ?? first(bodyExamples));
      let body = bodyExample === undefined ? undefined : JSON.stringify(bodyExample.value);
      let token: string | null = TOKEN;
      let port = rp.adminPort;
      // The requests no JSON example can describe.
      switch (c.name) {
        case 'noToken':
          token = null;
          break;
        case 'wrongToken':
          token = `${TOKEN}-not`;
          break;
        case 'auditorToken':
          token = AUDITOR_TOKEN;
          break;
        case 'notJson':
          body = '{"jti":';
          break;
        case 'tooLarge':
          body = JSON.stringify({ pad: 'p'.repeat(70 * 1024) });
          break;
        case 'sharedStateDown':
        case 'fileSource':
          port = shared.adminPort;
          break;
        case 'catalogDown':
          port = down.adminPort;
          break;
        default:
      }
      const r = await call(port, c.method.toUpperCase(), url, { token, ...(body === undefined ? {} : { body }) });
      assert.equal(String(r.status), c.status, `${where}: ${r.text}`);
      assert.equal(r.headers['content-type'], 'application/json', where);
      assert.deepEqual(validate(c.response.content['application/json'].schema, r.body, doc), [], `${where}: ${r.text}`);
      // An error answers exactly what its example says (a success's values are live: ids, times).
      if (r.status >= 400) assert.deepEqual(r.body, c.response.content['application/json'].examples[c.name]!.value, where);
      for (const [name, h] of Object.entries(c.response.headers ?? {})) {
        const value = r.headers[name.toLowerCase()];
        if (h.required) assert.ok(value !== undefined, `${where}: header ${name}`);
        if (value !== undefined) assert.deepEqual(validate(h.schema, value, doc), [], `${where}: header ${name} ${String(value)}`);
      }
      if (port === rp.adminPort) audited.push({ command: c.op['x-audit-command'], status: r.status });
    }
  });

  it('answers a method a path does not have with 405 and Allow listing the documented ones', async () => {
    const notAllowed = doc.components.responses['MethodNotAllowed']!;
    for (const [p, item] of Object.entries(doc.paths)) {
      const own = METHODS.filter((m) => item[m] !== undefined);
      const sample = samplePath(p, item[own[0]!]!);
      for (const method of PROBED_METHODS.filter((m) => !own.includes(m.toLowerCase() as Method))) {
        const r = await call(rp.adminPort, method, sample);
        assert.equal(r.status, 405, `${method} ${sample}: ${r.text}`);
        assert.deepEqual(String(r.headers['allow']).split(', ').sort(), own.map((m) => m.toUpperCase()).sort(), `${method} ${sample}`);
        assert.deepEqual(validate(notAllowed.content['application/json'].schema, r.body, doc), [], `${method} ${sample}`);
        audited.push({ command: '(405)', status: 405 });
      }
    }
  });

  it('answers paths beside the documented ones with 404', async () => {
    const notFound = doc.components.responses['NotFound']!;
    const templates = Object.keys(doc.paths).map(templateRe);
    const probes = [
      '/',
      '/nowhere',
      '/openapi',
      '/openapi.yaml',
      ...operations(doc).flatMap(({ path: p, op }) => [`${samplePath(p, op)}/`, `${samplePath(p, op)}/more`, `/x${samplePath(p, op)}`]),
      // A dot in a path is a dot, not any character.
      ...Object.keys(doc.paths).map((p) => p.replace(/\./g, '-')),
    ];
    const unrouted = [...new Set(probes)].filter((p) => !templates.some((re) => re.test(p)));
    assert.ok(unrouted.length >= 10, unrouted.join(' '));
    for (const p of unrouted) {
      const r = await call(rp.adminPort, 'GET', p);
      assert.equal(r.status, 404, `${p}: ${r.text}`);
      assert.deepEqual(validate(notFound.content['application/json'].schema, r.body, doc), [], p);
      audited.push({ command: 'unknown', status: 404 });
    }
  });

  it('never reads a verifier back: GET /tenants/{id} lists the users without their scram', async () => {
    const r = await call(rp.adminPort, 'GET', '/tenants/acme');
    assert.equal(r.status, 200, r.text);
    audited.push({ command: 'tenant.get', status: 200 });
    const users = (r.body as { body: { users: Record<string, object> } }).body.users;
    assert.deepEqual(Object.keys(users).sort(), ['app', 'reporting']);
    assert.ok(
      Object.values(users).every((u) => !('scram' in u)),
      r.text,
    );
    assert.ok(!r.text.includes('SCRAM-SHA-256'), r.text);
  });

  it('audits every call as admin.command, /openapi.json included', async () => {
    await rp.close();
    const recs = (await readFile(auditFile, 'utf8'))
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as { event: string; command: string; outcome: { status: number }; count?: number })
      .filter((r) => r.event === 'admin.command');
    const key = (x: { command: string; status: number }): string => `${x.status} ${x.command}`;
    const commands = new Set(operations(doc).map(({ op }) => op['x-audit-command']));
    // Statuses whose command the call names exactly; 405 goes to one of the path's commands, 401s may be counted in one record.
    const exact = (s: number): boolean => s !== 401 && s !== 405;
    assert.deepEqual(
      recs
        .filter((r) => exact(r.outcome.status))
        .map((r) => key({ command: r.command, status: r.outcome.status }))
        .sort(),
      audited
        .filter((a) => exact(a.status))
        .map(key)
        .sort(),
    );
    assert.ok(audited.some((a) => a.command === 'openapi.get' && a.status === 200));
    const refused = recs.filter((r) => r.outcome.status === 401);
    assert.equal(
      refused.reduce((n, r) => n + (r.count ?? 1), 0),
      audited.filter((a) => a.status === 401).length,
      'refused calls',
    );
    assert.ok(
      refused.every((r) => r.count !== undefined || commands.has(r.command)),
      'refused calls name their command',
    );
    const wrongMethod = recs.filter((r) => r.outcome.status === 405);
    assert.equal(wrongMethod.length, audited.filter((a) => a.status === 405).length);
    assert.ok(wrongMethod.every((r) => commands.has(r.command)));
    const text = await readFile(auditFile, 'utf8');
    assert.ok(!text.includes(TOKEN) && !text.includes(TOKEN_SHA256), 'neither the token nor its hash');
    assert.ok(!text.includes('SCRAM-SHA-256$'), 'no verifier, though the tenant routes were given several');
    assert.ok(
      recs.some((r) => r.command === 'tenant.put' && r.outcome.status === 201),
      'a tenant written through the API is in the audit',
    );
  });
});

describe('admin API as its OpenAPI document says, with two workers', () => {
  let cluster: Cluster;
  let child: ChildProxy;

  before(async () => {
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    const users = [{ name: 'app', verifier: await readVerifier(cluster, 'app') }];
    child = await spawnProxy({ server: { workers: 2 }, admin: { token_sha256: TOKEN_SHA256 }, tenants: [{ id: 'acme', cluster, users }] });
  });
  after(async () => {
    await child?.stop();
    await cluster?.stop();
  });

  it("lists the workers' sessions as the document's schema says", async () => {
    const d = (await call(child.adminPort!, 'GET', '/openapi.json')).body as OpenApiDocument;
    const response = deref(d, d.paths['/sessions']!.get!.responses['200']!);
    const c = await connect({ port: child.port, certs: await testCerts() }, { tenant: 'acme', user: 'app', password: 'app-pass' });
    try {
      const r = await call(child.adminPort!, 'GET', '/sessions');
      assert.equal(r.status, 200, r.text);
      const sessions = (r.body as { sessions: { worker?: number }[] }).sessions;
      assert.equal(sessions.length, 1, r.text);
      assert.ok(sessions[0]!.worker !== undefined, r.text);
      assert.deepEqual(validate(response.content['application/json'].schema, r.body, d), [], r.text);
      // The session's pool, in the worker that holds it, as GET /pools documents it.
      const pools = await call(child.adminPort!, 'GET', '/pools');
      assert.equal(pools.status, 200, pools.text);
      const rows = (pools.body as { pools: { tenant: string; worker?: number; total: number }[] }).pools;
      assert.ok(rows.some((p) => p.tenant === 'acme' && p.worker === sessions[0]!.worker && p.total >= 1), pools.text);
      assert.deepEqual(validate(deref(d, d.paths['/pools']!.get!.responses['200']!).content['application/json'].schema, pools.body, d), [], pools.text);
      // GET /limits: one row for the tenant, the workers' use added up (the one session, its backend).
      const limits = await call(child.adminPort!, 'GET', '/limits');
      assert.equal(limits.status, 200, limits.text);
      assert.deepEqual(validate(deref(d, d.paths['/limits']!.get!.responses['200']!).content['application/json'].schema, limits.body, d), [], limits.text);
      const lrows = (limits.body as { limits: { tenant: string; clients: number; backends: number }[] }).limits;
      assert.deepEqual(
        lrows.map((l) => [l.tenant, l.clients, l.backends]),
        [['acme', 1, 1]],
        limits.text,
      );
    } finally {
      await c.end();
    }
  });
});
