/**
 * The PostgreSQL audit store's table: its name rule, its DDL (`audit init`), the client that
 * reaches it, the searchable columns of a record and the INSERT that stores a batch of records.
 * Feeding it in order is pg-sink.ts's; reading it back is query.ts's.
 */
import type pg from 'pg';
import { newPgClient } from '../storage/pg-client.js';
import { objectField as obj, stringField as str, type AuditRecord } from './record.js';

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

/** A client for the store. */
export function newStoreClient(url: string, passwordEnv: string | undefined): pg.Client {
  return newPgClient({ url, passwordEnv }, 'pgwarden-audit');
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

/** A chained record with its JSON line (without the newline), as the file has it. */
export interface StoredRecord {
  readonly record: AuditRecord;
  readonly line: string;
}

/**
 * One INSERT for a whole batch, one array parameter per column, in the order given. A record
 * stored already (the same id: a retry, or a spool file sent again after a crash) is left alone.
 */
export function insertSql(table: string): string {
  return `INSERT INTO ${quoteTable(table)}
  (id, seq, boot_id, instance_id, time, event, tenant, session_id, db_user, staff_sub, ticket, client_addr, record, chain_hash)
SELECT id, seq, boot_id, instance_id, time, event, tenant, session_id, db_user, staff_sub, ticket, client_addr, record, chain_hash
FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::text[], $11::text[], $12::text[], $13::jsonb[], $14::text[])
  WITH ORDINALITY AS u(id, seq, boot_id, instance_id, time, event, tenant, session_id, db_user, staff_sub, ticket, client_addr, record, chain_hash, ord)
ORDER BY ord
ON CONFLICT (id) DO NOTHING`;
}

/** The parameters of insertSql for a batch: column by column. */
export function insertParams(batch: readonly StoredRecord[]): unknown[][] {
  const cols: unknown[][] = Array.from({ length: 14 }, () => []);
  for (const { record: r, line } of batch) {
    const c = storeColumns(r);
    const values = [
      r.id, r.seq, r.instance.boot_id, r.instance.id, r.time, r.event,
      c.tenant, c.session_id, c.db_user, c.staff_sub, c.ticket, c.client_addr, jsonbText(line), r.chain.hash,
    ];
    for (let i = 0; i < values.length; i++) cols[i]!.push(values[i]);
  }
  return cols;
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
