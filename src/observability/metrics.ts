/**
 * Every Prometheus metric pgwarden exports lives here (prom-client, `pgwarden_` prefix, bounded
 * labels). Hot counters (bytes, messages) are kept on the session and folded in at scrape time
 * through `collect`, so the relay never touches a label map per message.
 */
import client from 'prom-client';

/** What a live session reports at scrape time (deltas since the last fold). */
export interface TrafficSource {
  foldTraffic(m: Metrics): void;
}

export class Metrics {
  readonly registry = new client.Registry();
  readonly liveSessions = new Set<TrafficSource>();

  readonly clientConnections = new client.Gauge({
    name: 'pgwarden_client_connections',
    help: 'Authenticated client sessions currently open',
    labelNames: ['tenant'] as const,
    registers: [this.registry],
  });
  readonly preauthConnections = new client.Gauge({
    name: 'pgwarden_preauth_connections',
    help: 'Client connections not yet authenticated',
    registers: [this.registry],
  });
  readonly sessions = new client.Counter({
    name: 'pgwarden_sessions_total',
    help: 'Client sessions by outcome (started, auth_failed, refused, upstream_failed)',
    labelNames: ['tenant', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly sessionEnds = new client.Counter({
    name: 'pgwarden_session_ends_total',
    help: 'Ended sessions by close reason',
    labelNames: ['tenant', 'reason'] as const,
    registers: [this.registry],
  });
  readonly authFailures = new client.Counter({
    name: 'pgwarden_auth_failures_total',
    help: 'Failed logins by internal reason (tenant is "unknown" when not configured)',
    labelNames: ['tenant', 'reason'] as const,
    registers: [this.registry],
  });
  readonly rejections = new client.Counter({
    name: 'pgwarden_connection_rejections_total',
    help: 'Connections refused before authentication, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly limitRejections = new client.Counter({
    name: 'pgwarden_limit_rejections_total',
    help: 'Refusals by a limit',
    labelNames: ['tenant', 'limit'] as const,
    registers: [this.registry],
  });
  readonly limitsDegraded = new client.Gauge({
    name: 'pgwarden_limits_degraded',
    help: '1 while the shared limit store (Redis) is unreachable and each instance enforces its local share',
    registers: [this.registry],
  });
  readonly limitsDegradedTransitions = new client.Counter({
    name: 'pgwarden_limits_degraded_transitions_total',
    help: 'Entries into (state="enter") and exits from (state="exit") degraded limit mode',
    labelNames: ['state'] as const,
    registers: [this.registry],
  });
  readonly bandwidthWaiters = new client.Gauge({
    name: 'pgwarden_bandwidth_waiting_sessions',
    help: 'Sessions paused by their tenant bandwidth limit, at scrape time',
    labelNames: ['tenant', 'direction'] as const,
    registers: [this.registry],
    collect: () => {
      this.bandwidthWaiters.reset();
      for (const b of this.bandwidthView()) {
        this.bandwidthWaiters.set({ tenant: b.tenant, direction: 'client_to_upstream' }, b.clientToServer);
        this.bandwidthWaiters.set({ tenant: b.tenant, direction: 'upstream_to_client' }, b.serverToClient);
      }
    },
  });
  bandwidthView: () => readonly { tenant: string; clientToServer: number; serverToClient: number }[] = () => [];
  readonly errors = new client.Counter({
    name: 'pgwarden_errors_total',
    help: 'Errors pgwarden sent to clients, by kind',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly bytes = new client.Counter({
    name: 'pgwarden_relay_bytes_total',
    help: 'Bytes relayed, by direction (client_to_upstream, upstream_to_client)',
    labelNames: ['tenant', 'direction'] as const,
    registers: [this.registry],
    collect: () => this.foldAll(),
  });
  readonly messages = new client.Counter({
    name: 'pgwarden_relay_messages_total',
    help: 'Protocol messages relayed, by direction',
    labelNames: ['tenant', 'direction'] as const,
    registers: [this.registry],
  });
  readonly tlsHandshakes = new client.Counter({
    name: 'pgwarden_tls_handshakes_total',
    help: 'Client TLS handshakes by outcome and version',
    labelNames: ['outcome', 'version'] as const,
    registers: [this.registry],
  });
  readonly backendConnectSeconds = new client.Histogram({
    name: 'pgwarden_backend_connect_duration_seconds',
    help: 'Time to open and log in a backend connection',
    labelNames: ['tenant', 'outcome'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  /** Pool sizes, read at scrape time (set by the server): gauges are not touched per transaction. */
  poolSizes: () => readonly { tenant: string; idle: number; active: number; waiting: number }[] = () => [];
  readonly poolBackends = new client.Gauge({
    name: 'pgwarden_pool_backends',
    help: 'Backend connections by state (active: lent to a client or resetting; idle: in the pool)',
    labelNames: ['tenant', 'state'] as const,
    registers: [this.registry],
    collect: () => {
      this.poolBackends.reset();
      this.poolWaiting.reset();
      for (const p of this.poolSizes()) {
        this.poolBackends.set({ tenant: p.tenant, state: 'idle' }, p.idle);
        this.poolBackends.set({ tenant: p.tenant, state: 'active' }, p.active);
        this.poolWaiting.set({ tenant: p.tenant }, p.waiting);
      }
    },
  });
  readonly poolWaiting = new client.Gauge({
    name: 'pgwarden_pool_waiting_clients',
    help: 'Clients waiting for a backend connection',
    labelNames: ['tenant'] as const,
    registers: [this.registry],
  });
  readonly poolWaitSeconds = new client.Histogram({
    name: 'pgwarden_pool_wait_seconds',
    help: 'How long clients that had to wait waited for a backend',
    labelNames: ['tenant'] as const,
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30],
    registers: [this.registry],
  });
  readonly backendConnects = new client.Counter({
    name: 'pgwarden_backend_connects_total',
    help: 'Backend connections opened, by outcome',
    labelNames: ['tenant', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly queries = new client.Counter({
    name: 'pgwarden_queries_total',
    help: 'Statements relayed (simple Query, Execute, FunctionCall)',
    labelNames: ['tenant'] as const,
    registers: [this.registry],
  });
  readonly poolPins = new client.Counter({
    name: 'pgwarden_pool_pins_total',
    help: 'Transaction-mode clients pinned to their backend because they changed session state',
    labelNames: ['tenant'] as const,
    registers: [this.registry],
  });
  readonly transactions = new client.Counter({
    name: 'pgwarden_transactions_total',
    help: 'Transactions relayed (ReadyForQuery returning to idle after work)',
    labelNames: ['tenant'] as const,
    registers: [this.registry],
  });
  readonly configReloads = new client.Counter({
    name: 'pgwarden_config_reloads_total',
    help: 'Configuration reloads by outcome',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly auditRecords = new client.Counter({
    name: 'pgwarden_audit_records_total',
    help: 'Audit records written, by event',
    labelNames: ['event'] as const,
    registers: [this.registry],
  });
  readonly draining = new client.Gauge({
    name: 'pgwarden_draining',
    help: '1 while the proxy drains for shutdown',
    registers: [this.registry],
  });
  // The audit file writer (src/audit/writer.ts, its queue in write-queue.ts): group commit, failures, queue, rotation, checkpoints.
  readonly auditWrites = new client.Counter({
    name: 'pgwarden_audit_writes_total',
    help: 'write(2) batches that reached the audit file (one batch carries many records)',
    registers: [this.registry],
  });
  readonly auditFsyncs = new client.Counter({
    name: 'pgwarden_audit_fsyncs_total',
    help: 'fdatasync calls on the audit file (durable appends share them)',
    registers: [this.registry],
  });
  readonly auditWriteFailures = new client.Counter({
    name: 'pgwarden_audit_write_failures_total',
    help: 'Failed audit file writes or fdatasyncs, by cause',
    labelNames: ['cause'] as const,
    registers: [this.registry],
  });
  readonly auditHealthy = new client.Gauge({
    name: 'pgwarden_audit_healthy',
    help: '1 while the audit file accepts writes, 0 after a failure until a write succeeds again',
    registers: [this.registry],
  });
  readonly auditQueueRecords = new client.Gauge({
    name: 'pgwarden_audit_queue_records',
    help: 'Audit records held in memory, not yet written',
    registers: [this.registry],
  });
  readonly auditQueueBytes = new client.Gauge({
    name: 'pgwarden_audit_queue_bytes',
    help: 'Bytes of audit records held in memory, not yet written',
    registers: [this.registry],
  });
  readonly auditDropped = new client.Counter({
    name: 'pgwarden_audit_dropped_records_total',
    help: 'Audit records dropped from the file because the in-memory queue was full (each run ends in an audit.gap record)',
    registers: [this.registry],
  });
  readonly auditRotations = new client.Counter({
    name: 'pgwarden_audit_rotations_total',
    help: 'Audit file rotations by outcome',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly auditCheckpoints = new client.Counter({
    name: 'pgwarden_audit_checkpoints_total',
    help: 'Signed audit.checkpoint records appended',
    registers: [this.registry],
  });

  // The PostgreSQL audit store (src/audit/pg-sink.ts). The sink reports its backlog through
  // auditStoreBacklog; the gauges read it at scrape time, so the lag is current when scraped.
  auditStoreBacklog: (() => { records: number; spooled: number; oldestMs: number | null }) | null = null;
  readonly auditStorePending = new client.Gauge({
    name: 'pgwarden_audit_store_pending_records',
    help: 'Audit records not yet in the PostgreSQL store (in memory and in the spool)',
    registers: [this.registry],
    collect: () => {
      this.auditStorePending.set(this.auditStoreBacklog?.().records ?? 0);
    },
  });
  readonly auditStoreSpoolRecords = new client.Gauge({
    name: 'pgwarden_audit_store_spool_records',
    help: 'Audit records waiting in the spool files on disk',
    registers: [this.registry],
    collect: () => {
      this.auditStoreSpoolRecords.set(this.auditStoreBacklog?.().spooled ?? 0);
    },
  });
  readonly auditStoreLag = new client.Gauge({
    name: 'pgwarden_audit_store_lag_seconds',
    help: 'Age of the oldest audit record not yet in the PostgreSQL store (0 when none is waiting)',
    registers: [this.registry],
    collect: () => {
      const oldest = this.auditStoreBacklog?.().oldestMs ?? null;
      this.auditStoreLag.set(oldest === null ? 0 : Math.max(0, (Date.now() - oldest) / 1000));
    },
  });
  readonly auditStoreDelivered = new client.Counter({
    name: 'pgwarden_audit_store_delivered_total',
    help: 'Audit records written to the PostgreSQL store (a re-sent duplicate counts again)',
    registers: [this.registry],
  });
  readonly auditStoreSpooled = new client.Counter({
    name: 'pgwarden_audit_store_spooled_total',
    help: 'Audit records written to the spool because the store was down, slow or closing',
    registers: [this.registry],
  });
  readonly auditStoreFailures = new client.Counter({
    name: 'pgwarden_audit_store_failures_total',
    help: 'Audit store failures: insert (store down or slow), spool (disk), rejected (a record the store refused)',
    labelNames: ['op'] as const,
    registers: [this.registry],
  });

  constructor() {
    client.collectDefaultMetrics({ register: this.registry, prefix: 'pgwarden_' });
  }

  private foldAll(): void {
    for (const s of this.liveSessions) s.foldTraffic(this);
  }
}
