/**
 * Micro run (STYLE §7): the frames transaction mode builds per statement when it renames a
 * client's prepared statement (Bind, Describe, Parse, Close), before issue 12 (tx-statements.ts'
 * own frame() + cstring(): one temporary buffer per string part) and after (protocol/frontend.ts,
 * sized first and written in place). ns per frame, both in one process, alternating rounds.
 * Run: npm run build && node dist/bench/micro-tx-encoders.js
 */
import { serialize } from 'pg-protocol';
import { Frontend as F } from '../src/protocol/codes.js';
import { encodeBindWithStatement, encodeCloseStatement, encodeDescribeStatement, encodeParse } from '../src/protocol/frontend.js';

// ---------------------------------------------------------------- before (as tx-statements.ts had it)
function frame(type: number, ...parts: Buffer[]): Buffer {
  const len = parts.reduce((n, p) => n + p.length, 0);
  const out = Buffer.allocUnsafe(5 + len);
  out[0] = type;
  out.writeUInt32BE(4 + len, 1);
  let pos = 5;
  for (const p of parts) pos += p.copy(out, pos);
  return out;
}
const cstring = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf8');

function oldBind(body: Buffer, serverName: string): Buffer {
  const portalEnd = body.indexOf(0);
  const nameEnd = body.indexOf(0, portalEnd + 1);
  return frame(F.Bind, body.subarray(0, portalEnd + 1), cstring(serverName), body.subarray(nameEnd + 1));
}

const serverName = 'pgw_0123456789abcdef01234567';
const bindBody = serialize.bind({ statement: 'client_stmt', portal: '', values: ['42', 'some text value'] }).subarray(5);
const definition = serialize.parse({ name: 'x', text: 'SELECT * FROM accounts WHERE id = $1 AND name = $2', types: [23, 25] }).subarray(7);

const cases: [string, () => Buffer, () => Buffer][] = [
  ['Bind', () => oldBind(bindBody, serverName), () => encodeBindWithStatement(bindBody, serverName)],
  ['Describe', () => frame(F.Describe, Buffer.from('S'), cstring(serverName)), () => encodeDescribeStatement(serverName)],
  ['Parse', () => frame(F.Parse, cstring(serverName), definition), () => encodeParse(serverName, definition)],
  ['Close', () => frame(F.Close, Buffer.from('S'), cstring(serverName)), () => encodeCloseStatement(serverName)],
];

function nsPerCall(f: () => Buffer, n: number): number {
  let sink = 0;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) sink += f().length;
  const ns = Number(process.hrtime.bigint() - t0) / n;
  if (sink === 0) throw new Error('unreachable');
  return ns;
}

const N = 200_000;
const ROUNDS = 7;
console.log(`node ${process.version}; ${N} frames x ${ROUNDS} rounds; median ns per frame`);
for (const [name, before, after] of cases) {
  if (!before().equals(after())) throw new Error(`${name}: old and new bytes differ`);
  const b: number[] = [];
  const a: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    b.push(nsPerCall(before, N));
    a.push(nsPerCall(after, N));
  }
  const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  console.log(`${name.padEnd(9)} before ${median(b).toFixed(0).padStart(5)}  after ${median(a).toFixed(0).padStart(5)}`);
}
