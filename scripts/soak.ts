/**
 * `npm run soak -- [--minutes 10] [--interval 5] [--out docs/soak.md] [--json file]`: the soak
 * (issue 6). A throwaway PostgreSQL and a child pgwarden carry steady pgbench load in both pool
 * modes, with connections churning (pgbench -C, short-lived node-postgres clients, pgbench runs
 * restarted every 30 s), for a bounded time. Every interval it samples the proxy's RSS, open file
 * descriptors, event-loop delay, audit queue, sessions and TPS. At the end it drains and stops
 * pgwarden with SIGTERM, verifies the audit chain, checks every session.start has its
 * session.end, judges the samples (bench/lib/soak.ts) and writes the report. Exit 1 if the run is
 * not flat, a transaction failed, a session has no end, or the audit does not verify.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { startCluster, readVerifier } from '../test/support/cluster.js';
import { clientConfig, spawnProxy, testCerts, SNI_SUFFIX, type ChildProxy } from '../test/support/proxy.js';
import { initialise, killRunningPgbench, runSelectOnly, type Endpoint, type LoadSpec } from '../bench/lib/pgbench.js';
import { memory, openFds } from '../bench/lib/procstat.js';
import { FLAT_RULE, judge, type SoakSample, type SoakVerdict } from '../bench/lib/soak.js';
import { auditFileSet, verifyAuditFiles } from '../src/audit/verify.js';

const USER = 'soak';
const DATABASE = 'soak';

interface Stream {
  name: string;
  tenant: 'sess' | 'txn';
  load: Omit<LoadSpec, 'durationS'>;
  transactions: number;
  failed: number;
  errors: string[];
  runs: number;
}

/** The steady load: rates keep the two cores from saturating, so delay figures mean something. */
function streams(): Stream[] {
  const s = (name: string, tenant: Stream['tenant'], load: Stream['load']): Stream => ({ name, tenant, load, transactions: 0, failed: 0, errors: [], runs: 0 });
  return [
    s('session mode, prepared, 4 clients at 300 tx/s', 'sess', { clients: 4, jobs: 1, protocol: 'prepared', rate: 300 }),
    s('transaction mode, every statement audited, 4 clients at 200 tx/s', 'txn', { clients: 4, jobs: 1, protocol: 'simple', rate: 200 }),
    s('session mode, a new TLS connection per transaction (-C), 2 clients at 20 tx/s', 'sess', { clients: 2, jobs: 1, protocol: 'simple', rate: 20, connectEachTx: true }),
  ];
}

function sumMetric(text: string, name: string): number {
  let n = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? ([-\\d.e+]+|NaN)$`, 'gm'))) n += Number(m[1]) || 0;
  return n;
}

async function metricsText(port: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}

/** Counts session.start and session.end records over the audit files; lists starts without an end. */
async function sessionPairs(files: readonly string[]): Promise<{ starts: number; ends: number; unmatched: string[] }> {
  const open = new Set<string>();
  let starts = 0;
  let ends = 0;
  for (const file of files) {
    const lines = readline.createInterface({ input: createReadStream(file), crlfDelay: Infinity });
    for await (const line of lines) {
      const isStart = line.includes('"event":"session.start"');
      const isEnd = !isStart && line.includes('"event":"session.end"');
      if (!isStart && !isEnd) continue;
      const id = (JSON.parse(line) as { session?: { id?: string } }).session?.id ?? '';
      if (isStart) {
        starts++;
        open.add(id);
      } else {
        ends++;
        open.delete(id);
      }
    }
  }
  return { starts, ends, unmatched: [...open] };
}

function report(o: {
  minutes: number;
  interval: number;
  samples: SoakSample[];
  verdict: SoakVerdict;
  streams: Stream[];
  churnClients: number;
  churnErrors: string[];
  exitCode: number | null;
  audit: { ok: boolean; records: number; files: number; checkpoints: number; starts: number; ends: number; unmatched: string[] };
}): string {
  const v = o.verdict;
  const every = Math.max(1, Math.ceil(o.samples.length / 40));
  const rows = o.samples.filter((_, i) => i % every === 0 || i === o.samples.length - 1);
  const tx = o.streams.reduce((n, s) => n + s.transactions, 0);
  const failed = o.streams.reduce((n, s) => n + s.failed, 0);
  const loop = o.samples.map((s) => s.loopP99Ms).sort((a, b) => a - b);
  return [
    '# Soak',
    '',
    `\`npm run soak -- --minutes ${o.minutes} --interval ${o.interval}\`, run ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC on the project's 2-core machine`,
    '(PostgreSQL, pgbench and pgwarden share the two cores). One child pgwarden, audit file on.',
    '',
    '## Load',
    ...o.streams.map((s) => `- ${s.name}: ${s.transactions.toLocaleString('en')} transactions, ${s.failed} failed, ${s.runs} pgbench runs (each at most 30 s, so connections are re-made)`),
    `- short-lived node-postgres clients (connect over TLS, one query, disconnect), 4 per second alternating between the two tenants: ${o.churnClients.toLocaleString('en')} clients, ${o.churnErrors.length} errors`,
    '',
    '## Verdict',
    '',
    `**${v.flat ? 'flat' : 'NOT flat'}**${v.flat ? '' : `: ${v.reasons.join('; ')}`}. Rule: ${FLAT_RULE}.`,
    '',
    '| | first | warm-up peak | peak | last | slope, second half |',
    '|---|---|---|---|---|---|',
    `| RSS (MB) | ${v.rssFirst.toFixed(1)} | ${v.rssWarm.toFixed(1)} | ${v.rssPeak.toFixed(1)} | ${v.rssLast.toFixed(1)} | ${v.rssSlope.toFixed(3)} MB/min |`,
    `| open fds | ${v.fdsFirst} | ${v.fdsWarm} | ${v.fdsPeak} | ${v.fdsLast} | ${v.fdsSlope.toFixed(3)} /min |`,
    '',
    `- Transactions through pgwarden: ${tx.toLocaleString('en')}, failed: ${failed}.`,
    `- Event-loop delay p99 (prom-client's window, per sample): median ${(loop[Math.floor(loop.length / 2)] ?? 0).toFixed(1)} ms, worst ${(loop[loop.length - 1] ?? 0).toFixed(1)} ms.`,
    `- Audit queue (records waiting for the writer): worst ${Math.max(...o.samples.map((s) => s.auditQueue))}.`,
    `- SIGTERM at the end: pgwarden exited with ${o.exitCode}.`,
    `- Audit: \`verify\` ${o.audit.ok ? 'passed' : 'FAILED'} over ${o.audit.records.toLocaleString('en')} records in ${o.audit.files} file(s) with ${o.audit.checkpoints} checkpoints; ${o.audit.starts.toLocaleString('en')} session.start, ${o.audit.ends.toLocaleString('en')} session.end, ${o.audit.unmatched.length} sessions without an end.`,
    '',
    '## Samples',
    '',
    `${every === 1 ? 'Every sample' : `One sample in ${every}`} of ${o.samples.length} (taken every ${o.interval} s).`,
    '',
    '| t (s) | RSS (MB) | fds | loop p99 (ms) | audit queue | sessions | TPS |',
    '|---|---|---|---|---|---|---|',
    ...rows.map((s) => `| ${s.t.toFixed(0)} | ${s.rssMb.toFixed(1)} | ${s.fds} | ${s.loopP99Ms.toFixed(1)} | ${s.auditQueue} | ${s.sessions} | ${s.tps.toFixed(0)} |`),
    '',
  ].join('\n');
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { minutes: { type: 'string' }, interval: { type: 'string' }, out: { type: 'string' }, json: { type: 'string' } } });
  const minutes = Number(values.minutes ?? 10);
  const interval = Number(values.interval ?? 5);
  if (!(minutes > 0 && minutes <= 240) || !(interval >= 1)) throw new Error('--minutes must be in (0, 240] and --interval at least 1');
  const work = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-soak-'));
  const certs = await testCerts();
  const password = randomBytes(16).toString('hex');
  const cluster = await startCluster({
    auth: 'scram-sha-256',
    ssl: { certPath: certs.serverCertPath, keyPath: certs.serverKeyPath },
    users: [{ name: USER, password }],
    databases: [DATABASE],
    settings: { max_connections: '100' },
  });
  let child: ChildProxy | null = null;
  try {
    await cluster.query(`ALTER DATABASE ${DATABASE} OWNER TO ${USER}`);
    const endpoint = (host: string, port: number): Endpoint => ({ host, port, user: USER, password, database: DATABASE, caCertPath: certs.caCertPath });
    await initialise(endpoint(`direct.${SNI_SUFFIX}`, cluster.port), 1);
    const users = [{ name: USER, verifier: await readVerifier(cluster, USER) }];
    const auditFile = path.join(work, 'audit.jsonl');
    child = await spawnProxy({
      auditFile,
      audit: { rotate_bytes: '64MB' },
      tenants: [
        { id: 'sess', cluster, database: DATABASE, users, pool: { pool_mode: 'session', max_backend_connections: 12 } },
        { id: 'txn', cluster, database: DATABASE, users, pool: { pool_mode: 'transaction', max_backend_connections: 4 }, extra: { audit_statements: 'all' } },
      ],
    });
    const proxy = child;
    const pid = proxy.child.pid!;
    const metricsPort = proxy.metricsPort!;
    process.stdout.write(`soak: ${minutes} min, a sample every ${interval} s; pgwarden pid ${pid}, work dir ${work}\n`);

    const started = Date.now();
    const deadline = started + minutes * 60_000;
    const load = streams();
    const runStream = async (s: Stream): Promise<void> => {
      while (deadline - Date.now() > 3000) {
        const durationS = Math.max(2, Math.min(30, Math.floor((deadline - Date.now()) / 1000)));
        const f = await runSelectOnly(endpoint(`${s.tenant}.${SNI_SUFFIX}`, proxy.port), { ...s.load, durationS }, work);
        s.runs++;
        s.transactions += f.transactions;
        s.failed += f.failedTransactions + (f.aborted ? 1 : 0);
        if (f.errorCount > 0 && s.errors.length < 20) s.errors.push(...f.errors.slice(0, 20 - s.errors.length));
      }
    };
    let churnClients = 0;
    const churnErrors: string[] = [];
    const churn = async (): Promise<void> => {
      while (deadline - Date.now() > 3000) {
        const tenant = churnClients % 2 === 0 ? 'sess' : 'txn';
        const c = new pg.Client({ ...clientConfig({ port: proxy.port, certs }, { tenant, user: USER, password, database: DATABASE }) });
        try {
          await c.connect();
          await c.query('SELECT count(*) FROM pgbench_branches');
          await c.end();
        } catch (err) {
          if (churnErrors.length < 20) churnErrors.push((err as Error).message);
          await c.end().catch(() => undefined);
        }
        churnClients++;
        await new Promise((r) => setTimeout(r, 250));
      }
    };
    const samples: SoakSample[] = [];
    let lastTx = sumMetric(await metricsText(metricsPort), 'pgwarden_transactions_total');
    let lastT = Date.now();
    // Samples are taken while the load runs (it stops 3 s before the deadline).
    const sampler = async (): Promise<void> => {
      while (deadline - Date.now() > 3000 + interval * 1000) {
        await new Promise((r) => setTimeout(r, interval * 1000));
        const text = await metricsText(metricsPort);
        const now = Date.now();
        const tx = sumMetric(text, 'pgwarden_transactions_total');
        const sample: SoakSample = {
          t: (now - started) / 1000,
          rssMb: memory(pid).rssMb,
          fds: openFds(pid),
          loopP99Ms: sumMetric(text, 'pgwarden_nodejs_eventloop_lag_p99_seconds') * 1000,
          auditQueue: sumMetric(text, 'pgwarden_audit_queue_records'),
          sessions: sumMetric(text, 'pgwarden_client_connections'),
          tps: ((tx - lastTx) * 1000) / Math.max(1, now - lastT),
        };
        lastTx = tx;
        lastT = now;
        samples.push(sample);
        if (samples.length % Math.max(1, Math.round(60 / interval)) === 0) {
          process.stdout.write(`  ${sample.t.toFixed(0)} s: RSS ${sample.rssMb.toFixed(1)} MB, ${sample.fds} fds, loop p99 ${sample.loopP99Ms.toFixed(1)} ms, audit queue ${sample.auditQueue}, ${sample.sessions} sessions, ${sample.tps.toFixed(0)} TPS\n`);
        }
      }
    };
    await Promise.all([...load.map(runStream), churn(), churn(), sampler()]);

    // Drained: every session gone, then SIGTERM, as an operator would stop it.
    for (let i = 0; i < 60 && sumMetric(await metricsText(metricsPort), 'pgwarden_client_connections') > 0; i++) await new Promise((r) => setTimeout(r, 500));
    proxy.child.kill('SIGTERM');
    const exitCode = await proxy.exited;
    const files = await auditFileSet(auditFile);
    const verified = await verifyAuditFiles(files);
    const pairs = await sessionPairs(files);
    const verdict = judge(samples);
    const text = report({
      minutes,
      interval,
      samples,
      verdict,
      streams: load,
      churnClients,
      churnErrors,
      exitCode,
      audit: { ok: verified.ok, records: verified.records, files: verified.files, checkpoints: verified.checkpoints, ...pairs },
    });
    if (values.out !== undefined) await writeFile(values.out, text);
    if (values.json !== undefined) await writeFile(values.json, JSON.stringify({ minutes, interval, samples, verdict, streams: load, churnClients, churnErrors, exitCode, audit: { ...pairs, unmatched: pairs.unmatched.slice(0, 50), verified } }, null, 2));
    process.stdout.write(`\n${text}\n`);
    for (const s of load) for (const e of s.errors) process.stdout.write(`pgbench (${s.name}): ${e}\n`);
    for (const e of churnErrors) process.stdout.write(`client: ${e}\n`);
    const failed = load.some((s) => s.failed > 0) || churnErrors.length > 0;
    return verdict.flat && !failed && pairs.unmatched.length === 0 && verified.ok && exitCode === 0 ? 0 : 1;
  } finally {
    killRunningPgbench();
    await child?.stop();
    await cluster.stop();
    await rm(work, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`soak failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
