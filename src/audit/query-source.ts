/**
 * Reading audit records back with a filter, from the JSON-lines file(s) or from the PostgreSQL
 * store, so that both give the same records: the filter, its two sides (a predicate for the files,
 * a WHERE clause for the store) and the two sources. The table is store-table.ts's; the commands
 * and their output are query.ts's and query-report.ts's.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import pg from 'pg';
import { rotatedSiblings } from './files.js';
import { quoteTable, newStoreClient, storeColumns } from './store-table.js';
import type { AuditConfig } from '../config/schema.js';

/** A command-line mistake: the caller prints it with the usage and exits 2. */
export class AuditUsageError extends Error {}

export interface AuditFilter {
  readonly tenant?: string;
  readonly user?: string;
  readonly staff?: string;
  /** The staff token's ticket (staff.ticket or reason_or_ticket). */
  readonly ticket?: string;
  readonly session?: string;
  /** Exact names, or `prefix.*`. */
  readonly events?: readonly string[];
  /** Records of these sessions only (how `sessions` finds the ends of the starts it selected). */
  readonly sessionIds?: readonly string[];
  /** Microseconds since the epoch: since ≤ time < until. */
  readonly sinceUs?: number;
  readonly untilUs?: number;
}

const RFC3339_RE = /^(\d{4}-\d{2}-\d{2})(?:[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2}))?$/;
const AGO_RE = /^(\d+)(s|m|h|d|w)$/;
const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

/** An RFC 3339 time (or a date, UTC midnight, or a span ago like `1h`) as µs since the epoch. */
export function parseTimeMicros(text: string, nowMs = Date.now()): number {
  const ago = AGO_RE.exec(text);
  if (ago !== null) return (nowMs - Number(ago[1]) * UNIT_MS[ago[2] as keyof typeof UNIT_MS]) * 1000;
  const m = RFC3339_RE.exec(text);
  const ms = m === null ? NaN : Date.parse(`${m[1]!}T${m[2] ?? '00:00:00'}${(m[4] ?? 'Z').toUpperCase()}`);
  if (m === null || Number.isNaN(ms)) throw new AuditUsageError(`"${text}" is not a time (RFC 3339 like 2025-01-31T12:00:00Z, a date, or 30s/15m/2h/7d/1w ago)`);
  return ms * 1000 + Number((m[3] ?? '').padEnd(6, '0').slice(0, 6));
}

/** µs since the epoch as RFC 3339 UTC with microseconds (what the records and timestamptz hold). */
export function microsToRfc3339(us: number): string {
  const ms = Math.floor(us / 1000);
  return `${new Date(ms).toISOString().slice(0, 19)}.${String(us - Math.floor(us / 1_000_000) * 1_000_000).padStart(6, '0')}Z`;
}

function recordMicros(time: unknown): number {
  try {
    return typeof time === 'string' ? parseTimeMicros(time) : NaN;
  } catch {
    return NaN;
  }
}

function eventMatches(name: string, events: readonly string[]): boolean {
  return events.some((e) => (e.endsWith('.*') ? name.startsWith(e.slice(0, -1)) : name === e));
}

/** The file side of the filter; the store side is the WHERE clause in PgSource, kept in step by tests. */
export function matches(rec: Record<string, unknown>, f: AuditFilter): boolean {
  const c = storeColumns(rec);
  if (f.tenant !== undefined && c.tenant !== f.tenant) return false;
  if (f.user !== undefined && c.db_user !== f.user) return false;
  if (f.staff !== undefined && c.staff_sub !== f.staff) return false;
  if (f.ticket !== undefined && c.ticket !== f.ticket) return false;
  if (f.session !== undefined && c.session_id !== f.session) return false;
  if (f.sessionIds !== undefined && (c.session_id === null || !f.sessionIds.includes(c.session_id))) return false;
  if (f.events !== undefined && (typeof rec['event'] !== 'string' || !eventMatches(rec['event'], f.events))) return false;
  if (f.sinceUs !== undefined || f.untilUs !== undefined) {
    const t = recordMicros(rec['time']);
    if (f.sinceUs !== undefined && !(t >= f.sinceUs)) return false;
    if (f.untilUs !== undefined && !(t < f.untilUs)) return false;
  }
  return true;
}

export interface AuditSource {
  /** Matching records in chain order (file order; in the store, delivery order). */
  records(filter: AuditFilter): AsyncIterable<Record<string, unknown>>;
  close(): Promise<void>;
}

/**
 * The live file's rotated siblings (files.ts names them), oldest first, then the live file itself.
 * Other names beside it (the default spool dir `<file>.spool`) are not audit files.
 */
export async function auditFiles(file: string): Promise<string[]> {
  const rotated = await rotatedSiblings(file);
  const live = await stat(file).then((s) => s.isFile(), () => false);
  const files = live ? [...rotated, file] : rotated;
  if (files.length === 0) throw new AuditUsageError(`no audit file at ${file}`);
  return files;
}

export class FileSource implements AuditSource {
  /** Lines that were not a JSON object (a line torn by a crash): skipped, and reported. */
  skipped = 0;

  constructor(private readonly file: string) {}

  async *records(filter: AuditFilter): AsyncIterable<Record<string, unknown>> {
    for (const file of await auditFiles(this.file)) {
      const lines = createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity });
      for await (const line of lines) {
        if (line === '') continue;
        let rec: unknown;
        try {
          rec = JSON.parse(line);
        } catch {
          rec = null;
        }
        if (typeof rec !== 'object' || rec === null || Array.isArray(rec)) {
          this.skipped++;
          continue;
        }
        if (matches(rec as Record<string, unknown>, filter)) yield rec as Record<string, unknown>;
      }
    }
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

const PAGE_ROWS = 1000;

export class PgSource implements AuditSource {
  private readonly client: pg.Client;
  private connected = false;
  private readonly table: string;

  constructor(url: string, table: string, passwordEnv: string | undefined) {
    this.client = newStoreClient(url, passwordEnv);
    this.table = quoteTable(table);
  }

  async *records(filter: AuditFilter): AsyncIterable<Record<string, unknown>> {
    if (!this.connected) {
      await this.client.connect();
      this.connected = true;
    }
    const where: string[] = [];
    const params: unknown[] = [];
    const add = (sql: (p: string) => string, value: unknown): void => {
      params.push(value);
      where.push(sql(`$${params.length + 1}`)); // $1 is the page cursor
    };
    if (filter.tenant !== undefined) add((p) => `tenant = ${p}`, filter.tenant);
    if (filter.user !== undefined) add((p) => `db_user = ${p}`, filter.user);
    if (filter.staff !== undefined) add((p) => `staff_sub = ${p}`, filter.staff);
    if (filter.ticket !== undefined) add((p) => `ticket = ${p}`, filter.ticket);
    if (filter.session !== undefined) add((p) => `session_id = ${p}`, filter.session);
    if (filter.sessionIds !== undefined) add((p) => `session_id = ANY(${p}::text[])`, filter.sessionIds);
    if (filter.events !== undefined) {
      const exact = filter.events.filter((e) => !e.endsWith('.*'));
      const like = filter.events.filter((e) => e.endsWith('.*')).map((e) => `${e.slice(0, -1).replace(/[\\%_]/g, (c) => `\\${c}`)}%`);
      params.push(exact, like);
      where.push(`(event = ANY($${params.length}::text[]) OR event LIKE ANY($${params.length + 1}::text[]))`);
    }
    if (filter.sinceUs !== undefined) add((p) => `time >= ${p}::timestamptz`, microsToRfc3339(filter.sinceUs));
    if (filter.untilUs !== undefined) add((p) => `time < ${p}::timestamptz`, microsToRfc3339(filter.untilUs));
    const sql = `SELECT pos, record FROM ${this.table} WHERE pos > $1${where.map((w) => ` AND ${w}`).join('')} ORDER BY pos LIMIT ${PAGE_ROWS}`;
    // Keyset pages by pos: bounded memory, and rows delivered meanwhile join at the end.
    let after = '0';
    for (;;) {
      const page = await this.client.query<{ pos: string; record: Record<string, unknown> }>(sql, [after, ...params]);
      for (const row of page.rows) yield row.record;
      const last = page.rows[page.rows.length - 1];
      if (last === undefined || page.rows.length < PAGE_ROWS) return;
      after = last.pos;
    }
  }

  async close(): Promise<void> {
    if (this.connected) await this.client.end();
  }
}

/**
 * Where a running pgwarden's audit is read back (the admin listener's audit view): the file when
 * [audit] file is set (complete and current; the store may lag), else [audit.postgres]; undefined
 * when records are only counted. `pgwarden audit … --config` chooses the same way (query.ts).
 */
export function sourceOfAuditConfig(audit: Pick<AuditConfig, 'file' | 'postgres'>): AuditSource | undefined {
  if (audit.file !== undefined) return new FileSource(audit.file);
  if (audit.postgres !== undefined) return new PgSource(audit.postgres.url, audit.postgres.table, audit.postgres.passwordEnv);
  return undefined;
}
