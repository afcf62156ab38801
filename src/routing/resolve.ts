/**
 * Tenant resolution and what of the client's startup request may reach the tenant's server.
 * Input: the SNI host name, the startup parameters and the naming settings of [server]. Output: a
 * validated tenant id (and how it was named), the user name to authenticate, and the allow-listed
 * parameters, or a PgError from SECURITY.md §3 (T2–T4, N8, N9). No I/O.
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

/**
 * How the client named its tenant, in order of precedence: the SNI host name, `options`, the
 * user name `<user><tenant_in_user><tenant>`, or nothing (server.default_tenant). Audited.
 */
export type TenantSource = 'sni' | 'options' | 'user' | 'default';

/** The [server] settings that say how a tenant may be named (config/validate.ts checks them). */
export interface TenantNaming {
  /** `acme.<sniSuffix>` names tenant acme; '' turns SNI naming off. */
  readonly sniSuffix: string;
  /** `app<sep>acme` names user app of tenant acme (last separator wins); undefined: off. */
  readonly tenantInUser: string | undefined;
  /** The tenant of a connection that names none; undefined: such a connection gets T2. */
  readonly defaultTenant: string | undefined;
}

export interface ResolvedStartup {
  readonly tenantId: string;
  readonly tenantFrom: TenantSource;
  /** The user to authenticate and log in as: with tenantFrom 'user', the part before the separator. */
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

/**
 * The tenant a startup request names, and the user name without the tenant part. SNI and options
 * come first and must agree (T3); only when neither names a tenant is the user name read (so a
 * role called `first.last` keeps working for SNI clients), and only then the default tenant.
 */
function nameTenant(
  user: string,
  fromSni: string | undefined,
  fromOptions: string | undefined,
  naming: TenantNaming,
): { tenantId: string; tenantFrom: TenantSource; user: string } {
  if (fromSni !== undefined && fromSni !== '') {
    if (fromOptions !== undefined && fromOptions !== fromSni) throw Errors.inconsistentTenant();
    return { tenantId: fromSni, tenantFrom: 'sni', user };
  }
  if (fromOptions !== undefined) return { tenantId: fromOptions, tenantFrom: 'options', user };
  const sep = naming.tenantInUser;
  const at = sep === undefined ? -1 : user.lastIndexOf(sep);
  if (sep !== undefined && at >= 0) {
    const name = user.slice(0, at);
    if (name === '') throw Errors.noUser();
    return { tenantId: user.slice(at + sep.length), tenantFrom: 'user', user: name };
  }
  if (naming.defaultTenant !== undefined) return { tenantId: naming.defaultTenant, tenantFrom: 'default', user };
  throw Errors.noTenant(sep);
}

export function resolveStartup(params: ReadonlyMap<string, string>, sni: string | undefined, naming: TenantNaming): ResolvedStartup {
  const sentUser = params.get('user');
  if (sentUser === undefined || sentUser === '') throw Errors.noUser();
  const replication = params.get('replication');
  if (replication !== undefined) {
    const v = replication.toLowerCase();
    if (TRUE_VALUES.has(v)) throw Errors.replicationNotSupported();
    if (!FALSE_VALUES.has(v)) throw Errors.badReplicationValue(replication);
  }
  const optionSettings = parseOptions(params.get('options') ?? '');
  // An empty pgwarden.tenant names nothing (as an SNI host outside the suffix does).
  const optionTenant = optionSettings.get(TENANT_OPTION);
  const fromOptions = optionTenant === '' ? undefined : optionTenant;
  optionSettings.delete(TENANT_OPTION);
  for (const name of optionSettings.keys()) {
    if (name.startsWith('pgwarden.')) throw Errors.unknownPgwardenOption(name);
    // The same allowlist as plain startup parameters: options is no way around it (rule 7).
    if (!FORWARDED_PARAMS.has(name)) throw Errors.settingNotAllowed(name);
  }
  const { tenantId, tenantFrom, user } = nameTenant(sentUser, tenantFromSni(sni, naming.sniSuffix), fromOptions, naming);
  if (!TENANT_ID_RE.test(tenantId)) throw Errors.invalidTenant();

  const forward = new Map<string, string>();
  for (const [k, v] of params) if (FORWARDED_PARAMS.has(k)) forward.set(k, v);
  if (optionSettings.size > 0) {
    forward.set('options', [...optionSettings].map(([k, v]) => `-c ${escapeOption(k)}=${escapeOption(v)}`).join(' '));
  }
  let database = params.get('database');
  // libpq and most drivers send the user name as the database when none is given: the name the
  // client would have sent had it been able to name the tenant another way, so the stripped one.
  if (tenantFrom === 'user' && database === sentUser) database = user;
  return {
    tenantId,
    tenantFrom,
    user,
    database: database === undefined || database === '' ? undefined : database,
    forward,
    applicationName: params.get('application_name'),
  };
}
