/** Runs pgbench over TLS (verify-full, SNI) and turns its summary and per-transaction logs into figures. */
import { execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { percentileSorted } from './stats.js';

export interface Endpoint {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
  caCertPath: string;
}

export interface LoadSpec {
  clients: number;
  jobs: number;
  durationS: number;
  protocol: 'simple' | 'extended' | 'prepared';
}

export interface PgbenchFigures {
  /** pgbench's own figure: without initial connection time. */
  tps: number;
  latencyAvgMs: number;
  connectionTimeMs: number;
  transactions: number;
  failedTransactions: number;
  /** From the per-transaction logs. */
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  exitCode: number;
  /** pgbench stderr lines other than its progress chatter (aborted clients, connection errors). */
  errors: string[];
}

/** libpq conninfo: SNI and certificate check by `host`, the address by `hostaddr`. */
export function conninfo(e: Endpoint): string {
  return [
    `host=${e.host}`, 'hostaddr=127.0.0.1', `port=${e.port}`, `user=${e.user}`, `dbname=${e.database}`,
    'sslmode=verify-full', `sslrootcert=${e.caCertPath}`, 'connect_timeout=10',
  ].join(' ');
}

/** Environment without the caller's PG* variables, plus the password. */
function pgbenchEnv(password: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) if (!key.startsWith('PG')) env[key] = value;
  return { ...env, PGPASSWORD: password, LC_ALL: 'C' };
}

interface Exec { code: number; stdout: string; stderr: string }

const active = new Set<ChildProcess>();

/** Kills pgbench runs still in flight (for teardown on a signal or error). */
export function killRunningPgbench(): void {
  for (const child of active) child.kill('SIGKILL');
}

function pgbench(args: string[], password: string, timeoutMs: number): Promise<Exec> {
  return new Promise((resolve) => {
    const child = execFile('pgbench', args, { env: pgbenchEnv(password), timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      active.delete(child);
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
    active.add(child);
  });
}

/** `pgbench -i -s <scale>` straight against the cluster. */
export async function initialise(e: Endpoint, scale: number): Promise<void> {
  const result = await pgbench(['-i', '-s', String(scale), '-q', conninfo(e)], e.password, 30 * 60_000);
  if (result.code !== 0) throw new Error(`pgbench -i failed (exit ${result.code}):\n${result.stderr}`);
}

function number(stdout: string, pattern: RegExp): number {
  const match = pattern.exec(stdout);
  return match === null ? Number.NaN : Number(match[1]);
}

/** Latencies in ms from every `<prefix>.<pid>[.<thread>]` log: field 3 is the transaction time in µs. */
async function readLatencies(dir: string): Promise<Float64Array> {
  const values: number[] = [];
  for (const file of await readdir(dir)) {
    const text = await readFile(path.join(dir, file), 'utf8');
    for (const line of text.split('\n')) {
      const micros = Number(line.split(' ', 3)[2]);
      if (line !== '' && Number.isFinite(micros)) values.push(micros / 1000);
    }
  }
  return Float64Array.from(values).sort();
}

function errorLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.trim() !== '' && !/^(pgbench \(|starting vacuum|transaction type)/.test(l));
}

/** One timed `pgbench -S` run, logging every transaction into a fresh dir under `workDir` that is removed afterwards. */
export async function runSelectOnly(e: Endpoint, load: LoadSpec, workDir: string): Promise<PgbenchFigures> {
  const logDir = await mkdtemp(path.join(workDir, 'log-'));
  try {
    const args = [
      '-S', '-n', '-c', String(load.clients), '-j', String(load.jobs), '-T', String(load.durationS),
      '-M', load.protocol, '-l', `--log-prefix=${path.join(logDir, 'tx')}`, conninfo(e),
    ];
    const run = await pgbench(args, e.password, (load.durationS + 120) * 1000);
    const sorted = await readLatencies(logDir);
    return {
      tps: number(run.stdout, /^tps = ([\d.]+) \(without initial connection time\)/m),
      latencyAvgMs: number(run.stdout, /^latency average = ([\d.]+) ms/m),
      connectionTimeMs: number(run.stdout, /^initial connection time = ([\d.]+) ms/m),
      transactions: number(run.stdout, /^number of transactions actually processed: (\d+)/m),
      failedTransactions: number(run.stdout, /^number of failed transactions: (\d+)/m) || 0,
      p50Ms: percentileSorted(sorted, 50),
      p90Ms: percentileSorted(sorted, 90),
      p99Ms: percentileSorted(sorted, 99),
      p999Ms: percentileSorted(sorted, 99.9),
      maxMs: sorted.length === 0 ? Number.NaN : sorted[sorted.length - 1]!,
      exitCode: run.code,
      errors: errorLines(run.stderr),
    };
  } finally {
    await rm(logDir, { recursive: true, force: true });
  }
}
