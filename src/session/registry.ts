/**
 * The live sessions of one process and what is done to many of them at once: the list behind
 * GET /sessions, ending one, a tenant's, a staff token's or all, the count a drain waits on, and
 * the sweeper that checks every session's timeouts against its tenant's current limits. A session
 * is reached only through LiveSession; its state machine is client-session.ts's.
 */
import type { LimitSettings, TenantConfig } from '../config/schema.js';
import { Errors, type PgError } from '../errors.js';
import { revocationMatches, type StaffRevocation } from '../admin/revocations.js';
import type { Logger } from '../observability/logger.js';

/** How often session timeouts are checked: the resolution of every timeout. */
const TIMER_SWEEP_MS = 100;

/** What the registry needs of a session; ClientSession has it. */
export interface LiveSession {
  readonly id: string;
  /** ClientSession's Phase: 'negotiating' … 'connecting' (logging in upstream), 'relaying', 'closed'. */
  readonly phase: string;
  /** Known once the startup packet (or SNI) named a tenant. */
  readonly tenantId: string | undefined;
  /** The staff token behind the session; null for a tenant user's session. */
  readonly staff: { readonly sub: string; readonly jti: string } | null;
  /** What the admin API lists: no secrets. */
  describe(): object;
  /** Sends the error (FATAL) and ends the session. */
  terminate(err: PgError, reason: 'admin' | 'drain_deadline' | 'tenant_suspended'): void;
  /** Ends the session if one of its timeouts has passed; `current` is its tenant's limits now (after reloads). */
  checkTimers(now: number, current?: LimitSettings): void;
}

export class SessionRegistry<S extends LiveSession = LiveSession> implements Iterable<S> {
  private readonly sessions = new Set<S>();
  private sweeper: NodeJS.Timeout | null = null;

  constructor(private readonly log: Logger) {}

  add(session: S): void {
    this.sessions.add(session);
  }

  /** The session closed (SessionContext.onClosed). */
  remove(session: LiveSession): void {
    this.sessions.delete(session as S);
  }

  get size(): number {
    return this.sessions.size;
  }

  [Symbol.iterator](): Iterator<S> {
    return this.sessions.values();
  }

  /** What GET /sessions shows of this process (describe(): no secrets). */
  list(tenant: string | null): ReturnType<S['describe']>[] {
    const out: ReturnType<S['describe']>[] = [];
    for (const s of this.sessions) if (s.phase !== 'closed' && (tenant === null || s.tenantId === tenant)) out.push(s.describe() as ReturnType<S['describe']>);
    return out;
  }

  /** Sessions past authentication, which a drain waits for (pre-auth ones are refused or time out on their own). */
  loggedIn(): number {
    let n = 0;
    for (const s of this.sessions) if (s.phase === 'relaying' || s.phase === 'connecting') n++;
    return n;
  }

  /** Logged-in sessions per tenant (GET /limits: use against max_client_connections). */
  loggedInByTenant(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const s of this.sessions) {
      if (s.tenantId !== undefined && (s.phase === 'relaying' || s.phase === 'connecting')) counts.set(s.tenantId, (counts.get(s.tenantId) ?? 0) + 1);
    }
    return counts;
  }

  /** Ends one session with 57P01, as PostgreSQL's pg_terminate_backend does; false if it is not here. */
  terminate(id: string): boolean {
    for (const s of this.sessions) {
      if (s.id !== id || s.phase === 'closed') continue;
      this.log.info({ session: id, tenant: s.tenantId }, 'session terminated by an operator');
      s.terminate(Errors.adminShutdown('admin'), 'admin');
      return true;
    }
    return false;
  }

  /** An operator suspended the tenant: every session of it ends. */
  terminateTenant(tenantId: string): void {
    for (const s of [...this.sessions]) if (s.tenantId === tenantId) s.terminate(Errors.tenantSuspended(), 'tenant_suspended');
  }

  /** A staff token (or a person's tokens) was revoked: its sessions end. Returns how many. */
  terminateStaff(rev: StaffRevocation): number {
    let ended = 0;
    for (const s of [...this.sessions]) {
      const staff = s.staff;
      if (staff === null || s.phase === 'closed' || !revocationMatches(rev, staff)) continue;
      s.terminate(Errors.adminShutdown('staff_revoked'), 'admin');
      ended++;
    }
    return ended;
  }

  terminateAll(reason: 'drain_deadline' | 'admin'): void {
    for (const s of [...this.sessions]) s.terminate(Errors.adminShutdown(reason), reason);
  }

  /**
   * S8, at a reload: the logged-in sessions of a tenant the new config disables or removes end now
   * (57P01), as with an operator's suspension; every other session keeps the config it started with.
   */
  endSessionsOfGoneTenants(tenants: ReadonlyMap<string, TenantConfig>): void {
    for (const s of [...this.sessions]) {
      const id = s.tenantId;
      if (id === undefined || (s.phase !== 'connecting' && s.phase !== 'relaying') || tenants.get(id)?.enabled === true) continue;
      this.endForTenantGone(s, id);
    }
  }

  /** Checks every session's timeouts every TIMER_SWEEP_MS (one timer for all), against `tenants()` of the moment. */
  startSweeper(tenants: () => ReadonlyMap<string, TenantConfig>): void {
    this.stopSweeper();
    this.sweeper = setInterval(() => this.sweep(tenants()), TIMER_SWEEP_MS);
    this.sweeper.unref();
  }

  stopSweeper(): void {
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.sweeper = null;
  }

  private sweep(tenants: ReadonlyMap<string, TenantConfig>): void {
    const now = performance.now();
    for (const s of this.sessions) {
      const id = s.tenantId;
      if (id === undefined) continue;
      // A session that was still logging in when a reload disabled or removed its tenant (S8).
      if (s.phase === 'relaying' && tenants.get(id)?.enabled !== true) {
        this.endForTenantGone(s, id);
        continue;
      }
      s.checkTimers(now, tenants.get(id)?.limits);
    }
  }

  /** S8: a session whose tenant the running config disables or no longer has ends (57P01). */
  private endForTenantGone(s: S, tenant: string): void {
    this.log.info({ session: s.id, tenant }, 'session ended: its tenant is disabled or gone after the reload');
    s.terminate(Errors.tenantSuspended(), 'tenant_suspended');
  }
}
