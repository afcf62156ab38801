/**
 * Access transparency (issue 17): the staff records of the operator's audit log, copied into each
 * tenant's own pgwarden.staff_access_log so the customer can read what staff did. A RecordSink on
 * the audit log, so it sees exactly the chained records, in chain order, each with its hash; per
 * tenant a SpooledPump (spooled-pump.ts) delivers them in order, batched, over one writer
 * connection to the tenant's server (auth/auth-query.ts's LookupPool in 'writer' mode), and spools
 * them while that server is unreachable. Which tenants, and where their servers are, the composer
 * tells it (attach); ending sessions that lag is the session's (client-session.ts).
 *
 * Never on a customer's path: deliver() only looks at the event name and principal of a record and
 * returns for everything that is not a staff record of a transparency tenant.
 */
import path from 'node:path';
import type { TenantConfig } from '../config/schema.js';
import { LookupPool, type LookupTarget } from '../auth/auth-query.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { RecordSink } from './record-sink.js';
import { objectField as obj, stringField as str, type AuditRecord } from './record.js';
import { recordTimeMs, Spool } from './spool.js';
import { isDataError, SpooledPump } from './spooled-pump.js';
import type { StoredRecord } from './store-table.js';

/** The customer's table's columns, as record_staff_access(jsonb) takes them. */
export interface AccessLogRow {
  readonly record_id: string;
  readonly seq: number;
  readonly at: string;
  readonly session_id: string | null;
  readonly sub: string | null;
  readonly ticket: string | null;
  readonly access: string | null;
  /** access (the login decision), session_start, statement, result, session_end. */
  readonly event: string;
  /** The statement's message kind (simple, parse, bind, execute, …), for statement and result rows. */
  readonly kind: string | null;
  readonly query: string | null;
  readonly result: string | null;
  readonly record_hash: string;
}

const EVENTS: Readonly<Record<string, string>> = {
  'staff.access': 'access',
  'session.start': 'session_start',
  'session.query': 'statement',
  'session.query_result': 'result',
  'session.end': 'session_end',
};

/** Records waiting per tenant beyond which new ones are dropped (counted, logged): the spool is bounded. */
const MAX_BACKLOG_RECORDS = 200_000;
const BATCH_SIZE = 200;
const FLUSH_INTERVAL_MS = 100;
/** The writer's one statement: a SECURITY DEFINER function the lookup role may only EXECUTE. */
const RECORD_SQL = 'SELECT pgwarden.record_staff_access($1::jsonb)';

type Obj = Record<string, unknown>;

/**
 * The customer's row for a record, or null when the record is not about staff: staff.access with
 * a verified token (a refusal of an unverifiable token names nobody the customer could hold to
 * account), and the session records of staff sessions.
 */
export function accessLogRow(record: AuditRecord): AccessLogRow | null {
  const event = EVENTS[record.event];
  if (event === undefined) return null;
  let staff: Obj | null;
  let access: string | null;
  let result: string | null = null;
  let kind: string | null = null;
  let query: string | null = null;
  if (record.event === 'staff.access') {
    staff = obj(record['staff']);
    if (staff === null || staff['unverified'] === true) return null;
    access = str(obj(record['target'])?.['access_level']);
    const reason = str(record['reason']);
    result = `${str(record['decision']) ?? 'deny'}${reason === null ? '' : `: ${reason}`}`;
  } else {
    const principal = obj(record['principal']);
    if (principal?.['kind'] !== 'staff') return null;
    staff = obj(principal['staff']);
    access = str(staff?.['access']);
    if (record.event === 'session.query') {
      kind = str(record['kind']);
      query = str(record['query']);
    } else if (record.event === 'session.query_result') {
      kind = str(record['kind']);
      const sqlstate = str(record['sqlstate']);
      result = sqlstate !== null ? `error ${sqlstate}` : (str(record['command_tag']) ?? (record['executed'] === false ? 'not executed' : null));
    } else if (record.event === 'session.end') {
      result = str(record['reason']);
    }
  }
  const session = obj(record['session']);
  return {
    record_id: record.id,
    seq: record.seq,
    at: record.time,
    session_id: str(session?.['id']),
    sub: str(staff?.['sub']),
    ticket: str(staff?.['reason_or_ticket']),
    access,
    event,
    kind,
    query,
    result,
    record_hash: record.chain.hash,
  };
}

/** What the sink needs of the running proxy: the tenants now, and where each one's server is. */
export interface TransparencySource {
  tenant(id: string): TenantConfig | undefined;
  target(tenant: TenantConfig): LookupTarget;
}

/** One tenant's delivery: its spool and pump, its writer connection, the settings they were made with. */
class TenantStream {
  /** Records that arrived while the spool was being opened, in order. */
  private early: StoredRecord[] | null = [];
  private pump: SpooledPump | null = null;
  private readonly writer: LookupPool;
  private closed = false;
  /** The spool could not be opened: since when (ms). Records are lost, so the tenant counts as lagging from then (fail closed). */
  private brokenSinceMs: number | null = null;
  private closing: Promise<void> | null = null;

  constructor(
    readonly key: string,
    readonly tenant: TenantConfig,
    target: LookupTarget,
    spoolDir: string,
    private readonly metrics: Metrics,
    log: Logger,
    /** The stream this one replaces, closing: its spool files are this one's to send first. */
    previous: Promise<void>,
  ) {
    this.writer = new LookupPool({ ...tenant.authQuery!, poolSize: 1 }, target, 'writer');
    const id = tenant.id;
    const opened = previous.then(() =>
      Spool.open(
        spoolDir,
        { spooled: (n) => metrics.transparencyRecords.inc({ tenant: id, outcome: 'spooled' }, n), failed: () => metrics.transparencyRecords.inc({ tenant: id, outcome: 'spool_failed' }) },
        log,
      ),
    );
    opened.then(
      (spool) => {
        if (this.closed) return;
        this.pump = new SpooledPump(
          {
            batchSize: BATCH_SIZE,
            flushIntervalMs: FLUSH_INTERVAL_MS,
            // A row the customer's table refuses (they altered it) waits and blocks what follows, so the
            // backlog ages and staff access ends at transparency_max_lag: no staff record goes missing.
            dataErrors: 'hold',
            insert: (batch) => this.insert(batch),
            delivered: (n) => metrics.transparencyRecords.inc({ tenant: id, outcome: 'delivered' }, n),
            failed: () => undefined,
            downChanged: (down, err, pending) => {
              // The writer's errors are pg's or ours: no password in them.
              const code = (err as { code?: unknown } | null)?.code;
              if (down && isDataError(err))
                log.error({ tenant: id, code, err: (err as Error).message, pending }, "customer's staff_access_log refuses a record (its table was changed?); records wait until it takes it");
              else if (down) log.warn({ tenant: id, err: (err as Error | null)?.message, pending }, "customer's staff_access_log unreachable; its records wait");
              else log.info({ tenant: id, pending }, "customer's staff_access_log reachable again; delivering in order");
            },
          },
          spool,
          log,
        );
        for (const e of this.early ?? []) this.pump.push(e);
        this.early = null;
      },
      (err: unknown) => {
        this.early = null;
        this.brokenSinceMs = Date.now();
        log.error({ tenant: id, err }, "cannot open the transparency spool; this tenant's staff records reach only the audit log");
      },
    );
  }

  push(entry: StoredRecord): void {
    if (this.brokenSinceMs !== null || this.waiting() >= MAX_BACKLOG_RECORDS) {
      this.metrics.transparencyRecords.inc({ tenant: this.tenant.id, outcome: 'dropped' });
      return;
    }
    if (this.early !== null) this.early.push(entry);
    else this.pump?.push(entry);
  }

  waiting(): number {
    return this.early?.length ?? this.pump?.backlog().records ?? 0;
  }

  /** When the oldest record not yet in the customer's table was written (ms), or null. */
  oldestMs(): number | null {
    if (this.brokenSinceMs !== null) return this.brokenSinceMs;
    const first = this.early?.[0];
    if (first !== undefined) return recordTimeMs(first.record);
    return this.pump?.backlog().oldestMs ?? null;
  }

  private async insert(batch: readonly StoredRecord[]): Promise<void> {
    const rows: AccessLogRow[] = [];
    for (const e of batch) {
      const row = accessLogRow(e.record);
      if (row !== null) rows.push(row);
    }
    if (rows.length === 0) return;
    await this.writer.query(RECORD_SQL, [JSON.stringify(rows)], Date.now);
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      await this.pump?.close();
      this.writer.close();
    })();
    return this.closing;
  }
}

export class TransparencySink implements RecordSink {
  private readonly streams = new Map<string, TenantStream>();
  private source: TransparencySource | null = null;

  constructor(
    private readonly spoolDir: string | undefined,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    metrics.transparencyView = () => this.view();
  }

  /** The running proxy's tenants; until then (start-up) no record is about a transparency tenant yet. */
  attach(source: TransparencySource): void {
    this.source = source;
  }

  deliver(record: AuditRecord, line: string): void {
    const id = record['tenant'];
    if (typeof id !== 'string' || this.source === null || this.spoolDir === undefined || EVENTS[record.event] === undefined) return;
    const tenant = this.source.tenant(id);
    if (tenant === undefined || !tenant.accessTransparency || tenant.authQuery === undefined) return;
    if (accessLogRow(record) === null) return;
    this.streamFor(tenant).push({ record, line: line.endsWith('\n') ? line.slice(0, -1) : line });
  }

  /** How long the oldest record for this tenant's table has waited (0: none waiting). */
  lagMs(tenantId: string, nowMs = Date.now()): number {
    const oldest = this.streams.get(tenantId)?.oldestMs() ?? null;
    return oldest === null ? 0 : Math.max(0, nowMs - oldest);
  }

  /** Tenants with records waiting, and since when (ms): what a primary tells its workers. */
  oldest(): [string, number][] {
    const out: [string, number][] = [];
    for (const [id, s] of this.streams) {
      const ms = s.oldestMs();
      if (ms !== null) out.push([id, ms]);
    }
    return out;
  }

  async close(): Promise<void> {
    await Promise.all([...this.streams.values()].map((s) => s.close()));
    this.streams.clear();
    this.metrics.transparencyView = null;
  }

  /** A tenant whose lookup settings or server changed gets a new writer; what waits in its spool stays and is sent first. */
  private streamFor(tenant: TenantConfig): TenantStream {
    const target = this.source!.target(tenant);
    const key = JSON.stringify([target.host, target.port, target.tls, target.ca?.toString('base64') ?? null, tenant.authQuery]);
    let s = this.streams.get(tenant.id);
    let previous: Promise<void> = Promise.resolve();
    if (s !== undefined && s.key !== key) {
      // What the old one holds goes to the spool first; the new one opens the spool after that, so the order holds.
      previous = s.close().catch(() => undefined);
      s = undefined;
    }
    if (s === undefined) {
      s = new TenantStream(key, tenant, target, path.join(this.spoolDir!, tenant.id), this.metrics, this.log, previous);
      this.streams.set(tenant.id, s);
    }
    return s;
  }

  private view(): { tenant: string; records: number; lagSeconds: number }[] {
    const now = Date.now();
    return [...this.streams].map(([tenant, s]) => ({ tenant, records: s.waiting(), lagSeconds: this.lagMs(tenant, now) / 1000 }));
  }
}
