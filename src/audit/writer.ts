/**
 * The audit file on disk: an O_APPEND descriptor written in batches (group commit: one write in
 * flight while the next batch accumulates in write-queue.ts), fdatasync for durable appends,
 * rotation by renaming, and the retry loop while the disk refuses writes. What a record says, its
 * chain and the audit.gap / audit.checkpoint records are log.ts's business.
 */
import { mkdir, open, rename, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { rotatedName, syncDir } from './files.js';
import { WriteQueue, type Batch } from './write-queue.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';

/** SECURITY.md §2.7 names two causes for a failed write. */
export type WriteFailureCause = 'ENOSPC' | 'EIO';

export function failureCause(err: unknown): WriteFailureCause {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG' ? 'ENOSPC' : 'EIO';
}

export interface WriterOptions {
  readonly rotateBytes: number;
  readonly fsync: boolean;
  /** How often a failed writer tries again. */
  readonly retryMs: number;
  /** Records held in memory (queued plus in flight) before new ones are dropped. */
  readonly maxQueueRecords: number;
  readonly maxQueueBytes: number;
}

export interface WriterHooks {
  /** The file accepted a write after failing, or refused one after working. */
  onHealth(healthy: boolean, cause: WriteFailureCause | null): void;
  /** Called synchronously just before the file is cut, so the log can end it with a checkpoint. */
  beforeRotate(): void;
  /** A batch reached the file: room in the queue again. */
  onWritten(): void;
}

/** A rotation whose rename failed is tried again after this long. */
const ROTATE_RETRY_MS = 60_000;

export class AuditFileWriter {
  private fh: FileHandle | null;
  private identity: string;
  private regular: boolean;
  private fileBytes: number;
  /** seq of the first record this process wrote into the current file (for the rotated name). */
  private firstSeqInFile: number | null = null;
  private readonly queue: WriteQueue;
  /** A batch whose write failed: retried before anything newer, so the file keeps chain order. */
  private stalled: Batch | null = null;
  /** The last fdatasync failed after its write succeeded: sync again before trusting the file. */
  private syncOwed = false;
  private running = false;
  private isHealthy = true;
  private cause: WriteFailureCause | null = null;
  private rotateDue = false;
  /** After a failed rename, size-triggered rotation waits until then (not on every batch). */
  private rotateRetryAt = 0;
  private closed = false;
  private closing = false;
  private reopenOnRetry = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private idleWaiters: (() => void)[] = [];

  private constructor(
    readonly file: string,
    fh: FileHandle,
    st: { dev: number; ino: number; size: number; regular: boolean },
    private readonly opts: WriterOptions,
    private readonly hooks: WriterHooks,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    this.fh = fh;
    this.identity = `${st.dev}:${st.ino}`;
    this.regular = st.regular;
    this.fileBytes = st.size;
    this.queue = new WriteQueue(opts, metrics);
    if (!st.regular && opts.rotateBytes > 0) log.warn({ file }, 'audit file is not a regular file: rotation is off');
    metrics.auditHealthy.set(1);
  }

  static async open(file: string, opts: WriterOptions, hooks: WriterHooks, metrics: Metrics, log: Logger): Promise<AuditFileWriter> {
    await mkdir(path.dirname(file), { recursive: true });
    const fh = await open(file, 'a', 0o600);
    const st = await fh.stat();
    return new AuditFileWriter(file, fh, { dev: st.dev, ino: st.ino, size: st.size, regular: st.isFile() }, opts, hooks, metrics, log);
  }

  get healthy(): boolean {
    return this.isHealthy;
  }

  /** The cause of the last failure (null while healthy). */
  get failure(): WriteFailureCause | null {
    return this.cause;
  }

  /** Whether one more record of this size fits in memory. */
  canAccept(bytes: number): boolean {
    return !this.closed && this.queue.canAccept(bytes);
  }

  /** Queues a line; with `durable`, the promise settles once its batch is written (and synced). */
  enqueue(line: string, seq: number, durable: boolean): Promise<void> | null {
    const done = this.queue.push(line, seq, durable);
    // Appends in the same tick share the batch; the write starts once the caller's turn is over.
    if (!this.running && this.isHealthy && this.queue.length === 1) process.nextTick(() => this.kick());
    return done;
  }

  /** The rotation interval elapsed: cut the file at the next batch boundary. */
  requestRotate(): void {
    if (this.firstSeqInFile === null || !this.regular) return;
    this.rotateDue = true;
    this.kick();
  }

  /** Resolves once the writer is idle: everything queued is written, or a write has failed. */
  flush(): Promise<void> {
    if (!this.running && (this.queue.length === 0 || !this.isHealthy)) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Writes what it can (one more try if unhealthy), syncs and closes; what cannot be written is logged as lost. */
  async close(): Promise<void> {
    this.closing = true;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    await this.flush();
    if (!this.isHealthy || this.queue.length > 0 || this.stalled !== null) {
      this.kick(true);
      await this.flush();
    }
    this.closed = true;
    const fh = this.fh;
    this.fh = null;
    if (fh !== null) {
      try {
        if (this.opts.fsync) await fh.datasync();
      } catch (err) {
        this.log.error({ err }, 'audit file fdatasync failed at close');
      }
      await fh.close().catch(() => undefined);
    }
    const lost = [...(this.stalled?.entries ?? []), ...this.queue.drain()];
    if (lost.length > 0) {
      this.log.error({ records: lost.length, first_seq: lost[0]!.seq, cause: this.cause }, 'audit records could not be written before close');
      const err = new Error('audit log closed before the record was written');
      for (const e of lost) e.waiter?.reject(err);
    }
    this.stalled = null;
  }

  private kick(force = false): void {
    if (this.running || this.closed) return;
    if (!this.isHealthy && !force) return; // the retry timer brings it back
    this.running = true;
    this.run().then(
      () => this.idle(),
      (err: unknown) => {
        // run() handles I/O errors itself; anything here is a bug, logged in full.
        this.log.error({ err }, 'audit writer loop failed');
        this.idle();
      },
    );
  }

  private idle(): void {
    this.running = false;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
    // Records that arrived after the loop decided to stop.
    if (this.isHealthy && (this.queue.length > 0 || this.rotateDue)) this.kick();
  }

  private async run(): Promise<void> {
    for (;;) {
      let fh = this.fh;
      try {
        if (fh === null || this.reopenOnRetry) fh = await this.reopen();
        if (this.syncOwed) {
          await fh.datasync();
          this.metrics.auditFsyncs.inc();
          this.syncOwed = false;
          this.healthy_();
        }
      } catch (err) {
        this.fail(err, null);
        return;
      }
      // Failed at opening (after a rotation) with nothing left to write: the reopen was the test.
      if (!this.isHealthy && this.stalled === null && this.queue.length === 0) this.healthy_();
      let batch = this.stalled;
      if (batch === null && this.rotateDue) {
        this.rotateDue = false;
        this.hooks.beforeRotate(); // may queue a checkpoint: it ends this file
        batch = this.queue.take(true);
        if (batch !== null && !(await this.writeBatch(fh, batch))) return;
        if (!(await this.rotate(fh))) return;
        continue;
      }
      batch ??= this.queue.take(false);
      if (batch === null) return;
      if (!(await this.writeBatch(fh, batch))) return;
    }
  }

  /** Writes (and syncs) one batch; false after a failure, which leaves the writer unhealthy. */
  private async writeBatch(fh: FileHandle, batch: Batch): Promise<boolean> {
    try {
      while (batch.off < batch.buf.length) {
        const { bytesWritten } = await fh.write(batch.buf, batch.off, batch.buf.length - batch.off);
        if (bytesWritten <= 0) throw Object.assign(new Error('audit write made no progress'), { code: 'EIO' });
        batch.off += bytesWritten;
        this.fileBytes += bytesWritten;
      }
    } catch (err) {
      this.stalled = batch;
      this.fail(err, batch);
      return false;
    }
    this.stalled = null;
    this.metrics.auditWrites.inc();
    this.firstSeqInFile ??= batch.entries[0]!.seq;
    let syncErr: unknown = null;
    if (batch.sync) {
      try {
        await fh.datasync();
        this.metrics.auditFsyncs.inc();
      } catch (err) {
        syncErr = err;
      }
    }
    this.queue.written(batch);
    if (syncErr !== null) {
      // The bytes are in the file but maybe not on disk: never write them twice, sync again later.
      this.syncOwed = true;
      this.fail(syncErr, batch);
      return false;
    }
    for (const e of batch.entries) e.waiter?.resolve();
    this.healthy_();
    if (this.opts.rotateBytes > 0 && this.regular && this.fileBytes >= this.opts.rotateBytes && Date.now() >= this.rotateRetryAt) this.rotateDue = true;
    this.hooks.onWritten();
    return true;
  }

  private healthy_(): void {
    if (this.isHealthy) return;
    this.isHealthy = true;
    this.cause = null;
    this.reopenOnRetry = false;
    this.metrics.auditHealthy.set(1);
    this.log.info({ file: this.file }, 'audit log writable again');
    this.hooks.onHealth(true, null);
  }

  private fail(err: unknown, batch: Batch | null): void {
    const cause = failureCause(err);
    this.metrics.auditWriteFailures.inc({ cause });
    // Durable waiters fail closed now; their records stay queued and are written on recovery.
    const reason = new Error(`audit log write failed (${(err as NodeJS.ErrnoException | null)?.code ?? cause})`, { cause: err });
    for (const e of batch?.entries ?? []) {
      e.waiter?.reject(reason);
      e.waiter = null;
    }
    const was = this.isHealthy;
    this.isHealthy = false;
    this.cause = cause;
    this.reopenOnRetry = true;
    if (was) {
      this.metrics.auditHealthy.set(0);
      this.log.error({ err, file: this.file, queued: this.queue.records }, 'audit log write failed: retrying');
      this.hooks.onHealth(false, cause);
    }
    if (this.retryTimer === null && !this.closing) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        this.kick(true);
      }, this.opts.retryMs);
      this.retryTimer.unref();
    }
  }

  /**
   * A fresh descriptor for the path: after EIO the old one may be dead, and an operator may have
   * made room or moved the file. A partly written batch restarts at byte 0 in a different file.
   */
  private async reopen(): Promise<FileHandle> {
    const old = this.fh;
    this.fh = null;
    await old?.close().catch(() => undefined);
    await mkdir(path.dirname(this.file), { recursive: true });
    const fh = await open(this.file, 'a', 0o600);
    const st = await fh.stat();
    const identity = `${st.dev}:${st.ino}`;
    if (identity !== this.identity) {
      if (this.stalled !== null) this.stalled.off = 0;
      this.firstSeqInFile = null;
    }
    this.identity = identity;
    this.regular = st.isFile();
    this.fileBytes = st.size;
    this.fh = fh;
    this.reopenOnRetry = false;
    return fh;
  }

  /**
   * Renames the file to `<file>.<YYYYMMDDTHHMMSS.mmmZ>.<first seq>` and opens a new one. The chain goes
   * on in the new file (log.ts keeps the head). A failed rename keeps writing to the same file.
   */
  private async rotate(fh: FileHandle): Promise<boolean> {
    // The batch that ended this file set rotateDue again; this rotation answers both.
    this.rotateDue = false;
    if (this.firstSeqInFile === null) return true;
    try {
      await fh.datasync();
      this.metrics.auditFsyncs.inc();
      const target = await rotatedName(this.file, this.firstSeqInFile);
      await rename(this.file, target);
      this.log.info({ file: this.file, rotated_to: target }, 'audit file rotated');
    } catch (err) {
      this.metrics.auditRotations.inc({ outcome: 'failed' });
      this.rotateRetryAt = Date.now() + ROTATE_RETRY_MS;
      this.log.error({ err, file: this.file }, 'audit file rotation failed: writing on to the same file');
      return true;
    }
    this.metrics.auditRotations.inc({ outcome: 'rotated' });
    // Open the new file before giving up the old descriptor; failing here is a write failure.
    this.fh = null;
    await fh.close().catch(() => undefined);
    try {
      await this.reopen();
      await syncDir(path.dirname(this.file));
      return true;
    } catch (err) {
      this.fail(err, null);
      return false;
    }
  }
}
