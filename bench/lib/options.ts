/** Command-line options of `npm run bench`, validated into one typed object. */
import os from 'node:os';
import { parseArgs } from 'node:util';
import { ALL_TARGETS, DEFAULT_TARGETS, type TargetName } from './target.js';
import path from 'node:path';
import type { WorkerAccept } from '../../src/config/worker-accept.js';

export type Protocol = 'simple' | 'extended' | 'prepared';
export type Phase = 'matrix' | 'connect' | 'idle' | 'isolation' | 'workers' | 'audit' | 'catalog';
/** The noisy neighbour's floods of the isolation phase (isolation.ts runs them). */
export type FloodKind = 'storm' | 'copy' | 'stall';

export interface BenchOptions {
  phases: Phase[];
  targets: TargetName[];
  protocols: Protocol[];
  clients: number[];
  durationS: number;
  rounds: number;
  /** pgbench threads cap; each cell uses min(clients, jobs). */
  jobs: number;
  scale: number;
  warmupS: number;
  /** default_pool_size / max_backend_connections of the transaction-mode proxies. */
  poolSize: number;
  connectClients: number;
  connectDurationS: number;
  /** Idle client counts for the RSS phase, ascending. */
  idle: number[];
  /** Proxies measured by the idle phase, each in its own mode; null: PgBouncer and pgwarden in transaction mode (those among --targets). */
  idleTargets: TargetName[] | null;
  loginBatch: number;
  /** Isolation phase: steady's pgbench clients, noisy's floods, the storm's concurrency and per-attempt pause. */
  isolationClients: number;
  /** `[server] workers` of the pgwarden targets in the matrix and connect phases. */
  pgwardenWorkers: number;
  /** Another pgwarden checkout (built: DIR/dist/src/cli.js) run as the baseline-* targets; null: none. */
  baseline: string | null;
  /** Extra [server] keys of the baseline targets (e.g. relay_io = "stream" with --baseline at this checkout). */
  baselineServer: Record<string, string | number>;
  /** Worker counts for the workers phase (pgwarden-transaction, -M simple at the largest --clients, and -C). */
  workers: number[];
  /** `[server] worker_accept` values the workers phase runs each count > 1 with; null: what "auto" means on the proxy's Node. */
  workerAccept: WorkerAccept[] | null;
  /** The Node binary pgwarden runs on (e.g. a Node 22 for reuseport); null: the bench's own. */
  pgwardenNode: string | null;
  floods: FloodKind[];
  stormLanes: number;
  stormPauseMs: number;
  /** Storm attempts started per second at most; 0 = as fast as the lanes go. */
  stormRatePerS: number;
  /** Catalog phase: tenants of the large catalog (compared with 10), insert → login samples and timed logins per catalog. */
  catalogTenants: number;
  catalogInserts: number;
  catalogLogins: number;
}

export const USAGE = `usage: npm run bench -- [options]
  --phases LIST         matrix,connect,idle,isolation,workers,audit,catalog (default matrix,connect,idle)
  --targets LIST        subset of ${ALL_TARGETS.join(',')}
                        (default all; "pgbouncer" / "pgwarden" mean both of its modes)
  --protocols LIST      pgbench -M for the matrix: simple,extended,prepared (default all)
  --clients LIST        client counts for the matrix (default 1,16,64,256)
  --duration S          seconds per measured matrix cell (default 10)
  --rounds N            rounds; each round runs every cell of every phase once (default 1)
  --jobs N              pgbench threads cap for the matrix (default: CPUs; a cell uses min(clients, N))
  --scale N             pgbench -i scale factor (default 10)
  --warmup S            unrecorded run per target before the first round (default 5; 0 = none)
  --pool-size N         backends per transaction-mode proxy: PgBouncer default_pool_size and
                        pgwarden max_backend_connections (default 20)
  --connect-clients N   pgbench clients (one thread each) for the connection-rate phase, -C (default 16)
  --connect-duration S  seconds per connection-rate cell (default: --duration)
  --idle LIST           idle TLS client counts for the RSS phase (default 2000,10000)
  --login-batch N       concurrent logins while opening idle clients (default 200)
  --idle-targets LIST   proxies for the idle phase, each in its own mode, e.g. pgbouncer-transaction,pgwarden-session,
                        baseline-transaction (default: pgbouncer-transaction and pgwarden-transaction, as --targets has them)
  --baseline DIR        another pgwarden checkout, built (DIR/dist/src/cli.js), measured as baseline-session and
                        baseline-transaction in the same run: before/after figures in one sitting
  --baseline-server K=V,...  extra [server] keys of the baseline targets: with --baseline at this checkout,
                        --baseline-server relay_io=stream measures the stream path beside the handle path
  --pgwarden-workers N  [server] workers of the pgwarden targets in the matrix and connect phases (default 1:
                        pgbench and PostgreSQL share this machine's cores, the shared-host sizing; README)
  --workers LIST        [server] workers counts for the workers phase (default 1,<cores>: one worker against
                        one per core; this machine has ${os.availableParallelism()})
  --worker-accept LIST  [server] worker_accept for the workers phase's counts > 1: reuseport,primary
                        (default: what "auto" means on pgwarden's Node: reuseport from 22.12, else primary)
  --pgwarden-node PATH  the Node binary pgwarden runs on, e.g. a Node 22 for reuseport (default: this one)
  --isolation-clients N steady tenant's pgbench -S clients in the isolation phase (default 4)
  --flood LIST          what the noisy tenant does: storm,copy,stall (default all three)
  --storm-lanes N       concurrent login attempts of the storm (default 300)
  --storm-pause MS      pause of each storm client between attempts (default 0: retry at once)
  --storm-rate N        storm attempts started per second, all lanes together (default 200; 0 = no cap)
  --catalog-tenants N   tenants (10 users each) of the catalog phase's large catalog, compared with 10 (default 10000)
  --catalog-inserts K   insert → first-login samples per catalog (default 20)
  --catalog-logins N    timed sequential logins per catalog (default 300)
`;

const PROTOCOLS: readonly Protocol[] = ['simple', 'extended', 'prepared'];
const PHASES: readonly Phase[] = ['matrix', 'connect', 'idle', 'isolation', 'workers', 'audit', 'catalog'];
/** The isolation phase runs only when asked for (about 4 × --duration per round). */
const DEFAULT_PHASES: readonly Phase[] = ['matrix', 'connect', 'idle'];
const FLOODS: readonly FloodKind[] = ['storm', 'copy', 'stall'];

function positiveInt(name: string, text: string | undefined, fallback: number, min = 1): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < min) throw new Error(`--${name} must be an integer ≥ ${min}, got "${text}"`);
  return value;
}

function intList(name: string, text: string | undefined, fallback: number[]): number[] {
  if (text === undefined) return fallback;
  const values = text.split(',').filter((s) => s.trim() !== '').map((s) => positiveInt(name, s.trim(), 1));
  if (values.length === 0) throw new Error(`--${name}: empty list`);
  return [...new Set(values)].sort((a, b) => a - b);
}

/** A comma-separated subset of `known`, in `known`'s order; `aliases` expand to several names. */
function subset<T extends string>(name: string, text: string | undefined, known: readonly T[], aliases: Record<string, T[]> = {}): T[] {
  if (text === undefined) return [...known];
  const names = text.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const wanted = new Set<string>();
  for (const n of names) {
    const expanded = aliases[n] ?? ((known as readonly string[]).includes(n) ? [n] : undefined);
    if (expanded === undefined) throw new Error(`--${name}: unknown "${n}" (known: ${[...known, ...Object.keys(aliases)].join(', ')})`);
    for (const e of expanded) wanted.add(e);
  }
  return known.filter((k) => wanted.has(k));
}

/** `K=V,...` as a [server] table: integers as numbers, the rest as strings. */
function keyValues(name: string, text: string | undefined): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  if (text === undefined) return out;
  for (const pair of text.split(',').map((p) => p.trim()).filter((p) => p !== '')) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new Error(`--${name}: "${pair}" is not KEY=VALUE`);
    const v = pair.slice(eq + 1);
    out[pair.slice(0, eq)] = /^\d+$/.test(v) ? Number(v) : v;
  }
  return out;
}

/** Parsed options, or null when --help was asked for. */
export function parseOptions(argv: string[]): BenchOptions | null {
  const s = { type: 'string' } as const;
  const { values } = parseArgs({
    args: argv,
    options: {
      phases: s, targets: s, protocols: s, clients: s, duration: s, rounds: s, jobs: s, scale: s, warmup: s,
      'pool-size': s, 'connect-clients': s, 'connect-duration': s, idle: s, 'idle-targets': s, 'login-batch': s,
      'isolation-clients': s, workers: s, 'worker-accept': s, 'pgwarden-node': s, 'pgwarden-workers': s, baseline: s, 'baseline-server': s, flood: s, 'storm-lanes': s, 'storm-pause': s, 'storm-rate': s,
      'catalog-tenants': s, 'catalog-inserts': s, 'catalog-logins': s,
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help === true) return null;
  const durationS = positiveInt('duration', values.duration, 10);
  return {
    phases: values.phases === undefined ? [...DEFAULT_PHASES] : subset('phases', values.phases, PHASES),
    targets:
      values.targets === undefined
        ? [...DEFAULT_TARGETS, ...(values.baseline === undefined ? [] : (['baseline-session', 'baseline-transaction'] as const))]
        : subset('targets', values.targets, ALL_TARGETS, {
            pgbouncer: ['pgbouncer-session', 'pgbouncer-transaction'],
            pgwarden: ['pgwarden-session', 'pgwarden-transaction'],
            baseline: ['baseline-session', 'baseline-transaction'],
          }),
    baseline: values.baseline === undefined ? null : path.resolve(values.baseline),
    baselineServer: keyValues('baseline-server', values['baseline-server']),
    protocols: subset('protocols', values.protocols, PROTOCOLS),
    clients: intList('clients', values.clients, [1, 16, 64, 256]),
    durationS,
    rounds: positiveInt('rounds', values.rounds, 1),
    jobs: positiveInt('jobs', values.jobs, os.availableParallelism()),
    scale: positiveInt('scale', values.scale, 10),
    warmupS: positiveInt('warmup', values.warmup, 5, 0),
    poolSize: positiveInt('pool-size', values['pool-size'], 20),
    connectClients: positiveInt('connect-clients', values['connect-clients'], 16),
    connectDurationS: positiveInt('connect-duration', values['connect-duration'], durationS),
    idle: intList('idle', values.idle, [2000, 10_000]),
    idleTargets:
      values['idle-targets'] === undefined
        ? null
        : subset('idle-targets', values['idle-targets'], ALL_TARGETS.filter((t) => t !== 'direct')),
    loginBatch: positiveInt('login-batch', values['login-batch'], 200),
    isolationClients: positiveInt('isolation-clients', values['isolation-clients'], 4),
    pgwardenWorkers: positiveInt('pgwarden-workers', values['pgwarden-workers'], 1),
    workers: intList('workers', values.workers, [...new Set([1, os.availableParallelism()])]),
    workerAccept: values['worker-accept'] === undefined ? null : subset('worker-accept', values['worker-accept'], ['reuseport', 'primary'] as const),
    pgwardenNode: values['pgwarden-node'] === undefined ? null : path.resolve(values['pgwarden-node']),
    floods: subset('flood', values.flood, FLOODS),
    stormLanes: positiveInt('storm-lanes', values['storm-lanes'], 300),
    stormPauseMs: positiveInt('storm-pause', values['storm-pause'], 0, 0),
    stormRatePerS: positiveInt('storm-rate', values['storm-rate'], 200, 0),
    catalogTenants: positiveInt('catalog-tenants', values['catalog-tenants'], 10_000),
    catalogInserts: positiveInt('catalog-inserts', values['catalog-inserts'], 20),
    catalogLogins: positiveInt('catalog-logins', values['catalog-logins'], 300),
  };
}
