/**
 * What `audit sessions | query` print: session rows built from session.start and session.end, the
 * event table, and --json lines. Text that an attacker could choose is escaped before it reaches
 * the auditor's terminal. Finding the records is query-source.ts's.
 */
import canonicalize from 'canonicalize';
import { storeColumns } from './store-table.js';
import type { AuditFilter, AuditSource } from './query-source.js';

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

export function formatEvents(rows: readonly (readonly string[])[]): string {
  return formatTable(EVENT_HEADER, rows);
}

export function eventRow(rec: Record<string, unknown>): string[] {
  const c = storeColumns(rec);
  return [cell(rec['time']), cell(rec['event']), cell(c.tenant), cell(c.session_id), cell(c.db_user), cell(c.staff_sub), cell(eventDetail(rec), 100)];
}

/** --json: the record in RFC 8785 form, so the file and the store print the same bytes. */
export function jsonLine(value: unknown): string {
  return `${canonicalize(value) ?? 'null'}\n`;
}
