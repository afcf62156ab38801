/**
 * The audit file writer's memory side: lines waiting for the file, bounded in records and bytes,
 * cut into batches of one write(2) each. Writing a batch, syncing it and retrying it are
 * writer.ts's; what to do with a line that does not fit is log.ts's.
 */
import type { Metrics } from '../observability/metrics.js';

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

export interface QueuedLine {
  readonly line: string;
  readonly bytes: number;
  readonly seq: number;
  /** Set for a durable append: settled once its batch is written (and synced), or fails. */
  waiter: Waiter | null;
}

export interface Batch {
  readonly entries: QueuedLine[];
  readonly buf: Buffer;
  /** Bytes already written: a retry continues here (the same file) or from 0 (a new file). */
  off: number;
  readonly sync: boolean;
}

/** One write(2) carries at most this much; larger queues go in several batches. */
const MAX_BATCH_BYTES = 4 * 1024 * 1024;

export class WriteQueue {
  private queue: QueuedLine[] = [];
  /** Held in memory: queued, plus taken in batches that have not reached the file yet. */
  private pendingRecords = 0;
  private pendingBytes = 0;

  constructor(
    private readonly opts: { readonly maxQueueRecords: number; readonly maxQueueBytes: number; readonly fsync: boolean },
    private readonly metrics: Metrics,
  ) {}

  /** Lines queued and not yet taken in a batch. */
  get length(): number {
    return this.queue.length;
  }

  /** Records held in memory (queued plus in flight). */
  get records(): number {
    return this.pendingRecords;
  }

  /** Whether one more record of this size fits in memory. */
  canAccept(bytes: number): boolean {
    return this.pendingRecords < this.opts.maxQueueRecords && this.pendingBytes + bytes <= this.opts.maxQueueBytes;
  }

  /** Queues a line; with `durable`, the promise settles once its batch is written (and synced). */
  push(line: string, seq: number, durable: boolean): Promise<void> | null {
    const bytes = Buffer.byteLength(line, 'utf8');
    const entry: QueuedLine = { line, bytes, seq, waiter: null };
    let done: Promise<void> | null = null;
    if (durable) done = new Promise<void>((resolve, reject) => (entry.waiter = { resolve, reject }));
    this.queue.push(entry);
    this.pendingRecords++;
    this.pendingBytes += bytes;
    this.gauge();
    return done;
  }

  /** The next batch (everything queued with `all`, else up to MAX_BATCH_BYTES), or null. */
  take(all: boolean): Batch | null {
    if (this.queue.length === 0) return null;
    let n = 0;
    let bytes = 0;
    while (n < this.queue.length && (all || n === 0 || bytes + this.queue[n]!.bytes <= MAX_BATCH_BYTES)) bytes += this.queue[n++]!.bytes;
    const entries = n === this.queue.length ? this.queue : this.queue.slice(0, n);
    this.queue = n === this.queue.length ? [] : this.queue.slice(n);
    let text = '';
    let sync = false;
    for (const e of entries) {
      text += e.line;
      if (e.waiter !== null && this.opts.fsync) sync = true;
    }
    return { entries, buf: Buffer.from(text, 'utf8'), off: 0, sync };
  }

  /** The batch is in the file: its records leave memory. */
  written(batch: Batch): void {
    let bytes = 0;
    for (const e of batch.entries) bytes += e.bytes;
    this.pendingRecords -= batch.entries.length;
    this.pendingBytes -= bytes;
    this.gauge();
  }

  /** Empties the queue, returning what it held (at close: records that will not be written). */
  drain(): QueuedLine[] {
    const rest = this.queue;
    this.queue = [];
    return rest;
  }

  private gauge(): void {
    this.metrics.auditQueueRecords.set(this.pendingRecords);
    this.metrics.auditQueueBytes.set(this.pendingBytes);
  }
}
