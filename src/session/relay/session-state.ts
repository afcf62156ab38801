/**
 * Which statements leave session state behind a transaction, so a transaction-mode client must
 * keep its backend (be pinned). Conservative by design: a false positive costs pooling for that
 * one client, a false negative would leak state to the next client of the backend.
 * Pinned: SET / RESET (not SET LOCAL or SET TRANSACTION), LISTEN, SQL PREPARE, DECLARE … WITH HOLD,
 * CREATE TEMP objects, LOAD, DISCARD / DEALLOCATE, set_config(), session advisory locks.
 * Protocol-level named statements are not pinned: tx-statements.ts carries them across backends.
 */

const STATEMENT_START =
  /^(?:SET\s+(?!LOCAL\b|TRANSACTION\b)|RESET\b|LISTEN\b|PREPARE\b|LOAD\b|DISCARD\b|DEALLOCATE\b|DECLARE\b[\s\S]*\bWITH\s+HOLD\b|CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\b|CREATE\s+(?:UNLOGGED\s+)?TABLE\b[\s\S]*\bON\s+COMMIT\b)/i;
const ANYWHERE = /\b(?:set_config|pg_advisory_lock|pg_advisory_lock_shared|pg_try_advisory_lock|pg_try_advisory_lock_shared)\s*\(/i;

/** Strips leading white space and comments from a statement. */
function leading(stmt: string): string {
  let s = stmt;
  for (;;) {
    const t = s.replace(/^\s+/, '');
    if (t.startsWith('--')) {
      const nl = t.indexOf('\n');
      s = nl < 0 ? '' : t.slice(nl + 1);
    } else if (t.startsWith('/*')) {
      const end = t.indexOf('*/');
      s = end < 0 ? '' : t.slice(end + 2);
    } else return t;
  }
}

/** True if this SQL text may leave session state behind. */
export function sqlHasSessionState(sql: string): boolean {
  if (ANYWHERE.test(sql)) return true;
  // Splitting on ';' also splits inside string literals: that can only add false positives.
  for (const stmt of sql.split(';')) if (STATEMENT_START.test(leading(stmt))) return true;
  return false;
}

/** For a Query body (text\0) or a Parse body (name\0text\0…; named statements are tracked, not pinned). */
export function hasSessionState(body: Buffer, isParse: boolean): boolean {
  const start = isParse ? body.indexOf(0) + 1 : 0;
  const end = body.indexOf(0, start);
  return sqlHasSessionState(body.toString('utf8', start, end < 0 ? body.length : end));
}
