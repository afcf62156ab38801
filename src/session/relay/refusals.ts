/**
 * Statements pgwarden refuses by letting the server refuse them: the statement is replaced by one
 * that raises the error on the server, so the server itself reports it and sets the transaction
 * status, as for any error. Used for session state in transaction mode (session_state = "refuse")
 * and staff read access.
 */
import { Frontend } from '../../protocol/codes.js';
import { encodeFrame, cstring } from '../../protocol/frame.js';
import type { Frame } from '../../protocol/frame-reader.js';

const REFUSAL_SQL =
  "DO $pgwarden$BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = 'statements that change session state are not supported in transaction pooling mode', HINT = 'Use SET LOCAL, or a session-mode pool.'; END$pgwarden$";

/** A Query or Parse frame that runs `sql` instead of the client's statement. */
export function refusedStatement(f: Frame, sql = REFUSAL_SQL): Frame {
  const raw = f.type === Frontend.Query ? encodeFrame(f.type, cstring(sql)) : encodeFrame(f.type, refusedParseBody(f.body, sql));
  return { type: f.type, body: raw.subarray(5), raw };
}

/** Oid of `text`: parameters the refused statement must still accept but never uses. */
const TEXT_OID = 25;

/**
 * A Parse of `sql` under the client's statement name that still declares as many parameters as
 * the client's statement had (its declared types, then text for each further $n in its text), so
 * the client's Bind succeeds and Execute reaches the raising block: the client sees the refusal's
 * SQLSTATE, not a bind error.
 */
function refusedParseBody(orig: Buffer, sql: string): Buffer {
  const nameEnd = orig.indexOf(0);
  const queryEnd = orig.indexOf(0, nameEnd + 1);
  let declared: number[] = [];
  if (queryEnd > 0 && queryEnd + 3 <= orig.length) {
    const n = orig.readInt16BE(queryEnd + 1);
    if (n > 0 && queryEnd + 3 + 4 * n <= orig.length) declared = Array.from({ length: n }, (_, i) => orig.readUInt32BE(queryEnd + 3 + 4 * i));
  }
  let used = 0;
  for (const m of orig.toString('utf8', nameEnd + 1, queryEnd < 0 ? orig.length : queryEnd).matchAll(/\$(\d{1,5})/g)) used = Math.max(used, Number(m[1]));
  const count = Math.min(Math.max(declared.length, used), 65_535);
  const types = Buffer.alloc(2 + 4 * count);
  types.writeUInt16BE(count, 0);
  for (let i = 0; i < count; i++) types.writeUInt32BE(declared[i] ?? TEXT_OID, 2 + 4 * i);
  return Buffer.concat([orig.subarray(0, nameEnd + 1), cstring(sql), types]);
}
