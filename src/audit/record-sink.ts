/**
 * The interface between the audit log (log.ts) and the further stores it feeds besides the file
 * (pg-sink.ts): declared apart from both, so a store depends on the log's contract, not on the log,
 * and the log is handed its stores by whoever composes the process.
 */
import type { AuditRecord } from './record.js';

/**
 * A further store for the chained records (the PostgreSQL sink): told of every record in chain
 * order, after the file writer has it. It must not throw and must not block the caller.
 */
export interface RecordSink {
  deliver(record: AuditRecord, line: string): void;
  /** Delivers or spools what it holds; called by AuditLog.close(). */
  close(): Promise<void>;
}
