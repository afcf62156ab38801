/**
 * The sink that feeds the PostgreSQL audit store every chained record in order, in batches,
 * spooling to local disk while the store is down or slow: a SpooledPump (spooled-pump.ts, which
 * says how order and exactly-once are kept) whose INSERT is the store table's (store-table.ts).
 * Chaining and the file are log.ts's; reading the store back is query.ts's.
 */
import { LazyPgClient } from '../storage/pg-client.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { AuditConfig, AuditPostgresConfig } from '../config/schema.js';
import type { RecordSink } from './record-sink.js';
import type { AuditRecord } from './record.js';
import { Spool, auditStoreSpoolCounters } from './spool.js';
import { SpooledPump, isDataError } from './spooled-pump.js';
import { insertParams, insertSql, newStoreClient, type StoredRecord } from './store-table.js';

/**
 * The stores [audit] names besides the file, started: the PostgreSQL sink when [audit.postgres] is
 * set. For whoever composes the process, to hand to AuditLog.open.
 */
export async function openAuditStores(cfg: AuditConfig, metrics: Metrics, log: Logger): Promise<RecordSink[]> {
  return cfg.postgres === undefined ? [] : [await PgSink.start(cfg.postgres, metrics, log)];
}

export class PgSink implements RecordSink {
  private readonly client: LazyPgClient;
  private readonly pump: SpooledPump;
  private readonly insertSql: string;

  private constructor(
    cfg: AuditPostgresConfig,
    spool: Spool,
    private readonly metrics: Metrics,
    log: Logger,
  ) {
    this.insertSql = insertSql(cfg.table);
    this.client = new LazyPgClient(() => newStoreClient(cfg.url, cfg.passwordEnv));
    this.pump = new SpooledPump(
      {
        // One row the store refuses must not stall the rest: it stays in the audit file (logged, counted).
        dataErrors: 'skip',
        batchSize: cfg.batchSize,
        flushIntervalMs: cfg.flushIntervalMs,
        insert: (batch) => this.insert(batch),
        delivered: (n) => metrics.auditStoreDelivered.inc(n),
        failed: (op) => metrics.auditStoreFailures.inc({ op }),
        downChanged: (down, err, pending) => {
          // pg's messages name no password (the URL has none).
          const e = err as { code?: string; message?: string } | null;
          if (down) log.warn({ code: e?.code, message: e?.message, batch: pending }, 'audit store unavailable; spooling records to disk until it returns');
          else log.info({ pending }, 'audit store reachable again; delivering the backlog in order');
        },
        rejected: (entry, err) =>
          log.error(
            { id: entry.record.id, seq: entry.record.seq, code: (err as { code?: string }).code, message: (err as Error).message },
            'audit store refused a record; it stays in the audit file only',
          ),
      },
      spool,
      log.child({ sink: 'audit_store' }),
    );
    metrics.auditStoreBacklog = () => this.pump.backlog();
  }

  /**
   * Finds what an earlier run left in the spool (delivered first) and starts delivering. Does not
   * wait for the store: pgwarden starts, and records spool, while it is unreachable.
   */
  static async start(cfg: AuditPostgresConfig, metrics: Metrics, log: Logger): Promise<PgSink> {
    const spool = await Spool.open(cfg.spoolDir, auditStoreSpoolCounters(metrics), log);
    const sink = new PgSink(cfg, spool, metrics, log);
    const spooled = spool.records;
    if (spooled > 0) log.info({ records: spooled, files: spool.files, spool_dir: cfg.spoolDir }, 'audit store: delivering the spool left by an earlier run first');
    return sink;
  }

  deliver(record: AuditRecord, line: string): void {
    this.pump.deliver(record, line);
  }

  /** The pump's grace for what is in memory, then the spool; then the client. */
  async close(): Promise<void> {
    await this.pump.close();
    await Promise.race([this.client.end(), new Promise((r) => setTimeout(r, 1000).unref())]);
    this.metrics.auditStoreBacklog = null;
  }

  private async insert(batch: readonly StoredRecord[]): Promise<void> {
    const params = insertParams(batch);
    const client = await this.client.get();
    try {
      await client.query(this.insertSql, params);
    } catch (err) {
      if (!isDataError(err)) this.client.drop();
      throw err;
    }
  }
}
