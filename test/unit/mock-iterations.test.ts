/**
 * The iteration count a mock SCRAM verifier shows, so unknown users do not stand out (rule 3):
 * typicalIterations over a histogram, and ConfiguredVerifiers' kept counts, which must follow a
 * changed tenant (or a changed tenant list) and never serve a stale one.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_ITERATIONS, mockVerifier, typicalIterations, type ScramVerifier } from '../../src/auth/scram.js';
import { ConfiguredVerifiers } from '../../src/session/login/verifiers.js';
import type { LoginPlan } from '../../src/session/login/admission.js';
import type { Config, TenantConfig, UserConfig } from '../../src/config/schema.js';

const withIterations = (iterations: number): ScramVerifier => ({ ...mockVerifier(Buffer.alloc(32), 't', 'u'), iterations });
const histogram = (counts: number[]): Map<number, number> => {
  const h = new Map<number, number>();
  for (const c of counts) h.set(c, (h.get(c) ?? 0) + 1);
  return h;
};

describe('typicalIterations', () => {
  it("is PostgreSQL's default without verifiers", () => {
    assert.equal(typicalIterations(new Map()), DEFAULT_ITERATIONS);
  });
  it("is the tenant's count when every user shares it", () => {
    assert.equal(typicalIterations(histogram([10_000, 10_000])), 10_000);
  });
  it('is the most common count, ties going to the larger', () => {
    assert.equal(typicalIterations(histogram([4096, 10_000, 10_000, 4096, 50_000])), 10_000);
    assert.equal(typicalIterations(histogram([4096, 8192])), 8192);
  });
});

describe('ConfiguredVerifiers mock iteration counts', () => {
  const tenant = (id: string, counts: number[]): TenantConfig =>
    ({ id, users: new Map(counts.map((c, i) => [`u${i}`, { name: `u${i}`, verifier: withIterations(c) } as UserConfig])) }) as unknown as TenantConfig;
  const config = (...tenants: TenantConfig[]): Config => ({ tenants: new Map(tenants.map((t) => [t.id, t])) }) as unknown as Config;
  /** The `i=` a failed login's server-first-message would show. */
  const shown = async (c: Config, tenantId: string): Promise<number> => {
    const plan = { failReason: 'unknown_user', user: null, tenant: c.tenants.get(tenantId), startup: { tenantId, user: 'nobody' } } as unknown as LoginPlan;
    return (await new ConfiguredVerifiers(c, Buffer.alloc(32)).verifierFor(plan)).verifier.iterations;
  };

  it("shows a known tenant's own typical count, and for an unknown tenant the count of all tenants' users", async () => {
    const a = tenant('a', [4096, 4096, 4096]);
    const b = tenant('b', [10_000]);
    const c1 = config(a, b);
    assert.equal(await shown(c1, 'a'), 4096);
    assert.equal(await shown(c1, 'b'), 10_000);
    assert.equal(await shown(c1, 'nosuch'), 4096);
  });

  it('follows a change: a new config with one tenant replaced (the others the same objects) counts the new users', async () => {
    const a = tenant('a', [4096, 4096, 4096]);
    const c1 = config(a, tenant('b', [10_000]));
    assert.equal(await shown(c1, 'nosuch'), 4096);
    const c2 = config(a, tenant('b', [10_000, 10_000, 10_000, 10_000]));
    assert.equal(await shown(c2, 'nosuch'), 10_000);
    assert.equal(await shown(c2, 'a'), 4096);
    assert.equal(await shown(c1, 'nosuch'), 4096, 'the old config keeps its own count');
  });
});
