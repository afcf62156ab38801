/**
 * PgError and the catalogue of errors pgwarden itself raises (SECURITY.md §3).
 * Messages marked PG are PostgreSQL's verbatim; the others are ours and stable (tests match them).
 * docs/errors.md mirrors this catalogue; test/unit/errors.test.ts keeps the two in step.
 */
import { encodeErrorResponse, encodeErrorResponseV2 } from './protocol/backend.js';
import { frontendMaxLength, Limits } from './protocol/codes.js';
import { FrameLengthError, FrameTypeError } from './protocol/frame-reader.js';

export const SQLSTATE = {
  PROTOCOL_VIOLATION: '08P01',
  CONNECTION_FAILURE: '08006',
  INVALID_AUTHORIZATION: '28000',
  INVALID_PASSWORD: '28P01',
  UNDEFINED_DATABASE: '3D000',
  INVALID_PARAMETER_VALUE: '22023',
  TOO_MANY_CONNECTIONS: '53300',
  ADMIN_SHUTDOWN: '57P01',
  CANNOT_CONNECT_NOW: '57P03',
  FEATURE_NOT_SUPPORTED: '0A000',
  QUERY_CANCELED: '57014',
  IDLE_SESSION_TIMEOUT: '57P05',
  IDLE_IN_TRANSACTION_TIMEOUT: '25P03',
  TRANSACTION_TIMEOUT: '25P04',
  INTERNAL_ERROR: 'XX000',
} as const;
export type SqlState = (typeof SQLSTATE)[keyof typeof SQLSTATE];

/** Bounded label for metrics and audit. */
export type ErrorKind = 'client' | 'auth' | 'limit' | 'upstream' | 'internal' | 'shutdown';

export class PgError extends Error {
  readonly sqlstate: SqlState;
  readonly kind: ErrorKind;
  readonly severity: 'ERROR' | 'FATAL';
  readonly detail: string | undefined;
  readonly hint: string | undefined;
  /** Internal reason for audit and logs; never sent to the client. */
  readonly reason: string;
  /** Sent in the protocol-2 format, to a client that asked for protocol 1.x or 2.x (N6). */
  readonly protocol2: boolean;

  constructor(
    sqlstate: SqlState,
    clientMessage: string,
    kind: ErrorKind,
    reason: string,
    extra?: { detail?: string; hint?: string; severity?: 'ERROR' | 'FATAL'; cause?: unknown; protocol2?: boolean },
  ) {
    super(clientMessage, extra?.cause === undefined ? undefined : { cause: extra.cause });
    this.sqlstate = sqlstate;
    this.kind = kind;
    this.reason = reason;
    this.severity = extra?.severity ?? 'FATAL';
    this.detail = extra?.detail;
    this.hint = extra?.hint;
    this.protocol2 = extra?.protocol2 ?? false;
  }

  /** The ErrorResponse frame exactly as the client will see it. */
  toFrame(): Buffer {
    if (this.protocol2) return encodeErrorResponseV2(this.severity, this.message);
    return encodeErrorResponse({
      severity: this.severity,
      code: this.sqlstate,
      message: this.message,
      detail: this.detail,
      hint: this.hint,
    });
  }
}

/** Printable ASCII only, at most 63 bytes (NAMEDATALEN - 1): attacker-supplied names in messages. */
export function sanitizeName(name: string): string {
  return name.replace(/[^\x20-\x7e]/g, '?').slice(0, 63);
}

const MITM_DETAIL = 'This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.';

/** The catalogue. Each factory's name says the situation; row ids refer to SECURITY.md §3. */
export const Errors = {
  /** N3 */
  dataAfterSslRequest: () =>
    new PgError(SQLSTATE.PROTOCOL_VIOLATION, 'received unencrypted data after SSL request', 'client', 'protocol_violation:data_after_sslrequest', {
      detail: MITM_DETAIL,
    }),
  /** N3, GSS variant */
  dataAfterGssRequest: () =>
    new PgError(
      SQLSTATE.PROTOCOL_VIOLATION,
      'received unencrypted data after GSSAPI encryption request',
      'client',
      'protocol_violation:data_after_gssencrequest',
      { detail: MITM_DETAIL },
    ),
  /** N5 */
  startupLayout: () =>
    new PgError(SQLSTATE.PROTOCOL_VIOLATION, 'invalid startup packet layout: expected terminator as last byte', 'client', 'protocol_violation:startup_layout'),
  /**
   * N6. Like PostgreSQL, in the protocol-2 format to a client that asked for 1.x or 2.x (any
   * version below 3.0 but 0.0, which PostgreSQL takes as "not known yet").
   */
  unsupportedProtocol: (major: number, minor: number) =>
    new PgError(
      SQLSTATE.FEATURE_NOT_SUPPORTED,
      `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.0`,
      'client',
      'protocol_violation:unsupported_version',
      { protocol2: major < 3 && (major !== 0 || minor !== 0) },
    ),
  /** N8 */
  noUser: () => new PgError(SQLSTATE.INVALID_AUTHORIZATION, 'no PostgreSQL user name specified in startup packet', 'client', 'protocol_violation:no_user'),
  /** N9 (value) */
  badReplicationValue: (value: string) =>
    new PgError(
      SQLSTATE.INVALID_PARAMETER_VALUE,
      `invalid value for parameter "replication": "${sanitizeName(value)}"`,
      'client',
      'protocol_violation:replication_value',
    ),
  /** N9 (replication) */
  replicationNotSupported: () =>
    new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'replication connections are not supported', 'client', 'protocol_violation:replication'),
  /** N9b: `options` holds something other than -c settings. */
  unsupportedOptions: () =>
    new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'only "-c name=value" settings are supported in the options parameter', 'client', 'protocol_violation:options'),
  /** N9c: a startup setting outside the allowlist (SECURITY.md rule 7). */
  settingNotAllowed: (name: string) =>
    new PgError(
      SQLSTATE.FEATURE_NOT_SUPPORTED,
      `parameter "${sanitizeName(name)}" cannot be set at connection time through pgwarden`,
      'client',
      'protocol_violation:setting_not_allowed',
    ),
  /** N9d */
  unknownPgwardenOption: (name: string) =>
    new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, `unrecognized pgwarden option "${sanitizeName(name)}"`, 'client', 'protocol_violation:options'),
  /** N11 */
  tooManyClients: () => new PgError(SQLSTATE.TOO_MANY_CONNECTIONS, 'sorry, too many clients already', 'limit', 'too_many_connections'),
  /** N12 */
  shuttingDown: () => new PgError(SQLSTATE.CANNOT_CONNECT_NOW, 'the database system is shutting down', 'shutdown', 'draining'),
  /** T1 */
  tlsRequired: () =>
    new PgError(SQLSTATE.INVALID_AUTHORIZATION, 'TLS connection is required', 'client', 'tls_required', { hint: 'Connect with sslmode=require or stronger.' }),
  /** T2 */
  /** T2; with server.tenant_in_user the HINT also names the user-name way, with its separator. */
  noTenant: (userSeparator?: string) =>
    new PgError(SQLSTATE.INVALID_AUTHORIZATION, 'no tenant specified in connection request', 'client', 'unknown_tenant', {
      hint:
        userSeparator === undefined
          ? 'Use the host name <tenant>.<suffix> with TLS (SNI), or options=-c pgwarden.tenant=<tenant>.'
          : `Use the host name <tenant>.<suffix> with TLS (SNI), options=-c pgwarden.tenant=<tenant>, or the user name <user>${userSeparator}<tenant>.`,
    }),
  /** T3 */
  inconsistentTenant: () =>
    new PgError(SQLSTATE.INVALID_AUTHORIZATION, 'inconsistent tenant identifiers in connection request', 'client', 'protocol_violation:tenant_mismatch'),
  /** T4 */
  invalidTenant: () => new PgError(SQLSTATE.INVALID_AUTHORIZATION, 'invalid tenant identifier', 'client', 'protocol_violation:tenant_syntax'),
  /** A1 */
  expectedSaslResponse: (type: number) =>
    new PgError(SQLSTATE.PROTOCOL_VIOLATION, `expected SASL response, got message type ${type}`, 'client', 'protocol_violation:expected_sasl'),
  /** A2 */
  expectedPasswordResponse: (type: number) =>
    new PgError(SQLSTATE.PROTOCOL_VIOLATION, `expected password response, got message type ${type}`, 'client', 'protocol_violation:expected_password'),
  /** A3 */
  invalidMechanism: () =>
    new PgError(SQLSTATE.PROTOCOL_VIOLATION, 'client selected an invalid SASL authentication mechanism', 'client', 'protocol_violation:sasl_mechanism'),
  /** A4 */
  malformedScram: (detail: string) =>
    new PgError(SQLSTATE.PROTOCOL_VIOLATION, 'malformed SCRAM message', 'client', 'protocol_violation:scram_malformed', { detail }),
  /** A5 */
  invalidScramResponse: (detail: string) =>
    new PgError(SQLSTATE.PROTOCOL_VIOLATION, 'invalid SCRAM response', 'client', 'protocol_violation:scram_nonce', { detail }),
  /** A5 (client-first): PostgreSQL's primary message, no DETAIL. */
  scramNonceNotPrintable: () => new PgError(SQLSTATE.PROTOCOL_VIOLATION, 'non-printable characters in SCRAM nonce', 'client', 'protocol_violation:scram_nonce'),
  /** A6 */
  scramAuthzid: () =>
    new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'client uses authorization identity, but it is not supported', 'client', 'protocol_violation:scram_authzid'),
  scramExtension: () =>
    new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'client requires an unsupported SCRAM extension', 'client', 'protocol_violation:scram_extension'),
  scramCbType: (type: string) =>
    new PgError(SQLSTATE.PROTOCOL_VIOLATION, `unsupported SCRAM channel-binding type "${sanitizeName(type)}"`, 'client', 'protocol_violation:scram_cb_type'),
  scramUnexpectedCb: () =>
    new PgError(
      SQLSTATE.PROTOCOL_VIOLATION,
      'unexpected SCRAM channel-binding attribute in client-final-message',
      'client',
      'protocol_violation:scram_cb_attr',
    ),
  /** A7: the one answer to every credential failure. */
  authFailed: (user: string, reason: string) =>
    new PgError(SQLSTATE.INVALID_PASSWORD, `password authentication failed for user "${sanitizeName(user)}"`, 'auth', reason),
  /** A8 */
  channelBindingNegotiation: () =>
    new PgError(SQLSTATE.INVALID_AUTHORIZATION, 'SCRAM channel binding negotiation error', 'auth', 'channel_binding_downgrade', {
      detail: 'The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.',
    }),
  /** A9 */
  channelBindingFailed: () => new PgError(SQLSTATE.INVALID_AUTHORIZATION, 'SCRAM channel binding check failed', 'auth', 'channel_binding_mismatch'),
  /** A10, S3 */
  invalidLength: (reason = 'protocol_violation:length') => new PgError(SQLSTATE.PROTOCOL_VIOLATION, 'invalid message length', 'client', reason),
  /** A11 */
  authTimeout: () => new PgError(SQLSTATE.CONNECTION_FAILURE, 'authentication timed out', 'client', 'auth_timeout'),
  /** A12: authentication throttled, or the tenant's connection rate exceeded; the same for any user. */
  tooManyAttempts: (reason: 'rate_limited' | 'auth_throttled' | 'auth_query_throttled') =>
    new PgError(SQLSTATE.TOO_MANY_CONNECTIONS, 'too many connection attempts, please try again later', 'limit', reason),
  /** S1 (per-user cap) */
  tooManyConnectionsForRole: (role: string) =>
    new PgError(SQLSTATE.TOO_MANY_CONNECTIONS, `too many connections for role "${sanitizeName(role)}"`, 'limit', 'too_many_connections'),
  /** S3b: a client message over the tenant's max_message_bytes. */
  messageTooLarge: () => new PgError(SQLSTATE.PROTOCOL_VIOLATION, 'invalid message length', 'limit', 'max_message_bytes'),
  /** S6 */
  idleSessionTimeout: () => new PgError(SQLSTATE.IDLE_SESSION_TIMEOUT, 'terminating connection due to idle-session timeout', 'limit', 'idle_timeout'),
  /** S7 */
  idleInTransactionTimeout: () =>
    new PgError(SQLSTATE.IDLE_IN_TRANSACTION_TIMEOUT, 'terminating connection due to idle-in-transaction timeout', 'limit', 'idle_in_txn_timeout'),
  /** S7 (transaction) */
  transactionTimeout: () => new PgError(SQLSTATE.TRANSACTION_TIMEOUT, 'terminating connection due to transaction timeout', 'limit', 'transaction_timeout'),
  /** S8b: an operator suspended the tenant; its sessions end (new ones fail as a disabled tenant, T5). */
  tenantSuspended: () => new PgError(SQLSTATE.ADMIN_SHUTDOWN, 'terminating connection due to administrator command', 'shutdown', 'tenant_suspended'),
  /** S1b: a database outside the tenant's `databases` list, in PostgreSQL's words. */
  undefinedDatabase: (database: string) =>
    new PgError(SQLSTATE.UNDEFINED_DATABASE, `database "${sanitizeName(database)}" does not exist`, 'client', 'database_not_allowed'),
  /** S1 */
  tooManyConnectionsForDatabase: (database: string) =>
    new PgError(SQLSTATE.TOO_MANY_CONNECTIONS, `too many connections for database "${sanitizeName(database)}"`, 'limit', 'too_many_connections'),
  /** P1: no backend became free within pool_timeout. */
  poolTimeout: () => new PgError(SQLSTATE.TOO_MANY_CONNECTIONS, 'no backend connection available within pool_timeout', 'limit', 'pool_timeout'),
  /** S2 */
  invalidFrontendType: (type: number) =>
    new PgError(SQLSTATE.PROTOCOL_VIOLATION, `invalid frontend message type ${type}`, 'client', 'protocol_violation:message_type'),
  /**
   * S4, in the words of PostgreSQL's message readers (libpq/pqformat.c): fields that do not add
   * up, a length past the end ("insufficient data left in message"), a string without its NUL
   * ("invalid string in message").
   */
  invalidFormat: (message = 'invalid message format') => new PgError(SQLSTATE.PROTOCOL_VIOLATION, message, 'client', 'protocol_violation:message_format'),
  /** S8 */
  adminShutdown: (reason: string) => new PgError(SQLSTATE.ADMIN_SHUTDOWN, 'terminating connection due to administrator command', 'shutdown', reason),
  /** S10 */
  auditUnavailable: () => new PgError(SQLSTATE.CANNOT_CONNECT_NOW, 'audit log is unavailable, not accepting connections', 'internal', 'audit_unavailable'),
  /** S10: a fail-closed session whose statement could not be audited (the statement did not run). */
  auditUnavailableSession: () =>
    new PgError(SQLSTATE.ADMIN_SHUTDOWN, 'terminating connection because the audit log is unavailable', 'internal', 'audit_unavailable'),
  /** S9 */
  staffAccessExpired: () => new PgError(SQLSTATE.ADMIN_SHUTDOWN, 'terminating connection because staff access expired', 'auth', 'auth_expired'),
  /** S9's sibling (issue 17): the customer withdrew the grant, or it expired, during the session. */
  staffAccessWithdrawn: () => new PgError(SQLSTATE.ADMIN_SHUTDOWN, 'terminating connection because staff access was withdrawn', 'auth', 'staff_withdrawn'),
  /** Issue 17: the staff session's records have not reached the customer's staff_access_log within transparency_max_lag. */
  transparencyLagging: () =>
    new PgError(SQLSTATE.ADMIN_SHUTDOWN, "terminating connection because the customer's access log is unavailable", 'shutdown', 'transparency_lag'),
  /** S11 */
  internal: () => new PgError(SQLSTATE.INTERNAL_ERROR, 'internal error', 'internal', 'internal'),
  /** R2, R3 */
  upstreamConnect: (reason: string, cause?: unknown) =>
    new PgError(SQLSTATE.CONNECTION_FAILURE, 'could not connect to the tenant database', 'upstream', reason, { cause }),
  /** R4 */
  upstreamLost: () => new PgError(SQLSTATE.CONNECTION_FAILURE, 'connection to the tenant database was lost', 'upstream', 'backend_lost'),
} as const;

/** Where a client frame was refused by the frame reader: the SASL or password exchange, or the relay. */
export type FrameContext = 'sasl' | 'password' | 'relay';

/**
 * The one mapping from a frame the reader refused (bad type, bad length) to what the client
 * hears, as PostgreSQL words it in each place: "expected SASL response, got message type N" in
 * the SASL exchange, "invalid frontend message type N" after login; a length over the tenant's
 * max_message_bytes but within what any message may be is the limit (reason max_message_bytes).
 * Anything that is not a frame error is returned unchanged for the caller to rethrow.
 */
export function frameError(err: unknown, context: FrameContext): unknown {
  if (err instanceof FrameTypeError) {
    if (context === 'sasl') return Errors.expectedSaslResponse(err.type);
    if (context === 'password') return Errors.expectedPasswordResponse(err.type);
    return Errors.invalidFrontendType(err.type);
  }
  if (err instanceof FrameLengthError) {
    if (context !== 'relay') return Errors.invalidLength('protocol_violation:auth_length');
    if (err.declared >= 4 && err.declared <= frontendMaxLength(err.type, Limits.largeMessageBytes)) return Errors.messageTooLarge();
    return Errors.invalidLength();
  }
  return err;
}
