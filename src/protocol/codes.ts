/**
 * Wire-protocol constants: message type bytes, special request codes and limits.
 * Owns numbers only; the meaning of errors lives in ../errors.ts.
 * @see https://www.postgresql.org/docs/current/protocol-message-formats.html
 */

/** Type bytes of messages a client (frontend) sends. */
export const Frontend = {
  Bind: 0x42 /* B */,
  Close: 0x43 /* C */,
  Describe: 0x44 /* D */,
  Execute: 0x45 /* E */,
  FunctionCall: 0x46 /* F */,
  Flush: 0x48 /* H */,
  Parse: 0x50 /* P */,
  Query: 0x51 /* Q */,
  Sync: 0x53 /* S */,
  Terminate: 0x58 /* X */,
  CopyDone: 0x63 /* c */,
  CopyData: 0x64 /* d */,
  CopyFail: 0x66 /* f */,
  /** PasswordMessage, SASLInitialResponse and SASLResponse share 'p'. */
  Password: 0x70 /* p */,
} as const;

/** Type bytes of messages a server (backend) sends. */
export const Backend = {
  ParseComplete: 0x31 /* 1 */,
  BindComplete: 0x32 /* 2 */,
  CloseComplete: 0x33 /* 3 */,
  NotificationResponse: 0x41 /* A */,
  CommandComplete: 0x43 /* C */,
  DataRow: 0x44 /* D */,
  ErrorResponse: 0x45 /* E */,
  CopyInResponse: 0x47 /* G */,
  CopyOutResponse: 0x48 /* H */,
  EmptyQueryResponse: 0x49 /* I */,
  BackendKeyData: 0x4b /* K */,
  NoticeResponse: 0x4e /* N */,
  Authentication: 0x52 /* R */,
  ParameterStatus: 0x53 /* S */,
  RowDescription: 0x54 /* T */,
  FunctionCallResponse: 0x56 /* V */,
  CopyBothResponse: 0x57 /* W */,
  ReadyForQuery: 0x5a /* Z */,
  CopyDone: 0x63 /* c */,
  CopyData: 0x64 /* d */,
  NoData: 0x6e /* n */,
  PortalSuspended: 0x73 /* s */,
  ParameterDescription: 0x74 /* t */,
  NegotiateProtocolVersion: 0x76 /* v */,
} as const;

/** Authentication request codes inside an 'R' message. */
export const AuthCode = {
  Ok: 0,
  CleartextPassword: 3,
  MD5Password: 5,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
} as const;

/** Codes in the version field of the untyped first message. */
export const RequestCode = {
  /** Protocol 3.0: major 3 in the high 16 bits. */
  Protocol3: 196608,
  CancelRequest: 80877102,
  SSLRequest: 80877103,
  GSSENCRequest: 80877104,
} as const;

/**
 * The newest protocol pgwarden speaks, as a whole version number (major << 16 | minor): 3.0.
 * NegotiateProtocolVersion carries it whole, as PostgreSQL's PG_PROTOCOL_LATEST (196608).
 */
export const PROTOCOL_LATEST = RequestCode.Protocol3;

/** Size limits, PostgreSQL's where it has one (src/include/libpq/pqcomm.h, libpq/auth.c). */
export const Limits = {
  /**
   * MAX_STARTUP_PACKET_LENGTH: the body of a startup packet, its length word not counted (a
   * length field of 10,004 is accepted, 10,005 refused). FrameReader.nextUntyped applies it so.
   */
  startupBytes: 10_000,
  /** PG_MAX_AUTH_TOKEN_LENGTH for SASL messages. */
  saslBytes: 1_024,
  /** Password or staff token. */
  passwordBytes: 65_535,
  /** PQ_SMALL_MESSAGE_LIMIT: messages that carry no user payload. */
  smallMessageBytes: 10_000,
  /** PQ_LARGE_MESSAGE_LIMIT (MaxAllocSize - 1). */
  largeMessageBytes: 0x3fffffff - 1,
  /** What we accept from a tenant's server while logging in (it is untrusted). */
  upstreamLoginMessageBytes: 64 * 1024,
} as const;

/** Field codes inside ErrorResponse and NoticeResponse. @see https://www.postgresql.org/docs/current/protocol-error-fields.html */
export const ErrorField = {
  Severity: 0x53 /* S */,
  /** The severity, never localized (PostgreSQL 9.6+). */
  SeverityNonLocalized: 0x56 /* V */,
  Code: 0x43 /* C */,
  Message: 0x4d /* M */,
} as const;

/** What a Describe or Close names: a prepared statement or a portal. */
export const DescribeTarget = { Statement: 0x53 /* S */, Portal: 0x50 /* P */ } as const;

/** Transaction status byte of ReadyForQuery. */
export const TxStatus = { Idle: 0x49 /* I */, InTransaction: 0x54 /* T */, Failed: 0x45 /* E */ } as const;
export type TxStatusByte = (typeof TxStatus)[keyof typeof TxStatus];

/**
 * Frontend message types valid after authentication, each with its length cap, as
 * PostgreSQL's SocketBackend() sets them. Anything absent is "invalid frontend message type".
 */
export function frontendMaxLength(type: number, largeLimit: number): number {
  switch (type) {
    case Frontend.Query:
    case Frontend.FunctionCall:
    case Frontend.Bind:
    case Frontend.Parse:
    case Frontend.CopyData:
      return largeLimit;
    case Frontend.Close:
    case Frontend.Describe:
    case Frontend.Execute:
    case Frontend.Flush:
    case Frontend.Sync:
    case Frontend.Terminate:
    case Frontend.CopyDone:
    case Frontend.CopyFail:
      return Limits.smallMessageBytes;
    default:
      return -1;
  }
}
