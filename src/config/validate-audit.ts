/**
 * [audit] (the tamper-evident log and its PostgreSQL store) and [staff] (JWT logins, always
 * audited): the sections about who did what.
 */
import { readPgTarget } from './pg-target.js';
import type { AuditConfig, AuditParameters, AuditPostgresConfig, StaffConfig } from './schema.js';
import { Reader, type Tree } from './toml-reader.js';

export function readStaff(r: Reader, tree: Tree, resolvePath: (p: string) => string): StaffConfig | undefined {
  const st = r.section(tree, 'staff', 'staff', [
    'login_user', 'jwks', 'issuer', 'audience', 'algorithms', 'require_mfa', 'allow_token_reuse', 'max_token_lifetime', 'clock_tolerance', 'audit_parameters',
    'reserved_connections',
  ]);
  if (st === undefined) return undefined;
  const jwks = r.str(st, 'jwks', 'staff');
  if (jwks === undefined) r.problems.push('staff.jwks: missing (a JWKS file path or an https:// URL)');
  const issuer = r.str(st, 'issuer', 'staff');
  if (issuer === undefined) r.problems.push('staff.issuer: missing');
  const audience = r.str(st, 'audience', 'staff');
  if (audience === undefined) r.problems.push('staff.audience: missing');
  const algorithms = r.strArray(st, 'algorithms', 'staff', ['ES256', 'RS256', 'EdDSA']);
  const known = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'];
  // Asymmetric only: a shared-secret (HS*) token could be minted by anyone holding the verifier's key.
  for (const alg of algorithms) if (!known.includes(alg)) r.problems.push(`staff.algorithms: "${alg}" is not one of ${known.join(', ')}`);
  if (algorithms.length === 0) r.problems.push('staff.algorithms: must not be empty');
  const loginUser = r.str(st, 'login_user', 'staff', 'staff') ?? 'staff';
  if (loginUser === '') r.problems.push('staff.login_user: must not be empty');
  return {
    loginUser,
    jwks: jwks === undefined ? '' : /^https:\/\//.test(jwks) ? jwks : resolvePath(jwks),
    issuer: issuer ?? '',
    audience: audience ?? '',
    algorithms,
    requireMfa: r.bool(st, 'require_mfa', 'staff', true),
    allowTokenReuse: r.bool(st, 'allow_token_reuse', 'staff', false),
    maxTokenLifetimeMs: r.duration(st, 'max_token_lifetime', 'staff', 3_600_000, 1000, 86_400_000),
    clockToleranceMs: r.duration(st, 'clock_tolerance', 'staff', 5_000, 0, 300_000),
    auditParameters: r.oneOf<AuditParameters>(st, 'audit_parameters', 'staff', ['off', 'redacted', 'full'], 'full'),
    reservedConnections: r.int(st, 'reserved_connections', 'staff', 3, 0, 1000),
  };
}

/** [audit] with every default and the given file: for tools and tests that open a log directly. */
export function defaultAuditConfig(file?: string): AuditConfig {
  return { ...readAudit(new Reader(), {}, (p) => p), file };
}

export function readAudit(r: Reader, tree: Tree, resolvePath: (p: string) => string): AuditConfig {
  const a = r.section(tree, 'audit', 'audit', [
    'file', 'rotate_bytes', 'rotate_interval', 'fsync', 'checkpoint_key', 'checkpoint_every_records', 'checkpoint_interval', 'checkpoint_origin',
    'query_max_bytes', 'param_max_bytes', 'postgres', 'transparency_spool_dir',
  ]);
  const file = r.str(a, 'file', 'audit');
  const key = r.str(a, 'checkpoint_key', 'audit');
  const pgTree = a === undefined ? undefined : r.section(a, 'postgres', 'audit.postgres', ['url', 'password_env', 'table', 'spool_dir', 'batch_size', 'flush_interval']);
  let postgres: AuditPostgresConfig | undefined;
  if (pgTree !== undefined) {
    const { url, passwordEnv } = readPgTarget(r, pgTree, 'audit.postgres', 'postgresql://audit@127.0.0.1:5432/audit');
    const table = r.str(pgTree, 'table', 'audit.postgres', 'pgwarden_audit') ?? 'pgwarden_audit';
    if (!/^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?$/.test(table)) r.problems.push('audit.postgres.table: must be a lower-case identifier, optionally schema-qualified');
    const spool = r.str(pgTree, 'spool_dir', 'audit.postgres');
    const spoolDir = spool !== undefined ? resolvePath(spool) : file !== undefined ? `${resolvePath(file)}.spool` : undefined;
    if (spoolDir === undefined) r.problems.push('audit.postgres.spool_dir: required when audit.file is not set');
    postgres = {
      url,
      passwordEnv,
      table,
      spoolDir: spoolDir ?? '',
      batchSize: r.int(pgTree, 'batch_size', 'audit.postgres', 500, 1, 100_000),
      flushIntervalMs: r.duration(pgTree, 'flush_interval', 'audit.postgres', 200, 10, 60_000),
    };
  }
  const transparency = r.str(a, 'transparency_spool_dir', 'audit');
  const origin = r.str(a, 'checkpoint_origin', 'audit', 'pgwarden') ?? 'pgwarden';
  if (!/^[\x21-\x7e]+$/.test(origin)) r.problems.push('audit.checkpoint_origin: must be printable ASCII without spaces');
  return {
    file: file === undefined ? undefined : resolvePath(file),
    rotateBytes: r.bytes(a, 'rotate_bytes', 'audit', 0, 0, 1024 ** 4),
    rotateIntervalMs: r.duration(a, 'rotate_interval', 'audit', 0, 0, 366 * 86_400_000),
    fsync: r.bool(a, 'fsync', 'audit', true),
    checkpointKeyPath: key === undefined ? undefined : resolvePath(key),
    checkpointEveryRecords: r.int(a, 'checkpoint_every_records', 'audit', 1000, 1, 10_000_000),
    checkpointIntervalMs: r.duration(a, 'checkpoint_interval', 'audit', 60_000, 100, 86_400_000),
    checkpointOrigin: origin,
    queryMaxBytes: r.bytes(a, 'query_max_bytes', 'audit', 16 * 1024, 64, 1024 ** 2),
    paramMaxBytes: r.bytes(a, 'param_max_bytes', 'audit', 1024, 0, 1024 ** 2),
    postgres,
    transparencySpoolDir: transparency !== undefined ? resolvePath(transparency) : file !== undefined ? `${resolvePath(file)}.transparency` : undefined,
  };
}
