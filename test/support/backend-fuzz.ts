/**
 * The tenant's server as a fuzzer (issue 6, SECURITY.md rule 6): a fake PostgreSQL whose login
 * and query replies are valid ones mutated the ways a hostile server would (SCRAM nonces, salts
 * and iteration counts, ErrorResponses without fields, frame lengths over the cap, truncation,
 * junk, a silent server). Each connection finds its case in the database name pgwarden logs in
 * with (`fz_<seed>_<phase>_<index>`), so cases run in parallel and replay from (seed, phase, index).
 */
import crypto from 'node:crypto';
import net from 'node:net';
import { caseRng, mutateFrames, type FuzzPhase, type Rng } from './fuzz.js';
import { frame, int32, listenFake, type FakeServer } from './hostile-backend.js';

export { caseDatabase } from './fuzz.js';

export type FakeBackend = FakeServer;

function parseCaseDatabase(db: string): { seed: number; phase: FuzzPhase; index: number } | null {
  const m = /^fz_(\d+)_(backend_login|backend_query)_(\d+)$/.exec(db);
  return m === null ? null : { seed: Number(m[1]), phase: m[2] as FuzzPhase, index: Number(m[3]) };
}

const auth = (code: number, rest: Buffer | string = Buffer.alloc(0)): Buffer =>
  frame('R', Buffer.concat([int32(code), typeof rest === 'string' ? Buffer.from(rest, 'latin1') : rest]));

function error(code: string, message: string): Buffer {
  return frame('E', `SFATAL\0VFATAL\0C${code}\0M${message}\0\0`);
}

/** What a server says after AuthenticationOk, up to ReadyForQuery. */
function loginTail(rng: Rng): Buffer[] {
  const out = [auth(0), frame('S', 'server_version\x0015.0\0'), frame('S', 'client_encoding\0UTF8\0')];
  if (rng.next() < 0.3) out.push(frame('S', `session_authorization\0${rng.pick(['app', 'postgres', ''])}\0`));
  if (rng.next() < 0.2) out.push(frame('N', 'SNOTICE\0C00000\0Mwelcome\0\0'));
  if (rng.next() < 0.1) out.push(frame('v', Buffer.concat([int32(0), int32(1), Buffer.from('_pq_.x\0')])));
  out.push(frame('K', Buffer.concat([int32(1000 + rng.int(30000)), int32(rng.int(2 ** 31))])), frame('Z', 'I'));
  return out;
}

/** Replies to one simple Query, valid, of a kind drawn at random. */
function queryReply(rng: Rng): Buffer[] {
  const rowDesc = (): Buffer => {
    const name = Buffer.from('v\0');
    const meta = Buffer.alloc(18);
    meta.writeInt32BE(0, 0);
    meta.writeInt16BE(0, 4);
    meta.writeInt32BE(25, 6); // text
    meta.writeInt16BE(-1, 10);
    meta.writeInt32BE(-1, 12);
    meta.writeInt16BE(0, 16);
    return frame('T', Buffer.concat([Buffer.from([0, 1]), name, meta]));
  };
  const dataRow = (v: Buffer | null): Buffer => frame('D', Buffer.concat([Buffer.from([0, 1]), int32(v === null ? -1 : v.length), v ?? Buffer.alloc(0)]));
  switch (rng.int(8)) {
    case 0: {
      const rows = Array.from({ length: 1 + rng.int(5) }, () => dataRow(rng.next() < 0.1 ? null : rng.bytes(rng.int(40))));
      return [rowDesc(), ...rows, frame('C', `SELECT ${rows.length}\0`), frame('Z', 'I')];
    }
    case 1:
      return [frame('E', `SERROR\0VERROR\0C${rng.pick(['42P01', '22012', '40001', 'XX000'])}\0Mfuzz error\0\0`), frame('Z', rng.pick(['I', 'T', 'E']))];
    case 2:
      return [frame('N', 'SWARNING\0C01000\0Mnotice\0\0'), rowDesc(), frame('C', 'SELECT 0\0'), frame('Z', 'I')];
    case 3:
      return [frame('S', `session_authorization\0${rng.pick(['postgres', 'other'])}\0`), frame('S', 'is_superuser\0on\0'), frame('C', 'SET\0'), frame('Z', 'I')];
    case 4:
      return [frame('A', Buffer.concat([int32(42), Buffer.from('chan\0payload\0')])), frame('C', 'NOTIFY\0'), frame('Z', 'I')];
    case 5:
      return [frame('H', Buffer.from([0, 0, 1, 0, 0])), frame('d', '1\n'), frame('c', Buffer.alloc(0)), frame('C', 'COPY 1\0'), frame('Z', 'I')];
    case 6:
      return [frame('I', Buffer.alloc(0)), frame('Z', 'I')];
    default:
      // A FATAL in the middle of a session (the server is shutting down).
      return [frame('E', 'SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0')];
  }
}

/** Mutations of SCRAM text a hostile server would try: long nonces, absurd iterations, bad salts. */
function mutateScramText(rng: Rng, text: string): string {
  switch (rng.int(9)) {
    case 0:
      return text.replace(/r=([^,]*)/, (_m, n: string) => `r=${n}${'A'.repeat(rng.pick([100, 2000, 70_000]))}`);
    case 1:
      return text.replace(/i=\d+/, `i=${rng.pick(['0', '-1', '2147483647', '99999999999', 'x', ''])}`);
    case 2:
      return text.replace(/s=[^,]*/, `s=${rng.pick(['', '!!!', 'A'.repeat(5000), '=='])}`);
    case 3:
      return text.replace(/r=[^,]*/, 'r=not-the-client-nonce');
    case 4:
      return `m=ext,${text}`;
    case 5:
      return text.replace(/v=[^,]*/, rng.pick(['v=', 'v=AAAA', 'e=invalid-proof', 'e=other-error']));
    case 6:
      return text.split(',').slice(0, rng.int(3)).join(',');
    case 7:
      return `${text},${'x'.repeat(rng.int(3000))}`;
    default:
      return text.replace(/r=([^,]*)/, (_m, n: string) => `r=${n}\u0001\u00ff`);
  }
}

interface Verifier {
  iterations: number;
  salt: string;
  serverKey: Buffer;
}

function parseVerifier(v: string): Verifier {
  const m = /^SCRAM-SHA-256\$(\d+):([^$]+)\$[^:]+:(.+)$/.exec(v);
  if (m === null) throw new Error('not a SCRAM-SHA-256 verifier');
  return { iterations: Number(m[1]), salt: m[2]!, serverKey: Buffer.from(m[3]!, 'base64') };
}

/** Reads the fake's input: the startup packet first, then typed frames. */
class Frames {
  private buf = Buffer.alloc(0);
  private started = false;
  push(d: Buffer): void {
    this.buf = Buffer.concat([this.buf, d]);
  }
  next(): { type: string; body: Buffer } | null {
    const head = this.started ? 5 : 4;
    if (this.buf.length < head) return null;
    const len = this.buf.readUInt32BE(this.started ? 1 : 0);
    const total = (this.started ? 1 : 0) + len;
    if (len < 4 || len > 1 << 20) throw new Error('bad frame from pgwarden');
    if (this.buf.length < total) return null;
    const type = this.started ? String.fromCharCode(this.buf[0]!) : '';
    const body = this.buf.subarray(head, total);
    this.buf = this.buf.subarray(total);
    if (!this.started) {
      const code = body.readUInt32BE(0);
      if (code === 80877103 || code === 80877104) return { type: 'ssl', body };
      this.started = true;
      return { type: 'startup', body: body.subarray(4) };
    }
    return { type, body };
  }
}

function startupParams(body: Buffer): Map<string, string> {
  const parts = body.toString('utf8').split('\0');
  const out = new Map<string, string>();
  for (let i = 0; i + 1 < parts.length; i += 2) if (parts[i] !== '') out.set(parts[i]!, parts[i + 1]!);
  return out;
}

/**
 * Starts the fake server. `verifier` is the SCRAM verifier of the user pgwarden logs in as
 * (pass-through), so the fake can answer a SCRAM exchange correctly before mutating it.
 */
export function startFakeBackend(verifier: string): Promise<FakeBackend> {
  const v = parseVerifier(verifier);
  return listenFake((s) => serve(s, v));
}

type Step = 'await_startup' | 'await_sasl_initial' | 'await_sasl_final' | 'await_password' | 'ready' | 'answered';

function serve(s: net.Socket, v: Verifier): void {
  const frames = new Frames();
  let rng: Rng | null = null;
  let phase: FuzzPhase = 'backend_login';
  let step: Step = 'await_startup';
  /** Which login reply (0, 1, 2…) is mutated; -1: none. */
  let mutateAt = -1;
  let replyNo = 0;
  let clientFirstBare = '';
  let serverFirst = '';

  /** Sends a reply, mutated if it is the chosen one; sometimes closes or goes silent after it. */
  const send = (parts: Buffer[], mutate: boolean): void => {
    const r = rng!;
    const out = mutate ? mutateFrames(r, parts) : Buffer.concat(parts);
    if (out.length > 0) s.write(out);
    if (mutate && r.next() < 0.3) s.end();
  };

  const loginReply = (parts: Buffer[], scram: ((t: string) => string) | null): void => {
    const r = rng!;
    const mine = replyNo++ === mutateAt;
    if (mine && scram !== null && r.next() < 0.6) {
      // Structure-aware: change the SCRAM text itself, keep the framing valid (usually).
      const head = parts[0]!;
      const code = head.readInt32BE(5);
      const text = head.toString('latin1', 9);
      parts = [auth(code, mutateScramText(r, scram(text))), ...parts.slice(1)];
      send(parts, r.next() < 0.2);
      return;
    }
    send(parts, mine);
  };

  const onFrame = (f: { type: string; body: Buffer }): void => {
    if (f.type === 'ssl') {
      s.write('N');
      return;
    }
    if (step === 'await_startup') {
      const db = startupParams(f.body).get('database') ?? '';
      const c = parseCaseDatabase(db);
      if (c === null) {
        s.write(error('3D000', `database "${db}" does not exist`));
        s.end();
        return;
      }
      rng = caseRng(c.seed ^ 0x2545f491, c.phase, c.index);
      phase = c.phase;
      if (phase === 'backend_query') {
        s.write(Buffer.concat(loginTail(rng)));
        step = 'ready';
        return;
      }
      const method = rng.pick(['scram', 'scram', 'scram', 'trust', 'cleartext', 'md5', 'error', 'silent'] as const);
      if (method === 'silent') return; // accepts and never answers: pgwarden's deadline must end it
      mutateAt = rng.next() < 0.05 ? -1 : rng.int(method === 'scram' ? 3 : 2);
      if (method === 'error') {
        send([error(rng.pick(['28P01', '53300', '3D000', '57P03', '0A000', 'zz', '']), 'fuzz login error')], mutateAt === 0);
        s.end();
        return;
      }
      if (method === 'trust') {
        loginReply(loginTail(rng), null);
        step = 'ready';
        return;
      }
      if (method === 'cleartext' || method === 'md5') {
        loginReply([method === 'md5' ? auth(5, rng.bytes(4)) : auth(3)], null);
        step = 'await_password';
        return;
      }
      loginReply([auth(10, rng.next() < 0.3 ? 'SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0' : 'SCRAM-SHA-256\0\0')], (t) => t);
      step = 'await_sasl_initial';
      return;
    }
    if (rng === null) return;
    switch (step) {
      case 'await_password':
        loginReply(loginTail(rng), null);
        step = 'ready';
        return;
      case 'await_sasl_initial': {
        if (f.type !== 'p') return void s.destroy();
        const mechEnd = f.body.indexOf(0);
        const data = f.body.toString('utf8', mechEnd + 5);
        const gs2End = data.indexOf(',', data.indexOf(',') + 1);
        clientFirstBare = data.slice(gs2End + 1);
        const cnonce = /r=([^,]*)/.exec(clientFirstBare)?.[1] ?? '';
        serverFirst = `r=${cnonce}${rng.bytes(18).toString('base64')},s=${v.salt},i=${v.iterations}`;
        loginReply([auth(11, serverFirst)], (t) => t);
        step = 'await_sasl_final';
        return;
      }
      case 'await_sasl_final': {
        if (f.type !== 'p') return void s.destroy();
        const final = f.body.toString('utf8');
        const withoutProof = final.slice(0, final.lastIndexOf(',p='));
        const sig = crypto.createHmac('sha256', v.serverKey).update(`${clientFirstBare},${serverFirst},${withoutProof}`).digest('base64');
        loginReply([auth(12, `v=${sig}`), ...loginTail(rng)], (t) => t);
        step = 'ready';
        return;
      }
      case 'ready':
        if (f.type === 'Q' || f.type === 'S') {
          // backend_login cases end their test at login; backend_query cases answer mutated.
          if (phase === 'backend_login') {
            s.write(Buffer.concat([frame('C', 'SELECT 0\0'), frame('Z', 'I')]));
            return;
          }
          send(queryReply(rng), rng.next() < 0.95);
          step = 'answered';
          if (rng.next() < 0.5) s.end();
          return;
        }
        if (f.type === 'X') s.end();
        return;
      case 'answered':
        // Anything after the case (DISCARD ALL, Terminate): the case is over, go away.
        s.destroy();
    }
  };

  s.on('data', (d: Buffer) => {
    try {
      frames.push(d);
      for (let f = frames.next(); f !== null; f = frames.next()) {
        onFrame(f);
        if (s.destroyed) return;
      }
    } catch {
      s.destroy();
    }
  });
}
