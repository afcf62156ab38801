/**
 * A short, fixed-seed run of the auth_query hostile-server fuzzer (test/support/auth-query-fuzz.ts):
 * every reply kind several times; `npm run fuzz -- --target auth-query` runs it for longer.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { AUTH_FUZZ_KINDS, runAuthQueryFuzz, startAuthFuzzServer, type AuthFuzzSummary } from '../support/auth-query-fuzz.js';
import { AuthLookups } from '../../src/auth/auth-query.js';
import { makeScramVerifier } from '../../src/auth/scram.js';
import { DEFAULT_AUTH_QUERY, type TenantConfig } from '../../src/config/schema.js';

describe('auth_query lookups against a hostile tenant server', () => {
  it('end every reply as a refusal, a valid verifier only for a valid reply, or 08006, in time, without a crash', async () => {
    const summary: AuthFuzzSummary = { cases: 0, byOutcome: {}, violations: [] };
    await runAuthQueryFuzz(42, 0, AUTH_FUZZ_KINDS.length * 4, summary);
    assert.deepEqual(summary.violations, []);
    assert.equal(summary.cases, AUTH_FUZZ_KINDS.length * 4);
    assert.equal(summary.byOutcome['valid:ok'], 4, JSON.stringify(summary.byOutcome));
    assert.equal(summary.byOutcome['no_rows:unknown_user'], 4);
  });
});

describe('auth_query lookup pool', () => {
  it('opens at most auth_pool_size connections for a burst of concurrent lookups, and reuses them', async () => {
    const verifier = await makeScramVerifier('pool', 4096, Buffer.alloc(16, 3));
    const seed = 5;
    const server = await startAuthFuzzServer(seed, verifier);
    const lookups = new AuthLookups({ onLookup: () => undefined, onCache: () => undefined, onError: () => undefined });
    const tenant = {
      id: 'pool',
      authQuery: {
        user: 'u',
        passwordEnv: 'PGWARDEN_POOL_TEST_UNSET',
        query: DEFAULT_AUTH_QUERY,
        database: 'postgres',
        cacheTtlMs: 0,
        negativeCacheTtlMs: 0,
        cacheSize: 10,
        poolSize: 2,
        timeoutMs: 2_000,
        lookupsPerSecond: 1_000,
      },
    } as unknown as TenantConfig;
    const target = { host: '127.0.0.1', port: server.port, tls: 'disable' as const, ca: undefined };
    try {
      // Case indexes that are multiples of the kind count draw the valid reply.
      const users = Array.from({ length: 12 }, (_, i) => `fz_${seed}_${i * AUTH_FUZZ_KINDS.length}`);
      const results = await Promise.all(users.map((u) => lookups.find(tenant, target, u)));
      assert.ok(results.every((r) => r.ok));
      await Promise.all(users.map((u) => lookups.find(tenant, target, u)));
      assert.ok(server.connections() <= 2, `${server.connections()} connections`);
    } finally {
      lookups.close();
      await server.close();
    }
  });
});
