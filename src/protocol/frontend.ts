/**
 * Decoders for what clients send (F messages). Bytes in, plain values out; every decoder
 * throws ProtocolFormatError on a malformed body and never trusts a declared count or length.
 * Policy (which parameters are allowed, what a mechanism means) is left to the callers.
 */
import { DescribeTarget, Frontend, RequestCode } from './codes.js';
import { allocFrame, cstring, encodeFrame, HEADER_BYTES, writeCString } from './frame.js';

/** The body does not have the layout its type requires. `detail` is PostgreSQL-like text. */
export class ProtocolFormatError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

export type FirstMessage =
  | { kind: 'ssl_request' }
  | { kind: 'gssenc_request' }
  | { kind: 'cancel'; processId: number; secretKey: Buffer }
  | { kind: 'startup'; major: number; minor: number; params: Map<string, string>; unknownProtocolOptions: string[] }
  | { kind: 'unsupported_version'; major: number; minor: number };

/** Decodes the untyped first message's body (after the length word). */
export function decodeFirstMessage(body: Buffer): FirstMessage {
  const code = body.readUInt32BE(0);
  // PostgreSQL goes by the code alone: bytes after it inside the packet are read and ignored.
  if (code === RequestCode.SSLRequest) return { kind: 'ssl_request' };
  if (code === RequestCode.GSSENCRequest) return { kind: 'gssenc_request' };
  if (code === RequestCode.CancelRequest) {
    // Protocol 3.0 keys are 4 bytes; 3.2 allows up to 256. We accept both shapes.
    if (body.length < 12 || body.length > 8 + 256) {
      throw new ProtocolFormatError('invalid cancel request', 'cancel_length');
    }
    return { kind: 'cancel', processId: body.readUInt32BE(4), secretKey: Buffer.from(body.subarray(8)) };
  }
  const major = code >>> 16;
  const minor = code & 0xffff;
  if (major !== 3) return { kind: 'unsupported_version', major, minor };
  const { params, unknownProtocolOptions } = decodeStartupParams(body.subarray(4));
  return { kind: 'startup', major, minor, params, unknownProtocolOptions };
}

/**
 * Startup parameters: name\0value\0 … \0. Later duplicates win, as in PostgreSQL.
 * `_pq_.*` names are protocol options, reported separately and never returned as params.
 */
export function decodeStartupParams(buf: Buffer): { params: Map<string, string>; unknownProtocolOptions: string[] } {
  if (buf.length === 0 || buf[buf.length - 1] !== 0) {
    throw new ProtocolFormatError('invalid startup packet layout: expected terminator as last byte', 'startup_layout');
  }
  const params = new Map<string, string>();
  const unknownProtocolOptions: string[] = [];
  let pos = 0;
  const end = buf.length - 1;
  while (pos < end) {
    const nameEnd = buf.indexOf(0, pos);
    // An empty name ends the list, as in PostgreSQL; it must then be the last byte (checked below).
    if (nameEnd === pos) break;
    if (nameEnd < 0 || nameEnd >= end) {
      throw new ProtocolFormatError('invalid startup packet layout: expected terminator as last byte', 'startup_layout');
    }
    const name = buf.toString('utf8', pos, nameEnd);
    const valueEnd = buf.indexOf(0, nameEnd + 1);
    if (valueEnd < 0 || valueEnd > end) {
      throw new ProtocolFormatError('invalid startup packet layout: expected terminator as last byte', 'startup_layout');
    }
    const value = buf.toString('utf8', nameEnd + 1, valueEnd);
    if (name.startsWith('_pq_.')) unknownProtocolOptions.push(name);
    else params.set(name, value);
    pos = valueEnd + 1;
  }
  if (pos !== end) {
    throw new ProtocolFormatError('invalid startup packet layout: expected terminator as last byte', 'startup_layout');
  }
  return { params, unknownProtocolOptions };
}

/**
 * A SASLInitialResponse whose layout is broken. `mechanism` is the name read before the fault
 * (null when it has no NUL): PostgreSQL checks the mechanism as soon as it has read it, so a
 * mechanism not offered is that error, whatever follows.
 */
export class SASLInitialResponseError extends ProtocolFormatError {
  constructor(
    message: string,
    readonly mechanism: string | null,
  ) {
    super(message, 'sasl_initial_layout');
  }
}

/**
 * SASLInitialResponse: mechanism\0, Int32 length (-1 = none), data. The error messages are
 * PostgreSQL's, in the order its pq_getmsgrawstring, pq_getmsgint, pq_getmsgbytes and pq_getmsgend
 * find them (CheckSASLAuth in libpq/auth-sasl.c).
 */
export function decodeSASLInitialResponse(body: Buffer): { mechanism: string; data: Buffer | null } {
  const nul = body.indexOf(0);
  if (nul < 0) throw new SASLInitialResponseError('invalid string in message', null);
  const mechanism = body.toString('utf8', 0, nul);
  if (body.length < nul + 5) throw new SASLInitialResponseError('insufficient data left in message', mechanism);
  const len = body.readInt32BE(nul + 1);
  const rest = body.length - (nul + 5);
  if (len < -1 || len > rest) throw new SASLInitialResponseError('insufficient data left in message', mechanism);
  if (len === -1 ? rest !== 0 : len !== rest) throw new SASLInitialResponseError('invalid message format', mechanism);
  return { mechanism, data: len === -1 ? null : body.subarray(nul + 5) };
}

/** PasswordMessage: one NUL-terminated string filling the body. */
export function decodePasswordMessage(body: Buffer): Buffer {
  const nul = body.indexOf(0);
  if (nul !== body.length - 1) throw new ProtocolFormatError('invalid message format', 'password_layout');
  return body.subarray(0, nul);
}

/** Encodes a startup message (no type byte) for the upstream login; pg-protocol's forces client_encoding. */
export function encodeStartupMessage(params: ReadonlyMap<string, string>): Buffer {
  let size = 4 + 4 + 1;
  for (const [k, v] of params) size += Buffer.byteLength(k) + 1 + Buffer.byteLength(v) + 1;
  const out = Buffer.alloc(size);
  out.writeUInt32BE(size, 0);
  out.writeUInt32BE(RequestCode.Protocol3, 4);
  let pos = 8;
  for (const [k, v] of params) {
    pos += out.write(k, pos, 'utf8') + 1;
    pos += out.write(v, pos, 'utf8') + 1;
  }
  return out;
}

/** CancelRequest for the upstream, with its own key. */
export function encodeCancelRequest(processId: number, secretKey: Buffer): Buffer {
  const out = Buffer.alloc(12 + secretKey.length);
  out.writeUInt32BE(out.length, 0);
  out.writeUInt32BE(RequestCode.CancelRequest, 4);
  out.writeUInt32BE(processId >>> 0, 8);
  secretKey.copy(out, 12);
  return out;
}

export const SSL_REQUEST: Buffer = (() => {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(8, 0);
  b.writeUInt32BE(RequestCode.SSLRequest, 4);
  return b;
})();

/** Terminate: the client's (or pgwarden's, to a backend) last message. */
export const TERMINATE: Buffer = encodeFrame(Frontend.Terminate);

/** A simple Query message. */
export function encodeQuery(sql: string): Buffer {
  return encodeFrame(Frontend.Query, cstring(sql));
}

/** What a pooled backend runs before another client may have it. */
export const DISCARD_ALL: Buffer = encodeQuery('DISCARD ALL');

/**
 * What the first 8 bytes of a connection say it is, without waiting for the rest: an 8-byte
 * SSLRequest or GSSENCRequest, a 16-byte CancelRequest, or anything else. null until 8 bytes
 * are here. For refusing a connection cheaply (the pre-auth cap), not for serving it.
 */
export function peekFirstMessage(head: Buffer): 'ssl_request' | 'gssenc_request' | 'cancel' | 'other' | null {
  if (head.length < 8) return null;
  const length = head.readUInt32BE(0);
  const code = head.readUInt32BE(4);
  // PostgreSQL goes by the code alone (decodeFirstMessage too): a longer SSLRequest is still one.
  if (length >= 8 && code === RequestCode.SSLRequest) return 'ssl_request';
  if (length >= 8 && code === RequestCode.GSSENCRequest) return 'gssenc_request';
  if (length === 16 && code === RequestCode.CancelRequest) return 'cancel';
  return 'other';
}

// ------------------------------------------------------------ extended query, for statement renaming
// Transaction mode renames a client's named statements (session/relay/tx-statements.ts). These decoders
// do not throw: a message they cannot read is forwarded as it is and the server judges it. The
// encoders size the frame first and write in place (one allocation per frame, on the relay path).

/** Parse (name\0, then the definition: query\0, Int16 count, Int32 types): null for the unnamed statement or no name terminator. */
export function decodeParseName(body: Buffer): { name: string; definition: Buffer } | null {
  const nameEnd = body.indexOf(0);
  if (nameEnd <= 0) return null;
  return { name: body.toString('utf8', 0, nameEnd), definition: body.subarray(nameEnd + 1) };
}

/** Bind (portal\0, statement\0, …): the statement name; null for the unnamed statement or a malformed body. */
export function decodeBindStatementName(body: Buffer): string | null {
  const portalEnd = body.indexOf(0);
  const nameEnd = portalEnd < 0 ? -1 : body.indexOf(0, portalEnd + 1);
  if (nameEnd < 0 || nameEnd === portalEnd + 1) return null;
  return body.toString('utf8', portalEnd + 1, nameEnd);
}

/** Describe or Close ('S' or 'P', name\0): the statement name; null for a portal, the unnamed statement or a short body. */
export function decodeStatementTarget(body: Buffer): string | null {
  if (body[0] !== DescribeTarget.Statement || body.length < 3) return null;
  return body.toString('utf8', 1, body.length - 1);
}

/** Parse of statement `name` with a definition as received (query\0, Int16 count, Int32 types). */
export function encodeParse(name: string, definition: Buffer): Buffer {
  const out = allocFrame(Frontend.Parse, Buffer.byteLength(name) + 1 + definition.length);
  definition.copy(out, writeCString(out, HEADER_BYTES, name));
  return out;
}

/** A client's Bind body with its statement name replaced by `statement` (the body must decode with decodeBindStatementName). */
export function encodeBindWithStatement(body: Buffer, statement: string): Buffer {
  const portalEnd = body.indexOf(0);
  const nameEnd = body.indexOf(0, portalEnd + 1);
  const out = allocFrame(Frontend.Bind, portalEnd + 1 + Buffer.byteLength(statement) + 1 + (body.length - nameEnd - 1));
  body.copy(out, HEADER_BYTES, 0, portalEnd + 1);
  body.copy(out, writeCString(out, HEADER_BYTES + portalEnd + 1, statement), nameEnd + 1);
  return out;
}

/** Describe of prepared statement `name`. */
export function encodeDescribeStatement(name: string): Buffer {
  return encodeStatementTarget(Frontend.Describe, name);
}

/** Close of prepared statement `name`. */
export function encodeCloseStatement(name: string): Buffer {
  return encodeStatementTarget(Frontend.Close, name);
}

function encodeStatementTarget(type: number, name: string): Buffer {
  const out = allocFrame(type, 1 + Buffer.byteLength(name) + 1);
  out[HEADER_BYTES] = DescribeTarget.Statement;
  writeCString(out, HEADER_BYTES + 1, name);
  return out;
}
