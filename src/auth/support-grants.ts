/**
 * Support grants (issue 17): whether the tenant's own database holds an open grant for a staff
 * ticket, asked through the tenant's lookup connections (auth-query.ts: search_path=pg_catalog,
 * read-only, bounded reply and time), and what a reply means. The table and the customer's
 * functions are tenant-sql.ts's; refusing a login is staff-login.ts's, ending sessions
 * session/consent-watch.ts's.
 */
import type { TenantConfig } from '../config/schema.js';
import type { AuthLookups, LookupTarget, RawReply } from './auth-query.js';

/**
 * An open grant: what it allows, and until when. The server says both its expires_at and how long
 * is left by its own clock; pgwarden ends sessions by the time left, counted from when it asked
 * (so the two machines' clocks may differ, and the grant ends no later than the server's clock
 * says, only sooner by the round trip).
 */
export interface SupportGrant {
  readonly ticket: string;
  readonly access: 'read' | 'write';
  /** The end on pgwarden's clock (ms since the epoch): when it asked, plus the time the server said was left. */
  readonly expiresAtMs: number;
  /** The grant's expires_at as the customer's table holds it (ms since the epoch, the server's clock), for the audit. */
  readonly serverExpiresAtMs: number;
}

/** Why a ticket has no open grant, for the audit (`consent:<why>`). */
export type NoGrant = 'none' | 'expired' | 'revoked';

export type GrantCheck = { readonly ok: true; readonly grant: SupportGrant } | { readonly ok: false; readonly why: NoGrant };

/**
 * One ticket, at a login: its row whatever its state, so the audit can say why it is not open.
 * Schema-qualified (the lookup connection's search_path is pg_catalog anyway), the ticket bound as $1.
 */
export const GRANT_CHECK_SQL =
  'SELECT ticket, access, floor(extract(epoch FROM expires_at) * 1000)::bigint::text, floor(extract(epoch FROM expires_at - now()) * 1000)::bigint::text, ' +
  '(revoked_at IS NOT NULL)::text, (expires_at <= now())::text ' +
  'FROM pgwarden.support_grants WHERE ticket = $1';

/** The open grants among the tickets of live sessions: one query per tenant per re-check. */
export const OPEN_GRANTS_SQL =
  'SELECT ticket, access, floor(extract(epoch FROM expires_at) * 1000)::bigint::text, floor(extract(epoch FROM expires_at - now()) * 1000)::bigint::text ' +
  'FROM pgwarden.support_grants WHERE ticket = ANY($1::text[]) AND revoked_at IS NULL AND expires_at > now()';

/** A reply that is not what pgwarden's own statement returns (a hostile or altered server). */
export class GrantReplyInvalid extends Error {}

const ACCESS = new Set(['read', 'write']);

/** A bigint's text as a number; null for anything else (NULL, '', 'soon', past 2^53). */
function intText(v: string | null | undefined): number | null {
  if (typeof v !== 'string' || !/^-?\d{1,16}$/.test(v)) return null;
  const n = Number(v);
  return Number.isSafeInteger(n) ? n : null;
}

/** A row's first four columns (ticket, access, expires_at, time left) as a grant; askedAtMs: when pgwarden sent the query, on its clock. */
function grantOf(row: readonly (string | null)[], ticket: string, askedAtMs: number): SupportGrant {
  const [t, access, expires, left] = row;
  const serverExpiresAtMs = intText(expires);
  const leftMs = intText(left);
  if (t !== ticket || access === null || access === undefined || !ACCESS.has(access) || serverExpiresAtMs === null || leftMs === null) {
    throw new GrantReplyInvalid('support_grants row is not a grant');
  }
  return { ticket, access: access as 'read' | 'write', expiresAtMs: askedAtMs + leftMs, serverExpiresAtMs };
}

/** GRANT_CHECK_SQL's reply (times in whole milliseconds, rounded down: never later than the server's): at most one row (ticket is the primary key), six columns. */
export function judgeGrantCheck(reply: RawReply, ticket: string, askedAtMs: number): GrantCheck {
  if (reply.columns !== 6 || reply.rows.length > 1) throw new GrantReplyInvalid('support_grants reply has the wrong shape');
  const row = reply.rows[0];
  if (row === undefined) return { ok: false, why: 'none' };
  const grant = grantOf(row, ticket, askedAtMs);
  if (row[4] === 'true') return { ok: false, why: 'revoked' };
  if (row[5] !== 'false') return { ok: false, why: 'expired' };
  return { ok: true, grant };
}

/** OPEN_GRANTS_SQL's reply: at most one row per asked ticket, each one of them. */
export function judgeOpenGrants(reply: RawReply, tickets: readonly string[], askedAtMs: number): Map<string, SupportGrant> {
  const asked = new Set(tickets);
  if (reply.columns !== 4 || reply.rows.length > asked.size) throw new GrantReplyInvalid('support_grants reply has the wrong shape');
  const open = new Map<string, SupportGrant>();
  for (const row of reply.rows) {
    const t = row[0];
    if (t === null || t === undefined || !asked.has(t) || open.has(t)) throw new GrantReplyInvalid('support_grants reply names a ticket not asked for');
    open.set(t, grantOf(row, t, askedAtMs));
  }
  return open;
}

/** The lesser of two accesses: a grant never widens what the token asked for, nor the token the grant. */
export function lesserAccess(a: 'read' | 'write', b: 'read' | 'write'): 'read' | 'write' {
  return a === 'read' || b === 'read' ? 'read' : 'write';
}

/** Asks a tenant's server about grants, over its lookup connections. Throws when it cannot be asked. */
export class SupportGrants {
  constructor(private readonly lookups: AuthLookups) {}

  async check(tenant: TenantConfig, target: LookupTarget, ticket: string): Promise<GrantCheck> {
    const askedAtMs = Date.now();
    return judgeGrantCheck(await this.lookups.query(tenant, target, GRANT_CHECK_SQL, [ticket]), ticket, askedAtMs);
  }

  async open(tenant: TenantConfig, target: LookupTarget, tickets: readonly string[]): Promise<Map<string, SupportGrant>> {
    const askedAtMs = Date.now();
    return judgeOpenGrants(await this.lookups.query(tenant, target, OPEN_GRANTS_SQL, [tickets]), tickets, askedAtMs);
  }
}
