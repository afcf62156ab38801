/**
 * validateTenantBody (config/tenant-body.ts): a tenant given as JSON, as the catalog holds it, is
 * accepted or refused exactly as the same `[tenants.<id>]` table in the file. Each case is one TOML
 * text: parsed whole by parseConfigText (the file path), and its tenant table, through smol-toml
 * and a JSON round trip, by validateTenantBody against the same file's other sections.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { parse } from 'smol-toml';
import { formatScramVerifier, mockVerifier } from '../../src/auth/scram.js';
import { parseConfigText } from '../../src/config/load.js';
import { ConfigError, type Config, type TenantConfig } from '../../src/config/schema.js';
import { validateTenantBody } from '../../src/config/tenant-body.js';

const BASE_DIR = path.resolve('/etc/pgwarden');
const VERIFIER = formatScramVerifier(mockVerifier(Buffer.from('tenant-body-test'), 'acme', 'alice'));
const ENV = { PGWARDEN_BODY_TEST_PW: 'x' };

/** The sections around the tenant: non-default [pool] and [limits], so inheriting them is tested too. */
const SECTIONS = `
[server]
listen = "127.0.0.1:6432"
require_tls = false

[pool]
max_backend_connections = 7
pool_mode = "transaction"

[limits]
idle_timeout = "5m"
max_client_connections = 33

[audit]
transparency_spool_dir = "/var/spool/pgwarden-transparency"
`;

function fileResult(id: string, tenantToml: string): { tenant?: TenantConfig; problems: readonly string[] } {
  try {
    const c = parseConfigText(`${SECTIONS}\n${tenantToml}`, BASE_DIR, 'config', ENV);
    return { tenant: c.tenants.get(id)!, problems: [] };
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return { problems: err.problems };
  }
}

function bodyResult(id: string, tenantToml: string): { tenant?: TenantConfig; problems: readonly string[] } {
  const context: Config = parseConfigText(SECTIONS, BASE_DIR, 'config', ENV);
  const tree = parse(`${SECTIONS}\n${tenantToml}`) as { tenants: Record<string, unknown> };
  const body: unknown = JSON.parse(JSON.stringify(tree.tenants[id]));
  const v = validateTenantBody(id, body, context, ENV);
  return v.ok ? { tenant: v.tenant, problems: [] } : { problems: v.problems };
}

/** A TenantConfig without its BlockList (an object without comparable state; allowCidrs is its source). */
function comparable(t: TenantConfig | undefined): unknown {
  if (t === undefined) return undefined;
  const { allowList: _allowList, ...rest } = t;
  return rest;
}

const VALID = `
[tenants.acme]
backend = "postgresql://10.0.0.5:5432/appdb"
backend_tls = "verify-full"
backend_ca = "ca/acme.pem"
allow_cidrs = ["10.0.0.0/8"]
max_backend_connections = 3
query_timeout = "10s"
databases = ["appdb"]

[tenants.acme.users.alice]
scram = "${VERIFIER}"
backend_password_env = "PGWARDEN_BODY_TEST_PW"
`;

const user = (extra: string): string => `${VALID}${extra}\n`;

const REFUSED: [string, string, string][] = [
  // [case, TOML, the key the problem must name]
  ['pool limit out of range', VALID.replace('max_backend_connections = 3', 'max_backend_connections = 0'), 'tenants.acme.max_backend_connections'],
  ['unknown key', VALID.replace('databases', 'colour = "red"\ndatabases'), 'tenants.acme.colour'],
  ['plaintext password for a user', user('password = "hunter2"'), 'tenants.acme.users.alice.password'],
  ['a verifier that is not one', VALID.replace(VERIFIER, 'SCRAM-SHA-256$4096:abc$def:ghi'), 'tenants.acme.users.alice.scram'],
  ['credentials in the backend URL', VALID.replace('10.0.0.5', 'u:pw@10.0.0.5'), 'tenants.acme.backend'],
  ['verify-full without a CA', VALID.replace('backend_ca = "ca/acme.pem"', ''), 'tenants.acme.backend_ca'],
  ['a bad CIDR', VALID.replace('10.0.0.0/8', '10.0.0.0/99'), 'tenants.acme.allow_cidrs'],
  ['min idle above max', VALID.replace('max_backend_connections = 3', 'max_backend_connections = 3\nmin_idle_backend_connections = 4'), 'tenants.acme.min_idle_backend_connections'],
  ['fail-closed audit without audit.file', VALID.replace('databases', 'audit_fail_closed = true\ndatabases'), 'tenants.acme.audit_fail_closed'],
  ['an unset environment variable', VALID.replace('"PGWARDEN_BODY_TEST_PW"', '"PGWARDEN_BODY_TEST_SURELY_UNSET"'), 'tenants.acme.users.alice.backend_password_env'],
  ['staff access without a staff role', VALID.replace('databases', 'staff_access = "read"\ndatabases'), 'tenants.acme.staff_access'],
  ['a limit of the wrong type', VALID.replace('query_timeout = "10s"', 'query_timeout = true'), 'tenants.acme.query_timeout'],
  ['auth_query: auth_user without auth_password_env', VALID.replace('databases', 'auth_user = "pgwarden_auth"\ndatabases'), 'tenants.acme.auth_user'],
  [
    'auth_query: an unset environment variable',
    VALID.replace('databases', 'auth_user = "a"\nauth_password_env = "PGWARDEN_BODY_TEST_SURELY_UNSET"\ndatabases'),
    'tenants.acme.auth_password_env',
  ],
  [
    'staff access on request without the lookup role',
    VALID.replace('databases', 'staff_access = "on_request"\nstaff_backend_user = "s"\nstaff_backend_password_env = "PGWARDEN_BODY_TEST_PW"\ndatabases'),
    'tenants.acme.staff_access',
  ],
  ['access transparency without the lookup role', VALID.replace('databases', 'access_transparency = true\ndatabases'), 'tenants.acme.access_transparency'],
  [
    'on request with access transparency off',
    VALID.replace(
      'databases',
      'staff_access = "on_request"\nstaff_backend_user = "s"\nstaff_backend_password_env = "PGWARDEN_BODY_TEST_PW"\nauth_user = "a"\nauth_password_env = "PGWARDEN_BODY_TEST_PW"\naccess_transparency = false\ndatabases',
    ),
    'tenants.acme.access_transparency',
  ],
  ['auth_query: a query without $1', VALID.replace('databases', 'auth_user = "a"\nauth_password_env = "PGWARDEN_BODY_TEST_PW"\nauth_query = "SELECT 1"\ndatabases'), 'tenants.acme.auth_query'],
];

describe('validateTenantBody: the same verdicts as the file', () => {
  it('accepts what the file accepts, with the same TenantConfig (inherited [pool]/[limits] included)', () => {
    const file = fileResult('acme', VALID);
    const body = bodyResult('acme', VALID);
    assert.deepEqual(file.problems, []);
    assert.deepEqual(body.problems, []);
    assert.deepEqual(comparable(body.tenant), comparable(file.tenant));
    // Not vacuous: the defaults come from this file's sections, the override from the tenant.
    assert.equal(body.tenant?.pool.mode, 'transaction');
    assert.equal(body.tenant?.pool.maxBackendConnections, 3);
    assert.equal(body.tenant?.limits.idleTimeoutMs, 300_000);
    assert.equal(body.tenant?.maxClientConnections, 33);
    assert.equal(body.tenant?.backendCaPath, path.join(BASE_DIR, 'ca/acme.pem'));
    assert.ok(body.tenant?.allowList.check('10.1.2.3'));
    assert.ok(!body.tenant?.allowList.check('192.0.2.1'));
  });

  it('accepts auth_query keys in a body as in the file', () => {
    const toml = VALID.replace('databases', 'auth_user = "pgwarden_auth"\nauth_password_env = "PGWARDEN_BODY_TEST_PW"\nauth_cache_ttl = "5s"\ndatabases');
    const file = fileResult('acme', toml);
    const body = bodyResult('acme', toml);
    assert.deepEqual(body.problems, []);
    assert.deepEqual(comparable(body.tenant), comparable(file.tenant));
    assert.equal(body.tenant?.authQuery?.cacheTtlMs, 5_000);
  });

  it('accepts staff_access = "on_request" with the lookup role, access transparency on by default', () => {
    const toml = VALID.replace(
      'databases',
      'staff_access = "on_request"\nstaff_backend_user = "s"\nstaff_backend_password_env = "PGWARDEN_BODY_TEST_PW"\nauth_user = "a"\nauth_password_env = "PGWARDEN_BODY_TEST_PW"\ntransparency_max_lag = "10s"\ndatabases',
    );
    const file = fileResult('acme', toml);
    const body = bodyResult('acme', toml);
    assert.deepEqual(file.problems, []);
    assert.deepEqual(comparable(body.tenant), comparable(file.tenant));
    assert.equal(file.tenant?.staffAccess, 'on_request');
    assert.equal(file.tenant?.accessTransparency, true);
    assert.equal(file.tenant?.transparencyMaxLagMs, 10_000);
    assert.equal(fileResult('acme', VALID).tenant?.accessTransparency, false);
  });

  for (const [name, toml, key] of REFUSED) {
    it(`refuses ${name} naming ${key}, with the file's message`, () => {
      const file = fileResult('acme', toml);
      const body = bodyResult('acme', toml);
      assert.ok(file.problems.some((p) => p.startsWith(`${key}:`)), `the file names no ${key}: ${file.problems.join(' | ')}`);
      assert.deepEqual(body.problems, file.problems);
      assert.equal(body.tenant, undefined);
    });
  }

  it('never echoes a plaintext password or a verifier in a problem', () => {
    const body = bodyResult('acme', user('password = "hunter2"').replace(VERIFIER, `${VERIFIER}x`));
    assert.ok(body.problems.length >= 2, body.problems.join(' | '));
    for (const p of body.problems) {
      assert.ok(!p.includes('hunter2'), p);
      assert.ok(!p.includes(VERIFIER), p);
    }
  });

  it('refuses a bad tenant id and a body that is not an object, as the file does', () => {
    const context = parseConfigText(SECTIONS, BASE_DIR, 'config', ENV);
    const badId = validateTenantBody('Acme_1', {}, context, ENV);
    assert.deepEqual(badId, { ok: false, problems: ["tenants.Acme_1: tenant id must be a lower-case DNS label (a-z, 0-9, '-')"] });
    const notObject = validateTenantBody('acme', ['x'], context, ENV);
    assert.deepEqual(notObject, { ok: false, problems: ['tenants.acme: must be a table'] });
  });
});

describe('[catalog]', () => {
  const CATALOG = `${SECTIONS}
[catalog]
url = "postgresql://pgwarden@10.0.0.9:5432/catalog?sslmode=require"
password_env = "PGWARDEN_BODY_TEST_PW"
snapshot_file = "state/catalog.json"
`;

  it('reads url, password_env, snapshot_file (resolved) and the default resync_interval; no tenants from the file', () => {
    const c = parseConfigText(CATALOG, BASE_DIR, 'config', ENV);
    assert.deepEqual(c.catalog, {
      url: 'postgresql://pgwarden@10.0.0.9:5432/catalog?sslmode=require',
      passwordEnv: 'PGWARDEN_BODY_TEST_PW',
      schema: 'pgwarden_catalog',
      snapshotFile: path.join(BASE_DIR, 'state/catalog.json'),
      resyncIntervalMs: 30_000,
    });
    assert.equal(c.tenants.size, 0);
  });

  const problems = (text: string, env: NodeJS.ProcessEnv = ENV): readonly string[] => {
    try {
      parseConfigText(text, BASE_DIR, 'config', env);
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      return err.problems;
    }
    assert.fail('accepted');
  };

  it('refuses [tenants.*] beside it, naming the tenant key', () => {
    const p = problems(`${CATALOG}\n${VALID}`);
    assert.deepEqual(p, ['tenants.acme: not allowed with [catalog] (the catalog is the source of tenants; put it there)']);
  });

  it('needs snapshot_file, a postgresql URL without password, a set password_env, a sane resync_interval', () => {
    assert.ok(problems(CATALOG.replace('snapshot_file = "state/catalog.json"', '')).some((p) => p.startsWith('catalog.snapshot_file:')));
    const withPw = problems(CATALOG.replace('pgwarden@', 'pgwarden:s3cret@'));
    assert.ok(withPw.some((p) => p.startsWith('catalog.url:')));
    assert.ok(withPw.every((p) => !p.includes('s3cret')));
    assert.ok(problems(CATALOG.replace('postgresql://', 'mysql://')).some((p) => p.startsWith('catalog.url:')));
    assert.ok(problems(CATALOG, {}).some((p) => p.startsWith('catalog.password_env: environment variable PGWARDEN_BODY_TEST_PW is not set')));
    assert.ok(problems(`${CATALOG}resync_interval = "10ms"\n`).some((p) => p.startsWith('catalog.resync_interval:')));
    assert.ok(problems(`${CATALOG}schema = "Bad-Name"\n`).some((p) => p.startsWith('catalog.schema:')));
  });
});
