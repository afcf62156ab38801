/**
 * Tenant resolution and what of the client's startup request may reach the tenant's server.
 * Input: the SNI host name, the startup parameters. Output: a validated tenant id and the
 * allow-listed parameters, or a PgError from SECURITY.md §3 (T2–T4, N8, N9). No I/O.
 */
import { Errors } from '../errors.js';
import { TENANT_ID_RE } from '../config/schema.js';

/** The startup `options` key that names the tenant for clients that cannot send SNI. */
export const TENANT_OPTION = 'pgwarden.tenant';

/**
 * Startup parameters forwarded to the tenant's server (SECURITY.md rule 7): what drivers send
 * and what a session may legitimately set at login. Anything else is dropped, never forwarded.
 */
export const FORWARDED_PARAMS: ReadonlySet<string> = new Set([
  'application_name',
  'client_encoding',
  'DateStyle',
  'TimeZone',
  'IntervalStyle',
  'extra_float_digits',
  'search_path',
  'default_transaction_isolation',
  'default_transaction_read_only',
  'default_transaction_deferrable',
  'statement_timeout',
  'lock_timeout',
  'idle_in_transaction_session_timeout',
  'idle_session_timeout',
  'standard_conforming_strings',
  'bytea_output',
  'timezone',
  'datestyle',
  'geqo',
  'jit',
  'work_mem',
]);

export interface ResolvedStartup {
  readonly tenantId: string;
  readonly user: string;
  /** Requested database, or undefined to use the tenant's default. */
  readonly database: string | undefined;
  /** What goes to the tenant's server, besides user and database. */
  readonly forward: Map<string, string>;
  readonly applicationName: string | undefined;
}

/**
 * Splits a libpq `options` value into arguments: whitespace separates, backslash escapes
 * (PostgreSQL's pg_split_opts).
 */
export function splitOptions(options: string): string[] {
  const out: string[] = [];
  let cur = '';
  let inArg = false;
  for (let i = 0; i < options.length; i++) {
    const c = options[i]!;
    if (c === '\\' && i + 1 < options.length) {
      cur += options[++i]!;
      inArg = true;
    } else if (/\s/.test(c)) {
      if (inArg) out.push(cur);
      cur = '';
      inArg = false;
    } else {
      cur += c;
      inArg = true;
    }
  }
  if (inArg) out.push(cur);
  return out;
}

const escapeOption = (s: string): string => s.replace(/[\\\s]/g, (m) => `\\${m}`);
const GUC_NAME_RE = /^[A-Za-z_][A-Za-z0-9_.]*$/;

/** `-c name=value` / `--name=value` pairs of the options string; other switches are refused. */
function parseOptions(options: string): Map<string, string> {
  const args = splitOptions(options);
  const settings = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    let pair: string | undefined;
    if (a === '-c') pair = args[++i];
    else if (a.startsWith('-c')) pair = a.slice(2);
    else if (a.startsWith('--')) pair = a.slice(2);
    const eq = pair?.indexOf('=') ?? -1;
    if (pair === undefined || eq <= 0) {
      throw Errors.unsupportedOptions();
    }
    const name = pair.slice(0, eq).replace(/-/g, '_');
    if (!GUC_NAME_RE.test(name)) throw Errors.unsupportedOptions();
    settings.set(name, pair.slice(eq + 1));
  }
  return settings;
}

/** The tenant named by the SNI host `<tenant>.<suffix>`, '' for a name outside the suffix, undefined without SNI. */
export function tenantFromSni(sni: string | undefined, suffix: string): string | undefined {
  if (sni === undefined || sni === '' || suffix === '') return undefined;
  const host = sni.toLowerCase().replace(/\.$/, '');
  if (!host.endsWith(`.${suffix}`)) return '';
  return host.slice(0, host.length - suffix.length - 1);
}

const TRUE_VALUES = new Set(['true', 'on', 'yes', '1', 'database']);
const FALSE_VALUES = new Set(['false', 'off', 'no', '0']);

export function resolveStartup(params: ReadonlyMap<string, string>, sni: string | undefined, sniSuffix: string): ResolvedStartup {
  const user = params.get('user');
  if (user === undefined || user === '') throw Errors.noUser();
  const replication = params.get('replication');
  if (replication !== undefined) {
    const v = replication.toLowerCase();
    if (TRUE_VALUES.has(v)) throw Errors.replicationNotSupported();
    if (!FALSE_VALUES.has(v)) throw Errors.badReplicationValue(replication);
  }
  const optionSettings = parseOptions(params.get('options') ?? '');
  const fromOptions = optionSettings.get(TENANT_OPTION);
  optionSettings.delete(TENANT_OPTION);
  for (const name of optionSettings.keys()) {
    if (name.startsWith('pgwarden.')) throw Errors.unknownPgwardenOption(name);
    // The same allowlist as plain startup parameters: options is no way around it (rule 7).
    if (!FORWARDED_PARAMS.has(name)) throw Errors.settingNotAllowed(name);
  }
  const fromSni = tenantFromSni(sni, sniSuffix);
  const candidates = [fromSni, fromOptions].filter((t): t is string => t !== undefined && t !== '');
  const tenantId = candidates[0];
  if (tenantId === undefined) throw Errors.noTenant();
  if (candidates.some((c) => c !== tenantId)) throw Errors.inconsistentTenant();
  if (!TENANT_ID_RE.test(tenantId)) throw Errors.invalidTenant();

  const forward = new Map<string, string>();
  for (const [k, v] of params) if (FORWARDED_PARAMS.has(k)) forward.set(k, v);
  if (optionSettings.size > 0) {
    forward.set('options', [...optionSettings].map(([k, v]) => `-c ${escapeOption(k)}=${escapeOption(v)}`).join(' '));
  }
  const database = params.get('database');
  return {
    tenantId,
    user,
    database: database === undefined || database === '' ? undefined : database,
    forward,
    applicationName: params.get('application_name'),
  };
}
