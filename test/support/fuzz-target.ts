/**
 * The proxy the fuzzer (fuzz.ts) runs against, with the fake server of backend-fuzz.ts behind two
 * of its tenants. Apart from fuzz.ts because the fake server draws its cases from fuzz.ts.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { exportJWK, generateKeyPair } from 'jose';
import { readVerifier, type Cluster } from './cluster.js';
import type { ProxySpec } from './proxy.js';
import { startFakeBackend, type FakeBackend } from './backend-fuzz.js';

/**
 * What the fuzzer aims at: tenant acme (the client-side cases) and tenant other (a bystander) on
 * `cluster`, a table for COPY, [staff] configured (the password phase), the given pre-auth
 * deadline, and tenants hostile (session mode) and hostiletx (transaction mode) served by the
 * fake server of backend-fuzz.ts (the backend_* phases). Returns the spec, the fake server and
 * the temp dir it wrote the JWKS and audit file to (the caller closes and removes them).
 */
export async function fuzzProxySpec(cluster: Cluster, authTimeoutMs: number): Promise<{ spec: ProxySpec; dir: string; fake: FakeBackend }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-fuzz-'));
  await cluster.query('CREATE TABLE IF NOT EXISTS fuzz_copy (x text)');
  await cluster.query('GRANT INSERT ON fuzz_copy TO app');
  const { publicKey } = await generateKeyPair('ES256');
  await writeFile(path.join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'k' }] }));
  const app = { name: 'app', verifier: await readVerifier(cluster, 'app') };
  const fake = await startFakeBackend(app.verifier);
  const backendUrl = `postgresql://127.0.0.1:${fake.port}/postgres`;
  return {
    dir,
    fake,
    spec: {
      auditFile: path.join(dir, 'audit.jsonl'),
      server: { auth_timeout: `${authTimeoutMs}ms`, backend_connect_timeout: `${authTimeoutMs}ms` },
      staff: { jwks: path.join(dir, 'jwks.json'), issuer: 'i', audience: 'a' },
      tenants: [
        { id: 'acme', cluster, users: [app] },
        { id: 'other', cluster, users: [app] },
        // Every backend case logs in with its own database name, so its own pool key: keys and
        // idle backends must be forgotten (backend_idle_timeout) or a long run would pile them up.
        { id: 'hostile', cluster, backendUrl, users: [app], pool: { pool_mode: 'session', max_backend_connections: 20, backend_idle_timeout: '1s' } },
        { id: 'hostiletx', cluster, backendUrl, users: [app], pool: { pool_mode: 'transaction', max_backend_connections: 20, backend_idle_timeout: '1s' } },
      ],
    },
  };
}
