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

  /** A counter registered here (the declarations below are one line each). */
  private counter<L extends string = never>(name: string, help: string, labelNames: readonly L[] = []): client.Counter<L> {
    return new client.Counter({ name, help, labelNames, registers: [this.registry] });
  }

  /**
   * A gauge registered here. `aggregator` is how the primary of a worker set folds the workers'
   * values (cluster/primary.ts): 'sum' for shares (sessions, backends), 'max' for a state or an age
   * every process reports alike (degraded, stale seconds), 'min' for a deadline (a certificate's expiry).
   */
  private gauge<L extends string = never>(name: string, help: string, labelNames: readonly L[] = [], aggregator: client.Aggregator = 'sum'): client.Gauge<L> {
    return new client.Gauge({ name, help, labelNames, aggregator, registers: [this.registry] });
  }

  readonly clientConnections = this.gauge('pgwarden_client_connections', 'Authenticated client sessions currently open', ['tenant'] as const);
  readonly preauthConnections = this.gauge('pgwarden_preauth_connections', 'Client connections not yet authenticated');
  readonly sessions = this.counter('pgwarden_sessions_total', 'Client sessions by outcome (started, auth_failed, refused, upstream_failed)', [
    'tenant',
    'outcome',
  ] as const);
  readonly sessionEnds = this.counter('pgwarden_session_ends_total', 'Ended sessions by close reason', ['tenant', 'reason'] as const);
  readonly authFailures = this.counter('pgwarden_auth_failures_total', 'Failed logins by internal reason (tenant is "unknown" when not configured)', [
    'tenant',
    'reason',
  ] as const);
  readonly proxyProtocolHeaders = this.counter(
    'pgwarden_proxy_protocol_headers_total',
    'PROXY protocol v2 headers by outcome (proxied, local, health_check, aborted; refused: untrusted, timeout, bad_signature, bad_version, bad_command, oversized, unsupported_family, bad_address_length, bad_tlv)',
    ['outcome'] as const,
  );
  readonly rejections = this.counter('pgwarden_connection_rejections_total', 'Connections refused before authentication, by reason', ['reason'] as const);
  readonly limitRejections = this.counter('pgwarden_limit_rejections_total', 'Refusals by a limit', ['tenant', 'limit'] as const);
  readonly limitsDegraded = this.gauge(
    'pgwarden_limits_degraded',
    '1 while the shared limit store (Redis) is unreachable and each instance enforces its local share',
    [],
    'max',
  );
  readonly limitsDegradedTransitions = this.counter(
    'pgwarden_limits_degraded_transitions_total',
    'Entries into (state="enter") and exits from (state="exit") degraded limit mode',
    ['state'] as const,
  );
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
  readonly errors = this.counter('pgwarden_errors_total', 'Errors pgwarden sent to clients, by kind', ['kind'] as const);
  readonly bytes = new client.Counter({
    name: 'pgwarden_relay_bytes_total',
    help: 'Bytes relayed, by direction (client_to_upstream, upstream_to_client)',
    labelNames: ['tenant', 'direction'] as const,
    registers: [this.registry],
    collect: () => this.foldAll(),
  });
  readonly messages = this.counter('pgwarden_relay_messages_total', 'Protocol messages relayed, by direction', ['tenant', 'direction'] as const);
  readonly tlsHandshakes = this.counter('pgwarden_tls_handshakes_total', 'Client TLS handshakes by outcome and version', ['outcome', 'version'] as const);
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
  readonly poolWaiting = this.gauge('pgwarden_pool_waiting_clients', 'Clients waiting for a backend connection', ['tenant'] as const);
  readonly poolWaitSeconds = new client.Histogram({
    name: 'pgwarden_pool_wait_seconds',
    help: 'How long clients that had to wait waited for a backend',
    labelNames: ['tenant'] as const,
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30],
    registers: [this.registry],
  });
  readonly backendConnects = this.counter('pgwarden_backend_connects_total', 'Backend connections opened, by outcome', ['tenant', 'outcome'] as const);
  readonly queries = this.counter('pgwarden_queries_total', 'Statements relayed (simple Query, Execute, FunctionCall)', ['tenant'] as const);
  readonly poolPins = this.counter('pgwarden_pool_pins_total', 'Transaction-mode clients pinned to their backend because they changed session state', [
    'tenant',
  ] as const);
  readonly transactions = this.counter('pgwarden_transactions_total', 'Transactions relayed (ReadyForQuery returning to idle after work)', ['tenant'] as const);
  readonly configReloads = this.counter('pgwarden_config_reloads_total', 'Configuration reloads by outcome', ['outcome'] as const);
  readonly auditRecords = this.counter('pgwarden_audit_records_total', 'Audit records written, by event', ['event'] as const);
  readonly draining = this.gauge('pgwarden_draining', '1 while the proxy drains for shutdown', [], 'max');
  readonly workerCancelsRelayed = this.counter(
    'pgwarden_worker_cancels_relayed_total',
    'Cancel requests whose key the receiving worker did not own, relayed by the primary to the other workers',
  );
  // The audit file writer (src/audit/writer.ts, its queue in write-queue.ts): group commit, failures, queue, rotation, checkpoints.
  readonly auditWrites = this.counter('pgwarden_audit_writes_total', 'write(2) batches that reached the audit file (one batch carries many records)');
  readonly auditFsyncs = this.counter('pgwarden_audit_fsyncs_total', 'fdatasync calls on the audit file (durable appends share them)');
  readonly auditWriteFailures = this.counter('pgwarden_audit_write_failures_total', 'Failed audit file writes or fdatasyncs, by cause', ['cause'] as const);
  readonly auditHealthy = this.gauge('pgwarden_audit_healthy', '1 while the audit file accepts writes, 0 after a failure until a write succeeds again', [], 'max');
  readonly auditQueueRecords = this.gauge('pgwarden_audit_queue_records', 'Audit records held in memory, not yet written');
  readonly auditQueueBytes = this.gauge('pgwarden_audit_queue_bytes', 'Bytes of audit records held in memory, not yet written');
  readonly auditDropped = this.counter(
    'pgwarden_audit_dropped_records_total',
    'Audit records dropped from the file because the in-memory queue was full (each run ends in an audit.gap record)',
  );
  /** 1 under the relay I/O path this process uses (net/socket-io.ts): a fallback to streams after a Node upgrade shows here. */
  readonly relayIo = this.gauge(
    'pgwarden_relay_io',
    'Relay I/O path in use by the process (1): handle (native stream handle) or stream (Node streams)',
    ['mode'] as const,
    'max',
  );
  /** The client listener's certificate; 'min' over workers (all load the same file, a reload may race). */
  readonly tlsCertificateExpiry = this.gauge(
    'pgwarden_tls_certificate_expiry_timestamp_seconds',
    "Unix time at which the client listener's TLS certificate (the leaf of server.tls_cert) expires",
    ['certificate'] as const,
    'min',
  );

  /** Shows the served certificate's expiry (undefined: no TLS, no series). */
  showCertificate(notAfter: Date | undefined): void {
    this.tlsCertificateExpiry.reset();
    if (notAfter !== undefined) this.tlsCertificateExpiry.set({ certificate: 'server' }, Math.floor(notAfter.getTime() / 1000));
  }
  readonly auditRotations = this.counter('pgwarden_audit_rotations_total', 'Audit file rotations by outcome', ['outcome'] as const);
  readonly auditCheckpoints = this.counter('pgwarden_audit_checkpoints_total', 'Signed audit.checkpoint records appended');

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
    aggregator: 'max',
    registers: [this.registry],
    collect: () => {
      const oldest = this.auditStoreBacklog?.().oldestMs ?? null;
      this.auditStoreLag.set(oldest === null ? 0 : Math.max(0, (Date.now() - oldest) / 1000));
    },
  });
  readonly auditStoreDelivered = this.counter(
    'pgwarden_audit_store_delivered_total',
    'Audit records written to the PostgreSQL store (a re-sent duplicate counts again)',
  );
  readonly auditStoreSpooled = this.counter(
    'pgwarden_audit_store_spooled_total',
    'Audit records written to the spool because the store was down, slow or closing',
  );
  readonly auditStoreFailures = this.counter(
    'pgwarden_audit_store_failures_total',
    'Audit store failures: insert (store down or slow), spool (disk), rejected (a record the store refused)',
    ['op'] as const,
  );

  // The tenant catalog (src/catalog/source.ts). The source reports its staleness through
  // catalogStaleSeconds; the gauge reads it at scrape time, so it keeps rising while the catalog is down.
  catalogStaleSeconds: (() => number) | null = null;
  readonly catalogStale = new client.Gauge({
    name: 'pgwarden_catalog_stale_seconds',
    help: 'How old the served tenant catalog may be: 0 while connected and in sync, else seconds since it last was',
    // Every worker follows the catalog itself: the oldest copy counts, not the sum of ages.
    aggregator: 'max',
    registers: [this.registry],
    collect: () => {
      this.catalogStale.set(this.catalogStaleSeconds?.() ?? 0);
    },
  });
  /** Every process follows the catalog (workers and, for the customer's access log, the primary): 'max', not their sum. */
  readonly catalogTenants = this.gauge('pgwarden_catalog_tenants', 'Tenants served from the catalog', [], 'max');
  readonly catalogChanges = this.counter('pgwarden_catalog_changes_total', 'Tenants added, changed or removed by catalog updates');
  readonly catalogInvalidRows = this.counter('pgwarden_catalog_invalid_rows_total', 'Catalog rows refused by validation (logged, never served)');
  readonly staffConsentChecks = this.counter(
    'pgwarden_staff_consent_checks_total',
    "Staff logins under staff_access = \"on_request\" checked against the tenant's grants (granted; none, expired, revoked: refused; unavailable: the server could not be asked, refused) and sessions the re-check ended (withdrawn)",
    ['tenant', 'outcome'] as const,
  );
  readonly transparencyRecords = this.counter(
    'pgwarden_transparency_records_total',
    "Records for tenants' pgwarden.staff_access_log (delivered; spooled: waited on disk; dropped: the bound was reached; spool_failed). A row the tenant's table refuses waits, it is not dropped",
    ['tenant', 'outcome'] as const,
  );
  /** Set by the transparency sink (audit/transparency.ts): what waits per tenant, read at scrape time. */
  transparencyView: (() => { tenant: string; records: number; lagSeconds: number }[]) | null = null;
  readonly transparencyLag = new client.Gauge({
    name: 'pgwarden_transparency_lag_seconds',
    help: "Age of the oldest record not yet in the tenant's pgwarden.staff_access_log (0: none waiting)",
    labelNames: ['tenant'] as const,
    aggregator: 'max',
    registers: [this.registry],
    collect: () => {
      this.transparencyLag.reset();
      for (const v of this.transparencyView?.() ?? []) this.transparencyLag.set({ tenant: v.tenant }, v.lagSeconds);
    },
  });
  readonly transparencyBacklog = new client.Gauge({
    name: 'pgwarden_transparency_backlog_records',
    help: "Records waiting for the tenant's pgwarden.staff_access_log (memory and spool)",
    labelNames: ['tenant'] as const,
    registers: [this.registry],
    collect: () => {
      this.transparencyBacklog.reset();
      for (const v of this.transparencyView?.() ?? []) this.transparencyBacklog.set({ tenant: v.tenant }, v.records);
    },
  });
  readonly authQueryLookups = this.counter(
    'pgwarden_auth_query_lookups_total',
    "auth_query lookups on a tenant's server, by outcome (found, refused: no such role or one that may not log in, error, throttled)",
    ['tenant', 'outcome'] as const,
  );
  readonly authQueryCache = this.counter('pgwarden_auth_query_cache_total', 'auth_query cache lookups (hit, miss)', ['tenant', 'result'] as const);
  readonly catalogResyncs = this.counter('pgwarden_catalog_resyncs_total', 'Full reads of the catalog, by outcome', ['outcome'] as const);

  constructor() {
    client.collectDefaultMetrics({ register: this.registry, prefix: 'pgwarden_' });
  }

  private foldAll(): void {
    for (const s of this.liveSessions) s.foldTraffic(this);
  }
}
