/**
 * SCRAM-SHA-256 as the proxy speaks it: RFC 7677's test vector replayed through the server side,
 * PostgreSQL's error codes and texts for every malformed message, channel binding, the mock
 * verifier that hides unknown users, and the client side used towards tenant servers.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { PgError } from '../../src/errors.js';
import { pooledRandomBytes } from '../../src/auth/random.js';
import {
  formatScramVerifier,
  makeScramVerifier,
  mockVerifier,
  parseScramVerifier,
  saslprep,
  ScramClientExchange,
  ScramServerExchange,
  SCRAM_SHA_256,
  SCRAM_SHA_256_PLUS,
  type ExchangeResult,
  type ScramVerifier,
} from '../../src/auth/scram.js';

/** RFC 7677 §3. */
const RFC = {
  user: 'user',
  password: 'pencil',
  clientFirst: 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO',
  serverNonce: '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0',
  salt: Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64'),
  iterations: 4096,
  serverFirst: 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
  clientFinal: 'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
} as const;
const RFC_NONCE = 'rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0';
const AUTH_FAILED = 'password authentication failed for user "user"';

async function rfcVerifier(): Promise<ScramVerifier> {
  const v = parseScramVerifier(await makeScramVerifier(RFC.password, RFC.iterations, RFC.salt));
  assert.ok(v !== undefined);
  return v;
}

/** Client proof computed independently of src/ (RFC 5802 §3), for messages the RFC does not list. */
function clientProof(password: string, salt: Buffer, iterations: number, authMessage: string): string {
  const salted = pbkdf2Sync(password, salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const sig = createHmac('sha256', storedKey).update(authMessage).digest();
  const proof = Buffer.alloc(32);
  for (let i = 0; i < 32; i++) proof[i] = clientKey[i]! ^ sig[i]!;
  return proof.toString('base64');
}

/** Runs client-first and a client-final built with the right proof for the given `c=` value. */
function finishWithProof(server: ScramServerExchange, mechanism: string, clientFirst: string, cAttr: string, nonceOverride?: string): ExchangeResult {
  const serverFirst = server.clientFirst(mechanism, Buffer.from(clientFirst)).toString('utf8');
  const nonce = nonceOverride ?? /^r=([^,]+)/.exec(serverFirst)![1]!;
  const bare = clientFirst.slice(clientFirst.indexOf('n='));
  const withoutProof = `c=${cAttr},r=${nonce}`;
  const proof = clientProof(RFC.password, RFC.salt, RFC.iterations, `${bare},${serverFirst},${withoutProof}`);
  return server.clientFinal(Buffer.from(`${withoutProof},p=${proof}`));
}

interface Expected {
  sqlstate: string;
  message: string | RegExp;
  detail?: string;
}

function assertPgError(err: unknown, e: Expected): void {
  assert.ok(err instanceof PgError, `expected PgError, got ${String(err)}`);
  assert.equal(err.sqlstate, e.sqlstate);
  if (typeof e.message === 'string') assert.equal(err.message, e.message);
  else assert.match(err.message, e.message);
  if (e.detail !== undefined) assert.equal(err.detail, e.detail);
}

function assertThrowsPg(fn: () => unknown, e: Expected): void {
  assert.throws(fn, (err: unknown) => {
    assertPgError(err, e);
    return true;
  });
}

function assertFailed(result: ExchangeResult, e: Expected): PgError {
  assert.equal(result.ok, false, 'exchange must fail');
  if (result.ok) throw new Error('unreachable');
  assertPgError(result.error, e);
  return result.error;
}

describe('RFC 7677 test vector through ScramServerExchange', () => {
  it('produces the RFC server-first, accepts the RFC proof and signs with the RFC server-final', async () => {
    const server = new ScramServerExchange(await rfcVerifier(), null, RFC.user, null, RFC.serverNonce);
    const serverFirst = server.clientFirst(SCRAM_SHA_256, Buffer.from(RFC.clientFirst));
    assert.equal(serverFirst.toString('utf8'), RFC.serverFirst);
    const result = server.clientFinal(Buffer.from(RFC.clientFinal));
    assert.ok(result.ok, result.ok ? '' : result.error.message);
    assert.equal(result.serverFinal.toString('utf8'), RFC.serverFinal);
    assert.equal(server.usedChannelBinding, false);
  });

  it('rejects a wrong proof with 28P01 and PostgreSQL\'s text', async () => {
    const server = new ScramServerExchange(await rfcVerifier(), null, RFC.user, null, RFC.serverNonce);
    server.clientFirst(SCRAM_SHA_256, Buffer.from(RFC.clientFirst));
    const wrong = Buffer.from(RFC.clientFinal.replace('p=dHzb', 'p=dHzc'));
    const err = assertFailed(server.clientFinal(wrong), { sqlstate: '28P01', message: AUTH_FAILED });
    assert.equal(err.kind, 'auth');
    assert.equal(err.severity, 'FATAL');
  });

  it('fails a real verifier with failReason set with the same 28P01, even with the right proof', async () => {
    const server = new ScramServerExchange(await rfcVerifier(), 'tenant_disabled', RFC.user, null, RFC.serverNonce);
    assert.equal(server.clientFirst(SCRAM_SHA_256, Buffer.from(RFC.clientFirst)).toString('utf8'), RFC.serverFirst);
    const err = assertFailed(server.clientFinal(Buffer.from(RFC.clientFinal)), { sqlstate: '28P01', message: AUTH_FAILED });
    assert.equal(err.reason, 'tenant_disabled', 'the real reason is for the audit log');
  });

  it('fails a mock verifier (unknown user) with the same 28P01 text as a wrong password', () => {
    const mock = mockVerifier(Buffer.from('mock-secret'), 'acme', RFC.user);
    const server = new ScramServerExchange(mock, 'unknown_user', RFC.user, null, RFC.serverNonce);
    const serverFirst = server.clientFirst(SCRAM_SHA_256, Buffer.from(RFC.clientFirst)).toString('utf8');
    assert.equal(serverFirst, `r=${RFC_NONCE},s=${mock.salt.toString('base64')},i=4096`);
    const err = assertFailed(server.clientFinal(Buffer.from(RFC.clientFinal)), { sqlstate: '28P01', message: AUTH_FAILED });
    assert.equal(err.reason, 'unknown_user');
    assert.ok(err.toFrame().equals(assertFailedFrameForWrongPassword()), 'the client sees byte-identical frames');
  });

  it('sanitizes the user name in the 28P01 text', async () => {
    const server = new ScramServerExchange(await rfcVerifier(), null, 'bad\nname\u00e9', null, RFC.serverNonce);
    server.clientFirst(SCRAM_SHA_256, Buffer.from(RFC.clientFirst));
    assertFailed(server.clientFinal(Buffer.from(RFC.clientFinal.replace('p=dHzb', 'p=dHzc'))), {
      sqlstate: '28P01',
      message: 'password authentication failed for user "bad?name?"',
    });
  });
});

function assertFailedFrameForWrongPassword(): Buffer {
  return new PgError('28P01', AUTH_FAILED, 'auth', 'bad_password').toFrame();
}

describe('mockVerifier', () => {
  const secret = Buffer.from('0123456789abcdef0123456789abcdef');
  it('is deterministic for the same (secret, tenant, user)', () => {
    const a = mockVerifier(secret, 'acme', 'alice');
    const b = mockVerifier(Buffer.from(secret), 'acme', 'alice');
    assert.deepEqual(formatScramVerifier(a), formatScramVerifier(b));
    assert.equal(a.iterations, 4096, 'a realistic iteration count');
    assert.equal(a.salt.length, 16);
  });
  it('differs across users, tenants and secrets', () => {
    const base = mockVerifier(secret, 'acme', 'alice');
    for (const other of [
      mockVerifier(secret, 'acme', 'bob'),
      mockVerifier(secret, 'globex', 'alice'),
      mockVerifier(Buffer.from('another-secret'), 'acme', 'alice'),
      // The separator keeps ("ac", "me\0alice") apart from ("acme", "alice").
      mockVerifier(secret, 'acm', 'e\0alice'),
    ]) {
      assert.ok(!other.salt.equals(base.salt));
      assert.ok(!other.storedKey.equals(base.storedKey));
    }
  });
  it('round-trips through the verifier format', () => {
    const v = mockVerifier(secret, 'acme', 'alice');
    assert.deepEqual(parseScramVerifier(formatScramVerifier(v)), { iterations: v.iterations, salt: v.salt, storedKey: v.storedKey, serverKey: v.serverKey });
  });
});

/** Runs a full client ↔ server exchange and returns the server's result. */
async function roundTrip(client: ScramClientExchange, server: ScramServerExchange): Promise<ExchangeResult> {
  const serverFirst = server.clientFirst(SCRAM_SHA_256, Buffer.from(client.clientFirst()));
  const clientFinal = await client.serverFirst(serverFirst.toString('utf8'));
  const result = server.clientFinal(Buffer.from(clientFinal));
  if (result.ok) client.serverFinal(result.serverFinal.toString('utf8'));
  return result;
}

describe('ScramClientExchange against ScramServerExchange', () => {
  it('round-trips with a password, and then with the ClientKey the server recovered (pass-through)', async () => {
    const verifier = parseScramVerifier(await makeScramVerifier('s3cret pass', 4096));
    assert.ok(verifier !== undefined);
    const first = await roundTrip(new ScramClientExchange({ kind: 'password', password: 's3cret pass' }), new ScramServerExchange(verifier, null, 'alice', null));
    assert.ok(first.ok, first.ok ? '' : first.error.message);

    const passThrough = new ScramClientExchange({ kind: 'client_key', clientKey: first.clientKey, verifier });
    const second = await roundTrip(passThrough, new ScramServerExchange(verifier, null, 'alice', null));
    assert.ok(second.ok, second.ok ? '' : second.error.message);
    assert.ok(second.clientKey.equals(first.clientKey));
  });

  it('the recovered ClientKey has its own 32-byte backing store (a session keeps it: a pool slice would pin an 8 KiB slab)', async () => {
    const verifier = parseScramVerifier(await makeScramVerifier('s3cret pass', 4096));
    assert.ok(verifier !== undefined);
    const result = await roundTrip(new ScramClientExchange({ kind: 'password', password: 's3cret pass' }), new ScramServerExchange(verifier, null, 'alice', null));
    assert.ok(result.ok, result.ok ? '' : result.error.message);
    assert.equal(result.clientKey.length, 32);
    assert.equal(result.clientKey.buffer.byteLength, 32);
  });

  it('a wrong password fails at the server with 28P01', async () => {
    const verifier = parseScramVerifier(await makeScramVerifier('right', 4096));
    assert.ok(verifier !== undefined);
    const result = await roundTrip(new ScramClientExchange({ kind: 'password', password: 'wrong' }), new ScramServerExchange(verifier, null, 'alice', null));
    assertFailed(result, { sqlstate: '28P01', message: 'password authentication failed for user "alice"' });
  });

  it('pass-through refuses a server whose verifier has a different salt', async () => {
    const verifier = parseScramVerifier(await makeScramVerifier('pw', 4096, Buffer.alloc(16, 1)));
    const other = parseScramVerifier(await makeScramVerifier('pw', 4096, Buffer.alloc(16, 2)));
    assert.ok(verifier !== undefined && other !== undefined);
    const client = new ScramClientExchange({ kind: 'client_key', clientKey: randomBytes(32), verifier });
    const server = new ScramServerExchange(other, null, 'alice', null);
    const serverFirst = server.clientFirst(SCRAM_SHA_256, Buffer.from(client.clientFirst()));
    await assert.rejects(client.serverFirst(serverFirst.toString('utf8')), /verifier differs/);
  });

  function clientNonceOf(client: ScramClientExchange): string {
    const m = /,r=([^,]+)$/.exec(client.clientFirst());
    assert.ok(m !== null);
    return m[1]!;
  }
  const salt = RFC.salt.toString('base64');

  it('refuses a server nonce that does not extend its own', async () => {
    const client = new ScramClientExchange({ kind: 'password', password: 'pw' });
    const nonce = clientNonceOf(client);
    await assert.rejects(client.serverFirst(`r=X${nonce.slice(1)}abc,s=${salt},i=4096`), /nonce/);
    const client2 = new ScramClientExchange({ kind: 'password', password: 'pw' });
    const nonce2 = clientNonceOf(client2);
    await assert.rejects(client2.serverFirst(`r=${nonce2},s=${salt},i=4096`), /nonce/, 'the server must add its part');
  });

  it('refuses an iteration count of 2^31', async () => {
    const client = new ScramClientExchange({ kind: 'password', password: 'pw' });
    const nonce = clientNonceOf(client);
    await assert.rejects(client.serverFirst(`r=${nonce}srv,s=${salt},i=2147483648`), /iteration/);
  });

  it('refuses a wrong server signature', async () => {
    const verifier = parseScramVerifier(await makeScramVerifier('pw', 4096));
    assert.ok(verifier !== undefined);
    const client = new ScramClientExchange({ kind: 'password', password: 'pw' });
    const server = new ScramServerExchange(verifier, null, 'alice', null);
    const serverFirst = server.clientFirst(SCRAM_SHA_256, Buffer.from(client.clientFirst()));
    const result = server.clientFinal(Buffer.from(await client.serverFirst(serverFirst.toString('utf8'))));
    assert.ok(result.ok);
    const sig = Buffer.from(result.serverFinal.toString('utf8').slice(2), 'base64');
    sig[0] = sig[0]! ^ 1;
    assert.throws(() => client.serverFinal(`v=${sig.toString('base64')}`), /signature/);
    assert.throws(() => client.serverFinal('e=invalid-proof'), /error/);
    client.serverFinal(result.serverFinal.toString('utf8')); // the genuine one still passes
  });
});

describe('channel binding (tls-server-end-point)', () => {
  const B = createHash('sha256').update('our certificate').digest();
  const gs2 = 'p=tls-server-end-point,,';
  const plusFirst = `${gs2}n=user,r=clientnonce123`;

  it('PLUS with the right binding data succeeds', async () => {
    const server = new ScramServerExchange(await rfcVerifier(), null, RFC.user, B);
    const result = finishWithProof(server, SCRAM_SHA_256_PLUS, plusFirst, Buffer.concat([Buffer.from(gs2), B]).toString('base64'));
    assert.ok(result.ok, result.ok ? '' : result.error.message);
    assert.equal(server.usedChannelBinding, true);
  });

  it('PLUS with other binding data fails with 28000, even with a valid proof', async () => {
    const server = new ScramServerExchange(await rfcVerifier(), null, RFC.user, B);
    const other = Buffer.from(B);
    other[0] = other[0]! ^ 0xff;
    const result = finishWithProof(server, SCRAM_SHA_256_PLUS, plusFirst, Buffer.concat([Buffer.from(gs2), other]).toString('base64'));
    assertFailed(result, { sqlstate: '28000', message: 'SCRAM channel binding check failed' });
  });

  it('PLUS is not a valid mechanism without TLS', async () => {
    const server = new ScramServerExchange(await rfcVerifier(), null, RFC.user, null);
    assertThrowsPg(() => server.clientFirst(SCRAM_SHA_256_PLUS, Buffer.from(plusFirst)), {
      sqlstate: '08P01',
      message: 'client selected an invalid SASL authentication mechanism',
    });
  });

  it('flag "y" while binding is available is a downgrade: 28000 (A8)', async () => {
    const server = new ScramServerExchange(await rfcVerifier(), null, RFC.user, B);
    assertThrowsPg(() => server.clientFirst(SCRAM_SHA_256, Buffer.from('y,,n=user,r=abc')), {
      sqlstate: '28000',
      message: 'SCRAM channel binding negotiation error',
      detail: 'The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.',
    });
  });

  it('flag "y" without TLS is accepted (c=eSws)', async () => {
    const server = new ScramServerExchange(await rfcVerifier(), null, RFC.user, null);
    const result = finishWithProof(server, SCRAM_SHA_256, 'y,,n=user,r=abc', Buffer.from('y,,').toString('base64'));
    assert.ok(result.ok);
  });

  it('PLUS with flag "n" is malformed (08P01)', async () => {
    const server = new ScramServerExchange(await rfcVerifier(), null, RFC.user, B);
    assertThrowsPg(() => server.clientFirst(SCRAM_SHA_256_PLUS, Buffer.from('n,,n=user,r=abc')), {
      sqlstate: '08P01',
      message: 'malformed SCRAM message',
      detail: 'The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.',
    });
  });

  it('an unsupported channel-binding type is 08P01', async () => {
    const server = new ScramServerExchange(await rfcVerifier(), null, RFC.user, B);
    assertThrowsPg(() => server.clientFirst(SCRAM_SHA_256_PLUS, Buffer.from('p=tls-unique,,n=user,r=abc')), {
      sqlstate: '08P01',
      message: 'unsupported SCRAM channel-binding type "tls-unique"',
    });
  });

  it('a c= that does not repeat the gs2 header is 08P01 without PLUS', async () => {
    const server = new ScramServerExchange(await rfcVerifier(), null, RFC.user, B);
    const result = (): ExchangeResult => finishWithProof(server, SCRAM_SHA_256, 'n,,n=user,r=abc', Buffer.from('y,,').toString('base64'));
    assertThrowsPg(result, { sqlstate: '08P01', message: 'unexpected SCRAM channel-binding attribute in client-final-message' });
  });
});

describe('malformed client messages (PostgreSQL codes and texts)', () => {
  async function fresh(): Promise<ScramServerExchange> {
    return new ScramServerExchange(await rfcVerifier(), null, RFC.user, null, RFC.serverNonce);
  }

  it('authzid is 0A000', async () => {
    const s = await fresh();
    assertThrowsPg(() => s.clientFirst(SCRAM_SHA_256, Buffer.from('n,a=x,n=user,r=abc')), {
      sqlstate: '0A000',
      message: 'client uses authorization identity, but it is not supported',
    });
  });

  it('a mandatory extension (m=) is 0A000', async () => {
    const s = await fresh();
    assertThrowsPg(() => s.clientFirst(SCRAM_SHA_256, Buffer.from('n,,m=ext,n=user,r=abc')), {
      sqlstate: '0A000',
      message: 'client requires an unsupported SCRAM extension',
    });
  });

  for (const [label, nonce] of [
    ['control character', 'ab\u0001c'],
    ['space', 'ab c'],
    ['non-ASCII', 'ab\u00e9c'],
    ['DEL', 'ab\u007fc'],
  ] as const) {
    it(`a nonce with a ${label} is 08P01 "non-printable characters in SCRAM nonce" (PostgreSQL's primary message)`, async () => {
      const s = await fresh();
      assertThrowsPg(() => s.clientFirst(SCRAM_SHA_256, Buffer.from(`n,,n=user,r=${nonce}`)), {
        sqlstate: '08P01',
        message: 'non-printable characters in SCRAM nonce',
      });
    });
  }

  it('a nonce byte that is not UTF-8 is non-printable too, not a length mismatch', async () => {
    const s = await fresh();
    assertThrowsPg(() => s.clientFirst(SCRAM_SHA_256, Buffer.concat([Buffer.from('n,,n=user,r=ab'), Buffer.from([0xff]), Buffer.from('c')])), {
      sqlstate: '08P01',
      message: 'non-printable characters in SCRAM nonce',
    });
  });

  it('an empty nonce is accepted, as PostgreSQL accepts it (the server nonce follows)', async () => {
    const s = await fresh();
    assert.ok(s.clientFirst(SCRAM_SHA_256, Buffer.from('n,,n=user,r=')).toString().startsWith(`r=${RFC.serverNonce},s=`));
  });

  it('a part after the nonce, or before the proof, that is not an attribute is malformed', async () => {
    const s = await fresh();
    assertThrowsPg(() => s.clientFirst(SCRAM_SHA_256, Buffer.from('n,,n=user,r=abc,junk')), { sqlstate: '08P01', message: 'malformed SCRAM message' });
    const s2 = await fresh();
    s2.clientFirst(SCRAM_SHA_256, Buffer.from(RFC.clientFirst));
    assertThrowsPg(() => s2.clientFinal(Buffer.from(RFC.clientFinal.replace(',p=', ',junk,p='))), { sqlstate: '08P01', message: 'malformed SCRAM message' });
  });

  it('an empty client-first is malformed', async () => {
    const s = await fresh();
    assertThrowsPg(() => s.clientFirst(SCRAM_SHA_256, Buffer.alloc(0)), { sqlstate: '08P01', message: 'malformed SCRAM message', detail: 'The message is empty.' });
    const s2 = await fresh();
    assertThrowsPg(() => s2.clientFirst(SCRAM_SHA_256, null), { sqlstate: '08P01', message: 'malformed SCRAM message', detail: 'The message is empty.' });
  });

  it('an embedded NUL is malformed', async () => {
    const s = await fresh();
    assertThrowsPg(() => s.clientFirst(SCRAM_SHA_256, Buffer.from('n,,n=user,r=abc\0def')), {
      sqlstate: '08P01',
      message: 'malformed SCRAM message',
      detail: 'Message length does not match input length.',
    });
  });

  it('garbage after the proof is malformed', async () => {
    const s = await fresh();
    s.clientFirst(SCRAM_SHA_256, Buffer.from(RFC.clientFirst));
    assertThrowsPg(() => s.clientFinal(Buffer.from(`${RFC.clientFinal},x=junk`)), {
      sqlstate: '08P01',
      message: 'malformed SCRAM message',
      detail: 'Garbage found at the end of client-final-message.',
    });
  });

  it('a proof of the wrong size is malformed', async () => {
    const s = await fresh();
    s.clientFirst(SCRAM_SHA_256, Buffer.from(RFC.clientFirst));
    assertThrowsPg(() => s.clientFinal(Buffer.from(`c=biws,r=${RFC_NONCE},p=${Buffer.alloc(16).toString('base64')}`)), {
      sqlstate: '08P01',
      message: 'malformed SCRAM message',
      detail: 'Malformed proof in client-final-message.',
    });
  });

  it('a nonce mismatch is 08P01 with DETAIL "Nonce does not match."', async () => {
    const s = await fresh();
    s.clientFirst(SCRAM_SHA_256, Buffer.from(RFC.clientFirst));
    const tampered = RFC.clientFinal.replace('hNlF$k0', 'hNlF$k1');
    assertThrowsPg(() => s.clientFinal(Buffer.from(tampered)), { sqlstate: '08P01', message: 'invalid SCRAM response', detail: 'Nonce does not match.' });
  });

  it('a second client-final is refused', async () => {
    const s = await fresh();
    s.clientFirst(SCRAM_SHA_256, Buffer.from(RFC.clientFirst));
    assert.ok(s.clientFinal(Buffer.from(RFC.clientFinal)).ok);
    assertThrowsPg(() => s.clientFinal(Buffer.from(RFC.clientFinal)), { sqlstate: '08P01', message: 'malformed SCRAM message' });
  });
});

describe('verifier format', () => {
  it('parses and formats PostgreSQL\'s rolpassword layout', async () => {
    const text = await makeScramVerifier(RFC.password, RFC.iterations, RFC.salt);
    assert.match(text, /^SCRAM-SHA-256\$4096:W22ZaJ0SNY7soEsUEjb6gQ==\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=$/);
    const v = parseScramVerifier(text);
    assert.ok(v !== undefined);
    assert.equal(v.iterations, 4096);
    assert.ok(v.salt.equals(RFC.salt));
    assert.equal(formatScramVerifier(v), text);
  });

  const good = `SCRAM-SHA-256$4096:${RFC.salt.toString('base64')}$${Buffer.alloc(32, 1).toString('base64')}:${Buffer.alloc(32, 2).toString('base64')}`;
  const key = Buffer.alloc(32, 1).toString('base64');
  const bad: ReadonlyArray<[string, string]> = [
    ['empty', ''],
    ['md5 verifier', 'md5' + 'a'.repeat(32)],
    ['wrong mechanism', good.replace('SCRAM-SHA-256', 'SCRAM-SHA-1')],
    ['zero iterations', good.replace('$4096:', '$0:')],
    ['iterations above 2^31-1', good.replace('$4096:', '$2147483648:')],
    ['non-numeric iterations', good.replace('$4096:', '$40x6:')],
    ['missing server key', good.slice(0, good.lastIndexOf(':'))],
    ['salt not base64 (length)', good.replace(RFC.salt.toString('base64'), 'abc')],
    ['stored key 16 bytes', `SCRAM-SHA-256$4096:${RFC.salt.toString('base64')}$${Buffer.alloc(16).toString('base64')}:${key}`],
    ['server key 33 bytes', `SCRAM-SHA-256$4096:${RFC.salt.toString('base64')}$${key}:${Buffer.alloc(33).toString('base64')}`],
    ['trailing text', `${good} `],
    ['padding in the middle', good.replace(RFC.salt.toString('base64'), 'W2=ZaJ0SNY7soEsUEjb6gQ==')],
  ];
  it('accepts the well-formed sample', () => {
    assert.ok(parseScramVerifier(good) !== undefined);
  });
  for (const [label, text] of bad) {
    it(`rejects ${label}`, () => {
      assert.equal(parseScramVerifier(text), undefined);
    });
  }
});

describe('saslprep', () => {
  it('leaves printable ASCII alone', () => {
    assert.ok(saslprep('pencil ~!').equals(Buffer.from('pencil ~!')));
  });
  it('maps non-ASCII spaces, drops soft hyphens, applies NFKC (RFC 4013 §3 examples)', () => {
    assert.equal(saslprep('I\u00adX').toString('utf8'), 'IX');
    assert.equal(saslprep('\u00aa').toString('utf8'), 'a');
    assert.equal(saslprep('\u2168').toString('utf8'), 'IX');
    assert.equal(saslprep('a\u00a0b').toString('utf8'), 'a b');
  });
  it('uses a password with prohibited characters as raw bytes, as PostgreSQL does', () => {
    assert.ok(saslprep('\u0007\u00e9').equals(Buffer.from('\u0007\u00e9', 'utf8')));
  });
  it('a password written with NFKC-equivalent forms derives the same verifier', async () => {
    const a = await makeScramVerifier('\u2168pass', 4096, RFC.salt);
    const b = await makeScramVerifier('IXpass', 4096, RFC.salt);
    assert.equal(a, b);
  });
});

describe('server nonces from the pooled CSPRNG', () => {
  it('pooledRandomBytes gives fresh buffers of the asked size, across pool refills, and refuses more than 256 bytes', () => {
    const seen = new Set<string>();
    // 4096-byte pool: 1000 × 18 bytes crosses several refills.
    for (let i = 0; i < 1000; i++) {
      const b = pooledRandomBytes(18);
      assert.equal(b.length, 18);
      seen.add(b.toString('hex'));
    }
    assert.equal(seen.size, 1000);
    const a = pooledRandomBytes(4);
    a.fill(0); // a caller's buffer is its own: writing it does not touch the next one
    assert.equal(pooledRandomBytes(0).length, 0);
    assert.throws(() => pooledRandomBytes(257), RangeError);
  });

  it('each exchange gets its own 18-byte (24 base64 characters) server nonce', () => {
    const nonces = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const server = new ScramServerExchange(mockVerifier(Buffer.alloc(32), 't', 'u'), null, 'u', null);
      const first = server.clientFirst(SCRAM_SHA_256, Buffer.from('n,,n=,r=abc')).toString();
      const nonce = /^r=abc([^,]+),/.exec(first)![1]!;
      assert.equal(nonce.length, 24);
      nonces.add(nonce);
    }
    assert.equal(nonces.size, 200);
  });
});
