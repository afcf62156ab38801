/**
 * parseConfigText + validateConfig: a full config becomes typed values, and every invalid
 * setting is reported by its key path, without echoing secrets.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { formatScramVerifier, mockVerifier } from '../../src/auth/scram.js';
import { parseConfigText } from '../../src/config/load.js';
import { ConfigError, type Config } from '../../src/config/schema.js';
import { parseDurationMs } from '../../src/config/toml-reader.js';
import { resolveWorkerAccept, reusePortAvailable } from '../../src/config/worker-accept.js';

const BASE_DIR = path.resolve('/etc/pgwarden');
const VERIFIER = formatScramVerifier(mockVerifier(Buffer.from('config-test'), 'acme', 'alice'));
const ENV_SET = 'PGWARDEN_UNIT_TEST_BACKEND_PW';
const ENV_UNSET = 'PGWARDEN_UNIT_TEST_SURELY_UNSET_9F3A';

const FULL = `
[server]
listen = "0.0.0.0:6432"
tls_cert = "certs/server.crt"
tls_key = "/abs/server.key"
tls_min_version = "TLSv1.3"
require_tls = true
sni_suffix = ".DB.Example.com"
auth_timeout = "250ms"
shutdown_timeout = "30s"
backend_connect_timeout = 1500
max_preauth_connections = 500
max_preauth_per_source = 20
mock_secret_env = "PGWARDEN_MOCK_SECRET"

[metrics]
listen = "[::1]:9187"

[audit]
file = "audit/pgwarden.jsonl"

[log]
level = "warn"

[tenants.acme]
backend = "postgresql://10.0.0.5:6543/app%20db"
backend_tls = "verify-full"
backend_ca = "ca/acme.pem"
max_client_connections = 25
allow_cidrs = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]

[tenants.acme.users.alice]
scram = "${VERIFIER}"
backend_password_env = "${ENV_SET}"
backend_user = "app_alice"

[tenants.acme.users.bob]
scram = "${VERIFIER}"

[tenants.globex-2]
backend = "postgres://[2001:db8::5]/"
backend_tls = "disable"
enabled = false
`;

/** A small valid config that each case below breaks in one place. */
const MINIMAL = `
[server]
listen = "127.0.0.1:6432"
require_tls = false

[tenants.acme]
backend = "postgresql://10.0.0.5:5432/appdb"
backend_tls = "disable"

[tenants.acme.users.alice]
scram = "${VERIFIER}"
`;

function problemsOf(text: string): readonly string[] {
  try {
    parseConfigText(text, BASE_DIR);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    assert.ok(err.problems.length > 0);
    return err.problems;
  }
  assert.fail('the config was accepted');
}

function assertProblemAt(text: string, key: string): string {
  const problems = problemsOf(text);
  const hit = problems.find((p) => p.startsWith(`${key}:`));
  assert.ok(hit !== undefined, `no problem names ${key}; got:\n  ${problems.join('\n  ')}`);
  return hit;
}

describe('config: a full valid file', () => {
  let config: Config;
  before(() => {
    process.env[ENV_SET] = 'backend-password';
    config = parseConfigText(FULL, BASE_DIR);
  });
  after(() => {
    Reflect.deleteProperty(process.env, ENV_SET);
  });

  it('the minimal config is valid too', () => {
    const c = parseConfigText(MINIMAL, BASE_DIR);
    assert.equal(c.tenants.size, 1);
    assert.equal(c.server.tlsCertPath, undefined);
    assert.equal(c.metrics, undefined);
    assert.equal(c.audit.file, undefined);
    assert.equal(c.log.level, 'info');
    assert.equal(c.server.authTimeoutMs, 60_000, 'default auth timeout');
  });

  it('server section: typed values, durations and resolved paths', () => {
    const s = config.server;
    assert.equal(s.listenHost, '0.0.0.0');
    assert.equal(s.listenPort, 6432);
    assert.equal(s.tlsCertPath, path.join(BASE_DIR, 'certs/server.crt'));
    assert.equal(s.tlsKeyPath, path.resolve('/abs/server.key'));
    assert.equal(s.tlsMinVersion, 'TLSv1.3');
    assert.equal(s.requireTls, true);
    assert.equal(s.sniSuffix, 'db.example.com');
    assert.equal(s.authTimeoutMs, 250);
    assert.equal(s.shutdownTimeoutMs, 30_000);
    assert.equal(s.backendConnectTimeoutMs, 1500);
    assert.equal(s.maxPreauthConnections, 500);
    assert.equal(s.maxPreauthPerSource, 20);
    assert.equal(s.mockSecretEnv, 'PGWARDEN_MOCK_SECRET');
  });

  it('metrics, audit and log', () => {
    assert.deepEqual(config.metrics, { listenHost: '::1', listenPort: 9187 });
    assert.equal(config.audit.file, path.join(BASE_DIR, 'audit/pgwarden.jsonl'));
    assert.equal(config.log.level, 'warn');
  });

  it('tenants: backend URL split, CA path resolved, allow list built', () => {
    const acme = config.tenants.get('acme');
    assert.ok(acme !== undefined);
    assert.equal(acme.enabled, true);
    assert.equal(acme.backendHost, '10.0.0.5');
    assert.equal(acme.backendPort, 6543);
    assert.equal(acme.backendDatabase, 'app db');
    assert.equal(acme.backendTls, 'verify-full');
    assert.equal(acme.backendCaPath, path.join(BASE_DIR, 'ca/acme.pem'));
    assert.equal(acme.maxClientConnections, 25);
    assert.ok(acme.allowList.check('10.200.3.4', 'ipv4'));
    assert.ok(acme.allowList.check('192.0.2.7', 'ipv4'));
    assert.ok(!acme.allowList.check('192.0.2.8', 'ipv4'));
    assert.ok(acme.allowList.check('2001:db8:1::9', 'ipv6'));
    assert.ok(!acme.allowList.check('11.0.0.1', 'ipv4'));

    const globex = config.tenants.get('globex-2');
    assert.ok(globex !== undefined);
    assert.equal(globex.enabled, false);
    assert.equal(globex.backendHost, '2001:db8::5');
    assert.equal(globex.backendPort, 5432);
    assert.equal(globex.backendDatabase, 'postgres');
    assert.equal(globex.backendTls, 'disable');
    assert.equal(globex.backendCaPath, undefined);
    assert.ok(globex.allowList.check('203.0.113.1', 'ipv4'), 'default: allow all');
    assert.equal(globex.users.size, 0);
  });

  it('users: verifier parsed, backend user and password env', () => {
    const users = config.tenants.get('acme')?.users;
    assert.ok(users !== undefined);
    const alice = users.get('alice');
    const bob = users.get('bob');
    assert.ok(alice !== undefined && bob !== undefined);
    assert.equal(formatScramVerifier(alice.verifier), VERIFIER);
    assert.equal(alice.backendUser, 'app_alice');
    assert.equal(alice.backendPasswordEnv, ENV_SET);
    assert.equal(bob.backendUser, 'bob', 'defaults to the user name');
    assert.equal(bob.backendPasswordEnv, undefined, 'absent: SCRAM pass-through');
  });
});

describe('config: each problem names its key', () => {
  it('unknown key in a section', () => {
    assertProblemAt(MINIMAL.replace('require_tls = false', 'require_tls = false\nlisten_port = 5'), 'server.listen_port');
  });

  it('unknown key in a user table does not echo its value', () => {
    const hit = assertProblemAt(MINIMAL.replace(`scram = "${VERIFIER}"`, `scram = "${VERIFIER}"\npassword = "hunter2"`), 'tenants.acme.users.alice.password');
    assert.ok(!hit.includes('hunter2'));
  });

  it('unknown top-level section is named without a leading dot', () => {
    assertProblemAt(`${MINIMAL}\n[extra]\nx = 1\n`, 'extra');
  });

  for (const listen of ['localhost', '127.0.0.1:99999', '127.0.0.1:', ':6432', '::1:6432', '127.0.0.1:64x']) {
    it(`bad listen "${listen}"`, () => {
      assertProblemAt(MINIMAL.replace('"127.0.0.1:6432"', `"${listen}"`), 'server.listen');
    });
  }

  it('tls_cert without tls_key', () => {
    assertProblemAt(MINIMAL.replace('require_tls = false', 'require_tls = false\ntls_cert = "c.pem"'), 'server.tls_cert');
  });

  it('require_tls without a certificate', () => {
    assertProblemAt(MINIMAL.replace('require_tls = false', 'require_tls = true'), 'server.require_tls');
    assertProblemAt(MINIMAL.replace('require_tls = false\n', ''), 'server.require_tls'); // true by default
  });

  it('tenant id in upper case', () => {
    assertProblemAt(MINIMAL.replace('[tenants.acme]', '[tenants.Acme]').replace('[tenants.acme.users.alice]', '[tenants.Acme.users.alice]'), 'tenants.Acme');
  });

  it('tenant id that is not a DNS label', () => {
    assertProblemAt(`${MINIMAL}\n[tenants."-bad"]\nbackend = "postgresql://h/db"\nbackend_tls = "disable"\n`, 'tenants.-bad');
  });

  it('backend URL with credentials, without echoing them', () => {
    const hit = assertProblemAt(MINIMAL.replace('postgresql://10.0.0.5', 'postgresql://admin:hunter2@10.0.0.5'), 'tenants.acme.backend');
    assert.ok(!hit.includes('hunter2') && !hit.includes('admin'));
  });

  for (const url of ['http://10.0.0.5/db', 'not a url', 'postgresql:///db']) {
    it(`backend URL "${url}" is refused`, () => {
      assertProblemAt(MINIMAL.replace('postgresql://10.0.0.5:5432/appdb', url), 'tenants.acme.backend');
    });
  }

  it('backend_tls not one of the three modes', () => {
    assertProblemAt(MINIMAL.replace('backend_tls = "disable"', 'backend_tls = "prefer"'), 'tenants.acme.backend_tls');
  });

  it('verify-full without backend_ca (explicit and by default)', () => {
    assertProblemAt(MINIMAL.replace('backend_tls = "disable"', 'backend_tls = "verify-full"'), 'tenants.acme.backend_ca');
    assertProblemAt(MINIMAL.replace('backend_tls = "disable"\n', ''), 'tenants.acme.backend_ca');
  });

  for (const cidr of ['10.0.0.0/33', '::/129', 'not-an-ip/8', '10.0.0.0/8x', '10.0.0.0/-1', '10.0.0.0/', '10.0.0.0/8/24', '10.0.0.0/0x8']) {
    it(`bad CIDR "${cidr}"`, () => {
      assertProblemAt(MINIMAL.replace('backend_tls = "disable"', `backend_tls = "disable"\nallow_cidrs = ["10.1.0.0/16", "${cidr}"]`), 'tenants.acme.allow_cidrs');
    });
  }

  it('a user without scram', () => {
    assertProblemAt(`${MINIMAL}\n[tenants.acme.users.bob]\nbackend_user = "b"\n`, 'tenants.acme.users.bob.scram');
  });

  for (const [label, bad] of [
    ['truncated', VERIFIER.slice(0, VERIFIER.length - 10)],
    ['md5', 'md5hunter2hunter2hunter2hunter2ab'],
    ['plaintext password', 'correct-horse-battery-staple'],
  ] as const) {
    it(`a bad scram verifier (${label}) is named but never echoed`, () => {
      const problems = problemsOf(MINIMAL.replace(`scram = "${VERIFIER}"`, `scram = "${bad}"`));
      const hit = problems.find((p) => p.startsWith('tenants.acme.users.alice.scram:'));
      assert.ok(hit !== undefined, problems.join('\n'));
      for (const p of problems) assert.ok(!p.includes(bad), `problem echoes the secret: ${p}`);
      const secretPart = bad.slice(-12);
      for (const p of problems) assert.ok(!p.includes(secretPart), `problem echoes part of the secret: ${p}`);
    });
  }

  it('backend_password_env naming an unset variable', () => {
    Reflect.deleteProperty(process.env, ENV_UNSET);
    assertProblemAt(MINIMAL.replace(`scram = "${VERIFIER}"`, `scram = "${VERIFIER}"\nbackend_password_env = "${ENV_UNSET}"`), 'tenants.acme.users.alice.backend_password_env');
  });

  for (const [key, value] of [
    ['auth_timeout', '"0s"'],
    ['auth_timeout', '"soon"'],
    ['shutdown_timeout', '"-5s"'],
    ['max_preauth_connections', '0'],
    ['max_preauth_connections', '1.5'],
    ['tls_min_version', '"TLSv1.1"'],
    ['require_tls', '"no"'],
  ] as const) {
    it(`server.${key} = ${value} is refused`, () => {
      assertProblemAt(MINIMAL.replace('require_tls = false', key === 'require_tls' ? `require_tls = ${value}` : `require_tls = false\n${key} = ${value}`), `server.${key}`);
    });
  }

  describe('staff.reserved_connections', () => {
    const withStaff = (line: string): string =>
      `[audit]\nfile = "audit.jsonl"\n\n[staff]\njwks = "jwks.json"\nissuer = "https://sso.example"\naudience = "pgwarden"\n${line}\n${MINIMAL}`;
    it('defaults to 3 and takes 0 (staff count against the tenant caps)', () => {
      assert.equal(parseConfigText(withStaff(''), BASE_DIR).staff?.reservedConnections, 3);
      assert.equal(parseConfigText(withStaff('reserved_connections = 0'), BASE_DIR).staff?.reservedConnections, 0);
    });
    for (const value of ['-1', '1001', '1.5', '"3"']) {
      it(`staff.reserved_connections = ${value} is refused`, () => {
        assertProblemAt(withStaff(`reserved_connections = ${value}`), 'staff.reserved_connections');
      });
    }
  });

  describe('server.tenant_in_user and server.default_tenant', () => {
    const withServer = (lines: string): string => MINIMAL.replace('require_tls = false', `require_tls = false\n${lines}`);

    it('both off by default', () => {
      const s = parseConfigText(MINIMAL, BASE_DIR).server;
      assert.equal(s.tenantInUser, undefined);
      assert.equal(s.defaultTenant, undefined);
    });

    it('read as given', () => {
      const s = parseConfigText(withServer('tenant_in_user = "."\ndefault_tenant = "acme"'), BASE_DIR).server;
      assert.equal(s.tenantInUser, '.');
      assert.equal(s.defaultTenant, 'acme');
      for (const sep of ['@', '%', '#', ':', '+', '~', '::', '@@']) {
        assert.equal(parseConfigText(withServer(`tenant_in_user = "${sep}"`), BASE_DIR).server.tenantInUser, sep);
      }
    });

    for (const bad of ['""', '"a"', '"1"', '"-"', '"_"', '" "', '"...."', '"\\\\"', '"="', '","', '"é"', '1', 'true']) {
      it(`tenant_in_user = ${bad} is refused`, () => {
        assertProblemAt(withServer(`tenant_in_user = ${bad}`), 'server.tenant_in_user');
      });
    }

    for (const bad of ['"ACME"', '"ac_me"', '"-acme"', '""', `"${'a'.repeat(64)}"`, '7']) {
      it(`default_tenant = ${bad} is refused`, () => {
        assertProblemAt(withServer(`default_tenant = ${bad}`), 'server.default_tenant');
      });
    }

    it('default_tenant must be one of the file\'s tenants', () => {
      const hit = assertProblemAt(withServer('default_tenant = "globex"'), 'server.default_tenant');
      assert.match(hit, /globex/);
    });
  });

  it('reports every problem at once', () => {
    const text = MINIMAL.replace('"127.0.0.1:6432"', '"nope"').replace('backend_tls = "disable"', 'backend_tls = "bogus"');
    const problems = problemsOf(text);
    assert.ok(problems.some((p) => p.startsWith('server.listen:')));
    assert.ok(problems.some((p) => p.startsWith('tenants.acme.backend_tls:')));
  });

  it('a TOML syntax error reports line:column', () => {
    const text = '[server]\nlisten = "127.0.0.1:6432"\nrequire_tls = \n';
    try {
      parseConfigText(text, BASE_DIR, 'pgwarden.toml');
      assert.fail('accepted');
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.problems.length, 1);
      assert.match(err.problems[0]!, /^pgwarden\.toml:3:15: TOML syntax error: /);
      assert.ok(!err.problems[0]!.includes('\n'), 'one line');
    }
  });
});

describe('parseDurationMs', () => {
  it('parses units and integers', () => {
    assert.equal(parseDurationMs('30s'), 30_000);
    assert.equal(parseDurationMs('250ms'), 250);
    assert.equal(parseDurationMs('5m'), 300_000);
    assert.equal(parseDurationMs('1h'), 3_600_000);
    assert.equal(parseDurationMs('1.5s'), 1500);
    assert.equal(parseDurationMs(42), 42);
  });
  it('refuses what is not a duration', () => {
    for (const v of ['30', '30 sec', 's', '-1s', '', -1, 1.5, true, null]) assert.equal(parseDurationMs(v), undefined, String(v));
  });
});

describe('config: [server] proxy_protocol', () => {
  const withProxy = (lines: string): string => MINIMAL.replace('require_tls = false\n', `require_tls = false\n${lines}\n`);

  it('is off by default, with no trusted balancers', () => {
    const c = parseConfigText(MINIMAL, BASE_DIR);
    assert.equal(c.server.proxyProtocol, 'off');
    assert.deepEqual(c.server.proxyProtocolTrusted, []);
  });

  it('"v2" with trusted CIDRs: a BlockList of the balancers', () => {
    const c = parseConfigText(withProxy('proxy_protocol = "v2"\nproxy_protocol_trusted = ["10.0.0.0/8", "fd00::1"]'), BASE_DIR);
    assert.equal(c.server.proxyProtocol, 'v2');
    assert.deepEqual(c.server.proxyProtocolTrusted, ['10.0.0.0/8', 'fd00::1']);
    assert.equal(c.server.proxyProtocolTrustedList.check('10.1.2.3', 'ipv4'), true);
    assert.equal(c.server.proxyProtocolTrustedList.check('11.1.2.3', 'ipv4'), false);
    assert.equal(c.server.proxyProtocolTrustedList.check('fd00::1', 'ipv6'), true);
  });

  it('names each problem by its key', () => {
    assertProblemAt(withProxy('proxy_protocol = "v1"'), 'server.proxy_protocol');
    assert.match(assertProblemAt(withProxy('proxy_protocol = "v2"'), 'server.proxy_protocol_trusted'), /load balancers/);
    assert.match(assertProblemAt(withProxy('proxy_protocol = "v2"\nproxy_protocol_trusted = ["10.0.0.0/33"]'), 'server.proxy_protocol_trusted'), /not a CIDR/);
    assertProblemAt(withProxy('proxy_protocol = "v2"\nproxy_protocol_trusted = "10.0.0.0/8"'), 'server.proxy_protocol_trusted');
    assertProblemAt(withProxy('proxy_protocol_trusted = ["10.0.0.0/8"]'), 'server.proxy_protocol_trusted');
  });
});

describe('config: [server] worker_accept', () => {
  const withAccept = (lines: string): string => MINIMAL.replace('require_tls = false\n', `require_tls = false\n${lines}\n`);

  it('is "auto" by default and takes "primary"', () => {
    assert.equal(parseConfigText(MINIMAL, BASE_DIR).server.workerAccept, 'auto');
    assert.equal(parseConfigText(withAccept('worker_accept = "primary"'), BASE_DIR).server.workerAccept, 'primary');
  });

  it('takes "reuseport" only where this Node has listen({ reusePort }) (22.12, on Linux)', () => {
    const text = withAccept('worker_accept = "reuseport"');
    if (reusePortAvailable()) assert.equal(parseConfigText(text, BASE_DIR).server.workerAccept, 'reuseport');
    else assert.match(assertProblemAt(text, 'server.worker_accept'), /Node 22\.12 or later on Linux \(this is Node \d+/);
    assertProblemAt(withAccept('worker_accept = "kernel"'), 'server.worker_accept');
  });

  it('"auto" means reuseport from Node 22.12 and 23.1 on Linux, the primary\'s hand-off before', () => {
    for (const [version, platform, available] of [
      ['20.20.2', 'linux', false], ['22.11.0', 'linux', false], ['22.12.0', 'linux', true], ['22.23.5', 'linux', true],
      ['23.0.0', 'linux', false], ['23.1.0', 'linux', true], ['24.0.0', 'linux', true], ['24.0.0', 'darwin', false],
    ] as const) {
      assert.equal(reusePortAvailable(version, platform), available, `${version} ${platform}`);
      assert.equal(resolveWorkerAccept('auto', available), available ? 'reuseport' : 'primary');
    }
    assert.equal(resolveWorkerAccept('primary', true), 'primary');
  });
});
