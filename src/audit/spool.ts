/**
 * The PostgreSQL sink's disk spool: records the store has not taken yet, in files
 * `spool-<16-digit counter>.jsonl` under spool_dir, oldest counter first. Appends are buffered and
 * written by one writer per file; a file is sealed before it is read back. When to spool, and when
 * a file's records are stored so the file can go, is pg-sink.ts's.
 */
import { mkdir, open, readdir, readFile, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { AuditRecord } from './record.js';
import type { StoredRecord } from './store-table.js';

/** A spool file is closed at this size, so loading one into memory is bounded too. */
const SEGMENT_MAX_BYTES = 8 * 1024 * 1024;
const SEGMENT_RE = /^spool-(\d{16})\.jsonl$/;

export const recordTimeMs = (r: AuditRecord): number => Date.parse(r.time);

/** What a spool counts: records it took, and files it could not write or read. */
export interface SpoolCounters {
  spooled(records: number): void;
  failed(): void;
}

/** The audit store's counters (pgwarden_audit_store_*). */
export const auditStoreSpoolCounters = (metrics: Metrics): SpoolCounters => ({
  spooled: (n) => metrics.auditStoreSpooled.inc(n),
  failed: () => metrics.auditStoreFailures.inc({ op: 'spool' }),
});

interface Segment {
  readonly counter: number;
  readonly path: string;
  records: number;
  bytes: number;
  firstTimeMs: number | null;
  /** No more appends; the sink may read it once its writes are done. */
  sealed: boolean;
  /** Text appended but not yet written. */
  buffered: string;
  fh: FileHandle | null;
  /** Resolves when buffered is empty and no write is in flight. */
  idle: Promise<void>;
  writing: boolean;
}

export class Spool {
  private readonly segments: Segment[] = [];
  private nextCounter: number;

  private constructor(
    private readonly dir: string,
    existing: Segment[],
    private readonly counters: SpoolCounters,
    private readonly log: Logger,
  ) {
    this.segments.push(...existing);
    this.nextCounter = (existing[existing.length - 1]?.counter ?? 0) + 1;
  }

  /** Creates the directory if need be and finds the files an earlier run left (sent first). */
  static async open(dir: string, counters: SpoolCounters, log: Logger): Promise<Spool> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const names = (await readdir(dir)).filter((n) => SEGMENT_RE.test(n)).sort();
    const existing: Segment[] = [];
    for (const name of names) {
      const file = path.join(dir, name);
      const text = await readFile(file, 'utf8');
      const first = text.slice(0, text.indexOf('\n') + 1);
      let firstTimeMs: number | null;
      try {
        firstTimeMs = first === '' ? null : recordTimeMs(JSON.parse(first) as AuditRecord);
      } catch {
        firstTimeMs = null;
      }
      existing.push({ ...newSegment(file, Number(SEGMENT_RE.exec(name)![1])), records: countLines(text), bytes: text.length, firstTimeMs, sealed: true });
    }
    return new Spool(dir, existing, counters, log);
  }

  get files(): number {
    return this.segments.length;
  }

  get records(): number {
    return this.segments.reduce((n, s) => n + s.records, 0);
  }

  /** When the oldest spooled record was written (ms), if known. */
  get oldestTimeMs(): number | null {
    let oldestMs: number | null = null;
    for (const s of this.segments) oldestMs ??= s.firstTimeMs;
    return oldestMs;
  }

  /** A file name older than any made from now on: records held in memory keep their place in the order. */
  reserve(): number {
    return this.nextCounter++;
  }

  /** Appends to the newest file, or to a new one when that is sealed or full. */
  append(entries: readonly StoredRecord[]): void {
    let seg = this.segments[this.segments.length - 1];
    if (seg === undefined || seg.sealed || seg.bytes >= SEGMENT_MAX_BYTES) {
      if (seg !== undefined) seg.sealed = true;
      seg = newSegment(this.fileName(this.nextCounter), this.nextCounter++);
      this.segments.push(seg);
    }
    const text = entries.map((e) => `${e.line}\n`).join('');
    seg.records += entries.length;
    seg.bytes += text.length;
    seg.firstTimeMs ??= recordTimeMs(entries[0]!.record);
    seg.buffered += text;
    this.counters.spooled(entries.length);
    if (!seg.writing) this.startWriting(seg);
  }

  /**
   * Takes the records of the oldest file that has any out of the spool (sealing and closing it
   * first, so what is read is what the file has); the file stays until remove(). Null when empty.
   */
  async shift(): Promise<{ entries: StoredRecord[]; file: string } | null> {
    for (let seg = this.segments[0]; seg !== undefined; seg = this.segments[0]) {
      seg.sealed = true;
      await seg.idle;
      await seg.fh?.close();
      seg.fh = null;
      const text = await readFile(seg.path, 'utf8');
      const entries: StoredRecord[] = [];
      for (const line of text.split('\n')) {
        if (line === '') continue;
        try {
          entries.push({ record: JSON.parse(line) as AuditRecord, line });
        } catch {
          // A line torn by a crash mid-write: that record is still in the audit file.
          this.counters.failed();
          this.log.warn({ file: seg.path }, 'audit store: skipping an unreadable spool line');
        }
      }
      this.segments.shift();
      if (entries.length > 0) return { entries, file: seg.path };
      await this.remove(seg.path);
    }
    return null;
  }

  /** Deletes a file shift() returned, once its records are stored. */
  async remove(file: string): Promise<void> {
    await unlink(file).catch(() => undefined);
  }

  /** Writes a whole file under a name from reserve(). */
  async writeFile(counter: number, entries: readonly StoredRecord[]): Promise<void> {
    const fh = await open(this.fileName(counter), 'a', 0o600);
    try {
      await fh.write(entries.map((e) => `${e.line}\n`).join(''));
    } finally {
      await fh.close();
    }
    this.counters.spooled(entries.length);
  }

  /** Seals every file and waits for its writes; a later append starts a new file. */
  async close(): Promise<void> {
    for (const seg of this.segments) {
      seg.sealed = true;
      await seg.idle;
      await seg.fh?.close().catch(() => undefined);
      seg.fh = null;
    }
  }

  private fileName(counter: number): string {
    return path.join(this.dir, `spool-${String(counter).padStart(16, '0')}.jsonl`);
  }

  /** One writer per file: appends whatever is buffered until nothing is. */
  private startWriting(seg: Segment): void {
    seg.writing = true;
    seg.idle = (async () => {
      try {
        seg.fh ??= await open(seg.path, 'a', 0o600);
        while (seg.buffered.length > 0) {
          const chunk = seg.buffered;
          seg.buffered = '';
          await seg.fh.write(chunk);
        }
      } catch (err) {
        // The records are still in the audit file; the store will miss them, and says so.
        this.counters.failed();
        this.log.error({ err, file: seg.path }, 'audit store: cannot write the spool; these records reach only the audit file');
        seg.buffered = '';
      } finally {
        seg.writing = false;
      }
    })();
  }
}

function newSegment(file: string, counter: number): Segment {
  return { counter, path: file, records: 0, bytes: 0, firstTimeMs: null, sealed: false, buffered: '', fh: null, idle: Promise.resolve(), writing: false };
}

function countLines(text: string): number {
  let n = 0;
  for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) n++;
  return n;
}
