/**
 * Which statements leave session state behind a transaction, so a transaction-mode client must
 * keep its backend (be pinned). Conservative by design: a false positive costs pooling for that
 * one client, a false negative would leak state to the next client of the backend.
 * Pinned: SET / RESET (not SET LOCAL or SET TRANSACTION), LISTEN, SQL PREPARE, DECLARE … WITH HOLD,
 * CREATE TEMP objects and SELECT … INTO TEMP, LOAD, DISCARD / DEALLOCATE, set_config(), session
 * advisory locks, and DO blocks that run any of these or dynamic SQL (EXECUTE).
 * Protocol-level named statements are not pinned: tx-statements.ts carries them across backends.
 * Not seen: a function that changes session state inside its body (`SELECT f()`).
 *
 * The text is read two ways and pins if either finds a statement: split at every ';' (inside
 * literals and comments too, which can only add statements), and with comments (nested, as
 * PostgreSQL nests them) blanked by a lexer that knows literals. Neither alone is enough: a ';'
 * inside a comment hides the next statement from the first, and a backslash before a quote means
 * different things to the second depending on standard_conforming_strings.
 */

const SET_OR_RESET = String.raw`SET\b(?!\s*(?:LOCAL|TRANSACTION)\b)|RESET\b`;
const CREATE_TEMP = String.raw`CREATE\s+(?:OR\s+REPLACE\s+)?(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\b`;

const STATEMENT_START = new RegExp(
  String.raw`^(?:${SET_OR_RESET}|LISTEN\b|PREPARE\b|LOAD\b|DISCARD\b|DEALLOCATE\b|DECLARE\b[\s\S]*\bWITH\s+HOLD\b|${CREATE_TEMP}|CREATE\s+(?:UNLOGGED\s+)?TABLE\b[\s\S]*\bON\s+COMMIT\b)`,
  'i',
);
/** Functions that change session state wherever they are called, and SELECT … INTO TEMP. */
const ANYWHERE =
  /\b(?:set_config|pg_advisory_lock|pg_advisory_lock_shared|pg_try_advisory_lock|pg_try_advisory_lock_shared)"?\s*\(|\bINTO\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\b/i;
/** A DO block (its body is a literal, so statement starts inside it are not after a ';' alone). */
const DO_START = /^DO\b/i;
/**
 * Inside a DO block: a pinning statement after a PL/pgSQL boundary, a quote or a parenthesis (what
 * EXECUTE runs), or dynamic SQL at all, which cannot be read.
 */
const IN_BLOCK = new RegExp(
  String.raw`(?:[;'$(]|\b(?:BEGIN|THEN|ELSE|LOOP)\b)\s*(?:${SET_OR_RESET}|LISTEN\b|PREPARE\b|LOAD\b|DISCARD\b|DEALLOCATE\b|${CREATE_TEMP})|\bEXECUTE\b`,
  'i',
);

/**
 * End of the block comment opening at `start` ("/*"), nested as PostgreSQL nests them; the text's
 * length if unterminated. Each marker is searched for once (linear in the text, whatever a
 * client nests: this runs on the relay path).
 */
function blockCommentEnd(s: string, start: number): number {
  let depth = 1;
  let i = start + 2;
  let open = s.indexOf('/*', i);
  let close = s.indexOf('*/', i);
  for (;;) {
    if (close < 0) return s.length;
    if (open >= 0 && open < close) {
      depth++;
      i = open + 2;
      open = s.indexOf('/*', i);
      if (close < i) close = s.indexOf('*/', i); // "/*/": the '*' opened, it does not close
    } else {
      depth--;
      i = close + 2;
      if (depth === 0) return i;
      close = s.indexOf('*/', i);
      if (open >= 0 && open < i) open = s.indexOf('/*', i); // "*/*": the '*' closed, it does not open
    }
  }
}

/** Strips leading white space and comments from a statement. */
function leading(stmt: string): string {
  let s = stmt;
  for (;;) {
    const t = s.replace(/^\s+/, '');
    if (t.startsWith('--')) {
      const nl = t.indexOf('\n');
      s = nl < 0 ? '' : t.slice(nl + 1);
    } else if (t.startsWith('/*')) {
      s = t.slice(blockCommentEnd(t, 0));
    } else return t;
  }
}

/** End of the literal or quoted identifier opening at `start` with `quote`; `backslash` for E'…', where \' does not close it. */
function quotedEnd(s: string, start: number, quote: string, backslash: boolean): number {
  let i = start + 1;
  for (;;) {
    const q = s.indexOf(quote, i);
    if (q < 0) return s.length;
    let slashes = 0;
    if (backslash) while (q - slashes - 1 > start && s[q - slashes - 1] === '\\') slashes++;
    if (slashes % 2 === 1) i = q + 1; // escaped
    else if (s[q + 1] === quote) i = q + 2; // a doubled quote stands for itself
    else return q + 1;
  }
}

const DOLLAR_TAG = /\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/y;
/** Where a comment, a literal, a quoted identifier or a dollar quote may open. */
const OPENER = /--|\/\*|['"$]/g;

/**
 * The text with every comment replaced by a space; literals, quoted identifiers and dollar-quoted
 * bodies kept as they are. The same string if there is no comment outside them.
 */
function withoutComments(sql: string): string {
  let out = '';
  let from = 0;
  let i = 0;
  for (;;) {
    OPENER.lastIndex = i;
    const m = OPENER.exec(sql);
    if (m === null) break;
    i = m.index;
    const c = m[0];
    if (c === '--' || c === '/*') {
      const nl = c === '--' ? sql.indexOf('\n', i) : -1;
      const end = c === '/*' ? blockCommentEnd(sql, i) : nl < 0 ? sql.length : nl;
      out += `${sql.slice(from, i)} `;
      i = from = end;
    } else if (c === "'") {
      const prev = sql[i - 1];
      i = quotedEnd(sql, i, "'", prev === 'E' || prev === 'e');
    } else if (c === '"') {
      i = quotedEnd(sql, i, '"', false);
    } else if (/[A-Za-z0-9_$]/.test(sql[i - 1] ?? ' ')) {
      i++; // part of an identifier or a parameter ($1), not a dollar quote
    } else {
      DOLLAR_TAG.lastIndex = i;
      const tag = DOLLAR_TAG.exec(sql);
      if (tag === null) i++;
      else {
        const close = sql.indexOf(tag[0], i + tag[0].length);
        i = close < 0 ? sql.length : close + tag[0].length;
      }
    }
  }
  return from === 0 ? sql : out + sql.slice(from);
}

/** One reading of the text: any statement (split at every ';') that starts like a pinning one, or a DO block that may. */
function anyStatementPins(sql: string): boolean {
  let inDo = false;
  for (const stmt of sql.split(';')) {
    const start = leading(stmt);
    if (STATEMENT_START.test(start)) return true;
    if (DO_START.test(start)) inDo = true;
  }
  return inDo && IN_BLOCK.test(sql);
}

/** True if this SQL text may leave session state behind. */
export function sqlHasSessionState(sql: string): boolean {
  if (ANYWHERE.test(sql) || anyStatementPins(sql)) return true;
  // Only a comment can hide a statement from the first reading (fast path: no comment, no second reading).
  if (!sql.includes('/*') && !sql.includes('--')) return false;
  const bare = withoutComments(sql);
  return bare !== sql && (ANYWHERE.test(bare) || anyStatementPins(bare));
}

/**
 * Every pattern above needs one of these words (RESET and set_config contain SET; a DO block pins
 * only through IN_BLOCK's words or EXECUTE), and PostgreSQL's keywords are ASCII: text with none
 * of them cannot pin. Read as latin1, a multi-byte UTF-8 character cannot forge an ASCII word.
 * Most statements (pgbench's SELECT among them) stop here: one regexp, no UTF-8 decoding, no split.
 */
const MAY_PIN = /set|listen|prepare|load|discard|deallocate|declare|temp|commit|advisory|execute/i;

/** For a Query body (text\0) or a Parse body (name\0text\0…; named statements are tracked, not pinned). */
export function hasSessionState(body: Buffer, isParse: boolean): boolean {
  const start = isParse ? body.indexOf(0) + 1 : 0;
  let end = body.indexOf(0, start);
  if (end < 0) end = body.length;
  if (!MAY_PIN.test(body.toString('latin1', start, end))) return false;
  return sqlHasSessionState(body.toString('utf8', start, end));
}
