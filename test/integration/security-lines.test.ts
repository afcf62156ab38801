/**
 * SECURITY.md §1 and §3 line by line, for the lines no other test held to their SQLSTATE and text:
 * bad lengths in every phase, deadlines against dribbling clients, a flood of unfinished handshakes,
 * TLS and channel-binding downgrades through a man in the middle, startup-parameter smuggling,
 * cross-tenant cancel keys, the error boundary, and drain. docs/security.md maps every line to its test.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { pino } from 'pino';
import pg from 'pg';
import { exportJWK, generateKeyPair } from 'jose';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { clientConfig, configToml, connect, connectError, psql, startProxy, testCerts, type ProxySpec, type RunningProxy } from '../support/proxy.js';
import { cancelRequest, decodeError, gssencRequest, saslInitial, sendCancel, sslRequest, startupMessage, typed, Wire, type WireError } from '../support/wire.js';
import { rawLogin } from '../support/login.js';
import { sleep, waitFor } from '../support/wait.js';
import { parseConfigText } from '../../src/config/load.js';
import { Proxy } from '../../src/server.js';
import { makeDevCerts, type DevCerts } from '../../src/tools/dev-certs.js';
import { makeScramVerifier } from '../../src/auth/scram.js';
import { Errors } from '../../src/errors.js';

const AUTH_TIMEOUT_MS = 2000;
const PER_SOURCE = 100;
const GLOBAL = 300;

// ---------------------------------------------------------------- raw protocol helpers

/** A frame header alone: type byte and a declared length (no body). */
function header(type: string, length: number): Buffer {
  const b = Buffer.alloc(5);
  b.write(type, 0, 'latin1');
  b.writeUInt32BE(length >>> 0, 1);
  return b;
}

/** TLS with the tenant's SNI, a startup packet, and the AuthenticationSASL answer's mechanisms. */
async function startSasl(port: number, ca: string, tenant: string, user = 'app', params: Record<string, string> = {}): Promise<{ w: Wire; mechanisms: string[] }> {
  const w = await Wire.connect(port);
  await w.startTls(ca, `${tenant}.pg.test`);
  w.write(startupMessage({ user, database: 'postgres', ...params }));
  const f = await w.frame();
  assert.equal(f?.type, 'R', 'an authentication request');
  assert.equal(f.body.readUInt32BE(0), 10, 'AuthenticationSASL');
  return { w, mechanisms: f.body.toString('utf8', 4).split('\0').filter((m) => m !== '') };
}

/** Up to server-first: returns the exchange's nonce so a client-final can be written. */
async function toServerFirst(port: number, ca: string, tenant = 'acme', user = 'app'): Promise<{ w: Wire; nonce: string }> {
  const { w } = await startSasl(port, ca, tenant, user);
  w.write(saslInitial('SCRAM-SHA-256', 'n,,n=,r=clientnonce0123456789'));
  const f = await w.frame();
  assert.equal(f?.type, 'R');
  assert.equal(f.body.readUInt32BE(0), 11, 'AuthenticationSASLContinue');
  return { w, nonce: /r=([^,]+)/.exec(f.body.toString('utf8', 4))![1]! };
}

async function expectFatal(w: Wire, code: string, message: string, detail?: string): Promise<WireError> {
  const e = await w.error();
  assert.ok(e !== null, `expected ${code} "${message}", got a close`);
  assert.equal(e.code, code, JSON.stringify(e));
  assert.equal(e.message, message);
  if (detail !== undefined) assert.equal(e.detail, detail);
  assert.ok(await w.waitClosed(), 'closed after the error');
  return e;
}

/** Simple query over a raw session: the rows as text, or the ErrorResponse. */
async function simpleQuery(w: Wire, sql: string): Promise<{ rows: (string | null)[][]; error: WireError | null }> {
  w.write(typed('Q', Buffer.from(`${sql}\0`)));
  const rows: (string | null)[][] = [];
  let error: WireError | null = null;
  for (;;) {
    const f = await w.frame();
    if (f === null) return { rows, error };
    if (f.type === 'E') error = decodeError(f.body);
    if (f.type === 'D') {
      const n = f.body.readUInt16BE(0);
      let pos = 2;
      const row: (string | null)[] = [];
      for (let i = 0; i < n; i++) {
        const len = f.body.readInt32BE(pos);
        pos += 4;
        row.push(len < 0 ? null : f.body.toString('utf8', pos, pos + len));
        pos += Math.max(0, len);
      }
      rows.push(row);
    }
    if (f.type === 'Z') return { rows, error };
  }
}

/** A plain socket from a chosen source address, watched from the start; resolves once connected. */
interface Watched {
  s: net.Socket;
  connectedAt: number;
  closedAt: number;
  bytes: number;
  data: Buffer[];
}
function rawSocket(port: number, localAddress: string): Promise<Watched> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, localAddress });
    const rec: Watched = { s, connectedAt: 0, closedAt: 0, bytes: 0, data: [] };
    s.on('data', (d: Buffer) => {
      rec.bytes += d.length;
      rec.data.push(d);
    });
    s.on('close', () => (rec.closedAt = Date.now()));
    s.once('connect', () => {
      rec.connectedAt = Date.now();
      resolve(rec);
    });
    s.once('error', reject);
    s.on('error', () => undefined); // resets from the proxy's close are expected
  });
}

async function openFds(): Promise<number> {
  return (await readdir('/proc/self/fd')).length;
}

// ---------------------------------------------------------------- a man in the middle

interface MitmMode {
  /** Terminate the client's TLS with the MITM's own certificate ('S'), or answer 'N' (strip TLS). */
  clientTls: boolean;
  /** Remove SCRAM-SHA-256-PLUS from the server's mechanism list. */
  stripPlus?: boolean;
  /** Rewrite the client's gs2 flag 'y' to 'n' in client-first ('first'), and also c=eSws in client-final ('both'). */
  rewriteY?: 'first' | 'both';
}

interface Mitm {
  port: number;
  /** Type bytes pgwarden sent towards the client, per connection. */
  serverTypes: string[][];
  close(): Promise<void>;
}

/** Splits a byte stream into frames (the first one untyped when asked) and hands each whole frame on. */
function frameSplitter(untypedFirst: boolean, onFrame: (f: Buffer) => void): (d: Buffer) => void {
  let buf = Buffer.alloc(0);
  let untyped = untypedFirst;
  return (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      const need = untyped ? (buf.length >= 4 ? buf.readUInt32BE(0) : -1) : buf.length >= 5 ? buf.readUInt32BE(1) + 1 : -1;
      if (need < 0 || buf.length < need) return;
      const f = buf.subarray(0, need);
      buf = buf.subarray(need);
      untyped = false;
      onFrame(f);
    }
  };
}

/**
 * A relay between a client and pgwarden that a client may trust by mistake (a certificate from a
 * CA it trusts): it terminates the client's TLS with its own certificate and opens its own TLS to
 * pgwarden, and can tamper with the SASL negotiation in the ways an attacker would.
 */
async function startMitm(target: { port: number; ca: string }, own: DevCerts, mode: MitmMode): Promise<Mitm> {
  const sockets = new Set<net.Socket>();
  const serverTypes: string[][] = [];
  const secureContext = tls.createSecureContext({ key: own.serverKeyPem, cert: own.serverCertPem });
  const handle = async (raw: net.Socket, first: Buffer): Promise<void> => {
    if (first.length !== 8 || first.readUInt32BE(4) !== 80877103) throw new Error('expected SSLRequest');
    let up: net.Socket = net.connect({ host: '127.0.0.1', port: target.port });
    sockets.add(up);
    up.on('error', () => undefined);
    await new Promise((r) => up.once('connect', r));
    if (mode.clientTls) {
      up.write(sslRequest());
      const answer = await new Promise<Buffer>((r) => up.once('data', r));
      if (answer.toString() !== 'S') throw new Error('pgwarden refused TLS');
      const secure = tls.connect({ socket: up, servername: 'acme.pg.test', ca: target.ca });
      await new Promise((r) => secure.once('secureConnect', r));
      secure.on('error', () => undefined);
      up = secure;
    }
    raw.write(mode.clientTls ? 'S' : 'N');
    const client: net.Socket = mode.clientTls ? new tls.TLSSocket(raw, { isServer: true, secureContext }) : raw;
    client.on('error', () => undefined);
    const types: string[] = [];
    serverTypes.push(types);
    let saslMessages = 0;
    client.on(
      'data',
      frameSplitter(true, (f) => {
        if (f[0] === 0x70 /* p */) {
          saslMessages++;
          if (saslMessages === 1 && mode.rewriteY !== undefined) {
            const data = f.indexOf(0, 5) + 5;
            if (f[data] === 0x79 /* y */) f[data] = 0x6e; // n
          }
          if (saslMessages === 2 && mode.rewriteY === 'both') f = Buffer.from(f.toString('latin1').replace('c=eSws', 'c=biws'), 'latin1');
        }
        up.write(f);
      }),
    );
    up.on(
      'data',
      frameSplitter(false, (f) => {
        types.push(String.fromCharCode(f[0]!));
        if (mode.stripPlus === true && f[0] === 0x52 /* R */ && f.readUInt32BE(5) === 10) {
          f = typed('R', Buffer.concat([Buffer.from([0, 0, 0, 10]), Buffer.from('SCRAM-SHA-256\0\0')]));
        }
        client.write(f);
      }),
    );
    client.on('close', () => up.destroy());
    up.on('close', () => client.end());
  };
  const server = net.createServer((raw) => {
    sockets.add(raw);
    raw.on('error', () => undefined);
    raw.once('data', (first: Buffer) => void handle(raw, first).catch(() => raw.destroy()));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    serverTypes,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

// ---------------------------------------------------------------- the suite

describe('SECURITY.md line by line', () => {
  let pgc: Cluster;
  let rp: RunningProxy;
  let plain: Proxy;
  let dir: string;
  let mitmCerts: DevCerts;
  let bystander: pg.Client;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-secrules-'));
    pgc = await startCluster({ users: [{ name: 'app', password: 'app-pass' }, { name: 'gapp', password: 'gapp-pass' }], databases: ['acmedb'] });
    await pgc.query('create table copied (v int)');
    await pgc.query('grant all on copied to app');
    const app = { name: 'app', verifier: await readVerifier(pgc, 'app') };
    const gapp = { name: 'gapp', verifier: await readVerifier(pgc, 'gapp') };
    const pair = await generateKeyPair('ES256', { extractable: true });
    await writeFile(path.join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] }));
    const spec: ProxySpec = {
      auditFile: path.join(dir, 'audit.jsonl'),
      server: { auth_timeout: `${AUTH_TIMEOUT_MS}ms`, max_preauth_per_source: PER_SOURCE, max_preauth_connections: GLOBAL },
      staff: { jwks: path.join(dir, 'jwks.json'), issuer: 'https://sso.pgwarden.test', audience: 'pgwarden', algorithms: ['ES256'] },
      tenants: [
        { id: 'acme', cluster: pgc, users: [app], limits: { max_message_bytes: '64kB' } },
        { id: 'acmetx', cluster: pgc, users: [app], pool: { pool_mode: 'transaction' }, limits: { max_message_bytes: '64kB', transaction_timeout: '600ms' } },
        { id: 'globex', cluster: pgc, users: [gapp] },
        { id: 'tiny', cluster: pgc, maxClientConnections: 1, users: [app] },
        { id: 'audited', cluster: pgc, users: [app], extra: { audit_statements: 'all', audit_parameters: 'full' } },
        // Verifiers made with a non-default scram_iterations: the mock must not stand out against them.
        { id: 'slowhash', cluster: pgc, users: [{ name: 'app', verifier: await makeScramVerifier('slow-pass', 10_000) }] },
      ],
    };
    rp = await startProxy(spec);
    // The same tenants on a listener without TLS at all (N1's 'N', PLUS never offered).
    const certs = await testCerts();
    const noTls = configToml({ ...spec, requireTls: false, metrics: false, auditFile: path.join(dir, 'plain-audit.jsonl') }, certs).replace(/^tls_(cert|key) = .*\n/gm, '');
    plain = await Proxy.start(parseConfigText(noTls, os.tmpdir()), { logger: pino({ level: 'silent' }) });
    mitmCerts = await makeDevCerts({ dir: path.join(dir, 'mitm'), hostnames: ['*.pg.test'] });
    bystander = await connect(rp, { tenant: 'globex', user: 'gapp', password: 'gapp-pass' });
  });

  after(async () => {
    await bystander?.end().catch(() => undefined);
    await plain?.close();
    await rp?.close();
    await pgc?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  describe('negotiation and startup (N1–N10, rule 2)', () => {
    it('N1/N3: a listener without TLS answers SSLRequest with N, and bytes pipelined behind it get 08P01 with PostgreSQL\'s DETAIL', async () => {
      const w = await Wire.connect(plain.address.port);
      w.write(sslRequest());
      assert.equal((await w.read(1)).toString(), 'N');
      w.write(startupMessage({ user: 'app', database: 'postgres', options: '-c pgwarden.tenant=acme' }));
      const f = await w.frame();
      assert.equal(f?.type, 'R', 'then the session goes on in plaintext');
      w.end();

      const smuggled = await Wire.connect(plain.address.port);
      smuggled.write(Buffer.concat([sslRequest(), startupMessage({ user: 'app' })]));
      assert.equal((await smuggled.read(1)).toString(), 'N');
      await expectFatal(smuggled, '08P01', 'received unencrypted data after SSL request', 'This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.');
    });

    it('N3: the SSL variant carries the DETAIL too, and the GSS variant has its own text', async () => {
      const ssl = await Wire.connect(rp.port);
      ssl.write(Buffer.concat([sslRequest(), Buffer.from('junk')]));
      assert.equal((await ssl.read(1)).toString(), 'S', 'answered first, never with an ErrorResponse (CVE-2024-10977)');
      await expectFatal(ssl, '08P01', 'received unencrypted data after SSL request', 'This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.');

      const gss = await Wire.connect(rp.port);
      gss.write(Buffer.concat([gssencRequest(), startupMessage({ user: 'app' })]));
      assert.equal((await gss.read(1)).toString(), 'N');
      await expectFatal(gss, '08P01', 'received unencrypted data after GSSAPI encryption request', 'This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.');
    });

    it('N4: a startup packet cut short by EOF is closed without a message', async () => {
      const w = await Wire.connect(rp.port);
      w.write(startupMessage({ user: 'app', database: 'postgres' }).subarray(0, 12));
      w.socket.end();
      assert.ok(await w.waitClosed());
      assert.equal((await w.read(1, 100).catch(() => Buffer.alloc(0))).length, 0);
      await waitFor(() => rp.proxy.preauth.active === 0);
    });

    it('N5/N6/N8/N9: broken layout, protocol 4.0, no user and a bad replication value, each with PostgreSQL\'s SQLSTATE and text', async () => {
      const layout = await Wire.connect(rp.port);
      // A NUL inside a value: "a\0b" splits into a value and a stray name, and the terminator is missing.
      const body = Buffer.from('user\0app\0application_name\0a\0b\0\0');
      const pkt = Buffer.concat([Buffer.alloc(8), body]);
      pkt.writeUInt32BE(pkt.length, 0);
      pkt.writeUInt32BE(196608, 4);
      layout.write(pkt);
      await expectFatal(layout, '08P01', 'invalid startup packet layout: expected terminator as last byte');

      const v4 = await Wire.connect(rp.port);
      v4.write(startupMessage({ user: 'app' }, 4 << 16));
      await expectFatal(v4, '0A000', 'unsupported frontend protocol 4.0: server supports 3.0 to 3.0');

      const noUser = await Wire.connect(rp.port);
      await noUser.startTls(rp.certs.caCertPem, 'acme.pg.test');
      noUser.write(startupMessage({ database: 'postgres' }));
      await expectFatal(noUser, '28000', 'no PostgreSQL user name specified in startup packet');

      const repl = await Wire.connect(rp.port);
      await repl.startTls(rp.certs.caCertPem, 'acme.pg.test');
      repl.write(startupMessage({ user: 'app', replication: 'sometimes' }));
      await expectFatal(repl, '22023', 'invalid value for parameter "replication": "sometimes"');
    });

    it('N10: direct TLS with a foreign ALPN protocol fails the handshake (no_application_protocol)', async () => {
      const err = await new Promise<Error | null>((resolve) => {
        const s = tls.connect({ host: '127.0.0.1', port: rp.port, servername: 'acme.pg.test', ca: rp.certs.caCertPem, ALPNProtocols: ['http/1.1'] });
        s.once('secureConnect', () => {
          s.destroy();
          resolve(null);
        });
        s.once('error', resolve);
      });
      assert.ok(err !== null, 'the handshake did not complete');
      assert.match(err.message, /no application protocol|alert number 120/i);
    });
  });

  describe('tenant resolution and TLS policy (T1–T4)', () => {
    it('T1: a plaintext client gets 28000 with the HINT before any authentication request', async () => {
      const w = await Wire.connect(rp.port);
      w.write(startupMessage({ user: 'app', database: 'postgres', options: '-c pgwarden.tenant=acme' }));
      const f = await w.frame();
      assert.equal(f?.type, 'E', 'the first thing sent is the error: no password was asked for');
      const e = decodeError(f.body);
      assert.equal(e.code, '28000');
      assert.equal(e.message, 'TLS connection is required');
      assert.equal(e.hint, 'Connect with sslmode=require or stronger.');
    });

    it('T2/T4: no tenant at all, and a tenant id that fails validation', async () => {
      const none = await Wire.connect(rp.port);
      await none.startTls(rp.certs.caCertPem, undefined);
      none.write(startupMessage({ user: 'app', database: 'postgres' }));
      const e = await expectFatal(none, '28000', 'no tenant specified in connection request');
      assert.match(e.hint ?? '', /SNI|pgwarden\.tenant/);

      const bad = await Wire.connect(rp.port);
      await bad.startTls(rp.certs.caCertPem, undefined);
      bad.write(startupMessage({ user: 'app', database: 'postgres', options: '-c pgwarden.tenant=-bad-' }));
      await expectFatal(bad, '28000', 'invalid tenant identifier');
    });

    it('cross-tenant: through the options fallback (no SNI), one tenant\'s user and password mean nothing at another (28P01)', async () => {
      // No SNI, tenant by options: acme's user and password mean nothing at globex.
      const viaOptions = await Wire.connect(rp.port);
      await viaOptions.startTls(rp.certs.caCertPem, undefined);
      viaOptions.write(startupMessage({ user: 'app', database: 'postgres', options: '-c pgwarden.tenant=globex' }));
      const r = await viaOptions.frame();
      assert.equal(r?.type, 'R', 'an unknown user still gets a full exchange');
      viaOptions.end();
      const e = await connectError({ ...clientConfig(rp, { tenant: 'acme', user: 'app', password: 'app-pass' }), ssl: { ca: rp.certs.caCertPem, rejectUnauthorized: false }, host: '127.0.0.1', options: '-c pgwarden.tenant=globex' });
      assert.equal(e.code, '28P01');
      assert.equal(e.message, 'password authentication failed for user "app"');
    });
  });

  describe('authentication (A1–A12)', () => {
    it('A1 and rule 1: during SASL the type byte is checked before the length (Q with length 2^31 is A1, not A10)', async () => {
      const { w } = await startSasl(rp.port, rp.certs.caCertPem, 'acme');
      w.write(header('Q', 0x80000000));
      await expectFatal(w, '08P01', 'expected SASL response, got message type 81');
    });

    it('A2: a wrong message type in the staff token exchange', async () => {
      const w = await Wire.connect(rp.port);
      await w.startTls(rp.certs.caCertPem, 'acme.pg.test');
      w.write(startupMessage({ user: 'staff', database: 'postgres' }));
      const f = await w.frame();
      assert.equal(f?.type, 'R');
      assert.equal(f.body.readUInt32BE(0), 3, 'AuthenticationCleartextPassword');
      w.write(typed('Q', Buffer.from('select 1\0')));
      await expectFatal(w, '08P01', 'expected password response, got message type 81');
    });

    it('A3: a mechanism not offered (SCRAM-SHA-1; PLUS on a connection without TLS)', async () => {
      const { w } = await startSasl(rp.port, rp.certs.caCertPem, 'acme');
      w.write(saslInitial('SCRAM-SHA-1', 'n,,n=,r=abc'));
      await expectFatal(w, '08P01', 'client selected an invalid SASL authentication mechanism');

      const p = await Wire.connect(plain.address.port);
      p.write(startupMessage({ user: 'app', database: 'postgres', options: '-c pgwarden.tenant=acme' }));
      const f = await p.frame();
      assert.deepEqual(f?.body.toString('utf8', 4).split('\0').filter((m) => m !== ''), ['SCRAM-SHA-256'], 'no PLUS without TLS');
      p.write(saslInitial('SCRAM-SHA-256-PLUS', 'p=tls-server-end-point,,n=,r=abc'));
      await expectFatal(p, '08P01', 'client selected an invalid SASL authentication mechanism');
    });

    it('A4/A5/A6 on the wire: PostgreSQL\'s codes, texts and DETAILs', async () => {
      const cases: [string | null, string, string, string | undefined][] = [
        ['', '08P01', 'malformed SCRAM message', 'The message is empty.'],
        ['n,a=admin,n=,r=abc', '0A000', 'client uses authorization identity, but it is not supported', undefined],
        ['n,,m=ext,n=,r=abc', '0A000', 'client requires an unsupported SCRAM extension', undefined],
        ['n,,n=,r=ab\x01c', '08P01', 'non-printable characters in SCRAM nonce', undefined],
      ];
      for (const [data, code, message, detail] of cases) {
        const { w } = await startSasl(rp.port, rp.certs.caCertPem, 'acme');
        w.write(saslInitial('SCRAM-SHA-256', data));
        await expectFatal(w, code, message, detail);
      }
      const plus = await startSasl(rp.port, rp.certs.caCertPem, 'acme');
      plus.w.write(saslInitial('SCRAM-SHA-256-PLUS', 'p=tls-unique,,n=,r=abc'));
      await expectFatal(plus.w, '08P01', 'unsupported SCRAM channel-binding type "tls-unique"');

      const proof = Buffer.alloc(32).toString('base64');
      const { w: mismatch, nonce } = await toServerFirst(rp.port, rp.certs.caCertPem);
      mismatch.write(typed('p', Buffer.from(`c=biws,r=${nonce}x,p=${proof}`)));
      await expectFatal(mismatch, '08P01', 'invalid SCRAM response', 'Nonce does not match.');
      const { w: garbage, nonce: n2 } = await toServerFirst(rp.port, rp.certs.caCertPem);
      garbage.write(typed('p', Buffer.from(`c=biws,r=${n2},p=${proof},x=1`)));
      await expectFatal(garbage, '08P01', 'malformed SCRAM message', 'Garbage found at the end of client-final-message.');
      const { w: cbAttr, nonce: n3 } = await toServerFirst(rp.port, rp.certs.caCertPem);
      cbAttr.write(typed('p', Buffer.from(`c=eSws,r=${n3},p=${proof}`)));
      await expectFatal(cbAttr, '08P01', 'unexpected SCRAM channel-binding attribute in client-final-message');
    });

    it('A8/A9 and rule 4: PLUS is listed first on TLS; flag y on TLS is a downgrade (28000), foreign binding data fails (28000)', async () => {
      const { w, mechanisms } = await startSasl(rp.port, rp.certs.caCertPem, 'acme');
      assert.deepEqual(mechanisms, ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']);
      w.write(saslInitial('SCRAM-SHA-256', 'y,,n=,r=abcdef'));
      await expectFatal(
        w,
        '28000',
        'SCRAM channel binding negotiation error',
        'The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.',
      );

      const { w: w2 } = await startSasl(rp.port, rp.certs.caCertPem, 'acme');
      w2.write(saslInitial('SCRAM-SHA-256-PLUS', 'p=tls-server-end-point,,n=,r=abcdef'));
      const cont = await w2.frame();
      const nonce = /r=([^,]+)/.exec(cont!.body.toString('utf8', 4))![1]!;
      const foreign = Buffer.concat([Buffer.from('p=tls-server-end-point,,'), Buffer.alloc(32, 7)]).toString('base64');
      w2.write(typed('p', Buffer.from(`c=${foreign},r=${nonce},p=${Buffer.alloc(32).toString('base64')}`)));
      await expectFatal(w2, '28000', 'SCRAM channel binding check failed');
    });

    it('A10 and rule 1: SASLInitialResponse, SASLResponse and the staff password are held to their caps (1024, 1024, 65535) and to length ≥ 4', async () => {
      // The cap itself is accepted: a client-first of exactly 1024 bytes gets server-first.
      const { w: atCap } = await startSasl(rp.port, rp.certs.caCertPem, 'acme');
      const fixed = 4 + 'SCRAM-SHA-256\0'.length + 4 + 'n,,n=,r='.length;
      atCap.write(saslInitial('SCRAM-SHA-256', `n,,n=,r=${'x'.repeat(1024 - fixed)}`));
      const f = await atCap.frame();
      assert.equal(f?.type, 'R', 'a 1024-byte SASL message is within the cap');
      assert.equal(f.body.readUInt32BE(0), 11);
      atCap.end();
      for (const len of [0, 3, 1025, 0x80000000, 0xffffffff]) {
        const { w } = await startSasl(rp.port, rp.certs.caCertPem, 'acme');
        w.write(header('p', len));
        await expectFatal(w, '08P01', 'invalid message length');
        const { w: fin } = await toServerFirst(rp.port, rp.certs.caCertPem);
        fin.write(header('p', len));
        await expectFatal(fin, '08P01', 'invalid message length');
      }
      const staffAsk = async (): Promise<Wire> => {
        const w = await Wire.connect(rp.port);
        await w.startTls(rp.certs.caCertPem, 'acme.pg.test');
        w.write(startupMessage({ user: 'staff', database: 'postgres' }));
        assert.equal((await w.frame())?.body.readUInt32BE(0), 3);
        return w;
      };
      for (const len of [3, 65_536, 0x80000000]) {
        const w = await staffAsk();
        w.write(header('p', len));
        await expectFatal(w, '08P01', 'invalid message length');
      }
      // 65535 is within the cap: the (garbage) token is judged, and refused like any bad token.
      const big = await staffAsk();
      big.write(typed('p', Buffer.concat([Buffer.alloc(65_535 - 5, 0x61), Buffer.from([0])])));
      await expectFatal(big, '28P01', 'password authentication failed for user "staff"');
      // S4 before login: a SASLInitialResponse whose inner length runs past the frame (PostgreSQL's text).
      const { w: fmt } = await startSasl(rp.port, rp.certs.caCertPem, 'acme');
      const broken = Buffer.concat([Buffer.from('SCRAM-SHA-256\0'), Buffer.from([0, 0, 0, 50]), Buffer.from('n,,n=,r=abc')]);
      fmt.write(typed('p', broken));
      await expectFatal(fmt, '08P01', 'insufficient data left in message');
    });

    it('rule 3: an unknown user is offered the same iteration count and salt length as a real one', async () => {
      const iters = async (user: string): Promise<{ i: string; saltBytes: number }> => {
        const { w } = await startSasl(rp.port, rp.certs.caCertPem, 'acme', user);
        w.write(saslInitial('SCRAM-SHA-256', 'n,,n=,r=abcdef'));
        const body = (await w.frame())!.body.toString('utf8', 4);
        w.end();
        return { i: /i=(\d+)/.exec(body)![1]!, saltBytes: Buffer.from(/s=([^,]+)/.exec(body)![1]!, 'base64').length };
      };
      assert.deepEqual(await iters('ghost'), await iters('app'));
    });

    it(
      'rule 3: on a tenant whose verifiers use another iteration count, an unknown user is offered that count too',
      async () => {
        const iters = async (user: string): Promise<string> => {
          const { w } = await startSasl(rp.port, rp.certs.caCertPem, 'slowhash', user);
          w.write(saslInitial('SCRAM-SHA-256', 'n,,n=,r=abcdef'));
          const body = (await w.frame())!.body.toString('utf8', 4);
          w.end();
          return /i=(\d+)/.exec(body)![1]!;
        };
        assert.equal(await iters('app'), '10000');
        assert.equal(await iters('ghost'), '10000', 'an unknown user answers i=4096 where every real user answers i=10000: enumeration by iteration count');
      },
    );
  });

  describe('deadlines (rule 1, A11)', () => {
    it('a startup packet dribbled one byte a second is closed silently at the pre-auth deadline', async () => {
      const w = await Wire.connect(rp.port);
      const t0 = Date.now();
      const pkt = startupMessage({ user: 'app', database: 'postgres' });
      let sent = 0;
      const timer = setInterval(() => {
        if (!w.closed && sent < pkt.length) w.socket.write(pkt.subarray(sent, ++sent));
      }, 1000);
      try {
        assert.ok(await w.waitClosed(AUTH_TIMEOUT_MS + 3000), 'closed');
      } finally {
        clearInterval(timer);
      }
      const took = Date.now() - t0;
      assert.ok(took >= AUTH_TIMEOUT_MS - 50 && took < AUTH_TIMEOUT_MS + 1500, `closed after ${took} ms`);
      assert.ok(sent < pkt.length, 'the packet was never complete');
      assert.equal((await w.read(1, 50).catch(() => Buffer.alloc(0))).length, 0, 'no message inside the startup packet, as PostgreSQL');
    });

    it('one absolute deadline from accept: a client that moves on from startup to a dribbled SASL message still ends at accept + auth_timeout, with 08006', async () => {
      const t0 = Date.now();
      const w = await Wire.connect(rp.port);
      await w.startTls(rp.certs.caCertPem, 'acme.pg.test');
      // Startup, dribbled over about a second: each byte resets nothing.
      const pkt = startupMessage({ user: 'app', database: 'postgres' });
      for (let i = 0; i < pkt.length; i += 4) {
        w.socket.write(pkt.subarray(i, i + 4));
        await sleep(Math.floor(1000 / (pkt.length / 4)));
      }
      assert.equal((await w.frame())?.type, 'R');
      const sasl = saslInitial('SCRAM-SHA-256', 'n,,n=,r=abcdefgh');
      let sent = 0;
      const timer = setInterval(() => {
        if (!w.closed && sent < sasl.length - 1) w.socket.write(sasl.subarray(sent, ++sent));
      }, 200);
      try {
        const e = await w.error(AUTH_TIMEOUT_MS + 3000);
        const took = Date.now() - t0;
        assert.equal(e?.code, '08006');
        assert.equal(e?.message, 'authentication timed out');
        assert.ok(took < AUTH_TIMEOUT_MS + 700, `ended ${took} ms after connect: one deadline, not one per phase`);
      } finally {
        clearInterval(timer);
      }
    });
  });

  describe('pre-auth caps (N11, rule 9) under 2000 unfinished handshakes', () => {
    it('holds 100 per source and 300 in all, answers the rest at once with 53300 and closes, serves another source and a logged-in session, and leaves nothing behind', async () => {
      // Its own instance, with a deadline long enough that no held connection expires while the
      // flood is still arriving and being refused, even on a loaded machine.
      const deadlineMs = 8000;
      const fp = await startProxy({
        metrics: false,
        server: { auth_timeout: `${deadlineMs}ms`, max_preauth_per_source: PER_SOURCE, max_preauth_connections: GLOBAL },
        tenants: [{ id: 'acme', cluster: pgc, users: [{ name: 'app', verifier: await readVerifier(pgc, 'app') }] }],
      });
      const settled = await connect(fp, { tenant: 'acme', user: 'app', password: 'app-pass' });
      try {
        const baseline = await openFds();
        let peak = 0;
        const sampler = setInterval(() => (peak = Math.max(peak, fp.proxy.preauth.active)), 5);
        const half = startupMessage({ user: 'app', database: 'postgres' }).subarray(0, 10);
        // In batches: 2000 SYNs at once overflow the kernel's accept queue, and a connection dropped
        // there waits for a SYN-ACK retransmit (1 s, 3 s…) before the proxy ever sees it.
        const flood: Watched[] = [];
        for (let b = 0; b < 20; b++) flood.push(...(await Promise.all(Array.from({ length: 100 }, () => rawSocket(fp.port, '127.0.0.1')))));
        for (const [i, f] of flood.entries()) {
          if (i % 2 === 0 && f.closedAt === 0) f.s.write(half); // half a startup packet; the others send nothing
        }
        const closedNow = (): number => flood.filter((f) => f.closedAt !== 0).length;
        await waitFor(() => closedNow() >= 2000 - PER_SOURCE, deadlineMs / 2, 'the over-cap connections closed').catch(() => undefined);
        assert.equal(closedNow(), 2000 - PER_SOURCE, `closed ${closedNow()}, held ${fp.proxy.preauth.active}, sessions ${fp.proxy.sessions.size}`);
        // Each refused connection closed soon after its own connect (not at the deadline), however long the whole flood took.
        const slowest = Math.max(...flood.filter((f) => f.closedAt !== 0).map((f) => f.closedAt - f.connectedAt));
        assert.ok(slowest < deadlineMs / 2, `refused at once, not at the deadline: slowest ${slowest} ms`);
        assert.equal(fp.proxy.preauth.active, PER_SOURCE);
        // N11: PostgreSQL's 53300 in plaintext (to a silent client after the short grace in which an
        // SSLRequest would be answered N instead: security-rules.test.ts), then the close.
        const refusal = Errors.tooManyClients().toFrame();
        assert.ok(flood.filter((f) => f.closedAt !== 0).every((f) => Buffer.concat(f.data).equals(refusal)), 'N11: every refused connection got exactly the 53300 ErrorResponse');
        assert.ok(flood.filter((f) => f.closedAt === 0).every((f) => f.bytes === 0), 'the held ones were told nothing');

        // Another source still gets in, and the logged-in bystander works throughout.
        const other = await rawLogin(fp.port, fp.certs.caCertPem, { tenant: 'acme', user: 'app', password: 'app-pass', localAddress: '127.0.0.2' });
        assert.deepEqual((await simpleQuery(other, 'select 40 + 2')).rows, [['42']]);
        other.end();
        assert.equal((await settled.query<{ v: number }>('select 7 as v')).rows[0]?.v, 7);

        // The global cap: two more sources fill it; a fourth is closed at once.
        const more = await Promise.all([
          ...Array.from({ length: PER_SOURCE }, () => rawSocket(fp.port, '127.0.0.3')),
          ...Array.from({ length: GLOBAL - 2 * PER_SOURCE }, () => rawSocket(fp.port, '127.0.0.4')),
        ]);
        await waitFor(() => fp.proxy.preauth.active === GLOBAL, 3000, 'global cap reached');
        const fourth = await Wire.connect(fp.port, '127.0.0.5');
        const e = await fourth.error(1000);
        assert.deepEqual([e?.code, e?.message], ['53300', 'sorry, too many clients already']);
        assert.ok(await fourth.waitClosed(1000), 'over the global cap: closed at once');
        clearInterval(sampler);
        assert.ok(peak <= GLOBAL, `peak ${peak}`);

        // At the deadline every held connection is gone: no slot, no session, no descriptor left.
        await waitFor(() => fp.proxy.preauth.active === 0, deadlineMs + 3000, 'pre-auth slots released at the deadline');
        assert.ok(flood.every((f) => f.closedAt !== 0), 'the held ones were closed by the proxy');
        for (const m of more) m.s.destroy();
        await waitFor(() => fp.proxy.sessions.size === 1, 3000, 'only the bystander is left');
        await waitFor(async () => (await openFds()) <= baseline + 2, 5000, 'file descriptors back to the baseline');
        assert.equal((await settled.query<{ v: number }>('select 8 as v')).rows[0]?.v, 8);
      } finally {
        await settled.end().catch(() => undefined);
        await fp.close();
      }
    });
  });

  describe('after authentication (S1–S5, rule 5)', () => {
    for (const mode of ['acme', 'acmetx']) {
      it(`S3: every message type, with length < 4, over its cap and 2^31, gets 08P01 "invalid message length" (${mode === 'acme' ? 'session' : 'transaction'} mode)`, async () => {
        const small = ['C', 'D', 'E', 'H', 'S', 'X', 'c', 'f'];
        const large = ['Q', 'F', 'B', 'P', 'd'];
        for (const type of [...small, ...large]) {
          const cap = small.includes(type) ? 10_000 : 65_536; // PQ_SMALL_MESSAGE_LIMIT; the tenant's max_message_bytes
          for (const len of [3, cap + 1, 0x80000000]) {
            const w = await rawLogin(rp.port, rp.certs.caCertPem, { tenant: mode, user: 'app', password: 'app-pass' });
            w.write(header(type, len));
            const e = await w.error();
            assert.equal(e?.code, '08P01', `${type} length ${len}: ${JSON.stringify(e)}`);
            assert.equal(e.message, 'invalid message length', `${type} length ${len}`);
            assert.ok(await w.waitClosed(), `${type} length ${len}: closed`);
          }
        }
        assert.equal((await bystander.query<{ v: number }>('select 9 as v')).rows[0]?.v, 9);
      });
    }

    it('S1: the tenant cap names the database, after authentication', async () => {
      const first = await connect(rp, { tenant: 'tiny', user: 'app', password: 'app-pass' });
      const e = await connectError(clientConfig(rp, { tenant: 'tiny', user: 'app', password: 'app-pass' }));
      assert.equal(e.code, '53300');
      assert.equal(e.message, 'too many connections for database "postgres"');
      await first.end();
    });

    it('S4/S5/R1: the server\'s own protocol errors (a Sync with a trailing byte; a Query during COPY FROM STDIN) pass through, and the session goes on', async () => {
      const w = await rawLogin(rp.port, rp.certs.caCertPem, { tenant: 'acme', user: 'app', password: 'app-pass' });
      w.write(typed('S', Buffer.from([0])));
      const e = await w.error();
      assert.equal(e?.code, '08P01');
      assert.equal(e?.message, 'invalid message format');
      let f;
      do f = await w.frame();
      while (f !== null && f.type !== 'Z');
      assert.deepEqual((await simpleQuery(w, 'select 1')).rows, [['1']]);

      w.write(typed('Q', Buffer.from('copy copied from stdin\0')));
      assert.equal((await w.frame())?.type, 'G', 'CopyInResponse');
      w.write(typed('Q', Buffer.from('select 1\0')));
      const copyErr = await w.error();
      assert.equal(copyErr?.code, '08P01');
      assert.equal(copyErr?.message, 'unexpected message type 0x51 during COPY from stdin');
      w.end();
    });

    it('S7: transaction_timeout ends the session with 25P04 and PostgreSQL\'s text', async () => {
      const w = await rawLogin(rp.port, rp.certs.caCertPem, { tenant: 'acmetx', user: 'app', password: 'app-pass' });
      await simpleQuery(w, 'begin');
      const e = await w.error(5000);
      assert.equal(e?.code, '25P04');
      assert.equal(e?.message, 'terminating connection due to transaction timeout');
    });

    it('S11 and rule 5: a bug in one connection is XX000 "internal error" for that connection only; the process and other sessions go on', async () => {
      const cancels = rp.proxy.cancels;
      const original = cancels.lookup.bind(cancels);
      cancels.lookup = () => {
        throw new Error('injected fault: secret detail that must not leave the proxy');
      };
      try {
        const w = await Wire.connect(rp.port);
        w.write(cancelRequest(1234, 5678));
        const e = await expectFatal(w, 'XX000', 'internal error');
        assert.equal(e.detail, undefined, 'nothing else leaves the proxy');
      } finally {
        cancels.lookup = original;
      }
      assert.equal((await bystander.query<{ v: number }>('select 10 as v')).rows[0]?.v, 10);
      const c = await connect(rp, { tenant: 'acme', user: 'app', password: 'app-pass' });
      await c.end();
    });
  });

  describe('statement audit (rule 8)', () => {
    it('records a FunctionCall (F) as function_call with its oid and result, like Q and the extended protocol', async () => {
      const w = await rawLogin(rp.port, rp.certs.caCertPem, { tenant: 'audited', user: 'app', password: 'app-pass' });
      const call = Buffer.alloc(10);
      call.writeUInt32BE(2026, 0); // pg_backend_pid(); no argument formats, no arguments, text result
      w.write(typed('F', call));
      const types: string[] = [];
      let f;
      do {
        f = await w.frame();
        if (f !== null) types.push(f.type);
      } while (f !== null && f.type !== 'Z');
      assert.deepEqual(types, ['V', 'Z'], 'FunctionCallResponse, then ReadyForQuery');
      w.end();
      await rp.proxy.audit.flush();
      const recs = (await readFile(path.join(dir, 'audit.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      const q = recs.find((r) => r['event'] === 'session.query' && r['kind'] === 'function_call');
      assert.ok(q !== undefined, 'a session.query record for the FunctionCall');
      assert.equal(q['function_oid'], 2026);
      const ei = (q['session'] as { ei: number }).ei;
      const sid = (q['session'] as { id: string }).id;
      const result = recs.find((r) => r['event'] === 'session.query_result' && (r['session'] as { id: string }).id === sid && r['ref'] === ei);
      assert.ok(result !== undefined, 'and its result');
      assert.equal(result['executed'], true);
    });
  });

  describe('startup parameters (rule 7)', () => {
    it('refuses settings outside the allowlist in options (session_authorization, role), including one hidden behind a newline', async () => {
      for (const [options, name] of [
        ['-c session_authorization=postgres', 'session_authorization'],
        ['-c role=postgres', 'role'],
        ['-c application_name=x\n-c role=postgres', 'role'],
      ] as const) {
        const e = await connectError(clientConfig(rp, { tenant: 'acme', user: 'app', password: 'app-pass', options }));
        assert.equal(e.code, '0A000', options);
        assert.equal(e.message, `parameter "${name}" cannot be set at connection time through pgwarden`);
      }
    });

    it('drops identity parameters sent as plain startup parameters, and an escaped -c inside a value stays inside the value', async () => {
      const w = await rawLogin(rp.port, rp.certs.caCertPem, {
        tenant: 'acme',
        user: 'app',
        password: 'app-pass',
        params: { session_authorization: 'postgres', role: 'postgres', is_superuser: 'on', options: '-c application_name=a\\ -c\\ role=postgres' },
      });
      const r = await simpleQuery(w, "select current_user, session_user, current_setting('is_superuser'), current_setting('application_name')");
      assert.equal(r.error, null);
      assert.deepEqual(r.rows, [['app', 'app', 'off', 'a -c role=postgres']]);
      w.end();
    });

    it('never builds a conninfo string: a database name with conninfo syntax is only a name (3D000 from the server)', async () => {
      const e = await connectError(clientConfig(rp, { tenant: 'acme', user: 'app', password: 'app-pass', database: "postgres user=postgres host='elsewhere'" }));
      assert.equal(e.code, '3D000');
      assert.equal(e.message, `database "postgres user=postgres host='elsewhere'" does not exist`);
    });
  });

  describe('cross-tenant cancel keys (R5)', () => {
    it('a key is the proxy\'s own: another tenant\'s pid with one\'s own secret, or the backend\'s real pid, cancels nothing', async () => {
      const a = await connect(rp, { tenant: 'acme', user: 'app', password: 'app-pass', applicationName: 'victim' });
      const b = await connect(rp, { tenant: 'globex', user: 'gapp', password: 'gapp-pass' });
      const ka = a as unknown as { processID: number; secretKey: number };
      const kb = b as unknown as { processID: number; secretKey: number };
      const backendPid = (await a.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
      assert.notEqual(ka.processID, backendPid, 'the client never learns the backend pid');
      const q = a.query<{ v: number }>('select pg_sleep(1), 42 as v');
      await waitFor(async () => (await pgc.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where application_name = 'victim' and state = 'active'")).rows[0]?.n === 1);
      await sendCancel(rp.port, ka.processID, kb.secretKey);
      await sendCancel(rp.port, kb.processID, ka.secretKey);
      await sendCancel(rp.port, backendPid, ka.secretKey);
      assert.equal((await q).rows[0]?.v, 42, 'not cancelled');
      await Promise.all([a.end(), b.end()]);
    });
  });

  describe('TLS and channel-binding downgrades through a man in the middle (rule 4, T1, A8, A9)', () => {
    const viaMitm = (port: number, extra: string): string =>
      `host=acme.pg.test hostaddr=127.0.0.1 port=${port} user=app dbname=postgres sslrootcert=${mitmCerts.caCertPath} ${extra}`;

    it('a relay with a trusted certificate logs in without channel binding (control), and is caught with it (28000 check failed)', async () => {
      const m = await startMitm({ port: rp.port, ca: rp.certs.caCertPem }, mitmCerts, { clientTls: true });
      try {
        const control = await psql(viaMitm(m.port, 'sslmode=verify-full channel_binding=disable'), 'app-pass', ['-c', 'select 1']);
        assert.equal(control.code, 0, control.stderr);
        const bound = await psql(viaMitm(m.port, 'sslmode=verify-full channel_binding=require'), 'app-pass', ['-c', 'select 1']);
        assert.notEqual(bound.code, 0);
        assert.match(bound.stderr, /FATAL: {2}SCRAM channel binding check failed/);
      } finally {
        await m.close();
      }
    });

    it('stripping PLUS: channel_binding=require refuses on its own; prefer sends y and pgwarden answers 28000 (A8); rewriting y to n breaks the proof or the c= check', async () => {
      const strip = await startMitm({ port: rp.port, ca: rp.certs.caCertPem }, mitmCerts, { clientTls: true, stripPlus: true });
      const first = await startMitm({ port: rp.port, ca: rp.certs.caCertPem }, mitmCerts, { clientTls: true, stripPlus: true, rewriteY: 'first' });
      const both = await startMitm({ port: rp.port, ca: rp.certs.caCertPem }, mitmCerts, { clientTls: true, stripPlus: true, rewriteY: 'both' });
      try {
        const req = await psql(viaMitm(strip.port, 'sslmode=verify-full channel_binding=require'), 'app-pass', ['-c', 'select 1']);
        assert.notEqual(req.code, 0);
        assert.match(req.stderr, /channel binding is required, but server did not offer an authentication method that supports channel binding/);
        const pref = await psql(viaMitm(strip.port, 'sslmode=verify-full channel_binding=prefer'), 'app-pass', ['-c', 'select 1']);
        assert.notEqual(pref.code, 0);
        assert.match(pref.stderr, /FATAL: {2}SCRAM channel binding negotiation error/);
        const onlyFirst = await psql(viaMitm(first.port, 'sslmode=verify-full channel_binding=prefer'), 'app-pass', ['-c', 'select 1']);
        assert.match(onlyFirst.stderr, /FATAL: {2}unexpected SCRAM channel-binding attribute in client-final-message/);
        const rewritten = await psql(viaMitm(both.port, 'sslmode=verify-full channel_binding=prefer'), 'app-pass', ['-c', 'select 1']);
        assert.match(rewritten.stderr, /FATAL: {2}password authentication failed for user "app"/);
      } finally {
        await Promise.all([strip.close(), first.close(), both.close()]);
      }
    });

    it('stripping TLS (answering N to the client) with require_tls: 28000 before any authentication request', async () => {
      const m = await startMitm({ port: rp.port, ca: rp.certs.caCertPem }, mitmCerts, { clientTls: false });
      try {
        const r = await psql(viaMitm(m.port, "sslmode=prefer options='-c pgwarden.tenant=acme'"), 'app-pass', ['-c', 'select 1']);
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /FATAL: {2}TLS connection is required/);
        assert.deepEqual(m.serverTypes[0], ['E'], 'pgwarden sent the error and nothing else: no password request over plaintext');
      } finally {
        await m.close();
      }
    });
  });

  describe('drain (N12, S8, rule 10)', () => {
    it('answers SSLRequest with S during drain, then 57P03 to the new session; ends the old one with 57P01 at the deadline', async () => {
      const spec: ProxySpec = { metrics: false, tenants: [{ id: 'acme', cluster: pgc, users: [{ name: 'app', verifier: await readVerifier(pgc, 'app') }] }] };
      const d = await startProxy(spec);
      try {
        const old = await rawLogin(d.port, d.certs.caCertPem, { tenant: 'acme', user: 'app', password: 'app-pass' });
        const draining = d.proxy.drain(800);
        // The listener stays open while draining: SSLRequest is answered with a byte, never an ErrorResponse.
        const w = await Wire.connect(d.port);
        await w.startTls(d.certs.caCertPem, 'acme.pg.test');
        w.write(startupMessage({ user: 'app', database: 'postgres' }));
        await expectFatal(w, '57P03', 'the database system is shutting down');
        const e = await old.error(3000);
        assert.equal(e?.code, '57P01');
        assert.equal(e?.message, 'terminating connection due to administrator command');
        await draining;
      } finally {
        await d.close();
      }
    });
  });

  it('no secret reached the audit log', async () => {
    await rp.proxy.audit.flush();
    const text = await readFile(path.join(dir, 'audit.jsonl'), 'utf8');
    for (const secret of ['app-pass', 'gapp-pass', 'SCRAM-SHA-256$']) assert.ok(!text.includes(secret), secret);
    assert.ok(!text.includes('injected fault'), 'the internal error\'s cause stays in the log, not the audit');
  });
});
