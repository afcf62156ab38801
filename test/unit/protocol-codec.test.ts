/**
 * The byte-level codecs of src/protocol: decoders for what clients send (frontend.ts) and
 * encoders for what we send (backend.ts), checked against hand-written bytes from the
 * protocol documentation and PostgreSQL's startup-packet rules.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  decodeFirstMessage,
  decodePasswordMessage,
  decodeSASLInitialResponse,
  decodeStartupParams,
  encodeCancelRequest,
  encodeStartupMessage,
  ProtocolFormatError,
  SASLInitialResponseError,
  SSL_REQUEST,
} from '../../src/protocol/frontend.js';
import {
  AUTHENTICATION_OK,
  decodeParameterStatus,
  encodeAuthenticationSASL,
  encodeAuthenticationSASLContinue,
  encodeAuthenticationSASLFinal,
  encodeBackendKeyData,
  encodeErrorResponse,
  encodeGreeting,
  encodeNegotiateProtocolVersion,
  encodeParameterStatus,
  encodeReadyForQuery,
  READY_FOR_QUERY_IDLE,
  readErrorField,
} from '../../src/protocol/backend.js';
import { TxStatus } from '../../src/protocol/codes.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
/** Body of an untyped message: everything after the length word. */
const untypedBody = (msg: Buffer): Buffer => {
  assert.equal(msg.readUInt32BE(0), msg.length, 'length word counts the whole message');
  return msg.subarray(4);
};
/** Checks a typed frame's length word and returns its body. */
const typedBody = (frame: Buffer, type: string): Buffer => {
  assert.equal(frame[0], type.charCodeAt(0), `type ${type}`);
  assert.equal(frame.readUInt32BE(1), frame.length - 1, 'length word counts itself and the body');
  return frame.subarray(5);
};
const isFormatError = (err: unknown): boolean => err instanceof ProtocolFormatError;

describe('decodeFirstMessage', () => {
  it('SSLRequest and GSSENCRequest', () => {
    assert.deepEqual(decodeFirstMessage(untypedBody(SSL_REQUEST)), { kind: 'ssl_request' });
    assert.deepEqual(decodeFirstMessage(hex('04d2 1630')), { kind: 'gssenc_request' });
  });

  it('SSLRequest and GSSENCRequest go by the code alone, as in PostgreSQL: bytes after it are ignored', () => {
    assert.deepEqual(decodeFirstMessage(hex('04d2162f 00000000')), { kind: 'ssl_request' });
    assert.deepEqual(decodeFirstMessage(Buffer.concat([hex('04d21630'), Buffer.from('user\0app\0\0')])), { kind: 'gssenc_request' });
  });

  it('CancelRequest with a 4-byte key', () => {
    const msg = decodeFirstMessage(hex('04d2162e 000004d2 01020304'));
    assert.deepEqual(msg, { kind: 'cancel', processId: 1234, secretKey: hex('01020304') });
  });

  it('CancelRequest shorter than a 4-byte key or longer than 256 bytes of key is refused', () => {
    assert.throws(() => decodeFirstMessage(hex('04d2162e 000004d2 010203')), isFormatError);
    assert.throws(() => decodeFirstMessage(Buffer.concat([hex('04d2162e 000004d2'), Buffer.alloc(257)])), isFormatError);
  });

  it('a startup message with parameters and _pq_ options', () => {
    const body = Buffer.concat([hex('00030000'), Buffer.from('user\0alice\0database\0app\0_pq_.x\0y\0\0')]);
    const msg = decodeFirstMessage(body);
    assert.equal(msg.kind, 'startup');
    if (msg.kind !== 'startup') return;
    assert.equal(msg.major, 3);
    assert.equal(msg.minor, 0);
    assert.deepEqual(Object.fromEntries(msg.params), { user: 'alice', database: 'app' });
    assert.deepEqual(msg.unknownProtocolOptions, ['_pq_.x']);
  });

  it('protocol 3.2 is a startup with minor 2; 2.0 is unsupported', () => {
    const m32 = decodeFirstMessage(Buffer.concat([hex('00030002'), Buffer.from('user\0a\0\0')]));
    assert.equal(m32.kind === 'startup' ? m32.minor : -1, 2);
    assert.deepEqual(decodeFirstMessage(hex('00020000 00')), { kind: 'unsupported_version', major: 2, minor: 0 });
  });
});

describe('decodeStartupParams (PostgreSQL\'s layout rules)', () => {
  it('later duplicates win', () => {
    assert.equal(decodeStartupParams(Buffer.from('user\0a\0user\0b\0\0')).params.get('user'), 'b');
  });

  it('an empty list is just the terminator', () => {
    assert.equal(decodeStartupParams(Buffer.from([0])).params.size, 0);
  });

  for (const [label, text] of [
    ['empty', ''],
    ['no final terminator', 'user\0alice\0'],
    ['name without value', 'user\0\0'],
    ['no NUL at all', 'user'],
    ['trailing byte after the terminator', 'user\0a\0\0x'],
  ] as const) {
    it(`refuses: ${label}`, () => {
      assert.throws(() => decodeStartupParams(Buffer.from(text)), isFormatError);
    });
  }

  it('an empty parameter name ends the list, as in PostgreSQL, so bytes after it are a layout error', () => {
    // PostgreSQL's ProcessStartupPacket stops at an empty name and then requires it to be the last byte.
    assert.throws(() => decodeStartupParams(Buffer.from('\0x\0\0')), isFormatError);
  });
});

describe('encodeStartupMessage / encodeCancelRequest (towards the tenant server)', () => {
  it('a startup message round-trips, lengths counted in bytes', () => {
    const params = new Map([
      ['user', 'ålice'],
      ['database', 'データ'],
      ['application_name', 'x y'],
    ]);
    const msg = encodeStartupMessage(params);
    const decoded = decodeFirstMessage(untypedBody(msg));
    assert.equal(decoded.kind, 'startup');
    if (decoded.kind !== 'startup') return;
    assert.deepEqual(decoded.params, params);
    assert.equal(decoded.major, 3);
    assert.equal(decoded.minor, 0);
  });

  it('a CancelRequest carries the process id and the whole secret key (16 bytes for a 4-byte key)', () => {
    const key = hex('01020304');
    const msg = encodeCancelRequest(1234, key);
    assert.ok(msg.equals(hex('00000010 04d2162e 000004d2 01020304')), `got ${msg.toString('hex')}`);
    assert.deepEqual(decodeFirstMessage(untypedBody(msg)), { kind: 'cancel', processId: 1234, secretKey: key });
  });

  it('a CancelRequest with a long (protocol 3.2) key round-trips', () => {
    const key = Buffer.alloc(32, 7);
    const msg = encodeCancelRequest(0x7fffffff, key);
    assert.equal(msg.length, 12 + key.length);
    assert.deepEqual(decodeFirstMessage(untypedBody(msg)), { kind: 'cancel', processId: 0x7fffffff, secretKey: key });
  });

  it('SSL_REQUEST is the 8-byte request', () => {
    assert.ok(SSL_REQUEST.equals(hex('00000008 04d2162f')));
  });
});

describe('SASL and password bodies', () => {
  it('SASLInitialResponse with data, and with -1 (no data)', () => {
    const body = Buffer.concat([Buffer.from('SCRAM-SHA-256\0'), hex('00000005'), Buffer.from('n,,ab')]);
    const r = decodeSASLInitialResponse(body);
    assert.equal(r.mechanism, 'SCRAM-SHA-256');
    assert.equal(r.data?.toString(), 'n,,ab');
    assert.deepEqual(decodeSASLInitialResponse(Buffer.concat([Buffer.from('X\0'), hex('ffffffff')])), { mechanism: 'X', data: null });
  });

  // PostgreSQL's texts (checked against PostgreSQL 15 by test/integration/differential.test.ts).
  for (const [label, body, message] of [
    ['no NUL after the mechanism', Buffer.from('SCRAM-SHA-256'), 'invalid string in message'],
    ['no length word', Buffer.from('SCRAM-SHA-256\0\0\0'), 'insufficient data left in message'],
    ['length larger than the data', Buffer.concat([Buffer.from('M\0'), hex('00000006'), Buffer.from('abc')]), 'insufficient data left in message'],
    ['length smaller than the data', Buffer.concat([Buffer.from('M\0'), hex('00000001'), Buffer.from('abc')]), 'invalid message format'],
    ['negative length other than -1', Buffer.concat([Buffer.from('M\0'), hex('fffffffe')]), 'insufficient data left in message'],
    ['-1 followed by data', Buffer.concat([Buffer.from('M\0'), hex('ffffffff'), Buffer.from('x')]), 'invalid message format'],
  ] as const) {
    it(`SASLInitialResponse refused: ${label} (${message})`, () => {
      assert.throws(
        () => decodeSASLInitialResponse(body),
        (err: unknown) => isFormatError(err) && (err as Error).message === message,
      );
    });
  }

  it('SASLInitialResponse refused: the error carries the mechanism read before the fault (PostgreSQL checks it first)', () => {
    assert.throws(
      () => decodeSASLInitialResponse(Buffer.from('SCRAM-SHA-1\0')),
      (err: unknown) => err instanceof SASLInitialResponseError && err.mechanism === 'SCRAM-SHA-1',
    );
    assert.throws(
      () => decodeSASLInitialResponse(Buffer.from('SCRAM-SHA-1')),
      (err: unknown) => err instanceof SASLInitialResponseError && err.mechanism === null,
    );
  });

  it('PasswordMessage: one NUL-terminated string filling the body', () => {
    assert.equal(decodePasswordMessage(Buffer.from('token\0')).toString(), 'token');
    assert.throws(() => decodePasswordMessage(Buffer.from('token')), isFormatError);
    assert.throws(() => decodePasswordMessage(Buffer.from('tok\0en\0')), isFormatError);
  });
});

describe('backend encoders', () => {
  it('AuthenticationOk and ReadyForQuery are the documented bytes', () => {
    assert.ok(AUTHENTICATION_OK.equals(hex('52 00000008 00000000')));
    assert.ok(READY_FOR_QUERY_IDLE.equals(hex('5a 00000005 49')));
    assert.ok(encodeReadyForQuery(TxStatus.Failed).equals(hex('5a 00000005 45')));
  });

  it('AuthenticationSASL lists mechanisms, PLUS first, then an empty terminator', () => {
    const f = encodeAuthenticationSASL(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']);
    const body = typedBody(f, 'R');
    assert.equal(body.readUInt32BE(0), 10);
    assert.equal(body.subarray(4).toString(), 'SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0');
  });

  it('SASLContinue and SASLFinal carry the data verbatim', () => {
    const data = Buffer.from('r=abc,s=c2FsdA==,i=4096');
    const c = typedBody(encodeAuthenticationSASLContinue(data), 'R');
    assert.equal(c.readUInt32BE(0), 11);
    assert.ok(c.subarray(4).equals(data));
    const f = typedBody(encodeAuthenticationSASLFinal(Buffer.from('v=xyz')), 'R');
    assert.equal(f.readUInt32BE(0), 12);
    assert.equal(f.subarray(4).toString(), 'v=xyz');
  });

  it('BackendKeyData', () => {
    assert.ok(encodeBackendKeyData(1234, hex('01020304')).equals(hex('4b 0000000c 000004d2 01020304')));
  });

  it('the greeting is one buffer: SASLFinal, AuthenticationOk, ParameterStatus in map order, BackendKeyData, ReadyForQuery', () => {
    const parameters = new Map([['server_version', '15.8'], ['application_name', 'ünïcødé ✓'], ['TimeZone', 'UTC']]);
    const frames = (saslFinal: Buffer | null, txStatus: typeof TxStatus.Idle | typeof TxStatus.InTransaction): Buffer =>
      Buffer.concat([
        ...(saslFinal === null ? [] : [encodeAuthenticationSASLFinal(saslFinal)]),
        AUTHENTICATION_OK,
        ...[...parameters].map(([n, v]) => encodeParameterStatus(n, v)),
        encodeBackendKeyData(0x8000_0001, hex('01020304')),
        encodeReadyForQuery(txStatus),
      ]);
    const sasl = Buffer.from('v=c2lnbmF0dXJl');
    // Twice each: the second use of the same map takes its ParameterStatus block from the cache.
    for (let i = 0; i < 2; i++) {
      assert.ok(encodeGreeting({ saslFinal: sasl, parameters, processId: 0x8000_0001, secretKey: hex('01020304'), txStatus: TxStatus.Idle }).equals(frames(sasl, TxStatus.Idle)));
      assert.ok(encodeGreeting({ saslFinal: null, parameters, processId: 0x8000_0001, secretKey: hex('01020304'), txStatus: TxStatus.InTransaction }).equals(frames(null, TxStatus.InTransaction)));
    }
    assert.ok(encodeGreeting({ saslFinal: null, parameters: new Map(), processId: 7, secretKey: hex('0a0b0c0d'), txStatus: TxStatus.Idle }).equals(Buffer.concat([AUTHENTICATION_OK, encodeBackendKeyData(7, hex('0a0b0c0d')), READY_FOR_QUERY_IDLE])));
  });

  it('ParameterStatus counts bytes, not characters, and round-trips', () => {
    const f = encodeParameterStatus('application_name', 'ünïcødé ✓');
    const p = decodeParameterStatus(typedBody(f, 'S'));
    assert.deepEqual(p, { name: 'application_name', value: 'ünïcødé ✓' });
  });

  it('decodeParameterStatus refuses malformed bodies', () => {
    assert.equal(decodeParameterStatus(Buffer.from('name')), null);
    assert.equal(decodeParameterStatus(Buffer.from('name\0value')), null);
    assert.equal(decodeParameterStatus(Buffer.from('name\0value\0extra')), null);
  });

  it('NegotiateProtocolVersion: the newest version as a whole number (3.0 = 196608), count, then the option names', () => {
    const body = typedBody(encodeNegotiateProtocolVersion(['_pq_.a', '_pq_.b']), 'v');
    assert.equal(body.readUInt32BE(0), 0x00030000);
    assert.equal(body.readUInt32BE(4), 2);
    assert.equal(body.subarray(8).toString(), '_pq_.a\0_pq_.b\0');
  });

  it('ErrorResponse counts bytes of non-ASCII text', () => {
    const f = encodeErrorResponse({ severity: 'FATAL', code: '28P01', message: 'für ✓', detail: 'd', hint: 'h' });
    const body = typedBody(f, 'E');
    assert.equal(readErrorField(body, 0x4d), 'für ✓');
    assert.equal(readErrorField(body, 0x44), 'd');
    assert.equal(readErrorField(body, 0x48), 'h');
    assert.equal(readErrorField(body, 0x50), undefined);
  });

  it('readErrorField tolerates hostile bodies (no SQLSTATE, no terminators)', () => {
    assert.equal(readErrorField(Buffer.alloc(0), 0x43), undefined);
    assert.equal(readErrorField(Buffer.from('SFATAL'), 0x43), undefined);
    assert.equal(readErrorField(Buffer.from('SFATAL\0Mx\0\0C08P01\0'), 0x43), undefined, 'stops at the terminator');
    assert.equal(readErrorField(Buffer.from('C'), 0x43), undefined);
  });
});
