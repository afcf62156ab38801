/**
 * The PostgreSQL audit store end to end: `audit init`, a proxy whose records reach the table, the
 * store killed and restarted mid-run (every record once, in order, as in the file), a pgwarden
 * restart with a full spool, and `audit sessions | query` giving the same rows from both sources.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { configToml, connect, startProxy, testCerts, type ProxySpec, type RunningProxy } from '../support/proxy.js';
import { waitFor } from '../support/wait.js';
import { recordHash, type AuditRecord } from '../../src/audit/record.js';
import { AuditLog } from '../../src/audit/log.js';
import { openAuditStores } from '../../src/audit/pg-sink.js';
import { initStore, newStoreClient } from '../../src/audit/store-table.js';
import { defaultAuditConfig } from '../../src/config/validate-audit.js';
import { Metrics } from '../../src/observability/metrics.js';
import { pino } from 'pino';
import { mkdir } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { clientConfig } from '../support/proxy.js';

const CLI = path.resolve('dist/src/cli.js');
const STORE_PW = 'store-writer-pw';
const PW_ENV = 'PGWARDEN_TEST_AUDIT_STORE_PW';
const STAFF_PW_ENV = 'PGWARDEN_TEST_AUDIT_STORE_STAFF_PW';

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'audit', ...args], { env: { ...process.env, [PW_ENV]: STORE_PW }, timeout: 60_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

async function fileRecords(file: string): Promise<AuditRecord[]> {
  return (await readFile(file, 'utf8'))
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as AuditRecord);
}

async function metric(port: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) sum += Number(line.split(' ').pop());
  return sum;
}

describe('audit store (PostgreSQL sink)', () => {
  let store: Cluster;
  let tenantPg: Cluster;
  let dir: string;
  let verifier: string;
  let storeUrl: string;
  const open: RunningProxy[] = [];

  const spec = (name: string, table: string): ProxySpec => ({
    auditFile: path.join(dir, name, 'audit.jsonl'),
    auditPostgres: { url: storeUrl, password_env: PW_ENV, table, spool_dir: path.join(dir, name, 'spool'), batch_size: 20, flush_interval: '50ms' },
    tenants: [{ id: 'acme', cluster: tenantPg, users: [{ name: 'app', verifier }] }],
  });

  async function sessions(rp: RunningProxy, n: number): Promise<void> {
    for (let i = 0; i < n; i++) {
      const c = await connect(rp, { tenant: 'acme', user: 'app', password: 'secret-app' });
      await c.query('SELECT 1');
      await c.end();
    }
  }

  async function tableRows(table: string): Promise<{ id: string; seq: string; boot_id: string; record: AuditRecord; chain_hash: string }[]> {
    return (await store.query<{ id: string; seq: string; boot_id: string; record: AuditRecord; chain_hash: string }>(`SELECT id, seq, boot_id, record, chain_hash FROM ${table} ORDER BY pos`, [], 'audit')).rows;
  }

  /** Every record of the file is in the table exactly once, in the file's order. */
  async function assertSameAsFile(file: string, table: string): Promise<void> {
    const want = await fileRecords(file);
    await waitFor(async () => (await tableRows(table)).length >= want.length, 20_000, 'all records in the store');
    const rows = await tableRows(table);
    assert.equal(rows.length, want.length, 'no record twice');
    assert.deepEqual(rows.map((r) => r.id), want.map((r) => r.id), 'same records, same order');
    for (const r of rows) {
      // jsonb kept every value: the chain hash recomputes from what the store holds.
      assert.equal(recordHash(r.record), r.chain_hash);
    }
    const byBoot = new Map<string, number>();
    for (const r of rows) {
      const prev = byBoot.get(r.boot_id) ?? -1;
      assert.equal(Number(r.seq), prev + 1, 'gapless seq order within a boot');
      byBoot.set(r.boot_id, Number(r.seq));
    }
  }

  before(async () => {
    store = await startCluster({ users: [{ name: 'auditw', password: STORE_PW }], databases: ['audit'] });
    await store.query('GRANT CREATE ON SCHEMA public TO auditw', [], 'audit');
    storeUrl = `postgresql://auditw@127.0.0.1:${store.port}/audit`;
    process.env[PW_ENV] = STORE_PW;
    process.env[STAFF_PW_ENV] = 'staff-ro-secret';
    tenantPg = await startCluster({ users: [{ name: 'app', password: 'secret-app' }, { name: 'staff_ro', password: 'staff-ro-secret' }] });
    verifier = await readVerifier(tenantPg, 'app');
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-astore-'));
  });
  after(async () => {
    for (const rp of open) await rp.close().catch(() => undefined);
    await store?.stop();
    await tenantPg?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it('audit init creates the table and indexes, and a second run changes nothing', async () => {
    for (const table of ['audit_outage', 'audit_restart']) {
      const first = await cli(['init', '--postgres', storeUrl, '--table', table, '--password-env', PW_ENV]);
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stdout, new RegExp(`created audit table ${table}`));
    }
    const again = await cli(['init', '--postgres', storeUrl, '--table', 'audit_outage', '--password-env', PW_ENV]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /audit_outage exists/);
    const cols = await store.query<{ column_name: string; data_type: string }>(
      "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'audit_outage' ORDER BY ordinal_position", [], 'audit');
    assert.deepEqual(
      cols.rows.map((c) => `${c.column_name}:${c.data_type}`),
      ['pos:bigint', 'id:uuid', 'seq:bigint', 'boot_id:text', 'instance_id:text', 'time:timestamp with time zone', 'event:text', 'tenant:text',
        'session_id:text', 'db_user:text', 'staff_sub:text', 'ticket:text', 'client_addr:text', 'record:jsonb', 'chain_hash:text', 'stored_at:timestamp with time zone'],
    );
    const idx = await store.query<{ indexname: string }>("SELECT indexname FROM pg_indexes WHERE tablename = 'audit_outage' ORDER BY 1", [], 'audit');
    for (const name of ['audit_outage_time_idx', 'audit_outage_tenant_time_idx', 'audit_outage_session_idx', 'audit_outage_pkey']) {
      assert.ok(idx.rows.some((r) => r.indexname === name), name);
    }
    const bad = await cli(['init', '--postgres', storeUrl, '--table', 'Robert"; DROP']);
    assert.equal(bad.code, 2);
  });

  it('keeps every record, once and in order, while the store is killed and restarted', async () => {
    const s = spec('outage', 'audit_outage');
    const rp = await startProxy(s);
    open.push(rp);
    await sessions(rp, 4);
    await assertSameAsFile(s.auditFile!, 'audit_outage');
    const deliveredBefore = await metric(rp.metricsPort, 'pgwarden_audit_store_delivered_total');
    assert.ok(deliveredBefore > 0);

    await store.killHard();
    await sessions(rp, 12);
    const spoolDir = path.join(dir, 'outage', 'spool');
    await waitFor(async () => (await readdir(spoolDir)).length > 0, 10_000, 'records spooled to disk');
    assert.ok((await metric(rp.metricsPort, 'pgwarden_audit_store_pending_records')) > 0);
    assert.ok((await metric(rp.metricsPort, 'pgwarden_audit_store_spool_records')) > 0);
    assert.ok((await metric(rp.metricsPort, 'pgwarden_audit_store_lag_seconds')) > 0);
    assert.ok((await metric(rp.metricsPort, 'pgwarden_audit_store_failures_total')) > 0);
    const spooledText = (await Promise.all((await readdir(spoolDir)).map((f) => readFile(path.join(spoolDir, f), 'utf8')))).join('');
    assert.ok(!spooledText.includes(STORE_PW), 'the password is nowhere in the spool');

    await store.restart();
    await sessions(rp, 3);
    await assertSameAsFile(s.auditFile!, 'audit_outage');
    await waitFor(async () => (await metric(rp.metricsPort, 'pgwarden_audit_store_pending_records')) === 0, 10_000, 'backlog drained');
    assert.equal(await metric(rp.metricsPort, 'pgwarden_audit_store_lag_seconds'), 0);
    assert.deepEqual(await readdir(spoolDir), [], 'delivered spool files are removed');
    const metricsText = await (await fetch(`http://127.0.0.1:${rp.metricsPort}/metrics`)).text();
    assert.ok(!metricsText.includes(STORE_PW));

    await rp.close();
    open.pop();
    await assertSameAsFile(s.auditFile!, 'audit_outage'); // with the final 'stopped' record
  });

  it('delivers a spool left by a stopped pgwarden first when it starts again', async () => {
    const s = spec('restart', 'audit_restart');
    await store.killHard();
    const first = await startProxy(s);
    await sessions(first, 5);
    await first.close();
    const spoolDir = path.join(dir, 'restart', 'spool');
    const left = await readdir(spoolDir);
    assert.ok(left.length > 0, 'records are on disk after a close with the store down');
    const spooled = (await Promise.all(left.sort().map((f) => readFile(path.join(spoolDir, f), 'utf8')))).join('');
    const firstBoot = await fileRecords(s.auditFile!);
    assert.deepEqual(spooled.split('\n').filter((l) => l !== '').map((l) => (JSON.parse(l) as AuditRecord).id), firstBoot.map((r) => r.id), 'the spool holds every record in order');

    await store.restart();
    const second = await startProxy(s);
    open.push(second);
    await sessions(second, 2);
    await assertSameAsFile(s.auditFile!, 'audit_restart');
    assert.equal(new Set((await tableRows('audit_restart')).map((r) => r.boot_id)).size, 2);
    await second.close();
    open.pop();
    await assertSameAsFile(s.auditFile!, 'audit_restart');
    assert.deepEqual(await readdir(spoolDir), []);
  });

  it('re-sent records are not stored twice; a NUL (which jsonb refuses) is stored as U+FFFD under its original hash', async () => {
    const client = newStoreClient(storeUrl, PW_ENV);
    await client.connect();
    await initStore(client, 'audit_lib');
    await client.end();
    const file = path.join(dir, 'lib', 'audit.jsonl');
    const spoolDir = path.join(dir, 'lib', 'spool');
    const cfg = { ...defaultAuditConfig(file), postgres: { url: storeUrl, passwordEnv: PW_ENV, table: 'audit_lib', spoolDir, batchSize: 2, flushIntervalMs: 20 } };
    const metrics = new Metrics();
    const audit = await AuditLog.open(cfg, 'i-lib', '0.0.0-test', metrics, pino({ level: 'silent' }), { sinks: await openAuditStores(cfg, metrics, pino({ level: 'silent' })) });
    try {
      for (let i = 0; i < 4; i++) audit.append({ event: 'session.query', session: { id: 'lib', ei: i }, tenant: 'acme', query: i === 2 ? 'SELECT \'a\u0000b\'' : `SELECT ${i}` });
    } finally {
      await audit.close();
    }
    const rows = await tableRows('audit_lib');
    const want = await fileRecords(file);
    assert.deepEqual(rows.map((r) => r.id), want.map((r) => r.id));
    assert.equal(rows[2]!.record['query'], "SELECT 'a\ufffdb'");
    assert.equal(rows[2]!.chain_hash, want[2]!.chain.hash);
    assert.equal(metrics.auditStoreBacklog, null, 'close() detaches the backlog gauge');

    // As if pgwarden crashed before removing a delivered spool file: it is sent again, harmlessly.
    await mkdir(spoolDir, { recursive: true });
    await writeFile(path.join(spoolDir, 'spool-0000000000000001.jsonl'), await readFile(file, 'utf8'));
    const againMetrics = new Metrics();
    const again = await AuditLog.open(cfg, 'i-lib', '0.0.0-test', againMetrics, pino({ level: 'silent' }), { sinks: await openAuditStores(cfg, againMetrics, pino({ level: 'silent' })) });
    try {
      again.append({ event: 'proxy.lifecycle', state: 'started' });
    } finally {
      await again.close();
    }
    const after = await tableRows('audit_lib');
    // The first run never wrote "stopped", so the second opens with audit.gap (restart): it and "started" are new.
    assert.equal(after.length, want.length + 2);
    assert.equal(after[want.length]!.record['event'], 'audit.gap');
    assert.deepEqual(after.map((r) => r.id), (await fileRecords(file)).map((r) => r.id));
    assert.deepEqual(await readdir(spoolDir), []);
  });

  it('audit sessions and audit query give the same rows from the file and from PostgreSQL', async () => {
    const file = path.join(dir, 'outage', 'audit.jsonl');
    const pgArgs = ['--postgres', storeUrl, '--table', 'audit_outage', '--password-env', PW_ENV];
    const both = async (args: string[]): Promise<string> => {
      const a = await cli([...args, '--file', file]);
      const b = await cli([...args, ...pgArgs]);
      assert.equal(a.code, 0, a.stderr);
      assert.equal(b.code, 0, b.stderr);
      assert.equal(b.stdout, a.stdout, `same output for ${args.join(' ')}`);
      return a.stdout;
    };

    const table = await both(['sessions']);
    const lines = table.trimEnd().split('\n');
    assert.match(lines[0]!, /^START +SESSION +TENANT +USER +STAFF/);
    assert.equal(lines.length, 1 + 19, 'one line per session');
    assert.ok(lines.slice(1).every((l) => / acme +app +- +- +127\.0\.0\.1 +TLSv1\.3 .* 1 +\d+\/\d+ +client_terminate$/.test(l)), lines[1]);

    const sessionsJson = await both(['sessions', '--json']);
    const rows = sessionsJson.trimEnd().split('\n').map((l) => JSON.parse(l) as { session: string; statements: number; end: string; tls: string });
    assert.equal(rows.length, 19);
    assert.ok(rows.every((r) => r.statements === 1 && r.end === 'client_terminate' && r.tls === 'TLSv1.3'));

    const all = (await both(['query', '--json'])).trimEnd().split('\n');
    const fromFile = await fileRecords(file);
    assert.equal(all.length, fromFile.length, '--json: one object per line');
    assert.deepEqual(all.map((l) => (JSON.parse(l) as AuditRecord).id), fromFile.map((r) => r.id));

    const one = rows[7]!.session;
    const bySession = (await both(['query', '--session', one, '--json'])).trimEnd().split('\n').map((l) => JSON.parse(l) as AuditRecord);
    assert.deepEqual(bySession.map((r) => r.event), ['session.start', 'session.end']);
    const ends = (await both(['query', '--tenant', 'acme', '--user', 'app', '--event', 'session.end', '--json'])).trimEnd().split('\n');
    assert.equal(ends.length, 19);
    const lifecycle = (await both(['query', '--event', 'proxy.*', '--json'])).trimEnd().split('\n');
    assert.deepEqual(lifecycle.map((l) => (JSON.parse(l) as { state: string }).state), ['started', 'stopped']);
    const since = fromFile[10]!.time;
    const until = fromFile[20]!.time;
    const windowed = (await both(['query', '--since', since, '--until', until, '--json'])).trimEnd().split('\n');
    assert.deepEqual(windowed.map((l) => (JSON.parse(l) as AuditRecord).seq), fromFile.slice(10, 20).map((r) => r.seq));
    assert.equal(await both(['query', '--tenant', 'nobody', '--json']), '');
    assert.equal((await both(['query', '--staff', 'nobody'])).trimEnd().split('\n').length, 1, 'the header alone');
    const recent = (await both(['query', '--since', '1h', '--event', 'session.start'])).trimEnd().split('\n');
    assert.equal(recent.length, 1 + 19);

    // --config: the file by default, the store with --source postgres.
    const cfgPath = path.join(dir, 'pgwarden.toml');
    await writeFile(cfgPath, configToml(spec('outage', 'audit_outage'), await testCerts()));
    const viaConfig = await cli(['sessions', '--config', cfgPath]);
    const viaConfigPg = await cli(['sessions', '--config', cfgPath, '--source', 'postgres']);
    assert.equal(viaConfig.code, 0, viaConfig.stderr);
    assert.equal(viaConfigPg.code, 0, viaConfigPg.stderr);
    assert.equal(viaConfig.stdout, table);
    assert.equal(viaConfigPg.stdout, table);
  });

  it('shows a staff session with the person and the ticket, the same from the file and the store', async () => {
    const client = newStoreClient(storeUrl, PW_ENV);
    await client.connect();
    await initStore(client, 'audit_staff');
    await client.end();
    const pair = await generateKeyPair('ES256', { extractable: true });
    await mkdir(path.join(dir, 'staff'), { recursive: true });
    const jwks = path.join(dir, 'staff', 'jwks.json');
    await writeFile(jwks, JSON.stringify({ keys: [{ ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] }));
    const s = spec('staff', 'audit_staff');
    s.staff = { jwks, issuer: 'https://sso.test', audience: 'pgwarden', algorithms: ['ES256'], require_mfa: true };
    s.tenants[0]!.extra = { staff_access: 'read', staff_backend_user: 'staff_ro', staff_backend_password_env: STAFF_PW_ENV };
    const rp = await startProxy(s);
    open.push(rp);
    const token = await new SignJWT({ tenant: 'acme', access: 'read', ticket: 'INC-4711', amr: ['pwd', 'mfa'], jti: randomUUID() })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setSubject('jane@ops.example')
      .setIssuer('https://sso.test')
      .setAudience('pgwarden')
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(pair.privateKey);
    const c = new pg.Client(clientConfig(rp, { tenant: 'acme', user: 'staff', password: token }));
    await c.connect();
    await c.query('SELECT 1');
    await c.query('SELECT 2');
    await c.end();
    await sessions(rp, 1);
    await rp.close();
    open.pop();
    await assertSameAsFile(s.auditFile!, 'audit_staff');
    const stored = await store.query<{ n: string }>("SELECT count(*) AS n FROM audit_staff WHERE staff_sub = 'jane@ops.example' AND ticket = 'INC-4711' AND event = 'session.query'", [], 'audit');
    assert.equal(stored.rows[0]!.n, '2', 'the staff columns are filled');

    const pgArgs = ['--postgres', storeUrl, '--table', 'audit_staff', '--password-env', PW_ENV];
    const fromFile = await cli(['sessions', '--file', s.auditFile!, '--json']);
    const fromPg = await cli(['sessions', ...pgArgs, '--json']);
    assert.equal(fromPg.stdout, fromFile.stdout);
    const rows = fromFile.stdout.trimEnd().split('\n').map((l) => JSON.parse(l) as { user: string; staff: string | null; ticket: string | null; statements: number; end: string });
    assert.deepEqual(rows.map((r) => [r.user, r.staff, r.ticket, r.statements, r.end]), [
      ['staff_ro', 'jane@ops.example', 'INC-4711', 2, 'client_terminate'],
      ['app', null, null, 1, 'client_terminate'],
    ]);
    const staffFile = await cli(['query', '--file', s.auditFile!, '--staff', 'jane@ops.example', '--event', 'session.query']);
    const staffPg = await cli(['query', ...pgArgs, '--staff', 'jane@ops.example', '--event', 'session.query']);
    assert.equal(staffPg.stdout, staffFile.stdout);
    assert.match(staffFile.stdout, /session\.query +acme +\S+ +staff_ro +jane@ops\.example +simple SELECT 2\n$/);
  });
});
