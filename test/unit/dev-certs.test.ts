/**
 * Checks the development PKI from src/tools/dev-certs.ts: file modes, certificate contents, and a
 * real TLS handshake on loopback that Node verifies against the generated CA.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { makeDevCerts, type DevCerts } from '../../src/tools/dev-certs.js';

/** DER of the AlgorithmIdentifier OID 1.2.840.10045.4.3.2 (ecdsa-with-SHA256). */
const ECDSA_WITH_SHA256_OID = Buffer.from('06082a8648ce3d040302', 'hex');

describe('makeDevCerts', () => {
  let dir: string;
  let certs: DevCerts;
  let server: tls.Server;
  let port: number;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-certs-'));
    certs = await makeDevCerts({ dir: path.join(dir, 'nested'), hostnames: ['*.db.example.com', 'db.example.com'] });
    server = tls.createServer({ cert: certs.serverCertPem, key: certs.serverKeyPem }, (socket) => socket.end('hello'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });

  after(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(dir, { recursive: true, force: true });
  });

  /** Connects with the dev CA as the only trust anchor; resolves with `authorized` or rejects. */
  function handshake(servername?: string): Promise<{ authorized: boolean; curve: string | undefined }> {
    return new Promise((resolve, reject) => {
      const options: tls.ConnectionOptions = { host: '127.0.0.1', port, ca: certs.caCertPem };
      if (servername !== undefined) options.servername = servername;
      const socket = tls.connect(options, () => {
        const result = { authorized: socket.authorized, curve: socket.getPeerCertificate().asn1Curve };
        socket.destroy();
        resolve(result);
      });
      socket.once('error', reject);
    });
  }

  it('writes PEM files, private keys with mode 0600', async () => {
    for (const file of [certs.caKeyPath, certs.serverKeyPath]) {
      assert.equal((await stat(file)).mode & 0o777, 0o600, file);
    }
    assert.match(certs.serverKeyPem, /^-----BEGIN PRIVATE KEY-----\n/); // PKCS#8
    assert.deepEqual(
      [certs.caCertPath, certs.serverCertPath, certs.serverKeyPath].map((p) => path.basename(p)),
      ['ca.crt', 'server.crt', 'server.key'],
    );
  });

  it('issues a P-256 server certificate for the hostnames, localhost and 127.0.0.1', () => {
    const ca = new X509Certificate(certs.caCertPem);
    const leaf = new X509Certificate(certs.serverCertPem);
    assert.equal(ca.ca, true);
    assert.equal(leaf.ca, false);
    assert.ok(leaf.checkIssued(ca) && leaf.verify(ca.publicKey));
    assert.equal(leaf.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    assert.ok(leaf.raw.includes(ECDSA_WITH_SHA256_OID), 'signed with ecdsa-with-SHA256');
    assert.equal(leaf.subjectAltName, 'DNS:*.db.example.com, DNS:db.example.com, DNS:localhost, IP Address:127.0.0.1');
    assert.equal(leaf.checkHost('acme.db.example.com'), '*.db.example.com'); // returns the matching SAN
    assert.equal(leaf.checkHost('a.b.db.example.com'), undefined); // a wildcard covers one label
    assert.ok(leaf.keyUsage?.includes('1.3.6.1.5.5.7.3.1'), 'extendedKeyUsage serverAuth');
  });

  it('is accepted by tls.createSecureContext', () => {
    assert.doesNotThrow(() =>
      tls.createSecureContext({ cert: certs.serverCertPem, key: certs.serverKeyPem, ca: certs.caCertPem }),
    );
  });

  it('completes a verified handshake for SNI acme.db.example.com', async () => {
    assert.deepEqual(await handshake('acme.db.example.com'), { authorized: true, curve: 'prime256v1' });
  });

  it('verifies the IP SAN when connecting to 127.0.0.1 without SNI', async () => {
    assert.equal((await handshake()).authorized, true);
  });

  it('rejects a name outside the SANs', async () => {
    await assert.rejects(handshake('acme.other.example.org'), { code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
  });
});
