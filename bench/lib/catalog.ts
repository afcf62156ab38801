/**
 * The catalog phase (issue 13's scale figures): pgwarden serving its tenants from a PostgreSQL
 * catalog of 10 tenants and of `--catalog-tenants` tenants, 10 users each: start-up time and RSS,
 * the time from a committed INSERT to the first successful login of the new tenant, and whether a
 * login costs more with more tenants. The catalog's tables are src/catalog/store.ts's; the proxy
 * runs as a child process (pgwarden.ts), the logins are login.ts's.
 */
import { performance } from 'node:perf_hooks';
import { randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CatalogStore } from '../../src/catalog/store.js';
import { parseConfigText } from '../../src/config/load.js';
import { validateTenantBody } from '../../src/config/tenant-body.js';
import type { DevCerts } from '../../src/tools/dev-certs.js';
import type { Cluster } from '../../test/support/cluster.js';
import { configToml, SNI_SUFFIX } from '../../test/support/proxy.js';
import { onCleanup } from './cleanup.js';
import { login, type LoginSpec } from './login.js';
import { problemLines, spawnPgWarden, type PgWardenProcess } from './pgwarden.js';
import { cpuTimes, memory } from './procstat.js';
import { fmt, median, percentileSorted } from './stats.js';
import { formatColumns } from './report.js';

/** The catalog database, its owner (the role pgwarden reads it as) and the variable holding that role's password. */
const CATALOG_DATABASE = 'pgwarden_catalog';
const CATALOG_ROLE = 'pgwarden_catalog';
const PASSWORD_ENV = 'PGWARDEN_BENCH_CATALOG_PASSWORD';
/** The issue's figure: 10 users per tenant. */
export const USERS_PER_TENANT = 10;
/** The small catalog the large one is compared with. */
export const SMALL_TENANTS = 10;
/** Pause after "listening" before reading RSS, so start-up's allocation burst settles (and GC may run). */
const SETTLE_MS = 2000;
/** Unrecorded logins per proxy before the measured ones (TLS session code, JIT, the tenant's backend). */
const WARMUP_LOGINS = 30;
/** The measured logins run in this many blocks per proxy, the proxies alternating block by block (AB, BA, AB, …). */
const LOGIN_BLOCKS = 6;
/** Insert → login: a new attempt every RETRY_MS while fewer than MAX_IN_FLIGHT are open; give up after GIVE_UP_MS. */
const RETRY_MS = 5;
const MAX_IN_FLIGHT = 2;
const GIVE_UP_MS = 5000;
/** Pause between two inserts, so one sample's snapshot write does not fall into the next sample. */
const BETWEEN_INSERTS_MS = 250;
/** A proxy that does not log "listening" within this is reported as failed (start-up at scale may be slow). */
const LISTEN_TIMEOUT_MS = 300_000;
const TERMINATE = Buffer.from([0x58 /* X */, 0, 0, 0, 4]);

export interface CatalogSpec {
  cluster: Cluster;
  certs: DevCerts;
  workDir: string;
  /** The backend role every catalog user logs in as (backend_user), its password (also the users' password) and database. */
  backend: { user: string; password: string; database: string; verifier: string };
  /** Tenants of the large catalog. */
  tenants: number;
  /** Insert → login samples per catalog. */
  inserts: number;
  /** Measured logins per catalog. */
  logins: number;
  log: (line: string) => void;
}

/** One start of a proxy on a catalog: spawn → "listening", and memory after it settled. */
export interface CatalogStart {
  /** Whether a snapshot file from an earlier start was there (a restart) or not (the first start). */
  snapshot: boolean;
  snapshotBytes: number;
  /** Spawn → the "listening" log line's time. */
  startS: number;
  /** Spawn → the first "tenant catalog changed" log line (the catalog read and validated), NaN if none. */
  catalogLoadedS: number;
  /** VmRSS and VmHWM SETTLE_MS after "listening". */
  rssMb: number;
  peakRssMb: number;
}

/** One insert → login sample. */
export interface InsertSample {
  tenant: string;
  /** CatalogStore.put until it resolved (validation, INSERT, commit). */
  putMs: number;
  /** Commit (put resolved) → the first successful login completed; NaN when none within GIVE_UP_MS. */
  commitToLoginMs: number;
  /** Commit → the start of the attempt that succeeded. */
  commitToAttemptMs: number;
  /**
   * Commit → the proxy's "tenant catalog changed" log line naming the tenant (the new map is in
   * place), by wall clocks in ms (the log's resolution); NaN if the line is not there.
   */
  commitToAppliedMs: number;
  attempts: number;
  /** Failed attempts by SQLSTATE (or the start of the message when there is none). */
  failures: Record<string, number>;
}

export interface LoginFigures {
  tenant: string;
  logins: number;
  failed: number;
  firstError: string | null;
  /** Wall time of the measured logins (blocks added up), and logins per second over it. */
  seconds: number;
  loginsPerS: number;
  meanMs: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** The proxy's utime + stime over the measured logins, per login. */
  proxyCpuMsPerLogin: number;
  /** Logins per second of each block, in order (the spread between blocks is the noise to judge ÷small by). */
  blockLoginsPerS: number[];
}

export interface CatalogSizeResult {
  tenants: number;
  users: number;
  schema: string;
  /** Bulk INSERT of every tenant row (one statement), and the JSON size of one body. */
  loadS: number;
  bodyBytes: number;
  starts: CatalogStart[];
  logins: LoginFigures;
  inserts: InsertSample[];
  insertToLogin: { samples: number; gaveUp: number; p50Ms: number; p95Ms: number; maxMs: number; appliedP50Ms: number; appliedMaxMs: number };
  /** VmRSS at the end, after the logins and inserts. */
  rssAfterMb: number;
  /** Proxy log lines at warning level or above (first 20), and how many. */
  proxyProblems: string[];
  proxyProblemCount: number;
}

export interface CatalogResult {
  setup: Record<string, unknown>;
  sizes: CatalogSizeResult[];
}

interface Size {
  tenants: number;
  schema: string;
  snapshotFile: string;
  toml: string;
  store: CatalogStore;
  /** The tenant whose logins are timed (the middle one). */
  loginTenant: string;
  result: CatalogSizeResult;
  running: PgWardenProcess | null;
}

const tenantId = (i: number): string => `t${String(i).padStart(5, '0')}`;

/** Every tenant's body: the bench role's server in clear on loopback, session pooling, 10 users sharing one verifier. */
function tenantBody(spec: CatalogSpec): Record<string, unknown> {
  const users: Record<string, unknown> = {};
  for (let i = 0; i < USERS_PER_TENANT; i++) users[`u${i}`] = { scram: spec.backend.verifier, backend_user: spec.backend.user };
  return {
    backend: spec.cluster.url(spec.backend.database),
    backend_tls: 'disable',
    allow_cidrs: ['0.0.0.0/0', '::/0'],
    max_client_connections: 100,
    pool_mode: 'session',
    max_backend_connections: 4,
    users,
  };
}

/** The role and database of the catalogs (one schema per catalog size in it). */
async function createCatalogDatabase(cluster: Cluster): Promise<string> {
  const password = randomBytes(16).toString('hex');
  await cluster.query(`CREATE ROLE ${CATALOG_ROLE} LOGIN PASSWORD '${password}'`);
  await cluster.query(`CREATE DATABASE ${CATALOG_DATABASE} OWNER ${CATALOG_ROLE}`);
  return password;
}

/** The proxy's config for a catalog: the tests' TOML (require_tls, metrics, no auth-failure cool-downs), one worker, log level info. */
function catalogToml(spec: CatalogSpec, schema: string, snapshotFile: string): string {
  const catalog = {
    url: `postgresql://${CATALOG_ROLE}@127.0.0.1:${spec.cluster.port}/${CATALOG_DATABASE}`,
    password_env: PASSWORD_ENV,
    schema,
    snapshot_file: snapshotFile,
  };
  // The "listening" line is logged at info.
  return configToml({ tenants: [], requireTls: true, server: { workers: 1 }, catalog }, spec.certs).replace('level = "warn"', 'level = "info"');
}

/** Creates the catalog's tables (CatalogStore.init) and inserts `tenants` rows in one statement. */
async function loadCatalog(spec: CatalogSpec, tenants: number, body: Record<string, unknown>): Promise<Size> {
  const schema = `catalog_${tenants}`;
  const snapshotFile = path.join(spec.workDir, `${schema}.snapshot.json`);
  const toml = catalogToml(spec, schema, snapshotFile);
  const config = parseConfigText(toml, spec.workDir);
  const store = new CatalogStore(config.catalog!, config);
  onCleanup(`close the ${schema} catalog store`, () => store.close());
  await store.init();
  const started = performance.now();
  await spec.cluster.query(
    `INSERT INTO "${schema}".tenants (id, body) SELECT 't' || lpad(g::text, greatest(5, length(g::text)), '0'), $1::jsonb FROM generate_series(1, $2::int) AS g`,
    [JSON.stringify(body), tenants],
    CATALOG_DATABASE,
  );
  const loadS = (performance.now() - started) / 1000;
  spec.log(`  catalog ${schema}: ${tenants} tenants × ${USERS_PER_TENANT} users inserted in ${loadS.toFixed(2)} s`);
  return {
    tenants,
    schema,
    snapshotFile,
    toml,
    store,
    loginTenant: tenantId(Math.max(1, Math.ceil(tenants / 2))),
    running: null,
    result: {
      tenants,
      users: tenants * USERS_PER_TENANT,
      schema,
      loadS,
      bodyBytes: Buffer.byteLength(JSON.stringify(body)),
      starts: [],
      logins: emptyLogins(tenantId(Math.max(1, Math.ceil(tenants / 2)))),
      inserts: [],
      insertToLogin: { samples: 0, gaveUp: 0, p50Ms: Number.NaN, p95Ms: Number.NaN, maxMs: Number.NaN, appliedP50Ms: Number.NaN, appliedMaxMs: Number.NaN },
      rssAfterMb: Number.NaN,
      proxyProblems: [],
      proxyProblemCount: 0,
    },
  };
}

function emptyLogins(tenant: string): LoginFigures {
  const nan = Number.NaN;
  return {
    tenant,
    logins: 0,
    failed: 0,
    firstError: null,
    seconds: nan,
    loginsPerS: nan,
    meanMs: nan,
    p50Ms: nan,
    p99Ms: nan,
    maxMs: nan,
    proxyCpuMsPerLogin: nan,
    blockLoginsPerS: [],
  };
}

async function fileBytes(file: string): Promise<number> {
  try {
    return (await stat(file)).size;
  } catch {
    return 0;
  }
}

/** The pino `time` (ISO) of the first log line holding `marker`, in ms since the epoch; NaN if none. */
function logTime(output: string, marker: string): number {
  const line = output.split('\n').find((l) => l.includes(marker));
  if (line === undefined) return Number.NaN;
  try {
    return Date.parse((JSON.parse(line) as { time?: string }).time ?? '');
  } catch {
    return Number.NaN;
  }
}

/** Starts a proxy on the catalog and records its start; it keeps running (size.running). */
async function startOn(spec: CatalogSpec, size: Size): Promise<CatalogStart> {
  const snapshotBytes = await fileBytes(size.snapshotFile);
  const proc = await spawnPgWarden(size.toml, { listenTimeoutMs: LISTEN_TIMEOUT_MS });
  size.running = proc;
  const listeningAtMs = Date.parse(proc.listening.time);
  await sleep(SETTLE_MS);
  const mem = memory(proc.daemon.pid);
  const start: CatalogStart = {
    snapshot: snapshotBytes > 0,
    snapshotBytes,
    startS: (listeningAtMs - proc.spawnedAtMs) / 1000,
    catalogLoadedS: (logTime(proc.daemon.output(), '"msg":"tenant catalog changed"') - proc.spawnedAtMs) / 1000,
    rssMb: mem.rssMb,
    peakRssMb: mem.peakRssMb,
  };
  size.result.starts.push(start);
  spec.log(
    `  ${size.tenants} tenants, ${start.snapshot ? `restart (snapshot ${(snapshotBytes / 1024).toFixed(0)} KiB)` : 'first start (no snapshot)'}: ` +
      `listening after ${fmt(start.startS, 2)} s (catalog loaded at ${fmt(start.catalogLoadedS, 2)} s), RSS ${fmt(start.rssMb, 1)} MiB, peak ${fmt(start.peakRssMb, 1)} MiB`,
  );
  return start;
}

async function stopRunning(size: Size): Promise<void> {
  const proc = size.running;
  if (proc === null) return;
  size.running = null;
  const problems = problemLines(proc.daemon.output());
  size.result.proxyProblems.push(...problems.slice(0, 20 - size.result.proxyProblems.length));
  size.result.proxyProblemCount += problems.length;
  await proc.daemon.stop();
}

function loginSpec(spec: CatalogSpec, proc: PgWardenProcess, tenant: string, user: string, timeoutMs: number): LoginSpec {
  return {
    port: proc.listening.port,
    servername: `${tenant}.${SNI_SUFFIX}`,
    caPem: spec.certs.caCertPem,
    user,
    password: spec.backend.password,
    database: spec.backend.database,
    timeoutMs,
  };
}

/** A full login (TLS, StartupMessage, SCRAM, up to ReadyForQuery), then Terminate. */
async function loginOnce(s: LoginSpec): Promise<void> {
  const socket = await login(s);
  socket.end(TERMINATE);
}

/** The SQLSTATE of login.ts's "login refused: <code> <message>", else the start of the message. */
function failureKey(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return /login refused: ([0-9A-Z]{5})/.exec(message)?.[1] ?? message.slice(0, 60);
}

/** `count` sequential logins; adds their times to `into` and returns the wall time and the proxy's CPU. */
async function loginBlock(s: LoginSpec, pid: number, count: number, into: number[], errors: string[]): Promise<{ seconds: number; cpuS: number }> {
  const cpuBefore = cpuTimes(pid);
  const started = performance.now();
  for (let i = 0; i < count; i++) {
    const t = performance.now();
    try {
      await loginOnce(s);
      into.push(performance.now() - t);
    } catch (err) {
      errors.push(err instanceof Error ? err.message : String(err));
    }
  }
  const seconds = (performance.now() - started) / 1000;
  const cpuAfter = cpuTimes(pid);
  return { seconds, cpuS: cpuAfter.userS + cpuAfter.systemS - cpuBefore.userS - cpuBefore.systemS };
}

/** Sequential logins against one tenant of each catalog, the proxies alternating block by block. */
async function measureLogins(spec: CatalogSpec, sizes: Size[]): Promise<void> {
  const acc = sizes.map(() => ({ ms: [] as number[], errors: [] as string[], seconds: 0, cpuS: 0, blockLoginsPerS: [] as number[] }));
  const specs = sizes.map((size) => loginSpec(spec, size.running!, size.loginTenant, 'u0', 10_000));
  const warmupErrors: string[] = [];
  for (const [i, size] of sizes.entries()) await loginBlock(specs[i]!, size.running!.daemon.pid, WARMUP_LOGINS, [], warmupErrors);
  if (warmupErrors.length > 0) spec.log(`  ${warmupErrors.length} warm-up logins failed, first: ${warmupErrors[0] ?? ''}`);
  const perBlock = Math.ceil(spec.logins / LOGIN_BLOCKS);
  for (let block = 0; block < LOGIN_BLOCKS; block++) {
    const order = block % 2 === 0 ? sizes.map((_, i) => i) : sizes.map((_, i) => i).reverse();
    for (const i of order) {
      const a = acc[i]!;
      const okBefore = a.ms.length;
      const b = await loginBlock(specs[i]!, sizes[i]!.running!.daemon.pid, perBlock, a.ms, a.errors);
      a.seconds += b.seconds;
      a.cpuS += b.cpuS;
      a.blockLoginsPerS.push((a.ms.length - okBefore) / b.seconds);
    }
  }
  for (const [i, size] of sizes.entries()) {
    const a = acc[i]!;
    const sorted = [...a.ms].sort((x, y) => x - y);
    const attempted = perBlock * LOGIN_BLOCKS;
    size.result.logins = {
      tenant: size.loginTenant,
      logins: sorted.length,
      failed: a.errors.length,
      firstError: a.errors[0] ?? null,
      seconds: a.seconds,
      loginsPerS: sorted.length / a.seconds,
      meanMs: sorted.reduce((x, y) => x + y, 0) / sorted.length,
      p50Ms: percentileSorted(sorted, 50),
      p99Ms: percentileSorted(sorted, 99),
      maxMs: sorted[sorted.length - 1] ?? Number.NaN,
      proxyCpuMsPerLogin: (1000 * a.cpuS) / attempted,
      blockLoginsPerS: a.blockLoginsPerS,
    };
    const l = size.result.logins;
    spec.log(
      `  ${size.tenants} tenants: ${l.logins} logins to ${l.tenant} in ${fmt(l.seconds, 2)} s: ${fmt(l.loginsPerS, 0)}/s ` +
        `(blocks ${fmt(Math.min(...l.blockLoginsPerS), 0)}–${fmt(Math.max(...l.blockLoginsPerS), 0)}/s), mean ${fmt(l.meanMs, 2)} ms, ` +
        `p99 ${fmt(l.p99Ms, 2)} ms, proxy CPU ${fmt(l.proxyCpuMsPerLogin, 2)} ms/login${l.failed > 0 ? `, ${l.failed} FAILED (${l.firstError ?? ''})` : ''}`,
    );
  }
}

/**
 * Writes a new tenant (CatalogStore.put: validate, INSERT, commit), then tries a login every
 * RETRY_MS (at most MAX_IN_FLIGHT at once) until one succeeds or GIVE_UP_MS have passed since the
 * commit. Waits for every attempt to end before it resolves.
 */
async function insertThenLogin(spec: CatalogSpec, size: Size, id: string, body: Record<string, unknown>): Promise<InsertSample> {
  const proc = size.running!;
  const sent = performance.now();
  await size.store.put(id, body);
  const committed = performance.now();
  const committedWallMs = Date.now();
  const sample: InsertSample = {
    tenant: id,
    putMs: committed - sent,
    commitToLoginMs: Number.NaN,
    commitToAttemptMs: Number.NaN,
    commitToAppliedMs: Number.NaN,
    attempts: 0,
    failures: {},
  };
  let done = false;
  let inFlight = 0;
  await new Promise<void>((resolve) => {
    const settleWhenIdle = (): void => {
      if (done && inFlight === 0) resolve();
    };
    const attempt = (): void => {
      const startedAt = performance.now();
      inFlight++;
      sample.attempts++;
      // Users rotate, so a success is not one user's luck; every user has the same password.
      loginOnce(loginSpec(spec, proc, id, `u${sample.attempts % USERS_PER_TENANT}`, GIVE_UP_MS))
        .then(
          () => {
            if (done) return;
            done = true;
            sample.commitToLoginMs = performance.now() - committed;
            sample.commitToAttemptMs = startedAt - committed;
          },
          (err: unknown) => {
            const key = failureKey(err);
            sample.failures[key] = (sample.failures[key] ?? 0) + 1;
          },
        )
        .finally(() => {
          inFlight--;
          settleWhenIdle();
        });
    };
    const tick = (): void => {
      if (done) return settleWhenIdle();
      if (performance.now() - committed > GIVE_UP_MS) {
        done = true;
        return settleWhenIdle();
      }
      if (inFlight < MAX_IN_FLIGHT) attempt();
      setTimeout(tick, RETRY_MS);
    };
    tick();
  });
  const applied = proc.daemon
    .output()
    .split('\n')
    .find((l) => l.includes('"msg":"tenant catalog changed"') && l.includes(`"changed":["${id}"]`));
  if (applied !== undefined) sample.commitToAppliedMs = Date.parse((JSON.parse(applied) as { time: string }).time) - committedWallMs;
  return sample;
}

/** Insert → login samples, the catalogs alternating sample by sample. */
async function measureInserts(spec: CatalogSpec, sizes: Size[], body: Record<string, unknown>): Promise<void> {
  for (let k = 1; k <= spec.inserts; k++) {
    const order = k % 2 === 1 ? sizes : [...sizes].reverse();
    for (const size of order) {
      const id = `new-${String(k).padStart(3, '0')}`;
      const s = await insertThenLogin(spec, size, id, body);
      size.result.inserts.push(s);
      await sleep(BETWEEN_INSERTS_MS);
    }
  }
  for (const size of sizes) {
    const ok = size.result.inserts
      .map((s) => s.commitToLoginMs)
      .filter(Number.isFinite)
      .sort((a, b) => a - b);
    size.result.insertToLogin = {
      samples: size.result.inserts.length,
      gaveUp: size.result.inserts.length - ok.length,
      p50Ms: percentileSorted(ok, 50),
      p95Ms: percentileSorted(ok, 95),
      maxMs: ok[ok.length - 1] ?? Number.NaN,
      appliedP50Ms: median(size.result.inserts.map((s) => s.commitToAppliedMs)),
      appliedMaxMs: Math.max(...size.result.inserts.map((s) => s.commitToAppliedMs).filter(Number.isFinite)),
    };
    const f = size.result.insertToLogin;
    const failures: Record<string, number> = {};
    for (const s of size.result.inserts) for (const [k, n] of Object.entries(s.failures)) failures[k] = (failures[k] ?? 0) + n;
    spec.log(
      `  ${size.tenants} tenants: insert → login p50 ${fmt(f.p50Ms, 1)} ms, p95 ${fmt(f.p95Ms, 1)} ms, max ${fmt(f.maxMs, 1)} ms ` +
        `(commit → change applied in the proxy: p50 ${fmt(f.appliedP50Ms, 0)} ms, max ${fmt(f.appliedMaxMs, 0)} ms)` +
        `${f.gaveUp > 0 ? `, ${f.gaveUp}/${f.samples} GAVE UP after ${GIVE_UP_MS} ms` : ''}; refused attempts before arrival: ${JSON.stringify(failures)}`,
    );
  }
}

/**
 * The whole phase: load a small and a large catalog, start a proxy on each (first start, no
 * snapshot), stop it, start it again (a restart with the snapshot) and keep both running for the
 * login and insert → login measurements, which alternate between them.
 */
export async function runCatalog(spec: CatalogSpec): Promise<CatalogResult> {
  const catalogPassword = await createCatalogDatabase(spec.cluster);
  // The bench's own catalog clients (CatalogStore) and the proxies it spawns read the password from here.
  process.env[PASSWORD_ENV] = catalogPassword;
  const body = tenantBody(spec);
  const checked = validateTenantBody(tenantId(1), body, parseConfigText(catalogToml(spec, 'catalog_check', path.join(spec.workDir, 'x.json')), spec.workDir));
  if (!checked.ok) throw new Error(`catalog tenant body invalid: ${checked.problems.join('; ')}`);
  const sizes: Size[] = [];
  for (const n of [...new Set([SMALL_TENANTS, spec.tenants])]) sizes.push(await loadCatalog(spec, n, body));
  try {
    for (const size of sizes) {
      await startOn(spec, size);
      await stopRunning(size);
    }
    for (const size of sizes) await startOn(spec, size);
    await measureLogins(spec, sizes);
    await measureInserts(spec, sizes, body);
    for (const size of sizes) size.result.rssAfterMb = memory(size.running!.daemon.pid).rssMb;
  } finally {
    for (const size of sizes) await stopRunning(size);
  }
  return {
    setup: {
      catalogDatabase: CATALOG_DATABASE,
      usersPerTenant: USERS_PER_TENANT,
      workers: 1,
      poolMode: 'session',
      maxBackendConnections: 4,
      backendTls: 'disable',
      resyncInterval: '30s (default)',
      settleMs: SETTLE_MS,
      warmupLogins: WARMUP_LOGINS,
      loginBlocks: LOGIN_BLOCKS,
      retryMs: RETRY_MS,
      maxInFlight: MAX_IN_FLIGHT,
      giveUpMs: GIVE_UP_MS,
      betweenInsertsMs: BETWEEN_INSERTS_MS,
      verifier: "one SCRAM verifier (the backend role's, from pg_authid) shared by every user",
    },
    sizes: sizes.map((s) => s.result),
  };
}

const CATALOG_HEADER = [
  'tenants',
  'users',
  'start s',
  'RSS MiB',
  'restart s',
  'restart RSS',
  'peak MiB',
  'logins/s',
  '÷small',
  'login ms',
  'p99 ms',
  'CPU ms/login',
  '÷small',
  'ins→login p50',
  'p95',
  'max ms',
  'gave up',
];

/** One row per catalog size; ÷small compares with the 10-tenant catalog (logins/s, and proxy CPU per login). */
export function formatCatalog(result: CatalogResult): string {
  const small = result.sizes.find((s) => s.tenants === SMALL_TENANTS) ?? result.sizes[0];
  const rows = result.sizes.map((s) => {
    const first = s.starts.find((st) => !st.snapshot);
    const restart = s.starts.find((st) => st.snapshot);
    return [
      String(s.tenants),
      String(s.users),
      fmt(first?.startS ?? Number.NaN, 2),
      fmt(first?.rssMb ?? Number.NaN, 1),
      fmt(restart?.startS ?? Number.NaN, 2),
      fmt(restart?.rssMb ?? Number.NaN, 1),
      fmt(Math.max(first?.peakRssMb ?? 0, restart?.peakRssMb ?? 0), 1),
      fmt(s.logins.loginsPerS, 0),
      fmt(s.logins.loginsPerS / (small?.logins.loginsPerS ?? Number.NaN), 3),
      fmt(s.logins.meanMs, 2),
      fmt(s.logins.p99Ms, 2),
      fmt(s.logins.proxyCpuMsPerLogin, 3),
      fmt(s.logins.proxyCpuMsPerLogin / (small?.logins.proxyCpuMsPerLogin ?? Number.NaN), 3),
      fmt(s.insertToLogin.p50Ms, 1),
      fmt(s.insertToLogin.p95Ms, 1),
      fmt(s.insertToLogin.maxMs, 1),
      `${s.insertToLogin.gaveUp}/${s.insertToLogin.samples}`,
    ];
  });
  return formatColumns(CATALOG_HEADER, rows);
}

/** Lines under the table: what did not simply work. */
export function catalogNotes(result: CatalogResult): string[] {
  const lines: string[] = [];
  for (const s of result.sizes) {
    const f = s.insertToLogin;
    lines.push(
      `  ${s.tenants} tenants: commit → change applied in the proxy (its log line) p50 ${fmt(f.appliedP50Ms, 0)} ms, max ${fmt(f.appliedMaxMs, 0)} ms; ` +
        `the successful attempt started p50 ${fmt(median(s.inserts.map((i) => i.commitToAttemptMs)), 1)} ms after the commit; ` +
        `catalog loaded ${s.starts.map((st) => fmt(st.catalogLoadedS, 2)).join(' / ')} s after spawn (start / restart); RSS at the end ${fmt(s.rssAfterMb, 1)} MiB`,
    );
    if (s.logins.failed > 0) lines.push(`  ${s.tenants} tenants: ${s.logins.failed} timed logins failed: ${s.logins.firstError ?? ''}`);
    if (s.insertToLogin.gaveUp > 0)
      lines.push(
        `  ${s.tenants} tenants: ${s.insertToLogin.gaveUp}/${s.insertToLogin.samples} inserted tenants had no successful login within ${GIVE_UP_MS} ms`,
      );
    if (s.proxyProblemCount > 0)
      lines.push(`  ${s.tenants} tenants: ${s.proxyProblemCount} proxy log lines at warn or above, first: ${(s.proxyProblems[0] ?? '').slice(0, 200)}`);
  }
  const medianPut = median(result.sizes.flatMap((s) => s.inserts.map((i) => i.putMs)));
  lines.push(`  CatalogStore.put (validate, INSERT, commit) took ${fmt(medianPut, 1)} ms (median); insert → login counts from its commit`);
  return lines;
}
