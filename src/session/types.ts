/**
 * The names a session's steps share: its phases, why it ended, where a login stood, and the
 * staff identity and admin view it exposes. Types, and the list of close reasons.
 */

export type Phase = 'negotiating' | 'tls_handshake' | 'admitting' | 'authenticating' | 'connecting' | 'relaying' | 'closed';

/** Why a started session ended (audit `session.end.reason`, metric label); the audit view offers them as filters. */
export const CLOSE_REASONS = [
  'client_terminate',
  'client_eof',
  'backend_terminated',
  'backend_lost',
  'drain_deadline',
  'protocol_violation',
  'admin',
  'internal',
  'pool_timeout',
  'send_timeout',
  'idle_timeout',
  'idle_in_txn_timeout',
  'transaction_timeout',
  'tenant_suspended',
  'auth_expired',
  'staff_revoked',
  'staff_withdrawn',
  'transparency_lag',
  'audit_unavailable',
  'limit',
] as const;
export type CloseReason = (typeof CLOSE_REASONS)[number];

/** Where a login stood when it failed (audit `session.auth_failure.stage`). */
export type AuthStage = 'negotiation' | 'startup' | 'sasl_first' | 'sasl_final' | 'password' | 'backend_connect';

/** A staff session's token, as verified (auth/jwt.ts); no token bytes are kept. */
export interface StaffIdentity {
  readonly sub: string;
  readonly jti: string;
  readonly ticket: string;
  readonly access: 'read' | 'write';
  /** exp, in ms since the epoch: the session ends then (S9). */
  readonly expMs: number;
  /** staff_access = "on_request": when the customer's grant expires (ms since the epoch), as seen at login; else null. */
  readonly grantExpMs: number | null;
}

/** One row of the admin API's session list. */
export interface SessionView {
  readonly id: string;
  readonly tenant: string | null;
  readonly user: string | null;
  readonly database: string | null;
  readonly staff: { sub: string; ticket: string; access: string; jti: string; expires_at: string } | null;
  /** `via`: the load balancer that vouched for `addr` (PROXY protocol), or null. */
  readonly client: { addr: string; port: number; via: string | null };
  readonly tls: string | null;
  readonly started_at: string;
  readonly phase: string;
  readonly tx_status: string;
  readonly bytes_in: number;
  readonly bytes_out: number;
  readonly queries: number;
}

/** What the client hears as a session ends: an ErrorResponse (or a server's frame as sent), a plain close, or nothing. */
export type Notice = Buffer | 'end' | 'destroy' | 'end_soon' | 'none';

/** How a connection ended before its session started (debug log only; the records say more). */
export type PreauthEnd =
  'refused' | 'cancel' | 'admission_refused' | 'auth_failed' | 'client_aborted' | 'auth_timeout' | 'tls_failed' | 'upstream_failed' | 'error';
