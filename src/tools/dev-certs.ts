/**
 * Makes a throwaway development PKI (one CA, one server certificate) for local runs and tests;
 * loading certificates into listeners and choosing them per SNI is left to `net/`.
 *
 * Keys are ECDSA P-256 and signatures ecdsa-with-SHA256 on purpose: SCRAM-SHA-256-PLUS channel
 * binding (tls-server-end-point) hashes the server certificate with the hash of its signature
 * algorithm, which Ed25519 does not have.
 * @see https://www.rfc-editor.org/rfc/rfc5929#section-4.1
 */
import { KeyObject, webcrypto } from 'node:crypto';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

import { x509 } from '../net/x509.js';

export interface DevCerts {
  dir: string;
  caCertPath: string;
  caKeyPath: string;
  serverCertPath: string;
  serverKeyPath: string;
  caCertPem: string;
  serverCertPem: string;
  serverKeyPem: string;
}

export interface DevCertsOptions {
  /** Output directory, created if missing. */
  dir: string;
  /** DNS SANs for the server certificate; wildcards such as `*.db.example.com` are allowed. */
  hostnames: string[];
  /** Server certificate CN; defaults to the first hostname. Clients match SANs, not the CN. */
  commonName?: string;
  validDays?: number;
}

const EC_KEY = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING = { name: 'ECDSA', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;
/** Backdate notBefore so a slightly skewed clock (VMs, containers) still accepts a fresh cert. */
const CLOCK_SKEW_MS = 5 * 60_000;


function generateKeyPair(): Promise<webcrypto.CryptoKeyPair> {
  return webcrypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify']);
}

/** PKCS#8 PEM, the form PostgreSQL, OpenSSL and Node all load without a passphrase. */
function privateKeyPem(pair: webcrypto.CryptoKeyPair): string {
  return KeyObject.from(pair.privateKey).export({ type: 'pkcs8', format: 'pem' }).toString();
}

/** A DN value may not carry unescaped RFC 4514 specials; our names are plain, but be safe. */
function cn(value: string): string {
  return `CN=${value.replace(/([,+"\\<>;=])/g, '\\$1')}`;
}

async function writeSecret(file: string, pem: string): Promise<void> {
  await writeFile(file, pem, { mode: 0o600 });
  await chmod(file, 0o600); // `mode` only applies when the file is created
}

/** Creates ca.crt, ca.key, server.crt and server.key in `opts.dir`, replacing existing ones. */
export async function makeDevCerts(opts: DevCertsOptions): Promise<DevCerts> {
  const validDays = opts.validDays ?? 30;
  const notBefore = new Date(Date.now() - CLOCK_SKEW_MS);
  const notAfter = new Date(Date.now() + validDays * DAY_MS);
  await mkdir(opts.dir, { recursive: true });

  const caKeys = await generateKeyPair();
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    name: cn('pgwarden development CA'),
    keys: caKeys,
    notBefore,
    notAfter,
    signingAlgorithm: SIGNING,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });

  const dnsNames = [...new Set([...opts.hostnames, 'localhost'])];
  const serverKeys = await generateKeyPair();
  const server = await x509.X509CertificateGenerator.create({
    subject: cn(opts.commonName ?? opts.hostnames[0] ?? 'localhost'),
    issuer: ca.subject,
    publicKey: serverKeys.publicKey,
    signingKey: caKeys.privateKey,
    notBefore,
    notAfter,
    signingAlgorithm: SIGNING,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([
        ...dnsNames.map((value) => ({ type: 'dns' as const, value })),
        { type: 'ip' as const, value: '127.0.0.1' },
      ]),
      await x509.SubjectKeyIdentifierExtension.create(serverKeys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });

  const certs: DevCerts = {
    dir: opts.dir,
    caCertPath: path.join(opts.dir, 'ca.crt'),
    caKeyPath: path.join(opts.dir, 'ca.key'),
    serverCertPath: path.join(opts.dir, 'server.crt'),
    serverKeyPath: path.join(opts.dir, 'server.key'),
    caCertPem: ca.toString('pem') + '\n',
    serverCertPem: server.toString('pem') + '\n',
    serverKeyPem: privateKeyPem(serverKeys),
  };
  await writeFile(certs.caCertPath, certs.caCertPem);
  await writeFile(certs.serverCertPath, certs.serverCertPem);
  await writeSecret(certs.caKeyPath, privateKeyPem(caKeys));
  await writeSecret(certs.serverKeyPath, certs.serverKeyPem);
  return certs;
}
