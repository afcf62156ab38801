/**
 * StaffTokenVerifier: what a verified token grants on a tenant, and the audit reason for each
 * refusal. Tokens are minted here against a JWKS written here.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey } from 'jose';
import { StaffTokenVerifier, jtiKey } from '../../src/auth/jwt.js';
import { ConfigError, type StaffConfig } from '../../src/config/schema.js';

describe('staff token verifier', () => {
  let dir: string;
  let key: CryptoKey;
  let cfg: StaffConfig;
  const now = Math.floor(Date.now() / 1000);

  const token = (claims: Record<string, unknown>, alg = 'ES256'): Promise<string> =>
    new SignJWT({ sub: 's', jti: 'j', tenant: 'acme', access: 'write', ticket: 'T', amr: ['mfa'], iat: now, exp: now + 60, ...claims })
      .setProtectedHeader({ alg, kid: 'k1' })
      .setIssuer('iss')
      .setAudience('aud')
      .sign(key);

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-jwt-'));
    const pair = await generateKeyPair('ES256', { extractable: true });
    key = pair.privateKey;
    await writeFile(path.join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(pair.publicKey)), kid: 'k1' }] }));
    cfg = {
      loginUser: 'staff', jwks: path.join(dir, 'jwks.json'), issuer: 'iss', audience: 'aud', algorithms: ['ES256'], requireMfa: true,
      allowTokenReuse: false, maxTokenLifetimeMs: 3_600_000, clockToleranceMs: 0, auditParameters: 'full', reservedConnections: 3,
    };
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('grants what the token asks, capped by the tenant', async () => {
    const v = new StaffTokenVerifier(cfg);
    const write = await v.decide(await token({}), 'acme', 'write');
    assert.ok(write.ok);
    assert.equal(write.access, 'write');
    assert.equal(write.claims.reason_or_ticket, 'T');
    const mfa = await v.decide(await token({ amr: ['pwd', 'mfa', 'hwk'] }), 'acme', 'write');
    assert.ok(mfa.ok);
    assert.deepEqual(mfa.claims.amr, ['pwd', 'mfa', 'hwk'], 'the audit records the methods as the token states them');
    const capped = await v.decide(await token({}), 'acme', 'read');
    assert.ok(capped.ok);
    assert.equal(capped.access, 'read', 'a write token on a read tenant gets read');
    const denied = await v.decide(await token({}), 'acme', 'deny');
    assert.deepEqual(denied.ok ? null : denied.reason, 'jwt_invalid:scope');
    const listed = await v.decide(await token({ tenant: ['globex', 'acme'], access: 'read' }), 'acme', 'write');
    assert.ok(listed.ok && listed.access === 'read');
  });

  it('names each refusal for the audit, with the token\'s unverified claims', async () => {
    const v = new StaffTokenVerifier(cfg);
    const reason = async (t: string, tenant = 'acme'): Promise<string> => {
      const d = await v.decide(t, tenant, 'write');
      return d.ok ? 'ok' : d.reason;
    };
    assert.equal(await reason(await token({ access: 'admin' })), 'jwt_invalid:claims');
    assert.equal(await reason(await token({ jti: undefined })), 'jwt_invalid:claims');
    assert.equal(await reason(await token({ exp: now + 7200 })), 'jwt_invalid:lifetime');
    assert.equal(await reason(await token({ amr: ['pwd'] })), 'jwt_invalid:mfa');
    assert.equal(await reason(await token({ ticket: '   ' })), 'jwt_invalid:ticket');
    assert.equal(await reason(await token({}), 'globex'), 'jwt_invalid:scope');
    assert.equal(await reason(await token({ nbf: now + 600 })), 'jwt_invalid:nbf');
    assert.equal(await reason('x'.repeat(20_000)), 'jwt_invalid:malformed');
    const d = await v.decide(await token({ sub: 'eve\u0007', exp: now - 10, iat: now - 20 }), 'acme', 'write');
    assert.ok(!d.ok);
    assert.equal(d.reason, 'jwt_invalid:exp');
    assert.equal(d.claimed['sub'], 'eve?', 'unverified claims are sanitized');
  });

  it('reports an unreadable JWKS as a config problem naming the key', () => {
    assert.throws(() => new StaffTokenVerifier({ ...cfg, jwks: path.join(dir, 'missing.json') }), (e: unknown) => e instanceof ConfigError && e.problems[0]!.startsWith('staff.jwks:'));
  });

  it('keys a jti by issuer, so two issuers cannot burn each other\'s ids', () => {
    assert.notEqual(jtiKey('a', 'x'), jtiKey('b', 'x'));
    assert.equal(jtiKey('a', 'x'), jtiKey('a', 'x'));
  });
});
