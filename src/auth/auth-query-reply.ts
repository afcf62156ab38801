/**
 * What a tenant's server answered to auth_query, judged: a SCRAM verifier to use, or a refusal with
 * its audit reason. The server is the tenant's and untrusted (SECURITY.md rule 6): anything but
 * exactly one well-formed row for exactly the role asked about is a refusal, never a throw.
 * Connections and caching are auth-query.ts's.
 */
import { parseScramVerifier, type ScramVerifier } from '../config/scram-verifier.js';

/** Why a looked-up role may not log in (audit and metrics only: the client hears the wrong password's 28P01). */
export type LookupRefusal =
  /** No row: no such role, or one that cannot log in (pg_shadow lists only rolcanlogin roles). */
  | 'unknown_user'
  /** A row without a password. */
  | 'no_password'
  /** VALID UNTIL in the past (PgBouncer CVE-2025-2291 ignored it). */
  | 'secret_expired'
  /** An MD5 or plaintext rolpassword: pgwarden speaks SCRAM only. */
  | 'unsupported_verifier'
  /** Anything else: more rows, other columns, another role's name, values that do not parse. */
  | 'auth_query_invalid';

export type LookupResult = { readonly ok: true; readonly verifier: ScramVerifier } | { readonly ok: false; readonly reason: LookupRefusal };

/** rolpassword is at most a few hundred bytes for SCRAM; anything longer is not one. */
const MAX_PASSWD_CHARS = 1024;
const MAX_TIMESTAMP_CHARS = 64;

/**
 * Judges the rows (as text, `null` for SQL NULL; `rows` as the driver gave them, possibly not
 * arrays at all) of a lookup for `user`, at time `nowMs`. Columns: usename, passwd, valuntil.
 */
export function judgeAuthReply(fieldCount: number, rows: unknown, user: string, nowMs: number): LookupResult {
  if (!Array.isArray(rows)) return refuse('auth_query_invalid');
  if (rows.length === 0) return refuse('unknown_user');
  if (rows.length !== 1 || fieldCount !== 3) return refuse('auth_query_invalid');
  const row: unknown = rows[0];
  if (!Array.isArray(row) || row.length !== 3) return refuse('auth_query_invalid');
  const [name, passwd, validUntil] = row as unknown[];
  if (typeof name !== 'string' || name !== user) return refuse('auth_query_invalid');
  if (passwd === null) return refuse('no_password');
  if (typeof passwd !== 'string' || passwd.length > MAX_PASSWD_CHARS) return refuse('auth_query_invalid');
  if (validUntil !== null) {
    if (typeof validUntil !== 'string') return refuse('auth_query_invalid');
    const until = parseTimestamptz(validUntil);
    if (until === undefined) return refuse('auth_query_invalid');
    if (until <= nowMs) return refuse('secret_expired');
  }
  if (!passwd.startsWith('SCRAM-SHA-256$')) return refuse('unsupported_verifier');
  const verifier = parseScramVerifier(passwd);
  return verifier === undefined ? refuse('auth_query_invalid') : { ok: true, verifier };
}

const refuse = (reason: LookupRefusal): LookupResult => ({ ok: false, reason });

const TS_RE = /^(\d{4,6})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(\.\d{1,6})?([+-]\d\d)(?::(\d\d)(?::(\d\d))?)?( BC)?$/;

/**
 * A timestamptz in PostgreSQL's ISO output (the lookup connection sets DateStyle=ISO), as epoch
 * milliseconds: `infinity` is never, `-infinity` and BC dates are long past. Undefined: not that.
 */
export function parseTimestamptz(text: string): number | undefined {
  if (text.length > MAX_TIMESTAMP_CHARS) return undefined;
  if (text === 'infinity') return Number.POSITIVE_INFINITY;
  if (text === '-infinity') return Number.NEGATIVE_INFINITY;
  const m = TS_RE.exec(text);
  if (m === null) return undefined;
  if (m[11] !== undefined) return Number.NEGATIVE_INFINITY;
  const [year, month, day, hour, minute, second] = [m[1], m[2], m[3], m[4], m[5], m[6]].map(Number) as [number, number, number, number, number, number];
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 24 || minute > 59 || second > 60) return undefined;
  const ms = m[7] === undefined ? 0 : Math.floor(Number(`0${m[7]}`) * 1000);
  const offsetHours = Number(m[8]);
  const sign = offsetHours < 0 || m[8]!.startsWith('-') ? -1 : 1;
  const offsetMs = sign * ((Math.abs(offsetHours) * 60 + Number(m[9] ?? 0)) * 60 + Number(m[10] ?? 0)) * 1000;
  // Date.UTC maps years 0-99 to 1900-1999; setUTCFullYear does not.
  const d = new Date(0);
  d.setUTCFullYear(year, month - 1, day);
  d.setUTCHours(hour, minute, second, ms);
  const utc = d.getTime() - offsetMs;
  return Number.isFinite(utc) ? utc : undefined;
}
