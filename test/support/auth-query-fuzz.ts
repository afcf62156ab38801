/**
 * auth_query against a hostile tenant server (SECURITY.md rule 6): a fake PostgreSQL that logs the
 * lookup connection in (trust) and answers each lookup with a reply drawn for its case: valid, no
 * rows, many rows, other columns, huge values, DataRow without RowDescription, binary junk, another
 * role's name, MD5, an ErrorResponse, mutated frames, silence, a hang-up. The case is in the role
 * name looked up (`fz_<seed>_<index>`), so it replays. Every lookup must end as a result (a refusal
 * unless the reply was valid) or a PgError 08006/53300, within its timeout, and never crash.
 */
import net from 'node:net';
import { AuthLookups } from '../../src/auth/auth-query.js';
import { DEFAULT_AUTH_QUERY, type TenantConfig } from '../../src/config/schema.js';
import { PgError } from '../../src/errors.js';
import { makeScramVerifier } from '../../src/auth/scram.js';
import { mutateFrames, Rng } from './fuzz.js';
import { frame, int32, listenFake, type FakeServer } from './hostile-backend.js';

export const AUTH_FUZZ_KINDS = [
  'valid',
  'no_rows',
  'many_rows',
  'other_columns',
  'huge_value',
  'row_without_description',
  'binary_junk',
  'other_name',
  'md5',
  'error',
  'mutated',
  'silent',
  'hang_up',
  'short_row',
] as const;
export type AuthFuzzKind = (typeof AUTH_FUZZ_KINDS)[number];

const caseRng = (seed: number, index: number): Rng => new Rng((seed * 2654435761) ^ (index * 2246822519) ^ 0x5a5a);
export const caseKind = (seed: number, index: number): AuthFuzzKind => AUTH_FUZZ_KINDS[index % AUTH_FUZZ_KINDS.length]!;

function rowDescription(names: string[], typeOid = 25): Buffer {
  const parts: Buffer[] = [Buffer.from([names.length >> 8, names.length & 0xff])];
  for (const n of names) {
    const meta = Buffer.alloc(18);
    meta.writeInt32BE(0, 0);
    meta.writeInt16BE(0, 4);
    meta.writeInt32BE(typeOid, 6);
    meta.writeInt16BE(-1, 10);
    meta.writeInt32BE(-1, 12);
    meta.writeInt16BE(0, 16);
    parts.push(Buffer.from(`${n}\0`), meta);
  }
  return frame('T', Buffer.concat(parts));
}

function dataRow(values: (Buffer | string | null)[]): Buffer {
  const parts: Buffer[] = [Buffer.from([values.length >> 8, values.length & 0xff])];
  for (const v of values) {
    if (v === null) parts.push(int32(-1));
    else {
      const b = typeof v === 'string' ? Buffer.from(v, 'utf8') : v;
      parts.push(int32(b.length), b);
    }
  }
  return frame('D', Buffer.concat(parts));
}

const COLS = ['usename', 'passwd', 'valuntil'];

/** The reply to one lookup (after Parse/Bind/Describe/Execute/Sync), or null: say nothing. */
export function authReply(kind: AuthFuzzKind, rng: Rng, user: string, verifier: string): Buffer | 'hang_up' | null {
  const head = [frame('1', ''), frame('2', '')];
  const done = (rows: number): Buffer[] => [frame('C', `SELECT ${rows}\0`), frame('Z', 'I')];
  const ok = (): Buffer[] => [...head, rowDescription(COLS), dataRow([user, verifier, null]), ...done(1)];
  switch (kind) {
    case 'valid':
      return Buffer.concat(ok());
    case 'no_rows':
      return Buffer.concat([...head, rowDescription(COLS), ...done(0)]);
    case 'many_rows': {
      const n = 2 + rng.int(3000);
      return Buffer.concat([...head, rowDescription(COLS), ...Array.from({ length: n }, () => dataRow([user, verifier, null])), ...done(n)]);
    }
    case 'other_columns': {
      const n = rng.int(7);
      const names = Array.from({ length: n }, (_, i) => COLS[i] ?? `c${i}`);
      const rows = rng.int(3);
      const values = (): (string | null)[] => names.map((_, i) => (i === 0 ? user : i === 1 ? verifier : rng.next() < 0.5 ? null : 'x'));
      return Buffer.concat([...head, rowDescription(names, rng.pick([25, 23, 1184, 17])), ...Array.from({ length: rows }, () => dataRow(values())), ...done(rows)]);
    }
    case 'huge_value':
      return Buffer.concat([...head, rowDescription(COLS), dataRow([user, Buffer.alloc(100_000 + rng.int(900_000), 0x41), null]), ...done(1)]);
    case 'row_without_description':
      return Buffer.concat([...head, dataRow([user, verifier, null]), ...done(1)]);
    case 'binary_junk':
      return Buffer.concat([...head, rowDescription(COLS), dataRow([rng.bytes(rng.int(64)), rng.bytes(rng.int(200)), rng.next() < 0.5 ? null : rng.bytes(rng.int(40))]), ...done(1)]);
    case 'other_name':
      return Buffer.concat([...head, rowDescription(COLS), dataRow([rng.pick(['postgres', user.toUpperCase(), `${user} `, '']), verifier, null]), ...done(1)]);
    case 'md5':
      return Buffer.concat([...head, rowDescription(COLS), dataRow([user, rng.pick(['md5' + 'ab'.repeat(16), 'secret', '', 'SCRAM-SHA-256$x']), rng.pick([null, 'garbage', '1999-01-01 00:00:00+00'])]), ...done(1)]);
    case 'error':
      return Buffer.concat([
        ...head.slice(0, rng.int(3)),
        frame('E', rng.next() < 0.5 ? 'SERROR\0VERROR\0C42883\0Mfunction does not exist\0\0' : 'SERROR\0Mno sqlstate\0\0'),
        frame('Z', 'I'),
      ]);
    case 'mutated':
      return mutateFrames(rng, ok());
    case 'silent':
      return null;
    case 'hang_up':
      return 'hang_up';
    case 'short_row':
      // A DataRow claiming more values (or longer ones) than it holds.
      return Buffer.concat([...head, rowDescription(COLS), frame('D', Buffer.concat([Buffer.from([0, 3]), int32(1_000), Buffer.from(user)])), ...done(1)]);
  }
}

/** The fake tenant server: trust login, then one drawn reply per Sync. */
export function startAuthFuzzServer(seed: number, verifier: string): Promise<FakeServer> {
  return listenFake((s: net.Socket) => {
    let buf = Buffer.alloc(0);
    let started = false;
    s.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (!started) {
        if (buf.length < 4) return;
        const len = buf.readUInt32BE(0);
        if (buf.length < len) return;
        buf = buf.subarray(len);
        started = true;
        s.write(Buffer.concat([frame('R', int32(0)), frame('S', 'server_version\x0015.0\0'), frame('K', Buffer.concat([int32(1), int32(2)])), frame('Z', 'I')]));
      }
      while (buf.length >= 5) {
        const type = String.fromCharCode(buf[0]!);
        const len = buf.readUInt32BE(1);
        if (buf.length < 1 + len) return;
        const body = buf.subarray(5, 1 + len);
        buf = buf.subarray(1 + len);
        if (type === 'X') {
          s.end();
          return;
        }
        if (type === 'B') bound = /fz_(\d+)_(\d+)/.exec(body.toString('latin1'));
        if (type !== 'S') continue;
        const m = bound;
        const index = m === null ? 0 : Number(m[2]);
        const user = m === null ? 'fz' : m[0];
        const reply = authReply(caseKind(seed, index), caseRng(seed, index), user, verifier);
        if (reply === 'hang_up') s.destroy();
        else if (reply !== null) s.write(reply);
      }
    });
    let bound: RegExpExecArray | null = null;
  });
}

export interface AuthFuzzSummary {
  cases: number;
  byOutcome: Record<string, number>;
  violations: string[];
}

/** Runs cases [from, from + count) one at a time (two lookup connections serve them). */
export async function runAuthQueryFuzz(seed: number, from: number, count: number, into: AuthFuzzSummary): Promise<void> {
  const verifier = await makeScramVerifier('fuzz', 4096, Buffer.alloc(16, 7));
  const server = await startAuthFuzzServer(seed, verifier);
  const timeoutMs = 300;
  const tenant = {
    id: 'fuzz',
    authQuery: {
      user: 'pgwarden_auth',
      passwordEnv: 'PGWARDEN_AUTH_FUZZ_UNSET',
      query: DEFAULT_AUTH_QUERY,
      database: 'postgres',
      cacheTtlMs: 0,
      negativeCacheTtlMs: 0,
      cacheSize: 10,
      poolSize: 2,
      timeoutMs,
      lookupsPerSecond: 100_000,
    },
  } as unknown as TenantConfig;
  const target = { host: '127.0.0.1', port: server.port, tls: 'disable' as const, ca: undefined };
  const lookups = new AuthLookups({ onLookup: () => undefined, onCache: () => undefined, onError: () => undefined });
  try {
    for (let index = from; index < from + count; index++) {
      const kind = caseKind(seed, index);
      const user = `fz_${seed}_${index}`;
      const t0 = performance.now();
      let outcome: string;
      try {
        const r = await lookups.find(tenant, target, user);
        outcome = r.ok ? 'ok' : r.reason;
        if (r.ok && kind !== 'valid' && kind !== 'mutated') into.violations.push(`case ${index} (${kind}): accepted`);
        if (!r.ok && kind === 'valid') into.violations.push(`case ${index} (valid): refused as ${r.reason}`);
      } catch (err) {
        if (err instanceof PgError && (err.sqlstate === '08006' || err.sqlstate === '53300')) outcome = `pgerror_${err.sqlstate}`;
        else {
          outcome = 'thrown';
          into.violations.push(`case ${index} (${kind}): threw ${String(err)}`);
        }
      }
      const ms = performance.now() - t0;
      if (ms > timeoutMs * 2 + 1_000) into.violations.push(`case ${index} (${kind}): took ${ms.toFixed(0)} ms`);
      into.cases++;
      const key = `${kind}:${outcome}`;
      into.byOutcome[key] = (into.byOutcome[key] ?? 0) + 1;
    }
  } finally {
    lookups.close();
    await server.close();
  }
}
