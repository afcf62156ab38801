/**
 * The audit log: fills the envelope, chains each record to the previous one, hands the line to the
 * file writer (writer.ts: group commit, fdatasync, rotation, retries) and to the further stores it
 * is handed (record-sink.ts; it builds none itself), and adds the integrity records of SECURITY.md
 * §2.7: signed audit.checkpoint and audit.gap. Building a record is synchronous, so the chain order
 * is the call order. What to record is decided by the session; checking is verify.ts.
 */
import { open as openFile, stat } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { AuditConfig } from '../config/schema.js';
import { AUDIT_SCHEMA, type AuditEvent, type AuditRecord, rfc3339Micros, sealRecord, uuidv7 } from './record.js';
import { AuditFileWriter, type WriteFailureCause } from './writer.js';
import { CheckpointSigner, loadPrivateKey } from './checkpoint.js';
import { rotatedSiblings } from './files.js';
import type { RecordSink } from './record-sink.js';

/** Where sessions send audit events: the log itself, or (in a worker process) the primary that owns it. */
export interface AuditSink {
  /** Best effort: chained and queued for writing; a failed write marks the log unhealthy. */
  append(event: AuditEvent): void;
  /**
   * Fail-closed sessions (staff, audit_fail_closed tenants): resolves once the record is durable
   * (written, and fdatasync'd when audit.fsync), rejects when it cannot be. The caller must not
   * forward the statement before this resolves (SECURITY.md rule 8, S10). A rejected record may
   * still reach the file later (it is chained already); the caller treats it as not durable.
   */
  appendDurable(event: AuditEvent): Promise<void>;
  /** False while records cannot be written; fail-closed logins are refused meanwhile (57P03). */
  readonly healthy: boolean;
  /** Resolves once everything appended so far is written (or handed to the writer). */
  flush(): Promise<void>;
  close(): Promise<void>;
}

export interface AuditLogOptions {
  /**
   * Further stores fed every record from the first on, in chain order. Built by whoever composes
   * the process (pg-sink.ts's openAuditStores for [audit.postgres]); from open() on the log owns
   * them: close() closes them, and so does an open() that fails.
   */
  readonly sinks?: readonly RecordSink[];
  // Knobs for tests; production uses the defaults.
  /** How often a failed writer retries (default 1 s). */
  readonly retryMs?: number;
  /** Records kept in memory while the file cannot be written (default 10 000). */
  readonly maxQueueRecords?: number;
  /** Bytes kept in memory while the file cannot be written (default 64 MiB). */
  readonly maxQueueBytes?: number;
}

/** A run of records dropped from the file (the queue was full): closed by one audit.gap record. */
interface DropRun {
  readonly from: number;
  to: number;
  count: number;
  readonly cause: WriteFailureCause | 'queue_overflow';
}

export class AuditLog implements AuditSink {
  private readonly sinks: RecordSink[] = [];
  private readonly healthListeners: ((healthy: boolean) => void)[] = [];
  private seq = 0;
  private head: string | null;
  private readonly instance: AuditRecord['instance'];
  private readonly monoBase = process.hrtime.bigint();
  private readonly wallBaseNs = BigInt(Date.now()) * 1_000_000n;
  private writer: AuditFileWriter | null = null;
  private dropRun: DropRun | null = null;
  /** First seq the next checkpoint covers, and how many records it would cover. */
  private checkpointFrom = 0;
  private sinceCheckpoint = 0;
  private readonly timers: NodeJS.Timeout[] = [];
  private closed = false;

  private constructor(
    private readonly cfg: AuditConfig,
    private readonly signer: CheckpointSigner | null,
    prevHead: string | null,
    instanceId: string,
    version: string,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    this.head = prevHead;
    this.instance = { id: instanceId, version, boot_id: randomUUID() };
    metrics.auditHealthy.set(1);
  }

  /**
   * Opens (creating) the file and continues the chain from the last record of the file, or of its
   * newest rotated sibling when the file is new. No file: records are only counted (and given to
   * the sinks). A checkpoint key that cannot be read is a startup error.
   */
  static async open(cfg: AuditConfig, instanceId: string, version: string, metrics: Metrics, log: Logger, opts: AuditLogOptions = {}): Promise<AuditLog> {
    try {
      return await AuditLog.start(cfg, instanceId, version, metrics, log, opts);
    } catch (err) {
      await Promise.all((opts.sinks ?? []).map((s) => s.close().catch(() => undefined)));
      throw err;
    }
  }

  private static async start(cfg: AuditConfig, instanceId: string, version: string, metrics: Metrics, log: Logger, opts: AuditLogOptions): Promise<AuditLog> {
    const signer = cfg.checkpointKeyPath === undefined ? null : new CheckpointSigner(await loadPrivateKey(cfg.checkpointKeyPath), cfg.checkpointOrigin);
    const file = cfg.file;
    const tail = file === undefined ? NO_TAIL : await readTail(file, log);
    const audit = new AuditLog(cfg, signer, tail.hash, instanceId, version, metrics, log);
    for (const sink of opts.sinks ?? []) audit.addSink(sink);
    if (file !== undefined) {
      audit.writer = await AuditFileWriter.open(
        file,
        {
          rotateBytes: cfg.rotateBytes,
          fsync: cfg.fsync,
          retryMs: opts.retryMs ?? 1_000,
          maxQueueRecords: opts.maxQueueRecords ?? 10_000,
          maxQueueBytes: opts.maxQueueBytes ?? 64 * 1024 * 1024,
        },
        {
          onHealth: (healthy) => {
            for (const l of audit.healthListeners) l(healthy);
          },
          beforeRotate: () => audit.checkpoint(),
          onWritten: () => audit.endDropRun(),
        },
        metrics,
        log,
      );
      // A line torn by a crash stays as it is (verify names it); new records start on a line of their own.
      if (tail.torn) void audit.writer.enqueue('\n', 0, false);
      if (cfg.rotateIntervalMs > 0) audit.every(cfg.rotateIntervalMs, () => audit.writer?.requestRotate());
    }
    if (signer !== null) audit.every(cfg.checkpointIntervalMs, () => audit.checkpoint());
    // The previous boot did not stop cleanly (a crash, SIGKILL, power loss): whatever it had
    // queued and not written is gone. Say so first (SECURITY.md §2.7, cause "restart"); the
    // sinks are attached already, so the store gets the record too.
    if (tail.found && !tail.clean) {
      log.warn({ previous_boot: tail.bootId, last_seq: tail.lastSeq, torn: tail.torn }, 'the previous run did not stop cleanly: writing audit.gap (restart)');
      audit.add(
        { event: 'audit.gap', cause: 'restart', previous_boot: tail.bootId, from_seq: tail.lastSeq === null ? null : tail.lastSeq + 1, to_seq: null, dropped_estimate: null, torn_line: tail.torn },
        false,
      );
    }
    return audit;
  }

  private every(ms: number, fn: () => void): void {
    const t = setInterval(fn, ms);
    t.unref();
    this.timers.push(t);
  }

  /** Adds a store that receives every record from now on, in chain order. */
  addSink(sink: RecordSink): void {
    this.sinks.push(sink);
  }

  /** Told when the file stops or starts accepting writes (the primary tells its workers). */
  onHealthChange(listener: (healthy: boolean) => void): void {
    this.healthListeners.push(listener);
  }

  get bootId(): string {
    return this.instance.boot_id;
  }

  /** False after a failed write (ENOSPC, EIO…) until a later write succeeds. */
  get healthy(): boolean {
    return this.writer?.healthy ?? true;
  }

  append(event: AuditEvent): AuditRecord {
    return this.add(event, false).record;
  }

  async appendDurable(event: AuditEvent): Promise<void> {
    const unhealthy = !this.healthy;
    const { done } = this.add(event, true);
    if (unhealthy) {
      // Fail closed at once rather than wait for the next retry; the record stays queued.
      done?.catch(() => undefined);
      throw new Error(`audit log is unavailable (${this.writer?.failure ?? 'EIO'})`);
    }
    await done;
  }

  private add(event: AuditEvent, durable: boolean): { record: AuditRecord; done: Promise<void> | null } {
    if (this.dropRun !== null) this.endDropRun();
    const { record, line } = this.build(event);
    const done = this.store(record, line, durable);
    if (record.event !== 'audit.checkpoint') {
      this.sinceCheckpoint++;
      if (this.signer !== null && this.sinceCheckpoint >= this.cfg.checkpointEveryRecords) this.checkpoint();
    }
    return { record, done };
  }

  private build(event: AuditEvent): { record: AuditRecord; line: string } {
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
    const { hash, line } = sealRecord(record);
    record.chain.hash = hash;
    this.head = hash;
    return { record, line };
  }

  /** Queues the line for the file (or drops it, counted, when memory is full) and tells the sinks. */
  private store(record: AuditRecord, line: string, durable: boolean): Promise<void> | null {
    let done: Promise<void> | null = null;
    const writer = this.writer;
    if (writer === null) {
      if (durable) done = Promise.resolve();
    } else if (this.closed) {
      this.log.warn({ event: record.event, seq: record.seq }, 'audit record after close: not written');
      if (durable) done = Promise.reject(new Error('audit log is closed'));
    } else if (this.dropRun === null && writer.canAccept(line.length)) {
      done = writer.enqueue(line, record.seq, durable);
    } else {
      if (this.dropRun === null) this.dropRun = { from: record.seq, to: record.seq, count: 0, cause: writer.healthy ? 'queue_overflow' : (writer.failure ?? 'EIO') };
      this.dropRun.to = record.seq;
      this.dropRun.count++;
      this.metrics.auditDropped.inc();
      if (this.dropRun.count === 1) this.log.error({ from_seq: record.seq, cause: this.dropRun.cause }, 'audit queue full: dropping records from the file until it drains');
      if (durable) done = Promise.reject(new Error('audit log is unavailable (queue full)'));
    }
    for (const sink of this.sinks) sink.deliver(record, line);
    this.metrics.auditRecords.inc({ event: record.event });
    return done;
  }

  /** Ends a drop run with its audit.gap record once the file can take records again. */
  private endDropRun(): void {
    const run = this.dropRun;
    if (run === null || this.writer === null || !this.writer.healthy || !this.writer.canAccept(512)) return;
    this.dropRun = null;
    this.log.warn({ from_seq: run.from, to_seq: run.to, dropped: run.count, cause: run.cause }, 'audit records were dropped: writing audit.gap');
    this.add({ event: 'audit.gap', from_seq: run.from, to_seq: run.to, cause: run.cause, dropped_estimate: run.count }, false);
  }

  /** Appends a signed audit.checkpoint covering the records since the last one (if any). */
  private checkpoint(): void {
    if (this.signer === null || this.sinceCheckpoint === 0 || this.head === null) return;
    const lastSeq = this.seq - 1;
    const fields = this.signer.fields(this.checkpointFrom, lastSeq, this.head);
    this.sinceCheckpoint = 0;
    this.checkpointFrom = this.seq + 1; // the record after this checkpoint
    this.add({ event: 'audit.checkpoint', ...fields }, false);
    this.metrics.auditCheckpoints.inc();
  }

  async flush(): Promise<void> {
    await this.writer?.flush();
  }

  /** A last checkpoint, then everything written and synced; then the sinks. */
  async close(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.checkpoint();
    if (this.dropRun !== null) this.endDropRun();
    this.closed = true;
    await this.writer?.close();
    await Promise.all(this.sinks.map((s) => s.close()));
  }
}

/** How the previous boot's log ends: its last record, and whether it stopped cleanly. */
interface Tail {
  found: boolean;
  hash: string | null;
  torn: boolean;
  /** The last record is the previous boot's `proxy.lifecycle` "stopped" (checkpoints after it aside). */
  clean: boolean;
  lastSeq: number | null;
  bootId: string | null;
}

const NO_TAIL: Tail = { found: false, hash: null, torn: false, clean: true, lastSeq: null, bootId: null };

/** The last complete record (of the file, else of its newest rotated sibling). */
async function readTail(file: string, log: Logger): Promise<Tail> {
  const own = await lastRecord(file, log);
  if (own.found) return own;
  const siblings = await rotatedSiblings(file);
  const newest = siblings[siblings.length - 1];
  if (newest === undefined) return { ...NO_TAIL, torn: own.torn };
  return { ...(await lastRecord(newest, log)), torn: own.torn };
}

async function lastRecord(file: string, log: Logger): Promise<Tail> {
  let size: number;
  try {
    const st = await stat(file);
    if (!st.isFile()) return NO_TAIL;
    size = st.size;
  } catch {
    return NO_TAIL;
  }
  if (size === 0) return NO_TAIL;
  const fh = await openFile(file, 'r');
  try {
    const len = Math.min(size, 1 << 20);
    const buf = Buffer.alloc(len);
    await fh.read(buf, 0, len, size - len);
    const text = buf.toString('utf8');
    const torn = !text.endsWith('\n');
    const lines = text.split('\n').filter((l) => l.length > 0);
    type Rec = { event?: unknown; state?: unknown; seq?: unknown; instance?: { boot_id?: unknown }; chain?: { hash?: unknown } };
    const parse = (line: string): Rec | null => {
      try {
        return JSON.parse(line) as Rec;
      } catch {
        return null;
      }
    };
    // A torn last line (crash mid-write) is skipped: the chain continues from the last whole record.
    for (let i = lines.length - 1; i >= 0; i--) {
      const rec = parse(lines[i]!);
      if (rec === null || typeof rec.chain?.hash !== 'string') continue;
      // Clean: the boot's last word was "stopped" (its final checkpoint may follow it).
      let j = i;
      let last: Rec | null = rec;
      while (last !== null && last.event === 'audit.checkpoint' && j > 0) last = parse(lines[--j]!);
      const clean = !torn && last !== null && last.event === 'proxy.lifecycle' && last.state === 'stopped';
      return {
        found: true,
        hash: rec.chain.hash,
        torn,
        clean,
        lastSeq: typeof rec.seq === 'number' ? rec.seq : null,
        bootId: typeof rec.instance?.boot_id === 'string' ? rec.instance.boot_id : null,
      };
    }
    log.warn({ file }, 'audit file has no readable last record; starting a new chain');
    return { ...NO_TAIL, found: true, torn, clean: false };
  } finally {
    await fh.close();
  }
}
