/**
 * The sink that feeds the PostgreSQL audit store every chained record in order, in batches,
 * spooling to local disk while the store is down or slow. The table is store-table.ts's, the spool
 * files spool.ts's; chaining and the file are log.ts's; reading the store back is query.ts's.
 *
 * Order and exactly-once: the backlog is one FIFO in three parts, `head` (memory, being sent),
 * the spool (files on disk, oldest first) and `tail` (memory, newest). New records join the
 * tail; a full tail, or any record while the store is failing, moves to the newest spool file, which
 * keeps FIFO order because the tail is always the newest part. Only the head is sent, one batch at
 * a time, and a record leaves the head only once its INSERT has committed. A retry after a lost
 * reply, or a spool file re-sent after a crash, is harmless: the id is the primary key and every
 * INSERT says ON CONFLICT (id) DO NOTHING.
 */
import { LazyPgClient } from '../storage/pg-client.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { AuditConfig, AuditPostgresConfig } from '../config/schema.js';
import type { RecordSink } from './record-sink.js';
import type { AuditRecord } from './record.js';
import { Spool, recordTimeMs } from './spool.js';
import { insertParams, insertSql, newStoreClient, type StoredRecord } from './store-table.js';

/**
 * The stores [audit] names besides the file, started: the PostgreSQL sink when [audit.postgres] is
 * set. For whoever composes the process, to hand to AuditLog.open.
 */
export async function openAuditStores(cfg: AuditConfig, metrics: Metrics, log: Logger): Promise<RecordSink[]> {
  return cfg.postgres === undefined ? [] : [await PgSink.start(cfg.postgres, metrics, log)];
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
const isDataError = (err: unknown): boolean => {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && /^2[23]/.test(code);
};

export class PgSink implements RecordSink {
  private head: StoredRecord[] = [];
  private headOrigin: HeadOrigin = null;
  private tail: StoredRecord[] = [];
  private tailBytes = 0;
  private readonly tailMaxRecords: number;
  private readonly client: LazyPgClient;
  /** The last INSERT failed: new records go straight to the spool until one succeeds. */
  private down = false;
  private closing = false;
  private stopped = false;
  private wake: (() => void) | null = null;
  private readonly loop: Promise<void>;
  private readonly insertSql: string;

  private constructor(
    private readonly cfg: AuditPostgresConfig,
    private readonly spool: Spool,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    this.tailMaxRecords = Math.max(1000, 4 * cfg.batchSize);
    this.insertSql = insertSql(cfg.table);
    this.client = new LazyPgClient(() => newStoreClient(cfg.url, cfg.passwordEnv));
    metrics.auditStoreBacklog = () => this.backlog();
    this.loop = this.run();
  }

  /**
   * Finds what an earlier run left in the spool (delivered first) and starts delivering. Does not
   * wait for the store: pgwarden starts, and records spool, while it is unreachable.
   */
  static async start(cfg: AuditPostgresConfig, metrics: Metrics, log: Logger): Promise<PgSink> {
    const spool = await Spool.open(cfg.spoolDir, metrics, log);
    const sink = new PgSink(cfg, spool, metrics, log);
    const spooled = spool.records;
    if (spooled > 0) log.info({ records: spooled, files: spool.files, spool_dir: cfg.spoolDir }, 'audit store: delivering the spool left by an earlier run first');
    return sink;
  }

  deliver(record: AuditRecord, line: string): void {
    const entry: StoredRecord = { record, line: line.endsWith('\n') ? line.slice(0, -1) : line };
    if (this.stopped) {
      // After close() nothing is sent any more; the record still reaches the spool, in order.
      this.spool.append([entry]);
      return;
    }
    this.tail.push(entry);
    this.tailBytes += entry.line.length;
    if (this.down || this.tail.length >= this.tailMaxRecords || this.tailBytes >= MEMORY_MAX_BYTES) this.spillTail();
    else if (this.tail.length >= this.cfg.batchSize) this.wakeUp();
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
    await Promise.race([this.client.end(), sleep(1000)]);
    this.metrics.auditStoreBacklog = null;
  }

  /** What the metrics read at scrape time. */
  private backlog(): { records: number; spooled: number; oldestMs: number | null } {
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
    let backoffMs = this.cfg.flushIntervalMs;
    while (!this.stopped) {
      let step: Step;
      try {
        step = await this.step();
      } catch (err) {
        // Spool I/O: the records stay where they are and are tried again.
        this.metrics.auditStoreFailures.inc({ op: 'spool' });
        this.log.error({ err }, 'audit store: spool error');
        step = 'failed';
      }
      if (step === 'more') {
        backoffMs = this.cfg.flushIntervalMs;
        continue;
      }
      const waitMs = step === 'idle' ? this.cfg.flushIntervalMs : backoffMs;
      if (step === 'failed') backoffMs = Math.min(backoffMs * 2, MAX_BACKOFF_MS);
      else backoffMs = this.cfg.flushIntervalMs;
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
    const batch = this.head.slice(0, this.cfg.batchSize);
    try {
      try {
        await this.insert(batch);
      } catch (err) {
        if (!isDataError(err)) throw err;
        // One bad row must not stall the store: insert one by one, leaving out only what it refuses.
        await this.insertOneByOne(batch);
      }
    } catch (err) {
      this.failed(err, batch.length);
      return 'failed';
    }
    this.head.splice(0, batch.length);
    this.metrics.auditStoreDelivered.inc(batch.length);
    if (this.down) {
      this.down = false;
      const b = this.backlog();
      this.log.info({ pending: b.records }, 'audit store reachable again; delivering the backlog in order');
    }
    if (this.head.length === 0) {
      const origin = this.headOrigin;
      this.headOrigin = null;
      if (origin?.kind === 'spool') await this.spool.remove(origin.file);
    }
    return this.head.length > 0 || this.spool.files > 0 || this.tail.length >= this.cfg.batchSize ? 'more' : 'idle';
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

  private async insert(batch: readonly StoredRecord[]): Promise<void> {
    const params = insertParams(batch);
    const client = await this.client.get();
    try {
      await client.query(this.insertSql, params);
    } catch (err) {
      if (!isDataError(err)) this.client.drop();
      throw err;
    }
  }

  private async insertOneByOne(batch: readonly StoredRecord[]): Promise<void> {
    for (const entry of batch) {
      try {
        await this.insert([entry]);
      } catch (err) {
        if (!isDataError(err)) throw err;
        this.metrics.auditStoreFailures.inc({ op: 'rejected' });
        this.log.error({ id: entry.record.id, seq: entry.record.seq, code: (err as { code?: string }).code, message: (err as Error).message }, 'audit store refused a record; it stays in the audit file only');
      }
    }
  }

  private failed(err: unknown, records: number): void {
    this.metrics.auditStoreFailures.inc({ op: 'insert' });
    if (!this.down) {
      // One line per outage, not per retry. pg's messages name no password (the URL has none).
      const e = err as { code?: string; message?: string };
      this.log.warn({ code: e.code, message: e.message, batch: records }, 'audit store unavailable; spooling records to disk until it returns');
    }
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
