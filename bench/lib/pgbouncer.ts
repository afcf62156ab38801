/** Finds or installs PgBouncer and runs it (session or transaction pooling) with client TLS and SCRAM in front of the cluster. */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, chown, copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { DevCerts } from '../../src/tools/dev-certs.js';
import { freePort, startDaemon, waitForPort } from './child.js';
import { onCleanup } from './cleanup.js';
import type { PoolMode, Target } from './target.js';

const BINARY = '/usr/sbin/pgbouncer';
const isRoot = process.getuid?.() === 0;

export interface PgBouncerSpec {
  backendPort: number;
  database: string;
  user: string;
  /** SCRAM verifier from pg_authid, so PgBouncer can verify the client and then log in upstream. */
  verifier: string;
  certs: DevCerts;
  mode: PoolMode;
  /** default_pool_size: server connections for the one (database, user) pair. */
  poolSize: number;
  maxClientConn: number;
}

/** The PgBouncer binary, installed with apt-get when missing and we are root; null (with a message) otherwise. */
export function findPgBouncer(): string | null {
  const onPath = which('pgbouncer');
  if (onPath !== null) return onPath;
  if (existsSync(BINARY)) return BINARY;
  if (!isRoot) {
    process.stderr.write('PgBouncer not found: skipping it. Install it with `sudo apt-get install -y pgbouncer` (Debian/Ubuntu).\n');
    return null;
  }
  process.stderr.write('PgBouncer not found: running apt-get install -y pgbouncer…\n');
  execFileSync('apt-get', ['update'], { stdio: 'inherit' });
  execFileSync('apt-get', ['install', '-y', 'pgbouncer'], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  return existsSync(BINARY) ? BINARY : which('pgbouncer');
}

function which(command: string): string | null {
  try {
    return execFileSync('sh', ['-c', `command -v ${command}`], { encoding: 'utf8' }).trim() || null;
  } catch {
    return null;
  }
}

/** First line of `pgbouncer --version`. */
export function pgBouncerVersion(binary: string): string {
  return execFileSync(binary, ['--version'], { encoding: 'utf8' }).split('\n')[0]?.trim() ?? 'unknown';
}

/** The `postgres` OS user's ids; PgBouncer refuses to run as root. */
function postgresIds(): { uid: number; gid: number } {
  const id = (flag: string): number => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
  return { uid: id('-u'), gid: id('-g') };
}

function iniText(spec: PgBouncerSpec, dir: string, port: number): string {
  return [
    '[databases]',
    `${spec.database} = host=127.0.0.1 port=${spec.backendPort} dbname=${spec.database}`,
    '',
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    'unix_socket_dir =',
    'auth_type = scram-sha-256',
    `auth_file = ${path.join(dir, 'userlist.txt')}`,
    `pool_mode = ${spec.mode}`,
    `default_pool_size = ${spec.poolSize}`,
    `max_client_conn = ${spec.maxClientConn}`,
    // Logins arrive in bursts (pgbench start, pgbench -C, the idle phase's batches); 128 would drop SYNs.
    'listen_backlog = 4096',
    'client_tls_sslmode = require',
    `client_tls_cert_file = ${path.join(dir, 'server.crt')}`,
    `client_tls_key_file = ${path.join(dir, 'server.key')}`,
    'server_tls_sslmode = disable',
    'ignore_startup_parameters = extra_float_digits',
    'log_connections = 0',
    'log_disconnections = 0',
    'log_stats = 0',
    '',
  ].join('\n');
}

/** Writes config, auth file, certificate and key into a temp dir the `postgres` user owns. */
async function writeFiles(spec: PgBouncerSpec, port: number): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-bench-bouncer-'));
  onCleanup(`remove ${dir}`, () => rm(dir, { recursive: true, force: true }));
  const q = (s: string): string => `"${s.replace(/"/g, '""')}"`;
  await writeFile(path.join(dir, 'userlist.txt'), `${q(spec.user)} ${q(spec.verifier)}\n`, { mode: 0o600 });
  await copyFile(spec.certs.serverCertPath, path.join(dir, 'server.crt'));
  await copyFile(spec.certs.serverKeyPath, path.join(dir, 'server.key'));
  await chmod(path.join(dir, 'server.key'), 0o600);
  await writeFile(path.join(dir, 'pgbouncer.ini'), iniText(spec, dir, port), { mode: 0o600 });
  if (isRoot) {
    const { uid, gid } = postgresIds();
    for (const file of ['', 'userlist.txt', 'server.crt', 'server.key', 'pgbouncer.ini']) await chown(path.join(dir, file), uid, gid);
  }
  return dir;
}

/** Starts PgBouncer in the foreground (as `postgres` when root) and waits until it listens. */
export async function startPgBouncer(binary: string, spec: PgBouncerSpec): Promise<Target> {
  const port = await freePort();
  const dir = await writeFiles(spec, port);
  // spawn() with uid/gid execs PgBouncer itself (runuser would stay in between), so child.pid is PgBouncer's.
  const ids = isRoot ? postgresIds() : {};
  const daemon = startDaemon(binary, [path.join(dir, 'pgbouncer.ini')], { cwd: dir, ...ids });
  onCleanup('stop PgBouncer', () => daemon.stop());
  await waitForPort(port, daemon);
  return {
    name: `pgbouncer-${spec.mode}`,
    port,
    host: 'pgbouncer.pg.test',
    proxyPid: daemon.pid,
    problems: () => daemon.output().split('\n').filter((line) => /\b(WARNING|ERROR|FATAL)\b/.test(line)),
    stop: () => daemon.stop(),
  };
}
