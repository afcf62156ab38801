/**
 * SECURITY.md rules at the edge, against real clusters and real clients: one answer for every
 * credential failure, TLS policy, no cross-tenant reach, pre-auth limits and deadlines, framing.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { connectError, startProxy, connect, clientConfig, libpqConninfo, psql, type RunningProxy, type ProxySpec } from '../support/proxy.js';
import { Wire, startupMessage, sslRequest, gssencRequest, saslInitial, typed } from '../support/wire.js';
import { rawLogin } from '../support/login.js';
import { waitFor } from '../support/wait.js';
import { serialize } from 'pg-protocol';
import { ScramClientExchange } from '../../src/auth/scram.js';
import { verifyAuditFile } from '../../src/audit/verify.js';


function directTls(rp: RunningProxy, alpn: string[] | undefined): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port: rp.port, servername: 'acme.pg.test', ca: rp.certs.caCertPem, ...(alpn === undefined ? {} : { ALPNProtocols: alpn }) });
    s.once('secureConnect', () => resolve(s));
    s.once('error', reject);
    s.on('error', () => undefined); // later resets are expected: the proxy closes these
  });
}

describe('security at the edge', () => {
  let acmePg: Cluster;
  let globexPg: Cluster;
  let rp: RunningProxy;
  let dir: string;
  let spec: ProxySpec;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-sec-'));
    [acmePg, globexPg] = await Promise.all([
      startCluster({ users: [{ name: 'app', password: 'acme-pass' }, { name: 'solo', password: 'solo-pass' }], databases: ['acmedb'] }),
      startCluster({ users: [{ name: 'app', password: 'globex-pass' }, { name: 'gapp', password: 'gapp-pass' }], databases: ['globexdb'] }),
    ]);
    spec = {
      auditFile: path.join(dir, 'audit.jsonl'),
      server: { auth_timeout: '1500ms' },
      tenants: [
        {
          id: 'acme',
          cluster: acmePg,
          database: 'acmedb',
          users: [
            { name: 'app', verifier: await readVerifier(acmePg, 'app') },
            { name: 'solo', verifier: await readVerifier(acmePg, 'solo') },
          ],
        },
        { id: 'globex', cluster: globexPg, database: 'globexdb', users: [{ name: 'gapp', verifier: await readVerifier(globexPg, 'gapp') }] },
        { id: 'closed', cluster: acmePg, enabled: false, users: [{ name: 'app', verifier: await readVerifier(acmePg, 'app') }] },
        { id: 'walled', cluster: acmePg, allowCidrs: ['10.0.0.0/8'], users: [{ name: 'app', verifier: await readVerifier(acmePg, 'app') }] },
        { id: 'tiny', cluster: acmePg, maxClientConnections: 1, users: [{ name: 'solo', verifier: await readVerifier(acmePg, 'solo') }] },
        // A tenant sharing a server: only its own database may be asked for.
        { id: 'shared', cluster: acmePg, database: 'acmedb', databases: ['acmedb'], users: [{ name: 'app', verifier: await readVerifier(acmePg, 'app') }] },
      ],
    };
    rp = await startProxy(spec);
  });

  after(async () => {
    await rp?.close();
    await Promise.all([acmePg?.stop(), globexPg?.stop()]);
    await rm(dir, { recursive: true, force: true });
  });

  it('gives wrong password, unknown user, unknown/disabled tenant and a refused source the same 28P01', async () => {
    const cases = [
      { tenant: 'acme', user: 'app', password: 'wrong' }, // bad_password
      { tenant: 'acme', user: 'nobody', password: 'x' }, // unknown_user
      { tenant: 'nosuch', user: 'app', password: 'acme-pass' }, // unknown_tenant
      { tenant: 'closed', user: 'app', password: 'acme-pass' }, // tenant_disabled
      { tenant: 'walled', user: 'app', password: 'acme-pass' }, // source_not_allowed
    ];
    for (const c of cases) {
      const e = await connectError(clientConfig(rp, c));
      assert.equal(e.code, '28P01', JSON.stringify(c));
      assert.equal(e.message, `password authentication failed for user "${c.user}"`);
    }
    // psql sees the identical text for an unknown tenant and a wrong password.
    const a = await psql(libpqConninfo(rp, { tenant: 'acme', user: 'app' }), 'wrong', ['-c', 'select 1']);
    const b = await psql(libpqConninfo(rp, { tenant: 'nosuch', user: 'app' }), 'acme-pass', ['-c', 'select 1']);
    const strip = (s: string): string => s.replace(/connection to server at "[^"]*" \([^)]*\), port \d+ failed: /, '').trim();
    assert.notEqual(a.code, 0);
    assert.equal(strip(a.stderr), strip(b.stderr));
    assert.match(strip(a.stderr), /FATAL: {2}password authentication failed for user "app"/);
  });

  it('offers the same SCRAM salt for an unknown user on every attempt (deterministic mock)', async () => {
    const salts: string[] = [];
    for (let i = 0; i < 2; i++) {
      const w = await Wire.connect(rp.port);
      await w.startTls(rp.certs.caCertPem, 'acme.pg.test');
      w.write(startupMessage({ user: 'ghost', database: 'postgres' }));
      const r = await w.frame();
      assert.equal(r?.type, 'R');
      w.write(saslInitial('SCRAM-SHA-256', 'n,,n=,r=abcdefghijklmnop'));
      const cont = await w.frame();
      assert.equal(cont?.type, 'R');
      salts.push(/s=([^,]+)/.exec(cont.body.toString('utf8', 4))![1]!);
      w.end();
    }
    assert.equal(salts[0], salts[1]);
  });

  it('refuses plaintext sessions with 28000 when TLS is required', async () => {
    const e = await connectError(clientConfig(rp, { tenant: 'acme', user: 'app', password: 'acme-pass', ssl: false, options: '-c pgwarden.tenant=acme' }));
    assert.equal(e.code, '28000');
    assert.equal(e.message, 'TLS connection is required');
  });

  it('keeps a tenant user away from another tenant by every identifier', async () => {
    // SNI of the other tenant with this tenant's credentials: no such user there.
    const viaSni = await connectError(clientConfig(rp, { tenant: 'globex', user: 'app', password: 'acme-pass' }));
    assert.equal(viaSni.code, '28P01');
    // SNI and options disagree.
    const mixed = await connectError(clientConfig(rp, { tenant: 'acme', user: 'app', password: 'acme-pass', options: '-c pgwarden.tenant=globex' }));
    assert.equal(mixed.code, '28000');
    assert.equal(mixed.message, 'inconsistent tenant identifiers in connection request');
    // The other tenant's database name only names a database on this tenant's own server.
    const viaDb = await connectError(clientConfig(rp, { tenant: 'acme', user: 'app', password: 'acme-pass', database: 'globexdb' }));
    assert.equal(viaDb.code, '3D000');
    // And a real session lands on its own server.
    const c = await connect(rp, { tenant: 'acme', user: 'app', password: 'acme-pass', database: 'acmedb' });
    const port = (await c.query<{ port: string }>("select current_setting('port') as port")).rows[0]!.port;
    assert.equal(Number(port), acmePg.port);
    await c.end();
  });

  it('limits a tenant on a shared server to its listed databases (3D000, after authentication)', async () => {
    const other = await connectError(clientConfig(rp, { tenant: 'shared', user: 'app', password: 'acme-pass', database: 'postgres' }));
    assert.equal(other.code, '3D000');
    assert.equal(other.message, 'database "postgres" does not exist');
    const bad = await connectError(clientConfig(rp, { tenant: 'shared', user: 'app', password: 'wrong', database: 'postgres' }));
    assert.equal(bad.code, '28P01');
    const c = await connect(rp, { tenant: 'shared', user: 'app', password: 'acme-pass', database: 'acmedb' });
    await c.end();
  });

  it('answers the tenant limit with 53300 after authentication', async () => {
    const first = await connect(rp, { tenant: 'tiny', user: 'solo', password: 'solo-pass' });
    const e = await connectError(clientConfig(rp, { tenant: 'tiny', user: 'solo', password: 'solo-pass' }));
    assert.equal(e.code, '53300');
    // A wrong password still gets 28P01, not 53300: the limit is checked after authentication.
    const bad = await connectError(clientConfig(rp, { tenant: 'tiny', user: 'solo', password: 'nope' }));
    assert.equal(bad.code, '28P01');
    await first.end();
    const again = await connect(rp, { tenant: 'tiny', user: 'solo', password: 'solo-pass' });
    await again.end();
  });

  it('rejects data smuggled after SSLRequest (CVE-2021-23214) after answering S', async () => {
    const w = await Wire.connect(rp.port);
    w.write(Buffer.concat([sslRequest(), startupMessage({ user: 'app', database: 'postgres' })]));
    const answer = await w.read(1);
    assert.equal(answer.toString(), 'S');
    const err = await w.error();
    assert.equal(err?.code, '08P01');
    assert.equal(err?.message, 'received unencrypted data after SSL request');
    assert.ok(await w.waitClosed());
  });

  it('answers GSSENCRequest with N and then continues', async () => {
    const w = await Wire.connect(rp.port);
    w.write(gssencRequest());
    assert.equal((await w.read(1)).toString(), 'N');
    await w.startTls(rp.certs.caCertPem, 'acme.pg.test');
    w.write(startupMessage({ user: 'app', database: 'postgres' }));
    const f = await w.frame();
    assert.equal(f?.type, 'R');
    w.end();
  });

  it('accepts direct TLS with ALPN "postgresql" and closes direct TLS without it', async () => {
    const ok = await directTls(rp, ['postgresql']);
    ok.write(startupMessage({ user: 'app', database: 'postgres' }));
    const f = await new Promise<Buffer>((resolve) => ok.once('data', resolve));
    assert.equal(String.fromCharCode(f[0]!), 'R');
    ok.destroy();
    // No ALPN: the handshake may complete, but the session is closed without a reply.
    const bare = await directTls(rp, undefined).catch(() => null);
    if (bare !== null) {
      bare.write(startupMessage({ user: 'app', database: 'postgres' }));
      const got = await new Promise<Buffer | null>((resolve) => {
        bare.once('data', resolve);
        bare.once('close', () => resolve(null));
        bare.once('error', () => resolve(null));
      });
      assert.equal(got, null);
    }
  });

  it('closes without a message on startup lengths out of range', async () => {
    // 10,005: the first length over PostgreSQL's 10,000-byte startup body (the length word is not counted).
    for (const len of [0, 3, 7, 10_005, 0x7fffffff]) {
      const w = await Wire.connect(rp.port);
      const b = Buffer.alloc(8);
      b.writeUInt32BE(len, 0);
      b.writeUInt32BE(196608, 4);
      w.write(b);
      assert.ok(await w.waitClosed(), `length ${len}`);
      assert.equal((await w.read(1, 100).catch(() => Buffer.alloc(0))).length, 0, `no bytes for length ${len}`);
    }
  });

  it('refuses unsupported protocol versions, replication and a second SSLRequest', async () => {
    const w1 = await Wire.connect(rp.port);
    w1.write(startupMessage({ user: 'app' }, 4 << 16));
    const e1 = await w1.error();
    assert.equal(e1?.code, '0A000');
    assert.match(e1.message, /^unsupported frontend protocol 4\.0/);

    const w2 = await Wire.connect(rp.port);
    await w2.startTls(rp.certs.caCertPem, 'acme.pg.test');
    w2.write(startupMessage({ user: 'app', replication: 'database' }));
    const e2 = await w2.error();
    assert.equal(e2?.code, '0A000');
    assert.equal(e2?.message, 'replication connections are not supported');

    const w3 = await Wire.connect(rp.port);
    await w3.startTls(rp.certs.caCertPem, 'acme.pg.test');
    w3.write(sslRequest());
    const e3 = await w3.error();
    assert.equal(e3?.code, '0A000');
  });

  it('answers unknown _pq_ options with NegotiateProtocolVersion and goes on', async () => {
    const w = await Wire.connect(rp.port);
    await w.startTls(rp.certs.caCertPem, 'acme.pg.test');
    w.write(startupMessage({ user: 'app', database: 'postgres', _pq__bogus: 'x' }.constructor === Object ? { user: 'app', database: 'postgres', '_pq_.bogus': '1' } : {}, (3 << 16) | 2));
    const f1 = await w.frame();
    assert.equal(f1?.type, 'v');
    assert.equal(f1.body.readUInt32BE(0), 0x00030000); // the newest version we speak, whole (3.0), as PostgreSQL sends it
    assert.equal(f1.body.readUInt32BE(4), 1);
    assert.equal(f1.body.toString('utf8', 8).replace(/\0$/, ''), '_pq_.bogus');
    const f2 = await w.frame();
    assert.equal(f2?.type, 'R');
    w.end();
  });

  it('ends a silent pre-auth connection at the deadline, and a stalled SASL exchange with 08006', async () => {
    const quiet = await Wire.connect(rp.port);
    const t0 = Date.now();
    assert.ok(await quiet.waitClosed(5000));
    assert.ok(Date.now() - t0 >= 1000, 'not before the deadline');

    const stalled = await Wire.connect(rp.port);
    await stalled.startTls(rp.certs.caCertPem, 'acme.pg.test');
    stalled.write(startupMessage({ user: 'app', database: 'postgres' }));
    const err = await stalled.error(5000);
    assert.equal(err?.code, '08006');
    assert.equal(err?.message, 'authentication timed out');
  });

  it('rejects a wrong message type and an oversized SASL message during authentication', async () => {
    const w = await Wire.connect(rp.port);
    await w.startTls(rp.certs.caCertPem, 'acme.pg.test');
    w.write(startupMessage({ user: 'app', database: 'postgres' }));
    await w.frame();
    w.write(typed('Q', Buffer.from('select 1\0')));
    const e = await w.error();
    assert.equal(e?.code, '08P01');
    assert.equal(e?.message, 'expected SASL response, got message type 81');

    const w2 = await Wire.connect(rp.port);
    await w2.startTls(rp.certs.caCertPem, 'acme.pg.test');
    w2.write(startupMessage({ user: 'app', database: 'postgres' }));
    await w2.frame();
    const head = Buffer.alloc(5);
    head.write('p');
    head.writeUInt32BE(2000, 1);
    w2.write(head);
    const e2 = await w2.error();
    assert.equal(e2?.code, '08P01');
    assert.equal(e2?.message, 'invalid message length');
  });

  it('after login, answers an unknown message type and a bad length with 08P01 and leaves other sessions alone', async () => {
    const bystander = await connect(rp, { tenant: 'acme', user: 'app', password: 'acme-pass' });
    const w = await rawLogin(rp.port, rp.certs.caCertPem, { tenant: 'acme', user: 'app', password: 'acme-pass' });
    w.write(typed('Q', Buffer.from('select 1\0')));
    let f;
    do f = await w.frame();
    while (f !== null && f.type !== 'Z');
    w.write(typed('?', Buffer.alloc(0)));
    const e = await w.error();
    assert.equal(e?.code, '08P01');
    assert.equal(e?.message, 'invalid frontend message type 63');
    assert.ok(await w.waitClosed());

    const w2 = await rawLogin(rp.port, rp.certs.caCertPem, { tenant: 'acme', user: 'app', password: 'acme-pass' });
    const sync = Buffer.alloc(5);
    sync.write('S');
    sync.writeUInt32BE(0x80000000, 1);
    w2.write(sync);
    const e2 = await w2.error();
    assert.equal(e2?.code, '08P01');
    assert.equal(e2?.message, 'invalid message length');

    assert.equal((await bystander.query<{ n: number }>('select 7 as n')).rows[0]?.n, 7);
    await bystander.end();
  });

  it('ends a session whose first pipelined message (behind the SASL response) is bad, instead of leaving it open', async () => {
    // Found by the fuzzer (sasl_final): a valid client-final-message with junk behind it used to
    // leave the session relaying with its socket paused, after the client had gone.
    const relaying = (): number => [...rp.proxy.sessions].filter((x) => x.phase === 'relaying').length;
    const before = relaying();
    const w = await Wire.connect(rp.port);
    await w.startTls(rp.certs.caCertPem, 'acme.pg.test');
    w.write(startupMessage({ user: 'app', database: 'postgres' }));
    await w.frame();
    const scram = new ScramClientExchange({ kind: 'password', password: 'acme-pass' });
    w.write(serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256', scram.clientFirst()));
    const first = await w.frame();
    const final = await scram.serverFirst(first!.body.toString('utf8', 4));
    w.write(Buffer.concat([serialize.sendSCRAMClientFinalMessage(final), Buffer.from([0x09, 0x66, 0xe1, 0x5f, 0x40, 1, 2, 3])]));
    const e = await w.error();
    assert.equal(e?.code, '08P01');
    assert.equal(e?.message, 'invalid frontend message type 9');
    assert.ok(await w.waitClosed());
    await waitFor(() => relaying() === before, 5000, 'the session ended');
  });

  it('writes a verifiable audit log with the real reasons and no secrets', async () => {
    await rp.proxy.audit.flush();
    const file = spec.auditFile!;
    const text = await readFile(file, 'utf8');
    const records = text.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const reasons = new Set(records.filter((r) => r['event'] === 'session.auth_failure').map((r) => r['reason']));
    for (const r of ['bad_password', 'unknown_user', 'unknown_tenant', 'tenant_disabled', 'source_not_allowed']) assert.ok(reasons.has(r), `reason ${r} audited`);
    assert.ok(records.some((r) => r['event'] === 'session.start'));
    assert.ok(records.some((r) => r['event'] === 'session.end'));
    for (const secret of ['acme-pass', 'globex-pass', 'solo-pass', 'gapp-pass', 'SCRAM-SHA-256$']) assert.ok(!text.includes(secret), `no ${secret} in audit`);
    const v = await verifyAuditFile(file);
    assert.equal(v.ok, true, JSON.stringify(v.firstBad));
    assert.equal(v.records, records.length);
  });
});
