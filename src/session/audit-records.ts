/**
 * The audit records a session writes (SECURITY.md §4): who connected from where and how, each
 * failed login, the staff access decision, session start and end, and the envelope of statement
 * records. Builders only: the session decides when, the audit log writes. Owns the session's
 * event index (`ei`), so records of one session are numbered in one place.
 */
import type { Socket } from 'node:net';
import tls from 'node:tls';
import type { TenantConfig } from '../config/schema.js';
import { sanitizeName } from '../errors.js';
import type { AuditEvent } from '../audit/record.js';
import type { StaffClaims, StaffDecision } from '../auth/jwt.js';
import type { SupportGrant } from '../auth/support-grants.js';
import type { ResolvedStartup } from '../routing/resolve.js';
import type { TlsFacts } from './login/handshake.js';
import type { AuthStage, StaffIdentity } from './types.js';
import type { ClientAddress } from '../net/proxy-header.js';

/** What the records say of the client; filled in as the login proceeds. */
export interface AuditSubject {
  readonly id: string;
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** The load balancer that vouched for the address (PROXY protocol), or null: the address is the connection's own. */
  readonly via: ClientAddress['via'];
  readonly tls: TlsFacts;
  startup: ResolvedStartup | null;
  tenant: TenantConfig | undefined;
  staffClaims: StaffClaims | null;
  staffIdentity: StaffIdentity | null;
}

export class SessionRecords {
  private ei = 0;

  constructor(private readonly s: AuditSubject) {}

  /** The next event index of this session (statement records take theirs from here too). */
  nextEi(): number {
    return this.ei++;
  }

  clientBlock(sock: Socket): Record<string, unknown> {
    const s = this.s;
    const t = s.tls;
    return {
      addr: s.remoteAddress,
      port: s.remotePort,
      via_proxy_protocol: s.via !== null,
      application_name: s.startup?.applicationName === undefined ? null : { value: sanitizeName(s.startup.applicationName), untrusted: true },
      tls: {
        negotiation: t.negotiation,
        version: t.version,
        cipher: t.cipher,
        sni: t.sni === undefined ? null : sanitizeName(t.sni),
        alpn: sock instanceof tls.TLSSocket ? sock.alpnProtocol || null : null,
      },
      protocol: '3.0',
    };
  }

  principal(): Record<string, unknown> {
    const s = this.s;
    const st = s.startup!;
    const database = st.database ?? s.tenant?.backendDatabase ?? null;
    const c = s.staffClaims;
    if (c === null) return { kind: 'tenant_user', db_user: st.user, database };
    return { kind: 'staff', db_user: s.tenant?.staffBackendUser ?? null, database, staff: { ...c, access: s.staffIdentity?.access ?? null } };
  }

  authFailure(sock: Socket, stage: AuthStage, reason: string, sqlstate: string | undefined, message: string | undefined): AuditEvent {
    const s = this.s;
    const st = s.startup;
    return {
      event: 'session.auth_failure',
      session: { id: s.id, ei: this.ei++ },
      ...(s.tenant === undefined ? {} : { tenant: s.tenant.id }),
      client: this.clientBlock(sock),
      stage,
      claimed: {
        tenant: st === null ? null : sanitizeName(st.tenantId),
        tenant_from: st?.tenantFrom ?? null,
        db_user: st === null ? null : sanitizeName(st.user),
        database: st?.database === undefined ? null : sanitizeName(st.database),
      },
      reason,
      outcome: { success: false, ...(sqlstate === undefined ? {} : { sqlstate }), ...(message === undefined ? {} : { message_sent: message }), reason },
    };
  }

  /** `grant`: staff_access = "on_request", the customer's grant found (null: none open); undefined otherwise. */
  staffAccess(sock: Socket, decision: StaffDecision, granted: 'read' | 'write' | null, reason: string | null, grant?: SupportGrant | null): AuditEvent {
    const s = this.s;
    const st = s.startup!;
    const tenant = s.tenant;
    return {
      event: 'staff.access',
      session: { id: s.id, ei: this.ei++ },
      ...(tenant === undefined ? {} : { tenant: tenant.id }),
      tenant_from: st.tenantFrom,
      client: this.clientBlock(sock),
      staff: decision.ok ? decision.claims : { unverified: true, ...decision.claimed },
      target: {
        tenant: sanitizeName(st.tenantId),
        db_user: tenant?.staffBackendUser ?? null,
        database: sanitizeName(st.database ?? tenant?.backendDatabase ?? ''),
        access_level: granted ?? (decision.ok ? decision.claims.requested_access : null),
        tenant_cap: tenant?.staffAccess ?? null,
      },
      ...(grant === undefined
        ? {}
        : { consent: grant === null ? null : { ticket: grant.ticket, access: grant.access, expires_at: new Date(grant.serverExpiresAtMs).toISOString() } }),
      decision: granted === null ? 'deny' : 'allow',
      ...(reason === null ? {} : { reason }),
      outcome: { success: granted !== null, ...(reason === null ? {} : { reason }) },
    };
  }

  sessionStart(sock: Socket, f: SessionStartFacts): AuditEvent {
    const s = this.s;
    const tenant = s.tenant!;
    const p = f.parameters;
    return {
      event: 'session.start',
      session: { id: s.id, ei: this.ei++ },
      tenant: tenant.id,
      // How the client named the tenant: SNI, options, the user name or server.default_tenant.
      tenant_from: s.startup!.tenantFrom,
      principal: this.principal(),
      client: this.clientBlock(sock),
      backend: { id: tenant.id, pid: f.backendPid, tls_version: f.backendTls, pool_mode: tenant.pool.mode },
      auth:
        s.staffIdentity !== null
          ? { method: 'jwt', channel_binding: false }
          : { method: f.channelBinding ? 'scram-sha-256-plus' : 'scram-sha-256', channel_binding: f.channelBinding },
      statement_audit: f.statementAudit,
      startup_params: Object.fromEntries([...s.startup!.forward].map(([k, v]) => [k, sanitizeName(v)])),
      // A staff session with a reserve is counted apart: the figures are its staff slots', and `counted_in` says so.
      limits: {
        tenant_active_after: f.tenantActiveAfter,
        tenant_limit: f.staffSlots > 0 ? f.staffSlots : tenant.maxClientConnections,
        mode: f.limitMode,
        counted_in: f.staffSlots > 0 ? 'staff_reserved' : 'tenant',
      },
      server_version: p.get('server_version') ?? null,
      client_encoding: p.get('client_encoding') ?? null,
      session_authorization: p.get('session_authorization') ?? null,
      is_superuser: p.get('is_superuser') ?? null,
      outcome: { success: true },
    };
  }

  sessionEnd(f: SessionEndFacts): AuditEvent {
    const s = this.s;
    return {
      event: 'session.end',
      session: { id: s.id, ei: this.ei++ },
      tenant: s.tenant!.id,
      principal: this.principal(),
      client: { addr: s.remoteAddress, port: s.remotePort },
      backend: { id: s.tenant!.id, pid: f.backendPid, pinned: f.pinned },
      reason: f.reason,
      duration_ms: f.durationMs,
      bytes_in: f.bytesIn,
      bytes_out: f.bytesOut,
      messages_in: f.messagesIn,
      messages_out: f.messagesOut,
      queries: f.queries,
      statements_audited: f.statementsAudited,
      last_tx_status: String.fromCharCode(f.txStatus),
      limits_hit: f.limitsHit,
      outcome: { success: true },
    };
  }

  /** Wraps a statement record (which carries its own `ei`) in the session's envelope fields. */
  envelope(e: AuditEvent): AuditEvent {
    const { ei, ...fields } = e;
    return { ...fields, event: e.event, session: { id: this.s.id, ei }, tenant: this.s.tenant!.id, principal: this.principal() };
  }
}

export interface SessionStartFacts {
  readonly parameters: ReadonlyMap<string, string>;
  readonly backendPid: number | null;
  readonly backendTls: string | null;
  readonly channelBinding: boolean;
  readonly statementAudit: 'none' | 'best_effort' | 'fail_closed';
  readonly tenantActiveAfter: number;
  readonly staffSlots: number;
  readonly limitMode: string;
}

export interface SessionEndFacts {
  readonly reason: string;
  readonly backendPid: number;
  readonly pinned: boolean;
  readonly durationMs: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly messagesIn: number;
  readonly messagesOut: number;
  readonly queries: number;
  readonly statementsAudited: number;
  readonly txStatus: number;
  readonly limitsHit: readonly string[];
}
