/**
 * SCRAM verifiers from the configuration: the user's own, or for a login that will fail a
 * deterministic mock (rule 3) showing the iteration count that real users of that tenant show
 * (of all tenants, for an unknown one), so `i=` in the server-first-message gives nothing away.
 */
import type { Config, TenantConfig } from '../../config/schema.js';
import { mockVerifier, typicalIterations } from '../../auth/scram.js';
import type { AuthLookups, LookupTarget } from '../../auth/auth-query.js';
import type { LoginPlan } from './admission.js';
import type { VerifierChoice, VerifierSource } from './authenticator.js';

/**
 * Iteration counts kept per tenant (a histogram of its users') and the resulting typical count
 * per tenant or per config. A tenant's config object is replaced when the tenant changes, a
 * config when anything does (a reload, a catalog change), so weak maps keyed by them never serve
 * a stale count; and since a catalog change keeps the unchanged tenants' objects, the count for
 * unknown tenants after a change merges those tenants' kept histograms instead of re-reading
 * every verifier (100,000 users: ~20 ms before, one small map per tenant now).
 */
const TENANT_HISTOGRAMS = new WeakMap<TenantConfig, ReadonlyMap<number, number>>();
const MOCK_ITERATIONS = new WeakMap<Config | TenantConfig, number>();

function histogramOf(tenant: TenantConfig): ReadonlyMap<number, number> {
  let h = TENANT_HISTOGRAMS.get(tenant);
  if (h === undefined) {
    const counts = new Map<number, number>();
    for (const u of tenant.users.values()) counts.set(u.verifier.iterations, (counts.get(u.verifier.iterations) ?? 0) + 1);
    TENANT_HISTOGRAMS.set(tenant, (h = counts));
  }
  return h;
}

/** Adds histogram `h` into `counts`. */
function addInto(counts: Map<number, number>, h: ReadonlyMap<number, number>): Map<number, number> {
  for (const [iterations, c] of h) counts.set(iterations, (counts.get(iterations) ?? 0) + c);
  return counts;
}

/** auth_query: the tenant's server is asked for roles not in `users`; null when no tenant uses it. */
export interface Lookups {
  readonly lookups: AuthLookups;
  readonly target: (tenant: TenantConfig) => LookupTarget;
}

export class ConfiguredVerifiers implements VerifierSource {
  constructor(
    private readonly config: Config,
    private readonly mockSecret: Buffer,
    private readonly lookups: Lookups | null = null,
  ) {}

  async verifierFor(plan: LoginPlan): Promise<VerifierChoice> {
    if (plan.failReason !== null) return this.mock(plan, plan.failReason);
    if (!plan.lookup) return { verifier: plan.user!.verifier, failReason: null };
    // A looked-up role: its verifier, or (expired, MD5, no such role…) the same mock exchange as an unknown user.
    const tenant = plan.tenant!;
    if (this.lookups === null) return this.mock(plan, 'unknown_user');
    const found = await this.lookups.lookups.find(tenant, this.lookups.target(tenant), plan.startup.user);
    return found.ok ? { verifier: found.verifier, failReason: null } : this.mock(plan, found.reason);
  }

  proofFailed(plan: LoginPlan, choice: VerifierChoice): void {
    if (plan.lookup && this.lookups !== null) this.lookups.lookups.proofFailed(plan.tenant!.id, plan.startup.user, choice.verifier);
  }

  private mock(plan: LoginPlan, failReason: string): VerifierChoice {
    return { verifier: mockVerifier(this.mockSecret, plan.startup.tenantId, plan.startup.user, this.mockIterationsFor(plan.tenant)), failReason };
  }

  /**
   * An auth_query tenant's mock shows the count its roles show: the configured users' and the
   * looked-up verifiers' together (a small merge per failed login; the looked-up counts change).
   */
  private mockIterationsFor(tenant: TenantConfig | undefined): number {
    const seen = tenant?.authQuery === undefined ? undefined : this.lookups?.lookups.iterationsSeen(tenant.id);
    if (seen === undefined || seen.size === 0) return this.mockIterations(tenant);
    return typicalIterations(addInto(new Map(histogramOf(tenant!)), seen));
  }

  /** Computed once per tenant (or config) and kept, never per login. */
  private mockIterations(tenant: TenantConfig | undefined): number {
    const key: Config | TenantConfig = tenant ?? this.config;
    let n = MOCK_ITERATIONS.get(key);
    if (n === undefined) {
      const counts = new Map<number, number>();
      for (const t of tenant === undefined ? this.config.tenants.values() : [tenant]) addInto(counts, histogramOf(t));
      n = typicalIterations(counts);
      MOCK_ITERATIONS.set(key, n);
    }
    return n;
  }
}
