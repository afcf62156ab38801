/** Runs pgbench over TLS (verify-full, SNI) and turns its summary and per-transaction logs into figures. */
import { execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { median, percentileSorted } from './stats.js';

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
  /** pgbench -C: a new connection (TLS + SCRAM) for every transaction. */
  connectEachTx?: boolean;
  /** pgbench -R: a steady rate in transactions per second (the soak); unset: as fast as possible. */
  rate?: number;
}

export interface PgbenchFigures {
  /** pgbench's own figure: without initial connection time, or with -C including reconnection times. */
  tps: number;
  latencyAvgMs: number;
  /** Initial connection time; with -C, the average time per connection. */
  connectionTimeMs: number;
  transactions: number;
  failedTransactions: number;
  /** From the per-transaction logs. */
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  /** Transactions per client from the logs: fewest, median, most; clients with none are counted as 0. */
  minTxPerClient: number;
  medianTxPerClient: number;
  maxTxPerClient: number;
  /** Clients that completed at most one transaction (starved: waited for a backend the whole run). */
  clientsWithAtMostOneTx: number;
  exitCode: number;
  /** Whether pgbench said "Run was aborted" (some client hit an error it does not retry). */
  aborted: boolean;
  /** pgbench stderr lines other than its progress chatter (aborted clients, connection errors), first MAX_ERROR_LINES. */
  errors: string[];
  /** How many such lines there were in all. */
  errorCount: number;
  /** pgbench's stdout summary as printed (a few hundred bytes). */
  summary: string;
}

const MAX_ERROR_LINES = 40;

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

interface TxLog {
  /** Latencies in ms, ascending. */
  sorted: Float64Array;
  /** Completed transactions per client id. */
  perClient: Map<number, number>;
}

/** Every `<prefix>.<pid>[.<thread>]` log: field 1 is the client id, field 3 the transaction time in µs. */
async function readLogs(dir: string): Promise<TxLog> {
  const values: number[] = [];
  const perClient = new Map<number, number>();
  for (const file of await readdir(dir)) {
    const text = await readFile(path.join(dir, file), 'utf8');
    for (const line of text.split('\n')) {
      const [client, , time] = line.split(' ', 3);
      const micros = Number(time);
      if (line === '' || !Number.isFinite(micros)) continue;
      values.push(micros / 1000);
      const id = Number(client);
      perClient.set(id, (perClient.get(id) ?? 0) + 1);
    }
  }
  return { sorted: Float64Array.from(values).sort(), perClient };
}

function perClientFigures(perClient: Map<number, number>, clients: number): Pick<PgbenchFigures, 'minTxPerClient' | 'medianTxPerClient' | 'maxTxPerClient' | 'clientsWithAtMostOneTx'> {
  const counts = Array.from({ length: clients }, (_, id) => perClient.get(id) ?? 0).sort((a, b) => a - b);
  return {
    minTxPerClient: counts[0] ?? Number.NaN,
    medianTxPerClient: median(counts),
    maxTxPerClient: counts[counts.length - 1] ?? Number.NaN,
    clientsWithAtMostOneTx: counts.filter((n) => n <= 1).length,
  };
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
      '-M', load.protocol, ...(load.connectEachTx === true ? ['-C'] : []), ...(load.rate === undefined ? [] : ['-R', String(load.rate)]), '-l', `--log-prefix=${path.join(logDir, 'tx')}`, conninfo(e),
    ];
    const run = await pgbench(args, e.password, (load.durationS + 120) * 1000);
    const { sorted, perClient } = await readLogs(logDir);
    const errors = errorLines(run.stderr);
    return {
      tps: number(run.stdout, /^tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)/m),
      latencyAvgMs: number(run.stdout, /^latency average = ([\d.]+) ms/m),
      connectionTimeMs: number(run.stdout, /^(?:initial connection time|average connection time) = ([\d.]+) ms/m),
      transactions: number(run.stdout, /^number of transactions actually processed: (\d+)/m) || 0,
      failedTransactions: number(run.stdout, /^number of failed transactions: (\d+)/m) || 0,
      p50Ms: percentileSorted(sorted, 50),
      p90Ms: percentileSorted(sorted, 90),
      p99Ms: percentileSorted(sorted, 99),
      p999Ms: percentileSorted(sorted, 99.9),
      maxMs: sorted.length === 0 ? Number.NaN : sorted[sorted.length - 1]!,
      ...perClientFigures(perClient, load.clients),
      exitCode: run.code,
      aborted: /Run was aborted/.test(run.stderr + run.stdout),
      errors: errors.slice(0, MAX_ERROR_LINES),
      errorCount: errors.length,
      summary: run.stdout.slice(0, 4000),
    };
  } finally {
    await rm(logDir, { recursive: true, force: true });
  }
}
