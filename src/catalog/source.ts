/**
 * CatalogSource: the tenants a running proxy serves when [catalog] is set. It loads the catalog
 * (each row validated by config/'s code; an invalid row is logged and never served), follows it
 * with LISTEN/NOTIFY and a periodic full resync, keeps the last good copy in memory and in the
 * snapshot file, serves that copy while the catalog is down (saying so in a metric, the log and
 * an audit record) and catches up when it returns. It reports each change through one callback
 * with the whole new map; swapping it in and ending sessions is the proxy's. The tables are store.ts's.
 *
 * Cost: the map is rebuilt once per applied change (a copy of the previous one), never per login;
 * a login is one Map lookup whatever the number of tenants.
 */
import type pg from 'pg';
import type { AuditEvent } from '../audit/record.js';
import type { CatalogConfig, TenantConfig } from '../config/schema.js';
import { validateTenantBody, type TenantBodyContext } from '../config/tenant-body.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { NOTIFY_ALL, catalogChannel, newCatalogClient, quoteSchema } from './store.js';
import { readSnapshot, writeSnapshot } from './snapshot.js';

/**
 * Snapshot writes take at most this share of the time, however often the catalog changes: after a
 * write that took d ms the next waits d × (1 / share - 1). A write of 10 tenants (~1 ms) is followed
 * within ~10 ms; one of 10,000 (a 19 MB document, ~30 ms on the event loop) within ~0.3 s.
 */
const SNAPSHOT_SHARE = 0.1;

/** Called after every applied change: the whole new map, and the ids added, changed or removed. */
export type CatalogChangeHandler = (tenants: ReadonlyMap<string, TenantConfig>, changed: readonly string[]) => void;

export interface CatalogSourceOptions {
  readonly config: CatalogConfig;
  /** The running config's defaults and sections a tenant body is validated against. */
  readonly context: TenantBodyContext;
  readonly log: Logger;
  readonly metrics: Metrics;
  /** Where catalog.degraded records go (the audit log, or a worker's link to it). */
  readonly audit: { append(event: AuditEvent): void };
  readonly onChange: CatalogChangeHandler;
  /** The environment env-var references are checked in (default: this process's). */
  readonly env?: NodeJS.ProcessEnv;
  /** Reconnect backoff bounds (default 250 ms doubling to 5 s). */
  readonly reconnectMinMs?: number;
  readonly reconnectMaxMs?: number;
}

/** Start-up found neither a reachable catalog nor a snapshot: there is nothing to serve. */
export class CatalogUnavailableError extends Error {}

/** A catalog row as read: its body and the catalog's md5 of it (null: from the snapshot, not compared yet). */
interface Row {
  readonly id: string;
  readonly body: Record<string, unknown>;
  readonly hash: string | null;
}

/** A served tenant: the body it came from (compared on change, written to the snapshot), its hash, and its validated config. */
interface Entry {
  readonly hash: string | null;
  /** The body as JSON text: compared on change and copied into the snapshot (the parsed body is not kept). */
  readonly bodyJson: string;
  readonly tenant: TenantConfig;
}

type Link = 'connected' | 'down';

export class CatalogSource {
  private entries = new Map<string, Entry>();
  /** Rows refused by validation and never served, by id: their hash, so a resync skips them until they change. */
  private readonly refused = new Map<string, string | null>();
  private map: ReadonlyMap<string, TenantConfig> = new Map();
  private client: pg.Client | null = null;
  private link: Link = 'down';
  /** When the served copy was last known to match the catalog (wall ms). */
  private syncedAtMs = 0;
  /** A catalog.degraded "enter" was written and no "exit" yet. */
  private degraded = false;
  private closed = false;
  private booted = false;
  /** Tenant ids notified and not yet re-read; NOTIFY_ALL asks for a full resync. */
  private readonly pending = new Set<string>();
  private draining: Promise<void> | null = null;
  private resyncTimer: NodeJS.Timeout | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private backoffMs: number;
  private snapshotWrite: Promise<void> = Promise.resolve();
  private snapshotDirty = false;
  /** When the next snapshot write may start (performance.now()): see SNAPSHOT_SHARE. */
  private nextSnapshotAt = 0;
  /** Cuts a write's wait short (close). */
  private wakeSnapshot: (() => void) | null = null;
  private readonly env: NodeJS.ProcessEnv;
  private context: TenantBodyContext;

  private constructor(private readonly opts: CatalogSourceOptions) {
    this.env = opts.env ?? process.env;
    this.context = opts.context;
    this.backoffMs = opts.reconnectMinMs ?? 250;
  }

  /**
   * Reads the snapshot (if any), then connects, listens and loads the whole catalog, and writes
   * the snapshot. With the catalog unreachable it serves the snapshot and keeps trying; with
   * neither, it throws CatalogUnavailableError. Changes after start reach `onChange`; the tenants
   * at start are `tenants`.
   */
  static async start(opts: CatalogSourceOptions): Promise<CatalogSource> {
    const source = new CatalogSource(opts);
    opts.metrics.catalogStaleSeconds = () => source.staleSeconds;
    try {
      await source.boot();
    } catch (err) {
      await source.close();
      throw err;
    }
    return source;
  }

  /** The tenants to serve now (replaced, never mutated, on each change). */
  get tenants(): ReadonlyMap<string, TenantConfig> {
    return this.map;
  }

  /** 0 while connected and in sync; else seconds since the served copy was last known to match the catalog. */
  get staleSeconds(): number {
    if (this.link === 'connected' && !this.degraded) return 0;
    return Math.max(0, (Date.now() - this.syncedAtMs) / 1000);
  }

  get connected(): boolean {
    return this.link === 'connected';
  }

  /** Re-reads the whole catalog now (also what the periodic resync does). Rejects when it cannot. */
  async resync(): Promise<void> {
    await this.fullResync();
  }

  /**
   * Re-validates every served tenant against a new context (a reloaded file's [pool]/[limits])
   * and reports the result through onChange. A tenant whose body no longer validates keeps its
   * last good settings (logged), as with an invalid row.
   */
  setContext(context: TenantBodyContext): void {
    this.context = context;
    this.apply(new Map([...this.entries].map(([id, e]) => [id, { id, body: JSON.parse(e.bodyJson) as Record<string, unknown>, hash: e.hash }])), true, true);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.resyncTimer !== null) clearInterval(this.resyncTimer);
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.resyncTimer = null;
    this.reconnectTimer = null;
    const c = this.client;
    this.client = null;
    this.link = 'down';
    if (c !== null) await c.end().catch(() => undefined);
    await this.draining?.catch(() => undefined);
    this.wakeSnapshot?.();
    await this.snapshotWrite;
    if (this.opts.metrics.catalogStaleSeconds !== null) this.opts.metrics.catalogStaleSeconds = null;
  }

  // -------------------------------------------------------------------------------------------
  // Start-up

  private async boot(): Promise<void> {
    let cause = '';
    try {
      await this.connect();
      await this.fullResync();
    } catch (err) {
      cause = describe(err);
      this.dropClient();
    }
    if (this.client !== null) {
      // Even an empty catalog leaves a snapshot, and a snapshot that cannot be written is a start-up
      // error now rather than a surprise at the next restart during an outage.
      await this.snapshotWrite;
      try {
        await this.persistSnapshot();
      } catch (err) {
        throw new CatalogUnavailableError(`catalog.snapshot_file ${this.opts.config.snapshotFile} cannot be written (${describe(err)})`);
      }
      this.booted = true;
      this.startResyncTimer();
      return;
    }
    // Read only now: with the catalog up, parsing a 19 MB snapshot would only cost start-up time and memory.
    const snapshot = await readSnapshot(this.opts.config.snapshotFile, this.opts.log);
    if (snapshot === null) {
      // undefined_table, invalid_schema_name: reachable, but never initialised.
      const hint = /^(42P01|3F000):/.test(cause) ? '; its tables are missing: run "pgwarden catalog init --config FILE"' : '';
      throw new CatalogUnavailableError(
        `tenant catalog unreachable (${cause}${hint}) and no snapshot at ${this.opts.config.snapshotFile}: no tenants to serve; start once with the catalog reachable`,
      );
    }
    this.syncedAtMs = snapshot.synced_at_ms;
    this.apply(new Map(Object.entries(snapshot.tenants).map(([id, body]) => [id, { id, body, hash: null }])), false);
    this.opts.log.warn({ snapshot: this.opts.config.snapshotFile, tenants: this.map.size, cause }, 'tenant catalog unreachable at start: serving the snapshot');
    this.enterDegraded(cause, 'snapshot');
    this.booted = true;
    this.startResyncTimer();
    this.scheduleReconnect();
  }

  // -------------------------------------------------------------------------------------------
  // The connection: LISTEN first, then read, so no change between the two is missed.

  private async connect(): Promise<void> {
    const client = newCatalogClient(this.opts.config);
    // Until it is this.client (after LISTEN), a failing client is only ended: the caller handles the rejection.
    client.on('error', (err) => this.lost(client, describe(err)));
    client.on('end', () => this.lost(client, 'connection closed'));
    client.on('notification', (n) => {
      if (client !== this.client || n.payload === undefined) return;
      this.pending.add(n.payload);
      this.drain();
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${catalogChannel(this.opts.config.schema)}`);
    } catch (err) {
      void client.end().catch(() => undefined);
      throw err;
    }
    if (this.closed) {
      void client.end().catch(() => undefined);
      throw new Error('closed');
    }
    this.client = client;
    this.link = 'connected';
    this.backoffMs = this.opts.reconnectMinMs ?? 250;
  }

  private dropClient(): void {
    const c = this.client;
    this.client = null;
    this.link = 'down';
    void c?.end().catch(() => undefined);
  }

  /** The listening connection failed: keep serving what we have, say so once, reconnect. */
  private lost(client: pg.Client, cause: string): void {
    if (client !== this.client || this.closed) return;
    // Listening, the copy was in sync up to now: staleness counts from the loss, not the last read.
    if (!this.degraded) this.syncedAtMs = Date.now();
    this.dropClient();
    this.opts.log.warn({ cause, tenants: this.map.size }, 'tenant catalog connection lost: serving the last good copy');
    this.enterDegraded(cause, 'memory');
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closed || this.reconnectTimer !== null) return;
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, this.opts.reconnectMaxMs ?? 5_000);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.reconnect();
    }, delay);
    this.reconnectTimer.unref();
  }

  private async reconnect(): Promise<void> {
    if (this.closed || this.client !== null) return;
    try {
      await this.connect();
      await this.fullResync();
    } catch (err) {
      if (this.isClosed()) return; // close() may have come during the awaits
      this.opts.log.debug({ cause: describe(err) }, 'tenant catalog still unreachable');
      this.dropClient();
      this.scheduleReconnect();
    }
  }

  private isClosed(): boolean {
    return this.closed;
  }

  private startResyncTimer(): void {
    this.resyncTimer = setInterval(() => {
      if (this.client === null) return; // reconnecting: the reconnect resyncs
      this.fullResync().catch((err: unknown) => {
        if (this.client !== null) this.lost(this.client, describe(err));
      });
    }, this.opts.config.resyncIntervalMs);
    this.resyncTimer.unref();
  }

  // -------------------------------------------------------------------------------------------
  // Reading

  private get table(): string {
    return `${quoteSchema(this.opts.config.schema)}.tenants`;
  }

  /**
   * Reads every row's id and body hash, then the bodies of the rows that differ from what is
   * served, and applies the difference; marks the copy in sync (and leaves degraded mode). With
   * 10,000 tenants a resync that finds nothing changed moves ids and hashes only.
   */
  private async fullResync(): Promise<void> {
    const client = this.client;
    if (client === null) throw new Error('not connected');
    try {
      const hashes = (await client.query<{ id: string; hash: string }>(`SELECT id, md5(body::text) AS hash FROM ${this.table}`)).rows;
      const updates = new Map<string, Row | null>();
      const seen = new Set<string>();
      const stale: string[] = [];
      for (const { id, hash } of hashes) {
        seen.add(id);
        const known = this.entries.get(id)?.hash ?? this.refused.get(id);
        if (known !== hash) stale.push(id);
      }
      for (const id of this.entries.keys()) if (!seen.has(id)) updates.set(id, null);
      for (const id of this.refused.keys()) if (!seen.has(id)) this.refused.delete(id);
      for (const row of await this.readRows(client, stale)) updates.set(row.id, row);
      this.apply(updates, true);
    } catch (err) {
      this.opts.metrics.catalogResyncs.inc({ outcome: 'failed' });
      throw err;
    }
    this.opts.metrics.catalogResyncs.inc({ outcome: 'ok' });
    this.markInSync();
  }

  private async readRows(client: pg.Client, ids: readonly string[]): Promise<Row[]> {
    if (ids.length === 0) return [];
    const r = await client.query<{ id: string; body: Record<string, unknown>; hash: string }>(
      `SELECT id, body, md5(body::text) AS hash FROM ${this.table} WHERE id = ANY($1::text[])`,
      [ids],
    );
    return r.rows;
  }

  /** Re-reads the notified tenants in one query and one change; NOTIFY_ALL means a full resync. */
  private drain(): void {
    if (this.draining !== null) return;
    this.draining = (async () => {
      while (this.pending.size > 0 && this.client !== null) {
        const client = this.client;
        const ids = [...this.pending];
        this.pending.clear();
        if (ids.includes(NOTIFY_ALL)) {
          await this.fullResync();
          continue;
        }
        const found = new Map((await this.readRows(client, ids)).map((row) => [row.id, row]));
        this.apply(new Map(ids.map((id) => [id, found.get(id) ?? null])), true);
        this.markInSync();
      }
    })()
      .catch((err: unknown) => {
        // The connection failed under us: the reconnect does a full resync, which covers what was pending.
        this.pending.clear();
        if (this.client !== null) this.lost(this.client, describe(err));
      })
      .finally(() => {
        this.draining = null;
      });
  }

  // -------------------------------------------------------------------------------------------
  // Applying

  /**
   * Applies `updates` (null: the row is gone) to the served set: each new or changed body is
   * validated (a refused one is logged and skipped; a tenant served before keeps its last good
   * settings). On any difference the map is rebuilt once, `onChange` called and the snapshot
   * written (unless `persist` is false: loading the snapshot itself). The work is per updated row,
   * plus one map copy per change. `revalidate` checks unchanged bodies again (a new context).
   */
  private apply(updates: ReadonlyMap<string, Row | null>, persist: boolean, revalidate = false): void {
    const next = new Map(this.entries);
    const changed: string[] = [];
    for (const [id, row] of updates) {
      const old = this.entries.get(id);
      if (row === null) {
        this.refused.delete(id);
        if (next.delete(id)) changed.push(id);
        continue;
      }
      const bodyJson = JSON.stringify(row.body);
      if (old !== undefined && old.bodyJson === bodyJson && !revalidate) {
        if (old.hash !== row.hash) next.set(id, { ...old, hash: row.hash });
        continue;
      }
      const v = validateTenantBody(id, row.body, this.context, this.env);
      if (!v.ok) {
        this.opts.metrics.catalogInvalidRows.inc();
        // The problems name keys and never echo a secret (config/ guarantees it).
        this.opts.log.error(
          { tenant: id, problems: v.problems, kept: old !== undefined },
          old === undefined ? 'tenant catalog: invalid row, not served' : 'tenant catalog: invalid row, the tenant keeps its last valid settings',
        );
        // Remember the hash, so a resync does not re-read (and re-log) the same refused row.
        if (old !== undefined) next.set(id, { ...old, hash: row.hash });
        else this.refused.set(id, row.hash);
        continue;
      }
      this.refused.delete(id);
      next.set(id, { hash: row.hash, bodyJson, tenant: v.tenant });
      changed.push(id);
    }
    this.entries = next;
    if (changed.length === 0) return;
    const map = new Map<string, TenantConfig>();
    for (const [id, e] of next) map.set(id, e.tenant);
    this.map = map;
    this.opts.metrics.catalogTenants.set(map.size);
    this.opts.metrics.catalogChanges.inc(changed.length);
    this.opts.log.info({ changed: changed.length > 20 ? changed.length : changed, tenants: map.size }, 'tenant catalog changed');
    // At boot the snapshot is written once, after the first full read (boot()).
    if (persist && this.booted) this.scheduleSnapshot();
    try {
      this.opts.onChange(map, changed);
    } catch (err) {
      this.opts.log.error({ err }, 'tenant catalog: onChange failed');
    }
  }

  private markInSync(): void {
    const staleSeconds = Math.round(this.staleSeconds * 1000) / 1000;
    this.syncedAtMs = Date.now();
    if (!this.degraded) return;
    this.degraded = false;
    this.opts.log.info({ tenants: this.map.size, stale_seconds: staleSeconds }, 'tenant catalog reachable again and in sync');
    this.opts.audit.append({ event: 'catalog.degraded', state: 'exit', stale_seconds: staleSeconds, tenants: this.map.size });
    // The snapshot's synced_at moves on even when nothing changed while the catalog was down.
    this.scheduleSnapshot();
  }

  private enterDegraded(cause: string, servedFrom: 'memory' | 'snapshot'): void {
    if (this.degraded) return;
    this.degraded = true;
    this.opts.audit.append({ event: 'catalog.degraded', state: 'enter', cause, served_from: servedFrom, tenants: this.map.size });
  }

  // -------------------------------------------------------------------------------------------
  // The snapshot file: the bodies of the served tenants (verifiers included, hence 0600).

  /**
   * Writes the snapshot after the current write, and no sooner than SNAPSHOT_SHARE allows after
   * the one before (coalesced: the changes meanwhile make one write); a failure is logged.
   */
  private scheduleSnapshot(): void {
    if (this.snapshotDirty) return;
    this.snapshotDirty = true;
    this.snapshotWrite = this.snapshotWrite.then(async () => {
      const wait = this.nextSnapshotAt - performance.now();
      if (wait > 0 && !this.closed) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, wait);
          this.wakeSnapshot = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.wakeSnapshot = null;
      }
      this.snapshotDirty = false;
      try {
        await this.persistSnapshot();
      } catch (err) {
        this.opts.log.error({ snapshot: this.opts.config.snapshotFile, code: (err as NodeJS.ErrnoException).code }, 'tenant catalog snapshot not written');
      }
    });
  }

  /** The snapshot of what is served now, written atomically; rejects when it cannot be. */
  private async persistSnapshot(): Promise<void> {
    const started = performance.now();
    const syncedAtMs = this.syncedAtMs === 0 ? Date.now() : this.syncedAtMs;
    try {
      await writeSnapshot(
        this.opts.config.snapshotFile,
        syncedAtMs,
        [...this.entries].map(([id, e]) => [id, e.bodyJson] as const),
      );
    } finally {
      const now = performance.now();
      this.nextSnapshotAt = now + (now - started) * (1 / SNAPSHOT_SHARE - 1);
    }
  }

  /** Resolves once the snapshot holds every change applied so far (for tests and shutdown). */
  async snapshotWritten(): Promise<void> {
    await this.snapshotWrite;
  }
}

/** A failure as the log and the audit record name it: code and message, never a connection string. */
function describe(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown };
  const message = typeof e.message === 'string' ? e.message : String(err);
  return typeof e.code === 'string' ? `${e.code}: ${message}` : message;
}
