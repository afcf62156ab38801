/**
 * What the admin API shows of a session (GET /sessions): no secrets, user-supplied names sanitized.
 */
import { sanitizeName } from '../errors.js';
import { TxStatus } from '../protocol/codes.js';
import type { AuditSubject } from './audit-records.js';
import type { Relay } from './relay/relay.js';
import type { Phase, SessionView } from './types.js';

export function describeSession(subject: AuditSubject, phase: Phase, startedAt: number, relay: Relay | null, bytesBefore: number): SessionView {
  const st = subject.startup;
  const staff = subject.staffIdentity;
  return {
    id: subject.id,
    tenant: subject.tenant?.id ?? null,
    user: st === null ? null : sanitizeName(st.user),
    database: st === null ? null : sanitizeName(st.database ?? subject.tenant?.backendDatabase ?? ''),
    staff:
      staff === null ? null : { sub: staff.sub, ticket: staff.ticket, access: staff.access, jti: staff.jti, expires_at: new Date(staff.expMs).toISOString() },
    client: { addr: subject.remoteAddress, port: subject.remotePort, via: subject.via?.addr ?? null },
    tls: subject.tls.version,
    started_at: new Date(startedAt).toISOString(),
    phase,
    tx_status: String.fromCharCode(relay?.state.txStatus ?? TxStatus.Idle),
    bytes_in: relay?.bytesIn ?? bytesBefore,
    bytes_out: relay?.bytesOut ?? 0,
    queries: relay?.state.queries ?? 0,
  };
}
