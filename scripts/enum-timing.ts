/**
 * `npm run enum-timing -- [--n 300] [--json file]`: can a client tell an unknown user or tenant
 * from a wrong password by timing (SECURITY.md rule 3)? Starts PostgreSQL and a child pgwarden,
 * then makes N failed logins of each kind, interleaved, each a full TLS + SCRAM exchange that ends
 * in the same 28P01, and times (1) the whole login and (2) the last step, client-final-message to
 * ErrorResponse, where the proof is checked. Prints median, p10, p90, mean and standard deviation
 * per kind, the difference of medians from "wrong password" and a Mann-Whitney U test's p-value.
 * An auth_query tenant (issue 14) adds its own kinds: a wrong password for a role on the tenant's
 * server, an unknown role, an MD5 role and an expired one, compared with that tenant's wrong
 * password. After the warm-up they are cached (found 1 min, refused 10 s), as in steady state;
 * a wrong password refreshes its role at most once a second, which the figures include.
 */
import { writeFile } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { serialize } from 'pg-protocol';
import { ScramClientExchange } from '../src/auth/scram.js';
import { createHash } from 'node:crypto';
import { startCluster, readVerifier, type Cluster } from '../test/support/cluster.js';
import { spawnProxy, testCerts } from '../test/support/proxy.js';
import { decodeError, startupMessage, Wire } from '../test/support/wire.js';
import { mannWhitneyP, median, percentileSorted } from '../bench/lib/stats.js';
import { AUTH_QUERY_FUNCTION_SQL } from '../test/support/auth-query-function.js';

interface Kind {
  name: string;
  tenant: string;
  user: string;
  password: string;
}

const KINDS: Kind[] = [
  { name: 'wrong password (known user)', tenant: 'acme', user: 'app', password: 'not-the-password' },
  { name: 'unknown user', tenant: 'acme', user: 'nobody', password: 'not-the-password' },
  { name: 'unknown tenant', tenant: 'ghost', user: 'app', password: 'not-the-password' },
  { name: 'disabled tenant', tenant: 'off', user: 'app', password: 'not-the-password' },
];

/** The auth_query tenant's kinds, compared with the first of them. */
const AQ_KINDS: Kind[] = [
  { name: 'aq: wrong password (role)', tenant: 'aq', user: 'aq_role', password: 'not-the-password' },
  { name: 'aq: unknown role', tenant: 'aq', user: 'aq_nobody', password: 'not-the-password' },
  { name: 'aq: MD5 role', tenant: 'aq', user: 'aq_md5', password: 'not-the-password' },
  { name: 'aq: expired role', tenant: 'aq', user: 'aq_expired', password: 'not-the-password' },
];

const AUTH_PASSWORD_ENV = 'PGWARDEN_ENUM_TIMING_AUTH_PASSWORD';
const AUTH_PASSWORD = 'enum-timing-auth';

/** The README's lookup function and three roles for the auth_query tenant. */
async function setUpAuthQuery(cluster: Cluster): Promise<void> {
  for (const sql of [
    `CREATE ROLE pgwarden_auth LOGIN PASSWORD '${AUTH_PASSWORD}'`,
    ...AUTH_QUERY_FUNCTION_SQL,
    "CREATE ROLE aq_role LOGIN PASSWORD 'aq-pass'",
    `CREATE ROLE aq_md5 LOGIN PASSWORD 'md5${createHash('md5').update('aq-passaq_md5').digest('hex')}'`,
    "CREATE ROLE aq_expired LOGIN PASSWORD 'aq-pass' VALID UNTIL '2001-01-01 00:00:00+00'",
  ]) {
    await cluster.query(sql);
  }
}

/** One failed login; returns [total µs, final-step µs], or throws if it did not end in 28P01. */
async function attempt(port: number, ca: string, k: Kind): Promise<[number, number]> {
  const t0 = performance.now();
  const w = await Wire.connect(port);
  try {
    await w.startTls(ca, `${k.tenant}.pg.test`);
    w.write(startupMessage({ user: k.user, database: 'postgres' }));
    const scram = new ScramClientExchange({ kind: 'password', password: k.password });
    let finalSent = 0;
    for (;;) {
      const f = await w.frame(10_000);
      if (f === null) throw new Error(`${k.name}: closed without an answer`);
      if (f.type === 'R') {
        const code = f.body.readUInt32BE(0);
        if (code === 10) w.write(serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256', scram.clientFirst()));
        else if (code === 11) {
          const final = await scram.serverFirst(f.body.toString('utf8', 4));
          finalSent = performance.now();
          w.write(serialize.sendSCRAMClientFinalMessage(final));
        } else throw new Error(`${k.name}: unexpected authentication request ${code}`);
        continue;
      }
      if (f.type === 'E') {
        const end = performance.now();
        const e = decodeError(f.body);
        if (e.code !== '28P01' || finalSent === 0) throw new Error(`${k.name}: ended with ${e.code} ${e.message}`);
        return [(end - t0) * 1000, (end - finalSent) * 1000];
      }
    }
  } finally {
    w.end();
  }
}

interface Stats {
  n: number;
  median: number;
  p10: number;
  p90: number;
  mean: number;
  sd: number;
}

function stats(values: readonly number[]): Stats {
  const sorted = Float64Array.from(values).sort();
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const sd = Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / Math.max(1, values.length - 1));
  return { n: values.length, median: median(values), p10: percentileSorted(sorted, 10), p90: percentileSorted(sorted, 90), mean, sd };
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { n: { type: 'string' }, json: { type: 'string' } } });
  const n = Number(values.n ?? 300);
  const cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
  const certs = await testCerts();
  const users = [{ name: 'app', verifier: await readVerifier(cluster, 'app') }];
  await setUpAuthQuery(cluster);
  const child = await spawnProxy(
    {
      tenants: [
        { id: 'acme', cluster, users },
        { id: 'off', cluster, users, enabled: false },
        { id: 'aq', cluster, users: [], extra: { auth_user: 'pgwarden_auth', auth_password_env: AUTH_PASSWORD_ENV } },
      ],
    },
    { [AUTH_PASSWORD_ENV]: AUTH_PASSWORD },
  );
  try {
    const groups = [KINDS, AQ_KINDS].map((kinds) => ({ kinds, total: kinds.map(() => [] as number[]), final: kinds.map(() => [] as number[]) }));
    const all = groups.flatMap((g) => g.kinds);
    // Warm-up (JIT, TLS session caches, the auth_query cache), not counted.
    for (let i = 0; i < 20; i++) for (const k of all) await attempt(child.port, certs.caCertPem, k);
    // Interleaved, so drift (other load, thermal, GC) falls on every kind alike.
    for (let i = 0; i < n; i++) {
      for (const g of groups) {
        for (let j = 0; j < g.kinds.length; j++) {
          const [t, f] = await attempt(child.port, certs.caCertPem, g.kinds[j]!);
          g.total[j]!.push(t);
          g.final[j]!.push(f);
        }
      }
    }
    const rows = groups.flatMap((g) =>
      g.kinds.map((k, j) => ({
        kind: k.name,
        total: stats(g.total[j]!),
        final: stats(g.final[j]!),
        totalP: j === 0 ? null : mannWhitneyP(g.total[0]!, g.total[j]!),
        finalP: j === 0 ? null : mannWhitneyP(g.final[0]!, g.final[j]!),
      })),
    );
    const us = (v: number): string => v.toFixed(0).padStart(7);
    const line = (label: string, s: Stats, base: Stats, p: number | null): string => {
      const d = s.median - base.median;
      return `  ${label.padEnd(28)} median ${us(s.median)}  p10 ${us(s.p10)}  p90 ${us(s.p90)}  mean ${us(s.mean)}  sd ${us(s.sd)}  Δmedian ${d >= 0 ? '+' : ''}${d.toFixed(0)} µs (${((100 * d) / base.median).toFixed(1)} %)${p === null ? '' : `  Mann-Whitney p = ${p.toFixed(3)}`}\n`;
    };
    /** Each kind against the first of its group (the configured tenant's, or the auth_query tenant's, wrong password). */
    const baseOf = (i: number): number => (i < KINDS.length ? 0 : KINDS.length);
    process.stdout.write(`enum-timing: ${n} failed logins of each kind, interleaved, times in µs, every one ended in 28P01\n`);
    process.stdout.write('whole login (connect, TLS, startup, SCRAM, 28P01):\n');
    rows.forEach((r, i) => process.stdout.write(line(r.kind, r.total, rows[baseOf(i)]!.total, r.totalP)));
    process.stdout.write('last step (client-final-message → 28P01, where the proof is checked):\n');
    rows.forEach((r, i) => process.stdout.write(line(r.kind, r.final, rows[baseOf(i)]!.final, r.finalP)));
    if (values.json !== undefined) await writeFile(values.json, JSON.stringify({ n, rows }, null, 2));
    return 0;
  } finally {
    await child.stop();
    await cluster.stop();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`enum-timing failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
