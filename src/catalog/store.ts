/**
 * The catalog's tables in PostgreSQL and the writes to them: one row per tenant holding its
 * `[tenants.<id>]` table as jsonb, a trigger that NOTIFYs the tenant id on every change, the DDL
 * `pgwarden catalog init` runs (idempotent), and reads and validated writes for the admin API.
 * Following the changes in a running proxy is source.ts's; what a valid body is, config/'s.
 */
import type pg from 'pg';
import { LazyPgClient, newPgClient } from '../storage/pg-client.js';
import type { CatalogConfig, TenantConfig } from '../config/schema.js';
import { validateTenantBody, type TenantBodyContext } from '../config/tenant-body.js';
import { CATALOG_SCHEMA_RE } from '../config/validate-catalog.js';

/** The NOTIFY payload that asks listeners for a full re-read (TRUNCATE: no row ids to name). */
export const NOTIFY_ALL = '*';

/** A tenant's row: its body (the JSON form of `[tenants.<id>]`) and when it last changed. */
export interface CatalogRow {
  readonly id: string;
  readonly body: Record<string, unknown>;
  readonly updatedAt: Date;
}

/** Why a write was refused: the body fails validation (problems name keys as check-config does), or the tenant is not there. */
export class CatalogRefusal extends Error {
  constructor(
    readonly reason: 'invalid' | 'not_found',
    readonly problems: readonly string[],
  ) {
    super(problems.join('; '));
  }
}

/** `"schema"`: the name has passed CATALOG_SCHEMA_RE, quoting is belt and braces. */
export function quoteSchema(schema: string): string {
  if (!CATALOG_SCHEMA_RE.test(schema)) throw new Error(`invalid catalog schema name "${schema}"`);
  return `"${schema}"`;
}

/** The LISTEN/NOTIFY channel of a catalog: its schema name, so two catalogs in one database do not mix. */
export function catalogChannel(schema: string): string {
  return quoteSchema(schema);
}

/**
 * The DDL `pgwarden catalog init` runs; every statement is idempotent. The trigger fires after the
 * row change, so the NOTIFY is delivered at commit, never for a rolled-back write; the payload is
 * the tenant id (at most 63 bytes), or NOTIFY_ALL after a TRUNCATE.
 */
export function catalogSchemaSql(schema: string): string[] {
  const s = quoteSchema(schema);
  const channel = `'${schema}'`;
  return [
    `CREATE SCHEMA IF NOT EXISTS ${s}`,
    `CREATE TABLE IF NOT EXISTS ${s}.tenants (
  id         text PRIMARY KEY CHECK (id ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
  body       jsonb NOT NULL CHECK (jsonb_typeof(body) = 'object'),
  version    bigint NOT NULL DEFAULT 1,
  updated_at timestamptz NOT NULL DEFAULT now()
)`,
    `CREATE OR REPLACE FUNCTION ${s}.notify_tenant_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    PERFORM pg_notify(${channel}, '${NOTIFY_ALL}');
  ELSIF TG_OP = 'DELETE' THEN
    PERFORM pg_notify(${channel}, OLD.id);
  ELSE
    PERFORM pg_notify(${channel}, NEW.id);
    IF TG_OP = 'UPDATE' AND OLD.id <> NEW.id THEN PERFORM pg_notify(${channel}, OLD.id); END IF;
  END IF;
  RETURN NULL;
END
$fn$`,
    // CREATE TRIGGER has no IF NOT EXISTS before PostgreSQL 14's OR REPLACE; check the catalog instead.
    `DO $do$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'tenants_notify' AND tgrelid = '${schema}.tenants'::regclass) THEN
    CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OR DELETE ON ${s}.tenants
      FOR EACH ROW EXECUTE FUNCTION ${s}.notify_tenant_change();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'tenants_notify_truncate' AND tgrelid = '${schema}.tenants'::regclass) THEN
    CREATE TRIGGER tenants_notify_truncate AFTER TRUNCATE ON ${s}.tenants
      FOR EACH STATEMENT EXECUTE FUNCTION ${s}.notify_tenant_change();
  END IF;
END
$do$`,
  ];
}

/** A client for the catalog (keep-alive: the listening connection is idle for long stretches). */
export function newCatalogClient(cfg: CatalogConfig, applicationName = 'pgwarden-catalog'): pg.Client {
  return newPgClient(cfg, applicationName, true);
}

interface RowResult {
  id: string;
  body: Record<string, unknown>;
  updated_at: Date;
}

const toRow = (r: RowResult): CatalogRow => ({ id: r.id, body: r.body, updatedAt: r.updated_at });

/** Is the error the server's verdict on the statement (the connection is still good)? */
const isServerError = (err: unknown): boolean => typeof (err as { code?: unknown }).code === 'string' && typeof (err as { severity?: unknown }).severity === 'string';

/**
 * Reads and writes of the catalog, on one connection opened when first needed; operations run one
 * at a time, in call order. Writes validate the body first with the running config's defaults
 * (`context`) and this process's environment, so what the catalog holds is what the file could.
 */
export class CatalogStore {
  private readonly client: LazyPgClient;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly tenants: string;

  constructor(
    private readonly cfg: CatalogConfig,
    private context: TenantBodyContext,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {
    this.tenants = `${quoteSchema(cfg.schema)}.tenants`;
    this.client = new LazyPgClient(() => newCatalogClient(cfg, 'pgwarden-catalog-admin'));
  }

  /** Validates later writes against a new context (a reloaded file's [pool]/[limits] defaults). */
  setContext(context: TenantBodyContext): void {
    this.context = context;
  }

  /** Creates the schema, table, function and triggers (idempotent). True when the table did not exist before. */
  init(): Promise<boolean> {
    return this.run(async (c) => {
      const before = await c.query<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [`${this.cfg.schema}.tenants`]);
      await c.query('BEGIN');
      try {
        // One init at a time: two running at once could both miss the trigger and both create it.
        await c.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`pgwarden_catalog_init:${this.cfg.schema}`]);
        for (const sql of catalogSchemaSql(this.cfg.schema)) await c.query(sql);
        await c.query('COMMIT');
      } catch (err) {
        await c.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
      return before.rows[0]?.t === null;
    });
  }

  all(): Promise<CatalogRow[]> {
    return this.run(async (c) => (await c.query<RowResult>(`SELECT id, body, updated_at FROM ${this.tenants} ORDER BY id`)).rows.map(toRow));
  }

  get(id: string): Promise<CatalogRow | undefined> {
    return this.run(async (c) => {
      const r = await c.query<RowResult>(`SELECT id, body, updated_at FROM ${this.tenants} WHERE id = $1`, [id]);
      return r.rows[0] === undefined ? undefined : toRow(r.rows[0]);
    });
  }

  /** Creates or replaces a tenant. Throws CatalogRefusal('invalid') naming the offending keys; writes nothing then. */
  async put(id: string, body: unknown): Promise<{ created: boolean; tenant: TenantConfig }> {
    const tenant = this.validate(id, body);
    return await this.run(async (c) => {
      const r = await c.query<{ created: boolean }>(
        `INSERT INTO ${this.tenants} AS t (id, body) VALUES ($1, $2::jsonb)
ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body, version = t.version + 1, updated_at = now()
RETURNING (xmax = 0) AS created`,
        [id, JSON.stringify(body)],
      );
      return { created: r.rows[0]?.created === true, tenant };
    });
  }

  /** Removes a tenant; false when there was none. */
  delete(id: string): Promise<boolean> {
    return this.run(async (c) => ((await c.query(`DELETE FROM ${this.tenants} WHERE id = $1`, [id])).rowCount ?? 0) > 0);
  }

  /**
   * Creates or replaces one user of a tenant: `userBody` is its `[tenants.<id>.users.<name>]` table
   * (a SCRAM verifier in `scram`, never a password). The whole tenant is validated with the user in
   * place, under SELECT … FOR UPDATE so two concurrent user writes cannot lose one another.
   */
  putUser(id: string, name: string, userBody: unknown): Promise<{ created: boolean }> {
    return this.inTransaction(id, (body) => {
      const users = usersOf(body);
      const created = !Object.hasOwn(users, name);
      return { body: { ...body, users: { ...users, [name]: userBody } }, result: { created } };
    });
  }

  /** Removes one user of a tenant; false when the tenant has no such user. Refuses (not_found) an unknown tenant. */
  deleteUser(id: string, name: string): Promise<boolean> {
    return this.inTransaction(id, (body) => {
      const users = usersOf(body);
      if (!Object.hasOwn(users, name)) return { body: null, result: false };
      const { [name]: _removed, ...rest } = users;
      return { body: { ...body, users: rest }, result: true };
    });
  }

  async close(): Promise<void> {
    await this.queue.catch(() => undefined);
    await this.client.end();
  }

  private validate(id: string, body: unknown): TenantConfig {
    const v = validateTenantBody(id, body, this.context, this.env);
    if (!v.ok) throw new CatalogRefusal('invalid', v.problems);
    return v.tenant;
  }

  /** Read the tenant's body locked, change it (null: leave it), validate the result, write it back. */
  private inTransaction<R>(id: string, change: (body: Record<string, unknown>) => { body: Record<string, unknown> | null; result: R }): Promise<R> {
    return this.run(async (c) => {
      await c.query('BEGIN');
      try {
        const r = await c.query<{ body: Record<string, unknown> }>(`SELECT body FROM ${this.tenants} WHERE id = $1 FOR UPDATE`, [id]);
        const current = r.rows[0]?.body;
        if (current === undefined) throw new CatalogRefusal('not_found', [`tenants.${id}: no such tenant`]);
        const { body, result } = change(current);
        if (body !== null) {
          this.validate(id, body);
          await c.query(`UPDATE ${this.tenants} SET body = $2::jsonb, version = version + 1, updated_at = now() WHERE id = $1`, [id, JSON.stringify(body)]);
        }
        await c.query('COMMIT');
        return result;
      } catch (err) {
        await c.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
    });
  }

  /** Runs `op` after every earlier one, on the connection (opened if needed; dropped after an I/O failure). */
  private run<R>(op: (c: pg.Client) => Promise<R>): Promise<R> {
    const next = this.queue.then(async () => {
      const c = await this.client.get();
      try {
        return await op(c);
      } catch (err) {
        if (!(err instanceof CatalogRefusal) && !isServerError(err)) this.client.drop();
        throw err;
      }
    });
    this.queue = next.catch(() => undefined);
    return next;
  }
}

function usersOf(body: Record<string, unknown>): Record<string, unknown> {
  const u = body['users'];
  return typeof u === 'object' && u !== null && !Array.isArray(u) ? (u as Record<string, unknown>) : {};
}
