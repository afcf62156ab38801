/**
 * Who is logged in to the audit view: random session ids held in memory with their role, each
 * ending after IDLE_MS without a request or MAX_AGE_MS after login, whichever comes first, or as
 * soon as the token it logged in with is no longer configured (rotated or removed by a reload). A
 * restart logs everyone out. The cookie carrying the id is cookie.ts's; checking tokens is tokens.ts's.
 */
import { randomBytes } from 'node:crypto';
import type { AdminRole } from '../tokens.js';

/** Either token may log in to the view. */
export type UiRole = AdminRole;

export const IDLE_MS = 30 * 60_000;
export const MAX_AGE_MS = 8 * 3_600_000;
/** At most this many logged-in browsers; the oldest login is dropped past it (bounded memory). */
export const MAX_SESSIONS = 256;

interface UiSession {
  readonly role: UiRole;
  /** The configured SHA-256 of the token it logged in with (the config holds it too; not a secret). */
  readonly tokenSha256: string;
  readonly createdMs: number;
  lastSeenMs: number;
}

/** 32 random bytes, base64url: what the cookie carries. */
const ID_RE = /^[A-Za-z0-9_-]{43}$/;

export class UiSessions {
  private readonly byId = new Map<string, UiSession>();

  constructor(private readonly now: () => number = Date.now) {}

  create(role: UiRole, tokenSha256: string): string {
    const id = randomBytes(32).toString('base64url');
    if (this.byId.size >= MAX_SESSIONS) {
      const oldest = this.byId.keys().next().value;
      if (oldest !== undefined) this.byId.delete(oldest);
    }
    const t = this.now();
    this.byId.set(id, { role, tokenSha256, createdMs: t, lastSeenMs: t });
    return id;
  }

  /**
   * The session's role, refreshing its idle time; undefined (and forgotten) when unknown, expired,
   * or when `configured(role)` no longer gives the hash of the token it logged in with.
   */
  touch(id: string | undefined, configured: (role: UiRole) => string | undefined): UiRole | undefined {
    if (id === undefined || !ID_RE.test(id)) return undefined;
    const s = this.byId.get(id);
    if (s === undefined) return undefined;
    const t = this.now();
    if (t - s.lastSeenMs > IDLE_MS || t - s.createdMs > MAX_AGE_MS || configured(s.role) !== s.tokenSha256) {
      this.byId.delete(id);
      return undefined;
    }
    s.lastSeenMs = t;
    return s.role;
  }

  /** Ends the session; its role if it was live. */
  end(id: string | undefined, configured: (role: UiRole) => string | undefined): UiRole | undefined {
    const role = this.touch(id, configured);
    if (id !== undefined) this.byId.delete(id);
    return role;
  }

  get size(): number {
    return this.byId.size;
  }
}
