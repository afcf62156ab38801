/**
 * The running proxy: the client listener, the operator listeners (admin/listeners.ts), the shared
 * registries (live sessions: session/registry.ts) and the lifecycle (start, reload, drain, close).
 * It composes; sessions do the protocol work.
 */
import net from 'node:net';
import { randomUUID } from 'node:crypto';
import type { Config, TenantConfig } from './config/schema.js';
import { loadTlsMaterial, type TlsMaterial } from './net/tls.js';
import { CancelRegistry } from './cancel/registry.js';
import { PreauthLimiter } from './limits/connections.js';
import type { LimitMode, LimitStore } from './limits/store.js';
import { BandwidthRegistry } from './limits/bandwidth.js';
import type { ClusterBus } from './cluster/bus.js';
import { openSharedState, type SharedState } from './cluster/shared-state.js';
import { AuditLog, type AuditSink } from './audit/log.js';
import { openAuditStores } from './audit/pg-sink.js';
import { TransparencySink } from './audit/transparency.js';
import { RejectionAggregator } from './audit/rejections.js';
import { limitRows, withClusterCounts, type TenantLimitRow } from './admin/limits-view.js';
import { Metrics } from './observability/metrics.js';
import { createLogger, type Logger } from './observability/logger.js';
import { OperatorListeners } from './admin/listeners.js';
import type { AdminBackend } from './admin/route.js';
import { RevocationSet, revocationTtlMs, type StaffRevocation } from './admin/revocations.js';
import { ClientSession, type SessionOrigin } from './session/client-session.js';
import { isTrustedPeer, peerAddress, readProxyHeader, type ClientAddress } from './net/proxy-header.js';
import type { SessionContext } from './session/context.js';
import { handleIoUnavailable, type RelayIoMode } from './net/socket-io.js';
import { SessionRegistry } from './session/registry.js';
import { ConsentWatch } from './session/consent-watch.js';
import { backendCa, type UpstreamTarget } from './pool/upstream.js';
import { PoolManager } from './pool/backend-pool.js';
import { AuthLookups } from './auth/auth-query.js';
import { SupportGrants } from './auth/support-grants.js';
import { StaffTokenVerifier } from './auth/jwt.js';
import { mockSecretFor } from './auth/mock-secret.js';
import { refuseOverCap } from './net/over-cap.js';
import { CatalogSource } from './catalog/source.js';
import { CatalogStore } from './catalog/store.js';
import { workerShare } from './pool/worker-share.js';

export const VERSION = '0.1.0';
/** How long a trusted load balancer has to send its PROXY header (balancers send it at connect). */
const PROXY_HEADER_TIMEOUT_MS = 5_000;
/** The same while over the global pre-auth cap: just long enough to answer the client behind it with 53300. */
const OVER_CAP_HEADER_MS = 500;
/** One id per process, in every audit record's `instance`. */
const INSTANCE_ID = randomUUID();

export interface ProxyOptions {
  logger?: Logger;
  /** Worker processes: the primary's audit log, limits and bus, reached over IPC. */
  audit?: AuditSink;
  shared?: SharedState | undefined;
  /** false: no admin listener (a worker; the primary serves it). Default true. */
  admin?: boolean;
  instanceId?: string;
  /** This process is one of `[server] workers` N > 1: it opens its 1/N share of each tenant's backend pool. */
  workers?: number;
  /**
   * A worker with `worker_accept = "reuseport"`: listen on `port` itself with SO_REUSEPORT, beside
   * the other workers' listeners (0: pick one; the primary hands it to the others), instead of
   * through node:cluster's primary.
   */
  reusePort?: { port: number } | undefined;
  /**
   * A worker: how long each tenant's records for its customer's staff_access_log have waited (the
   * primary's transparency sink, reported over IPC). Without it, this process's own sink says.
   */
  transparencyLagMs?: (tenantId: string) => number;
}

export class Proxy {
  readonly cancels = new CancelRegistry();
  readonly preauth = new PreauthLimiter();
  readonly bandwidth = new BandwidthRegistry();
  /** Set in start() (the shared store may need a connection first). */
  limits!: LimitStore;
  bus!: ClusterBus;
  /** Tenants whose connection-rate bucket ran dry, until when (performance.now()). */
  private readonly rateShield = new Map<string, number>();
  readonly sessions: SessionRegistry<ClientSession>;
  /** Staff tokens revoked through the admin API (on any instance), until they would have expired. */
  readonly revocations = new RevocationSet();
  /** Every client socket until it closes, including ones lingering after their FATAL. */
  private readonly sockets = new Set<net.Socket>();
  instanceId: string = INSTANCE_ID;
  private adminEnabled = true;
  private ctx: SessionContext;
  private listener: net.Server | null = null;
  /** The metrics listener and the admin API (not in a worker: the primary serves them). */
  private operator: OperatorListeners | null = null;
  /** [catalog]: where the tenants come from while running; null with the file's tenants. */
  private catalog: CatalogSource | null = null;
  /** [catalog]: its reads and writes for the admin API's tenant routes (not in a worker: the primary serves them). */
  private catalogStore: CatalogStore | null = null;
  private workers = 1;
  private reusePort: { port: number } | undefined = undefined;
  /** Each backend_ca file's content, read once per path until a reload (catalog changes do not re-read 10,000 files). */
  private backendCas = new Map<string, Buffer>();
  private draining = false;
  private drainTimer: NodeJS.Timeout | null = null;
  private readonly rejections: RejectionAggregator;
  readonly pools: PoolManager;
  readonly authLookups: AuthLookups;
  readonly supportGrants: SupportGrants;
  /** How long a tenant's records for its customer's staff_access_log have waited (ms). */
  private transparencyLagMs: (tenantId: string) => number = () => 0;
  /** Re-checks the grants behind this process's on_request staff sessions (each worker its own). */
  private readonly consentWatch: ConsentWatch;

  private constructor(
    config: Config,
    tlsMaterial: TlsMaterial | null,
    readonly metrics: Metrics,
    readonly audit: AuditSink,
    readonly log: Logger,
  ) {
    this.sessions = new SessionRegistry(this.log);
    this.rejections = new RejectionAggregator(() => this.audit, this.metrics);
    this.pools = new PoolManager(this.metrics, this.log);
    this.authLookups = new AuthLookups({
      onLookup: (tenant, outcome) => this.metrics.authQueryLookups.inc({ tenant, outcome }),
      onCache: (tenant, result) => this.metrics.authQueryCache.inc({ tenant, result }),
      onError: (tenant, err) => this.log.warn({ tenant, err }, 'auth_query lookup failed'),
    });
    this.supportGrants = new SupportGrants(this.authLookups);
    this.consentWatch = new ConsentWatch(() => this.sessions, {
      tenants: () => this.ctx.config.tenants,
      target: (t) => this.ctx.upstreamTarget(t),
      grants: this.supportGrants,
      metrics: this.metrics,
      log: this.log,
    });
    this.metrics.poolSizes = () => this.pools.snapshot();
    this.metrics.bandwidthView = () => this.bandwidth.snapshot();
    this.ctx = this.makeContext(config, tlsMaterial);
  }

  static async start(fileConfig: Config, opts: ProxyOptions = {}): Promise<Proxy> {
    let config = fileConfig;
    const log = opts.logger ?? createLogger(config.log.level);
    const tlsMaterial = loadTls(config);
    const metrics = new Metrics();
    const instanceId = opts.instanceId ?? INSTANCE_ID;
    // The customer's copy of staff records is fed by the audit log that chains them: here, or in the primary.
    const transparency = opts.audit === undefined ? new TransparencySink(config.audit.transparencySpoolDir, metrics, log) : null;
    const audit =
      opts.audit ??
      (await AuditLog.open(config.audit, instanceId, VERSION, metrics, log, { sinks: [...(await openAuditStores(config.audit, metrics, log)), transparency!] }));
    const proxy = new Proxy(config, tlsMaterial, metrics, audit, log);
    proxy.transparencyLagMs = opts.transparencyLagMs ?? ((id) => transparency?.lagMs(id) ?? 0);
    proxy.instanceId = instanceId;
    proxy.adminEnabled = opts.admin ?? true;
    proxy.workers = opts.workers ?? 1;
    proxy.reusePort = opts.reusePort;
    const shared = opts.shared ?? (await openSharedState(config, instanceId, log, (mode, cause) => proxy.onLimitMode(mode, cause)));
    proxy.limits = shared.limits;
    proxy.bus = shared.bus;
    await proxy.bus.start({
      onCancel: (m) => proxy.cancels.lookupByHash(m.processId, m.secretHash, proxy.ctx.mockSecret)?.cancel(),
      onSuspension: (tenantId, suspended) => proxy.onSuspension(tenantId, suspended),
      onReload: () => proxy.onClusterReload(),
      onRevocation: (rev) => proxy.onRevocation(rev),
    });
    if (config.catalog !== undefined) {
      // The tenants come from the catalog (or its snapshot while it is down), and follow it live.
      proxy.catalog = await CatalogSource.start({
        config: config.catalog,
        context: config,
        log,
        metrics,
        audit,
        onChange: (tenants) => proxy.applyTenants(tenants),
      }).catch(async (err: unknown) => {
        // Nothing serves: close what is open (Redis, the audit log) and report why.
        await proxy.bus.close().catch(() => undefined);
        await proxy.limits.close().catch(() => undefined);
        if (opts.audit === undefined) await audit.close().catch(() => undefined);
        throw err;
      });
      config = { ...config, tenants: proxy.catalog.tenants };
      if (proxy.adminEnabled) proxy.catalogStore = new CatalogStore(config.catalog!, config);
    }
    config = proxy.served(config);
    proxy.ctx = proxy.makeContext(config, tlsMaterial);
    proxy.metrics.showCertificate(tlsMaterial?.notAfter);
    transparency?.attach({ tenant: (id) => proxy.ctx.config.tenants.get(id), target: (t) => proxy.ctx.upstreamTarget(t) });
    proxy.sessions.startSweeper(() => proxy.ctx.config.tenants);
    proxy.consentWatch.start();
    await proxy.listen(config);
    proxy.audit.append({ event: 'proxy.lifecycle', state: 'started', instance_id: proxy.instanceId, listen: proxy.address });
    const io = relayIoMode(config);
    proxy.metrics.relayIo.set({ mode: io }, 1);
    log.info(
      { listen: proxy.address, metrics: proxy.metricsAddress, tenants: config.tenants.size, relayIo: io, ...(io === 'stream' && config.server.relayIo === 'auto' ? { why: handleIoUnavailable() } : {}) },
      'pgwarden started',
    );
    return proxy;
  }

  get config(): Config {
    return this.ctx.config;
  }

  get isDraining(): boolean {
    return this.draining;
  }

  get address(): { host: string; port: number } {
    const a = this.listener?.address() as net.AddressInfo | null;
    return { host: a?.address ?? '', port: a?.port ?? 0 };
  }

  get metricsAddress(): { host: string; port: number } | null {
    return this.operator?.metricsAddress ?? null;
  }

  /** The admin API's listener, when `[admin]` is configured (and this is not a worker). */
  get adminAddress(): { host: string; port: number } | null {
    return this.operator?.adminAddress ?? null;
  }

  /** What this process serves of `config`: in a worker, its share of each tenant's backend pool. */
  private served(config: Config): Config {
    return this.workers > 1 ? { ...config, tenants: workerShare(config.tenants, this.workers) } : config;
  }

  /**
   * The context new sessions start with. `kept` carries over what only a reload can change (a
   * catalog change keeps them: no key file read, no JWKS verifier rebuilt per tenant change).
   */
  private makeContext(config: Config, tlsMaterial: TlsMaterial | null, kept?: Pick<SessionContext, 'mockSecret' | 'staffVerifier'>): SessionContext {
    const cas = new Map<string, Buffer>();
    for (const t of config.tenants.values()) {
      if (t.backendCaPath !== undefined) cas.set(t.id, backendCa(this.backendCas, t.backendCaPath));
    }
    return {
      config,
      tls: tlsMaterial,
      cancels: this.cancels,
      limits: this.limits,
      bandwidth: this.bandwidth,
      bus: this.bus,
      pools: this.pools,
      audit: this.audit,
      rejections: this.rejections,
      metrics: this.metrics,
      log: this.log,
      relayIo: relayIoMode(config),
      mockSecret: kept?.mockSecret ?? mockSecretFor(config),
      authLookups: this.authLookups,
      supportGrants: this.supportGrants,
      staffVerifier: kept !== undefined ? kept.staffVerifier : config.staff === undefined ? null : new StaffTokenVerifier(config.staff),
      isDraining: () => this.draining,
      isSuspended: (tenantId) => this.bus.suspended().has(tenantId),
      noteRateLimited: (tenantId) => {
        const rate = config.tenants.get(tenantId)?.limits.newConnectionsPerSecond ?? 0;
        // The bucket just ran dry: no token before about 1/rate seconds (capped at one second).
        if (rate > 0) this.rateShield.set(tenantId, performance.now() + Math.min(1000 / rate, 1000));
      },
      rateShielded: (tenantId) => {
        const until = this.rateShield.get(tenantId);
        if (until === undefined) return false;
        if (until > performance.now()) return true;
        this.rateShield.delete(tenantId);
        return false;
      },
      anyRateShielded: () => {
        if (this.rateShield.size === 0) return false;
        const now = performance.now();
        for (const [tenantId, until] of this.rateShield) if (until <= now) this.rateShield.delete(tenantId);
        return this.rateShield.size > 0;
      },
      upstreamTarget: (tenant: TenantConfig): UpstreamTarget => ({
        host: tenant.backendHost,
        port: tenant.backendPort,
        tls: tenant.backendTls,
        ca: cas.get(tenant.id),
      }),
      isStaffRevoked: (jti, sub) => this.revocations.has(jti, sub),
      isTransparencyLagging: (tenant) => tenant.accessTransparency && this.transparencyLagMs(tenant.id) > tenant.transparencyMaxLagMs,
      onClosed: (s) => this.sessions.remove(s),
    };
  }

  private async listen(config: Config): Promise<void> {
    const server = net.createServer({ noDelay: true, pauseOnConnect: false }, (socket) => this.accept(socket));
    server.on('error', (err) => this.log.error({ err }, 'listener error'));
    // `reusePort` (Node ≥ 22.12; @types/node 20 does not know it yet) with `exclusive`: this
    // process's own listener, never one shared through node:cluster's primary.
    const where: net.ListenOptions & { reusePort?: boolean } =
      this.reusePort === undefined
        ? { port: config.server.listenPort, host: config.server.listenHost }
        : { port: this.reusePort.port, host: config.server.listenHost, reusePort: true, exclusive: true };
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(where, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    this.listener = server;
    if (!this.adminEnabled) return;
    this.operator = await OperatorListeners.start(config, {
      metrics: { metrics: this.metrics, isReady: () => !this.draining, log: this.log, pools: () => this.pools.snapshot() },
      api: {
        tokenSha256: () => this.ctx.config.admin?.tokenSha256,
        auditorTokenSha256: () => this.ctx.config.admin?.auditorTokenSha256,
        auditConfig: () => this.ctx.config.audit,
        backend: this.adminBackend(),
        audit: () => this.audit,
        log: this.log,
      },
    });
  }

  /** GET /limits of this process: the served tenants' limits, its logged-in sessions and open backends per tenant. */
  limitRows(tenant: string | null): TenantLimitRow[] {
    const backends = new Map(this.pools.snapshot().map((p) => [p.tenant, p.total]));
    return limitRows(this.ctx.config.tenants, this.sessions.loggedInByTenant(), backends, tenant);
  }

  /** The admin API's commands on a single process: sessions here, suspensions, revocations and reloads through the bus. */
  private adminBackend(): AdminBackend {
    return {
      listSessions: (tenant) => Promise.resolve(this.sessions.list(tenant)),
      listPools: () => Promise.resolve(this.pools.snapshot()),
      listLimits: (tenant) => withClusterCounts(this.limitRows(tenant), this.limits),
      terminateSession: (id) => Promise.resolve(this.sessions.terminate(id)),
      hasTenant: (id) => Promise.resolve(this.ctx.config.tenants.has(id)),
      suspend: (tenantId, suspended) => this.bus.publishSuspension(tenantId, suspended),
      revokeStaff: (rev) => this.bus.publishRevocation(rev),
      reload: () => this.bus.publishReload(),
      listRevocations: () => this.revocations.list(),
      revocationTtlMs: () => revocationTtlMs(this.ctx.config.staff),
      tenantCatalog: () => this.catalogStore,
    };
  }

  private accept(socket: net.Socket): void {
    socket.on('error', () => undefined); // errors before the session attaches its handler
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    const acceptedAt = performance.now();
    const cfg = this.ctx.config.server;
    const peer = peerAddress(socket);
    if (cfg.proxyProtocol === 'v2' && socket.remoteAddress === undefined) {
      // Gone before we looked (Node has no peer address for a closed handle): neither trusted nor
      // untrusted. HAProxy's health checks (LOCAL, then close) often end up here.
      this.metrics.proxyProtocolHeaders.inc({ outcome: 'aborted' });
      this.log.debug('connection closed before its peer address was known');
      socket.destroy();
      return;
    }
    if (cfg.proxyProtocol === 'v2' && isTrustedPeer(cfg.proxyProtocolTrustedList, peer.addr)) {
      void this.acceptProxied(socket, peer, acceptedAt);
      return;
    }
    this.startSession(socket, { client: peer, prefix: null, acceptedAt, refuseProxyHeader: cfg.proxyProtocol === 'v2' });
  }

  /**
   * A trusted load balancer's connection: its PROXY v2 header first (bounded in time and bytes),
   * then a session for the client it names. Anything else closes without a reply.
   */
  private async acceptProxied(socket: net.Socket, peer: ClientAddress, acceptedAt: number): Promise<void> {
    const cfg = this.ctx.config.server;
    const pending = this.preauth.tryAcquireGlobal(cfg.maxPreauthConnections);
    const timeoutMs = Math.min(cfg.authTimeoutMs, pending === null ? OVER_CAP_HEADER_MS : PROXY_HEADER_TIMEOUT_MS);
    const r = await readProxyHeader(socket, timeoutMs);
    pending?.release();
    this.metrics.proxyProtocolHeaders.inc({ outcome: r.kind === 'closed' || r.kind === 'refused' ? r.reason : r.kind });
    if (r.kind === 'closed') {
      // Health checks connect and leave: not worth more than a debug line.
      this.log.debug({ balancer: peer.addr, reason: r.reason }, 'load balancer connection closed before a client spoke');
      socket.destroy();
      return;
    }
    if (r.kind === 'refused') {
      this.rejections.record(`proxy_protocol:${r.reason}`, peer.addr);
      this.log.warn({ balancer: peer.addr, reason: r.reason }, 'PROXY protocol header refused: connection closed without a reply');
      socket.destroy();
      return;
    }
    if (socket.destroyed) return;
    if (pending === null) {
      this.rejections.record('preauth_cap', r.client.addr);
      refuseOverCap(socket, r.rest);
      return;
    }
    this.startSession(socket, { client: r.client, prefix: r.rest, acceptedAt, refuseProxyHeader: false });
  }

  /** A session for `origin.client`, under the pre-auth caps (global, and per the client's address). */
  private startSession(socket: net.Socket, origin: SessionOrigin): void {
    const cfg = this.ctx.config.server;
    const source = origin.client.addr || 'unknown';
    const lease = this.preauth.tryAcquire(source, cfg.maxPreauthConnections, cfg.maxPreauthPerSource);
    if (lease === null) {
      this.rejections.record('preauth_cap', source);
      refuseOverCap(socket, origin.prefix);
      return;
    }
    try {
      const session = new ClientSession(socket, this.ctx, lease, origin);
      this.sessions.add(session);
      socket.resume(); // paused by the PROXY header reader; a no-op otherwise
    } catch (err) {
      lease.release();
      this.log.error({ err }, 'session setup failed');
      socket.destroy();
    }
  }

  /** The shared limit store lost or regained Redis: metric, audit record, log. */
  onLimitMode(mode: LimitMode, cause: string): void {
    const degraded = mode === 'degraded_local';
    this.metrics.limitsDegraded.set(degraded ? 1 : 0);
    this.metrics.limitsDegradedTransitions.inc({ state: degraded ? 'enter' : 'exit' });
    this.audit.append({ event: 'limits.degraded', state: degraded ? 'enter' : 'exit', cause, mode });
    if (degraded) this.log.warn({ cause }, "shared limits unavailable: enforcing this instance's share locally");
    else this.log.info({ cause }, 'shared limits restored');
  }

  /** An operator suspended or resumed a tenant (on any instance). */
  private onSuspension(tenantId: string, suspended: boolean): void {
    this.audit.append({ event: 'proxy.lifecycle', state: suspended ? 'tenant_suspended' : 'tenant_resumed', tenant: tenantId });
    this.log.info({ tenant: tenantId, suspended }, suspended ? 'tenant suspended' : 'tenant resumed');
    if (suspended) this.sessions.terminateTenant(tenantId);
  }

  /** A staff token (or a person's tokens) was revoked on some instance: remember it, end its sessions. */
  private onRevocation(rev: StaffRevocation): void {
    if (!this.revocations.add(rev)) return; // already lapsed
    const ended = this.sessions.terminateStaff(rev);
    this.log.info({ by: rev.by, id: rev.id, until: new Date(rev.untilMs).toISOString(), sessionsEnded: ended }, 'staff token revoked');
  }

  /** Another instance asked every instance to re-read its configuration. */
  reloadHook: (() => void) | null = null;
  private onClusterReload(): void {
    if (this.reloadHook === null) this.log.info('cluster reload requested, but this instance has no configuration file to re-read');
    else this.reloadHook();
  }

  /**
   * Applies a new configuration to new sessions; running sessions keep theirs, unless their tenant
   * is now disabled or gone. Certificates reload too.
   */
  reload(next: Config): void {
    let config = next;
    if (this.catalog !== null) {
      // The file's other sections apply; the tenants stay the catalog's, validated against the new defaults.
      this.catalog.setContext(config);
      this.catalogStore?.setContext(config);
      config = { ...config, tenants: this.catalog.tenants };
    }
    config = this.served(config);
    // Certificates reload: backend CA files are read again.
    this.backendCas = new Map();
    const tlsMaterial = loadTls(config);
    const old = this.ctx.config;
    if (old.server.listenHost !== config.server.listenHost || old.server.listenPort !== config.server.listenPort) {
      this.log.warn('server.listen changed: takes effect after a restart');
    }
    if (old.admin?.listenHost !== config.admin?.listenHost || old.admin?.listenPort !== config.admin?.listenPort) {
      this.log.warn('admin.listen changed: takes effect after a restart (a new token_sha256 applies now)');
    }
    this.ctx = this.makeContext(config, tlsMaterial);
    this.metrics.showCertificate(tlsMaterial?.notAfter);
    this.pools.retain(new Set(config.tenants.keys()));
    this.authLookups.retain(new Set(config.tenants.keys()));
    this.sessions.endSessionsOfGoneTenants(config.tenants);
    this.log.level = config.log.level;
    this.metrics.configReloads.inc({ outcome: 'ok' });
    this.audit.append({ event: 'proxy.lifecycle', state: 'reloaded', tenants: [...config.tenants.keys()] });
    this.log.info({ tenants: config.tenants.size }, 'configuration reloaded');
  }

  /**
   * The catalog changed: new sessions see the new tenants; running sessions keep the settings they
   * started with, and those of a tenant now disabled or removed end (57P01), as at a reload.
   */
  private applyTenants(tenants: ReadonlyMap<string, TenantConfig>): void {
    const config = this.served({ ...this.ctx.config, tenants });
    this.ctx = this.makeContext(config, this.ctx.tls, this.ctx);
    this.pools.retain(new Set(config.tenants.keys()));
    this.authLookups.retain(new Set(config.tenants.keys()));
    this.sessions.endSessionsOfGoneTenants(config.tenants);
  }

  /**
   * Drains: new connections get 57P03 after their startup packet; at the deadline the sessions
   * still open get 57P01. Resolves when no session is left.
   */
  async drain(deadlineMs = this.ctx.config.server.shutdownTimeoutMs): Promise<void> {
    if (!this.draining) {
      this.draining = true;
      this.metrics.draining.set(1);
      this.audit.append({ event: 'proxy.lifecycle', state: 'draining', sessions: this.sessions.size });
      this.log.info({ sessions: this.sessions.size, deadlineMs }, 'draining');
      this.drainTimer = setTimeout(() => this.sessions.terminateAll('drain_deadline'), deadlineMs);
    }
    while (this.sessions.loggedIn() > 0) await new Promise((r) => setTimeout(r, 50));
  }

  private closing: Promise<void> | null = null;

  /** Ends every session (57P01), closes the listeners and pools, flushes the audit log. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.closeOnce();
    return this.closing;
  }

  private async closeOnce(): Promise<void> {
    if (this.drainTimer !== null) clearTimeout(this.drainTimer);
    this.sessions.stopSweeper();
    this.consentWatch.stop();
    this.sessions.terminateAll('admin');
    // Give the FATALs a moment to leave, then close what is left: shutdown must not wait on
    // clients that do not read (the listener's close waits for every socket).
    if (this.sockets.size > 0) await new Promise((r) => setTimeout(r, 200));
    for (const s of this.sockets) s.destroy();
    this.pools.close();
    this.authLookups.close();
    await Promise.all([new Promise<void>((r) => (this.listener ? this.listener.close(() => r()) : r())), this.operator?.close()]);
    this.rejections.stop();
    await this.catalog?.close();
    await this.catalogStore?.close();
    await this.bus.close();
    await this.limits.close();
    this.audit.append({ event: 'proxy.lifecycle', state: 'stopped' });
    await this.audit.close();
    this.log.info('pgwarden stopped');
    this.log.flush();
  }
}

function loadTls(config: Config): TlsMaterial | null {
  const s = config.server;
  if (s.tlsCertPath === undefined || s.tlsKeyPath === undefined) return null;
  return loadTlsMaterial(s.tlsCertPath, s.tlsKeyPath, s.tlsMinVersion);
}

/** The relay's I/O: the handles' unless the configuration says streams or this Node lacks what handle I/O needs. */
function relayIoMode(config: Config): RelayIoMode {
  return config.server.relayIo === 'stream' || handleIoUnavailable() !== null ? 'stream' : 'handle';
}
