/**
 * The audit record envelope (SECURITY.md §2.1), its canonical form and hash. Shared by the
 * writer and by `pgwarden audit verify`, so both agree byte for byte on what is hashed.
 */
import { createHash, hash as cryptoHash, randomFillSync } from 'node:crypto';

export const AUDIT_SCHEMA = 'pgwarden.audit/v1';

/** A field of a record read back (a file, the store): the object it holds, or null for anything else. */
export function objectField(v: unknown): Record<string, unknown> | null {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
}

/** A field of a record read back: the string it holds, or null for anything else. */
export function stringField(v: unknown): string | null {
  return typeof v === 'string' ? v : null;
}

export type AuditEventName =
  | 'session.start'
  | 'session.auth_failure'
  | 'connection.rejected'
  | 'session.query'
  | 'session.query_result'
  | 'session.end'
  | 'staff.access'
  | 'limits.degraded'
  | 'catalog.degraded'
  | 'audit.gap'
  | 'audit.checkpoint'
  | 'proxy.lifecycle'
  | 'admin.command';

/** What a caller supplies; the writer adds the envelope (id, time, seq, chain…). */
export interface AuditEvent {
  event: AuditEventName;
  [field: string]: unknown;
}

export interface AuditRecord extends AuditEvent {
  schema: string;
  id: string;
  time: string;
  mono_ns: number;
  instance: { id: string; version: string; boot_id: string };
  seq: number;
  chain: { prev: string | null; hash: string };
}

/** SHA-256 over the RFC 8785 canonical form of the record without chain.hash. */
export function recordHash(record: { chain: { prev: string | null; hash?: string } } & Record<string, unknown>): string {
  const { chain, ...rest } = record;
  return createHash('sha256').update(canonicalJson({ ...rest, chain: { prev: chain.prev } }), 'utf8').digest('hex');
}

/**
 * Hashes a record whose chain.hash is not set yet and gives its JSON line, in one serialization:
 * the line is the canonical form itself with chain.hash added, so the bytes that were hashed are
 * the bytes written (and `verify`, re-canonicalizing, finds the same). Returns the hash; the
 * caller sets chain.hash.
 */
export function sealRecord(record: { chain: { prev: string | null } } & Record<string, unknown>): { hash: string; line: string } {
  const keys = sortKeys(Object.keys(record));
  let before = '';
  let after = '';
  let seenChain = false;
  for (const k of keys) {
    if (k === 'chain') {
      seenChain = true;
      continue;
    }
    const x = record[k];
    if (x === undefined || typeof x === 'function' || typeof x === 'symbol') continue;
    const member = `${keyJson(k)}:${canonicalJson(x)}`;
    if (seenChain) after += `,${member}`;
    else before += `${member},`;
  }
  const prev = canonicalJson(record.chain.prev);
  const head = `{${before}`;
  const tail = `${after}}`;
  const hash = cryptoHash('sha256', `${head}"chain":{"prev":${prev}}${tail}`, 'hex');
  return { hash, line: `${head}"chain":{"hash":"${hash}","prev":${prev}}${tail}\n` };
}

/**
 * RFC 8785 (JCS) for the JSON values audit records hold: object keys sorted by UTF-16 code
 * units (Array.prototype.sort's order), strings and numbers as ECMAScript's JSON.stringify writes
 * them, undefined members left out. Byte for byte what the `canonicalize` package gives for such
 * values (a unit test compares them), at about a fifteenth of its cost: it was 19 % of the audit
 * writer's CPU with statement audit on, and a login's session.start took 21 µs here (7 µs now:
 * plain ASCII strings skip JSON.stringify, member names are quoted once, keys sorted without sort()).
 */
export function canonicalJson(v: unknown): string {
  switch (typeof v) {
    case 'string':
      // Printable ASCII without '"' and '\\' is its own JSON text (and has no surrogates): most strings are.
      if (PLAIN_STRING.test(v)) return `"${v}"`;
      if (hasLoneSurrogate(v)) throw new Error('lone surrogate in an audit record');
      return JSON.stringify(v);
    case 'number':
      if (!Number.isFinite(v)) throw new Error('non-finite number in an audit record');
      return JSON.stringify(v);
    case 'boolean':
      return v ? 'true' : 'false';
    case 'object':
      break;
    case 'bigint':
    case 'function':
    case 'symbol':
    case 'undefined':
      return JSON.stringify(v); // as before: a bigint throws, the others give undefined
  }
  if (v === null) return 'null';
  if (Array.isArray(v)) {
    let out = '[';
    for (let i = 0; i < v.length; i++) {
      const x: unknown = v[i];
      out += (i === 0 ? '' : ',') + canonicalJson(x === undefined ? null : x);
    }
    return `${out}]`;
  }
  const o = v as Record<string, unknown>;
  const keys = sortKeys(Object.keys(o));
  let out = '{';
  let first = true;
  for (const k of keys) {
    const x = o[k];
    if (x === undefined || typeof x === 'function' || typeof x === 'symbol') continue;
    out += `${first ? '' : ','}${keyJson(k)}:${canonicalJson(x)}`;
    first = false;
  }
  return `${out}}`;
}

/** A string JSON.stringify would write as itself between quotes. */
const PLAIN_STRING = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

/** Member names as JSON, kept: records use a few dozen names over and over. */
const KEY_JSON = new Map<string, string>();

function keyJson(k: string): string {
  let j = KEY_JSON.get(k);
  if (j === undefined) {
    j = JSON.stringify(k);
    if (KEY_JSON.size < 1024) KEY_JSON.set(k, j);
  }
  return j;
}

/**
 * Sorts member names in place by UTF-16 code units (what Array.prototype.sort's default does):
 * an insertion sort with `<`, for the short key lists records have, without sort()'s per-comparison
 * string conversions.
 */
function sortKeys(keys: string[]): string[] {
  for (let i = 1; i < keys.length; i++) {
    const k = keys[i]!;
    let j = i - 1;
    while (j >= 0 && keys[j]! > k) {
      keys[j + 1] = keys[j]!;
      j--;
    }
    keys[j + 1] = k;
  }
  return keys;
}

function hasLoneSurrogate(s: string): boolean {
  // Fast path: most strings have no surrogates at all.
  if (!/[\ud800-\udfff]/.test(s)) return false;
  return /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);
}

/** Random bytes for ids, taken from a pool refilled 4 KiB at a time (one getrandom call per 256 ids, not per id). */
const RANDOM_POOL = Buffer.alloc(4096);
let randomOffset = RANDOM_POOL.length;

/** UUIDv7 (RFC 9562): 48-bit Unix ms, version, random. Time-ordered ids for the audit log. */
export function uuidv7(nowMs = Date.now()): string {
  if (randomOffset + 16 > RANDOM_POOL.length) {
    randomFillSync(RANDOM_POOL);
    randomOffset = 0;
  }
  const b = Buffer.from(RANDOM_POOL.subarray(randomOffset, randomOffset + 16));
  randomOffset += 16;
  b.writeUIntBE(nowMs, 0, 6);
  b[6] = (b[6]! & 0x0f) | 0x70;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** RFC 3339 UTC with microseconds; the date and time up to the second is formatted once per second. */
export function rfc3339Micros(epochNs: bigint): string {
  const micros = Number(epochNs / 1000n);
  const second = Math.floor(micros / 1_000_000);
  if (second !== lastSecond) {
    lastSecondText = new Date(second * 1000).toISOString().slice(0, 19);
    lastSecond = second;
  }
  return `${lastSecondText}.${String(micros - second * 1_000_000).padStart(6, '0')}Z`;
}
let lastSecond = Number.NaN;
let lastSecondText = '';
