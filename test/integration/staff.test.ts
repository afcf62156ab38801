/**
 * Staff access with JWTs and the statement audit (issue 5), against a real PostgreSQL, real
 * clients (node-postgres, psql) and tokens minted here against a JWKS file written here.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createHash, randomUUID } from 'node:crypto';
import pg from 'pg';
import { pino } from 'pino';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWTPayload } from 'jose';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { clientConfig, configToml, connectError, libpqConninfo, psql, spawnProxy, startProxy, testCerts, type ProxySpec, type RunningProxy } from '../support/proxy.js';
import { sleep, waitFor } from '../support/wait.js';
import { parseConfigText } from '../../src/config/load.js';
import { Proxy } from '../../src/server.js';
import { AuditLog, type AuditSink } from '../../src/audit/log.js';
import type { AuditEvent } from '../../src/audit/record.js';
import { Metrics } from '../../src/observability/metrics.js';
import { readAuditFile } from '../support/audit-file.js';

const ISSUER = 'https://sso.pgwarden.test';
const AUDIENCE = 'pgwarden';
const STAFF_PW_ENV = 'PGWARDEN_TEST_STAFF_RO_PW';
const STAFF_RW_PW_ENV = 'PGWARDEN_TEST_STAFF_RW_PW';
const ADMIN_TOKEN = 'staff-test-admin-token-0123456789';

type Rec = Record<string, unknown> & { event: string; seq: number; session?: { id: string; ei: number } };

/** A write token for tenant acme, valid five minutes, signed with `key` (kid k1). */
async function writeToken(key: CryptoKey, sub: string, ticket: string): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ tenant: 'acme', access: 'write', ticket, jti: randomUUID() })
    .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
    .setSubject(sub)
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setIssuedAt(now)
    .setExpirationTime(now + 300)
    .sign(key);
}

describe('staff access and statement audit', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  let dir: string;
  let auditFile: string;
  let key: CryptoKey;
  let rogueKey: CryptoKey;
  let spec: ProxySpec;

  /** A token as the SSO would mint it; `over` replaces or removes (undefined) claims. */
  async function mint(over: Record<string, unknown> = {}, signWith?: CryptoKey, kid = 'k1'): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    const merged: Record<string, unknown> = {
      sub: 'alice@ops.example',
      tenant: 'acme',
      access: 'read',
      ticket: 'INC-4711',
      amr: ['pwd', 'mfa'],
      jti: randomUUID(),
      iat: now,
      exp: now + 300,
      ...over,
    };
    const claims = Object.fromEntries(Object.entries(merged).filter(([, v]) => v !== undefined)) as JWTPayload;
    const { iss, aud, ...rest } = claims;
    return new SignJWT(rest)
      .setProtectedHeader({ alg: 'ES256', kid })
      .setIssuer(iss ?? ISSUER)
      .setAudience(typeof aud === 'string' ? aud : AUDIENCE)
      .sign(signWith ?? key);
  }

  const staffClient = (token: string, tenant = 'acme'): pg.ClientConfig => clientConfig(rp, { tenant, user: 'staff', password: token });

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-staff-'));
    auditFile = path.join(dir, 'audit.jsonl');
    process.env[STAFF_PW_ENV] = 'staff-ro-secret';
    process.env[STAFF_RW_PW_ENV] = 'staff-rw-secret';
    cluster = await startCluster({
      users: [
        { name: 'app', password: 'app-pass' },
        { name: 'staff_ro', password: 'staff-ro-secret' },
        { name: 'staff_rw', password: 'staff-rw-secret' },
      ],
    });
    await cluster.query('CREATE TABLE items (id int PRIMARY KEY, name text)');
    await cluster.query("INSERT INTO items VALUES (1, 'one'), (2, 'two')");
    await cluster.query('GRANT SELECT ON items TO staff_ro');
    await cluster.query('GRANT SELECT, INSERT, UPDATE, DELETE ON items TO staff_rw, app');
    const pair = await generateKeyPair('ES256', { extractable: true });
    key = pair.privateKey;
    rogueKey = (await generateKeyPair('ES256')).privateKey;
    const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
    await writeFile(path.join(dir, 'jwks.json'), JSON.stringify({ keys: [jwk] }));
    const app = { name: 'app', verifier: await readVerifier(cluster, 'app') };
    spec = {
      auditFile,
      admin: { token_sha256: createHash('sha256').update(ADMIN_TOKEN).digest('hex') },
      staff: { jwks: path.join(dir, 'jwks.json'), issuer: ISSUER, audience: AUDIENCE, algorithms: ['ES256'], require_mfa: true, reserved_connections: 2 },
      tenants: [
        { id: 'acme', cluster, users: [app], extra: { staff_access: 'read', staff_backend_user: 'staff_ro', staff_backend_password_env: STAFF_PW_ENV } },
        { id: 'acmew', cluster, users: [app], extra: { staff_access: 'write', staff_backend_user: 'staff_rw', staff_backend_password_env: STAFF_RW_PW_ENV } },
        { id: 'globex', cluster, users: [app] },
        {
          id: 'busy',
          cluster,
          users: [app],
          maxClientConnections: 2,
          pool: { max_backend_connections: 2, pool_timeout: '300ms' },
          extra: { staff_access: 'read', staff_backend_user: 'staff_ro', staff_backend_password_env: STAFF_PW_ENV },
        },
        {
          id: 'audited',
          cluster,
          users: [app],
          pool: { pool_mode: 'transaction', max_backend_connections: 2 },
          extra: { audit_statements: 'all', audit_parameters: 'redacted' },
        },
      ],
    };
    rp = await startProxy(spec);
  });

  after(async () => {
    await rp.close();
    await cluster.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('lets staff read with a valid token, fails writes with 25006, and audits every statement with the ticket', async () => {
    const c = new pg.Client(staffClient(await mint()));
    await c.connect();
    const pid = ((await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!).pid;
    const r = await c.query<{ n: string }>('SELECT count(*) AS n FROM items');
    assert.equal(r.rows[0]!.n, '2');
    const role = await c.query<{ u: string }>('SELECT current_user AS u');
    assert.equal(role.rows[0]!.u, 'staff_ro');
    await assert.rejects(c.query("INSERT INTO items VALUES (3, 'three')"), { code: '25006' });
    // Turning read-only off is refused by the proxy's guard (the server raises it: 25006).
    await assert.rejects(c.query('SET default_transaction_read_only = off'), { code: '25006' });
    await assert.rejects(c.query('BEGIN READ /* sneaky */ WRITE'), { code: '25006' });
    // Extended protocol with a parameter: the refusal still binds, and the client sees 25006.
    await assert.rejects(c.query("SELECT set_config('default_transaction_read_only', $1, false)", ['off']), { code: '25006' });
    assert.equal((await c.query<{ n: string }>('SELECT count(*) AS n FROM items WHERE id > $1', [0])).rows[0]!.n, '2');
    await c.end();
    await rp.proxy.audit.flush();

    const recs = await readAuditFile<Rec>(auditFile);
    const access = recs.find((x) => x.event === 'staff.access' && x['decision'] === 'allow');
    assert.ok(access, 'staff.access allow recorded');
    const sessionId = access.session!.id;
    const mine = recs.filter((x) => x.session?.id === sessionId);
    const start = mine.find((x) => x.event === 'session.start')!;
    assert.ok(access.seq < start.seq, 'the decision is written before the session starts');
    assert.deepEqual((start['auth'] as { method: string }).method, 'jwt');
    const principal = start['principal'] as { kind: string; staff: { sub: string; reason_or_ticket: string; access: string } };
    assert.equal(principal.kind, 'staff');
    assert.equal(principal.staff.sub, 'alice@ops.example');
    assert.equal(principal.staff.reason_or_ticket, 'INC-4711');
    assert.equal((start['backend'] as { pid: number }).pid, pid);
    const queries = mine.filter((x) => x.event === 'session.query');
    const texts = queries.map((q) => q['query']);
    for (const t of ['SELECT count(*) AS n FROM items', 'SELECT current_user AS u', "INSERT INTO items VALUES (3, 'three')"]) assert.ok(texts.includes(t), `audited: ${t}`);
    for (const q of queries) assert.equal((q['principal'] as { staff: { reason_or_ticket: string } }).staff.reason_or_ticket, 'INC-4711');
    // Each statement paired with its result, in order, with the outcome the client saw.
    const results = mine.filter((x) => x.event === 'session.query_result');
    assert.equal(results.length, queries.length);
    const byRef = new Map(results.map((x) => [x['ref'], x]));
    const insert = queries.find((q) => q['query'] === "INSERT INTO items VALUES (3, 'three')")!;
    assert.equal(byRef.get(insert.session!.ei)!['sqlstate'], '25006');
    const count = queries.find((q) => q['query'] === 'SELECT count(*) AS n FROM items')!;
    assert.equal(byRef.get(count.session!.ei)!['command_tag'], 'SELECT 1');
    assert.equal(byRef.get(count.session!.ei)!['rows'], 1);
    const end = mine.find((x) => x.event === 'session.end')!;
    assert.equal(end['statements_audited'], queries.length);
    // The token never reaches the log.
    assert.ok(!(await readFile(auditFile, 'utf8')).includes('eyJ'), 'no JWT in the audit file');
  });

  it('audits extended-protocol and pipelined messages each for what they are, with parameters', async () => {
    const c = new pg.Client(staffClient(await mint({ ticket: 'CHG-9' })));
    await c.connect();
    const r = await c.query<{ n: number }>({ text: 'SELECT $1::int + 1 AS n', values: [41], name: 'plus' });
    assert.equal(r.rows[0]!.n, 42);
    await c.query({ text: 'SELECT $1::int + 1 AS n', values: [1], name: 'plus' }); // Bind/Execute only
    // A broken Parse pipelined with Bind/Describe/Execute/Sync: the rest is skipped by the server.
    await assert.rejects(c.query({ text: 'SELEC $1::int', values: [7] }), { code: '42601' });
    await c.end();
    await rp.proxy.audit.flush();
    const recs = await readAuditFile<Rec>(auditFile);
    const sid = recs.find((x) => x.event === 'staff.access' && (x['staff'] as { reason_or_ticket?: string }).reason_or_ticket === 'CHG-9')!.session!.id;
    const mine = recs.filter((x) => x.session?.id === sid);
    const q = mine.filter((x) => x.event === 'session.query');
    const kinds = q.map((x) => x['kind']);
    assert.deepEqual(kinds.slice(0, 4), ['parse', 'bind', 'describe', 'execute']);
    const binds = q.filter((x) => x['kind'] === 'bind');
    assert.deepEqual(binds[0]!['params'], ['41'], 'staff parameters are logged in full by default');
    assert.deepEqual(binds[1]!['params'], ['1']);
    const executes = q.filter((x) => x['kind'] === 'execute');
    assert.equal(executes[1]!['query'], 'SELECT $1::int + 1 AS n', 'Execute names the statement it runs');
    assert.equal(executes[1]!['statement_name'], 'plus');
    const results = new Map(mine.filter((x) => x.event === 'session.query_result').map((x) => [x['ref'], x]));
    for (const x of q) assert.ok(results.has(x.session!.ei), `result for ${String(x['kind'])}`);
    const badParse = q.find((x) => x['kind'] === 'parse' && x['query'] === 'SELEC $1::int')!;
    assert.equal(results.get(badParse.session!.ei)!['sqlstate'], '42601');
    const after = q.filter((x) => x.session!.ei > badParse.session!.ei);
    assert.deepEqual(after.map((x) => x['kind']), ['bind', 'describe', 'execute']);
    for (const x of after) assert.equal(results.get(x.session!.ei)!['executed'], false, 'skipped after the error');
    assert.equal(results.get(executes[0]!.session!.ei)!['command_tag'], 'SELECT 1');
  });

  it('works with psql (libpq cleartext exchange) and writes with write access', async () => {
    const token = await mint({ tenant: ['acmew', 'acme'], access: 'write', ticket: 'CHG-10' });
    const res = await psql(libpqConninfo(rp, { tenant: 'acmew', user: 'staff' }), token, ['-c', "INSERT INTO items VALUES (10, 'ten') RETURNING id"]);
    assert.equal(res.code, 0, res.stderr);
    assert.equal(res.stdout.trim().split('\n')[0], '10');
    const rows = await cluster.query('SELECT name FROM items WHERE id = 10');
    assert.equal(rows.rows.length, 1);
  });

  it('refuses every bad token with the same 28P01 and names the reason only in the audit', async () => {
    const now = Math.floor(Date.now() / 1000);
    const cases: [string, string, string][] = [
      ['another tenant', await mint({ tenant: 'globex' }), 'jwt_invalid:scope'],
      ['expired', await mint({ iat: now - 600, exp: now - 300 }), 'jwt_invalid:exp'],
      ['wrong issuer', await mint({ iss: 'https://evil.example' }), 'jwt_invalid:iss'],
      ['wrong audience', await mint({ aud: 'someone-else' }), 'jwt_invalid:aud'],
      ['no MFA', await mint({ amr: ['pwd'] }), 'jwt_invalid:mfa'],
      ['no ticket', await mint({ ticket: undefined }), 'jwt_invalid:ticket'],
      ['wrong key', await mint({}, rogueKey), 'jwt_invalid:sig'],
      ['unknown kid', await mint({}, rogueKey, 'k9'), 'jwt_invalid:kid'],
      ['too long-lived', await mint({ exp: now + 86_400 }), 'jwt_invalid:lifetime'],
      ['not a JWT', 'hunter2', 'jwt_invalid:malformed'],
    ];
    for (const [what, token] of cases) {
      const err = await connectError(staffClient(token));
      assert.equal(err.code, '28P01', what);
      assert.equal(err.message, 'password authentication failed for user "staff"', what);
    }
    // A tenant that allows no staff access, with an otherwise perfect token.
    const denied = await connectError(staffClient(await mint({ tenant: 'globex' }), 'globex'));
    assert.equal(denied.code, '28P01');
    // Replay: the first use works, the second is refused.
    const once = await mint({ ticket: 'INC-replay' });
    const first = new pg.Client(staffClient(once));
    await first.connect();
    await first.end();
    const replay = await connectError(staffClient(once));
    assert.equal(replay.code, '28P01');
    // An unknown tenant looks the same.
    const unknown = await connectError(staffClient(await mint({ tenant: 'nosuch' }), 'nosuch'));
    assert.equal(unknown.code, '28P01');

    await rp.proxy.audit.flush();
    const recs = await readAuditFile<Rec>(auditFile);
    const denies = recs.filter((x) => x.event === 'staff.access' && x['decision'] === 'deny').map((x) => x['reason']);
    for (const [what, , reason] of cases) assert.ok(denies.includes(reason), `${what}: ${reason} audited`);
    assert.ok(denies.includes('jwt_invalid:replay'));
    assert.ok(denies.includes('unknown_tenant'));
    assert.ok(denies.filter((r) => r === 'jwt_invalid:scope').length >= 2, 'tenant with staff_access = "deny"');
    // A refused staff login never reached a backend: no session.start without an allow.
    const allowed = new Set(recs.filter((x) => x.event === 'staff.access' && x['decision'] === 'allow').map((x) => x.session!.id));
    for (const s of recs.filter((x) => x.event === 'session.start' && (x['principal'] as { kind: string }).kind === 'staff')) assert.ok(allowed.has(s.session!.id));
  });

  it('ends a staff session when its token expires (57P01) and when the token is revoked', async () => {
    const now = Math.floor(Date.now() / 1000);
    const c = new pg.Client(staffClient(await mint({ exp: now + 2 })));
    const errors: { code?: string; message: string }[] = [];
    c.on('error', (e: Error & { code?: string }) => errors.push(e));
    await c.connect();
    await c.query('SELECT 1');
    await waitFor(() => errors.length > 0, 6_000, 'expiry');
    assert.equal(errors[0]!.code, '57P01');
    assert.equal(errors[0]!.message, 'terminating connection because staff access expired');
    await c.end().catch(() => undefined);
  });

  it('ends a live staff session when an operator revokes its token, and refuses the person afterwards', async () => {
    const revoke = (body: object): Promise<Response> =>
      fetch(`http://127.0.0.1:${rp.adminPort}/staff/revoke`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const jti = randomUUID();
    const c = new pg.Client(staffClient(await mint({ sub: 'mallory@ops.example', jti, ticket: 'INC-revoke' })));
    const errors: (Error & { code?: string })[] = [];
    c.on('error', (e: Error & { code?: string }) => errors.push(e));
    await c.connect();
    await c.query('SELECT 1');
    assert.equal((await revoke({ jti })).status, 200);
    await waitFor(() => errors.length > 0, 3_000, 'revoked session ended');
    assert.equal(errors[0]!.code, '57P01');
    await c.end().catch(() => undefined);
    // Revoking the person refuses their fresh tokens too, with the usual 28P01.
    assert.equal((await revoke({ sub: 'mallory@ops.example' })).status, 200);
    assert.equal((await connectError(staffClient(await mint({ sub: 'mallory@ops.example' })))).code, '28P01');
    await rp.proxy.audit.flush();
    const recs = await readAuditFile<Rec>(auditFile);
    assert.ok(recs.some((x) => x.event === 'staff.access' && x['reason'] === 'jwt_invalid:revoked'));
  });

  /** Clients of one test, each ended by the test's `finally` even when an assertion failed first. */
  function clientsOf(): { open: (cfg: pg.ClientConfig) => Promise<pg.Client>; endAll: () => Promise<void> } {
    const all: pg.Client[] = [];
    return {
      open: async (cfg) => {
        const c = new pg.Client(cfg);
        c.on('error', () => undefined);
        all.push(c);
        await c.connect();
        return c;
      },
      endAll: async () => {
        await Promise.all(all.map((c) => c.end().catch(() => undefined)));
      },
    };
  }

  it('lets staff in while the tenant is at both its caps, up to reserved_connections, and never takes a customer slot', async () => {
    const app = (): pg.ClientConfig => clientConfig(rp, { tenant: 'busy', user: 'app', password: 'app-pass' });
    const busyPool = (): { total: number; idle: number } => rp.proxy.pools.snapshot().find((p) => p.tenant === 'busy')!;
    const clients = clientsOf();
    try {
      const held = [await clients.open(app()), await clients.open(app())];
      assert.equal(busyPool().total, 2, 'the tenant holds all of its max_backend_connections');
      assert.equal((await connectError(app())).code, '53300', 'the tenant is at max_client_connections');

      const staff = [await clients.open(staffClient(await mint({ tenant: 'busy', ticket: 'INC-full' }), 'busy')), await clients.open(staffClient(await mint({ tenant: 'busy', ticket: 'INC-full' }), 'busy'))];
      for (const c of staff) assert.equal((await c.query<{ u: string }>('SELECT current_user AS u')).rows[0]!.u, 'staff_ro');
      assert.equal(busyPool().total, 4, 'each staff session opened a backend beyond the cap');
      const third = await connectError(staffClient(await mint({ tenant: 'busy' }), 'busy'));
      assert.equal(third.code, '53300', 'the reserve is a cap too');
      assert.equal(third.message, 'too many connections for role "staff"');
      assert.equal((await connectError(app())).code, '53300', 'staff took no customer slot and gave none');

      // Staff leave: their backends go idle under their own key, 4 backends against a cap of 2. A
      // customer who needs a backend of a new key (other startup parameters) evicts idle ones until
      // there is room, rather than waiting out pool_timeout behind them.
      for (const c of staff) await c.end();
      await held[0]!.end();
      await waitFor(() => busyPool().total === 4 && busyPool().idle === 3, 3_000, 'staff and app backends idle');
      const back = await clients.open({ ...app(), application_name: 'another-key' });
      assert.equal((await back.query<{ n: number }>('SELECT 7 AS n')).rows[0]!.n, 7);
      assert.ok(busyPool().total <= 2, `back under the cap once staff are gone (${busyPool().total})`);
    } finally {
      await clients.endAll();
    }

    await rp.proxy.audit.flush();
    const starts = (await readAuditFile<Rec>(auditFile)).filter((x) => x.event === 'session.start' && x['tenant'] === 'busy');
    const staffStarts = starts.filter((x) => (x['principal'] as { kind?: string }).kind === 'staff');
    assert.equal(staffStarts.length, 2);
    type Limits = { tenant_active_after: number; tenant_limit: number; counted_in: string };
    const limits = (x: Rec): Limits => x['limits'] as Limits;
    assert.deepEqual(staffStarts.map((s) => [limits(s).counted_in, limits(s).tenant_limit, limits(s).tenant_active_after]).sort(), [['staff_reserved', 2, 1], ['staff_reserved', 2, 2]]);
    const customers = starts.filter((x) => (x['principal'] as { kind?: string }).kind !== 'staff');
    assert.ok(customers.length >= 3 && customers.every((s) => limits(s).counted_in === 'tenant' && limits(s).tenant_limit === 2));
  });

  it('with reserved_connections = 0, staff count against the tenant caps as its users do', async () => {
    rp.reload({ ...spec, staff: { ...spec.staff, reserved_connections: 0 } });
    const clients = clientsOf();
    try {
      const held = [await clients.open(clientConfig(rp, { tenant: 'busy', user: 'app', password: 'app-pass' })), await clients.open(clientConfig(rp, { tenant: 'busy', user: 'app', password: 'app-pass' }))];
      const refused = await connectError(staffClient(await mint({ tenant: 'busy' }), 'busy'));
      assert.equal(refused.code, '53300');
      assert.equal(refused.message, 'too many connections for database "postgres"');
      await held[0]!.end();
      const s = await clients.open(staffClient(await mint({ tenant: 'busy' }), 'busy'));
      assert.equal((await s.query<{ u: string }>('SELECT current_user AS u')).rows[0]!.u, 'staff_ro');
    } finally {
      await clients.endAll();
      rp.reload(spec);
    }
  });

  it('audits a customer tenant with audit_statements = "all" in transaction mode, parameters redacted', async () => {
    const c = new pg.Client(clientConfig(rp, { tenant: 'audited', user: 'app', password: 'app-pass' }));
    await c.connect();
    await c.query({ text: 'SELECT $1::text AS secret', values: ['card-4111'], name: 'q1' });
    await c.query('BEGIN');
    await c.query('UPDATE items SET name = name WHERE id = 1');
    await c.query('COMMIT');
    await c.query({ text: 'SELECT $1::text AS secret', values: ['card-4242'], name: 'q1' });
    await c.end();
    await rp.proxy.audit.flush();
    const text = await readFile(auditFile, 'utf8');
    assert.ok(!text.includes('card-4111') && !text.includes('card-4242'), 'redacted parameters never reach the log');
    const recs = await readAuditFile<Rec>(auditFile);
    const mine = recs.filter((x) => x['tenant'] === 'audited' && (x.event === 'session.query' || x.event === 'session.query_result'));
    const update = mine.find((x) => x.event === 'session.query' && x['query'] === 'UPDATE items SET name = name WHERE id = 1')!;
    const res = mine.find((x) => x.event === 'session.query_result' && x['ref'] === update.session!.ei)!;
    assert.equal(res['command_tag'], 'UPDATE 1');
    assert.equal(res['rows'], 1);
    assert.equal(res['tx_status_after'], 'T');
    const bind = mine.find((x) => x.event === 'session.query' && x['kind'] === 'bind')!;
    assert.deepEqual(bind['params'], [{ redacted: true, bytes: 9 }]);
    // The second run of q1 may be answered by pgwarden itself (statement cached on the backend): still audited and paired.
    const queries = mine.filter((x) => x.event === 'session.query');
    const results = mine.filter((x) => x.event === 'session.query_result');
    assert.equal(results.length, queries.length);
  });
});

/** A real audit log behind a switch: for the one fault a real file cannot give on demand mid-session. */
class BreakableAudit implements AuditSink {
  broken = false;
  constructor(private readonly inner: AuditLog) {}
  append(event: AuditEvent): void {
    if (!this.broken) this.inner.append(event);
  }
  appendDurable(event: AuditEvent): Promise<void> {
    if (this.broken) return Promise.reject(new Error('ENOSPC: no space left on device'));
    return this.inner.appendDurable(event);
  }
  get healthy(): boolean {
    return !this.broken && this.inner.healthy;
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

describe('fail-closed statement audit', () => {
  let cluster: Cluster;
  let dir: string;
  let proxy: Proxy;
  let audit: BreakableAudit;
  let port: number;
  let key: CryptoKey;
  let spec: ProxySpec;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-failclosed-'));
    process.env[STAFF_RW_PW_ENV] = 'staff-rw-secret';
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }, { name: 'staff_rw', password: 'staff-rw-secret' }] });
    await cluster.query('CREATE TABLE t (id int)');
    await cluster.query('GRANT SELECT, INSERT ON t TO staff_rw, app');
    const pair = await generateKeyPair('ES256', { extractable: true });
    key = pair.privateKey;
    await writeFile(path.join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(pair.publicKey)), kid: 'k1' }] }));
    const app = { name: 'app', verifier: await readVerifier(cluster, 'app') };
    spec = {
      auditFile: path.join(dir, 'audit.jsonl'),
      staff: { jwks: path.join(dir, 'jwks.json'), issuer: ISSUER, audience: AUDIENCE, algorithms: ['ES256'], require_mfa: false },
      tenants: [
        { id: 'acme', cluster, users: [app], extra: { staff_access: 'write', staff_backend_user: 'staff_rw', staff_backend_password_env: STAFF_RW_PW_ENV } },
        { id: 'strict', cluster, users: [app], extra: { audit_statements: 'all', audit_fail_closed: true } },
        { id: 'lenient', cluster, users: [app], extra: { audit_statements: 'all' } },
      ],
    };
    const certs = await testCerts();
    const config = parseConfigText(configToml(spec, certs), os.tmpdir());
    const log = pino({ level: 'silent' });
    audit = new BreakableAudit(await AuditLog.open(config.audit, 'fail-closed-test', '0.0.0-test', new Metrics(), log));
    proxy = await Proxy.start(config, { logger: log, audit });
    port = proxy.address.port;
  });

  after(async () => {
    await proxy.close();
    await cluster.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const token = (): Promise<string> => writeToken(key, 'bob', 'INC-1');

  it('refuses a staff statement whose record cannot be written, ends the session, and runs nothing', async () => {
    const certs = await testCerts();
    const rpLike = { port, certs };
    audit.broken = false;
    const c = new pg.Client(clientConfig(rpLike, { tenant: 'acme', user: 'staff', password: await token() }));
    const errors: (Error & { code?: string })[] = [];
    c.on('error', (e) => errors.push(e));
    await c.connect();
    await c.query('INSERT INTO t VALUES (1)');
    const lenient = new pg.Client(clientConfig(rpLike, { tenant: 'lenient', user: 'app', password: 'app-pass' }));
    const strict = new pg.Client(clientConfig(rpLike, { tenant: 'strict', user: 'app', password: 'app-pass' }));
    await lenient.connect();
    await strict.connect();
    strict.on('error', () => undefined);

    audit.broken = true;
    await assert.rejects(c.query('INSERT INTO t VALUES (2)'), (e: Error & { code?: string }) => {
      assert.equal(e.code, '57P01');
      assert.equal(e.message, 'terminating connection because the audit log is unavailable');
      return true;
    });
    await assert.rejects(strict.query('INSERT INTO t VALUES (3)'), { code: '57P01' });
    // A best-effort tenant keeps working while the log is down (its records are lost and counted).
    await lenient.query('INSERT INTO t VALUES (4)');
    const ids = (await cluster.query<{ id: number }>('SELECT id FROM t ORDER BY id')).rows.map((r) => r.id);
    assert.deepEqual(ids, [1, 4], 'the refused statements never ran');

    // New fail-closed logins are refused while the log is down: 57P03.
    const staffErr = await connectError(clientConfig(rpLike, { tenant: 'acme', user: 'staff', password: await token() }));
    assert.equal(staffErr.code, '57P03');
    assert.equal(staffErr.message, 'audit log is unavailable, not accepting connections');
    const strictErr = await connectError(clientConfig(rpLike, { tenant: 'strict', user: 'app', password: 'app-pass' }));
    assert.equal(strictErr.code, '57P03');

    audit.broken = false;
    const again = new pg.Client(clientConfig(rpLike, { tenant: 'acme', user: 'staff', password: await token() }));
    await again.connect();
    await again.query('SELECT 1');
    await again.end();
    await lenient.end();
    await c.end().catch(() => undefined);
    await sleep(10);
  });
});

describe('audit file on a full disk (/dev/full)', () => {
  let cluster: Cluster;
  let dir: string;
  let rp: RunningProxy;
  let key: CryptoKey;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-devfull-'));
    process.env[STAFF_RW_PW_ENV] = 'staff-rw-secret';
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }, { name: 'staff_rw', password: 'staff-rw-secret' }] });
    const pair = await generateKeyPair('ES256', { extractable: true });
    key = pair.privateKey;
    await writeFile(path.join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(pair.publicKey)), kid: 'k1' }] }));
    const app = { name: 'app', verifier: await readVerifier(cluster, 'app') };
    rp = await startProxy({
      auditFile: '/dev/full',
      staff: { jwks: path.join(dir, 'jwks.json'), issuer: ISSUER, audience: AUDIENCE, algorithms: ['ES256'], require_mfa: false },
      tenants: [
        { id: 'acme', cluster, users: [app], extra: { staff_access: 'write', staff_backend_user: 'staff_rw', staff_backend_password_env: STAFF_RW_PW_ENV } },
        { id: 'strict', cluster, users: [app], extra: { audit_statements: 'all', audit_fail_closed: true } },
        { id: 'lenient', cluster, users: [app], extra: { audit_statements: 'all' } },
      ],
    });
  });

  after(async () => {
    await rp.close();
    await cluster.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses staff and fail-closed logins with 57P03 and keeps best-effort tenants serving', async () => {
    // The proxy's first record (started) already failed with ENOSPC.
    await waitFor(() => !rp.proxy.audit.healthy, 5_000, 'audit log unhealthy');
    const token = await writeToken(key, 'carol', 'INC-2');
    const staffErr = await connectError(clientConfig(rp, { tenant: 'acme', user: 'staff', password: token }));
    assert.equal(staffErr.code, '57P03');
    assert.equal(staffErr.message, 'audit log is unavailable, not accepting connections');
    const strictErr = await connectError(clientConfig(rp, { tenant: 'strict', user: 'app', password: 'app-pass' }));
    assert.equal(strictErr.code, '57P03');
    const c = new pg.Client(clientConfig(rp, { tenant: 'lenient', user: 'app', password: 'app-pass' }));
    await c.connect();
    assert.equal((await c.query<{ n: number }>('SELECT 41 + 1 AS n')).rows[0]!.n, 42);
    await c.end();
  });
});

describe('staff sessions across worker processes', () => {
  it('claims a token once across workers and makes each statement durable through the primary', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-staff-workers-'));
    const cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }, { name: 'staff_rw', password: 'staff-rw-secret' }] });
    try {
      const pair = await generateKeyPair('ES256', { extractable: true });
      await writeFile(path.join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(pair.publicKey)), kid: 'k1' }] }));
      const auditFile = path.join(dir, 'audit.jsonl');
      const child = await spawnProxy(
        {
          auditFile,
          server: { workers: 2 },
          staff: { jwks: path.join(dir, 'jwks.json'), issuer: ISSUER, audience: AUDIENCE, algorithms: ['ES256'], require_mfa: false },
          tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier: await readVerifier(cluster, 'app') }], extra: { staff_access: 'write', staff_backend_user: 'staff_rw', staff_backend_password_env: STAFF_RW_PW_ENV } }],
        },
        { [STAFF_RW_PW_ENV]: 'staff-rw-secret' },
      );
      try {
        const rpLike = { port: child.port, certs: await testCerts() };
        const token = await writeToken(pair.privateKey, 'dave', 'INC-W');
        const c = new pg.Client(clientConfig(rpLike, { tenant: 'acme', user: 'staff', password: token }));
        await c.connect();
        assert.equal((await c.query<{ n: number }>('SELECT 6 * 7 AS n')).rows[0]!.n, 42);
        // Replays land on either worker (the kernel spreads accepts): the primary refuses them all.
        for (let i = 0; i < 4; i++) assert.equal((await connectError(clientConfig(rpLike, { tenant: 'acme', user: 'staff', password: token }))).code, '28P01');
        await c.end();
      } finally {
        child.child.kill('SIGTERM');
        await child.exited;
        await child.stop();
      }
      const recs = await readAuditFile<Rec>(auditFile);
      const q = recs.find((x) => x.event === 'session.query' && x['query'] === 'SELECT 6 * 7 AS n');
      assert.ok(q, 'the worker\'s statement is in the primary\'s log');
      assert.equal(typeof q['worker'], 'number');
      assert.equal(recs.filter((x) => x.event === 'staff.access' && x['reason'] === 'jwt_invalid:replay').length, 4);
    } finally {
      await cluster.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
