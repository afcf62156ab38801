/**
 * The tenant's timeouts as pure decisions: timeoutVerdict (query, idle, idle in transaction,
 * transaction; zero is off; boundaries are >=) and SendStall (a client that stopped reading).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { SendStall, timeoutVerdict, type TimerFacts } from '../../src/session/relay/timeouts.js';
import type { LimitSettings } from '../../src/config/schema.js';
import { TxStatus } from '../../src/protocol/codes.js';
import { PgError } from '../../src/errors.js';

const OFF: LimitSettings = {
  maxConnectionsPerUser: 0,
  newConnectionsPerSecond: 0,
  newConnectionsBurst: 0,
  authFailureLimit: 0,
  authFailureWindowMs: 0,
  authFailureCooldownMs: 0,
  queryTimeoutMs: 0,
  idleTimeoutMs: 0,
  idleInTransactionTimeoutMs: 0,
  transactionTimeoutMs: 0,
  sendTimeoutMs: 0,
  maxBandwidthBytesPerSecond: 0,
  maxMessageBytes: 1 << 20,
};

const limits = (l: Partial<LimitSettings>): LimitSettings => ({ ...OFF, ...l });

/** An idle session: became idle at 1000, client last active at 1000, no transaction. */
const IDLE: TimerFacts = {
  busy: false,
  busySince: 0,
  queryCancelSent: false,
  hasBackend: true,
  idleSince: 1000,
  lastClientAt: 1000,
  txStatus: TxStatus.Idle,
  txSince: 0,
};

/** A query running since 1000. */
const BUSY: TimerFacts = { ...IDLE, busy: true, busySince: 1000 };

function endReason(v: ReturnType<typeof timeoutVerdict>): string | null {
  if (v === null) return null;
  return v.kind === 'end' ? v.reason : v.kind;
}

describe('timeoutVerdict: query timeout', () => {
  const l = limits({ queryTimeoutMs: 500 });

  it('cancels the running query at exactly queryTimeoutMs, not a millisecond before', () => {
    assert.equal(timeoutVerdict(BUSY, l, 1499), null);
    assert.deepEqual(timeoutVerdict(BUSY, l, 1500), { kind: 'cancel_query' });
    assert.deepEqual(timeoutVerdict(BUSY, l, 99_999), { kind: 'cancel_query' });
  });

  it('only when busy', () => {
    assert.equal(timeoutVerdict({ ...BUSY, busy: false }, l, 5000), null);
  });

  it('only with a backend to cancel on', () => {
    assert.equal(timeoutVerdict({ ...BUSY, hasBackend: false }, l, 5000), null);
  });

  it('once: not again while the cancel is in flight', () => {
    assert.equal(timeoutVerdict({ ...BUSY, queryCancelSent: true }, l, 5000), null);
  });

  it('not when the busy clock is not running', () => {
    assert.equal(timeoutVerdict({ ...BUSY, busySince: 0 }, l, 5000), null);
  });

  it('is off at 0', () => {
    assert.equal(timeoutVerdict(BUSY, OFF, 1e9), null);
  });

  it('a busy session is never ended for being idle', () => {
    const all = limits({ idleTimeoutMs: 10, idleInTransactionTimeoutMs: 10 });
    assert.equal(timeoutVerdict({ ...BUSY, txStatus: TxStatus.Idle }, all, 1e6), null);
    assert.equal(timeoutVerdict({ ...BUSY, txStatus: TxStatus.InTransaction }, all, 1e6), null);
  });
});

describe('timeoutVerdict: idle timeouts', () => {
  it('ends an idle session at exactly idleTimeoutMs with 57P05', () => {
    const l = limits({ idleTimeoutMs: 300 });
    assert.equal(timeoutVerdict(IDLE, l, 1299), null);
    const v = timeoutVerdict(IDLE, l, 1300);
    assert.ok(v !== null && v.kind === 'end');
    assert.equal(v.reason, 'idle_timeout');
    assert.ok(v.error instanceof PgError);
    assert.equal(v.error.sqlstate, '57P05');
    assert.equal(v.error.severity, 'FATAL');
  });

  it('measures idleness from the later of idleSince and lastClientAt', () => {
    const l = limits({ idleTimeoutMs: 300 });
    const clientLater = { ...IDLE, idleSince: 1000, lastClientAt: 2000 };
    assert.equal(timeoutVerdict(clientLater, l, 2299), null);
    assert.equal(endReason(timeoutVerdict(clientLater, l, 2300)), 'idle_timeout');
    const idleLater = { ...IDLE, idleSince: 3000, lastClientAt: 2000 };
    assert.equal(timeoutVerdict(idleLater, l, 3299), null);
    assert.equal(endReason(timeoutVerdict(idleLater, l, 3300)), 'idle_timeout');
  });

  it('idle timeout applies to status I only; idle-in-transaction to T and E only', () => {
    const idleOnly = limits({ idleTimeoutMs: 100 });
    const txOnly = limits({ idleInTransactionTimeoutMs: 100 });
    for (const txStatus of [TxStatus.InTransaction, TxStatus.Failed]) {
      assert.equal(timeoutVerdict({ ...IDLE, txStatus }, idleOnly, 1e6), null, `idle_timeout must not end status ${txStatus}`);
      assert.equal(endReason(timeoutVerdict({ ...IDLE, txStatus }, txOnly, 1100)), 'idle_in_txn_timeout');
      assert.equal(timeoutVerdict({ ...IDLE, txStatus }, txOnly, 1099), null);
    }
    assert.equal(timeoutVerdict(IDLE, txOnly, 1e6), null, 'idle_in_transaction must not end status I');
  });

  it('ends an idle-in-transaction session with 25P03', () => {
    const v = timeoutVerdict({ ...IDLE, txStatus: TxStatus.InTransaction }, limits({ idleInTransactionTimeoutMs: 100 }), 1100);
    assert.ok(v !== null && v.kind === 'end');
    assert.equal(v.error.sqlstate, '25P03');
  });

  it('is off at 0', () => {
    assert.equal(timeoutVerdict(IDLE, OFF, 1e9), null);
    assert.equal(timeoutVerdict({ ...IDLE, txStatus: TxStatus.InTransaction, txSince: 1 }, OFF, 1e9), null);
  });
});

describe('timeoutVerdict: transaction timeout', () => {
  const l = limits({ transactionTimeoutMs: 1000 });
  const inTx: TimerFacts = { ...IDLE, txStatus: TxStatus.InTransaction, txSince: 500 };

  it('ends a transaction at exactly transactionTimeoutMs from its start', () => {
    assert.equal(timeoutVerdict(inTx, l, 1499), null);
    const v = timeoutVerdict(inTx, l, 1500);
    assert.ok(v !== null && v.kind === 'end');
    assert.equal(v.reason, 'transaction_timeout');
    assert.equal(v.error.sqlstate, '25P04');
  });

  it('applies while a query runs too', () => {
    assert.equal(endReason(timeoutVerdict({ ...inTx, busy: true, busySince: 1400 }, l, 1500)), 'transaction_timeout');
  });

  it('needs an open transaction (txSince set)', () => {
    assert.equal(timeoutVerdict({ ...inTx, txSince: 0 }, l, 1e9), null);
  });

  it('a due query cancel comes before the transaction timeout', () => {
    const both = limits({ transactionTimeoutMs: 1000, queryTimeoutMs: 100 });
    assert.deepEqual(timeoutVerdict({ ...inTx, busy: true, busySince: 600 }, both, 1500), { kind: 'cancel_query' });
    assert.equal(endReason(timeoutVerdict({ ...inTx, busy: true, busySince: 600, queryCancelSent: true }, both, 1500)), 'transaction_timeout');
  });

  it('the idle-in-transaction timeout, when due, wins over the transaction timeout', () => {
    const both = limits({ transactionTimeoutMs: 1000, idleInTransactionTimeoutMs: 200 });
    assert.equal(endReason(timeoutVerdict(inTx, both, 1500)), 'idle_in_txn_timeout');
  });

  it('is off at 0', () => {
    assert.equal(timeoutVerdict(inTx, OFF, 1e9), null);
  });
});

describe('SendStall', () => {
  it('never stalls while not over the high-water mark', () => {
    const s = new SendStall();
    assert.equal(s.check(1000, 50_000, false, 100), false);
    assert.equal(s.check(5000, 50_000, false, 100), false);
    assert.equal(s.check(9000, 70_000, false, 100), false);
  });

  it('never stalls with nothing pending', () => {
    const s = new SendStall();
    assert.equal(s.check(1000, 0, true, 100), false);
    assert.equal(s.check(9000, 0, true, 100), false);
  });

  it('fires at exactly timeoutMs without progress', () => {
    const s = new SendStall();
    assert.equal(s.check(1000, 70_000, true, 100), false, 'the clock starts now');
    assert.equal(s.check(1050, 70_000, true, 100), false);
    assert.equal(s.check(1099, 70_000, true, 100), false);
    assert.equal(s.check(1100, 70_000, true, 100), true);
  });

  it('more output queued is not progress', () => {
    const s = new SendStall();
    s.check(1000, 70_000, true, 100);
    assert.equal(s.check(1060, 90_000, true, 100), false);
    assert.equal(s.check(1100, 120_000, true, 100), true);
  });

  it('restarts the clock when pending shrinks (a slow reader is fine)', () => {
    const s = new SendStall();
    s.check(1000, 70_000, true, 100);
    assert.equal(s.check(1090, 69_000, true, 100), false, 'progress at 1090');
    assert.equal(s.check(1150, 69_000, true, 100), false, 'only 60 ms since progress');
    assert.equal(s.check(1189, 69_000, true, 100), false);
    assert.equal(s.check(1190, 69_000, true, 100), true);
  });

  it('restarts from scratch once the socket drained below the mark', () => {
    const s = new SendStall();
    s.check(1000, 70_000, true, 100);
    s.check(1090, 70_000, true, 100);
    s.check(1095, 10_000, false, 100); // drained
    assert.equal(s.check(1100, 70_000, true, 100), false, 'a new stall starts at 1100');
    assert.equal(s.check(1199, 70_000, true, 100), false);
    assert.equal(s.check(1200, 70_000, true, 100), true);
  });

  it('is off at 0', () => {
    const s = new SendStall();
    s.check(1000, 70_000, true, 0);
    assert.equal(s.check(1e9, 70_000, true, 0), false);
  });
});
