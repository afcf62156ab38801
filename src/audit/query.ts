/**
 * `pgwarden audit init | sessions | query`: the command line over query-source.ts (reading the
 * records back, from the file(s) or the PostgreSQL store, with the same filters) and
 * query-report.ts (the same output for both). The table is store-table.ts's; checking the chain is
 * verify.ts's.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfigFile } from '../config/load.js';
import { ConfigError } from '../config/schema.js';
import { AuditUsageError, FileSource, PgSource, parseTimeMicros, type AuditFilter, type AuditSource } from './query-source.js';
import { eventRow, formatEvents, formatSessions, jsonLine, listSessions } from './query-report.js';
import { TABLE_NAME_RE, initStore, newStoreClient } from './store-table.js';

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
    FILTERS: --tenant ID --user NAME --staff SUB --ticket T --session ID --event NAME[,NAME.*]
             --since T --until T (T: RFC 3339, YYYY-MM-DD, or ago as 30s 15m 2h 7d 1w)
`;

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
  ticket: { type: 'string' },
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

function filterOf(v: { tenant?: string; user?: string; staff?: string; ticket?: string; session?: string; event?: string; since?: string; until?: string }): AuditFilter {
  const nowMs = Date.now();
  const events = v.event?.split(',').map((e) => e.trim()).filter((e) => e !== '');
  return {
    ...(v.tenant === undefined ? {} : { tenant: v.tenant }),
    ...(v.user === undefined ? {} : { user: v.user }),
    ...(v.staff === undefined ? {} : { staff: v.staff }),
    ...(v.ticket === undefined ? {} : { ticket: v.ticket }),
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
        if (values.json !== true) out(formatEvents(rows));
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
