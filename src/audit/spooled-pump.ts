/**
 * One ordered, batched, spooled delivery of chained records to a PostgreSQL table somewhere: the
 * part the audit store (pg-sink.ts) and each tenant's staff_access_log (session/transparency.ts)
 * share. What an INSERT is, and which counters it moves, is the owner's; the spool files are
 * spool.ts's.
 *
 * Order and exactly-once: the backlog is one FIFO in three parts, `head` (memory, being sent),
 * the spool (files on disk, oldest first) and `tail` (memory, newest). New records join the
 * tail; a full tail, or any record while the target is failing, moves to the newest spool file, which
 * keeps FIFO order because the tail is always the newest part. Only the head is sent, one batch at
 * a time, and a record leaves the head only once its INSERT has committed. A retry after a lost
 * reply, or a spool file re-sent after a crash, is harmless as long as the owner's INSERT ignores
 * a record it already has (the record id as the key, ON CONFLICT DO NOTHING).
 */
import type { Logger } from '../observability/logger.js';
import type { AuditRecord } from './record.js';
import { recordTimeMs, type Spool } from './spool.js';
import type { StoredRecord } from './store-table.js';

/** What the owner of a pump decides: the INSERT, its counters, the names in its log lines. */
export interface PumpTarget {
  readonly batchSize: number;
  readonly flushIntervalMs: number;
  /**
   * A record the target refuses as data (SQLSTATE 22/23): 'skip' it (it stays in the audit file;
   * the audit store, where one bad row must not stall the rest), or 'hold' it at the head and try
   * again like an unreachable target until the target takes it (a customer's access log, where a
   * missing row would break the promise: the backlog's age then ends staff access, fail closed).
   */
  readonly dataErrors: 'skip' | 'hold';
  /** Stores a batch (all or nothing). A data error (SQLSTATE 22/23) under 'skip' makes the pump try one by one. */
  insert(batch: readonly StoredRecord[]): Promise<void>;
  delivered(records: number): void;
  failed(op: 'insert' | 'rejected' | 'spool'): void;
  /** The target is unreachable (once per outage) or reachable again. */
  downChanged(down: boolean, err: unknown, pending: number): void;
  /** A record the target refused as data under 'skip': it stays in the audit file only. */
  rejected?(entry: StoredRecord, err: unknown): void;
}

export interface PumpBacklog {
  readonly records: number;
  readonly spooled: number;
  readonly oldestMs: number | null;
}

const MAX_BACKOFF_MS = 2_000;
/** The tail (newest records in memory) spills to the spool beyond this many bytes. */
const MEMORY_MAX_BYTES = 8 * 1024 * 1024;
/** close(): how long the store may take for what is still in memory before it is spooled. */
const CLOSE_GRACE_MS = 2_000;

/** Where the head came from: memory (under a spool name it reserved) or a spool file, deleted once stored. */
type HeadOrigin = { kind: 'memory'; counter: number } | { kind: 'spool'; file: string } | null;
type Step = 'more' | 'idle' | 'failed';

/** Is the error the store's verdict on the data (retrying the same rows cannot help)? */
export const isDataError = (err: unknown): boolean => {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && /^2[23]/.test(code);
};

export class SpooledPump {
  private head: StoredRecord[] = [];
  private headOrigin: HeadOrigin = null;
  private tail: StoredRecord[] = [];
  private tailBytes = 0;
  private readonly tailMaxRecords: number;
  /** The last INSERT failed: new records go straight to the spool until one succeeds. */
  private down = false;
  private closing = false;
  private stopped = false;
  private wake: (() => void) | null = null;
  private readonly loop: Promise<void>;

  constructor(
    private readonly target: PumpTarget,
    private readonly spool: Spool,
    private readonly log: Logger,
  ) {
    this.tailMaxRecords = Math.max(1000, 4 * target.batchSize);
    this.loop = this.run();
  }

  /** The last delivery failed, and nothing was delivered since. */
  get failing(): boolean {
    return this.down;
  }

  deliver(record: AuditRecord, line: string): void {
    const entry: StoredRecord = { record, line: line.endsWith('\n') ? line.slice(0, -1) : line };
    this.push(entry);
  }

  /** Queues one record (its line without the newline) at the end of the FIFO. */
  push(entry: StoredRecord): void {
    if (this.stopped) {
      // After close() nothing is sent any more; the record still reaches the spool, in order.
      this.spool.append([entry]);
      return;
    }
    this.tail.push(entry);
    this.tailBytes += entry.line.length;
    if (this.down || this.tail.length >= this.tailMaxRecords || this.tailBytes >= MEMORY_MAX_BYTES) this.spillTail();
    else if (this.tail.length >= this.target.batchSize) this.wakeUp();
  }

  /**
   * Gives the store a short grace for what is in memory, then spools the rest (the head first,
   * under the file name it reserved, so the spool keeps the order) and closes the spool files.
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const deadline = Date.now() + CLOSE_GRACE_MS;
    while (Date.now() < deadline && !this.down && (this.head.length > 0 || this.tail.length > 0)) {
      this.wakeUp();
      await sleep(20);
    }
    this.stopped = true;
    this.wakeUp();
    // An INSERT still in flight may yet commit; if it does, the spooled copy is a harmless duplicate.
    await Promise.race([this.loop, sleep(CLOSE_GRACE_MS)]);
    const origin = this.headOrigin;
    if (origin?.kind === 'memory' && this.head.length > 0) await this.spool.writeFile(origin.counter, this.head);
    this.head = [];
    this.headOrigin = null;
    this.spillTail();
    await this.spool.close();
  }

  /** What waits, and since when (ms since the epoch) the oldest of it: what the metrics read at scrape time. */
  backlog(): PumpBacklog {
    const spooled = this.spool.records;
    const first = this.head[0] ?? null;
    let oldestMs: number | null = first === null ? null : recordTimeMs(first.record);
    oldestMs ??= this.spool.oldestTimeMs;
    if (oldestMs === null && this.tail[0] !== undefined) oldestMs = recordTimeMs(this.tail[0].record);
    return { records: this.head.length + spooled + this.tail.length, spooled, oldestMs };
  }

  private wakeUp(): void {
    this.wake?.();
  }

  private async run(): Promise<void> {
    let backoffMs = this.target.flushIntervalMs;
    while (!this.stopped) {
      let step: Step;
      try {
        step = await this.step();
      } catch (err) {
        // Spool I/O: the records stay where they are and are tried again.
        this.target.failed('spool');
        this.log.error({ err }, 'spool error');
        step = 'failed';
      }
      if (step === 'more') {
        backoffMs = this.target.flushIntervalMs;
        continue;
      }
      const waitMs = step === 'idle' ? this.target.flushIntervalMs : backoffMs;
      if (step === 'failed') backoffMs = Math.min(backoffMs * 2, MAX_BACKOFF_MS);
      else backoffMs = this.target.flushIntervalMs;
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          this.wake = null;
          resolve();
        }, waitMs);
        t.unref(); // the pump alone never keeps the process alive
        // A full batch wakes an idle pump early; a failing one keeps its backoff unless closing.
        this.wake = () => {
          if (step === 'idle' || this.stopped) {
            this.wake = null;
            clearTimeout(t);
            resolve();
          }
        };
      });
    }
  }

  /** Sends one batch from the head, refilling the head first from the oldest spool file or the tail. */
  private async step(): Promise<Step> {
    if (this.head.length === 0 && !(await this.refillHead())) return 'idle';
    const batch = this.head.slice(0, this.target.batchSize);
    try {
      try {
        await this.target.insert(batch);
      } catch (err) {
        if (!isDataError(err) || this.target.dataErrors === 'hold') throw err;
        // One bad row must not stall the store: insert one by one, leaving out only what it refuses.
        await this.insertOneByOne(batch);
      }
    } catch (err) {
      this.failed(err, batch.length);
      return 'failed';
    }
    this.head.splice(0, batch.length);
    this.target.delivered(batch.length);
    if (this.down) {
      this.down = false;
      this.target.downChanged(false, null, this.backlog().records);
    }
    if (this.head.length === 0) {
      const origin = this.headOrigin;
      this.headOrigin = null;
      if (origin?.kind === 'spool') await this.spool.remove(origin.file);
    }
    return this.head.length > 0 || this.spool.files > 0 || this.tail.length >= this.target.batchSize ? 'more' : 'idle';
  }

  /** False when there is nothing to send. */
  private async refillHead(): Promise<boolean> {
    const spooled = await this.spool.shift();
    if (spooled !== null) {
      this.head = spooled.entries;
      this.headOrigin = { kind: 'spool', file: spooled.file };
      return true;
    }
    if (this.tail.length === 0) return false;
    this.head = this.tail;
    // A spool file name is reserved for the head, older than any spool file made from now on.
    this.headOrigin = { kind: 'memory', counter: this.spool.reserve() };
    this.tail = [];
    this.tailBytes = 0;
    return true;
  }

  private async insertOneByOne(batch: readonly StoredRecord[]): Promise<void> {
    for (const entry of batch) {
      try {
        await this.target.insert([entry]);
      } catch (err) {
        if (!isDataError(err)) throw err;
        this.target.failed('rejected');
        this.target.rejected?.(entry, err);
      }
    }
  }

  private failed(err: unknown, records: number): void {
    this.target.failed('insert');
    // One report per outage, not per retry.
    if (!this.down) this.target.downChanged(true, err, records);
    this.down = true;
    this.spillTail();
  }

  /** Moves the whole tail to the newest spool file (it is the newest part of the FIFO). */
  private spillTail(): void {
    if (this.tail.length === 0) return;
    const entries = this.tail;
    this.tail = [];
    this.tailBytes = 0;
    this.spool.append(entries);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
