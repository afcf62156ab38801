/**
 * What the relay knows of the protocol conversation, written in one place: the transaction
 * status, ReadyForQuery accounting (what the backend still owes), half-sent extended-protocol
 * batches, the last server error, statement counters and the clocks the timeouts read.
 * Bytes in, facts out; no sockets.
 */
import { Backend, ErrorField, Frontend, TxStatus } from '../../protocol/codes.js';
import { decodeParameterStatus, readErrorField } from '../../protocol/backend.js';
import { hasSessionState } from './session-state.js';

export class ProtocolState {
  txStatus: number = TxStatus.Idle;
  /** Messages that will each be answered by ReadyForQuery (Query, Sync, FunctionCall)… */
  rfqExpected = 0;
  /** …and the ReadyForQuery messages seen: equal when the backend owes the client nothing. */
  rfqReceived = 0;
  /** Extended-protocol messages since the last Sync: a backend is not given back in between. */
  unsynced = 0;
  terminateSeen = false;
  /** A statement would leave session state behind (transaction mode decides what to do). */
  sessionStateSeen = false;
  /** Transaction mode only: once pinned, statements are no longer inspected for session state. */
  inspectSessionState = false;
  lastUpstreamError: { code: string; fatal: boolean } | null = null;
  /**
   * The backend sent a ReadyForQuery nothing asked for. PostgreSQL never does; counting it would
   * make a later query look finished (no query timeout, a session-mode backend pooled mid-query),
   * so the relay ends the session instead.
   */
  unsolicitedReply = false;

  messagesIn = 0;
  messagesOut = 0;
  queries = 0;
  transactions = 0;

  // Clocks (performance.now() readings) for the timeouts.
  lastClientAt = 0;
  /** When the backend began owing replies (0: it owes nothing). */
  busySince = 0;
  /** When the session last became idle (nothing owed). */
  idleSince = 0;
  /** When the open transaction began (0: none). */
  txSince = 0;
  queryCancelSent = false;

  constructor(
    txStatus: number,
    /** session_authorization or is_superuser changed (SECURITY.md §2.4). */
    private readonly onIdentityParameter: (name: string, value: string) => void,
  ) {
    this.txStatus = txStatus;
  }

  /** Whether the backend owes replies or holds an unfinished extended-protocol batch. */
  get busy(): boolean {
    return this.rfqReceived < this.rfqExpected || this.unsynced > 0;
  }

  /** Idle, nothing owed, nothing half-sent, no FATAL seen: the protocol side of "safe for another client". */
  get clean(): boolean {
    return this.txStatus === TxStatus.Idle && this.rfqReceived === this.rfqExpected && this.unsynced === 0 && this.lastUpstreamError?.fatal !== true;
  }

  /** One client message: counts, what it will be answered with, session state. */
  noteClientFrame(type: number, body: Buffer | null): void {
    this.messagesIn++;
    switch (type) {
      case Frontend.Query:
        this.queries++;
        this.rfqExpected++;
        if (body !== null && this.inspectSessionState && hasSessionState(body, false)) this.sessionStateSeen = true;
        return;
      case Frontend.FunctionCall:
        this.queries++;
        this.rfqExpected++;
        return;
      case Frontend.Sync:
        this.rfqExpected++;
        this.unsynced = 0;
        return;
      case Frontend.Execute:
        this.queries++;
        this.unsynced++;
        return;
      case Frontend.Parse:
        this.unsynced++;
        if (body !== null && this.inspectSessionState && hasSessionState(body, true)) this.sessionStateSeen = true;
        return;
      case Frontend.Bind:
      case Frontend.Describe:
      case Frontend.Close:
      case Frontend.Flush:
        this.unsynced++;
        return;
      case Frontend.Terminate:
        this.terminateSeen = true;
        return;
      default:
        return;
    }
  }

  /** One backend message: transaction status, errors, identity parameters. */
  noteBackendFrame(type: number, body: Buffer | null): void {
    this.messagesOut++;
    if (type === Backend.ReadyForQuery) {
      this.txStatus = body![0] ?? this.txStatus;
      if (++this.rfqReceived > this.rfqExpected) this.unsolicitedReply = true;
      if (this.txStatus === TxStatus.Idle) {
        this.transactions++;
        this.txSince = 0;
      } else if (this.txSince === 0) this.txSince = this.busySince === 0 ? performance.now() : this.busySince;
      if (this.rfqReceived === this.rfqExpected) {
        this.busySince = 0;
        this.queryCancelSent = false;
        this.idleSince = performance.now();
      }
    } else if (type === Backend.ErrorResponse) {
      const severity = readErrorField(body!, ErrorField.SeverityNonLocalized) ?? readErrorField(body!, ErrorField.Severity);
      this.lastUpstreamError = { code: readErrorField(body!, ErrorField.Code) ?? '', fatal: severity === 'FATAL' || severity === 'PANIC' };
    } else if (type === Backend.ParameterStatus) {
      const p = decodeParameterStatus(body!);
      if (p !== null && (p.name === 'session_authorization' || p.name === 'is_superuser')) this.onIdentityParameter(p.name, p.value);
    }
  }

  /** Client bytes arrived: the client is active, and the backend owes replies from now (until counts say otherwise). */
  noteClientActivity(now: number): void {
    this.lastClientAt = now;
    if (this.busySince === 0) this.busySince = now; // may be idle again at once: the timeouts look at the counts
  }
}
