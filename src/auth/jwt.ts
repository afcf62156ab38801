/**
 * Staff tokens: verifies a short-lived JWT (jose, against the configured JWKS) and decides what
 * it grants on one tenant. Deciding is all this file does: the session asks, audits the decision
 * (staff.access) and enforces it; single use (jti) and revocation are the session's through the
 * limit store and the admin API.
 */
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { createLocalJWKSet, createRemoteJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify, type JWTPayload } from 'jose';
import { ConfigError, type StaffAccess, type StaffConfig } from '../config/schema.js';

/** The verified facts of a token, as the audit log records them (never the token itself). */
export interface StaffClaims {
  readonly sub: string;
  readonly iss: string;
  readonly aud: string | string[];
  readonly jti: string;
  readonly kid: string | null;
  readonly iat: number | null;
  readonly exp: number;
  readonly email: string | null;
  readonly amr: string[];
  readonly reason_or_ticket: string;
  readonly requested_access: 'read' | 'write';
  readonly break_glass: boolean;
}

export type StaffDecision =
  | { readonly ok: true; readonly claims: StaffClaims; readonly access: 'read' | 'write' }
  | {
      readonly ok: false;
      /** jwt_invalid:<iss|aud|exp|nbf|sig|alg|kid|malformed|claims|lifetime|scope|mfa|ticket> (SECURITY.md §2.3). */
      readonly reason: string;
      /** What the token says about itself, unverified, for the auditor (sanitized, truncated). */
      readonly claimed: Record<string, string | null>;
    };

type KeySet = Parameters<typeof jwtVerify>[1];

/** A JWT larger than this is not a staff token (PostgreSQL caps a password message at 64 KiB too). */
export const MAX_TOKEN_BYTES = 16 * 1024;

export class StaffTokenVerifier {
  private readonly keys: KeySet;

  constructor(private readonly cfg: StaffConfig) {
    if (/^https:\/\//.test(cfg.jwks)) {
      // Fetched on demand, cached, refetched at most every 30 s for an unknown kid.
      this.keys = createRemoteJWKSet(new URL(cfg.jwks), { timeoutDuration: 5_000, cooldownDuration: 30_000, cacheMaxAge: 600_000 });
    } else {
      try {
        this.keys = createLocalJWKSet(JSON.parse(readFileSync(cfg.jwks, 'utf8')) as Parameters<typeof createLocalJWKSet>[0]);
      } catch (err) {
        // At start-up, reload and check-config alike: name the key, as every config problem does.
        throw new ConfigError([`staff.jwks: ${cfg.jwks} is not a readable JWKS (${(err as Error).message})`]);
      }
    }
  }

  /** Verifies `token` for `tenantId`, whose staff_access is `cap`. Never throws for a bad token. */
  async decide(token: string, tenantId: string, cap: StaffAccess, nowMs = Date.now()): Promise<StaffDecision> {
    const cfg = this.cfg;
    let payload: JWTPayload;
    let kid: string | null;
    try {
      if (token.length > MAX_TOKEN_BYTES) return deny('malformed', token);
      const res = await jwtVerify(token, this.keys, {
        issuer: cfg.issuer,
        audience: cfg.audience,
        algorithms: [...cfg.algorithms],
        clockTolerance: Math.round(cfg.clockToleranceMs / 1000),
        currentDate: new Date(nowMs),
        requiredClaims: ['exp', 'sub', 'jti'],
      });
      payload = res.payload;
      kid = res.protectedHeader.kid ?? null;
    } catch (err) {
      return deny(joseReason(err), token);
    }
    const sub = payload.sub ?? '';
    const jti = payload.jti ?? '';
    const exp = payload.exp ?? 0;
    const iat = typeof payload.iat === 'number' ? payload.iat : null;
    const ticket = typeof payload['ticket'] === 'string' ? payload['ticket'].trim() : '';
    const access = payload['access'];
    const amr = Array.isArray(payload['amr']) ? payload['amr'].filter((x): x is string => typeof x === 'string') : [];
    const tenants = typeof payload['tenant'] === 'string' ? [payload['tenant']] : Array.isArray(payload['tenant']) ? payload['tenant'] : [];
    if (sub === '' || jti === '' || (access !== 'read' && access !== 'write')) return deny('claims', token);
    // Short-lived only: a long token is a standing credential, which staff access must not be.
    const lifetimeMs = (exp - (iat ?? Math.floor(nowMs / 1000))) * 1000;
    if (lifetimeMs > cfg.maxTokenLifetimeMs) return deny('lifetime', token);
    if (ticket === '') return deny('ticket', token);
    if (cfg.requireMfa && !amr.includes('mfa')) return deny('mfa', token);
    if (!tenants.includes(tenantId)) return deny('scope', token);
    if (cap === 'deny') return deny('scope', token);
    const claims: StaffClaims = {
      sub: clip(sub),
      iss: clip(payload.iss ?? ''),
      aud: payload.aud ?? '',
      jti: clip(jti),
      kid: kid === null ? null : clip(kid),
      iat,
      exp,
      email: typeof payload['email'] === 'string' ? clip(payload['email']) : null,
      amr: amr.slice(0, 8).map((a) => clip(a)),
      reason_or_ticket: clip(ticket, 256),
      requested_access: access,
      break_glass: payload['break_glass'] === true,
    };
    // The tenant's setting caps what any token may grant ('on_request': the customer's grant does, at login).
    return { ok: true, claims, access: cap === 'read' ? 'read' : access };
  }
}

/** jose's error codes mapped onto the audit's jwt_invalid reasons. */
function joseReason(err: unknown): string {
  const e = err as { code?: string; claim?: string };
  switch (e.code) {
    case 'ERR_JWT_EXPIRED':
      return 'exp';
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
      return e.claim === 'iss' || e.claim === 'aud' || e.claim === 'nbf' || e.claim === 'iat' ? e.claim : 'claims';
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      return 'sig';
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
    case 'ERR_JOSE_NOT_SUPPORTED':
      return 'alg';
    case 'ERR_JWKS_NO_MATCHING_KEY':
    case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS':
      return 'kid';
    case 'ERR_JWKS_TIMEOUT':
      return 'jwks_unavailable';
    case undefined:
    default:
      return 'malformed';
  }
}

function deny(what: string, token: string): StaffDecision {
  return { ok: false, reason: `jwt_invalid:${what}`, claimed: unverifiedClaims(token) };
}

/** Who the token claims to be, for the audit of a refusal: unverified, so sanitized and marked as such. */
function unverifiedClaims(token: string): Record<string, string | null> {
  const pick = (v: unknown): string | null => (typeof v === 'string' ? clip(v) : null);
  try {
    const p = decodeJwt(token);
    const h = decodeProtectedHeader(token);
    return { sub: pick(p.sub), iss: pick(p.iss), jti: pick(p.jti), kid: pick(h.kid), alg: pick(h.alg), ticket: pick(p['ticket']) };
  } catch {
    return { sub: null, iss: null, jti: null, kid: null, alg: null, ticket: null };
  }
}

/** Printable ASCII, bounded: claims are the issuer's text and end up in audit records and logs. */
function clip(s: string, max = 128): string {
  return s.slice(0, max).replace(/[^\x20-\x7e]/g, '?');
}

/** The key under which a jti is remembered (hashed: its bytes are the issuer's choice, of any length). */
export function jtiKey(iss: string, jti: string): string {
  return createHash('sha256').update(iss).update('\0').update(jti).digest('hex').slice(0, 32);
}
