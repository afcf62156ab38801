/**
 * What a client session may use of the proxy: a snapshot taken at accept time, so a reload
 * changes new sessions only and a running session keeps the configuration it started with.
 */
import type { Config, TenantConfig } from '../config/schema.js';
import type { TlsMaterial } from '../net/tls.js';
import type { RelayIoMode } from '../net/socket-io.js';
import type { CancelRegistry } from '../cancel/registry.js';
import type { LimitStore } from '../limits/store.js';
import type { BandwidthRegistry } from '../limits/bandwidth.js';
import type { ClusterBus } from '../cluster/bus.js';
import type { AuditSink } from '../audit/log.js';
import type { RejectionAggregator } from '../audit/rejections.js';
import type { Metrics } from '../observability/metrics.js';
import type { Logger } from '../observability/logger.js';
import type { UpstreamTarget } from '../pool/upstream.js';
import type { PoolManager } from '../pool/backend-pool.js';
import type { LiveSession } from './registry.js';
import type { StaffTokenVerifier } from '../auth/jwt.js';
import type { AuthLookups } from '../auth/auth-query.js';
import type { SupportGrants } from '../auth/support-grants.js';

export interface SessionContext {
  readonly config: Config;
  readonly tls: TlsMaterial | null;
  readonly cancels: CancelRegistry;
  readonly limits: LimitStore;
  readonly bandwidth: BandwidthRegistry;
  readonly bus: ClusterBus;
  readonly pools: PoolManager;
  readonly audit: AuditSink;
  readonly rejections: RejectionAggregator;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** How relays move bytes (net/socket-io.ts): decided once from [server] relay_io and this Node. */
  readonly relayIo: RelayIoMode;
  /** Staff JWT verification ([staff]); null when staff access is off. */
  readonly staffVerifier: StaffTokenVerifier | null;
  /** Key for deterministic mock SCRAM salts (SECURITY.md rule 3). */
  readonly mockSecret: Buffer;
  /** auth_query lookups and their cache (kept across reloads, per tenant). */
  readonly authLookups: AuthLookups;
  /** staff_access = "on_request": the customer's grants, asked over the same lookup connections. */
  readonly supportGrants: SupportGrants;
  isDraining(): boolean;
  /** Suspended by an operator (cluster-wide): logins fail as for a disabled tenant. */
  isSuspended(tenantId: string): boolean;
  /** A tenant was just refused for its connection rate (its bucket is empty for a while). */
  noteRateLimited(tenantId: string): void;
  /** Whether new handshakes for the tenant are sure to be refused for its rate right now. */
  rateShielded(tenantId: string): boolean;
  /** Whether any tenant is shielded right now; if none is, a TLS handshake needs no SNI callback. */
  anyRateShielded(): boolean;
  upstreamTarget(tenant: TenantConfig): UpstreamTarget;
  /** An operator revoked this staff token (by its jti) or every token of this person (by sub). */
  isStaffRevoked(jti: string, sub: string): boolean;
  /**
   * access_transparency: the tenant's oldest record for its customer's staff_access_log has waited
   * longer than transparency_max_lag, so no staff session may start or go on.
   */
  isTransparencyLagging(tenant: TenantConfig): boolean;
  /** The session ended: it leaves the registry. */
  onClosed(session: LiveSession): void;
}
