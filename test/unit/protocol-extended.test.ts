/**
 * The extended-query codecs transaction mode renames statements with (protocol/frontend.ts) and
 * the frames pgwarden answers or passes on in the server's place (protocol/backend.ts), checked
 * byte for byte against pg-protocol's serializer, which real clients use.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'pg-protocol';
import {
  decodeBindStatementName,
  decodeParseName,
  decodeStatementTarget,
  DISCARD_ALL,
  encodeBindWithStatement,
  encodeCloseStatement,
  encodeDescribeStatement,
  encodeParse,
  TERMINATE,
} from '../../src/protocol/frontend.js';
import { CLOSE_COMPLETE, encodeErrorResponseBody, PARSE_COMPLETE, readErrorField } from '../../src/protocol/backend.js';
import { ErrorField } from '../../src/protocol/codes.js';

const body = (frame: Buffer): Buffer => frame.subarray(5);

describe('extended-query encoders, as a client would send them', () => {
  for (const name of ['pgw_0123456789abcdef01234567', 'é_名前', '']) {
    it(`Parse, Describe and Close of ${JSON.stringify(name)}`, () => {
      const parse = serialize.parse({ name, text: 'SELECT $1::int, $2', types: [23, 25] });
      const definition = body(parse).subarray(Buffer.byteLength(name) + 1);
      assert.deepEqual(encodeParse(name, definition), parse);
      assert.deepEqual(encodeDescribeStatement(name), serialize.describe({ type: 'S', name }));
      assert.deepEqual(encodeCloseStatement(name), serialize.close({ type: 'S', name }));
    });
  }

  it('Bind with another statement name keeps portal, formats and values byte for byte', () => {
    const values = ['1', null, 'tëxt', Buffer.from([0, 1, 2])];
    const original = serialize.bind({ portal: 'p1', statement: 'mine', values, valueMapper: (v) => v as string | null });
    const want = serialize.bind({ portal: 'p1', statement: 'pgw_abc', values, valueMapper: (v) => v as string | null });
    assert.deepEqual(encodeBindWithStatement(body(original), 'pgw_abc'), want);
    assert.deepEqual(encodeBindWithStatement(body(serialize.bind({ statement: 'a' })), 'a_much_longer_name'), serialize.bind({ statement: 'a_much_longer_name' }));
  });

  it('constant frames', () => {
    assert.deepEqual(TERMINATE, serialize.end());
    assert.deepEqual(DISCARD_ALL, serialize.query('DISCARD ALL'));
    assert.deepEqual(PARSE_COMPLETE, Buffer.from([0x31, 0, 0, 0, 4]));
    assert.deepEqual(CLOSE_COMPLETE, Buffer.from([0x33, 0, 0, 0, 4]));
  });
});

describe('extended-query decoders: a name, or null where the message passes as it is', () => {
  it('Parse: named, unnamed, unterminated', () => {
    const named = decodeParseName(body(serialize.parse({ name: 'é1', text: 'SELECT 1', types: [] })));
    assert.equal(named?.name, 'é1');
    assert.deepEqual(named?.definition, Buffer.from('SELECT 1\0\0\0'));
    assert.equal(decodeParseName(body(serialize.parse({ name: '', text: 'SELECT 1', types: [] }))), null);
    assert.equal(decodeParseName(Buffer.from('no terminator')), null);
  });

  it('Bind: the statement, not the portal; null for the unnamed statement or a short body', () => {
    assert.equal(decodeBindStatementName(body(serialize.bind({ portal: 'p', statement: 's' }))), 's');
    assert.equal(decodeBindStatementName(body(serialize.bind({ portal: 'p', statement: '' }))), null);
    assert.equal(decodeBindStatementName(Buffer.from('p\0s')), null);
    assert.equal(decodeBindStatementName(Buffer.from('p')), null);
  });

  it('Describe and Close: statements only', () => {
    assert.equal(decodeStatementTarget(body(serialize.describe({ type: 'S', name: 's1' }))), 's1');
    assert.equal(decodeStatementTarget(body(serialize.close({ type: 'S', name: 's1' }))), 's1');
    assert.equal(decodeStatementTarget(body(serialize.describe({ type: 'P', name: 's1' }))), null);
    assert.equal(decodeStatementTarget(body(serialize.describe({ type: 'S', name: '' }))), null);
    assert.equal(decodeStatementTarget(Buffer.alloc(0)), null);
  });
});

describe('ErrorResponse around a server body', () => {
  it('frames the fields unchanged, as a copy', () => {
    const fields = Buffer.from('SFATAL\0VFATAL\0C3D000\0Mdatabase "x" does not exist\0\0');
    const frame = encodeErrorResponseBody(fields);
    assert.equal(frame[0], 0x45);
    assert.equal(frame.readUInt32BE(1), 4 + fields.length);
    assert.deepEqual(frame.subarray(5), fields);
    assert.equal(readErrorField(frame.subarray(5), ErrorField.Code), '3D000');
    fields.fill(0);
    assert.equal(readErrorField(frame.subarray(5), ErrorField.Code), '3D000', 'the frame outlives the chunk it came from');
  });
});
