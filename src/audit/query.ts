/**
 * `pgwarden audit init | sessions | query`: reads audit records back, from the JSON-lines file(s)
 * or from the PostgreSQL store, with the same filters and the same output for both. The table and
 * the searchable columns are pg-sink.ts's; checking the chain is verify.ts's.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import canonicalize from 'canonicalize';
import pg from 'pg';
import { loadConfigFile } from '../config/load.js';
import { ConfigError } from '../config/schema.js';
import { rotatedSiblings } from './files.js';
import { TABLE_NAME_RE, initStore, quoteTable, newStoreClient, storeColumns } from './store-table.js';

export const AUDIT_STORE_USAGE = `  pgwarden audit init (--config FILE | --postgres URL [--table NAME] [--password-env VAR])
                                          create the audit store table and its indexes (idempotent)
  pgwarden audit sessions SOURCE [FILTERS] [--json]
                                          one line per session: start, tenant, user or staff, ticket,
                                          client, TLS, duration, statements, bytes, how it ended
  pgwarden audit query SOURCE [FILTERS] [--json] [--limit N]
                                          audit events, oldest first
    SOURCE:  --file PATH (and its rotated PATH.<stamp>.<seq> files) | --postgres URL [--table NAME]
             [--password-env VAR] | --config FILE [--source file|postgres] (default: audit.file if
             set, else audit.postgres)
    FILTERS: --tenant ID --user NAME --staff SUB --session ID --event NAME[,NAME.*]
             --since T --until T (T: RFC 3339, YYYY-MM-DD, or ago as 30s 15m 2h 7d 1w)
`;

/** A command-line mistake: the caller prints it with the usage and exits 2. */
export class AuditUsageError extends Error {}

// ---------------------------------------------------------------------------------------------
// Filters

export interface AuditFilter {
  readonly tenant?: string;
  readonly user?: string;
  readonly staff?: string;
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

// ---------------------------------------------------------------------------------------------
// Sources

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

// ---------------------------------------------------------------------------------------------
// Sessions

export interface SessionRow {
  readonly session: string;
  readonly start: string;
  readonly tenant: string | null;
  readonly user: string | null;
  readonly staff: string | null;
  readonly ticket: string | null;
  readonly client: string | null;
  readonly tls: string | null;
  readonly duration_ms: number | null;
  readonly statements: number | null;
  readonly bytes_in: number | null;
  readonly bytes_out: number | null;
  /** session.end's reason, or "open" when the session has no end (yet). */
  readonly end: string;
}

const num = (v: unknown): number | null => (typeof v === 'number' ? v : null);

/** Sessions that started within the filter, with their ends; the filter applies to the start. */
export async function listSessions(source: AuditSource, filter: AuditFilter): Promise<SessionRow[]> {
  const starts: Record<string, unknown>[] = [];
  for await (const rec of source.records({ ...filter, events: ['session.start'] })) starts.push(rec);
  const ids = starts.map((r) => storeColumns(r).session_id).filter((id): id is string => id !== null);
  const ends = new Map<string, Record<string, unknown>>();
  if (ids.length > 0) {
    for await (const rec of source.records({ events: ['session.end'], sessionIds: ids })) {
      const id = storeColumns(rec).session_id;
      if (id !== null) ends.set(id, rec);
    }
  }
  return starts.flatMap((s) => {
    const c = storeColumns(s);
    if (c.session_id === null) return [];
    const end = ends.get(c.session_id);
    const client = s['client'] as { tls?: { version?: unknown } } | undefined;
    return [
      {
        session: c.session_id,
        start: String(s['time']),
        tenant: c.tenant,
        user: c.db_user,
        staff: c.staff_sub,
        ticket: c.ticket,
        client: c.client_addr,
        tls: typeof client?.tls?.version === 'string' ? client.tls.version : null,
        duration_ms: num(end?.['duration_ms']),
        statements: num(end?.['queries']),
        bytes_in: num(end?.['bytes_in']),
        bytes_out: num(end?.['bytes_out']),
        end: end === undefined ? 'open' : typeof end['reason'] === 'string' ? end['reason'] : 'unknown',
      },
    ];
  });
}

// ---------------------------------------------------------------------------------------------
// Output

/** Attacker-supplied text (user names, queries) must not drive the auditor's terminal. */
function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function cell(v: unknown, max = 64): string {
  if (v === null || v === undefined || v === '') return '-';
  const s = printable(typeof v === 'string' ? v : JSON.stringify(v));
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return `${[line(header), ...rows.map(line)].join('\n')}\n`;
}

export function formatDuration(ms: number | null): string {
  if (ms === null) return '-';
  if (ms < 1000) return `${ms}ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

const SESSION_HEADER = ['START', 'SESSION', 'TENANT', 'USER', 'STAFF', 'TICKET', 'CLIENT', 'TLS', 'DURATION', 'STMTS', 'BYTES IN/OUT', 'END'] as const;

export function formatSessions(rows: readonly SessionRow[]): string {
  return formatTable(
    SESSION_HEADER,
    rows.map((r) => [
      cell(r.start),
      cell(r.session),
      cell(r.tenant),
      cell(r.user),
      cell(r.staff),
      cell(r.ticket, 40),
      cell(r.client),
      cell(r.tls),
      formatDuration(r.duration_ms),
      cell(r.statements),
      r.bytes_in === null ? '-' : `${r.bytes_in}/${r.bytes_out ?? 0}`,
      cell(r.end),
    ]),
  );
}

/** What a reader needs from an event at a glance; --json has the rest. */
export function eventDetail(rec: Record<string, unknown>): string {
  const o = (v: unknown): Record<string, unknown> => (typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : {});
  const text = (x: unknown): string => (typeof x === 'string' ? x : JSON.stringify(x));
  const parts = (...xs: unknown[]): string => xs.filter((x) => x !== undefined && x !== null && x !== '').map(text).join(' ');
  switch (rec['event']) {
    case 'session.start':
      return parts(o(rec['principal'])['database'], o(o(rec['client'])['tls'])['version'], o(rec['auth'])['method']);
    case 'session.query':
      return parts(rec['kind'], typeof rec['statement_name'] === 'string' && rec['statement_name'] !== '' ? `stmt=${rec['statement_name']}` : undefined, rec['query']);
    case 'session.query_result':
      return parts(rec['command_tag'], rec['rows'] === undefined ? undefined : `rows=${text(rec['rows'])}`, rec['sqlstate'], rec['duration_ms'] === undefined ? undefined : `${text(rec['duration_ms'])}ms`);
    case 'session.end':
      return parts(rec['reason'], formatDuration(num(rec['duration_ms'])), `queries=${text(rec['queries'] ?? '-')}`);
    case 'session.auth_failure':
      return parts(rec['stage'], rec['reason'], o(rec['outcome'])['sqlstate']);
    case 'staff.access':
      return parts(rec['decision'], o(rec['target'])['access_level'], rec['reason']);
    case 'proxy.lifecycle':
      return parts(rec['state']);
    default:
      return parts(rec['reason'] ?? o(rec['outcome'])['reason'] ?? rec['state'] ?? rec['cause']);
  }
}

const EVENT_HEADER = ['TIME', 'EVENT', 'TENANT', 'SESSION', 'USER', 'STAFF', 'DETAIL'] as const;

export function eventRow(rec: Record<string, unknown>): string[] {
  const c = storeColumns(rec);
  return [cell(rec['time']), cell(rec['event']), cell(c.tenant), cell(c.session_id), cell(c.db_user), cell(c.staff_sub), cell(eventDetail(rec), 100)];
}

/** --json: the record in RFC 8785 form, so the file and the store print the same bytes. */
export function jsonLine(value: unknown): string {
  return `${canonicalize(value) ?? 'null'}\n`;
}

// ---------------------------------------------------------------------------------------------
// The commands

const SOURCE_OPTIONS = {
  config: { type: 'string', short: 'c' },
  source: { type: 'string' },
  file: { type: 'string' },
  postgres: { type: 'string' },
  table: { type: 'string' },
  'password-env': { type: 'string' },
} as const;

const FILTER_OPTIONS = {
  tenant: { type: 'string' },
  user: { type: 'string' },
  staff: { type: 'string' },
  session: { type: 'string' },
  event: { type: 'string' },
  since: { type: 'string' },
  until: { type: 'string' },
  json: { type: 'boolean' },
  limit: { type: 'string' },
} as const;

type Located = { kind: 'file'; file: string } | { kind: 'postgres'; url: string; table: string; passwordEnv: string | undefined };

/**
 * --file and --postgres name a source directly. --config reads [audit]: the file when audit.file
 * is set (it is complete and current; the store may lag), else [audit.postgres]; --source picks.
 */
async function locate(v: { config?: string; source?: string; file?: string; postgres?: string; table?: string; 'password-env'?: string }): Promise<Located> {
  const given = [v.config, v.file, v.postgres].filter((x) => x !== undefined).length;
  if (given !== 1) throw new AuditUsageError('give exactly one of --config FILE, --file PATH, --postgres URL');
  const table = v.table ?? 'pgwarden_audit';
  if (!TABLE_NAME_RE.test(table)) throw new AuditUsageError('--table: must be a lower-case identifier, optionally schema-qualified');
  if (v.file !== undefined) return { kind: 'file', file: path.resolve(v.file) };
  if (v.postgres !== undefined) return { kind: 'postgres', url: v.postgres, table, passwordEnv: v['password-env'] };
  if (v.source !== undefined && v.source !== 'file' && v.source !== 'postgres') throw new AuditUsageError('--source: file or postgres');
  const audit = (await loadConfigFile(v.config!)).audit;
  const want = v.source ?? (audit.file !== undefined ? 'file' : 'postgres');
  if (want === 'file') {
    if (audit.file === undefined) throw new AuditUsageError(`${v.config!}: [audit] has no file`);
    return { kind: 'file', file: audit.file };
  }
  if (audit.postgres === undefined) throw new AuditUsageError(`${v.config!}: has no [audit.postgres]`);
  return { kind: 'postgres', url: audit.postgres.url, table: audit.postgres.table, passwordEnv: audit.postgres.passwordEnv };
}

function filterOf(v: { tenant?: string; user?: string; staff?: string; session?: string; event?: string; since?: string; until?: string }): AuditFilter {
  const nowMs = Date.now();
  const events = v.event?.split(',').map((e) => e.trim()).filter((e) => e !== '');
  return {
    ...(v.tenant === undefined ? {} : { tenant: v.tenant }),
    ...(v.user === undefined ? {} : { user: v.user }),
    ...(v.staff === undefined ? {} : { staff: v.staff }),
    ...(v.session === undefined ? {} : { session: v.session }),
    ...(events === undefined ? {} : { events }),
    ...(v.since === undefined ? {} : { sinceUs: parseTimeMicros(v.since, nowMs) }),
    ...(v.until === undefined ? {} : { untilUs: parseTimeMicros(v.until, nowMs) }),
  };
}

export function openSource(at: Located): AuditSource {
  return at.kind === 'file' ? new FileSource(at.file) : new PgSource(at.url, at.table, at.passwordEnv);
}

/**
 * Runs `audit init | sessions | query`; the exit code, or null when `sub` is not one of these.
 * Usage mistakes print the usage (exit 2); a store or file that cannot be read, one line (exit 1).
 */
export async function runAuditStoreCommand(args: readonly string[], out: (text: string) => void, err: (text: string) => void): Promise<number | null> {
  const [sub, ...rest] = args;
  if (sub !== 'init' && sub !== 'sessions' && sub !== 'query') return null;
  try {
    if (sub === 'init') return await init(rest, out);
    const { values } = parseArgs({ args: [...rest], options: { ...SOURCE_OPTIONS, ...FILTER_OPTIONS } });
    const source = openSource(await locate(values));
    try {
      const filter = filterOf(values);
      const limit = values.limit === undefined ? Infinity : Number(values.limit);
      if (!(limit >= 0)) throw new AuditUsageError('--limit: a number');
      if (sub === 'sessions') {
        const rows = (await listSessions(source, filter)).slice(0, limit);
        out(values.json === true ? rows.map(jsonLine).join('') : formatSessions(rows));
      } else {
        const rows: string[][] = [];
        let n = 0;
        for await (const rec of source.records(filter)) {
          if (n++ >= limit) break;
          if (values.json === true) out(jsonLine(rec));
          else rows.push(eventRow(rec));
        }
        if (values.json !== true) out(formatTable(EVENT_HEADER, rows));
      }
      if (source instanceof FileSource && source.skipped > 0) err(`pgwarden audit ${sub}: skipped ${source.skipped} unreadable line(s)\n`);
      return 0;
    } finally {
      await source.close().catch(() => undefined);
    }
  } catch (e) {
    if (e instanceof AuditUsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') === true) {
      err(`pgwarden audit ${sub}: ${(e as Error).message}\nusage:\n${AUDIT_STORE_USAGE}`);
      return 2;
    }
    if (e instanceof ConfigError) throw e;
    err(`pgwarden audit ${sub}: ${(e as Error).message}\n`);
    return 1;
  }
}

async function init(args: readonly string[], out: (text: string) => void): Promise<number> {
  const { values } = parseArgs({ args: [...args], options: SOURCE_OPTIONS });
  if (values.file !== undefined) throw new AuditUsageError('init creates the PostgreSQL table: give --config FILE or --postgres URL');
  const at = await locate({ ...values, source: 'postgres' });
  if (at.kind !== 'postgres') throw new AuditUsageError('init needs a PostgreSQL store');
  const client = newStoreClient(at.url, at.passwordEnv);
  await client.connect();
  try {
    const created = await initStore(client, at.table);
    out(created ? `created audit table ${at.table} and its indexes\n` : `audit table ${at.table} exists; indexes checked\n`);
    return 0;
  } finally {
    await client.end();
  }
}
