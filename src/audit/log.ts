/**
 * The audit log writer: fills the envelope, chains each record to the previous one and appends
 * JSON lines through pino's destination (sonic-boom). Building a record is synchronous, so the
 * chain order is the call order. What to record is decided by the session; checking is verify.ts.
 */
import { open, stat } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { AuditConfig } from '../config/schema.js';
import { PgSink } from './pg-sink.js';
import { AUDIT_SCHEMA, type AuditEvent, type AuditRecord, recordHash, rfc3339Micros, uuidv7 } from './record.js';

type Destination = ReturnType<typeof pino.destination>;

/** Where sessions send audit events: the log itself, or (in a worker process) the primary that owns it. */
export interface AuditSink {
  /** Best effort: chained and queued for writing; a failed write marks the log unhealthy. */
  append(event: AuditEvent): void;
  /**
   * Fail-closed sessions (staff, audit_fail_closed tenants): resolves once the record is durable
   * (written, and fdatasync'd when audit.fsync), rejects when it cannot be. The caller must not
   * forward the statement before this resolves (SECURITY.md rule 8, S10).
   */
  appendDurable(event: AuditEvent): Promise<void>;
  /** False while records cannot be written; fail-closed logins are refused meanwhile (57P03). */
  readonly healthy: boolean;
  /** Resolves once everything appended so far is written (or handed to the writer). */
  flush(): Promise<void>;
  close(): Promise<void>;
}

/**
 * A further store for the chained records (the PostgreSQL sink): told of every record in chain
 * order, after the file writer has it. It must not throw and must not block the caller.
 */
export interface RecordSink {
  deliver(record: AuditRecord, line: string): void;
  /** Delivers or spools what it holds; called by AuditLog.close(). */
  close(): Promise<void>;
}

export class AuditLog implements AuditSink {
  private readonly sinks: RecordSink[] = [];
  private seq = 0;
  private head: string | null;
  private readonly instance: AuditRecord['instance'];
  private readonly monoBase = process.hrtime.bigint();
  private readonly wallBaseNs = BigInt(Date.now()) * 1_000_000n;
  private failed: Error | null = null;

  private constructor(
    private readonly dest: Destination | null,
    prevHead: string | null,
    instanceId: string,
    version: string,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    this.head = prevHead;
    this.instance = { id: instanceId, version, boot_id: randomUUID() };
    dest?.on('error', (err: Error) => {
      this.failed = err;
      this.log.error({ err }, 'audit log write failed');
    });
  }

  /** Opens (creating) the file and continues the chain from its last record. No file: records are only counted. */
  static async open(cfg: AuditConfig, instanceId: string, version: string, metrics: Metrics, log: Logger): Promise<AuditLog> {
    // [audit.postgres] (issue 5, pg-sink.ts): the file as below, plus the store fed every record.
    if (cfg.postgres !== undefined) return withSink(await AuditLog.open({ ...cfg, postgres: undefined }, instanceId, version, metrics, log), await PgSink.start(cfg.postgres, metrics, log));
    const file = cfg.file;
    if (file === undefined) return new AuditLog(null, null, instanceId, version, metrics, log);
    const prev = await readLastHash(file, log);
    const dest = pino.destination({ dest: file, append: true, mkdir: true, sync: false, minLength: 0 });
    await new Promise<void>((resolve, reject) => {
      dest.once('ready', () => resolve());
      dest.once('error', reject);
    });
    return new AuditLog(dest, prev, instanceId, version, metrics, log);
  }

  /** Adds a store that receives every record from now on, in chain order. */
  addSink(sink: RecordSink): void {
    this.sinks.push(sink);
  }

  get bootId(): string {
    return this.instance.boot_id;
  }

  /** True once a write has failed; fail-closed callers check this (issue 5 makes it durable). */
  get healthy(): boolean {
    return this.failed === null;
  }

  append(event: AuditEvent): AuditRecord {
    const elapsed = process.hrtime.bigint() - this.monoBase;
    // The envelope is the writer's alone: a caller's field can never replace seq, id or chain.
    const { event: name, schema: _s, id: _i, time: _t, mono_ns: _m, instance: _n, seq: _q, chain: _c, ...fields } = event;
    const record = {
      schema: AUDIT_SCHEMA,
      event: name,
      id: uuidv7(),
      time: rfc3339Micros(this.wallBaseNs + elapsed),
      mono_ns: Number(elapsed),
      instance: this.instance,
      seq: this.seq++,
      ...fields,
      chain: { prev: this.head, hash: '' },
    } as AuditRecord;
    record.chain.hash = recordHash(record);
    this.head = record.chain.hash;
    const line = `${JSON.stringify(record)}\n`;
    this.dest?.write(line);
    for (const sink of this.sinks) sink.deliver(record, line);
    this.metrics.auditRecords.inc({ event: name });
    return record;
  }

  /** TODO(issue 5): group commit with fdatasync; for now: write and flush. */
  async appendDurable(event: AuditEvent): Promise<void> {
    if (this.failed !== null) throw this.failed;
    this.append(event);
    await this.flush();
    if (!this.healthy) throw new Error('audit log write failed');
  }

  async flush(): Promise<void> {
    const dest = this.dest;
    if (dest === null) return;
    await new Promise<void>((resolve) => {
      dest.flush((err) => {
        if (err) this.log.error({ err }, 'audit flush failed');
        resolve();
      });
    });
  }

  async close(): Promise<void> {
    await this.flush();
    await Promise.all(this.sinks.map((s) => s.close()));
    const dest = this.dest;
    if (dest === null) return;
    await new Promise<void>((resolve) => {
      dest.once('close', () => resolve());
      dest.end();
    });
  }
}

/** The chain hash of the file's last complete record, or null for a new or empty file. */
async function readLastHash(file: string, log: Logger): Promise<string | null> {
  let size: number;
  try {
    size = (await stat(file)).size;
  } catch {
    return null;
  }
  if (size === 0) return null;
  const fh = await open(file, 'r');
  try {
    const len = Math.min(size, 1 << 20);
    const buf = Buffer.alloc(len);
    await fh.read(buf, 0, len, size - len);
    const lines = buf.toString('utf8').split('\n').filter((l) => l.length > 0);
    const last = lines[lines.length - 1];
    if (last === undefined) return null;
    const rec = JSON.parse(last) as { chain?: { hash?: unknown } };
    return typeof rec.chain?.hash === 'string' ? rec.chain.hash : null;
  } catch (err) {
    log.warn({ err, file }, 'audit file has no readable last record; starting a new chain');
    return null;
  } finally {
    await fh.close();
  }
}

/** AuditLog.open with [audit.postgres]: the log, with the PostgreSQL sink attached. */
function withSink(audit: AuditLog, sink: RecordSink): AuditLog {
  audit.addSink(sink);
  return audit;
}
