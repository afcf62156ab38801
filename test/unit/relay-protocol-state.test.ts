/**
 * ProtocolState: real protocol bytes in (split into frames by the FrameReader, as the relay does),
 * the relay's facts out: what the backend owes (ReadyForQuery accounting), half-sent extended-protocol
 * batches, busy / clean, transactions, Terminate, session state and identity parameters. No sockets.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ProtocolState } from '../../src/session/relay/protocol-state.js';
import { FrameReader } from '../../src/protocol/frame-reader.js';
import { encodeFrame, cstring } from '../../src/protocol/frame.js';
import { encodeErrorResponse, encodeParameterStatus, encodeReadyForQuery } from '../../src/protocol/backend.js';
import { encodeQuery, TERMINATE } from '../../src/protocol/frontend.js';
import { Frontend, TxStatus } from '../../src/protocol/codes.js';

// ---------------------------------------------------------------- frontend frames (real bytes)

const query = (sql: string): Buffer => encodeQuery(sql);
const sync = (): Buffer => encodeFrame(Frontend.Sync);
const flush = (): Buffer => encodeFrame(Frontend.Flush);
function parse(name: string, sql: string, types: readonly number[] = []): Buffer {
  const t = Buffer.alloc(2 + 4 * types.length);
  t.writeInt16BE(types.length, 0);
  types.forEach((oid, i) => t.writeUInt32BE(oid, 2 + 4 * i));
  return encodeFrame(Frontend.Parse, cstring(name), cstring(sql), t);
}
function bind(portal: string, statement: string): Buffer {
  // No parameter formats, no parameters, no result formats.
  return encodeFrame(Frontend.Bind, cstring(portal), cstring(statement), Buffer.alloc(6));
}
const describeStatement = (name: string): Buffer => encodeFrame(Frontend.Describe, Buffer.from('S'), cstring(name));
function execute(portal: string, maxRows = 0): Buffer {
  const n = Buffer.alloc(4);
  n.writeInt32BE(maxRows, 0);
  return encodeFrame(Frontend.Execute, cstring(portal), n);
}
const closeStatement = (name: string): Buffer => encodeFrame(Frontend.Close, Buffer.from('S'), cstring(name));
function functionCall(oid: number): Buffer {
  // oid, 0 argument formats, 0 arguments, result format 0.
  const b = Buffer.alloc(10);
  b.writeUInt32BE(oid, 0);
  return encodeFrame(Frontend.FunctionCall, b);
}

// ---------------------------------------------------------------- backend frames

const rfq = (status: 'I' | 'T' | 'E'): Buffer => encodeReadyForQuery(TxStatus[status === 'I' ? 'Idle' : status === 'T' ? 'InTransaction' : 'Failed']);
const commandComplete = (tag: string): Buffer => encodeFrame(0x43 /* C */, cstring(tag));
const error = (severity: 'ERROR' | 'FATAL', code: string): Buffer => encodeErrorResponse({ severity, code, message: 'boom' });

/** Feeds bytes to the state as the relay does: whole frames, bodies of the types it decodes. */
function feedClient(s: ProtocolState, ...frames: Buffer[]): void {
  const r = new FrameReader();
  r.push(Buffer.concat(frames));
  for (let f = r.nextTyped(() => 1 << 20); f !== null; f = r.nextTyped(() => 1 << 20)) s.noteClientFrame(f.type, f.body);
  assert.equal(r.buffered, 0, 'test bytes are whole frames');
}

function feedBackend(s: ProtocolState, ...frames: Buffer[]): void {
  const r = new FrameReader();
  r.push(Buffer.concat(frames));
  for (let f = r.nextTyped(() => 1 << 20); f !== null; f = r.nextTyped(() => 1 << 20)) s.noteBackendFrame(f.type, f.body);
  assert.equal(r.buffered, 0, 'test bytes are whole frames');
}

function newState(txStatus: number = TxStatus.Idle): { s: ProtocolState; identity: [string, string][] } {
  const identity: [string, string][] = [];
  const s = new ProtocolState(txStatus, (name, value) => identity.push([name, value]));
  return { s, identity };
}

describe('ProtocolState: ReadyForQuery accounting', () => {
  it('expects one ReadyForQuery per Query and is busy until it arrives', () => {
    const { s } = newState();
    assert.equal(s.busy, false);
    assert.equal(s.clean, true);
    feedClient(s, query('SELECT 1'));
    assert.equal(s.rfqExpected, 1);
    assert.equal(s.rfqReceived, 0);
    assert.equal(s.busy, true);
    assert.equal(s.clean, false);
    feedBackend(s, commandComplete('SELECT 1'));
    assert.equal(s.busy, true, 'CommandComplete is not the end of a Query');
    feedBackend(s, rfq('I'));
    assert.equal(s.rfqReceived, 1);
    assert.equal(s.busy, false);
    assert.equal(s.clean, true);
    assert.equal(s.queries, 1);
  });

  it('flags a ReadyForQuery nothing asked for (and only that)', () => {
    const { s } = newState();
    feedClient(s, query('SELECT 1'));
    feedBackend(s, commandComplete('SELECT 1'), rfq('I'));
    assert.equal(s.unsolicitedReply, false, 'the one asked for');
    feedBackend(s, rfq('I'));
    assert.equal(s.unsolicitedReply, true, 'one more than the client asked for');
  });

  it('counts pipelined Queries: busy until the last ReadyForQuery', () => {
    const { s } = newState();
    feedClient(s, query('SELECT 1'), query('SELECT 2'), query('SELECT 3'));
    assert.equal(s.rfqExpected, 3);
    feedBackend(s, rfq('I'), rfq('I'));
    assert.equal(s.busy, true);
    assert.equal(s.clean, false);
    feedBackend(s, rfq('I'));
    assert.equal(s.busy, false);
    assert.equal(s.clean, true);
    assert.equal(s.queries, 3);
  });

  it('expects a ReadyForQuery for a FunctionCall, and counts it as a query', () => {
    const { s } = newState();
    feedClient(s, functionCall(1598));
    assert.equal(s.rfqExpected, 1);
    assert.equal(s.queries, 1);
    assert.equal(s.unsynced, 0, 'FunctionCall is not part of an extended-protocol batch');
    assert.equal(s.busy, true);
    feedBackend(s, encodeFrame(0x56 /* V */, Buffer.from([0xff, 0xff, 0xff, 0xff])), rfq('I'));
    assert.equal(s.busy, false);
  });

  it('expects a ReadyForQuery for each Sync, even a Sync with nothing before it', () => {
    const { s } = newState();
    feedClient(s, sync(), sync());
    assert.equal(s.rfqExpected, 2);
    assert.equal(s.unsynced, 0);
    assert.equal(s.busy, true);
    feedBackend(s, rfq('I'));
    assert.equal(s.busy, true);
    feedBackend(s, rfq('I'));
    assert.equal(s.busy, false);
    assert.equal(s.queries, 0, 'Sync runs nothing');
  });

  it('counts client and backend messages', () => {
    const { s } = newState();
    feedClient(s, query('SELECT 1'), sync(), TERMINATE);
    feedBackend(s, commandComplete('SELECT 1'), rfq('I'), rfq('I'));
    assert.equal(s.messagesIn, 3);
    assert.equal(s.messagesOut, 3);
  });
});

describe('ProtocolState: extended-protocol batches', () => {
  it('counts Parse/Bind/Describe/Execute/Close/Flush as unsynced until Sync resets them', () => {
    const { s } = newState();
    feedClient(s, parse('s1', 'SELECT $1', [23]));
    assert.equal(s.unsynced, 1);
    feedClient(s, bind('', 's1'), describeStatement('s1'), execute(''), closeStatement('s1'), flush());
    assert.equal(s.unsynced, 6);
    assert.equal(s.rfqExpected, 0, 'nothing in the batch is answered by ReadyForQuery');
    assert.equal(s.busy, true, 'a half-sent batch makes the backend busy');
    assert.equal(s.clean, false);
    assert.equal(s.queries, 1, 'Execute runs a statement, the others do not');
    feedClient(s, sync());
    assert.equal(s.unsynced, 0);
    assert.equal(s.rfqExpected, 1);
    assert.equal(s.busy, true, 'the Sync is owed its ReadyForQuery');
    feedBackend(s, encodeFrame(0x31), encodeFrame(0x32), encodeFrame(0x6e), commandComplete('SELECT 1'), encodeFrame(0x33), rfq('I'));
    assert.equal(s.busy, false);
    assert.equal(s.clean, true);
  });

  it('stays busy with an unsynced batch even when every ReadyForQuery owed has come', () => {
    const { s } = newState();
    feedClient(s, query('SELECT 1'));
    feedBackend(s, rfq('I'));
    feedClient(s, parse('', 'SELECT 2'), bind('', ''), execute(''), flush());
    assert.equal(s.rfqReceived, s.rfqExpected);
    assert.equal(s.busy, true);
    assert.equal(s.clean, false);
  });
});

describe('ProtocolState: clean and transactions', () => {
  it('is clean only idle: T and E at ReadyForQuery are not', () => {
    const { s } = newState();
    feedClient(s, query('BEGIN'));
    feedBackend(s, commandComplete('BEGIN'), rfq('T'));
    assert.equal(s.txStatus, TxStatus.InTransaction);
    assert.equal(s.busy, false, 'nothing owed');
    assert.equal(s.clean, false, 'but a transaction is open');
    feedClient(s, query('SELECT 1/0'));
    feedBackend(s, error('ERROR', '22012'), rfq('E'));
    assert.equal(s.txStatus, TxStatus.Failed);
    assert.equal(s.busy, false);
    assert.equal(s.clean, false);
    feedClient(s, query('ROLLBACK'));
    feedBackend(s, commandComplete('ROLLBACK'), rfq('I'));
    assert.equal(s.txStatus, TxStatus.Idle);
    assert.equal(s.clean, true);
  });

  it('starts from the status it is given', () => {
    const { s } = newState(TxStatus.InTransaction);
    assert.equal(s.txStatus, TxStatus.InTransaction);
    assert.equal(s.clean, false);
  });

  it('records an ERROR (not fatal) and stays clean once idle', () => {
    const { s } = newState();
    feedClient(s, query('SELEC 1'));
    feedBackend(s, error('ERROR', '42601'), rfq('I'));
    assert.deepEqual(s.lastUpstreamError, { code: '42601', fatal: false });
    assert.equal(s.clean, true);
  });

  it('a FATAL ErrorResponse makes the state unclean for good', () => {
    const { s } = newState();
    feedClient(s, query('SELECT 1'));
    feedBackend(s, error('FATAL', '57P01'));
    assert.deepEqual(s.lastUpstreamError, { code: '57P01', fatal: true });
    feedBackend(s, rfq('I')); // whatever a hostile server sends next
    assert.equal(s.busy, false);
    assert.equal(s.clean, false);
  });

  it('treats PANIC as fatal, and reads the non-localised V field before S', () => {
    const { s } = newState();
    // S may be localised (here a made-up translation); V, never localised, says what it is.
    feedBackend(s, encodeFrame(0x45, Buffer.from('SSCHWER\0VPANIC\0CXX000\0Mboom\0\0')));
    assert.deepEqual(s.lastUpstreamError, { code: 'XX000', fatal: true });
    feedBackend(s, encodeFrame(0x45, Buffer.from('SFATAL\0VERROR\0C42P01\0Mboom\0\0')));
    assert.deepEqual(s.lastUpstreamError, { code: '42P01', fatal: false });
  });

  it("counts a transaction at each ReadyForQuery 'I', none at 'T' or 'E'", () => {
    const { s } = newState();
    feedClient(s, query('SELECT 1'));
    feedBackend(s, rfq('I'));
    assert.equal(s.transactions, 1);
    feedClient(s, query('BEGIN'), query('INSERT INTO t VALUES (1)'), query('COMMIT'));
    feedBackend(s, rfq('T'), rfq('T'));
    assert.equal(s.transactions, 1);
    feedBackend(s, rfq('I'));
    assert.equal(s.transactions, 2);
  });

  it('sets txSince when a transaction opens (from busySince), keeps it while open, clears it at I', () => {
    const { s } = newState();
    s.noteClientActivity(1000);
    assert.equal(s.busySince, 1000);
    s.noteClientActivity(1500);
    assert.equal(s.busySince, 1000, 'the first byte of the batch starts the clock');
    assert.equal(s.lastClientAt, 1500);
    feedClient(s, query('BEGIN'), query('SELECT 1'));
    feedBackend(s, rfq('T'));
    assert.equal(s.txSince, 1000);
    feedBackend(s, rfq('T'));
    assert.equal(s.txSince, 1000, 'still the same transaction');
    assert.equal(s.busySince, 0, 'nothing owed any more');
    feedClient(s, query('COMMIT'));
    s.noteClientActivity(9000);
    feedBackend(s, rfq('I'));
    assert.equal(s.txSince, 0);
  });

  it('sets txSince to the current time when nothing had started the busy clock', () => {
    const { s } = newState();
    const before = performance.now();
    feedBackend(s, rfq('T'));
    const after = performance.now();
    assert.ok(s.txSince >= before && s.txSince <= after, `txSince ${s.txSince} in [${before}, ${after}]`);
  });

  it('clears busySince and queryCancelSent and sets idleSince once nothing is owed', () => {
    const { s } = newState();
    s.noteClientActivity(1000);
    feedClient(s, query('SELECT pg_sleep(10)'), query('SELECT 2'));
    s.queryCancelSent = true;
    feedBackend(s, error('ERROR', '57014'), rfq('I'));
    assert.equal(s.busySince, 1000, 'one ReadyForQuery still owed');
    assert.equal(s.queryCancelSent, true);
    const before = performance.now();
    feedBackend(s, rfq('I'));
    assert.equal(s.busySince, 0);
    assert.equal(s.queryCancelSent, false);
    assert.ok(s.idleSince >= before);
  });

  it('keeps the status when a ReadyForQuery has no status byte', () => {
    const { s } = newState(TxStatus.InTransaction);
    feedBackend(s, encodeFrame(0x5a));
    assert.equal(s.txStatus, TxStatus.InTransaction);
    assert.equal(s.rfqReceived, 1);
  });
});

describe('ProtocolState: Terminate, session state, identity', () => {
  it('notes Terminate, which expects no reply', () => {
    const { s } = newState();
    assert.equal(s.terminateSeen, false);
    feedClient(s, TERMINATE);
    assert.equal(s.terminateSeen, true);
    assert.equal(s.rfqExpected, 0);
    assert.equal(s.busy, false);
  });

  it('ignores session state unless inspectSessionState is on', () => {
    const { s } = newState();
    feedClient(s, query('SET search_path = x'), parse('', 'LISTEN ch'));
    assert.equal(s.sessionStateSeen, false);
  });

  it('sees session state in a Query and in a Parse when inspecting', () => {
    const q = newState().s;
    q.inspectSessionState = true;
    feedClient(q, query('SELECT 1'));
    assert.equal(q.sessionStateSeen, false);
    feedClient(q, query('SELECT 1; SET search_path = x'));
    assert.equal(q.sessionStateSeen, true);

    const p = newState().s;
    p.inspectSessionState = true;
    feedClient(p, parse('s1', 'SELECT $1', [25]), parse('', 'SET LOCAL statement_timeout = 0'));
    assert.equal(p.sessionStateSeen, false, 'SET LOCAL stays in the transaction');
    feedClient(p, parse('s2', 'LISTEN ch'));
    assert.equal(p.sessionStateSeen, true);
  });

  it('does not look for session state in messages that carry no SQL', () => {
    const { s } = newState();
    s.inspectSessionState = true;
    // A Bind whose parameter value is SQL text that would pin if it were a statement.
    const value = Buffer.from('SET search_path = x');
    const params = Buffer.alloc(2 + 2 + 4);
    params.writeInt16BE(1, 2);
    params.writeInt32BE(value.length, 4);
    feedClient(s, encodeFrame(Frontend.Bind, cstring(''), cstring('s1'), params, value, Buffer.alloc(2)), execute(''), sync());
    assert.equal(s.sessionStateSeen, false);
  });

  it('reports session_authorization and is_superuser to the callback, and no other parameter', () => {
    const { s, identity } = newState();
    feedBackend(
      s,
      encodeParameterStatus('application_name', 'psql'),
      encodeParameterStatus('session_authorization', 'mallory'),
      encodeParameterStatus('TimeZone', 'UTC'),
      encodeParameterStatus('is_superuser', 'on'),
      encodeParameterStatus('standard_conforming_strings', 'on'),
    );
    assert.deepEqual(identity, [
      ['session_authorization', 'mallory'],
      ['is_superuser', 'on'],
    ]);
    assert.equal(s.messagesOut, 5);
  });

  it('ignores a malformed ParameterStatus', () => {
    const { s, identity } = newState();
    feedBackend(s, encodeFrame(0x53, Buffer.from('session_authorization\0mallory'))); // value not terminated
    assert.deepEqual(identity, []);
  });
});
