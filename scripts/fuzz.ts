/**
 * `npm run fuzz -- [--minutes N] [--seed S] [--parallel P] [--proxy-header-cases C] [--target proxy|auth-query]`: the long
 * fuzz run (issue 6). `--target auth-query` instead fuzzes auth_query lookups against a hostile tenant server
 * (test/support/auth-query-fuzz.ts) in this process: any throw, crash or slow lookup is a violation. The default target
 * first fuzzes the PROXY v2 header decoder in-process (C cases, default 50 000: test/support/fuzz-proxy-header.ts); then it starts a
 * throwaway PostgreSQL and pgwarden as a child process (so a crash is an exit, not a thrown test),
 * runs the structure-aware fuzzer (test/support/fuzz.ts) in rounds until the time is up, samples
 * the proxy's RSS and open file descriptors, and prints the counts. Exit 1 on any violation, a
 * proxy exit, or a bystander query that fails.
 */
import { rm } from 'node:fs/promises';
import { memory, openFds } from '../bench/lib/procstat.js';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { startCluster } from '../test/support/cluster.js';
import { clientConfig, spawnProxy, testCerts } from '../test/support/proxy.js';
import { FUZZ_PHASES, runCases, type FuzzSummary } from '../test/support/fuzz.js';
import { fuzzProxySpec } from '../test/support/fuzz-target.js';
import { AUTH_FUZZ_KINDS, runAuthQueryFuzz, type AuthFuzzSummary } from '../test/support/auth-query-fuzz.js';
import { fuzzProxyHeader } from '../test/support/fuzz-proxy-header.js';

const AUTH_TIMEOUT_MS = 1000;
const ROUND = 50; // cases per phase per round

function procFigures(pid: number): { rssMb: number; fds: number } {
  return { rssMb: memory(pid).rssMb, fds: openFds(pid) };
}

/** What is still held 10 s after the last case ('' if nothing): the metrics and /pools of the child. */
async function leftovers(metricsPort: number): Promise<string> {
  let last = '';
  for (const until = Date.now() + 10_000; Date.now() < until; await new Promise((r) => setTimeout(r, 500))) {
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const sessions = [...metrics.matchAll(/^pgwarden_client_connections\{[^}]*\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0) - 1; // the bystander
    const preauth = Number(/^pgwarden_preauth_connections (\d+)/m.exec(metrics)?.[1] ?? 0);
    const pools = (await (await fetch(`http://127.0.0.1:${metricsPort}/pools`)).json()) as { tenant: string; total: number; keys: number }[];
    const hostile = pools.filter((p) => p.tenant.startsWith('hostile') && (p.total > 0 || p.keys > 0));
    last = [sessions > 0 ? `${sessions} sessions` : '', preauth > 0 ? `${preauth} pre-auth` : '', ...hostile.map((p) => `${p.tenant}: ${p.total} backends, ${p.keys} keys`)].filter((x) => x !== '').join(', ');
    if (last === '') return '';
  }
  return last;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string' },
      seed: { type: 'string' },
      parallel: { type: 'string' },
      target: { type: 'string' },
      'proxy-header-cases': { type: 'string' },
    },
  });
  const minutes = Number(values.minutes ?? 5);
  const seed = Number(values.seed ?? Date.now() % 2 ** 31);
  if (values.target === 'auth-query') return fuzzAuthQuery(seed, minutes);
  if (values.target !== undefined && values.target !== 'proxy') throw new Error(`unknown --target ${values.target} (proxy or auth-query)`);
  const parallel = Number(values.parallel ?? 16);
  // The PROXY v2 header decoder first: in-process, bounded by its case count (issue 14).
  const header = fuzzProxyHeader(seed, Number(values['proxy-header-cases'] ?? 50_000));
  process.stdout.write(`fuzz: PROXY v2 header, seed ${seed}: ${header.cases} cases, ${JSON.stringify(header.outcomes)}\n`);
  for (const v of header.violations.slice(0, 20)) process.stdout.write(`VIOLATION seed ${seed} proxy_header ${v}\n`);
  if (header.violations.length > 0) return 1;
  const cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
  const { spec, dir, fake } = await fuzzProxySpec(cluster, AUTH_TIMEOUT_MS);
  const child = await spawnProxy(spec);
  const pid = child.child.pid!;
  const certs = await testCerts();
  const target = {
    port: child.port,
    ca: certs.caCertPem,
    tenant: 'acme',
    user: 'app',
    password: 'app-pass',
    authTimeoutMs: AUTH_TIMEOUT_MS,
    backend: { session: 'hostile', transaction: 'hostiletx' },
  };
  const started = Date.now();
  const bystander = new pg.Client(clientConfig({ port: child.port, certs }, { tenant: 'other', user: 'app', password: 'app-pass' }));
  await bystander.connect();
  const summary: FuzzSummary = {
    cases: 0,
    byOutcome: {},
    violations: [],
    onViolation: (v) => process.stdout.write(`  VIOLATION seed ${seed} ${v.phase}#${v.index} at ${((Date.now() - started) / 1000).toFixed(0)} s: ${v.violation}\n`),
  };
  const first = procFigures(pid);
  let peak = first;
  let bystanderOk = 0;
  let failure: string | null = null;
  const proxy = { exited: false, stopping: false };
  void child.exited.then((code) => {
    proxy.exited = true;
    if (!proxy.stopping) failure ??= `pgwarden exited (code ${code})`;
  });
  process.stdout.write(`fuzz: seed ${seed}, ${minutes} min, ${parallel} at a time; proxy pid ${pid}: RSS ${first.rssMb.toFixed(1)} MB, ${first.fds} fds\n`);
  for (let round = 0; Date.now() - started < minutes * 60_000 && failure === null; round++) {
    await runCases(target, seed, FUZZ_PHASES, round * ROUND, ROUND, parallel, summary);
    try {
      await bystander.query('SELECT 1');
      bystanderOk++;
    } catch (err) {
      failure = `bystander query failed: ${(err as Error).message}`;
    }
    if (proxy.exited) break;
    const now = procFigures(pid);
    peak = { rssMb: Math.max(peak.rssMb, now.rssMb), fds: Math.max(peak.fds, now.fds) };
    if (round % 10 === 0) process.stdout.write(`  ${((Date.now() - started) / 1000).toFixed(0)} s: ${summary.cases} cases, ${summary.violations.length} violations, RSS ${now.rssMb.toFixed(1)} MB, ${now.fds} fds\n`);
  }
  // Nothing may be left once the cases are done: sessions, pre-auth slots, backends or pool keys.
  const leftover = proxy.exited || child.metricsPort === null ? null : await leftovers(child.metricsPort);
  if (leftover !== null && leftover !== '') failure ??= `left behind after the run: ${leftover}`;
  // A flood of set-up timeouts would hide everything else: more than 2 % fails the run.
  if ((summary.setupTimeouts ?? 0) > summary.cases * 0.02) failure ??= `${summary.setupTimeouts} set-up timeouts in ${summary.cases} cases (over 2 %)`;
  const last = proxy.exited ? null : procFigures(pid);
  await bystander.end().catch(() => undefined);
  proxy.stopping = true;
  await child.stop();
  await fake.close();
  await cluster.stop();
  await rm(dir, { recursive: true, force: true });
  const elapsedMin = (Date.now() - started) / 60_000;
  process.stdout.write(`\nfuzz: ${summary.cases} cases in ${elapsedMin.toFixed(1)} min (seed ${seed}); bystander queries ok: ${bystanderOk}; fake tenant server connections: ${fake.connections()}\n`);
  process.stdout.write(`well-formed set-ups ended by the ${AUTH_TIMEOUT_MS} ms pre-auth deadline (machine starved, not counted as violations): ${summary.setupTimeouts ?? 0}\n`);
  process.stdout.write(`proxy RSS ${first.rssMb.toFixed(1)} -> peak ${peak.rssMb.toFixed(1)} -> end ${last?.rssMb.toFixed(1) ?? '(exited)'} MB; fds ${first.fds} -> peak ${peak.fds} -> end ${last?.fds ?? '(exited)'}\n`);
  const rows = Object.entries(summary.byOutcome).sort(([a], [b]) => a.localeCompare(b));
  for (const [k, n] of rows) process.stdout.write(`  ${k.padEnd(22)} ${n}\n`);
  for (const v of summary.violations.slice(0, 20)) process.stdout.write(`VIOLATION seed ${seed} ${v.phase}#${v.index}: ${v.violation}\n`);
  if (failure !== null) process.stdout.write(`FAILED: ${failure}\n`);
  return failure === null && summary.violations.length === 0 ? 0 : 1;
}

/** auth_query lookups against a hostile tenant server, in rounds of every reply kind, until the time is up. */
async function fuzzAuthQuery(seed: number, minutes: number): Promise<number> {
  const summary: AuthFuzzSummary = { cases: 0, byOutcome: {}, violations: [] };
  const started = Date.now();
  const round = AUTH_FUZZ_KINDS.length * 10;
  process.stdout.write(`fuzz auth_query: seed ${seed}, ${minutes} min\n`);
  for (let from = 0; Date.now() - started < minutes * 60_000; from += round) await runAuthQueryFuzz(seed, from, round, summary);
  process.stdout.write(`\nfuzz auth_query: ${summary.cases} cases in ${((Date.now() - started) / 60_000).toFixed(1)} min (seed ${seed})\n`);
  for (const [k, n] of Object.entries(summary.byOutcome).sort(([a], [b]) => a.localeCompare(b))) process.stdout.write(`  ${k.padEnd(44)} ${n}\n`);
  for (const v of summary.violations.slice(0, 20)) process.stdout.write(`VIOLATION seed ${seed}: ${v}\n`);
  return summary.violations.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`fuzz failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
