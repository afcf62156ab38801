/**
 * The PostgreSQL audit store: the table auditors query (its schema and `audit init`), and the
 * sink that feeds it every chained record in order, in batches, spooling to local disk while the
 * store is down or slow. Chaining and the file are log.ts's; reading the store back is query.ts's.
 *
 * Order and exactly-once: the backlog is one FIFO in three parts, `head` (memory, being sent),
 * `segments` (spool files on disk, oldest first) and `tail` (memory, newest). New records join the
 * tail; a full tail, or any record while the store is failing, moves to the newest segment, which
 * keeps FIFO order because the tail is always the newest part. Only the head is sent, one batch at
 * a time, and a record leaves the head only once its INSERT has committed. A retry after a lost
 * reply, or a spool file re-sent after a crash, is harmless: the id is the primary key and every
 * INSERT says ON CONFLICT (id) DO NOTHING.
 */
import { mkdir, open, readdir, readFile, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import pg from 'pg';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { AuditPostgresConfig } from '../config/schema.js';
import type { RecordSink } from './log.js';
import type { AuditRecord } from './record.js';

/** A table name as the config accepts it: lower-case identifier, optionally schema-qualified. */
export const TABLE_NAME_RE = /^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?$/;

/** The table as `"schema"."name"`; the name has passed TABLE_NAME_RE, quoting is belt and braces. */
export function quoteTable(table: string): string {
  if (!TABLE_NAME_RE.test(table)) throw new Error(`invalid audit table name "${table}"`);
  return table
    .split('.')
    .map((p) => `"${p}"`)
    .join('.');
}

/**
 * The DDL `pgwarden audit init` runs; every statement is idempotent. `pos` is the delivery order,
 * which is the chain order, so `ORDER BY pos` reads the records as the file has them.
 */
export function storeSchemaSql(table: string): string[] {
  const t = quoteTable(table);
  const base = table.split('.').pop()!;
  return [
    `CREATE TABLE IF NOT EXISTS ${t} (
  pos         bigint GENERATED ALWAYS AS IDENTITY,
  id          uuid PRIMARY KEY,
  seq         bigint NOT NULL,
  boot_id     text NOT NULL,
  instance_id text,
  time        timestamptz NOT NULL,
  event       text NOT NULL,
  tenant      text,
  session_id  text,
  db_user     text,
  staff_sub   text,
  ticket      text,
  client_addr text,
  record      jsonb NOT NULL,
  chain_hash  text NOT NULL,
  stored_at   timestamptz NOT NULL DEFAULT now()
)`,
    `CREATE UNIQUE INDEX IF NOT EXISTS "${base}_pos_idx" ON ${t} (pos)`,
    `CREATE INDEX IF NOT EXISTS "${base}_time_idx" ON ${t} (time)`,
    `CREATE INDEX IF NOT EXISTS "${base}_tenant_time_idx" ON ${t} (tenant, time)`,
    `CREATE INDEX IF NOT EXISTS "${base}_session_idx" ON ${t} (session_id) WHERE session_id IS NOT NULL`,
    `CREATE INDEX IF NOT EXISTS "${base}_staff_idx" ON ${t} (staff_sub, time) WHERE staff_sub IS NOT NULL`,
    `CREATE INDEX IF NOT EXISTS "${base}_boot_seq_idx" ON ${t} (boot_id, seq)`,
  ];
}

/** Creates the table and its indexes (idempotent). True when the table did not exist before. */
export async function initStore(client: pg.ClientBase, table: string): Promise<boolean> {
  const before = await client.query<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [table]);
  for (const sql of storeSchemaSql(table)) await client.query(sql);
  return before.rows[0]?.t === null;
}

/**
 * A client for the store. The URL carries no password (config rule); it comes from the named
 * environment variable, set on the client because pg lets a connection string's (empty) password
 * override a `password` given beside it. Without one, pg falls back to PGPASSWORD and ~/.pgpass.
 */
export function newStoreClient(url: string, passwordEnv: string | undefined): pg.Client {
  const client = new pg.Client({
    connectionString: url,
    application_name: 'pgwarden-audit',
    // A record leaves the spool once its INSERT commits: the commit must survive a crash of the
    // store even where the server's default is synchronous_commit = off.
    options: '-c synchronous_commit=on',
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    query_timeout: QUERY_TIMEOUT_MS,
  });
  const password = passwordEnv === undefined ? undefined : process.env[passwordEnv];
  if (password !== undefined) client.password = password;
  return client;
}

/** The searchable columns of a record; query.ts filters the file with this same function. */
export interface StoreColumns {
  readonly tenant: string | null;
  readonly session_id: string | null;
  /** principal.db_user; for a failed login, the (sanitized) user it claimed. */
  readonly db_user: string | null;
  /** principal.staff.sub, or staff.sub of a staff.access decision. */
  readonly staff_sub: string | null;
  readonly ticket: string | null;
  readonly client_addr: string | null;
}

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const obj = (v: unknown): Record<string, unknown> | undefined =>
  typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;

export function storeColumns(rec: Record<string, unknown>): StoreColumns {
  const principal = obj(rec['principal']);
  const staff = obj(principal?.['staff']) ?? obj(rec['staff']);
  return {
    tenant: str(rec['tenant']),
    session_id: str(obj(rec['session'])?.['id']),
    db_user: str(principal?.['db_user']) ?? str(obj(rec['target'])?.['db_user']) ?? str(obj(rec['claimed'])?.['db_user']),
    staff_sub: str(staff?.['sub']),
    ticket: str(staff?.['ticket']) ?? str(staff?.['reason_or_ticket']),
    client_addr: str(obj(rec['client'])?.['addr']),
  };
}

const CONNECT_TIMEOUT_MS = 5_000;
/** A store that accepts the connection but never answers counts as down after this. */
const QUERY_TIMEOUT_MS = 15_000;
const MAX_BACKOFF_MS = 2_000;
/** The tail (newest records in memory) spills to the spool beyond this many bytes. */
const MEMORY_MAX_BYTES = 8 * 1024 * 1024;
/** A spool segment is closed at this size, so loading one into memory is bounded too. */
const SEGMENT_MAX_BYTES = 8 * 1024 * 1024;
/** close(): how long the store may take for what is still in memory before it is spooled. */
const CLOSE_GRACE_MS = 2_000;
const SEGMENT_RE = /^spool-(\d{16})\.jsonl$/;

interface Entry {
  readonly record: AuditRecord;
  /** The JSON line without its newline. */
  readonly line: string;
}

interface Segment {
  readonly counter: number;
  readonly path: string;
  records: number;
  bytes: number;
  firstTimeMs: number | null;
  /** No more appends; the pump may read it once its writes are done. */
  sealed: boolean;
  /** Text appended but not yet written. */
  buffered: string;
  fh: FileHandle | null;
  /** Resolves when buffered is empty and no write is in flight. */
  idle: Promise<void>;
  writing: boolean;
}

type HeadOrigin = { kind: 'memory'; counter: number } | { kind: 'segment'; seg: Segment } | null;
type Step = 'more' | 'idle' | 'failed';

const timeMs = (r: AuditRecord): number => Date.parse(r.time);

/** Is the error the store's verdict on the data (retrying the same rows cannot help)? */
const isDataError = (err: unknown): boolean => {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && /^2[23]/.test(code);
};

export class PgSink implements RecordSink {
  private head: Entry[] = [];
  private headOrigin: HeadOrigin = null;
  private readonly segments: Segment[] = [];
  private tail: Entry[] = [];
  private tailBytes = 0;
  private nextCounter: number;
  private readonly tailMaxRecords: number;
  private client: pg.Client | null = null;
  /** The last INSERT failed: new records go straight to the spool until one succeeds. */
  private down = false;
  private closing = false;
  private stopped = false;
  private wake: (() => void) | null = null;
  private readonly loop: Promise<void>;
  private readonly insertSql: string;

  private constructor(
    private readonly cfg: AuditPostgresConfig,
    existing: Segment[],
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    this.segments.push(...existing);
    this.nextCounter = (existing[existing.length - 1]?.counter ?? 0) + 1;
    this.tailMaxRecords = Math.max(1000, 4 * cfg.batchSize);
    this.insertSql = `INSERT INTO ${quoteTable(cfg.table)}
  (id, seq, boot_id, instance_id, time, event, tenant, session_id, db_user, staff_sub, ticket, client_addr, record, chain_hash)
SELECT id, seq, boot_id, instance_id, time, event, tenant, session_id, db_user, staff_sub, ticket, client_addr, record, chain_hash
FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::text[], $11::text[], $12::text[], $13::jsonb[], $14::text[])
  WITH ORDINALITY AS u(id, seq, boot_id, instance_id, time, event, tenant, session_id, db_user, staff_sub, ticket, client_addr, record, chain_hash, ord)
ORDER BY ord
ON CONFLICT (id) DO NOTHING`;
    metrics.auditStoreBacklog = () => this.backlog();
    this.loop = this.run();
  }

  /**
   * Finds what an earlier run left in the spool (delivered first) and starts delivering. Does not
   * wait for the store: pgwarden starts, and records spool, while it is unreachable.
   */
  static async start(cfg: AuditPostgresConfig, metrics: Metrics, log: Logger): Promise<PgSink> {
    await mkdir(cfg.spoolDir, { recursive: true, mode: 0o700 });
    const names = (await readdir(cfg.spoolDir)).filter((n) => SEGMENT_RE.test(n)).sort();
    const existing: Segment[] = [];
    for (const name of names) {
      const file = path.join(cfg.spoolDir, name);
      const text = await readFile(file, 'utf8');
      const first = text.slice(0, text.indexOf('\n') + 1);
      let firstTimeMs: number | null;
      try {
        firstTimeMs = first === '' ? null : timeMs(JSON.parse(first) as AuditRecord);
      } catch {
        firstTimeMs = null;
      }
      existing.push({
        counter: Number(SEGMENT_RE.exec(name)![1]),
        path: file,
        records: countLines(text),
        bytes: text.length,
        firstTimeMs,
        sealed: true,
        buffered: '',
        fh: null,
        idle: Promise.resolve(),
        writing: false,
      });
    }
    const sink = new PgSink(cfg, existing, metrics, log);
    const spooled = existing.reduce((n, s) => n + s.records, 0);
    if (spooled > 0) log.info({ records: spooled, files: existing.length, spool_dir: cfg.spoolDir }, 'audit store: delivering the spool left by an earlier run first');
    return sink;
  }

  deliver(record: AuditRecord, line: string): void {
    const entry: Entry = { record, line: line.endsWith('\n') ? line.slice(0, -1) : line };
    if (this.stopped) {
      // After close() nothing is sent any more; the record still reaches the spool, in order.
      this.appendToSpool([entry]);
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
    if (origin?.kind === 'memory' && this.head.length > 0) await this.writeSegmentFile(origin.counter, this.head);
    this.head = [];
    this.headOrigin = null;
    this.spillTail();
    for (const seg of this.segments) {
      seg.sealed = true;
      await seg.idle;
      await seg.fh?.close().catch(() => undefined);
      seg.fh = null;
    }
    const client = this.client;
    this.client = null;
    if (client !== null) await Promise.race([client.end().catch(() => undefined), sleep(1000)]);
    this.metrics.auditStoreBacklog = null;
  }

  /** What the metrics read at scrape time. */
  private backlog(): { records: number; spooled: number; oldestMs: number | null } {
    const spooled = this.segments.reduce((n, s) => n + s.records, 0);
    const first = this.head[0] ?? null;
    let oldestMs: number | null = first === null ? null : timeMs(first.record);
    for (const s of this.segments) oldestMs ??= s.firstTimeMs;
    if (oldestMs === null && this.tail[0] !== undefined) oldestMs = timeMs(this.tail[0].record);
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

  /** Sends one batch from the head, refilling the head first from the oldest segment or the tail. */
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
      if (origin?.kind === 'segment') await unlink(origin.seg.path).catch(() => undefined);
    }
    return this.head.length > 0 || this.segments.length > 0 || this.tail.length >= this.cfg.batchSize ? 'more' : 'idle';
  }

  /** False when there is nothing to send. */
  private async refillHead(): Promise<boolean> {
    const seg = this.segments[0];
    if (seg !== undefined) {
      // The segment still taking appends is closed first, so what is read is what the file has.
      seg.sealed = true;
      await seg.idle;
      await seg.fh?.close();
      seg.fh = null;
      const text = await readFile(seg.path, 'utf8');
      const entries: Entry[] = [];
      for (const line of text.split('\n')) {
        if (line === '') continue;
        try {
          entries.push({ record: JSON.parse(line) as AuditRecord, line });
        } catch {
          // A line torn by a crash mid-write: that record is still in the audit file.
          this.metrics.auditStoreFailures.inc({ op: 'spool' });
          this.log.warn({ file: seg.path }, 'audit store: skipping an unreadable spool line');
        }
      }
      this.segments.shift();
      this.head = entries;
      this.headOrigin = { kind: 'segment', seg };
      if (entries.length === 0) {
        await unlink(seg.path).catch(() => undefined);
        this.headOrigin = null;
        return this.refillHead();
      }
      return true;
    }
    if (this.tail.length === 0) return false;
    this.head = this.tail;
    // A spool file name is reserved for the head, older than any segment made from now on.
    this.headOrigin = { kind: 'memory', counter: this.nextCounter++ };
    this.tail = [];
    this.tailBytes = 0;
    return true;
  }

  private async connection(): Promise<pg.Client> {
    if (this.client !== null) return this.client;
    const client = newStoreClient(this.cfg.url, this.cfg.passwordEnv);
    // An idle connection that dies is noticed on the next INSERT; this keeps it from crashing the process.
    client.on('error', () => undefined);
    try {
      await client.connect();
    } catch (err) {
      void client.end().catch(() => undefined);
      throw err;
    }
    this.client = client;
    return client;
  }

  private dropConnection(): void {
    const c = this.client;
    this.client = null;
    void c?.end().catch(() => undefined);
  }

  private async insert(batch: readonly Entry[]): Promise<void> {
    const cols: unknown[][] = Array.from({ length: 14 }, () => []);
    for (const { record: r, line } of batch) {
      const c = storeColumns(r);
      const values = [
        r.id, r.seq, r.instance.boot_id, r.instance.id, r.time, r.event,
        c.tenant, c.session_id, c.db_user, c.staff_sub, c.ticket, c.client_addr, jsonbText(line), r.chain.hash,
      ];
      for (let i = 0; i < values.length; i++) cols[i]!.push(values[i]);
    }
    const client = await this.connection();
    try {
      await client.query(this.insertSql, cols);
    } catch (err) {
      if (!isDataError(err)) this.dropConnection();
      throw err;
    }
  }

  private async insertOneByOne(batch: readonly Entry[]): Promise<void> {
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

  /** Moves the whole tail to the newest segment (it is the newest part of the FIFO). */
  private spillTail(): void {
    if (this.tail.length === 0) return;
    const entries = this.tail;
    this.tail = [];
    this.tailBytes = 0;
    this.appendToSpool(entries);
  }

  private appendToSpool(entries: readonly Entry[]): void {
    let seg = this.segments[this.segments.length - 1];
    if (seg === undefined || seg.sealed || seg.bytes >= SEGMENT_MAX_BYTES) {
      if (seg !== undefined) seg.sealed = true;
      seg = this.newSegment(this.nextCounter++);
      this.segments.push(seg);
    }
    const text = entries.map((e) => `${e.line}\n`).join('');
    seg.records += entries.length;
    seg.bytes += text.length;
    seg.firstTimeMs ??= timeMs(entries[0]!.record);
    seg.buffered += text;
    this.metrics.auditStoreSpooled.inc(entries.length);
    if (!seg.writing) this.startWriting(seg);
  }

  private newSegment(counter: number): Segment {
    return {
      counter,
      path: path.join(this.cfg.spoolDir, `spool-${String(counter).padStart(16, '0')}.jsonl`),
      records: 0,
      bytes: 0,
      firstTimeMs: null,
      sealed: false,
      buffered: '',
      fh: null,
      idle: Promise.resolve(),
      writing: false,
    };
  }

  /** One writer per segment: appends whatever is buffered until nothing is. */
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
        this.metrics.auditStoreFailures.inc({ op: 'spool' });
        this.log.error({ err, file: seg.path }, 'audit store: cannot write the spool; these records reach only the audit file');
        seg.buffered = '';
      } finally {
        seg.writing = false;
      }
    })();
  }

  /** Writes a whole file under a given (reserved) name; used for the head at close. */
  private async writeSegmentFile(counter: number, entries: readonly Entry[]): Promise<void> {
    const seg = this.newSegment(counter);
    const fh = await open(seg.path, 'a', 0o600);
    try {
      await fh.write(entries.map((e) => `${e.line}\n`).join(''));
    } finally {
      await fh.close();
    }
    this.metrics.auditStoreSpooled.inc(entries.length);
  }
}

function countLines(text: string): number {
  let n = 0;
  for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) n++;
  return n;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/**
 * jsonb refuses \u0000 (and unpaired surrogates), which JSON (and so the file) allows; such a
 * character is stored as U+FFFD instead (the chain_hash column still names the original record).
 */
function jsonbText(line: string): string {
  if (!line.includes('\\u')) return line;
  const fix = (v: unknown): unknown => {
    if (typeof v === 'string') return v.replace(/\0|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
    if (Array.isArray(v)) return v.map(fix);
    if (typeof v === 'object' && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [fix(k) as string, fix(x)]));
    return v;
  };
  return JSON.stringify(fix(JSON.parse(line)));
}
