/**
 * TLS material for the client-facing listener: the secure context, the certificate choice by
 * SNI, and the `tls-server-end-point` channel-binding data of our certificate (RFC 5929 §4.1).
 * Loading is all-or-nothing so a reload with a broken certificate keeps the old one.
 */
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import tls from 'node:tls';
import { x509 } from './x509.js';

export interface TlsMaterial {
  readonly secureContext: tls.SecureContext;
  /** Hash of our certificate, with the hash named by its signature algorithm (SHA-1/MD5 → SHA-256). */
  readonly endpointBinding: Buffer;
  readonly minVersion: 'TLSv1.2' | 'TLSv1.3';
  /** When our certificate (the leaf) expires, for pgwarden_tls_certificate_expiry_timestamp_seconds. */
  readonly notAfter: Date;
}

/** Hash algorithm RFC 5929 prescribes for a certificate, or throws (Ed25519 has none: rule 4). */
export function endpointHashAlgorithm(certPem: string): 'sha256' | 'sha384' | 'sha512' {
  const cert = new x509.X509Certificate(certPem);
  const alg = cert.signatureAlgorithm as { name?: string; hash?: { name?: string } };
  const hash = alg.hash?.name?.toUpperCase();
  if (hash === undefined) {
    throw new Error(`certificate signature algorithm ${alg.name ?? 'unknown'} has no hash; use an RSA or ECDSA certificate (channel binding needs one)`);
  }
  if (hash === 'SHA-384') return 'sha384';
  if (hash === 'SHA-512') return 'sha512';
  return 'sha256'; // SHA-256, and SHA-1/MD5 upgraded to SHA-256 by RFC 5929
}

export function loadTlsMaterial(certPath: string, keyPath: string, minVersion: 'TLSv1.2' | 'TLSv1.3'): TlsMaterial {
  const certPem = readFileSync(certPath, 'utf8');
  const keyPem = readFileSync(keyPath, 'utf8');
  const secureContext = tls.createSecureContext({ cert: certPem, key: keyPem, minVersion });
  // The leaf is the first certificate in the chain file.
  const leafPem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(certPem)?.[0];
  if (leafPem === undefined) throw new Error(`${certPath}: no PEM certificate found`);
  const leaf = new x509.X509Certificate(leafPem);
  const endpointBinding = createHash(endpointHashAlgorithm(leafPem)).update(Buffer.from(leaf.rawData)).digest();
  return { secureContext, endpointBinding, minVersion, notAfter: leaf.notAfter };
}
