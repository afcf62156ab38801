/**
 * Staff tokens an operator revoked (POST /staff/revoke on any instance, shared through the cluster
 * bus): by token (`jti`) or by person (`sub`), each remembered until a set time so a revoked token
 * cannot log in again while it could still be valid. Ending the sessions is the caller's part.
 */

/** One revocation as it travels on the bus: no token bytes, only the token's id or its subject. */
export interface StaffRevocation {
  readonly by: 'jti' | 'sub';
  readonly id: string;
  /** Remembered until then (ms since the epoch). */
  readonly untilMs: number;
}
import type { StaffConfig } from '../config/schema.js';

/** Never remembered longer than this: staff tokens are short-lived (the "bounded while"). */
export const MAX_REVOCATION_MS = 24 * 60 * 60 * 1000;
/** An upper bound on memory whatever an operator (or a reader of Redis) sends; far above real use. */
const MAX_ENTRIES = 10_000;
/** Printable ASCII without spaces, as token ids and subjects are in practice; bounds what reaches logs and audit. */
const ID_RE = /^[\x21-\x7e]{1,256}$/;

/**
 * How long a revocation is kept: a token valid now expires within the staff tokens' maximum
 * lifetime (plus the clock tolerance); never more than MAX_REVOCATION_MS.
 */
export function revocationTtlMs(staff: StaffConfig | undefined): number {
  return staff === undefined ? MAX_REVOCATION_MS : Math.min(staff.maxTokenLifetimeMs + staff.clockToleranceMs, MAX_REVOCATION_MS);
}

export function isRevocationId(v: unknown): v is string {
  return typeof v === 'string' && ID_RE.test(v);
}

/** Whether a staff session's token is the one (or belongs to the person) a revocation names. */
export function revocationMatches(rev: Pick<StaffRevocation, 'by' | 'id'>, staff: { readonly jti: string; readonly sub: string }): boolean {
  return rev.by === 'jti' ? staff.jti === rev.id : staff.sub === rev.id;
}

/** Validates a revocation from the bus or IPC (anyone who reaches Redis can publish). */
export function decodeRevocation(v: unknown): StaffRevocation | null {
  if (typeof v !== 'object' || v === null) return null;
  const r = v as Record<string, unknown>;
  const by = r['by'];
  const id = r['id'];
  const untilMs = r['untilMs'];
  if ((by !== 'jti' && by !== 'sub') || !isRevocationId(id)) return null;
  if (typeof untilMs !== 'number' || !Number.isFinite(untilMs)) return null;
  return { by, id, untilMs: Math.min(untilMs, Date.now() + MAX_REVOCATION_MS) };
}

export class RevocationSet {
  /** key `by:id` → until (ms since the epoch). */
  private readonly entries = new Map<string, number>();

  /** Adds (or extends) a revocation; false if it had already expired. */
  add(rev: StaffRevocation, nowMs = Date.now()): boolean {
    const untilMs = Math.min(rev.untilMs, nowMs + MAX_REVOCATION_MS);
    if (untilMs <= nowMs) return false;
    const key = `${rev.by}:${rev.id}`;
    const had = this.entries.get(key);
    if (had !== undefined && had >= untilMs) return true;
    if (had === undefined && this.entries.size >= MAX_ENTRIES) {
      this.prune(nowMs);
      // Still full: forget the one that would lapse first (the least protection lost).
      if (this.entries.size >= MAX_ENTRIES) {
        let soonest: string | undefined;
        let soonestMs = Infinity;
        for (const [k, t] of this.entries) if (t < soonestMs) [soonest, soonestMs] = [k, t];
        if (soonest !== undefined) this.entries.delete(soonest);
      }
    }
    this.entries.set(key, untilMs);
    return true;
  }

  /** Whether this token (jti) or anything of this person (sub) is revoked now. */
  has(jti: string, sub: string, nowMs = Date.now()): boolean {
    return this.live(`jti:${jti}`, nowMs) || this.live(`sub:${sub}`, nowMs);
  }

  /** What is in force now, e.g. for a worker that starts after the revocation. */
  list(nowMs = Date.now()): StaffRevocation[] {
    this.prune(nowMs);
    return [...this.entries].map(([k, untilMs]) => {
      const i = k.indexOf(':');
      return { by: k.slice(0, i) as 'jti' | 'sub', id: k.slice(i + 1), untilMs };
    });
  }

  get size(): number {
    return this.entries.size;
  }

  private live(key: string, nowMs: number): boolean {
    const until = this.entries.get(key);
    if (until === undefined) return false;
    if (until > nowMs) return true;
    this.entries.delete(key);
    return false;
  }

  private prune(nowMs: number): void {
    for (const [k, t] of this.entries) if (t <= nowMs) this.entries.delete(k);
  }
}
