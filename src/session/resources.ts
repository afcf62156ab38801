/**
 * What a session holds that others count: the pre-auth slot and its gauge, the pre-auth
 * deadline, the tenant's connection slots, the cancel key. Released exactly once; a slot granted
 * after the session already ended is released on arrival.
 */
import type { Lease } from '../limits/store.js';
import type { CancelTarget } from '../cancel/registry.js';
import type { SessionContext } from './context.js';

export class SessionResources {
  private released = false;
  private preauth: Lease | null;
  private tenantLease: Lease | null = null;
  private deadline: NodeJS.Timeout | null;
  private cancelPid: number | null = null;

  constructor(
    private readonly ctx: SessionContext,
    preauthLease: Lease,
    onDeadline: () => void,
    acceptedAt: number,
  ) {
    this.preauth = preauthLease;
    // One deadline from accept (SECURITY.md rule 1): time spent reading a PROXY header counts.
    this.deadline = setTimeout(onDeadline, Math.max(0, ctx.config.server.authTimeoutMs - (performance.now() - acceptedAt)));
    ctx.metrics.preauthConnections.inc();
  }

  /** The tenant's (or staff reserve's) connection slots, as soon as they are granted. */
  adoptLease(lease: Lease): void {
    if (this.released) lease.release();
    else this.tenantLease = lease;
  }

  /** A proxy cancel key for the session's backend (released with the rest). */
  issueCancelKey(target: CancelTarget): { processId: number; secretKey: Buffer } {
    const key = this.ctx.cancels.issue(target);
    this.cancelPid = key.processId;
    return key;
  }

  /** Pre-auth is over (logged in or ended): its slot, gauge and deadline go. */
  leavePreauth(): void {
    if (this.deadline !== null) {
      clearTimeout(this.deadline);
      this.deadline = null;
    }
    if (this.preauth !== null) {
      this.preauth.release();
      this.preauth = null;
      this.ctx.metrics.preauthConnections.dec();
    }
  }

  releaseAll(): void {
    if (this.released) return;
    this.released = true;
    this.leavePreauth();
    this.tenantLease?.release();
    this.tenantLease = null;
    if (this.cancelPid !== null) {
      this.ctx.cancels.release(this.cancelPid);
      this.cancelPid = null;
    }
  }
}
