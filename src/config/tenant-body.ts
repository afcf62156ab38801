/**
 * One tenant given as a body (the JSON form of a `[tenants.<id>]` table, users included), as the
 * catalog and the admin API hold it: checked by the file's own code (validate-tenants.ts) with the
 * config's [pool]/[limits] defaults, its rules between sections and the environment pass, so a
 * catalog tenant can never hold what the file could not. Problems name keys as check-config does.
 */
import path from 'node:path';
import { problemsWithEnvironment } from './environment.js';
import type { Config, TenantConfig } from './schema.js';
import { Reader } from './toml-reader.js';
import { checkTenantNeeds, readTenantEntry } from './validate-tenants.js';

export type TenantBodyValidation =
  | { readonly ok: true; readonly tenant: TenantConfig }
  | { readonly ok: false; readonly problems: readonly string[] };

/** What a tenant body is checked against: the defaults and sections of the running config. */
export type TenantBodyContext = Pick<Config, 'tenantDefaults' | 'audit' | 'configDir'>;

/**
 * Validates `body` as `[tenants.<id>]`. `env` is the environment the env-var references
 * (backend_password_env, staff_backend_password_env) must be set in: this process's by default.
 */
export function validateTenantBody(id: string, body: unknown, config: TenantBodyContext, env: NodeJS.ProcessEnv = process.env): TenantBodyValidation {
  const r = new Reader();
  const tenant = readTenantEntry(r, id, body, (p) => path.resolve(config.configDir, p), config.tenantDefaults);
  if (tenant !== undefined) checkTenantNeeds(r, tenant, config.audit);
  const problems = problemsWithEnvironment({ config: tenant, problems: r.problems, envReferences: r.envReferences }, env);
  if (problems.length > 0 || tenant === undefined) return { ok: false, problems: problems.length > 0 ? problems : [`tenants.${id}: invalid`] };
  return { ok: true, tenant };
}
