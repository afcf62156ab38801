/**
 * SCRAM verifiers from the configuration: the user's own, or for a login that will fail a
 * deterministic mock (rule 3) showing the iteration count that real users of that tenant show
 * (of all tenants, for an unknown one), so `i=` in the server-first-message gives nothing away.
 */
import type { Config, TenantConfig } from '../../config/schema.js';
import { mockVerifier, typicalIterations, type ScramVerifier } from '../../auth/scram.js';
import type { LoginPlan } from './admission.js';
import type { VerifierSource } from './authenticator.js';

/**
 * Mock verifiers' iteration counts by tenant (or, for unknown tenants, by config). Configs are
 * replaced whole on reload, so a weak map keyed by them never serves a stale count.
 */
const MOCK_ITERATIONS = new WeakMap<Config | TenantConfig, number>();

export class ConfiguredVerifiers implements VerifierSource {
  constructor(
    private readonly config: Config,
    private readonly mockSecret: Buffer,
  ) {}

  verifierFor(plan: LoginPlan): Promise<ScramVerifier> {
    if (plan.failReason === null) return Promise.resolve(plan.user!.verifier);
    return Promise.resolve(mockVerifier(this.mockSecret, plan.startup.tenantId, plan.startup.user, this.mockIterations(plan.tenant)));
  }

  /** Computed once per tenant (or config) and kept, never per login. */
  private mockIterations(tenant: TenantConfig | undefined): number {
    const key: Config | TenantConfig = tenant ?? this.config;
    let n = MOCK_ITERATIONS.get(key);
    if (n === undefined) {
      const tenants = tenant === undefined ? [...this.config.tenants.values()] : [tenant];
      n = typicalIterations(tenants.flatMap((t) => [...t.users.values()].map((u) => u.verifier)));
      MOCK_ITERATIONS.set(key, n);
    }
    return n;
  }
}
