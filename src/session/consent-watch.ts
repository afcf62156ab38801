/**
 * Issue 17: the staff sessions a customer's grant allowed end when the grant is withdrawn or
 * narrowed. Every second, one query per tenant with such sessions in this process (a worker checks
 * its own sessions) asks the tenant's server which of their tickets still have an open grant;
 * each session is told what was found. The expiry time itself is enforced by the session's own
 * 100 ms sweep (client-session.ts); asking the server is support-grants.ts's.
 */
import type { TenantConfig } from '../config/schema.js';
import type { LookupTarget } from '../auth/auth-query.js';
import type { SupportGrant, SupportGrants } from '../auth/support-grants.js';
import type { Metrics } from '../observability/metrics.js';
import type { Logger } from '../observability/logger.js';

/** How often the grants of live sessions are asked for again. */
export const CONSENT_RECHECK_MS = 1_000;
/**
 * While the tenant's server cannot be asked, sessions carry on for this long (a restart, a blip);
 * then they end, since a withdrawal could no longer be seen (fail closed).
 */
export const CONSENT_RECHECK_GRACE_MS = 10_000;

/** What the watch needs of a session (ClientSession has it). */
export interface ConsentSubject {
  readonly tenantId: string | undefined;
  /** The ticket of a relaying staff session that a grant allowed; null otherwise. */
  readonly consentTicket: string | null;
  /**
   * The grant as found now (undefined: none open), or `unverifiable` when the server could not be
   * asked for too long. True when that ended the session.
   */
  applyGrant(grant: SupportGrant | undefined | 'unverifiable'): boolean;
}

export class ConsentWatch {
  private timer: NodeJS.Timeout | null = null;
  private readonly inFlight = new Set<string>();
  /** Tenants whose last re-check failed: since when (Date.now()). */
  private readonly failingSince = new Map<string, number>();

  constructor(
    private readonly sessions: () => Iterable<ConsentSubject>,
    private readonly deps: {
      readonly tenants: () => ReadonlyMap<string, TenantConfig>;
      readonly target: (t: TenantConfig) => LookupTarget;
      readonly grants: SupportGrants;
      readonly metrics: Metrics;
      readonly log: Logger;
    },
    private readonly intervalMs = CONSENT_RECHECK_MS,
  ) {}

  start(): void {
    this.stop();
    this.timer = setInterval(() => this.tick(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** One round: the sessions grouped by tenant, one query each (a tenant still being asked is skipped). */
  tick(): void {
    const byTenant = new Map<string, ConsentSubject[]>();
    for (const s of this.sessions()) {
      const id = s.tenantId;
      if (id === undefined || s.consentTicket === null) continue;
      let list = byTenant.get(id);
      if (list === undefined) byTenant.set(id, (list = []));
      list.push(s);
    }
    for (const id of this.failingSince.keys()) if (!byTenant.has(id)) this.failingSince.delete(id);
    for (const [id, list] of byTenant) {
      if (this.inFlight.has(id)) continue;
      this.inFlight.add(id);
      void this.recheck(id, list).finally(() => this.inFlight.delete(id));
    }
  }

  private async recheck(tenantId: string, sessions: readonly ConsentSubject[]): Promise<void> {
    const { tenants, target, grants, metrics, log } = this.deps;
    const tenant = tenants().get(tenantId);
    const tickets = [...new Set(sessions.map((s) => s.consentTicket!))];
    let open: Map<string, SupportGrant>;
    try {
      if (tenant?.authQuery === undefined) throw new Error('the tenant has no lookup role any more');
      open = await grants.open(tenant, target(tenant), tickets);
    } catch (err) {
      const now = Date.now();
      const since = this.failingSince.get(tenantId) ?? now;
      if (!this.failingSince.has(tenantId)) {
        this.failingSince.set(tenantId, now);
        log.warn({ tenant: tenantId, err: (err as Error).message }, 'support grants cannot be re-checked; staff sessions end if this lasts');
      }
      if (now - since < CONSENT_RECHECK_GRACE_MS) return;
      for (const s of sessions) if (s.consentTicket !== null && s.applyGrant('unverifiable')) metrics.staffConsentChecks.inc({ tenant: tenantId, outcome: 'unverifiable' });
      return;
    }
    this.failingSince.delete(tenantId);
    for (const s of sessions) {
      const ticket = s.consentTicket;
      if (ticket === null) continue; // ended meanwhile
      if (s.applyGrant(open.get(ticket))) metrics.staffConsentChecks.inc({ tenant: tenantId, outcome: 'withdrawn' });
    }
  }
}
