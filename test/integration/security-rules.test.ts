/**
 * SECURITY.md line by line (issue 6): the rows no other test reached through a real client and a
 * real server. Channel-binding downgrade and mismatch with a hand-made SCRAM client, a startup
 * dribbled byte by byte past the absolute deadline, smuggled startup parameters, lengths that are
 * too big or too small in each phase, and the messages PostgreSQL itself sends when a frame's
 * fields do not add up or COPY gets a stray message; an SSLRequest over the pre-auth cap, the
 * end-point hash of other certificate kinds, the final signed checkpoint, a stalled TLS handshake,
 * a tenant in the user name, and a reload that disables a tenant. (The handshake flood against
 * the pre-auth caps is in security-lines.test.ts.)
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { serialize } from 'pg-protocol';
import { exportJWK, generateKeyPair } from 'jose';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { pino } from 'pino';
import { clientConfig, configToml, connect, connectError, libpqConninfo, psql, spawnProxy, startProxy, type RunningProxy } from '../support/proxy.js';
import { generateCheckpointKey, loadPublicKey } from '../../src/audit/checkpoint.js';
import { verifyAuditFile } from '../../src/audit/verify.js';
import { readFile } from 'node:fs/promises';
import { parseConfigText } from '../../src/config/load.js';
import { Proxy } from '../../src/server.js';
import { endpointHashAlgorithm } from '../../src/net/tls.js';
import { x509 } from '../../src/net/x509.js';
import { rawLogin } from '../support/login.js';
import { Wire, decodeError, gssencRequest, sslRequest, startupMessage, typed, type WireError } from '../support/wire.js';
import { sleep, waitFor } from '../support/wait.js';

/** A SCRAM client with the gs2 header and channel-binding data under the test's control. */
async function scramAttempt(w: Wire, password: string, mech: string, gs2: string, cbData: Buffer): Promise<{ ok: boolean; error: WireError | null }> {
  const nonce = crypto.randomBytes(18).toString('base64');
  const bare = `n=,r=${nonce}`;
  w.write(serialize.sendSASLInitialResponseMessage(mech, `${gs2}${bare}`));
  for (;;) {
    const f = await w.frame();
    if (f === null) return { ok: false, error: null };
    if (f.type === 'E') return { ok: false, error: decodeError(f.body) };
    if (f.type !== 'R') continue;
    const code = f.body.readUInt32BE(0);
    if (code === 0) return { ok: true, error: null };
    if (code !== 11) continue;
    const serverFirst = f.body.toString('utf8', 4);
    const attrs = new Map(serverFirst.split(',').map((kv) => [kv[0]!, kv.slice(2)]));
    const salted = crypto.pbkdf2Sync(password, Buffer.from(attrs.get('s')!, 'base64'), Number(attrs.get('i')), 32, 'sha256');
    const clientKey = crypto.createHmac('sha256', salted).update('Client Key').digest();
    const storedKey = crypto.createHash('sha256').update(clientKey).digest();
    const withoutProof = `c=${Buffer.concat([Buffer.from(gs2), cbData]).toString('base64')},r=${attrs.get('r')}`;
    const sig = crypto.createHmac('sha256', storedKey).update(`${bare},${serverFirst},${withoutProof}`).digest();
    const proof = Buffer.from(clientKey.map((b, i) => b ^ sig[i]!));
    w.write(serialize.sendSCRAMClientFinalMessage(`${withoutProof},p=${proof.toString('base64')}`));
  }
}

/** TLS, startup as `user`, up to the server's authentication request (returned). */
async function toAuth(port: number, ca: string, user = 'app', tenant = 'acme'): Promise<{ w: Wire; code: number }> {
  const w = await Wire.connect(port);
  await w.startTls(ca, `${tenant}.pg.test`);
  w.write(startupMessage({ user, database: 'postgres' }));
  const f = await w.frame();
  assert.equal(f?.type, 'R');
  return { w, code: f.body.readUInt32BE(0) };
}

/** A frame with a declared length that does not match its body (the length is written as given). */
function withLength(type: string, length: number, body: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(5 + body.length);
  b.write(type, 0, 'latin1');
  b.writeUInt32BE(length >>> 0, 1);
  body.copy(b, 5);
  return b;
}

/** A self-signed certificate for acme.pg.test with the given key and signature algorithms, written to `dir`. */
async function selfSigned(dir: string, name: string, keyAlg: crypto.webcrypto.RsaHashedKeyGenParams | crypto.webcrypto.EcKeyGenParams | crypto.webcrypto.Algorithm, signingAlgorithm: { name: string; hash?: string }): Promise<{ certPath: string; keyPath: string; pem: string; der: Buffer }> {
  const keys = await crypto.webcrypto.subtle.generateKey(keyAlg as crypto.webcrypto.EcKeyGenParams, true, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=acme.pg.test',
    keys,
    signingAlgorithm,
    notBefore: new Date(Date.now() - 300_000),
    notAfter: new Date(Date.now() + 86_400_000),
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: 'acme.pg.test' }])],
  });
  const pem = cert.toString('pem');
  const certPath = path.join(dir, `${name}.crt`);
  const keyPath = path.join(dir, `${name}.key`);
  await writeFile(certPath, pem);
  await writeFile(keyPath, crypto.KeyObject.from(keys.privateKey).export({ type: 'pkcs8', format: 'pem' }).toString(), { mode: 0o600 });
  return { certPath, keyPath, pem, der: Buffer.from(cert.rawData) };
}

describe('SECURITY.md line by line', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  let dir: string;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-secrules-'));
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    await cluster.query('CREATE TABLE copy_target (x text)');
    await cluster.query('GRANT ALL ON copy_target TO app');
    const { publicKey } = await generateKeyPair('ES256');
    await writeFile(path.join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'k' }] }));
    rp = await startProxy({
      auditFile: path.join(dir, 'audit.jsonl'),
      server: { auth_timeout: '1s' },
      staff: { jwks: path.join(dir, 'jwks.json'), issuer: 'i', audience: 'a' },
      tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier: await readVerifier(cluster, 'app') }] }],
    });
  });

  after(async () => {
    await rp?.close();
    await cluster?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('rule 4, A8: a client that says "y" (it thinks the server cannot bind) over TLS is a downgrade: 28000', async () => {
    const { w, code } = await toAuth(rp.port, rp.certs.caCertPem);
    assert.equal(code, 10);
    const r = await scramAttempt(w, 'app-pass', 'SCRAM-SHA-256', 'y,,', Buffer.alloc(0));
    assert.equal(r.ok, false);
    assert.equal(r.error?.code, '28000');
    assert.equal(r.error?.message, 'SCRAM channel binding negotiation error');
    assert.equal(r.error?.detail, 'The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.');
    w.end();
  });

  it('rule 4, A9: binding to another certificate (a man in the middle) fails with 28000; binding to ours succeeds', async () => {
    const ours = await toAuth(rp.port, rp.certs.caCertPem);
    assert.ok(ours.w.socket instanceof tls.TLSSocket);
    // tls-server-end-point: the certificate's hash by its signature algorithm (ECDSA with SHA-256 here).
    const endPoint = crypto.createHash('sha256').update(ours.w.socket.getPeerCertificate().raw).digest();
    const good = await scramAttempt(ours.w, 'app-pass', 'SCRAM-SHA-256-PLUS', 'p=tls-server-end-point,,', endPoint);
    assert.deepEqual(good, { ok: true, error: null }, 'the control: a correct binding logs in');
    ours.w.end();

    const mitm = await toAuth(rp.port, rp.certs.caCertPem);
    const otherCert = crypto.createHash('sha256').update('a certificate the client saw from someone else').digest();
    const bad = await scramAttempt(mitm.w, 'app-pass', 'SCRAM-SHA-256-PLUS', 'p=tls-server-end-point,,', otherCert);
    assert.equal(bad.ok, false);
    assert.equal(bad.error?.code, '28000');
    assert.equal(bad.error?.message, 'SCRAM channel binding check failed');
    mitm.w.end();
  });

  it('rule 1, A11: the pre-auth deadline is absolute: a startup packet dribbled a byte every 150 ms is closed at auth_timeout, silently', async () => {
    const w = await Wire.connect(rp.port);
    const packet = startupMessage({ user: 'app', database: 'postgres', application_name: 'slowloris' });
    const t0 = Date.now();
    let sent = 0;
    while (!w.closed && sent < packet.length && Date.now() - t0 < 5000) {
      w.write(packet.subarray(sent, sent + 1));
      sent++;
      await new Promise((r) => setTimeout(r, 150));
    }
    const took = Date.now() - t0;
    assert.ok(w.closed, 'closed');
    assert.ok(sent < packet.length, `closed before the packet was complete (${sent} of ${packet.length} bytes)`);
    assert.ok(took >= 900 && took < 2500, `closed ${took} ms after connect (auth_timeout 1 s), though bytes kept coming`);
    assert.equal((await w.read(1, 100).catch(() => Buffer.alloc(0))).length, 0, 'no message: PostgreSQL closes silently inside the startup packet');
  });

  it('rule 1, A10 and S3: lengths too big or too small in the SASL, password and post-login phases get 08P01 "invalid message length"', async () => {
    const cases: [string, () => Promise<Wire>, Buffer][] = [
      ['SASL, 3', async () => (await toAuth(rp.port, rp.certs.caCertPem)).w, withLength('p', 3)],
      ['SASL, over 1 024', async () => (await toAuth(rp.port, rp.certs.caCertPem)).w, withLength('p', 1029)],
      ['staff password, 0', async () => (await toAuth(rp.port, rp.certs.caCertPem, 'staff')).w, withLength('p', 0)],
      ['staff password, over 65 535', async () => (await toAuth(rp.port, rp.certs.caCertPem, 'staff')).w, withLength('p', 65_541)],
      ['after login, 3', () => rawLogin(rp.port, rp.certs.caCertPem, { tenant: 'acme', user: 'app', password: 'app-pass' }), withLength('Q', 3)],
      ['after login, 2^32-1', () => rawLogin(rp.port, rp.certs.caCertPem, { tenant: 'acme', user: 'app', password: 'app-pass' }), withLength('Q', 0xffffffff)],
    ];
    for (const [name, open, bytes] of cases) {
      const w = await open();
      w.write(bytes);
      const e = await w.error();
      assert.deepEqual([name, e?.code, e?.message], [name, '08P01', 'invalid message length']);
      assert.ok(await w.waitClosed(), `${name}: closed`);
    }
  });

  it('A2 and S4: a wrong message during the password exchange, and fields that do not add up, get 08P01', async () => {
    const staff = (await toAuth(rp.port, rp.certs.caCertPem, 'staff')).w;
    staff.write(typed('Q', Buffer.from('select 1\0')));
    const a2 = await staff.error();
    assert.deepEqual([a2?.code, a2?.message], ['08P01', 'expected password response, got message type 81']);

    const unterminated = (await toAuth(rp.port, rp.certs.caCertPem, 'staff')).w;
    unterminated.write(typed('p', Buffer.from('a token without its NUL')));
    const s4a = await unterminated.error();
    // PostgreSQL 15's recv_password_packet text (checked against a server with `password` auth in
    // pg_hba: a body without its NUL, an empty one and two strings all get it).
    assert.deepEqual([s4a?.code, s4a?.message], ['08P01', 'invalid password packet size']);

    // SASLInitialResponse whose inner length says 500 bytes while 10 follow: PostgreSQL's pq_getmsgbytes text.
    const sasl = (await toAuth(rp.port, rp.certs.caCertPem)).w;
    const body = Buffer.concat([Buffer.from('SCRAM-SHA-256\0'), Buffer.from([0, 0, 1, 0xf4]), Buffer.from('n,,n=,r=ab')]);
    sasl.write(typed('p', body));
    const s4b = await sasl.error();
    assert.deepEqual([s4b?.code, s4b?.message], ['08P01', 'insufficient data left in message']);
  });

  it('S5: a stray message during COPY FROM STDIN gets PostgreSQL\'s 08P01, passed through, and the session goes on', async () => {
    const w = await rawLogin(rp.port, rp.certs.caCertPem, { tenant: 'acme', user: 'app', password: 'app-pass' });
    w.write(serialize.query('COPY copy_target FROM STDIN'));
    assert.equal((await w.frame())?.type, 'G');
    w.write(serialize.copyData(Buffer.from('one\n')));
    w.write(serialize.query('select 1'));
    const e = await w.error();
    assert.deepEqual([e?.code, e?.message], ['08P01', 'unexpected message type 0x51 during COPY from stdin']);
    w.end();
    assert.equal((await cluster.query<{ n: number }>('select count(*)::int as n from copy_target')).rows[0]?.n, 0, 'the COPY did not land');
  });

  it('rule 7: startup parameters cannot change who the session is: via options refused with 0A000, as plain parameters not forwarded', async () => {
    for (const name of ['session_authorization', 'role', 'is_superuser']) {
      const params = { options: `-c application_name=x -c ${name}=postgres` };
      const err = await rawLogin(rp.port, rp.certs.caCertPem, { tenant: 'acme', user: 'app', password: 'app-pass', params }).then(
        (w) => {
          w.end();
          return 'logged in';
        },
        (e: unknown) => (e as Error).message,
      );
      assert.equal(`${name}: ${err}`, `${name}: login failed: ${JSON.stringify({ severity: 'FATAL', code: '0A000', message: `parameter "${name}" cannot be set at connection time through pgwarden` })}`);
    }
    // As plain startup parameters they are not on the allow-list, so never forwarded; a value with
    // a line break reaches the server sanitized. The session is who logged in, nothing more.
    const w = await rawLogin(rp.port, rp.certs.caCertPem, {
      tenant: 'acme',
      user: 'app',
      password: 'app-pass',
      params: { session_authorization: 'postgres', role: 'postgres', is_superuser: 'on', application_name: 'x\n-c role=postgres' },
    });
    w.write(serialize.query("select current_user || ',' || session_user || ',' || current_setting('is_superuser') || ',' || current_setting('application_name') as who"));
    let who = '';
    for (;;) {
      const f: { type: string; body: Buffer } | null = await w.frame();
      assert.ok(f !== null);
      if (f.type === 'E') assert.fail(JSON.stringify(decodeError(f.body)));
      if (f.type === 'D') who = f.body.toString('utf8', 6);
      if (f.type === 'Z') break;
    }
    assert.equal(who, 'app,app,off,x?-c role=postgres');
    w.end();
  });

  it('rule 2 and N11: over the pre-auth cap an SSLRequest or GSSENCRequest is answered N, never with an ErrorResponse; the 53300 follows in plaintext', async () => {
    const cp = await startProxy({
      metrics: false,
      server: { auth_timeout: '5s', max_preauth_per_source: 1 },
      tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier: await readVerifier(cluster, 'app') }] }],
    });
    const held = await Wire.connect(cp.port);
    try {
      await waitFor(() => cp.proxy.preauth.active === 1, 3000, 'the one slot of 127.0.0.1 taken');
      for (const [name, request] of [['SSLRequest', sslRequest()], ['GSSENCRequest', gssencRequest()]] as const) {
        const w = await Wire.connect(cp.port);
        w.write(request);
        const t0 = Date.now();
        assert.equal((await w.read(1, 3000)).toString('latin1'), 'N', `${name}: the answer is one byte N (CVE-2024-10977: never an ErrorResponse)`);
        w.write(startupMessage({ user: 'app', database: 'postgres' }));
        const e = await w.error(3000);
        assert.deepEqual([name, e?.code, e?.message], [name, '53300', 'sorry, too many clients already']);
        assert.ok(await w.waitClosed(2000), `${name}: closed after the 53300`);
        assert.ok(Date.now() - t0 < 2000, `${name}: refused at once, not at the deadline`);
      }
      // A plaintext startup gets the 53300 as its first bytes, as before.
      const plain = await Wire.connect(cp.port);
      plain.write(startupMessage({ user: 'app', database: 'postgres' }));
      const e = await plain.error(3000);
      assert.deepEqual([e?.code, e?.message], ['53300', 'sorry, too many clients already']);
      // A CancelRequest gets no answer (R5), over the cap as anywhere.
      const cancel = await Wire.connect(cp.port);
      const cr = Buffer.alloc(16);
      cr.writeUInt32BE(16, 0);
      cr.writeUInt32BE(80877102, 4);
      cancel.write(cr);
      assert.ok(await cancel.waitClosed(2000), 'the CancelRequest is closed');
      assert.equal((await cancel.read(1, 100)).length, 0, 'and gets no bytes');
      // psql: with sslmode=prefer it goes on in plaintext and shows PostgreSQL's message; with
      // verify-full it stops at the N and sends nothing. Neither logs in.
      const prefer = await psql(libpqConninfo(cp, { tenant: 'acme', user: 'app' }).replace('sslmode=verify-full', 'sslmode=prefer'), 'app-pass', ['-c', 'select 1']);
      assert.notEqual(prefer.code, 0);
      assert.match(prefer.stderr, /sorry, too many clients already/);
      const strict = await psql(libpqConninfo(cp, { tenant: 'acme', user: 'app' }), 'app-pass', ['-c', 'select 1']);
      assert.notEqual(strict.code, 0);
      assert.match(strict.stderr, /server does not support SSL, but SSL was required/);
      assert.equal(cp.proxy.preauth.active, 1, 'the refused ones never held a slot');
    } finally {
      held.end();
      await cp.close();
    }
  });

  it('rule 4: tls-server-end-point hashes with the certificate\'s own signature hash (SHA-384 end to end; SHA-512, and SHA-1 as SHA-256), and an Ed25519 certificate is refused at start', async () => {
    const rsa = (hash: string): crypto.webcrypto.RsaHashedKeyGenParams => ({ name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash });
    assert.equal(endpointHashAlgorithm((await selfSigned(dir, 'rsa512', rsa('SHA-512'), { name: 'RSASSA-PKCS1-v1_5' })).pem), 'sha512');
    assert.equal(endpointHashAlgorithm((await selfSigned(dir, 'rsa1', rsa('SHA-1'), { name: 'RSASSA-PKCS1-v1_5' })).pem), 'sha256', 'RFC 5929: MD5 and SHA-1 become SHA-256');

    const p384 = await selfSigned(dir, 'p384', { name: 'ECDSA', namedCurve: 'P-384' }, { name: 'ECDSA', hash: 'SHA-384' });
    const spec = { tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier: await readVerifier(cluster, 'app') }] }], metrics: false };
    const certs = { ...rp.certs, serverCertPath: p384.certPath, serverKeyPath: p384.keyPath };
    const proxy = await Proxy.start(parseConfigText(configToml(spec, certs), os.tmpdir()), { logger: pino({ level: 'silent' }) });
    try {
      const port = proxy.address.port;
      const good = await toAuth(port, p384.pem);
      assert.equal(good.code, 10);
      const ok = await scramAttempt(good.w, 'app-pass', 'SCRAM-SHA-256-PLUS', 'p=tls-server-end-point,,', crypto.createHash('sha384').update(p384.der).digest());
      assert.deepEqual(ok, { ok: true, error: null }, 'SHA-384 of the certificate binds');
      good.w.end();
      const wrongHash = await toAuth(port, p384.pem);
      const bad = await scramAttempt(wrongHash.w, 'app-pass', 'SCRAM-SHA-256-PLUS', 'p=tls-server-end-point,,', crypto.createHash('sha256').update(p384.der).digest());
      assert.deepEqual([bad.ok, bad.error?.code, bad.error?.message], [false, '28000', 'SCRAM channel binding check failed'], 'SHA-256 of a SHA-384 certificate does not');
      wrongHash.w.end();
    } finally {
      await proxy.close();
    }

    const ed = await selfSigned(dir, 'ed25519', { name: 'Ed25519' }, { name: 'Ed25519' });
    await assert.rejects(
      Proxy.start(parseConfigText(configToml(spec, { ...rp.certs, serverCertPath: ed.certPath, serverKeyPath: ed.keyPath }), os.tmpdir()), { logger: pino({ level: 'silent' }) }),
      /Ed25519 has no hash; use an RSA or ECDSA certificate/,
    );
  });

  it('rule 10: on SIGTERM the audit log ends with "stopped" and a final signed checkpoint that covers every record', async () => {
    const key = generateCheckpointKey();
    const keyPath = path.join(dir, 'checkpoint.key');
    await writeFile(keyPath, key.privatePem, { mode: 0o600 });
    await writeFile(`${keyPath}.pub`, key.publicPem);
    const auditFile = path.join(dir, 'rule10-audit.jsonl');
    // No checkpoint by count or time during the run: only the one written at exit can cover it.
    const child = await spawnProxy({
      auditFile,
      audit: { checkpoint_key: keyPath, checkpoint_every_records: 1_000_000, checkpoint_interval: '24h' },
      tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier: await readVerifier(cluster, 'app') }] }],
    });
    try {
      const c = await connect({ port: child.port, certs: rp.certs }, { tenant: 'acme', user: 'app', password: 'app-pass' });
      assert.equal((await c.query<{ v: number }>('select 10 as v')).rows[0]?.v, 10);
      await c.end();
      child.child.kill('SIGTERM');
      assert.equal(await child.exited, 0);
      const records = (await readFile(auditFile, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { event: string; state?: string; seq: number });
      assert.deepEqual(records.slice(-2).map((r) => r.state ?? r.event), ['stopped', 'audit.checkpoint']);
      assert.equal(records.filter((r) => r.event === 'audit.checkpoint').length, 1, 'the exit checkpoint is the only one');
      const v = await verifyAuditFile(auditFile, { publicKey: await loadPublicKey(`${keyPath}.pub`) });
      assert.equal(v.ok, true, JSON.stringify(v.firstBad));
      assert.deepEqual([v.signaturesChecked, v.checkpoints, v.uncovered], [true, 1, 0], 'every record signed over by the final checkpoint');
    } finally {
      await child.stop();
    }
  });

  it('T2/T3 and cross-tenant: a tenant written into the user name (app@acme, acme.app) is only a user name, never an identifier', async () => {
    // With SNI for acme: an unknown user there, so the same 28P01 as any failed login.
    for (const user of ['app@globex', 'app@acme', 'globex.app']) {
      const err = await rawLogin(rp.port, rp.certs.caCertPem, { tenant: 'acme', user, password: 'app-pass' }).then(
        (w) => {
          w.end();
          return 'logged in';
        },
        (e: unknown) => (e as Error).message,
      );
      assert.equal(err, `login failed: ${JSON.stringify({ severity: 'FATAL', code: '28P01', message: `password authentication failed for user "${user}"` })}`);
    }
    // Without SNI or options it names no tenant at all (T2), before any authentication request.
    const w = await Wire.connect(rp.port);
    await w.startTls(rp.certs.caCertPem, undefined);
    w.write(startupMessage({ user: 'app@acme', database: 'postgres' }));
    const f = await w.frame();
    assert.equal(f?.type, 'E', 'no authentication request first');
    const e = decodeError(f.body);
    assert.deepEqual([e.code, e.message], ['28000', 'no tenant specified in connection request']);
    w.end();
  });

  it('A11: a client stalled inside the TLS handshake, or after it with no startup packet, is closed silently at auth_timeout', async () => {
    // S answered, then only the 5-byte header of a TLS record that never comes.
    const stalled = await Wire.connect(rp.port);
    const t0 = Date.now();
    stalled.write(sslRequest());
    assert.equal((await stalled.read(1)).toString('latin1'), 'S');
    stalled.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]));
    assert.ok(await stalled.waitClosed(4000), 'closed by the proxy');
    const inHandshake = Date.now() - t0;
    assert.equal((await stalled.read(1, 100)).length, 0, 'nothing was sent after the S');
    // A finished handshake, then silence: still inside the startup packet, so no message either.
    const quiet = await Wire.connect(rp.port);
    const t1 = Date.now();
    await quiet.startTls(rp.certs.caCertPem, 'acme.pg.test');
    assert.ok(await quiet.waitClosed(4000), 'closed by the proxy');
    const afterHandshake = Date.now() - t1;
    assert.equal((await quiet.read(1, 100)).length, 0, 'no ErrorResponse over TLS');
    for (const [what, ms] of [['in the handshake', inHandshake], ['after it', afterHandshake]] as const) {
      assert.ok(ms >= 900 && ms < 2500, `${what}: closed after ${ms} ms, auth_timeout is 1 s`);
    }
  });

  it('S8: a reload that disables or removes a tenant ends its sessions with 57P01 (session and transaction mode); other tenants keep theirs', async () => {
    const verifier = await readVerifier(cluster, 'app');
    for (const pool of [{ pool_mode: 'session' }, { pool_mode: 'transaction' }]) {
      const spec = (acme: 'on' | 'off' | 'gone'): Parameters<typeof startProxy>[0] => ({
        metrics: false,
        tenants: [
          ...(acme === 'gone' ? [] : [{ id: 'acme', cluster, enabled: acme === 'on', pool, users: [{ name: 'app', verifier }] }]),
          { id: 'other', cluster, pool, users: [{ name: 'app', verifier }] },
        ],
      });
      for (const change of ['off', 'gone'] as const) {
        const cp = await startProxy(spec('on'));
        try {
          const victim = await connect(cp, { tenant: 'acme', user: 'app', password: 'app-pass' });
          const ended = new Promise<{ code?: string; message: string }>((resolve) => victim.on('error', (e) => resolve(e as { code?: string; message: string })));
          const bystander = await connect(cp, { tenant: 'other', user: 'app', password: 'app-pass' });
          assert.equal((await victim.query<{ v: number }>('select 1 as v')).rows[0]?.v, 1);
          cp.reload(spec(change));
          const e = await Promise.race([ended, sleep(5000).then(() => ({ code: 'none', message: 'no error within 5 s' }))]);
          assert.deepEqual([pool.pool_mode, change, e.code, e.message], [pool.pool_mode, change, '57P01', 'terminating connection due to administrator command']);
          assert.equal((await bystander.query<{ v: number }>('select 2 as v')).rows[0]?.v, 2, 'the other tenant is untouched');
          await bystander.end();
          const again = await connectError(clientConfig(cp, { tenant: 'acme', user: 'app', password: 'app-pass' }));
          assert.equal(again.code, '28P01', 'and a new login fails as for a disabled or unknown tenant');
          await waitFor(() => cp.proxy.sessions.size === 0, 3000, 'no session left');
        } finally {
          await cp.close();
        }
      }
    }
  });

  it('S8: a login half-way through SCRAM when the reload disables its tenant ends with 57P01 once it is in, not later', async () => {
    const verifier = await readVerifier(cluster, 'app');
    const spec = (enabled: boolean): Parameters<typeof startProxy>[0] => ({
      metrics: false,
      tenants: [{ id: 'acme', cluster, enabled, users: [{ name: 'app', verifier }] }],
    });
    const cp = await startProxy(spec(true));
    try {
      const { w, code } = await toAuth(cp.port, cp.certs.caCertPem);
      assert.equal(code, 10, 'AuthenticationSASL');
      cp.reload(spec(false));
      // The exchange began under the old config, so it completes; the session must not outlive the login.
      const login = await scramAttempt(w, 'app-pass', 'SCRAM-SHA-256', 'n,,', Buffer.alloc(0));
      assert.ok(login.ok, 'AuthenticationOk under the config the login began with');
      const error = await w.error(3000);
      assert.equal(error?.code, '57P01');
      assert.ok(await w.waitClosed(2000), 'then closed');
      await waitFor(() => cp.proxy.sessions.size === 0, 3000, 'no session left');
    } finally {
      await cp.close();
    }
  });
});
