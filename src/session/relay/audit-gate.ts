/**
 * Statement audit as a filter on client frames (staff sessions, tenants with audit_statements =
 * "all"): each whole client frame is recorded (session.query) before it goes on, and the replies
 * the client receives are matched to it (session.query_result). For fail-closed sessions the
 * records must be durable first: the client is held, bytes that still arrive wait in order behind
 * the write, and a failed write ends the session without forwarding the statement (S10). A frame
 * the relay will refuse (bad type or length) ends the batch: what came before it is forwarded,
 * and the relay raises the error on it.
 */
import type { AuditEvent } from '../../audit/record.js';
import { Frontend, frontendMaxLength } from '../../protocol/codes.js';
import { FrameReader, type Frame } from '../../protocol/frame-reader.js';
import { StatementAudit } from './statement-audit.js';
import type { TenantConfig } from '../../config/schema.js';
import type { SessionContext } from '../context.js';
import type { StaffIdentity } from '../types.js';
import { refusedStatement } from './refusals.js';

export interface AuditGateHost {
  /** Frames that passed the gate, on to the relay. */
  forward(chunk: Buffer): void;
  holdClient(): void;
  releaseClient(): void;
  /** Whether the session still relays (a forwarded chunk may have ended it). */
  isOpen(): boolean;
  readonly txStatus: number;
  readonly maxMessageBytes: number;
  append(e: AuditEvent): void;
  appendDurable(e: AuditEvent): Promise<void>;
  /** The durable write failed: the session ends (57P01) without forwarding. */
  auditFailed(err: unknown): void;
  fail(err: unknown): void;
}

export class AuditGate {
  private readonly reader = new FrameReader();
  /** A durable write is in flight: client bytes wait behind it, in order. */
  private waiting = false;
  private queue: Buffer[] = [];

  constructor(
    readonly auditor: StatementAudit,
    /** Each statement's record is durable before the statement is forwarded (staff, audit_fail_closed). */
    readonly failClosed: boolean,
    /** Staff read access: statements that would leave read-only mode are refused by the server (25006). */
    private readonly readOnly: boolean,
    private readonly host: AuditGateHost,
  ) {}

  onClientChunk(chunk: Buffer): void {
    if (this.waiting) {
      this.queue.push(chunk);
      return;
    }
    const host = this.host;
    const reader = this.reader;
    reader.push(chunk);
    const frames: Buffer[] = [];
    const events: AuditEvent[] = [];
    let broken = false;
    for (;;) {
      let f: Frame | null;
      try {
        f = reader.nextTyped((type) => frontendMaxLength(type, host.maxMessageBytes));
      } catch {
        broken = true;
        break;
      }
      if (f === null) break;
      const ev = this.auditor.onClientMessage(f.type, f.body, host.txStatus);
      if (ev !== null) events.push(ev);
      const guarded = this.readOnly ? readOnlyGuard(f) : null;
      frames.push(guarded ?? f.raw);
    }
    const tail = broken ? reader.drain() : null;
    const pass = (): void => {
      if (frames.length > 0) host.forward(frames.length === 1 ? frames[0]! : Buffer.concat(frames));
      if (tail !== null && host.isOpen()) host.forward(tail);
    };
    if (!this.failClosed || events.length === 0) {
      for (const e of events) host.append(e);
      pass();
      return;
    }
    this.waiting = true;
    host.holdClient();
    Promise.all(events.map((e) => host.appendDurable(e))).then(
      () => {
        this.waiting = false;
        if (!host.isOpen()) return;
        try {
          pass();
          const queued = this.queue;
          this.queue = [];
          // pass() and each chunk may end the session or start another durable write.
          for (const c of queued) if (host.isOpen()) this.onClientChunk(c);
          if (!this.isWaiting()) host.releaseClient();
        } catch (err) {
          host.fail(err);
        }
      },
      (err: unknown) => {
        this.waiting = false;
        if (host.isOpen()) host.auditFailed(err);
      },
    );
  }

  /** Whether a durable write is in flight (a queued chunk may have started one). */
  isWaiting(): boolean {
    return this.waiting;
  }

  /** A reply the client receives (type, body when kept, body length). */
  onServerFrame(type: number, body: Buffer | null, bodyLength: number, out: AuditEvent[]): void {
    this.auditor.onServerMessage(type, body, bodyLength, out);
  }
}

/**
 * Staff read access: statements that would turn the read-only default off are refused by the
 * server itself with 25006. Defence in depth only (text can be disguised); the real guard is a
 * staff_backend_user with read grants only.
 */
const READ_WRITE_RE = /\bread(?:\s|\/\*[\s\S]*?\*\/|--[^\n]*\n)+write\b|transaction_read_only/i;
const READ_ONLY_REFUSAL_SQL =
  "DO $pgwarden$BEGIN RAISE EXCEPTION USING ERRCODE = 'read_only_sql_transaction', MESSAGE = 'staff read access cannot leave read-only mode'; END$pgwarden$";

function readOnlyGuard(f: Frame): Buffer | null {
  if (f.type !== Frontend.Query && f.type !== Frontend.Parse) return null;
  const text = f.type === Frontend.Query ? f.body.toString('utf8') : f.body.toString('utf8', f.body.indexOf(0) + 1);
  if (!READ_WRITE_RE.test(text)) return null;
  return refusedStatement(f, READ_ONLY_REFUSAL_SQL).raw;
}

/** Statement audit for a new session: staff sessions and tenants with audit_statements = "all"; null when off. */
export function statementAuditFor(
  ctx: SessionContext,
  tenant: TenantConfig,
  staff: StaffIdentity | null,
  nextEi: () => number,
): { readonly auditor: StatementAudit; readonly failClosed: boolean; readonly readOnly: boolean } | null {
  if (staff === null && tenant.auditStatements !== 'all') return null;
  const c = ctx.config;
  const auditor = new StatementAudit(
    { params: staff !== null ? c.staff!.auditParameters : tenant.auditParameters, queryMaxBytes: c.audit.queryMaxBytes, paramMaxBytes: c.audit.paramMaxBytes },
    nextEi,
  );
  return { auditor, failClosed: staff !== null || tenant.auditFailClosed, readOnly: staff?.access === 'read' };
}
