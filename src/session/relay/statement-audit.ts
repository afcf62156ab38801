/**
 * Statement audit (SECURITY.md rule 8, §2.4): turns the client's messages into `session.query`
 * records and the replies the client receives into the matching `session.query_result` records.
 * Every message that can run SQL or name a statement is recorded for what it is (Query, Parse,
 * Bind, Execute, Describe, Close, FunctionCall); replies are matched the way the server sends
 * them: in order, an error in the extended protocol skipping everything up to Sync. This file
 * builds records; the session decides when they must be durable and writes them.
 * @see https://www.postgresql.org/docs/current/protocol-flow.html
 */
import { createHash } from 'node:crypto';
import { isUtf8 } from 'node:buffer';
import type { AuditParameters } from '../../config/schema.js';
import type { AuditEvent } from '../../audit/record.js';
import { Backend as B, Frontend as F } from '../../protocol/codes.js';

export type QueryKind = 'simple' | 'parse' | 'bind' | 'execute' | 'describe' | 'close' | 'function_call';

export interface StatementAuditOptions {
  readonly params: AuditParameters;
  readonly queryMaxBytes: number;
  readonly paramMaxBytes: number;
}

/** A message waiting for its replies. Sync is kept as a marker: ReadyForQuery answers it. */
interface Pending {
  readonly ei: number;
  readonly kind: QueryKind | 'sync';
  readonly startedAt: number;
  tags: string[];
  rows: number | null;
  sqlstate: string | null;
  copy: { direction: 'in' | 'out'; bytes: number; messages: number } | null;
  suspended: boolean;
}

interface StatementText {
  readonly text: string;
  readonly sha256: string;
  readonly bytes: number;
  readonly truncated: boolean;
}

/** Named statements and portals remembered per session (so Execute can say what it runs); bounded. */
const MAX_REMEMBERED = 1024;

export class StatementAudit {
  private readonly queue: Pending[] = [];
  private readonly statements = new Map<string, StatementText>();
  private readonly portals = new Map<string, string>();
  private copyIn: Pending | null = null;
  private identityChanges: { name: string; value: string }[] = [];
  /** Records written so far (session.end counts them). */
  statementsAudited = 0;

  constructor(
    private readonly opts: StatementAuditOptions,
    /** The session's next `session.ei`. */
    private readonly nextEi: () => number,
  ) {}

  /** One client message; returns its `session.query` record (without envelope) or null. */
  onClientMessage(type: number, body: Buffer, txStatus: number): AuditEvent | null {
    switch (type) {
      case F.Query: {
        const q = this.text(cstringAt(body, 0).bytes);
        return this.query('simple', txStatus, { ...q.fields });
      }
      case F.Parse: {
        const name = cstringAt(body, 0);
        const sql = cstringAt(body, name.end + 1);
        const t = this.text(sql.bytes);
        const nTypes = sql.end + 3 <= body.length ? body.readInt16BE(sql.end + 1) : 0;
        this.remember(this.statements, name.text, t.info);
        return this.query('parse', txStatus, { statement_name: name.text, ...t.fields, param_types: Math.max(0, nTypes) });
      }
      case F.Bind:
        return this.bind(body, txStatus);
      case F.Execute: {
        const portal = cstringAt(body, 0);
        const maxRows = portal.end + 5 <= body.length ? body.readInt32BE(portal.end + 1) : 0;
        const statement = this.portals.get(portal.text);
        const st = statement === undefined ? undefined : this.statements.get(statement);
        return this.query('execute', txStatus, {
          portal_name: portal.text,
          statement_name: statement ?? null,
          max_rows: maxRows,
          ...(st === undefined ? {} : { query: st.text, query_truncated: st.truncated, query_bytes: st.bytes, query_sha256: st.sha256 }),
        });
      }
      case F.Describe:
      case F.Close: {
        const what = body[0] === 0x50 /* P */ ? 'portal' : 'statement';
        const name = cstringAt(body, 1).text;
        if (type === F.Close) (what === 'portal' ? this.portals : this.statements).delete(name);
        return this.query(type === F.Close ? 'close' : 'describe', txStatus, what === 'portal' ? { portal_name: name } : { statement_name: name });
      }
      case F.FunctionCall: {
        const oid = body.length >= 4 ? body.readUInt32BE(0) : 0;
        const args = decodeFunctionArgs(body);
        return this.query('function_call', txStatus, {
          function_oid: oid,
          ...(args === null ? { params_malformed: true } : this.paramFields(args.formats, args.values)),
        });
      }
      case F.Sync:
        this.queue.push(pending(0, 'sync'));
        return null;
      case F.CopyData:
        if (this.copyIn?.copy != null) {
          this.copyIn.copy.bytes += body.length;
          this.copyIn.copy.messages++;
        }
        return null;
      default:
        return null;
    }
  }

  /** One message the client receives; returns the `session.query_result` records it completes. */
  onServerMessage(type: number, body: Buffer | null, bodyLength: number, out: AuditEvent[]): void {
    const head = this.head();
    switch (type) {
      case B.ParseComplete:
      case B.BindComplete:
      case B.CloseComplete:
      case B.NoData:
        if (head !== null) this.complete(out, true);
        return;
      case B.RowDescription:
        if (head?.kind === 'describe') this.complete(out, true);
        return;
      case B.CommandComplete:
      case B.EmptyQueryResponse:
      case B.PortalSuspended: {
        if (head === null) return;
        if (type === B.CommandComplete && body !== null) {
          const tag = cstringAt(body, 0).text;
          head.tags.push(tag);
          const n = rowsOf(tag);
          if (n !== null) head.rows = (head.rows ?? 0) + n;
        }
        if (type === B.PortalSuspended) head.suspended = true;
        if (head === this.copyIn) this.copyIn = null;
        if (head.kind === 'execute') this.complete(out, true);
        return;
      }
      case B.CopyInResponse:
      case B.CopyOutResponse:
      case B.CopyBothResponse:
        if (head === null) return;
        head.copy = { direction: type === B.CopyInResponse ? 'in' : 'out', bytes: 0, messages: 0 };
        if (type === B.CopyInResponse) this.copyIn = head;
        return;
      case B.CopyData:
        if (head?.copy?.direction === 'out') {
          head.copy.bytes += bodyLength;
          head.copy.messages++;
        }
        return;
      case B.ErrorResponse: {
        if (head === null) return;
        head.sqlstate = body === null ? null : errorCode(body);
        this.copyIn = null;
        // A simple Query or FunctionCall ends at ReadyForQuery; an extended message ends here,
        // and the server skips what follows up to Sync (reported at ReadyForQuery as not executed).
        if (head.kind !== 'simple' && head.kind !== 'function_call') this.complete(out, true);
        return;
      }
      case B.ReadyForQuery: {
        const status = body?.[0] === undefined ? null : String.fromCharCode(body[0]);
        while (this.queue.length > 0) {
          const p = this.queue[0]!;
          if (p.kind === 'sync') {
            this.queue.shift();
            break;
          }
          if (p.kind === 'simple' || p.kind === 'function_call') {
            this.complete(out, true, status);
            break;
          }
          this.complete(out, false); // skipped after an error, never run
        }
        return;
      }
      case B.ParameterStatus: {
        if (body === null) return;
        const name = cstringAt(body, 0);
        if (name.text === 'session_authorization' || name.text === 'is_superuser') {
          // Identity changes are audit-worthy (a re-authentication bypass looks like this).
          if (this.identityChanges.length < 16) this.identityChanges.push({ name: name.text, value: cstringAt(body, name.end + 1).text.slice(0, 128) });
        }
        return;
      }
      default:
        return;
    }
  }

  /** Messages still waiting for replies (the session ends: their outcome is unknown). */
  abandon(out: AuditEvent[]): void {
    while (this.queue.length > 0) {
      if (this.queue[0]!.kind === 'sync') this.queue.shift();
      else this.complete(out, 'unknown');
    }
  }

  // ---------------------------------------------------------------- internals

  private head(): Pending | null {
    const p = this.queue[0];
    return p === undefined || p.kind === 'sync' ? null : p;
  }

  private query(kind: QueryKind, txStatus: number, fields: Record<string, unknown>): AuditEvent {
    const ei = this.nextEi();
    this.queue.push(pending(ei, kind));
    this.statementsAudited++;
    return { event: 'session.query', ei, kind, ...fields, tx_status_before: String.fromCharCode(txStatus) };
  }

  private complete(out: AuditEvent[], executed: boolean | 'unknown', txStatusAfter: string | null = null): void {
    const p = this.queue.shift()!;
    if (p === this.copyIn) this.copyIn = null;
    const ev: AuditEvent = {
      event: 'session.query_result',
      ei: this.nextEi(),
      ref: p.ei,
      kind: p.kind,
      executed,
      command_tag: p.tags.length === 0 ? null : p.tags[p.tags.length - 1],
      rows: p.rows,
      sqlstate: p.sqlstate,
      duration_ms: Math.round((performance.now() - p.startedAt) * 1000) / 1000,
    };
    if (p.tags.length > 1) ev['command_tags'] = p.tags.slice(0, 64);
    if (txStatusAfter !== null) ev['tx_status_after'] = txStatusAfter;
    if (p.copy !== null) ev['copy'] = p.copy;
    if (p.suspended) ev['suspended'] = true;
    if (this.identityChanges.length > 0) {
      ev['identity_changes'] = this.identityChanges;
      this.identityChanges = [];
    }
    out.push(ev);
  }

  private bind(body: Buffer, txStatus: number): AuditEvent {
    const portal = cstringAt(body, 0);
    const statement = cstringAt(body, portal.end + 1);
    this.remember(this.portals, portal.text, statement.text);
    const st = this.statements.get(statement.text);
    const decoded = decodeBindParams(body, statement.end + 1);
    return this.query('bind', txStatus, {
      portal_name: portal.text,
      statement_name: statement.text,
      ...(st === undefined ? {} : { query_sha256: st.sha256 }),
      ...(decoded === null ? { params_malformed: true } : this.paramFields(decoded.formats, decoded.values)),
    });
  }

  /** Parameters by policy: off (count only), redacted (format and size), full (values, capped). */
  private paramFields(formats: number[], values: (Buffer | null)[]): Record<string, unknown> {
    const fmt = (i: number): 'text' | 'binary' => ((formats.length === 1 ? formats[0] : formats[i]) === 1 ? 'binary' : 'text');
    const fields: Record<string, unknown> = { param_count: values.length };
    if (this.opts.params === 'off') return fields;
    fields['param_formats'] = values.map((_, i) => fmt(i));
    if (this.opts.params === 'redacted') {
      fields['params'] = values.map((v) => (v === null ? null : { redacted: true, bytes: v.length }));
      return fields;
    }
    const cap = this.opts.paramMaxBytes;
    fields['params'] = values.slice(0, 1000).map((v, i) => {
      if (v === null) return null;
      const kept = v.subarray(0, cap);
      const value = fmt(i) === 'binary' ? kept.toString('base64') : kept.toString('utf8');
      return v.length > cap ? { value, truncated: true, bytes: v.length } : value;
    });
    return fields;
  }

  private text(raw: Buffer): { info: StatementText; fields: Record<string, unknown> } {
    const truncated = raw.length > this.opts.queryMaxBytes;
    // toString copies: the record never pins the socket chunk.
    const info: StatementText = {
      text: raw.toString('utf8', 0, Math.min(raw.length, this.opts.queryMaxBytes)),
      sha256: createHash('sha256').update(raw).digest('hex'),
      bytes: raw.length,
      truncated,
    };
    return {
      info,
      fields: { query: info.text, query_truncated: truncated, query_bytes: raw.length, query_sha256: info.sha256, query_utf8_valid: isUtf8(raw) },
    };
  }

  private remember<V>(map: Map<string, V>, key: string, value: V): void {
    map.delete(key);
    map.set(key, value);
    if (map.size > MAX_REMEMBERED) map.delete(map.keys().next().value as string);
  }
}

function pending(ei: number, kind: Pending['kind']): Pending {
  return { ei, kind, startedAt: performance.now(), tags: [], rows: null, sqlstate: null, copy: null, suspended: false };
}

/** A NUL-terminated string at `start`; a missing terminator takes the rest (the server will reject the message). */
function cstringAt(body: Buffer, start: number): { text: string; bytes: Buffer; end: number } {
  if (start >= body.length) return { text: '', bytes: body.subarray(0, 0), end: body.length };
  let end = body.indexOf(0, start);
  if (end < 0) end = body.length;
  const bytes = body.subarray(start, end);
  return { text: bytes.length <= 256 ? bytes.toString('utf8') : bytes.toString('utf8', 0, 256), bytes, end };
}

/** Bind after the two names: formats, values (Int32 length, -1 = NULL). Null when the fields do not add up. */
function decodeBindParams(body: Buffer, pos: number): { formats: number[]; values: (Buffer | null)[] } | null {
  try {
    const nf = body.readInt16BE(pos);
    pos += 2;
    if (nf < 0) return null;
    const formats: number[] = [];
    for (let i = 0; i < nf; i++, pos += 2) formats.push(body.readInt16BE(pos));
    const values = readValues(body, pos);
    return values === null ? null : { formats, values };
  } catch {
    return null;
  }
}

/** FunctionCall: oid, argument formats, arguments, result format. */
function decodeFunctionArgs(body: Buffer): { formats: number[]; values: (Buffer | null)[] } | null {
  return decodeBindParams(body, 4);
}

function readValues(body: Buffer, pos: number): (Buffer | null)[] | null {
  const n = body.readInt16BE(pos);
  pos += 2;
  if (n < 0) return null;
  const values: (Buffer | null)[] = [];
  for (let i = 0; i < n; i++) {
    const len = body.readInt32BE(pos);
    pos += 4;
    if (len === -1) {
      values.push(null);
      continue;
    }
    if (len < 0 || pos + len > body.length) return null;
    values.push(body.subarray(pos, pos + len));
    pos += len;
  }
  return values;
}

/** Rows affected or returned, from a command tag: "SELECT 3", "INSERT 0 5", "COPY 10". */
function rowsOf(tag: string): number | null {
  const m = /^(?:SELECT|INSERT \d+|UPDATE|DELETE|MERGE|COPY|FETCH|MOVE) (\d+)$/.exec(tag);
  return m === null ? null : Number(m[1]);
}

function errorCode(body: Buffer): string | null {
  let pos = 0;
  while (pos < body.length && body[pos] !== 0) {
    const field = body[pos]!;
    const end = body.indexOf(0, pos + 1);
    if (end < 0) return null;
    if (field === 0x43 /* C */) return body.toString('latin1', pos + 1, end);
    pos = end + 1;
  }
  return null;
}
