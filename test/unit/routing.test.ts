/**
 * resolveStartup: which tenant a connection names (SNI, options, user name, default), the PostgreSQL errors for a
 * bad request, and what of the startup packet may reach the tenant's server (SECURITY.md rule 7).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { PgError } from '../../src/errors.js';
import { FORWARDED_PARAMS, resolveStartup, splitOptions, tenantFromSni, type ResolvedStartup, type TenantNaming } from '../../src/routing/resolve.js';

const SUFFIX = 'db.example.com';
const NAMING: TenantNaming = { sniSuffix: SUFFIX, tenantInUser: undefined, defaultTenant: undefined };

function resolve(params: Record<string, string>, sni?: string, naming: Partial<TenantNaming> = {}): ResolvedStartup {
  return resolveStartup(new Map(Object.entries(params)), sni, { ...NAMING, ...naming });
}

function assertRefused(
  params: Record<string, string>,
  sni: string | undefined,
  sqlstate: string,
  message: string | RegExp,
  naming: Partial<TenantNaming> = {},
): PgError {
  let caught: unknown;
  try {
    resolve(params, sni, naming);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof PgError, `expected PgError, got ${String(caught)}`);
  assert.equal(caught.sqlstate, sqlstate);
  if (typeof message === 'string') assert.equal(caught.message, message);
  else assert.match(caught.message, message);
  return caught;
}

const pick = (r: ResolvedStartup): { tenantId: string; tenantFrom: string; user: string } => ({ tenantId: r.tenantId, tenantFrom: r.tenantFrom, user: r.user });

/** Escapes like libpq users must: backslash before whitespace and backslash. */
const esc = (s: string): string => s.replace(/[\\\s]/g, (m) => `\\${m}`);

describe('resolveStartup: the tenant', () => {
  it('from SNI', () => {
    const r = resolve({ user: 'alice', database: 'app' }, `acme.${SUFFIX}`);
    assert.equal(r.tenantId, 'acme');
    assert.equal(r.user, 'alice');
    assert.equal(r.database, 'app');
  });

  it('from SNI, case-insensitively and with a trailing dot', () => {
    assert.equal(resolve({ user: 'alice' }, `ACME.DB.Example.COM.`).tenantId, 'acme');
  });

  it('from options -c pgwarden.tenant=acme (and the setting is not forwarded)', () => {
    const r = resolve({ user: 'alice', options: '-c pgwarden.tenant=acme' });
    assert.equal(r.tenantId, 'acme');
    assert.equal(r.forward.has('options'), false, 'nothing left to forward');
  });

  it('from options in the other spellings PostgreSQL accepts', () => {
    assert.equal(resolve({ user: 'alice', options: '-cpgwarden.tenant=acme' }).tenantId, 'acme');
    assert.equal(resolve({ user: 'alice', options: '--pgwarden.tenant=acme' }).tenantId, 'acme');
  });

  it('SNI and options agreeing', () => {
    assert.equal(resolve({ user: 'alice', options: '-c pgwarden.tenant=acme' }, `acme.${SUFFIX}`).tenantId, 'acme');
  });

  it('SNI outside the suffix is ignored in favour of options', () => {
    assert.equal(tenantFromSni('proxy.other.net', SUFFIX), '');
    assert.equal(resolve({ user: 'alice', options: '-c pgwarden.tenant=acme' }, 'proxy.other.net').tenantId, 'acme');
  });

  it('SNI and options disagreeing: 28000', () => {
    const err = assertRefused({ user: 'alice', options: '-c pgwarden.tenant=globex' }, `acme.${SUFFIX}`, '28000', 'inconsistent tenant identifiers in connection request');
    assert.equal(err.severity, 'FATAL');
  });

  it('no tenant at all: 28000 with a hint', () => {
    const err = assertRefused({ user: 'alice' }, undefined, '28000', 'no tenant specified in connection request');
    assert.ok(err.hint !== undefined && err.hint.length > 0);
    assertRefused({ user: 'alice' }, 'proxy.other.net', '28000', 'no tenant specified in connection request');
  });

  it('every way the no-tenant HINT names actually selects a tenant', () => {
    // The hint offers "user name <user>@<tenant>"; a client following it must get in.
    const hint = assertRefused({ user: 'alice' }, undefined, '28000', 'no tenant specified in connection request').hint ?? '';
    if (hint.includes('@')) {
      const r = resolve({ user: 'alice@acme' });
      assert.equal(r.tenantId, 'acme');
    }
  });

  for (const [label, params, sni] of [
    ['upper case in options', { user: 'alice', options: '-c pgwarden.tenant=ACME' }, undefined],
    ['underscore in options', { user: 'alice', options: '-c pgwarden.tenant=ac_me' }, undefined],
    ['leading dash in options', { user: 'alice', options: '-c pgwarden.tenant=-acme' }, undefined],
    ['64 characters', { user: 'alice', options: `-c pgwarden.tenant=${'a'.repeat(64)}` }, undefined],
    ['two labels in SNI', { user: 'alice' }, `a.b.${SUFFIX}`],
  ] as const) {
    it(`invalid tenant syntax (${label}): 28000`, () => {
      assertRefused(params, sni, '28000', 'invalid tenant identifier');
    });
  }

  it('a 63-character tenant id is valid', () => {
    assert.equal(resolve({ user: 'alice', options: `-c pgwarden.tenant=${'a'.repeat(63)}` }).tenantId, 'a'.repeat(63));
  });
});

describe('resolveStartup: the tenant in the user name and the default tenant', () => {
  const DOT = { tenantInUser: '.' };

  it('off by default: a user name with a dot names no tenant', () => {
    assertRefused({ user: 'app.acme' }, undefined, '28000', 'no tenant specified in connection request');
  });

  it('app.acme names user app of tenant acme', () => {
    const r = resolve({ user: 'app.acme', database: 'appdb' }, undefined, DOT);
    assert.equal(r.tenantId, 'acme');
    assert.equal(r.tenantFrom, 'user');
    assert.equal(r.user, 'app');
    assert.equal(r.database, 'appdb');
    assert.equal(r.forward.has('user'), false, 'the user goes to the server as the login plan says, not from forward');
  });

  it('a database equal to the whole user name (the drivers\' default) becomes the stripped user name', () => {
    assert.equal(resolve({ user: 'app.acme', database: 'app.acme' }, undefined, DOT).database, 'app');
    assert.equal(resolve({ user: 'app.acme', database: 'appdb' }, undefined, DOT).database, 'appdb');
    // Only when the user name named the tenant.
    assert.equal(resolve({ user: 'app.acme', database: 'app.acme' }, `acme.${SUFFIX}`, DOT).database, 'app.acme');
    assert.equal(resolve({ user: 'app', database: 'app' }, undefined, { ...DOT, defaultTenant: 'acme' }).database, 'app');
  });

  it('the last separator wins: first.last.acme is user first.last of tenant acme', () => {
    const r = resolve({ user: 'first.last.acme' }, undefined, DOT);
    assert.equal(r.tenantId, 'acme');
    assert.equal(r.user, 'first.last');
  });

  it('a separator of several characters, and other characters', () => {
    assert.deepEqual(pick(resolve({ user: 'a@b@acme' }, undefined, { tenantInUser: '@' })), { tenantId: 'acme', tenantFrom: 'user', user: 'a@b' });
    assert.deepEqual(pick(resolve({ user: 'app::acme' }, undefined, { tenantInUser: '::' })), { tenantId: 'acme', tenantFrom: 'user', user: 'app' });
    // A single ':' inside a '::' separator's user part is kept.
    assert.deepEqual(pick(resolve({ user: 'a:b::acme' }, undefined, { tenantInUser: '::' })), { tenantId: 'acme', tenantFrom: 'user', user: 'a:b' });
  });

  it('SNI names the tenant: the user name is not split (a role called first.last keeps working)', () => {
    const r = resolve({ user: 'first.last' }, `acme.${SUFFIX}`, DOT);
    assert.deepEqual(pick(r), { tenantId: 'acme', tenantFrom: 'sni', user: 'first.last' });
    // Even when the part after the dot is another tenant's id.
    assert.deepEqual(pick(resolve({ user: 'app.globex' }, `acme.${SUFFIX}`, DOT)), { tenantId: 'acme', tenantFrom: 'sni', user: 'app.globex' });
  });

  it('options name the tenant: the user name is not split', () => {
    const r = resolve({ user: 'app.globex', options: '-c pgwarden.tenant=acme' }, undefined, { ...DOT, defaultTenant: 'initech' });
    assert.deepEqual(pick(r), { tenantId: 'acme', tenantFrom: 'options', user: 'app.globex' });
  });

  it('SNI and options disagreeing stay 28000 whatever the user name says', () => {
    const naming = { ...DOT, defaultTenant: 'acme' };
    const params = { user: 'app.acme', options: '-c pgwarden.tenant=globex' };
    assertRefused(params, `acme.${SUFFIX}`, '28000', 'inconsistent tenant identifiers in connection request', naming);
  });

  it('SNI outside the suffix names nothing: the user name is read', () => {
    assert.deepEqual(pick(resolve({ user: 'app.acme' }, 'proxy.other.net', DOT)), { tenantId: 'acme', tenantFrom: 'user', user: 'app' });
  });

  for (const [label, user] of [
    ['upper case', 'app.ACME'],
    ['underscore', 'app.ac_me'],
    ['empty tenant part', 'app.'],
    ['64 characters', `app.${'a'.repeat(64)}`],
    ['last dot wins, the rest is no tenant id', 'app.acme@x'],
  ] as const) {
    it(`invalid tenant id in the user name (${label}): 28000`, () => {
      assertRefused({ user }, undefined, '28000', 'invalid tenant identifier', { ...DOT, defaultTenant: 'acme' });
    });
  }

  it('an empty user part (".acme"): 28000 no user name', () => {
    assertRefused({ user: '.acme' }, undefined, '28000', 'no PostgreSQL user name specified in startup packet', DOT);
  });

  it('an unknown tenant in the user name is resolved like any other (the login then fails with 28P01)', () => {
    assert.deepEqual(pick(resolve({ user: 'app.nosuch' }, undefined, DOT)), { tenantId: 'nosuch', tenantFrom: 'user', user: 'app' });
  });

  it('default_tenant: used when nothing names a tenant', () => {
    assert.deepEqual(pick(resolve({ user: 'app' }, undefined, { defaultTenant: 'acme' })), { tenantId: 'acme', tenantFrom: 'default', user: 'app' });
    assert.deepEqual(pick(resolve({ user: 'app' }, 'proxy.other.net', { defaultTenant: 'acme' })), { tenantId: 'acme', tenantFrom: 'default', user: 'app' });
    // Without tenant_in_user a dot is part of the user name.
    const dotted = resolve({ user: 'first.last' }, undefined, { defaultTenant: 'acme' });
    assert.deepEqual(pick(dotted), { tenantId: 'acme', tenantFrom: 'default', user: 'first.last' });
  });

  it('default_tenant comes after SNI, options and the user name', () => {
    const naming = { ...DOT, defaultTenant: 'initech' };
    assert.equal(resolve({ user: 'app' }, `acme.${SUFFIX}`, naming).tenantFrom, 'sni');
    assert.equal(resolve({ user: 'app', options: '-c pgwarden.tenant=acme' }, undefined, naming).tenantFrom, 'options');
    assert.deepEqual(pick(resolve({ user: 'app.acme' }, undefined, naming)), { tenantId: 'acme', tenantFrom: 'user', user: 'app' });
    // A user name without the separator falls back to the default tenant.
    assert.deepEqual(pick(resolve({ user: 'app' }, undefined, naming)), { tenantId: 'initech', tenantFrom: 'default', user: 'app' });
  });

  it('tenant_from for SNI, for options, and for SNI and options agreeing', () => {
    assert.equal(resolve({ user: 'app' }, `acme.${SUFFIX}`).tenantFrom, 'sni');
    assert.equal(resolve({ user: 'app', options: '-c pgwarden.tenant=acme' }).tenantFrom, 'options');
    assert.equal(resolve({ user: 'app', options: '-c pgwarden.tenant=acme' }, `acme.${SUFFIX}`).tenantFrom, 'sni');
  });

  it('an empty pgwarden.tenant names nothing', () => {
    const r = resolve({ user: 'app.acme', options: '-c pgwarden.tenant=' }, undefined, DOT);
    assert.deepEqual(pick(r), { tenantId: 'acme', tenantFrom: 'user', user: 'app' });
    assert.equal(resolve({ user: 'app', options: '-c pgwarden.tenant=' }, `acme.${SUFFIX}`).tenantId, 'acme');
  });

  it('with tenant_in_user the no-tenant HINT names the user-name way, and following it works', () => {
    const hint = assertRefused({ user: 'alice' }, undefined, '28000', 'no tenant specified in connection request', { tenantInUser: '@' }).hint ?? '';
    assert.ok(hint.includes('<user>@<tenant>'), hint);
    assert.equal(resolve({ user: 'alice@acme' }, undefined, { tenantInUser: '@' }).tenantId, 'acme');
  });
});

describe('resolveStartup: PostgreSQL startup errors', () => {
  it('no user: 28000', () => {
    assertRefused({ database: 'app' }, `acme.${SUFFIX}`, '28000', 'no PostgreSQL user name specified in startup packet');
    assertRefused({ user: '' }, `acme.${SUFFIX}`, '28000', 'no PostgreSQL user name specified in startup packet');
  });

  for (const v of ['true', 'on', 'yes', '1', 'database', 'TRUE']) {
    it(`replication=${v}: 0A000`, () => {
      assertRefused({ user: 'alice', replication: v }, `acme.${SUFFIX}`, '0A000', 'replication connections are not supported');
    });
  }

  it('replication=bogus: 22023 with PostgreSQL\'s text', () => {
    assertRefused({ user: 'alice', replication: 'bogus' }, `acme.${SUFFIX}`, '22023', 'invalid value for parameter "replication": "bogus"');
  });

  it('replication=false is accepted and not forwarded', () => {
    const r = resolve({ user: 'alice', replication: 'false' }, `acme.${SUFFIX}`);
    assert.equal(r.forward.has('replication'), false);
  });

  it('an unknown pgwarden.* option is refused', () => {
    assertRefused({ user: 'alice', options: '-c pgwarden.tenant=acme -c pgwarden.x=1' }, undefined, '0A000', /pgwarden\.x/);
  });

  for (const options of ['-X', '-c', '-c noequals', '-c =value', 'positional', '-c 1bad=x', '-c a;b=c']) {
    it(`options "${options}" is refused`, () => {
      assertRefused({ user: 'alice', options }, `acme.${SUFFIX}`, '0A000', /options/);
    });
  }
});

describe('resolveStartup: what reaches the tenant server', () => {
  it('forwards only allow-listed parameters', () => {
    const r = resolve(
      {
        user: 'alice',
        database: 'app',
        application_name: 'psql',
        client_encoding: 'UTF8',
        DateStyle: 'ISO, MDY',
        session_authorization: 'postgres',
        role: 'admin',
        is_superuser: 'on',
        replication: 'off',
        log_statement: 'none',
        'pgaudit.log': 'none',
        password: 'x',
      },
      `acme.${SUFFIX}`,
    );
    assert.deepEqual(
      [...r.forward.keys()].sort(),
      ['DateStyle', 'application_name', 'client_encoding'],
    );
    assert.equal(r.forward.get('application_name'), 'psql');
    assert.equal(r.applicationName, 'psql');
    for (const k of r.forward.keys()) assert.ok(FORWARDED_PARAMS.has(k));
  });

  it('an empty database means the tenant default', () => {
    assert.equal(resolve({ user: 'alice', database: '' }, `acme.${SUFFIX}`).database, undefined);
    assert.equal(resolve({ user: 'alice' }, `acme.${SUFFIX}`).database, undefined);
  });

  it('re-encodes -c settings so values with spaces and backslashes survive splitOptions', () => {
    const values = {
      search_path: 'my schema, public',
      application_name: 'C:\\dir\\app\tv2',
      statement_timeout: '5s',
      work_mem: 'trailing\\',
    };
    const options = ['-c pgwarden.tenant=acme', ...Object.entries(values).map(([k, v]) => `-c ${esc(k)}=${esc(v)}`)].join(' ');
    const r = resolve({ user: 'alice', options });
    const forwarded = r.forward.get('options');
    assert.ok(forwarded !== undefined);

    // Decode the forwarded string as PostgreSQL will (pg_split_opts, then name=value).
    const args = splitOptions(forwarded);
    const decoded = new Map<string, string>();
    for (let i = 0; i < args.length; i += 2) {
      assert.equal(args[i], '-c', `argument ${i} of ${JSON.stringify(args)}`);
      const pair = args[i + 1]!;
      const eq = pair.indexOf('=');
      decoded.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
    assert.deepEqual(Object.fromEntries(decoded), values);

    // Feeding the forwarded string back through resolveStartup is a fixed point.
    const again = resolve({ user: 'alice', options: forwarded }, `acme.${SUFFIX}`);
    assert.equal(again.forward.get('options'), forwarded);
  });

  it('a value cannot smuggle another -c setting', () => {
    const r = resolve({ user: 'alice', options: `-c pgwarden.tenant=acme -c application_name=${esc('x -c role=admin')}` });
    const args = splitOptions(r.forward.get('options') ?? '');
    assert.deepEqual(args, ['-c', 'application_name=x -c role=admin']);
  });

  it('-c settings outside the allow-list do not reach the tenant server via options', () => {
    // Rule 7 is an allow-list: the options channel must not be a way around it.
    const params = { user: 'alice', options: '-c pgwarden.tenant=acme -c session_authorization=postgres -c role=admin -c search_path=app' };
    let r: ResolvedStartup | undefined;
    try {
      r = resolve(params);
    } catch (err) {
      assert.ok(err instanceof PgError, String(err)); // refusing the connection is fine too
      return;
    }
    const forwardedNames = splitOptions(r.forward.get('options') ?? '')
      .filter((a) => a !== '-c')
      .map((a) => a.slice(0, a.indexOf('=')));
    for (const name of forwardedNames) assert.ok(FORWARDED_PARAMS.has(name), `"${name}" forwarded via options`);
  });
});

describe('splitOptions', () => {
  it('splits on whitespace and honours backslash escapes (pg_split_opts)', () => {
    assert.deepEqual(splitOptions('  -c a=1\t-c  b=x\\ y  '), ['-c', 'a=1', '-c', 'b=x y']);
    assert.deepEqual(splitOptions('a\\\\b'), ['a\\b']);
    assert.deepEqual(splitOptions('\\ '), [' ']);
    assert.deepEqual(splitOptions(''), []);
  });
});
