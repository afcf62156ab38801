/**
 * Workers (`[server] workers = N`) and their primary talk over Node's IPC channel. Without Redis,
 * the primary holds the one LocalLimitStore, so limits stay exact across workers; it relays
 * cancels and suspensions between workers; and it owns the audit log, so there is one hash chain.
 * This file holds the message shapes and the worker's side; primary.ts holds the other side.
 */
import type { AuditEvent } from '../audit/record.js';
import type { AuditSink } from '../audit/log.js';
import type { AcquireResult, AdmitResult, Lease, LimitMode, LimitStore, LockoutRule, RateRule, SlotRequest } from '../limits/store.js';
import type { BusHandlers, CancelMessage, ClusterBus } from './bus.js';
import type { StaffRevocation } from '../admin/revocations.js';

/** Worker → primary. */
export type WorkerMessage =
  | { readonly k: 'rpc'; readonly id: number; readonly op: 'admit'; readonly rate: RateRule | null; readonly lockouts: readonly LockoutRule[] }
  | { readonly k: 'rpc'; readonly id: number; readonly op: 'acquire'; readonly slots: readonly SlotRequest[] }
  | { readonly k: 'rpc'; readonly id: number; readonly op: 'claimOnce'; readonly key: string; readonly ttlMs: number }
  /** A durable audit append: the primary answers { ok, healthy } once the record is on disk (or not). */
  | { readonly k: 'rpc'; readonly id: number; readonly op: 'audit'; readonly event: AuditEvent }
  | { readonly k: 'rpcReply'; readonly id: number; readonly result: unknown }
  | { readonly k: 'release'; readonly lease: number }
  | { readonly k: 'authFailure'; readonly lockouts: readonly LockoutRule[] }
  | { readonly k: 'audit'; readonly event: AuditEvent }
  | { readonly k: 'cancel'; readonly msg: CancelMessage }
  | { readonly k: 'listening'; readonly port: number }
  /** Asks for `init` (sent once the worker listens for messages, so nothing is lost before). */
  | { readonly k: 'hello' }
  /** Nothing; its send callback tells the worker everything before it has left. */
  | { readonly k: 'noop' };

/** Primary → worker. */
export type PrimaryMessage =
  | { readonly k: 'rpcReply'; readonly id: number; readonly result: unknown }
  | { readonly k: 'rpc'; readonly id: number; readonly op: 'pools' | 'metrics' }
  /** The admin API on the primary: the worker's sessions (describe()), or end one by id (true if it was there). */
  | { readonly k: 'rpc'; readonly id: number; readonly op: 'sessions'; readonly tenant: string | null }
  | { readonly k: 'rpc'; readonly id: number; readonly op: 'limits'; readonly tenant: string | null }
  | { readonly k: 'rpc'; readonly id: number; readonly op: 'terminate'; readonly session: string }
  | { readonly k: 'init'; readonly suspended: readonly string[]; readonly revocations: readonly StaffRevocation[] }
  | { readonly k: 'cancel'; readonly msg: CancelMessage }
  | { readonly k: 'suspension'; readonly tenant: string; readonly suspended: boolean }
  /** The audit file stopped or started accepting writes (also sent after `init` while unhealthy). */
  | { readonly k: 'auditHealth'; readonly healthy: boolean }
  | { readonly k: 'revocation'; readonly rev: StaffRevocation }
  /** Tenants whose records for the customer's staff_access_log wait, and since when (ms since the epoch); sent on change. */
  | { readonly k: 'transparencyLag'; readonly oldest: readonly (readonly [string, number])[] }
  | { readonly k: 'reload' }
  | { readonly k: 'drain' }
  | { readonly k: 'close' };

/** A primary that does not answer within this long is gone; the worker exits when IPC closes anyway. */
const RPC_TIMEOUT_MS = 5_000;

/** Our messages are objects with a string `k`; anything else on the channel is not ours. */
export function isMessage(raw: unknown): raw is { k: string } {
  return typeof raw === 'object' && raw !== null && typeof (raw as { k?: unknown }).k === 'string';
}

function send(msg: WorkerMessage): void {
  // A closed channel means the primary is gone; the 'disconnect' handler ends this worker.
  if (process.connected) process.send?.(msg);
}

/** The worker's end of the channel: request/response calls and a dispatcher for the rest. */
export class PrimaryChannel {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private readonly handlers = new Set<(m: PrimaryMessage) => void>();

  constructor() {
    process.on('message', (raw: unknown) => {
      if (!isMessage(raw)) return;
      const m = raw as PrimaryMessage;
      if (m.k === 'rpcReply') {
        const p = this.pending.get(m.id);
        if (p === undefined) return;
        this.pending.delete(m.id);
        clearTimeout(p.timer);
        p.resolve(m.result);
        return;
      }
      for (const h of this.handlers) h(m);
    });
  }

  call(
    msg:
      | { op: 'admit'; rate: RateRule | null; lockouts: readonly LockoutRule[] }
      | { op: 'acquire'; slots: readonly SlotRequest[] }
      | { op: 'claimOnce'; key: string; ttlMs: number }
      | { op: 'audit'; event: AuditEvent },
  ): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error('primary process did not answer'));
      }, RPC_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      send({ k: 'rpc', id, ...msg });
    });
  }

  send(msg: WorkerMessage): void {
    send(msg);
  }

  /** Resolves once every message sent so far has been handed to the channel (before exiting). */
  flush(): Promise<void> {
    return new Promise((resolve) => {
      if (!process.connected || process.send === undefined) return resolve();
      process.send({ k: 'noop' } satisfies WorkerMessage, undefined, {}, () => resolve());
    });
  }

  on(handler: (m: PrimaryMessage) => void): void {
    this.handlers.add(handler);
  }
}

/** Limits held by the primary: exact across workers. */
export class IpcLimitStore implements LimitStore {
  readonly mode: LimitMode = 'local';
  private readonly lastSeen = new Map<string, number>();

  constructor(private readonly channel: PrimaryChannel) {}

  async admit(rate: RateRule | null, lockouts: readonly LockoutRule[]): Promise<AdmitResult> {
    return (await this.channel.call({ op: 'admit', rate, lockouts })) as AdmitResult;
  }

  noteAuthFailure(lockouts: readonly LockoutRule[]): Promise<void> {
    this.channel.send({ k: 'authFailure', lockouts });
    return Promise.resolve();
  }

  async claimOnce(key: string, ttlMs: number): Promise<boolean> {
    return (await this.channel.call({ op: 'claimOnce', key, ttlMs })) === true;
  }

  async acquire(slots: readonly SlotRequest[]): Promise<AcquireResult> {
    const r = (await this.channel.call({ op: 'acquire', slots })) as { ok: true; lease: number; active: number[] } | { ok: false; refused: number };
    if (!r.ok) return r;
    slots.forEach((s, i) => this.lastSeen.set(s.key, r.active[i] ?? 0));
    let released = false;
    const lease: Lease = {
      release: () => {
        if (released) return;
        released = true;
        this.channel.send({ k: 'release', lease: r.lease });
      },
    };
    return { ok: true, lease, active: r.active };
  }

  active(key: string): number {
    return this.lastSeen.get(key) ?? 0;
  }

  /** The primary's store is this instance's only: nothing beyond it is shared. */
  clusterCounts(): Promise<readonly number[] | null> {
    return Promise.resolve(null);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** Cancels, suspensions and revocations relayed by the primary (which also serves the admin commands). */
export class IpcBus implements ClusterBus {
  private readonly suspendedSet = new Set<string>();
  private handlers: BusHandlers | null = null;

  constructor(private readonly channel: PrimaryChannel) {}

  start(handlers: BusHandlers): Promise<void> {
    this.handlers = handlers;
    const ready = new Promise<void>((resolve) => {
      this.channel.on((m) => {
        switch (m.k) {
          case 'init':
            for (const t of m.suspended) this.suspendedSet.add(t);
            for (const r of m.revocations) this.handlers?.onRevocation(r);
            resolve();
            return;
          case 'cancel':
            this.handlers?.onCancel(m.msg);
            return;
          case 'suspension':
            if (m.suspended) this.suspendedSet.add(m.tenant);
            else this.suspendedSet.delete(m.tenant);
            this.handlers?.onSuspension(m.tenant, m.suspended);
            return;
          case 'revocation':
            this.handlers?.onRevocation(m.rev);
            return;
          case 'rpc':
          case 'rpcReply':
          case 'auditHealth':
          case 'transparencyLag':
          case 'reload':
          case 'drain':
          case 'close':
            return; // the worker's own business (main.ts)
        }
      });
    });
    this.channel.send({ k: 'hello' });
    return ready;
  }

  publishCancel(msg: CancelMessage): void {
    this.channel.send({ k: 'cancel', msg });
  }

  publishSuspension(): Promise<void> {
    return Promise.reject(new Error('suspensions are published by the primary'));
  }

  publishReload(): Promise<void> {
    return Promise.reject(new Error('reloads are published by the primary'));
  }

  publishRevocation(): Promise<void> {
    return Promise.reject(new Error('revocations are published by the primary'));
  }

  suspended(): ReadonlySet<string> {
    return this.suspendedSet;
  }

  close(): Promise<void> {
    this.handlers = null;
    return Promise.resolve();
  }
}

/**
 * Audit events go to the primary, which chains and writes them; each carries its worker's id.
 * Durable appends are a round trip: the primary answers once the record is written and synced.
 */
export class IpcAuditSink implements AuditSink {
  /** The primary's audit health: pushed on change, and refreshed by every durable answer. */
  private primaryHealthy = true;

  constructor(
    private readonly channel: PrimaryChannel,
    private readonly workerId: number,
  ) {
    channel.on((m) => {
      if (m.k === 'auditHealth') this.primaryHealthy = m.healthy;
    });
  }

  append(event: AuditEvent): void {
    this.channel.send({ k: 'audit', event: { ...event, worker: this.workerId } });
  }

  /** Rejects when the primary could not make the record durable, or does not answer (fail closed). */
  async appendDurable(event: AuditEvent): Promise<void> {
    const r = (await this.channel.call({ op: 'audit', event: { ...event, worker: this.workerId } })) as { ok: boolean; healthy: boolean };
    this.primaryHealthy = r.healthy;
    if (!r.ok) throw new Error('audit log is unavailable');
  }

  get healthy(): boolean {
    return this.primaryHealthy;
  }

  flush(): Promise<void> {
    return this.channel.flush();
  }

  close(): Promise<void> {
    return this.channel.flush();
  }
}
