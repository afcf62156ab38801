/**
 * Support grants (issue 17): whether the tenant's own database holds an open grant for a staff
 * ticket, asked through the tenant's lookup connections (auth-query.ts: search_path=pg_catalog,
 * read-only, bounded reply and time), and what a reply means. The table and the customer's
 * functions are tenant-sql.ts's; refusing a login is staff-login.ts's, ending sessions
 * session/consent-watch.ts's.
 */
import type { TenantConfig } from '../config/schema.js';
import type { AuthLookups, LookupTarget, RawReply } from './auth-query.js';

/** An open grant: what it allows, until when (ms since the epoch, the tenant server's clock). */
export interface SupportGrant {
  readonly ticket: string;
  readonly access: 'read' | 'write';
  readonly expiresAtMs: number;
}

/** Why a ticket has no open grant, for the audit (`consent:<why>`). */
export type NoGrant = 'none' | 'expired' | 'revoked';

export type GrantCheck = { readonly ok: true; readonly grant: SupportGrant } | { readonly ok: false; readonly why: NoGrant };

/**
 * One ticket, at a login: its row whatever its state, so the audit can say why it is not open.
 * Schema-qualified (the lookup connection's search_path is pg_catalog anyway), the ticket bound as $1.
 */
export const GRANT_CHECK_SQL =
  'SELECT ticket, access, (extract(epoch FROM expires_at) * 1000)::bigint::text, (revoked_at IS NOT NULL)::text, (expires_at <= now())::text ' +
  'FROM pgwarden.support_grants WHERE ticket = $1';

/** The open grants among the tickets of live sessions: one query per tenant per re-check. */
export const OPEN_GRANTS_SQL =
  'SELECT ticket, access, (extract(epoch FROM expires_at) * 1000)::bigint::text ' +
  'FROM pgwarden.support_grants WHERE ticket = ANY($1::text[]) AND revoked_at IS NULL AND expires_at > now()';

/** A reply that is not what pgwarden's own statement returns (a hostile or altered server). */
export class GrantReplyInvalid extends Error {}

const ACCESS = new Set(['read', 'write']);

function grantOf(row: readonly (string | null)[], ticket: string): SupportGrant {
  const [t, access, expires] = row;
  const expiresAtMs = Number(expires);
  if (t !== ticket || access === null || access === undefined || !ACCESS.has(access) || !Number.isSafeInteger(expiresAtMs)) {
    throw new GrantReplyInvalid('support_grants row is not a grant');
  }
  return { ticket, access: access as 'read' | 'write', expiresAtMs };
}

/** GRANT_CHECK_SQL's reply: at most one row (ticket is the primary key), five columns. */
export function judgeGrantCheck(reply: RawReply, ticket: string): GrantCheck {
  if (reply.columns !== 5 || reply.rows.length > 1) throw new GrantReplyInvalid('support_grants reply has the wrong shape');
  const row = reply.rows[0];
  if (row === undefined) return { ok: false, why: 'none' };
  const grant = grantOf(row, ticket);
  if (row[3] === 'true') return { ok: false, why: 'revoked' };
  if (row[4] !== 'false') return { ok: false, why: 'expired' };
  return { ok: true, grant };
}

/** OPEN_GRANTS_SQL's reply: at most one row per asked ticket, each one of them. */
export function judgeOpenGrants(reply: RawReply, tickets: readonly string[]): Map<string, SupportGrant> {
  const asked = new Set(tickets);
  if (reply.columns !== 3 || reply.rows.length > asked.size) throw new GrantReplyInvalid('support_grants reply has the wrong shape');
  const open = new Map<string, SupportGrant>();
  for (const row of reply.rows) {
    const t = row[0];
    if (t === null || t === undefined || !asked.has(t) || open.has(t)) throw new GrantReplyInvalid('support_grants reply names a ticket not asked for');
    open.set(t, grantOf(row, t));
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
    return judgeGrantCheck(await this.lookups.query(tenant, target, GRANT_CHECK_SQL, [ticket]), ticket);
  }

  async open(tenant: TenantConfig, target: LookupTarget, tickets: readonly string[]): Promise<Map<string, SupportGrant>> {
    return judgeOpenGrants(await this.lookups.query(tenant, target, OPEN_GRANTS_SQL, [tickets]), tickets);
  }
}
