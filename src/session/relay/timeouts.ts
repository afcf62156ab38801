/**
 * The tenant's timeouts as a pure check: given the clocks and counts of a relaying session and
 * its limits, what is due now (cancel the running query, end the session, or nothing). The
 * proxy's sweeper calls it ten times a second for every session (one timer for all, none per query).
 */
import type { LimitSettings } from '../../config/schema.js';
import { Errors, type PgError } from '../../errors.js';
import { TxStatus } from '../../protocol/codes.js';

export interface TimerFacts {
  /** The backend owes replies, holds a half-sent batch, or a backend is being acquired. */
  readonly busy: boolean;
  readonly busySince: number;
  readonly queryCancelSent: boolean;
  readonly hasBackend: boolean;
  readonly idleSince: number;
  readonly lastClientAt: number;
  readonly txStatus: number;
  readonly txSince: number;
}

export type TimeoutReason = 'idle_timeout' | 'idle_in_txn_timeout' | 'transaction_timeout';

export type TimeoutVerdict =
  | null
  /** The server answers the cancel with 57014 (canceling statement due to user request). */
  | { readonly kind: 'cancel_query' }
  | { readonly kind: 'end'; readonly error: PgError; readonly reason: TimeoutReason };

export function timeoutVerdict(f: TimerFacts, l: LimitSettings, now: number): TimeoutVerdict {
  if (f.busy) {
    if (l.queryTimeoutMs > 0 && !f.queryCancelSent && f.busySince > 0 && now - f.busySince >= l.queryTimeoutMs && f.hasBackend) return { kind: 'cancel_query' };
  } else {
    const idleFor = now - Math.max(f.idleSince, f.lastClientAt);
    if (f.txStatus === TxStatus.Idle) {
      if (l.idleTimeoutMs > 0 && idleFor >= l.idleTimeoutMs) return { kind: 'end', error: Errors.idleSessionTimeout(), reason: 'idle_timeout' };
    } else if (l.idleInTransactionTimeoutMs > 0 && idleFor >= l.idleInTransactionTimeoutMs) {
      return { kind: 'end', error: Errors.idleInTransactionTimeout(), reason: 'idle_in_txn_timeout' };
    }
  }
  if (l.transactionTimeoutMs > 0 && f.txSince > 0 && now - f.txSince >= l.transactionTimeoutMs) {
    return { kind: 'end', error: Errors.transactionTimeout(), reason: 'transaction_timeout' };
  }
  return null;
}

/**
 * The send timeout: output is queued past the socket's high-water mark (so the backend is paused)
 * and the client has taken none of it for `send_timeout`. Any progress restarts the clock, so a
 * slow reader is fine and only one that stopped reading is closed.
 */
export class SendStall {
  private since = 0;
  private lastPending = 0;

  /** True when the client has taken nothing for `timeoutMs`. */
  check(now: number, pending: number, needDrain: boolean, timeoutMs: number): boolean {
    if (!needDrain || pending === 0) this.since = 0;
    else if (this.since === 0 || pending < this.lastPending) this.since = now;
    this.lastPending = pending;
    return timeoutMs > 0 && this.since !== 0 && now - this.since >= timeoutMs;
  }
}
