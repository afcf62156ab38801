/**
 * Protocol-level prepared statements in transaction mode, the way PgBouncer 1.21 keeps them
 * working: a client's named statement becomes a server-side statement named by the hash of its
 * text and parameter types (`pgw_<hash>`), prepared on whichever backend serves the client next
 * (an injected Parse whose ParseComplete the client never sees), bounded per backend (the oldest
 * is closed when the cache is full). The client's Close is answered here.
 *
 * To keep replies in step, every message sent to the backend leaves an Expectation naming the
 * reply types that complete it; replies to injected messages are swallowed and replies to
 * messages answered here are synthesised in their place.
 * @see https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY
 */
import { createHash } from 'node:crypto';
import { Backend as B, Frontend as F } from '../../protocol/codes.js';
import { CLOSE_COMPLETE, PARSE_COMPLETE } from '../../protocol/backend.js';
import {
  decodeBindStatementName,
  decodeParseName,
  decodeStatementTarget,
  encodeBindWithStatement,
  encodeCloseStatement,
  encodeDescribeStatement,
  encodeParse,
} from '../../protocol/frontend.js';

/** Server-side statements kept per backend before the oldest is closed. */
export const MAX_PREPARED_PER_BACKEND = 256;

export interface PreparedCache {
  /** Server statement names prepared on this backend, oldest first. */
  readonly prepared: Set<string>;
}

/** What the backend owes for one message we sent it (or what we answer ourselves). */
export interface Expectation {
  /** Reply types that complete this message; empty for a synthesised reply. */
  readonly ends: string;
  /** The client never sent this message: drop its replies. */
  readonly swallow: boolean;
  /** A Sync or a simple Query: an error does not skip past it. */
  readonly barrier: boolean;
  /** Our own reply to send when this entry reaches the head of the queue. */
  readonly synth: Buffer | null;
  /** Undo bookkeeping if the backend rejects the message (a Parse that did not prepare). */
  readonly onError: (() => void) | null;
}

/** Reply type bytes as a string, so that matching a reply is one `includes` of a one-character string. */
const ends = (...types: number[]): string => String.fromCharCode(...types);

const ENDS: Record<number, string> = {
  [F.Query]: ends(B.ReadyForQuery),
  [F.Sync]: ends(B.ReadyForQuery),
  [F.FunctionCall]: ends(B.ReadyForQuery),
  [F.Parse]: ends(B.ParseComplete),
  [F.Bind]: ends(B.BindComplete),
  [F.Close]: ends(B.CloseComplete),
  [F.Describe]: ends(B.RowDescription, B.NoData),
  [F.Execute]: ends(B.CommandComplete, B.EmptyQueryResponse, B.PortalSuspended),
};

function expectation(type: number, swallow: boolean, onError: (() => void) | null = null): Expectation {
  return { ends: ENDS[type] ?? '', swallow, barrier: type === F.Sync || type === F.Query || type === F.FunctionCall, synth: null, onError };
}

function synthesised(frame: Buffer): Expectation {
  return { ends: '', swallow: false, barrier: false, synth: frame, onError: null };
}

interface ClientStatement {
  readonly serverName: string;
  /** The Parse body after the name: query\0, Int16 count, Int32 types. */
  readonly definition: Buffer;
}

/** One client's named statements, and the rewriting of its messages for the backend it has now. */
export class StatementTracker {
  /** Made on the first named Parse: most clients never send one, and an idle session holds no empty map. */
  private statements: Map<string, ClientStatement> | null = null;

  get size(): number {
    return this.statements?.size ?? 0;
  }

  /**
   * Rewrites one client message for `backend`: appends the frames to send to `out` and what each
   * will be answered with to `expect`. Messages that need no rewriting (or are malformed: the
   * server judges those) pass as `raw`.
   */
  rewrite(type: number, body: Buffer, raw: Buffer, backend: PreparedCache, out: Buffer[], expect: Expectation[]): void {
    switch (type) {
      case F.Parse: {
        const parse = decodeParseName(body);
        if (parse === null) break; // unnamed (or malformed): as is
        const definition = Buffer.from(parse.definition); // outlives the chunk
        const serverName = `pgw_${createHash('sha256').update(definition).digest('hex').slice(0, 24)}`;
        (this.statements ??= new Map()).set(parse.name, { serverName, definition });
        if (backend.prepared.has(serverName)) {
          expect.push(synthesised(PARSE_COMPLETE));
          return;
        }
        this.prepareOn(backend, serverName, definition, out, expect, false);
        return;
      }
      case F.Bind: {
        const name = decodeBindStatementName(body);
        if (name === null) break; // unnamed statement or malformed
        const st = this.statements?.get(name);
        if (st === undefined) break; // unknown: the server answers "does not exist"
        this.ensure(backend, st, out, expect);
        out.push(encodeBindWithStatement(body, st.serverName));
        expect.push(expectation(F.Bind, false));
        return;
      }
      case F.Describe: {
        const name = decodeStatementTarget(body);
        if (name === null) break; // a portal, the unnamed statement or malformed
        const st = this.statements?.get(name);
        if (st === undefined) break;
        this.ensure(backend, st, out, expect);
        out.push(encodeDescribeStatement(st.serverName));
        expect.push(expectation(F.Describe, false));
        return;
      }
      case F.Close: {
        const name = decodeStatementTarget(body);
        if (name === null) break;
        // The server-side statement stays cached for other clients; the client's name goes.
        this.statements?.delete(name);
        expect.push(synthesised(CLOSE_COMPLETE));
        return;
      }
      default:
        break;
    }
    out.push(raw);
    const e = ENDS[type];
    if (e !== undefined) expect.push(expectation(type, false));
  }

  private ensure(backend: PreparedCache, st: ClientStatement, out: Buffer[], expect: Expectation[]): void {
    if (backend.prepared.has(st.serverName)) {
      // Most recently used goes last, so eviction takes the coldest.
      backend.prepared.delete(st.serverName);
      backend.prepared.add(st.serverName);
      return;
    }
    this.prepareOn(backend, st.serverName, st.definition, out, expect, true);
  }

  private prepareOn(backend: PreparedCache, serverName: string, definition: Buffer, out: Buffer[], expect: Expectation[], injected: boolean): void {
    if (backend.prepared.size >= MAX_PREPARED_PER_BACKEND) {
      const oldest = backend.prepared.values().next().value as string;
      backend.prepared.delete(oldest);
      out.push(encodeCloseStatement(oldest));
      expect.push(expectation(F.Close, true));
    }
    backend.prepared.add(serverName);
    out.push(encodeParse(serverName, definition));
    expect.push(expectation(F.Parse, injected, () => backend.prepared.delete(serverName)));
  }
}

/**
 * Matches backend replies to Expectations, in order. For each reply frame, `onReply` appends to
 * `out` what the client gets: replies of ours that are due first, the frame itself unless it
 * answers an injected message, and replies of ours due right after it.
 */
export class ReplyQueue {
  private readonly entries: Expectation[] = [];

  get empty(): boolean {
    return this.entries.length === 0;
  }

  push(e: Expectation): void {
    this.entries.push(e);
  }

  /** Our replies at the head of the queue: due now (nothing the backend owes comes before them). */
  flushSynth(out: Buffer[]): void {
    while (this.entries.length > 0 && this.entries[0]!.synth !== null) out.push(this.entries.shift()!.synth!);
  }

  onReply(type: number, raw: Buffer, out: Buffer[]): void {
    this.flushSynth(out);
    const head = this.entries[0];
    // Asynchronous messages belong to no request.
    if (head === undefined || type === B.NoticeResponse || type === B.NotificationResponse || type === B.ParameterStatus) {
      out.push(raw);
      return;
    }
    if (type === B.ErrorResponse) {
      head.onError?.();
      if (!head.barrier) {
        // The server now skips everything up to the next Sync: so do we, undoing what assumed success.
        this.entries.shift();
        while (this.entries.length > 0 && !this.entries[0]!.barrier) this.entries.shift()!.onError?.();
      }
      out.push(raw); // even for an injected Parse: the client must learn why its statement fails
      return;
    }
    if (!head.swallow) out.push(raw);
    if (head.ends.includes(String.fromCharCode(type))) {
      this.entries.shift();
      this.flushSynth(out);
    }
  }
}
