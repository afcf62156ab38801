/**
 * Encoders for what pgwarden sends to clients (B messages), and the few decoders of
 * upstream replies that a decision needs. Constant frames are built once.
 * @see https://www.postgresql.org/docs/current/protocol-message-formats.html
 */
import { AuthCode, Backend, PROTOCOL_LATEST, TxStatus, type TxStatusByte } from './codes.js';
import { allocFrame as frame, encodeFrame } from './frame.js';

function authFrame(code: number, extra: Buffer | null): Buffer {
  const extraLen = extra === null ? 0 : extra.length;
  const out = frame(Backend.Authentication, 4 + extraLen);
  out.writeUInt32BE(code, 5);
  if (extra !== null) extra.copy(out, 9);
  return out;
}

export const AUTHENTICATION_OK: Buffer = authFrame(AuthCode.Ok, null);
export const AUTHENTICATION_CLEARTEXT_PASSWORD: Buffer = authFrame(AuthCode.CleartextPassword, null);
export const SSL_ACCEPTED: Buffer = Buffer.from('S');
export const SSL_REFUSED: Buffer = Buffer.from('N');
export const READY_FOR_QUERY_IDLE: Buffer = encodeReadyForQuery(TxStatus.Idle);
/** ParseComplete and CloseComplete: what pgwarden answers in the server's place in transaction mode. */
export const PARSE_COMPLETE: Buffer = frame(Backend.ParseComplete, 0);
export const CLOSE_COMPLETE: Buffer = frame(Backend.CloseComplete, 0);

/** AuthenticationSASL with the mechanisms in preference order. */
export function encodeAuthenticationSASL(mechanisms: readonly string[]): Buffer {
  const parts = mechanisms.map((m) => Buffer.from(`${m}\0`, 'utf8'));
  parts.push(Buffer.from([0]));
  return authFrame(AuthCode.SASL, Buffer.concat(parts));
}

export function encodeAuthenticationSASLContinue(data: Buffer): Buffer {
  return authFrame(AuthCode.SASLContinue, data);
}

export function encodeAuthenticationSASLFinal(data: Buffer): Buffer {
  return authFrame(AuthCode.SASLFinal, data);
}

export function encodeReadyForQuery(status: TxStatusByte): Buffer {
  const out = frame(Backend.ReadyForQuery, 1);
  out[5] = status;
  return out;
}

export function encodeBackendKeyData(processId: number, secretKey: Buffer): Buffer {
  const out = frame(Backend.BackendKeyData, 4 + secretKey.length);
  out.writeUInt32BE(processId >>> 0, 5);
  secretKey.copy(out, 9);
  return out;
}

export function encodeParameterStatus(name: string, value: string): Buffer {
  const n = Buffer.byteLength(name);
  const v = Buffer.byteLength(value);
  const out = frame(Backend.ParameterStatus, n + 1 + v + 1);
  out.write(name, 5, 'utf8');
  out[5 + n] = 0;
  out.write(value, 6 + n, 'utf8');
  out[6 + n + v] = 0;
  return out;
}

/**
 * NegotiateProtocolVersion: the newest version we support, as a whole protocol number (3.0 is
 * 196608, as PostgreSQL sends it; libpq reads 0 as "the server supports up to 0.0"), and the
 * options we did not recognise.
 */
export function encodeNegotiateProtocolVersion(unrecognised: readonly string[]): Buffer {
  const names = unrecognised.map((o) => Buffer.from(`${o}\0`, 'utf8'));
  const body = Buffer.concat([Buffer.alloc(8), ...names]);
  body.writeUInt32BE(PROTOCOL_LATEST, 0);
  body.writeUInt32BE(unrecognised.length, 4);
  const out = frame(Backend.NegotiateProtocolVersion, body.length);
  body.copy(out, 5);
  return out;
}

export interface ErrorFields {
  severity: 'ERROR' | 'FATAL';
  code: string;
  message: string;
  detail?: string | undefined;
  hint?: string | undefined;
}

/** ErrorResponse with S, V, C, M and optional D, H fields. */
export function encodeErrorResponse(f: ErrorFields): Buffer {
  const parts: string[] = [`S${f.severity}`, `V${f.severity}`, `C${f.code}`, `M${f.message}`];
  if (f.detail !== undefined) parts.push(`D${f.detail}`);
  if (f.hint !== undefined) parts.push(`H${f.hint}`);
  const body = Buffer.from(`${parts.join('\0')}\0\0`, 'utf8');
  const out = frame(Backend.ErrorResponse, body.length);
  body.copy(out, 5);
  return out;
}

/**
 * The protocol-2 ErrorResponse: 'E' and one NUL-terminated text "SEVERITY:  message\n", no length
 * word. PostgreSQL still answers a client that asks for protocol 1.x or 2.x this way, to refuse it
 * in words the client can read (send_message_to_frontend in utils/error/elog.c).
 */
export function encodeErrorResponseV2(severity: 'ERROR' | 'FATAL', message: string): Buffer {
  return Buffer.from(`E${severity}:  ${message}\n\0`, 'utf8');
}

/**
 * An ErrorResponse frame around a body a server sent (fields as received, byte for byte: upstream
 * errors pass through unchanged). The body is copied: the frame may outlive the chunk.
 */
export function encodeErrorResponseBody(body: Buffer): Buffer {
  return encodeFrame(Backend.ErrorResponse, body);
}

/**
 * Reads one field (by its code letter) of an ErrorResponse or NoticeResponse body.
 * Tolerates a hostile body: missing terminators end the scan, nothing is read past the end.
 */
export function readErrorField(body: Buffer, field: number): string | undefined {
  let pos = 0;
  while (pos < body.length) {
    const code = body[pos]!;
    if (code === 0) return undefined;
    const end = body.indexOf(0, pos + 1);
    if (end < 0) return undefined;
    if (code === field) return body.toString('utf8', pos + 1, end);
    pos = end + 1;
  }
  return undefined;
}

/** Decodes ParameterStatus body into name and value; null if malformed. */
export function decodeParameterStatus(body: Buffer): { name: string; value: string } | null {
  const a = body.indexOf(0);
  if (a < 0) return null;
  const b = body.indexOf(0, a + 1);
  if (b !== body.length - 1) return null;
  return { name: body.toString('utf8', 0, a), value: body.toString('utf8', a + 1, b) };
}

/**
 * What a client receives once logged in, in order: AuthenticationSASLFinal (SCRAM), AuthenticationOk,
 * ParameterStatus for each parameter, BackendKeyData, ReadyForQuery. The caller writes it as one batch.
 */
export function encodeGreeting(g: {
  readonly saslFinal: Buffer | null;
  readonly parameters: ReadonlyMap<string, string>;
  readonly processId: number;
  readonly secretKey: Buffer;
  readonly txStatus: TxStatusByte;
}): Buffer {
  const params = parameterStatusBlock(g.parameters);
  const sasl = g.saslFinal === null ? 0 : 9 + g.saslFinal.length;
  const keyData = 9 + g.secretKey.length;
  const out = Buffer.allocUnsafe(sasl + AUTHENTICATION_OK.length + params.length + keyData + READY_FOR_QUERY_IDLE.length);
  let pos = 0;
  if (g.saslFinal !== null) {
    out[0] = Backend.Authentication;
    out.writeUInt32BE(8 + g.saslFinal.length, 1);
    out.writeUInt32BE(AuthCode.SASLFinal, 5);
    pos = 9 + g.saslFinal.copy(out, 9);
  }
  pos += AUTHENTICATION_OK.copy(out, pos);
  pos += params.copy(out, pos);
  out[pos] = Backend.BackendKeyData;
  out.writeUInt32BE(8 + g.secretKey.length, pos + 1);
  out.writeUInt32BE(g.processId >>> 0, pos + 5);
  pos += 9 + g.secretKey.copy(out, pos + 9);
  out[pos] = Backend.ReadyForQuery;
  out.writeUInt32BE(5, pos + 1);
  out[pos + 5] = g.txStatus;
  return out;
}

/**
 * The ParameterStatus frames of a parameter map, encoded once per map: every client of a pool key
 * is shown the same map object, so a login copies one block instead of encoding a frame per name.
 */
const PARAMETER_BLOCKS = new WeakMap<ReadonlyMap<string, string>, Buffer>();

function parameterStatusBlock(parameters: ReadonlyMap<string, string>): Buffer {
  let block = PARAMETER_BLOCKS.get(parameters);
  if (block === undefined) {
    const frames: Buffer[] = [];
    for (const [name, value] of parameters) frames.push(encodeParameterStatus(name, value));
    block = Buffer.concat(frames);
    PARAMETER_BLOCKS.set(parameters, block);
  }
  return block;
}
