/**
 * Starts pgwarden for tests, in-process (fast, inspectable) or as a child process running the
 * real CLI (for signals), with a config written as TOML so the real loader is exercised.
 * Also builds clients (`pg`, `psql`) that reach a tenant the way users do: SNI and verify-full.
 */
import { spawn, execFile, execFileSync, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import pg from 'pg';
import { parseConfigText } from '../../src/config/load.js';
import { Proxy } from '../../src/server.js';
import { makeDevCerts, type DevCerts } from '../../src/tools/dev-certs.js';
import type { Cluster } from './cluster.js';

export const SNI_SUFFIX = 'pg.test';

let sharedCerts: Promise<DevCerts> | undefined;
/** One dev PKI per test process: `*.pg.test`. */
export function testCerts(): Promise<DevCerts> {
  sharedCerts ??= mkdtemp(path.join(os.tmpdir(), 'pgwarden-certs-')).then((dir) =>
    makeDevCerts({ dir, hostnames: [`*.${SNI_SUFFIX}`, SNI_SUFFIX] }),
  );
  return sharedCerts;
}

export interface TenantSpec {
  id: string;
  cluster: Cluster;
  database?: string;
  users: { name: string; verifier: string; backendPasswordEnv?: string; backendUser?: string }[];
  maxClientConnections?: number;
  allowCidrs?: string[];
  enabled?: boolean;
  backendTls?: 'disable' | 'require' | 'verify-full';
  backendCa?: string;
  /** Overrides the backend URL (e.g. a port where nothing listens). */
  backendUrl?: string;
  databases?: string[];
  /** Tenant-level pool settings, written as given (e.g. { pool_mode: 'transaction', max_backend_connections: 2 }). */
  pool?: Record<string, string | number>;
  /** Tenant-level limits, written as given (e.g. { query_timeout: '200ms' }). */
  limits?: Record<string, string | number>;
  /** Per-user session caps (users.<name>.max_connections). */
  userMaxConnections?: Record<string, number>;
  /** Any other tenant keys, written as given (e.g. { staff_access: 'read', audit_statements: 'all' }). */
  extra?: Record<string, TomlValue>;
}

export type TomlValue = string | number | boolean | string[];

export interface ProxySpec {
  tenants: TenantSpec[];
  requireTls?: boolean;
  auditFile?: string;
  metrics?: boolean;
  server?: Record<string, TomlValue>;
  /**
   * The [limits] section. Authentication-failure cool-downs are off unless a test sets them:
   * many tests fail logins on purpose from 127.0.0.1 and would otherwise lock each other out.
   */
  limits?: Record<string, string | number>;
  /** [redis] url (and other keys) for shared limits. */
  redis?: Record<string, string | number>;
  /** More [audit] keys (file comes from auditFile). */
  audit?: Record<string, TomlValue>;
  /** [audit.postgres], written as given. */
  auditPostgres?: Record<string, TomlValue>;
  /** [staff], written as given. */
  staff?: Record<string, TomlValue>;
  /** [admin], written as given (listen defaults to 127.0.0.1:0). */
  admin?: Record<string, TomlValue>;
  /** [catalog], written as given (then `tenants` must be empty: the catalog is the source). */
  catalog?: Record<string, TomlValue>;
}

const q = (s: string): string => JSON.stringify(s);

/**
 * `[server] relay_io` for every proxy the tests start: PGWARDEN_TEST_RELAY_IO=stream reruns the
 * relay's tests on Node's streams (`npm test` does, after the whole suite on the default).
 */
const RELAY_IO: Record<string, string> = process.env['PGWARDEN_TEST_RELAY_IO'] === undefined ? {} : { relay_io: process.env['PGWARDEN_TEST_RELAY_IO'] };

export function configToml(spec: ProxySpec, certs: DevCerts, port = 0): string {
  const lines = [
    '[server]',
    `listen = "127.0.0.1:${port}"`,
    `tls_cert = ${q(certs.serverCertPath)}`,
    `tls_key = ${q(certs.serverKeyPath)}`,
    `require_tls = ${spec.requireTls ?? true}`,
    `sni_suffix = "${SNI_SUFFIX}"`,
    // One process unless a test asks for workers (workers.test.ts): the others test other things.
    ...Object.entries({ workers: 1, ...RELAY_IO, ...spec.server }).map(([k, v]) => `${k} = ${typeof v === 'string' ? q(v) : Array.isArray(v) ? JSON.stringify(v) : String(v)}`),
  ];
  const kv = (rec: Record<string, TomlValue>): string[] =>
    Object.entries(rec).map(([k, v]) => `${k} = ${typeof v === 'string' ? q(v) : Array.isArray(v) ? JSON.stringify(v) : String(v)}`);
  if (spec.metrics !== false) lines.push('', '[metrics]', 'listen = "127.0.0.1:0"');
  lines.push('', '[limits]', ...kv({ auth_failure_limit: 0, auth_failures_per_source: 0, ...spec.limits }));
  if (spec.redis !== undefined) lines.push('', '[redis]', ...kv(spec.redis));
  if (spec.auditFile !== undefined || spec.audit !== undefined || spec.auditPostgres !== undefined) {
    lines.push('', '[audit]', ...(spec.auditFile === undefined ? [] : [`file = ${q(spec.auditFile)}`]), ...kv(spec.audit ?? {}));
    if (spec.auditPostgres !== undefined) lines.push('', '[audit.postgres]', ...kv(spec.auditPostgres));
  }
  if (spec.staff !== undefined) lines.push('', '[staff]', ...kv(spec.staff));
  if (spec.admin !== undefined) lines.push('', '[admin]', ...kv({ listen: '127.0.0.1:0', ...spec.admin }));
  if (spec.catalog !== undefined) lines.push('', '[catalog]', ...kv(spec.catalog));
  lines.push('', '[log]', 'level = "warn"');
  for (const t of spec.tenants) {
    lines.push(
      '',
      `[tenants.${t.id}]`,
      `backend = ${q(t.backendUrl ?? t.cluster.url(t.database ?? 'postgres'))}`,
      `backend_tls = ${q(t.backendTls ?? 'disable')}`,
      ...(t.backendCa === undefined ? [] : [`backend_ca = ${q(t.backendCa)}`]),
      `max_client_connections = ${t.maxClientConnections ?? 100}`,
      `allow_cidrs = ${JSON.stringify(t.allowCidrs ?? ['0.0.0.0/0', '::/0'])}`,
      `enabled = ${t.enabled ?? true}`,
      ...(t.databases === undefined ? [] : [`databases = ${JSON.stringify(t.databases)}`]),
      ...kv(t.pool ?? {}),
      ...kv(t.limits ?? {}),
      ...kv(t.extra ?? {}),
    );
    for (const u of t.users) {
      lines.push('', `[tenants.${t.id}.users.${q(u.name)}]`, `scram = ${q(u.verifier)}`);
      if (u.backendPasswordEnv !== undefined) lines.push(`backend_password_env = ${q(u.backendPasswordEnv)}`);
      if (u.backendUser !== undefined) lines.push(`backend_user = ${q(u.backendUser)}`);
      const cap = t.userMaxConnections?.[u.name];
      if (cap !== undefined) lines.push(`max_connections = ${cap}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

export interface RunningProxy {
  proxy: Proxy;
  port: number;
  metricsPort: number;
  /** The admin API's port (0 without `admin` in the spec). */
  adminPort: number;
  certs: DevCerts;
  /** Reloads with a new spec, as SIGHUP would. */
  reload(spec: ProxySpec): void;
  close(): Promise<void>;
}

/** `certs`: another PKI than the shared one (a certificate about to expire, say). */
export async function startProxy(spec: ProxySpec, certs?: DevCerts): Promise<RunningProxy> {
  certs ??= await testCerts();
  const config = parseConfigText(configToml(spec, certs), os.tmpdir());
  const proxy = await Proxy.start(config, { logger: pino({ level: process.env['PGWARDEN_TEST_LOG'] ?? 'silent' }) });
  return {
    proxy,
    port: proxy.address.port,
    metricsPort: proxy.metricsAddress?.port ?? 0,
    adminPort: proxy.adminAddress?.port ?? 0,
    certs,
    reload: (next) => proxy.reload(parseConfigText(configToml(next, certs, proxy.address.port), os.tmpdir())),
    close: () => proxy.close(),
  };
}

/** A node-postgres client config reaching `tenant` through the proxy with SNI and verify-full. */
export function clientConfig(
  rp: { port: number; certs: DevCerts },
  o: { tenant: string; user: string; password: string; database?: string; ssl?: boolean; options?: string; applicationName?: string },
): pg.ClientConfig {
  return {
    host: '127.0.0.1',
    port: rp.port,
    user: o.user,
    password: o.password,
    database: o.database ?? 'postgres',
    ...(o.options === undefined ? {} : { options: o.options }),
    ...(o.applicationName === undefined ? {} : { application_name: o.applicationName }),
    ssl: o.ssl === false ? false : { ca: rp.certs.caCertPem, servername: `${o.tenant}.${SNI_SUFFIX}`, rejectUnauthorized: true },
    connectionTimeoutMillis: 10_000,
  };
}

export async function connect(rp: { port: number; certs: DevCerts }, o: Parameters<typeof clientConfig>[1]): Promise<pg.Client> {
  const c = new pg.Client(clientConfig(rp, o));
  await c.connect();
  return c;
}

/** libpq connection string for psql/pgbench: SNI by host name, address by hostaddr. */
export function libpqConninfo(rp: { port: number; certs: DevCerts }, o: { tenant: string; user: string; database?: string; extra?: string }): string {
  return [
    `host=${o.tenant}.${SNI_SUFFIX}`,
    'hostaddr=127.0.0.1',
    `port=${rp.port}`,
    `user=${o.user}`,
    `dbname=${o.database ?? 'postgres'}`,
    'sslmode=verify-full',
    `sslrootcert=${rp.certs.caCertPath}`,
    o.extra ?? '',
  ].join(' ');
}

export interface PsqlResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs psql (-X, no psqlrc; -v ON_ERROR_STOP=1) with the password in the environment. */
export function psql(conninfo: string, password: string, args: string[], input?: string): Promise<PsqlResult> {
  return new Promise((resolve) => {
    const child = execFile(
      'psql',
      ['-X', '-v', 'ON_ERROR_STOP=1', '-At', '-d', conninfo, ...args],
      { env: { ...process.env, PGPASSWORD: password, PGCONNECT_TIMEOUT: '10' }, timeout: 60_000, maxBuffer: 64 << 20 },
      (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
    if (input !== undefined) child.stdin?.end(input);
    else child.stdin?.end();
  });
}

export interface ChildProxy {
  child: ChildProcess;
  port: number;
  metricsPort: number | null;
  adminPort: number | null;
  configPath: string;
  dir: string;
  logs(): string;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  stop(): Promise<void>;
}

/**
 * Runs `node dist/src/cli.js serve --config <file>` and waits for its "listening" log line.
 * `node`: another Node binary for the proxy (the reusePort tests run it on Node 22); default this one.
 */
export async function spawnProxy(spec: ProxySpec, env: Record<string, string> = {}, node: string = process.execPath): Promise<ChildProxy> {
  const certs = await testCerts();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-proxy-'));
  const configPath = path.join(dir, 'pgwarden.toml');
  await writeFile(configPath, configToml(spec, certs).replace('level = "warn"', 'level = "info"'));
  const cli = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../src/cli.js');
  const child = spawn(node, [cli, 'serve', '--config', configPath], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const ports = await new Promise<{ port: number; metricsPort: number | null; adminPort: number | null }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`proxy did not start:\n${out}`)), 15_000);
    const check = (): void => {
      for (const line of out.split('\n')) {
        if (!line.includes('"event":"listening"')) continue;
        const rec = JSON.parse(line) as { port: number; metrics_port: number | null; admin_port?: number | null };
        clearTimeout(timer);
        resolve({ port: rec.port, metricsPort: rec.metrics_port, adminPort: rec.admin_port ?? null });
        return;
      }
    };
    child.stdout.on('data', check);
    void exited.then((code) => reject(new Error(`proxy exited with ${code}:\n${out}`)));
  });
  return {
    child,
    ...ports,
    configPath,
    dir,
    logs: () => out,
    exited,
    stop: async () => {
      if (child.exitCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Connects with node-postgres expecting a refusal; returns the error (code = SQLSTATE). */
export async function connectError(cfg: pg.ClientConfig): Promise<{ code?: string; message: string }> {
  const c = new pg.Client(cfg);
  try {
    await c.connect();
  } catch (err) {
    return err as { code?: string; message: string };
  } finally {
    await c.end().catch(() => undefined);
  }
  throw new Error('connect unexpectedly succeeded');
}

/** Child pids of a primary (`spawnProxy` with workers): its workers. */
export function workerPids(primary: number): number[] {
  try {
    return execFileSync('pgrep', ['-P', String(primary)], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l !== '')
      .map(Number);
  } catch {
    return [];
  }
}

/**
 * How many TCP sockets listening on `port` (IPv4 or IPv6) each of `pids` holds, from /proc (Linux):
 * the primary of a node:cluster hand-off holds the one listener; with reusePort each worker holds its own.
 */
export function listenersOn(port: number, pids: readonly number[]): Map<number, number> {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue; // no IPv6
    }
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      const f = line.trim().split(/\s+/);
      if (f.length > 9 && f[1]?.endsWith(`:${hexPort}`) && f[3] === '0A') inodes.add(f[9]!);
    }
  }
  const owners = new Map<number, number>();
  for (const pid of pids) {
    let n = 0;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      fds = []; // gone
    }
    for (const fd of fds) {
      let link: string;
      try {
        link = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue; // closed meanwhile
      }
      const m = /^socket:\[(\d+)\]$/.exec(link);
      if (m !== null && inodes.has(m[1]!)) n++;
    }
    owners.set(pid, n);
  }
  return owners;
}

/** The fields of the proxy's `"event":"listening"` log line (the primary's, with workers). */
export function listeningLine(child: ChildProxy): Record<string, unknown> {
  const line = child.logs().split('\n').find((l) => l.includes('"event":"listening"'));
  return line === undefined ? {} : (JSON.parse(line) as Record<string, unknown>);
}
