/**
 * `npm run enum-timing -- [--n 300] [--json file]`: can a client tell an unknown user or tenant
 * from a wrong password by timing (SECURITY.md rule 3)? Starts PostgreSQL and a child pgwarden,
 * then makes N failed logins of each kind, interleaved, each a full TLS + SCRAM exchange that ends
 * in the same 28P01, and times (1) the whole login and (2) the last step, client-final-message to
 * ErrorResponse, where the proof is checked. Prints median, p10, p90, mean and standard deviation
 * per kind, the difference of medians from "wrong password" and a Mann-Whitney U test's p-value.
 */
import { writeFile } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { serialize } from 'pg-protocol';
import { ScramClientExchange } from '../src/auth/scram.js';
import { startCluster, readVerifier } from '../test/support/cluster.js';
import { spawnProxy, testCerts } from '../test/support/proxy.js';
import { decodeError, startupMessage, Wire } from '../test/support/wire.js';
import { mannWhitneyP, median, percentileSorted } from '../bench/lib/stats.js';

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
  const child = await spawnProxy({
    tenants: [
      { id: 'acme', cluster, users },
      { id: 'off', cluster, users, enabled: false },
    ],
  });
  try {
    const total = KINDS.map(() => [] as number[]);
    const final = KINDS.map(() => [] as number[]);
    // Warm-up (JIT, TLS session caches), not counted.
    for (let i = 0; i < 20; i++) for (const k of KINDS) await attempt(child.port, certs.caCertPem, k);
    // Interleaved, so drift (other load, thermal, GC) falls on every kind alike.
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < KINDS.length; j++) {
        const [t, f] = await attempt(child.port, certs.caCertPem, KINDS[j]!);
        total[j]!.push(t);
        final[j]!.push(f);
      }
    }
    const rows = KINDS.map((k, j) => ({
      kind: k.name,
      total: stats(total[j]!),
      final: stats(final[j]!),
      totalP: j === 0 ? null : mannWhitneyP(total[0]!, total[j]!),
      finalP: j === 0 ? null : mannWhitneyP(final[0]!, final[j]!),
    }));
    const us = (v: number): string => v.toFixed(0).padStart(7);
    const line = (label: string, s: Stats, base: Stats, p: number | null): string => {
      const d = s.median - base.median;
      return `  ${label.padEnd(28)} median ${us(s.median)}  p10 ${us(s.p10)}  p90 ${us(s.p90)}  mean ${us(s.mean)}  sd ${us(s.sd)}  Δmedian ${d >= 0 ? '+' : ''}${d.toFixed(0)} µs (${((100 * d) / base.median).toFixed(1)} %)${p === null ? '' : `  Mann-Whitney p = ${p.toFixed(3)}`}\n`;
    };
    process.stdout.write(`enum-timing: ${n} failed logins of each kind, interleaved, times in µs, every one ended in 28P01\n`);
    process.stdout.write('whole login (connect, TLS, startup, SCRAM, 28P01):\n');
    for (const r of rows) process.stdout.write(line(r.kind, r.total, rows[0]!.total, r.totalP));
    process.stdout.write('last step (client-final-message → 28P01, where the proof is checked):\n');
    for (const r of rows) process.stdout.write(line(r.kind, r.final, rows[0]!.final, r.finalP));
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
