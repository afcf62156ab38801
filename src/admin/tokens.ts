/**
 * The admin listener's two credentials: the operator token (`[admin] token_sha256`, everything)
 * and the auditor token (`[admin] auditor_token_sha256`, reading the audit in /ui/ and nothing
 * else). Both are kept as SHA-256 only and compared in constant time. Which call a role may make
 * is api.ts's and ui/handler.ts's.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

export type AdminRole = 'operator' | 'auditor';

/** The two hashes, read per request so a reload can rotate them; undefined refuses that role. */
export interface AdminCredentials {
  readonly tokenSha256: () => string | undefined;
  readonly auditorTokenSha256: () => string | undefined;
}

/** SHA-256 of what was presented against the configured hash, in constant time (both 32 bytes). */
export function tokenMatches(presented: string, sha256Hex: string): boolean {
  const want = Buffer.from(sha256Hex, 'hex');
  const got = createHash('sha256').update(presented, 'utf8').digest();
  return want.length === got.length && timingSafeEqual(got, want);
}

/** The configured hash of a role's token, or undefined when that role has none. */
export function roleTokenSha256(role: AdminRole, creds: AdminCredentials): string | undefined {
  return role === 'operator' ? creds.tokenSha256() : creds.auditorTokenSha256();
}

/** Whose token this is, or undefined. Both comparisons always run, so timing says nothing of which. */
export function tokenRole(presented: string, creds: AdminCredentials): AdminRole | undefined {
  const op = creds.tokenSha256();
  const aud = creds.auditorTokenSha256();
  const isOperator = op !== undefined && tokenMatches(presented, op);
  const isAuditor = aud !== undefined && tokenMatches(presented, aud);
  return isOperator ? 'operator' : isAuditor ? 'auditor' : undefined;
}
