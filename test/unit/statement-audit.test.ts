/**
 * StatementAudit: client messages become session.query records and the replies the client gets
 * complete them, in the server's order (errors skip to Sync, COPY counted, outcomes unknown at end).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'pg-protocol';
import { StatementAudit } from '../../src/session/relay/statement-audit.js';
import type { AuditEvent } from '../../src/audit/record.js';

const I = 0x49;
const T = 0x54;

/** Splits a serialized client message into type and body. */
function msg(buf: Buffer): [number, Buffer] {
  return [buf[0]!, buf.subarray(5)];
}

function reply(type: string, body: Buffer = Buffer.alloc(0)): [number, Buffer] {
  return [type.charCodeAt(0), body];
}

const cstr = (s: string): Buffer => Buffer.from(`${s}\0`);
const errorBody = (code: string): Buffer => Buffer.concat([Buffer.from('SERROR\0'), Buffer.from(`C${code}\0`), Buffer.from('Mboom\0'), Buffer.alloc(1)]);

function audit(params: 'off' | 'redacted' | 'full' = 'full', queryMaxBytes = 1024): { a: StatementAudit; send: (b: Buffer) => AuditEvent | null; recv: (r: [number, Buffer]) => AuditEvent[] } {
  let ei = 0;
  const a = new StatementAudit({ params, queryMaxBytes, paramMaxBytes: 8 }, () => ei++);
  return {
    a,
    send: (b) => {
      const [t, body] = msg(b);
      return a.onClientMessage(t, body, I);
    },
    recv: ([t, body]) => {
      const out: AuditEvent[] = [];
      a.onServerMessage(t, body, body.length, out);
      return out;
    },
  };
}

describe('statement audit', () => {
  it('pairs a multi-statement simple query with one result at ReadyForQuery', () => {
    const { send, recv } = audit();
    const q = send(serialize.query('SELECT 1; UPDATE t SET x = 1'))!;
    assert.equal(q['kind'], 'simple');
    assert.equal(q['query'], 'SELECT 1; UPDATE t SET x = 1');
    assert.equal(q['tx_status_before'], 'I');
    assert.deepEqual(recv(reply('C', cstr('SELECT 1'))), []);
    assert.deepEqual(recv(reply('C', cstr('UPDATE 3'))), []);
    const [r] = recv(reply('Z', Buffer.from('I')));
    assert.equal(r!['ref'], q['ei']);
    assert.equal(r!['command_tag'], 'UPDATE 3');
    assert.deepEqual(r!['command_tags'], ['SELECT 1', 'UPDATE 3']);
    assert.equal(r!['rows'], 4);
    assert.equal(r!['executed'], true);
    assert.equal(r!['tx_status_after'], 'I');
  });

  it('marks what follows an extended-protocol error as not executed, up to Sync', () => {
    const { send, recv } = audit();
    const p = send(serialize.parse({ name: 's1', text: 'SELEC $1', types: [] }))!;
    const b = send(serialize.bind({ statement: 's1', values: ['x'] }))!;
    const e = send(serialize.execute({}))!;
    assert.equal(send(serialize.sync()), null);
    const [perr] = recv(reply('E', errorBody('42601')));
    assert.equal(perr!['ref'], p['ei']);
    assert.equal(perr!['sqlstate'], '42601');
    const rest = recv(reply('Z', Buffer.from('I')));
    assert.deepEqual(rest.map((r) => [r['ref'], r['executed']]), [[b['ei'], false], [e['ei'], false]]);
    // The next pipeline is matched afresh.
    const p2 = send(serialize.parse({ text: 'SELECT 1' }))!;
    send(serialize.sync());
    assert.equal(recv(reply('1'))[0]!['ref'], p2['ei']);
  });

  it('names the statement an Execute runs and keeps parameters by policy', () => {
    const full = audit('full');
    full.send(serialize.parse({ name: 'q', text: 'SELECT $1, $2, $3' }));
    const b = full.send(serialize.bind({ statement: 'q', portal: 'p', values: ['short', 'a-much-longer-value', null] }))!;
    assert.deepEqual(b['params'], ['short', { value: 'a-much-l', truncated: true, bytes: 19 }, null]);
    const e = full.send(serialize.execute({ portal: 'p', rows: 10 }))!;
    assert.equal(e['query'], 'SELECT $1, $2, $3');
    assert.equal(e['statement_name'], 'q');
    assert.equal(e['max_rows'], 10);

    const red = audit('redacted');
    const rb = red.send(serialize.bind({ values: ['secret', null] }))!;
    assert.deepEqual(rb['params'], [{ redacted: true, bytes: 6 }, null]);
    assert.ok(!JSON.stringify(rb).includes('secret'));
    const off = audit('off');
    const ob = off.send(serialize.bind({ values: ['secret'] }))!;
    assert.equal(ob['params'], undefined);
    assert.equal(ob['param_count'], 1);
  });

  it('records a malformed Bind as such instead of throwing', () => {
    const { a } = audit();
    const body = Buffer.concat([cstr(''), cstr(''), Buffer.from([0, 1, 0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff])]);
    const ev = a.onClientMessage(0x42, body, I)!;
    assert.equal(ev['params_malformed'], true);
  });

  it('counts COPY in and out, and truncates and hashes long statements', () => {
    const { send, recv } = audit('full', 64);
    const long = `COPY t FROM STDIN -- ${'x'.repeat(100)}`;
    const q = send(serialize.query(long))!;
    assert.equal(q['query_truncated'], true);
    assert.equal(q['query_bytes'], Buffer.byteLength(long));
    assert.equal((q['query'] as string).length, 64);
    assert.match(q['query_sha256'] as string, /^[0-9a-f]{64}$/);
    recv(reply('G', Buffer.from([0, 0, 0])));
    send(serialize.copyData(Buffer.from('1\n2\n')));
    send(serialize.copyData(Buffer.from('3\n')));
    send(serialize.copyDone());
    recv(reply('C', cstr('COPY 3')));
    const [r] = recv(reply('Z', Buffer.from('I')));
    assert.deepEqual(r!['copy'], { direction: 'in', bytes: 6, messages: 2 });
    assert.equal(r!['rows'], 3);

    const out = send(serialize.query('COPY t TO STDOUT'))!;
    recv(reply('H', Buffer.from([0, 0, 0])));
    recv(reply('d', Buffer.from('1\n')));
    recv(reply('c'));
    recv(reply('C', cstr('COPY 1')));
    const [ro] = recv(reply('Z', Buffer.from('I')));
    assert.equal(ro!['ref'], out['ei']);
    assert.deepEqual(ro!['copy'], { direction: 'out', bytes: 2, messages: 1 });
  });

  it('completes Describe at RowDescription or NoData, notes identity changes, and abandons the rest as unknown', () => {
    const { a, send, recv } = audit();
    const d = send(serialize.describe({ type: 'S', name: 'q' }))!;
    send(serialize.sync());
    assert.deepEqual(recv(reply('t', Buffer.from([0, 0]))), []);
    assert.equal(recv([T, Buffer.from([0, 0])])[0]!['ref'], d['ei']);
    recv(reply('Z', Buffer.from('I')));

    const q = send(serialize.query('SET SESSION AUTHORIZATION bob'))!;
    recv(reply('S', Buffer.concat([cstr('session_authorization'), cstr('bob')])));
    recv(reply('C', cstr('SET')));
    const [r] = recv(reply('Z', Buffer.from('I')));
    assert.equal(r!['ref'], q['ei']);
    assert.deepEqual(r!['identity_changes'], [{ name: 'session_authorization', value: 'bob' }]);

    const hanging = send(serialize.query('SELECT pg_sleep(10)'))!;
    const out: AuditEvent[] = [];
    a.abandon(out);
    assert.equal(out[0]!['ref'], hanging['ei']);
    assert.equal(out[0]!['executed'], 'unknown');
    assert.equal(a.statementsAudited, 3);
  });
});
