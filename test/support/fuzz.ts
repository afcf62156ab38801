/**
 * A structure-aware protocol fuzzer (issue 6): valid frontend messages for each phase of a
 * session, mutated the ways hostile clients do (lengths, type bytes, truncation, NULs, huge
 * counts, duplicates, junk), sent in random splits, and the proxy's answer classified. Everything
 * is drawn from a seeded generator, so a case is replayed from (seed, phase, index) alone.
 * Used by test/integration/fuzz.test.ts (a short run) and scripts/fuzz.ts (a long one).
 */
import { serialize } from 'pg-protocol';
import { rawLogin } from './login.js';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { exportJWK, generateKeyPair } from 'jose';
import { readVerifier, type Cluster } from './cluster.js';
import type { ProxySpec } from './proxy.js';
import { startupMessage, typed, Wire } from './wire.js';

/**
 * What the fuzzer aims at: tenant acme (the cases) and tenant other (a bystander) on `cluster`,
 * a table for COPY, [staff] configured (the password phase), and the given pre-auth deadline.
 * Returns the spec and the temp dir it wrote the JWKS and audit file to (the caller removes it).
 */
export async function fuzzProxySpec(cluster: Cluster, authTimeoutMs: number): Promise<{ spec: ProxySpec; dir: string }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-fuzz-'));
  await cluster.query('CREATE TABLE IF NOT EXISTS fuzz_copy (x text)');
  await cluster.query('GRANT INSERT ON fuzz_copy TO app');
  const { publicKey } = await generateKeyPair('ES256');
  await writeFile(path.join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'k' }] }));
  const app = { name: 'app', verifier: await readVerifier(cluster, 'app') };
  return {
    dir,
    spec: {
      auditFile: path.join(dir, 'audit.jsonl'),
      server: { auth_timeout: `${authTimeoutMs}ms` },
      staff: { jwks: path.join(dir, 'jwks.json'), issuer: 'i', audience: 'a' },
      tenants: [
        { id: 'acme', cluster, users: [app] },
        { id: 'other', cluster, users: [app] },
      ],
    },
  };
}

export type FuzzPhase = 'startup' | 'sasl' | 'password' | 'query' | 'copy';
export const FUZZ_PHASES: readonly FuzzPhase[] = ['startup', 'sasl', 'password', 'query', 'copy'];

/** mulberry32: small, fast, deterministic. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

/** One case: a seed for its own generator, so it replays without the ones before it. */
export function caseRng(seed: number, phase: FuzzPhase, index: number): Rng {
  return new Rng((seed * 2654435761) ^ (FUZZ_PHASES.indexOf(phase) * 40503) ^ (index * 2246822519));
}

const cstr = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf8');

/** Valid messages for a phase (what a correct client would send next). */
function validFrames(rng: Rng, phase: FuzzPhase): Buffer[] {
  switch (phase) {
    case 'startup': {
      const params: Record<string, string> = { user: rng.pick(['app', 'staff', 'nobody', 'a'.repeat(100)]), database: 'postgres' };
      if (rng.next() < 0.3) params['options'] = rng.pick(['-c search_path=x', '-c pgwarden.tenant=acme', '--work_mem=1MB', '-c replication=on']);
      if (rng.next() < 0.3) params['application_name'] = 'fuzz\u00e9';
      if (rng.next() < 0.1) params['replication'] = 'database';
      if (rng.next() < 0.1) params['_pq_.fuzz'] = '1';
      return [startupMessage(params, rng.next() < 0.05 ? 196609 : 196608)];
    }
    case 'sasl': {
      const mech = rng.pick(['SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS', 'PLAIN']);
      const gs2 = rng.pick(['n,,', 'y,,', 'p=tls-server-end-point,,', 'n,a=x,']);
      const first = Buffer.from(`${gs2}n=,r=${rng.bytes(12).toString('base64')}`);
      const body = Buffer.concat([cstr(mech), Buffer.alloc(4), first]);
      body.writeInt32BE(first.length, mech.length + 1);
      return [typed('p', body)];
    }
    case 'password':
      return [typed('p', cstr(rng.pick(['eyJhbGciOiJFUzI1NiJ9.eyJ4IjoxfQ.c2ln', 'not-a-token', '', 'x'.repeat(2000)])))];
    case 'query':
      switch (rng.int(5)) {
        case 0:
          return [serialize.query(rng.pick(['SELECT 1', 'SELECT $1', 'BEGIN; SELECT 1; COMMIT', '', 'SET search_path = x']))];
        case 1:
          return [
            serialize.parse({ name: rng.pick(['', 's1']), text: 'SELECT $1::int', types: [23] }),
            serialize.bind({ statement: 's1', values: ['1'] }),
            serialize.describe({ type: 'P', name: '' }),
            serialize.execute({ rows: rng.int(3) }),
            serialize.sync(),
          ];
        case 2: {
          const body = Buffer.alloc(4 + 2 + 2 + 2 + 4 + 1 + 2);
          body.writeUInt32BE(rng.pick([1299, 0, 4294967295]), 0); // FunctionCall oid
          body.writeInt16BE(1, 4);
          body.writeInt16BE(0, 6);
          body.writeInt16BE(1, 8);
          body.writeInt32BE(1, 10);
          body[14] = 0x31;
          body.writeInt16BE(0, 15);
          return [typed('F', body), serialize.sync()];
        }
        case 3:
          return [serialize.close({ type: 'S', name: 's1' }), serialize.flush(), serialize.sync()];
        default:
          return [serialize.query('SELECT 1'), serialize.end()];
      }
    case 'copy':
      return [serialize.copyData(Buffer.from('1\n2\n')), rng.next() < 0.5 ? serialize.copyDone() : serialize.copyFail('fuzz')];
  }
}

/** The mutations: each takes the frames and changes one thing about them. */
const MUTATORS: ((rng: Rng, buf: Buffer, starts: number[]) => Buffer)[] = [
  // A length field off: 0, 3, one byte off either way, far too big, 2^31-1, 2^32-1.
  (rng, buf, starts) => {
    const at = rng.pick(starts);
    if (at + 5 > buf.length) return buf; // an earlier mutation cut this frame off
    const lenAt = at === 0 && buf.readUInt32BE(0) === buf.length ? 0 : at + 1;
    if (lenAt + 4 > buf.length) return buf;
    const cur = buf.readUInt32BE(lenAt);
    const b = Buffer.from(buf);
    b.writeUInt32BE(rng.pick([0, 3, 4, cur - 1, cur + 1, cur + 1000, 0x7fffffff, 0xffffffff, rng.int(2 ** 32)]) >>> 0, lenAt);
    return b;
  },
  // Another type byte.
  (rng, buf, starts) => {
    const b = Buffer.from(buf);
    b[rng.pick(starts)] = rng.pick([0, 0x7f, 0xff, 0x70, 0x51, 0x58, rng.int(256)]);
    return b;
  },
  // Cut short.
  (rng, buf) => buf.subarray(0, rng.int(buf.length)),
  // A NUL (or a byte) inside, lengths unchanged.
  (rng, buf) => {
    if (buf.length < 6) return buf;
    const b = Buffer.from(buf);
    b[5 + rng.int(b.length - 5)] = rng.next() < 0.7 ? 0 : rng.int(256);
    return b;
  },
  // A frame twice.
  (rng, buf, starts) => {
    const i = rng.int(starts.length);
    const end = starts[i + 1] ?? buf.length;
    return Buffer.concat([buf.subarray(0, end), buf.subarray(starts[i], end), buf.subarray(end)]);
  },
  // Junk after.
  (rng, buf) => Buffer.concat([buf, rng.bytes(1 + rng.int(64))]),
  // Huge counts: every Int16 at a random even offset set to 0x7fff or -1.
  (rng, buf) => {
    if (buf.length < 9) return buf;
    const b = Buffer.from(buf);
    const at = 5 + rng.int(b.length - 7);
    b.writeInt16BE(rng.pick([0x7fff, -1, -32768]), at);
    return b;
  },
  // A body of random bytes, lengths kept.
  (rng, buf) => {
    if (buf.length <= 5) return buf;
    return Buffer.concat([buf.subarray(0, 5), rng.bytes(buf.length - 5)]);
  },
];

/** The bytes one case sends: valid frames with one to three mutations (or none, now and then). */
export function generateCase(rng: Rng, phase: FuzzPhase): Buffer {
  const frames = validFrames(rng, phase);
  const starts: number[] = [];
  let pos = 0;
  for (const f of frames) {
    starts.push(pos);
    pos += f.length;
  }
  let buf: Buffer = Buffer.concat(frames);
  if (rng.next() < 0.05) return buf;
  for (let n = 1 + rng.int(3); n > 0; n--) buf = rng.pick(MUTATORS)(rng, buf, starts);
  return buf;
}

/** SQLSTATEs pgwarden itself may answer with (SECURITY.md §3). XX000 is a bug, never expected. */
export const PROXY_SQLSTATES: ReadonlySet<string> = new Set(['08P01', '08006', '0A000', '22023', '28000', '28P01', '3D000', '53300', '57P01', '57P03', '57P05', '25P03', '25P04', '57014']);

export interface FuzzTarget {
  port: number;
  ca: string;
  tenant: string;
  user: string;
  password: string;
  /** auth_timeout of the proxy: a pre-auth case must be closed within it (plus slack). */
  authTimeoutMs: number;
}

export type Outcome = { kind: 'error'; code: string } | { kind: 'close' } | { kind: 'open' };

export interface CaseResult {
  phase: FuzzPhase;
  index: number;
  outcome: Outcome;
  /** Non-empty when an invariant failed. */
  violation: string | null;
}

/** Writes `bytes` in one to four pieces with short pauses, as a client on a slow link would. */
async function dribble(w: Wire, rng: Rng, bytes: Buffer): Promise<void> {
  let pos = 0;
  for (let parts = 1 + rng.int(4); parts > 0 && pos < bytes.length; parts--) {
    const end = parts === 1 ? bytes.length : pos + rng.int(bytes.length - pos + 1);
    if (end > pos) w.write(bytes.subarray(pos, end));
    pos = end;
    if (rng.next() < 0.3) await new Promise((r) => setTimeout(r, rng.int(20)));
  }
}

/** Waits for an 'R' with this auth code; false if anything else comes first. */
async function awaitAuth(w: Wire, code: number): Promise<boolean> {
  const f = await w.frame(5000);
  return f !== null && f.type === 'R' && f.body.readUInt32BE(0) === code;
}

/** Runs one case against the proxy and checks the invariants that hold whatever the input. */
export async function runCase(t: FuzzTarget, seed: number, phase: FuzzPhase, index: number): Promise<CaseResult> {
  const rng = caseRng(seed, phase, index);
  const bytes = generateCase(rng, phase);
  const preauth = phase === 'startup' || phase === 'sasl' || phase === 'password';
  let w: Wire;
  try {
    if (preauth) {
      w = await Wire.connect(t.port);
      await w.startTls(t.ca, `${t.tenant}.pg.test`);
      if (phase !== 'startup') {
        w.write(startupMessage({ user: phase === 'password' ? 'staff' : t.user, database: 'postgres' }));
        if (!(await awaitAuth(w, phase === 'password' ? 3 : 10))) return { phase, index, outcome: { kind: 'close' }, violation: 'no authentication request for a valid startup' };
      }
    } else {
      w = await rawLogin(t.port, t.ca, { tenant: t.tenant, user: t.user, password: t.password });
      if (phase === 'copy') {
        w.write(serialize.query('COPY fuzz_copy FROM STDIN'));
        const f = await w.frame(5000);
        if (f?.type !== 'G') return { phase, index, outcome: { kind: 'close' }, violation: `COPY not started (${f?.type ?? 'closed'})` };
      }
    }
  } catch (err) {
    return { phase, index, outcome: { kind: 'close' }, violation: `set-up failed: ${(err as Error).message}` };
  }
  await dribble(w, rng, bytes);
  // Watch the answer: frames until close, or until the deadline.
  const deadline = Date.now() + (preauth ? t.authTimeoutMs + 2000 : 1500);
  let outcome: Outcome = { kind: 'open' };
  let violation: string | null = null;
  while (Date.now() < deadline) {
    let f: { type: string; body: Buffer } | null;
    try {
      f = await w.frame(Math.max(1, deadline - Date.now()));
    } catch {
      break; // timeout: still open
    }
    if (f === null) {
      if (outcome.kind === 'open') outcome = { kind: 'close' };
      break;
    }
    if (f.type === 'E') {
      const { code, message } = decodeError(f.body);
      if (outcome.kind !== 'error') outcome = { kind: 'error', code };
      // pgwarden's own XX000 says exactly "internal error" (S11); the server's XX000 (e.g. "cache
      // lookup failed for type", for a Parse naming an unknown type oid) is passed through.
      if (code === 'XX000' && message === 'internal error') violation = 'internal error (XX000) from pgwarden: the error boundary caught a bug';
      else if (preauth && !PROXY_SQLSTATES.has(code)) violation = `unexpected SQLSTATE ${code} before authentication`;
      else if (!/^[0-9A-Z]{5}$/.test(code)) violation = `malformed SQLSTATE "${code}"`;
    }
  }
  if (preauth && !w.closed && violation === null) violation = `still open ${t.authTimeoutMs + 2000} ms after the input (past the pre-auth deadline)`;
  w.end();
  return { phase, index, outcome, violation };
}

function decodeError(body: Buffer): { code: string; message: string } {
  const out = { code: '', message: '' };
  let pos = 0;
  while (pos < body.length && body[pos] !== 0) {
    const end = body.indexOf(0, pos + 1);
    if (end < 0) break;
    if (body[pos] === 0x43 /* C */) out.code = body.toString('latin1', pos + 1, end);
    else if (body[pos] === 0x4d /* M */) out.message = body.toString('utf8', pos + 1, end);
    pos = end + 1;
  }
  return out;
}

export interface FuzzSummary {
  cases: number;
  byOutcome: Record<string, number>;
  violations: CaseResult[];
}

/** Runs `count` cases per phase, `parallel` at a time, in index order per phase. */
export async function runCases(t: FuzzTarget, seed: number, phases: readonly FuzzPhase[], from: number, count: number, parallel: number, into: FuzzSummary): Promise<void> {
  const queue: [FuzzPhase, number][] = [];
  for (let i = from; i < from + count; i++) for (const p of phases) queue.push([p, i]);
  const worker = async (): Promise<void> => {
    for (let next = queue.shift(); next !== undefined; next = queue.shift()) {
      const r = await runCase(t, seed, next[0], next[1]);
      into.cases++;
      const key = `${r.phase}:${r.outcome.kind === 'error' ? r.outcome.code : r.outcome.kind}`;
      into.byOutcome[key] = (into.byOutcome[key] ?? 0) + 1;
      if (r.violation !== null) into.violations.push(r);
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
}
