/**
 * `pgwarden show pools | sessions | tenants | staff`: a SHOW-style console on the admin API, its
 * answers as aligned tables (psql's and PgBouncer's look), as JSON, or redrawn every N seconds.
 * The pure part (views and the table formatter) is separate from the fetching, so it is tested
 * without a proxy; what the views show is the admin API's (api.ts), nothing is computed server-side.
 *
 * Sources: pools come from the admin API's GET /pools, limits from GET /limits, sessions from GET
 * /sessions; tenants are every served tenant (GET /limits) with its sessions summed, staff the staff
 * sessions and the revocations in force (GET /staff/revocations).
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';

export const SHOW_USAGE = `  pgwarden show pools|sessions|tenants|limits|staff [--json] [--watch N] [--tenant ID]
                [--admin URL] [--token-file FILE]
                                          the admin API's view as tables, like PgBouncer's SHOW;
                                          URL from --admin or PGWARDEN_ADMIN_URL, token from
                                          --token-file or PGWARDEN_ADMIN_TOKEN (no token flag:
                                          it would stay in the shell history); tenants: every
                                          served tenant, its sessions summed; staff: staff
                                          sessions and revocations in force; limits: each
                                          tenant's limits and its clients and backends now
`;

export const SHOW_VIEWS = ['pools', 'sessions', 'tenants', 'staff', 'limits'] as const;
export type ShowView = (typeof SHOW_VIEWS)[number];

/** A bad command line: the caller prints it with the usage and exits 2. */
export class ShowUsageError extends Error {}

/** The admin API refused, could not be reached, or answered something unexpected: exit 1. */
export class ShowError extends Error {}

export interface Column {
  readonly header: string;
  readonly value: (row: Record<string, unknown>) => unknown;
  /** Numbers right-aligned, as psql does. */
  readonly align?: 'left' | 'right';
}

/** One cell as text: null and undefined empty, objects as JSON, everything on one line. */
export function cellText(v: unknown): string {
  if (v === null || v === undefined) return '';
  const s = typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'boolean' ? String(v) : JSON.stringify(v);
  // A control character (a newline in a user name, an escape sequence) must not break the table or the terminal.
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\x00-\x1f\x7f]/g, '?');
}

/**
 * Rows as psql prints them: a header line, a rule of dashes joined by `+`, one line per row with
 * cells separated by ` | `, then `(N rows)`.
 */
export function formatTable(columns: readonly Column[], rows: readonly Record<string, unknown>[]): string {
  const cells = rows.map((r) => columns.map((c) => cellText(c.value(r))));
  const widths = columns.map((c, i) => Math.max(c.header.length, ...cells.map((row) => row[i]!.length)));
  const pad = (text: string, i: number, align: 'left' | 'right' | 'center'): string => {
    const room = widths[i]! - text.length;
    if (align === 'right') return ' '.repeat(room) + text;
    if (align === 'center') return ' '.repeat(Math.floor(room / 2)) + text + ' '.repeat(Math.ceil(room / 2));
    return text + ' '.repeat(room);
  };
  const line = (parts: string[]): string => ` ${parts.join(' | ')}`.trimEnd();
  const out = [line(columns.map((c, i) => pad(c.header, i, 'center'))), widths.map((w) => '-'.repeat(w + 2)).join('+')];
  for (const row of cells) out.push(line(row.map((text, i) => pad(text, i, columns[i]!.align ?? 'left'))));
  out.push(`(${rows.length} row${rows.length === 1 ? '' : 's'})`);
  return `${out.join('\n')}\n`;
}

const num = (header: string, key: string): Column => ({ header, value: (r) => r[key], align: 'right' });
const text = (header: string, key: string): Column => ({ header, value: (r) => r[key] });
const staffOf = (r: Record<string, unknown>): Record<string, unknown> | null => (typeof r['staff'] === 'object' && r['staff'] !== null ? (r['staff'] as Record<string, unknown>) : null);

export const SESSION_COLUMNS: readonly Column[] = [
  text('id', 'id'),
  text('tenant', 'tenant'),
  text('user', 'user'),
  text('database', 'database'),
  { header: 'staff', value: (r) => staffOf(r)?.['sub'] },
  { header: 'client', value: (r) => { const c = r['client'] as { addr?: string; port?: number } | undefined; return c === undefined ? '' : `${c.addr ?? ''}:${c.port ?? ''}`; } },
  text('tls', 'tls'),
  text('phase', 'phase'),
  text('tx', 'tx_status'),
  num('queries', 'queries'),
  num('bytes_in', 'bytes_in'),
  num('bytes_out', 'bytes_out'),
  text('started_at', 'started_at'),
];

export const TENANT_COLUMNS: readonly Column[] = [text('tenant', 'tenant'), num('sessions', 'sessions'), num('staff', 'staff'), num('users', 'users'), num('queries', 'queries'), num('bytes_in', 'bytes_in'), num('bytes_out', 'bytes_out')];

export const STAFF_COLUMNS: readonly Column[] = [
  text('sub', 'sub'),
  text('ticket', 'ticket'),
  text('access', 'access'),
  text('tenant', 'tenant'),
  text('database', 'database'),
  text('expires_at', 'expires_at'),
  text('jti', 'jti'),
  text('session', 'session'),
];

export const REVOCATION_COLUMNS: readonly Column[] = [text('by', 'by'), text('id', 'id'), text('until', 'until')];

export const POOL_COLUMNS: readonly Column[] = [
  text('tenant', 'tenant'),
  text('mode', 'mode'),
  num('active', 'active'),
  num('idle', 'idle'),
  num('waiting', 'waiting'),
  num('total', 'total'),
  num('max', 'max'),
  num('keys', 'keys'),
];

/** GET /limits rows: use beside its cap, then the rates and timeouts (ms; 0: off). */
export const LIMIT_COLUMNS: readonly Column[] = [
  text('tenant', 'tenant'),
  text('mode', 'pool_mode'),
  num('clients', 'clients'),
  num('max_clients', 'max_client_connections'),
  num('per_user', 'max_connections_per_user'),
  num('conn/s', 'new_connections_per_second'),
  num('burst', 'new_connections_burst'),
  num('backends', 'backends'),
  num('max_backends', 'max_backend_connections'),
  num('pool_timeout_ms', 'pool_timeout_ms'),
  num('query_timeout_ms', 'query_timeout_ms'),
  num('idle_tx_timeout_ms', 'idle_in_transaction_timeout_ms'),
  num('bandwidth_B/s', 'max_bandwidth_bytes_per_second'),
  num('auth_failures', 'auth_failure_limit'),
];

/** Per tenant: sessions, staff sessions, distinct users, and their counters summed; `served` tenants without sessions too. */
export function tenantRows(sessions: readonly Record<string, unknown>[], served: readonly string[] = []): Record<string, unknown>[] {
  type Row = { tenant: string; sessions: number; staff: number; users: Set<unknown>; queries: number; bytes_in: number; bytes_out: number };
  const by = new Map<string, Row>();
  const row = (tenant: string): Row => {
    let t = by.get(tenant);
    if (t === undefined) by.set(tenant, (t = { tenant, sessions: 0, staff: 0, users: new Set(), queries: 0, bytes_in: 0, bytes_out: 0 }));
    return t;
  };
  for (const id of served) row(id);
  for (const s of sessions) {
    if (typeof s['tenant'] !== 'string') continue; // not yet known (before the startup message)
    const t = row(s['tenant']);
    t.sessions++;
    if (staffOf(s) !== null) t.staff++;
    if (s['user'] !== null && s['user'] !== undefined) t.users.add(s['user']);
    t.queries += Number(s['queries'] ?? 0);
    t.bytes_in += Number(s['bytes_in'] ?? 0);
    t.bytes_out += Number(s['bytes_out'] ?? 0);
  }
  return [...by.values()].sort((a, b) => (a.tenant < b.tenant ? -1 : a.tenant > b.tenant ? 1 : 0)).map((t) => ({ ...t, users: t.users.size }));
}

/** One row per staff session: who, under which ticket, where, until when. */
export function staffRows(sessions: readonly Record<string, unknown>[]): Record<string, unknown>[] {
  const rows: Record<string, unknown>[] = [];
  for (const s of sessions) {
    const st = staffOf(s);
    if (st !== null) rows.push({ ...st, tenant: s['tenant'], database: s['database'], session: s['id'] });
  }
  return rows;
}

/** The admin API's GET /pools rows; with workers each names its worker, shown as a first column. */
export function poolRows(view: unknown): { rows: Record<string, unknown>[]; workers: boolean } {
  const pools = (view as { pools?: unknown } | null)?.pools;
  if (!Array.isArray(pools)) throw new ShowError('unexpected answer from GET /pools');
  const rows = pools as Record<string, unknown>[];
  return { rows, workers: rows.some((p) => p['worker'] !== undefined) };
}

/** The JSON a view prints with --json, and its table. */
export function render(view: ShowView, data: unknown): { json: unknown; table: string } {
  if (view === 'pools') {
    const { rows, workers } = poolRows(data);
    return { json: data, table: formatTable(workers ? [num('worker', 'worker'), ...POOL_COLUMNS] : POOL_COLUMNS, rows) };
  }
  if (view === 'limits') {
    const limits = (data as { limits?: unknown } | null)?.limits;
    if (!Array.isArray(limits)) throw new ShowError('unexpected answer from GET /limits');
    const rows = limits as Record<string, unknown>[];
    // With Redis, the tenants' clients on every instance, beside this instance's.
    const shared = rows.some((r) => typeof r['cluster_clients'] === 'number');
    const columns = shared ? [...LIMIT_COLUMNS.slice(0, 3), num('cluster_clients', 'cluster_clients'), ...LIMIT_COLUMNS.slice(3)] : LIMIT_COLUMNS;
    return { json: data, table: formatTable(columns, rows) };
  }
  const sessions = (data as { sessions?: unknown }).sessions;
  if (!Array.isArray(sessions)) throw new ShowError('unexpected answer from GET /sessions');
  const list = sessions as Record<string, unknown>[];
  const withWorker = list.some((s) => s['worker'] !== undefined);
  switch (view) {
    case 'sessions':
      return { json: data, table: formatTable(withWorker ? [...SESSION_COLUMNS, num('worker', 'worker')] : SESSION_COLUMNS, list) };
    case 'tenants': {
      const limits = (data as { limits?: unknown }).limits;
      const served = Array.isArray(limits) ? (limits as { tenant?: unknown }[]).flatMap((l) => (typeof l.tenant === 'string' ? [l.tenant] : [])) : [];
      const rows = tenantRows(list, served);
      return { json: { tenants: rows }, table: formatTable(TENANT_COLUMNS, rows) };
    }
    case 'staff': {
      const rows = staffRows(list);
      const revocations = (data as { revocations?: unknown }).revocations;
      const revoked = Array.isArray(revocations) ? (revocations as Record<string, unknown>[]) : [];
      return {
        json: { staff: rows, revocations: revoked },
        table: `${formatTable(STAFF_COLUMNS, rows)}\nrevocations in force:\n${formatTable(REVOCATION_COLUMNS, revoked)}`,
      };
    }
  }
}

export interface ShowIo {
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Whether stdout is a terminal (--watch clears it only then). */
  readonly tty: boolean;
}

/** Runs `show …`; the exit code (a --watch runs until SIGINT, then 0). */
export async function runShowCommand(args: readonly string[], io: ShowIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    options: {
      json: { type: 'boolean' },
      watch: { type: 'string', short: 'w' },
      tenant: { type: 'string' },
      admin: { type: 'string' },
      'token-file': { type: 'string' },
    },
  });
  const [view, ...extra] = positionals;
  if (view === undefined) throw new ShowUsageError(`show needs one of ${SHOW_VIEWS.join(', ')}`);
  if (!(SHOW_VIEWS as readonly string[]).includes(view)) throw new ShowUsageError(`unknown view "${view}": show ${SHOW_VIEWS.join(' | ')}`);
  if (extra.length > 0) throw new ShowUsageError(`unexpected argument "${extra[0]}"`);
  let watchMs: number | null = null;
  if (values.watch !== undefined) {
    const s = Number(values.watch);
    if (!Number.isFinite(s) || s < 0.5 || s > 3600) throw new ShowUsageError('--watch needs seconds from 0.5 to 3600');
    watchMs = s * 1000;
  }
  const fetchView = await source(view as ShowView, values, io.env);

  const once = async (): Promise<string> => {
    const r = render(view as ShowView, await fetchView());
    return values.json === true ? `${JSON.stringify(r.json, null, watchMs === null ? 2 : 0)}\n` : r.table;
  };
  if (watchMs === null) {
    io.out(await once());
    return 0;
  }
  return await watch(watchMs, view, once, io);
}

/** Redraws every interval until SIGINT; an unreachable API is shown and retried, a refused token ends it. */
async function watch(intervalMs: number, view: string, once: () => Promise<string>, io: ShowIo): Promise<number> {
  let stop: () => void = () => undefined;
  const stopped = new Promise<void>((resolve) => (stop = resolve));
  const onInt = (): void => stop();
  process.once('SIGINT', onInt);
  process.once('SIGTERM', onInt);
  try {
    for (;;) {
      let body: string;
      try {
        body = await once();
      } catch (e) {
        if (!(e instanceof ShowError) || /token refused/.test(e.message)) throw e;
        body = `${e.message}\n`;
      }
      const head = `pgwarden show ${view}, every ${intervalMs / 1000}s (Ctrl-C to stop): ${new Date().toISOString()}\n\n`;
      io.out(`${io.tty ? '\x1b[H\x1b[2J' : ''}${head}${body}`);
      let timer: NodeJS.Timeout | undefined;
      const next = new Promise<'tick'>((resolve) => (timer = setTimeout(() => resolve('tick'), intervalMs)));
      const what = await Promise.race([next, stopped.then(() => 'stop' as const)]);
      clearTimeout(timer);
      if (what === 'stop') return 0;
    }
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onInt);
  }
}

/** Where the view comes from, checked before the first request: a function fetching its JSON. */
async function source(view: ShowView, values: { admin?: string | undefined; tenant?: string | undefined; 'token-file'?: string | undefined }, env: ShowIo['env']): Promise<() => Promise<unknown>> {
  const base = values.admin ?? env['PGWARDEN_ADMIN_URL'];
  if (base === undefined || base === '') throw new ShowUsageError(`show ${view} needs the admin API: --admin URL or PGWARDEN_ADMIN_URL`);
  const url = (path: string): URL => {
    const u = endpoint(base, path, '--admin');
    if (values.tenant !== undefined && path !== '/staff/revocations') u.searchParams.set('tenant', values.tenant);
    return u;
  };
  if (values.tenant !== undefined && view === 'pools') throw new ShowUsageError('--tenant filters sessions, tenants, limits and staff');
  const token = await readToken(values['token-file'], env);
  const get = (path: string): Promise<unknown> => getJson(url(path), token, 'admin API');
  switch (view) {
    case 'pools':
      return () => get('/pools');
    case 'limits':
      return () => get('/limits');
    case 'sessions':
      return () => get('/sessions');
    case 'tenants':
      return async () => {
        const [sessions, limits] = await Promise.all([get('/sessions'), get('/limits')]);
        return { ...(sessions as object), ...(limits as object) };
      };
    case 'staff':
      return async () => {
        const [sessions, revocations] = await Promise.all([get('/sessions'), get('/staff/revocations')]);
        return { ...(sessions as object), ...(revocations as object) };
      };
  }
}

/** The base URL (`http://127.0.0.1:9188`, a bare `host:port` taken as http) with the path appended. */
function endpoint(base: string, path: string, flag: string): URL {
  let url: URL;
  try {
    url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(base) ? base : `http://${base}`);
  } catch {
    throw new ShowUsageError(`${flag}: not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ShowUsageError(`${flag}: http or https URL expected`);
  url.pathname = `${url.pathname.replace(/\/+$/, '')}${path}`;
  return url;
}

/** The token from --token-file (first line) or PGWARDEN_ADMIN_TOKEN; never from a flag. */
async function readToken(file: string | undefined, env: ShowIo['env']): Promise<string> {
  let token: string | undefined;
  if (file !== undefined) {
    try {
      token = (await readFile(file, 'utf8')).split(/\r?\n/)[0]?.trim();
    } catch (e) {
      throw new ShowError(`cannot read --token-file: ${(e as { code?: string }).code ?? 'error'}`);
    }
  } else token = env['PGWARDEN_ADMIN_TOKEN']?.trim();
  if (token === undefined || token === '') throw new ShowUsageError('the admin API token: --token-file FILE or PGWARDEN_ADMIN_TOKEN');
  return token;
}

const REQUEST_TIMEOUT_MS = 10_000;

/** GET and parse; the errors name the URL and status, never the token. */
async function getJson(url: URL, token: string, what: string): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(url, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  } catch (e) {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    const why = (e as Error).name === 'TimeoutError' ? 'timed out' : (cause?.code ?? cause?.message ?? (e as Error).message);
    throw new ShowError(`cannot reach the ${what} at ${url.origin}: ${why}`);
  }
  const body = await res.text();
  if (res.status === 401 || res.status === 403) throw new ShowError(`token refused by the ${what} at ${url.origin} (HTTP ${res.status})`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(body) as unknown;
  } catch {
    throw new ShowError(`the ${what} at ${url.origin} answered HTTP ${res.status} with no JSON`);
  }
  if (!res.ok) {
    const msg = (parsed as { error?: unknown } | null)?.error;
    throw new ShowError(`the ${what} at ${url.origin} answered HTTP ${res.status}${typeof msg === 'string' ? `: ${cellText(msg)}` : ''}`);
  }
  return parsed;
}
