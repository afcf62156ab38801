/**
 * Step 3, authentication, behind one interface: each authenticator runs its exchange with the
 * client up to (not including) AuthenticationOk and says who logged in, or throws. SCRAM takes
 * its verifiers from a pluggable source (the config today; the tenant's own server next).
 */
import type { PgError } from '../../errors.js';
import type { ScramVerifier } from '../../auth/scram.js';
import type { StaffClaims } from '../../auth/jwt.js';
import type { ClientConn } from '../client-conn.js';
import type { AuthStage, StaffIdentity } from '../types.js';
import type { LoginPlan } from './admission.js';

/** Who logged in, and what the greeting must still say. */
export type Authenticated =
  | { readonly kind: 'scram'; readonly serverFinal: Buffer; readonly clientKey: Buffer; readonly verifier: ScramVerifier; readonly channelBinding: boolean }
  | { readonly kind: 'staff'; readonly identity: StaffIdentity; readonly claims: StaffClaims };

/** A refused login: the same 28P01 (or protocol error) as PostgreSQL's, the reason in the audit only. */
export class AuthFailure extends Error {
  constructor(
    readonly error: PgError,
    readonly stage: AuthStage,
  ) {
    super(error.message);
  }
}

/** Where a login stands, shared with the session (for an abort's audit record and its phase). */
export interface LoginProgress {
  stage: AuthStage;
  /** The client's part is done: what follows waits on pgwarden (the session stops reading meanwhile). */
  readonly clientDone: () => void;
}

export interface Authenticator {
  /** `negotiate`: a NegotiateProtocolVersion to send before the first authentication request. */
  authenticate(conn: ClientConn, plan: LoginPlan, negotiate: Buffer | null, progress: LoginProgress): Promise<Authenticated>;
}

/**
 * The verifier a login is checked against, and why it must fail even with a right proof (null
 * for a real user): the plan's reason, or one a lookup found (auth_query: expired, MD5, unknown).
 */
export interface VerifierChoice {
  readonly verifier: ScramVerifier;
  readonly failReason: string | null;
}

/** Where SCRAM verifiers come from. An unknown user or tenant gets a mock verifier, never "no". */
export interface VerifierSource {
  /** May throw a PgError when the source cannot answer (the tenant's server is down: 08006). */
  verifierFor(plan: LoginPlan): Promise<VerifierChoice>;
  /** The client's proof did not match a real verifier (a looked-up one may be stale). */
  proofFailed(plan: LoginPlan, choice: VerifierChoice): void;
}

/** A refusal whose own record could not be written (the audit is down): only the client hears it. */
export class Unaudited extends Error {
  constructor(readonly error: PgError) {
    super(error.message);
  }
}
