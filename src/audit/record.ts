/**
 * The audit record envelope (SECURITY.md §2.1), its canonical form and hash. Shared by the
 * writer and by `pgwarden audit verify`, so both agree byte for byte on what is hashed.
 */
import { createHash, randomBytes } from 'node:crypto';
import canonicalize from 'canonicalize';

export const AUDIT_SCHEMA = 'pgwarden.audit/v1';

export type AuditEventName =
  | 'session.start'
  | 'session.auth_failure'
  | 'connection.rejected'
  | 'session.query'
  | 'session.query_result'
  | 'session.end'
  | 'staff.access'
  | 'limits.degraded'
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
  const canonical = canonicalize({ ...rest, chain: { prev: chain.prev } });
  if (canonical === undefined) throw new Error('record cannot be canonicalized');
  return createHash('sha256').update(canonical, 'utf8').digest('hex');
}

/** UUIDv7 (RFC 9562): 48-bit Unix ms, version, random. Time-ordered ids for the audit log. */
export function uuidv7(nowMs = Date.now()): string {
  const b = randomBytes(16);
  b.writeUIntBE(nowMs, 0, 6);
  b[6] = (b[6]! & 0x0f) | 0x70;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** RFC 3339 UTC with microseconds. */
export function rfc3339Micros(epochNs: bigint): string {
  const ms = Number(epochNs / 1_000_000n);
  const micros = Number((epochNs / 1000n) % 1_000_000n);
  return `${new Date(ms).toISOString().slice(0, 19)}.${String(micros).padStart(6, '0')}Z`;
}
