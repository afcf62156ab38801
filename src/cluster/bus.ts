/**
 * What instances tell each other: cancel requests (a CancelRequest may land on any instance),
 * tenant suspensions, staff-token revocations, and "reload your configuration". On one instance the bus is local and
 * delivers to itself; with Redis it is pub/sub (redis-bus.ts). Messages carry no secrets:
 * a cancel travels as the process id and an HMAC of the secret key, which the owner compares.
 */
import type { StaffRevocation } from '../admin/revocations.js';

export interface CancelMessage {
  readonly processId: number;
  /** hashCancelSecret() (cancel/registry.ts) of the 4-byte secret key the client sent (hex). */
  readonly secretHash: string;
}

export interface BusHandlers {
  onCancel(msg: CancelMessage): void;
  /** A tenant was suspended (true) or resumed (false) by an operator on some instance. */
  onSuspension(tenantId: string, suspended: boolean): void;
  onReload(): void;
  /** An operator revoked a staff token (or a person's tokens) on some instance. */
  onRevocation(rev: StaffRevocation): void;
}

export interface ClusterBus {
  /**
   * Starts delivering to `handlers`. Resolves once subscribed, or after a bounded wait when the
   * shared bus is unreachable (it subscribes when it comes back); never hangs a start.
   */
  start(handlers: BusHandlers): Promise<void>;
  /** Sends a cancel to the instance that owns the key (fire and forget: cancels are best effort). */
  publishCancel(msg: CancelMessage): void;
  /**
   * Applied on this instance at once, then shared; rejects when it could not be shared (Redis
   * down), so an operator learns the change reached one instance only.
   */
  publishSuspension(tenantId: string, suspended: boolean): Promise<void>;
  publishReload(): Promise<void>;
  /** Like a suspension: applied here at once, then shared; rejects when it could not be shared. */
  publishRevocation(rev: StaffRevocation): Promise<void>;
  /** Tenants suspended cluster-wide, as last known (loaded at start). */
  suspended(): ReadonlySet<string>;
  close(): Promise<void>;
}

/** One instance: everything is delivered to itself. Suspensions last until resumed or restart. */
export class LocalBus implements ClusterBus {
  private handlers: BusHandlers | null = null;
  private readonly suspendedSet = new Set<string>();

  start(handlers: BusHandlers): Promise<void> {
    this.handlers = handlers;
    return Promise.resolve();
  }

  publishCancel(msg: CancelMessage): void {
    this.handlers?.onCancel(msg);
  }

  publishSuspension(tenantId: string, suspended: boolean): Promise<void> {
    if (suspended) this.suspendedSet.add(tenantId);
    else this.suspendedSet.delete(tenantId);
    this.handlers?.onSuspension(tenantId, suspended);
    return Promise.resolve();
  }

  publishReload(): Promise<void> {
    this.handlers?.onReload();
    return Promise.resolve();
  }

  publishRevocation(rev: StaffRevocation): Promise<void> {
    this.handlers?.onRevocation(rev);
    return Promise.resolve();
  }

  suspended(): ReadonlySet<string> {
    return this.suspendedSet;
  }

  close(): Promise<void> {
    this.handlers = null;
    return Promise.resolve();
  }
}
