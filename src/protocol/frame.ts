/**
 * The one frame builder: a type byte, an Int32 length that counts itself, then the body. Every
 * typed message pgwarden builds, in either direction, goes through here; protocol/ only.
 * @see https://www.postgresql.org/docs/current/protocol-overview.html#PROTOCOL-MESSAGE-CONCEPTS
 */

/** Frame header bytes: type (1) + length (4). */
export const HEADER_BYTES = 5;

/** A frame whose body is written by the caller at offset 5 (`Buffer.allocUnsafe`: every byte must be written). */
export function allocFrame(type: number, bodyLength: number): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + bodyLength);
  out[0] = type;
  out.writeUInt32BE(4 + bodyLength, 1);
  return out;
}

/** A frame of `type` whose body is the parts, in order. */
export function encodeFrame(type: number, ...parts: readonly Buffer[]): Buffer {
  let len = 0;
  for (const p of parts) len += p.length;
  const out = allocFrame(type, len);
  let pos = HEADER_BYTES;
  for (const p of parts) pos += p.copy(out, pos);
  return out;
}

/** A NUL-terminated UTF-8 string, as the protocol's String type. */
export function cstring(s: string): Buffer {
  return Buffer.from(`${s}\0`, 'utf8');
}

/**
 * Writes `s` as a String (UTF-8, then NUL) into `out` at `pos`; returns the position after the NUL.
 * For encoders that size the frame with `Buffer.byteLength(s) + 1` and write in place, without a
 * temporary buffer per string.
 */
export function writeCString(out: Buffer, pos: number, s: string): number {
  const end = pos + out.write(s, pos, 'utf8');
  out[end] = 0;
  return end + 1;
}
