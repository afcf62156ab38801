/**
 * A structure-aware protocol fuzzer (issue 6): valid frontend messages for each phase of a
 * session, mutated the ways hostile clients do (lengths, type bytes, truncation, NULs, huge
 * counts, duplicates, junk), sent in random splits, and the proxy's answer classified. Everything
 * is drawn from a seeded generator, so a case is replayed from (seed, phase, index) alone.
 * Used by test/integration/fuzz.test.ts (a short run) and scripts/fuzz.ts (a long one), against
 * the proxy that fuzz-target.ts sets up.
 */
import { serialize } from 'pg-protocol';
import { rawLogin } from './login.js';
import { cancelRequest, gssencRequest, sslRequest, startupMessage, typed, Wire } from './wire.js';
import { ScramClientExchange } from '../../src/auth/scram.js';

export type FuzzPhase = 'startup' | 'sasl' | 'password' | 'query' | 'copy' | 'negotiation' | 'sasl_final' | 'backend_login' | 'backend_query';
/**
 * Every phase. The order is part of a case's identity (caseRng), so new phases go at the end and
 * recorded cases (seed, phase, index) still replay. `backend_*` phases fuzz the server side: the
 * client is well-behaved and the fake tenant server (backend-fuzz.ts) sends the mutated bytes.
 */
export const FUZZ_PHASES: readonly FuzzPhase[] = ['startup', 'sasl', 'password', 'query', 'copy', 'negotiation', 'sasl_final', 'backend_login', 'backend_query'];
const PREAUTH: ReadonlySet<FuzzPhase> = new Set(['startup', 'sasl', 'password', 'negotiation', 'sasl_final', 'backend_login']);

/** The database name that carries a backend_* case to the fake server (backend-fuzz.ts). */
export function caseDatabase(seed: number, phase: FuzzPhase, index: number): string {
  return `fz_${seed}_${phase}_${index}`;
}

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
    case 'negotiation': {
      // Plaintext, before any TLS: the requests a client may open with, alone or with bytes after.
      const startup = startupMessage({ user: 'app', database: 'postgres' });
      return rng.pick([
        [sslRequest()],
        [sslRequest(), startup],
        [sslRequest(), sslRequest()],
        [gssencRequest()],
        [gssencRequest(), sslRequest()],
        [gssencRequest(), startup],
        [cancelRequest(rng.int(2 ** 31), rng.int(2 ** 31))],
        [cancelRequest(rng.int(2 ** 31), rng.int(2 ** 31)), startup],
        [startup],
      ]);
    }
    case 'sasl_final':
    case 'backend_login':
    case 'backend_query':
      return []; // built during the case (sasl_final needs the server's nonce); backend_* mutate the server
  }
}

/** Mutations of a SCRAM client-final-message: the attributes PostgreSQL's parser checks one by one. */
function mutateClientFinal(rng: Rng, text: string): string {
  switch (rng.int(10)) {
    case 0:
      return text.replace(/^c=[^,]*/, `c=${rng.pick(['', 'eSws', 'cD10bHMtc2VydmVyLWVuZC1wb2ludCws', '!!', 'biws'.repeat(300)])}`);
    case 1:
      return text.replace(/r=[^,]*/, (m) => rng.pick([`${m}x`, 'r=', `r=${'A'.repeat(3000)}`, `${m}\u0001`]));
    case 2:
      return text.replace(/p=[^,]*/, `p=${rng.pick(['', 'AAAA', '!!!!', Buffer.alloc(33).toString('base64'), Buffer.alloc(31).toString('base64')])}`);
    case 3:
      return text.replace(/,p=/, ',x=1,p=');
    case 4:
      return `${text},junk`;
    case 5:
      return text.split(',').filter((_, i) => i !== rng.int(3)).join(',');
    case 6:
      return text.replace(/^c=/, 'c=c=');
    case 7:
      return text.replace(/p=([^,]*)/, (_m, p: string) => `p=${Buffer.from(p, 'base64').reverse().toString('base64')}`);
    case 8:
      return text.replace(/,/g, rng.pick([',,', ';', '\0']));
    default:
      return text.slice(0, rng.int(text.length));
  }
}

/** The mutations: each takes the frames and changes one thing about them. */
const MUTATORS: ((rng: Rng, buf: Buffer, starts: number[], untyped: boolean) => Buffer)[] = [
  // A length field off: 0, 3, one byte off either way, far too big, 2^31-1, 2^32-1.
  (rng, buf, starts, untyped) => {
    const at = rng.pick(starts);
    if (at + 5 > buf.length) return buf; // an earlier mutation cut this frame off
    const lenAt = untyped || (at === 0 && buf.readUInt32BE(0) === buf.length) ? at : at + 1;
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
  return mutateFrames(rng, validFrames(rng, phase));
}

/**
 * Valid frames with one to three mutations (5 % of the time none). Also used by the fake server.
 * `untyped`: the frames are startup-style (length first, no type byte), as in negotiation.
 */
export function mutateFrames(rng: Rng, frames: Buffer[], untyped = false): Buffer {
  const starts: number[] = [];
  let pos = 0;
  for (const f of frames) {
    starts.push(pos);
    pos += f.length;
  }
  let buf: Buffer = Buffer.concat(frames);
  if (rng.next() < 0.05) return buf;
  for (let n = 1 + rng.int(3); n > 0; n--) buf = rng.pick(MUTATORS)(rng, buf, starts, untyped);
  return buf;
}

/** SQLSTATEs pgwarden itself may answer with (SECURITY.md §3). XX000 is a bug, never expected. */
export const PROXY_SQLSTATES: ReadonlySet<string> = new Set(['08P01', '08006', '0A000', '22023', '28000', '28P01', '3D000', '53300', '57P01', '57P03', '57P05', '25P03', '25P04', '57014']);

export interface FuzzTarget {
  port: number;
  /** Tenants served by the fake server of backend-fuzz.ts (session and transaction mode), for the backend_* phases. */
  backend?: { session: string; transaction: string };
  ca: string;
  tenant: string;
  user: string;
  password: string;
  /** auth_timeout of the proxy: a pre-auth case must be closed within it (plus slack). */
  authTimeoutMs: number;
}

export type Outcome = { kind: 'error'; code: string } | { kind: 'close' } | { kind: 'open' } | { kind: 'setup_timeout' };

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
  const preauth = PREAUTH.has(phase);
  const result = (outcome: Outcome, violation: string | null): CaseResult => ({ phase, index, outcome, violation });
  const began = Date.now();
  /**
   * A well-formed set-up (TLS, a valid startup, a correct login) that did not finish. If the
   * pre-auth deadline ended it (08006 "authentication timed out", or a close once auth_timeout
   * had passed), pgwarden did what A11 says: on a starved machine a valid login can outlast a
   * short deadline. That is counted apart, as `setup_timeout`. Anything else is a violation.
   */
  const setupFailed = (why: string): CaseResult =>
    why.includes('"code":"08006","message":"authentication timed out"') || Date.now() - began >= t.authTimeoutMs
      ? result({ kind: 'setup_timeout' }, null)
      : result({ kind: 'close' }, why);
  let w: Wire;
  let bytes: Buffer;
  try {
    switch (phase) {
      case 'negotiation':
        bytes = mutateFrames(rng, validFrames(rng, phase), true);
        w = await Wire.connect(t.port);
        break;
      case 'startup':
      case 'sasl':
      case 'password':
        bytes = generateCase(rng, phase);
        w = await Wire.connect(t.port);
        await w.startTls(t.ca, `${t.tenant}.pg.test`);
        if (phase !== 'startup') {
          w.write(startupMessage({ user: phase === 'password' ? 'staff' : t.user, database: 'postgres' }));
          if (!(await awaitAuth(w, phase === 'password' ? 3 : 10))) return setupFailed('no authentication request for a valid startup');
        }
        break;
      case 'sasl_final': {
        // A real SCRAM exchange up to the client-final-message, which is then mutated.
        w = await Wire.connect(t.port);
        await w.startTls(t.ca, `${t.tenant}.pg.test`);
        w.write(startupMessage({ user: t.user, database: 'postgres' }));
        if (!(await awaitAuth(w, 10))) return setupFailed('no SASL request for a valid startup');
        const scram = new ScramClientExchange({ kind: 'password', password: t.password });
        w.write(serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256', scram.clientFirst()));
        const f = await w.frame(5000);
        if (f?.type !== 'R' || f.body.readUInt32BE(0) !== 11) return setupFailed('no SASL continue for a valid client-first');
        let final = await scram.serverFirst(f.body.toString('utf8', 4));
        if (rng.next() < 0.7) final = mutateClientFinal(rng, final);
        const framed = serialize.sendSCRAMClientFinalMessage(final);
        bytes = rng.next() < 0.4 ? mutateFrames(rng, [framed]) : framed;
        break;
      }
      case 'backend_login':
        // The client is correct; the fake tenant server mutates its side of the backend login.
        bytes = Buffer.alloc(0);
        w = await Wire.connect(t.port);
        await w.startTls(t.ca, `${t.backend!.session}.pg.test`);
        w.write(startupMessage({ user: t.user, database: caseDatabase(seed, phase, index) }));
        break;
      case 'backend_query': {
        const tenant = rng.next() < 0.5 ? t.backend!.session : t.backend!.transaction;
        try {
          w = await rawLogin(t.port, t.ca, { tenant, user: t.user, password: t.password, database: caseDatabase(seed, phase, index) });
        } catch (err) {
          return setupFailed(`login through a well-behaved fake server failed: ${(err as Error).message}`);
        }
        bytes = serialize.query('SELECT fuzz');
        break;
      }
      case 'query':
      case 'copy': {
        bytes = generateCase(rng, phase);
        w = await rawLogin(t.port, t.ca, { tenant: t.tenant, user: t.user, password: t.password });
        if (phase === 'copy') {
          w.write(serialize.query('COPY fuzz_copy FROM STDIN'));
          const f = await w.frame(5000);
          if (f?.type !== 'G') return result({ kind: 'close' }, `COPY not started (${f?.type ?? 'closed'})`);
        }
      }
    }
  } catch (err) {
    return setupFailed(`set-up failed: ${(err as Error).message}`);
  }
  await dribble(w, rng, bytes);
  // Watch the answer: frames until close, or until the deadline.
  const deadline = Date.now() + (preauth ? t.authTimeoutMs + 2000 : 1500);
  let outcome: Outcome = { kind: 'open' };
  let violation: string | null = null;
  let loggedIn = false;
  const scram = phase === 'backend_login' ? new ScramClientExchange({ kind: 'password', password: t.password }) : null;
  let tlsAlert = false;
  if (phase === 'negotiation') {
    // The one-byte answers to SSLRequest and GSSENCRequest are not frames.
    const answer = await w.read(1, deadline - Date.now()).catch(() => Buffer.alloc(0));
    const first = answer.length === 1 ? String.fromCharCode(answer[0]!) : '';
    if (bytes.length >= 8 && bytes.subarray(0, 8).equals(sslRequest()) && first !== 'S' && first !== '') violation = `SSLRequest answered "${first}", not S (never an ErrorResponse: CVE-2024-10977)`;
    if (bytes.length >= 8 && bytes.subarray(0, 8).equals(gssencRequest()) && first !== 'N' && first !== '') violation = `GSSENCRequest answered "${first}", not N`;
    if (first === 'E') w.unread(answer);
    else if (first === 'S' || first === 'N') {
      // After S the server expects a TLS handshake: any TLS record back (an alert) ends the case.
      const next = await w.peek(deadline - Date.now()).catch(() => -1);
      if (next === 0x15 || next === 0x16) {
        await w.waitClosed(Math.max(1, deadline - Date.now()));
        outcome = { kind: 'close' };
        tlsAlert = true;
      }
    }
  }
  while (Date.now() < deadline && !tlsAlert) {
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
    if (f.type === 'R' && scram !== null) {
      // backend_login: the client side of the login goes on as a driver's would.
      const code = f.body.readUInt32BE(0);
      if (code === 10) w.write(serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256', scram.clientFirst()));
      else if (code === 11) w.write(serialize.sendSCRAMClientFinalMessage(await scram.serverFirst(f.body.toString('utf8', 4))));
    }
    if (f.type === 'Z' && preauth) {
      loggedIn = true; // a mutation that still made a valid login (or a valid backend login)
      break;
    }
    if (f.type === 'E') {
      const { code, message } = decodeError(f.body);
      if (outcome.kind !== 'error') outcome = { kind: 'error', code };
      // pgwarden's own XX000 says exactly "internal error" (S11); the server's XX000 (e.g. "cache
      // lookup failed for type", for a Parse naming an unknown type oid) is passed through.
      if (code === 'XX000' && message === 'internal error') violation = 'internal error (XX000) from pgwarden: the error boundary caught a bug';
      // Before authentication only §3's codes; a tenant server's own login error is passed on whole.
      else if (preauth && phase !== 'backend_login' && !PROXY_SQLSTATES.has(code)) violation = `unexpected SQLSTATE ${code} before authentication`;
      // A server's ErrorResponse after login is passed through byte for byte, whatever it holds;
      // everything pgwarden sends or passes before that must carry a proper SQLSTATE.
      else if (phase !== 'backend_query' && !/^[0-9A-Z]{5}$/.test(code)) violation = `malformed SQLSTATE "${code}"`;
    }
  }
  if (preauth && !loggedIn && !w.closed && violation === null) violation = `still open ${t.authTimeoutMs + 2000} ms after the input (past the pre-auth deadline)`;
  w.end();
  return result(loggedIn ? { kind: 'open' } : outcome, violation);
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
  /** Well-formed set-ups ended by the pre-auth deadline (a starved machine), counted apart. */
  setupTimeouts?: number;
  /** Called at once for each violation (the long run prints them as they come). */
  onViolation?: (r: CaseResult) => void;
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
      if (r.violation !== null) {
        into.violations.push(r);
        into.onViolation?.(r);
      }
      if (r.outcome.kind === 'setup_timeout') into.setupTimeouts = (into.setupTimeouts ?? 0) + 1;
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
}
