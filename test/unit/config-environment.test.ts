/**
 * The environment pass apart from the file pass: the file is checked without reading the
 * environment, and the variables it names are checked against the environment given.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { problemsWithEnvironment } from '../../src/config/environment.js';
import { parseConfigText } from '../../src/config/load.js';
import { ConfigError } from '../../src/config/schema.js';
import { formatScramVerifier, mockVerifier } from '../../src/auth/scram.js';

const VERIFIER = formatScramVerifier(mockVerifier(Buffer.from('env-test'), 'acme', 'alice'));
/** One user whose backend password comes from ALICE_PASSWORD. */
const TEXT = [
  '[server]',
  'require_tls = false',
  '[tenants.acme]',
  'backend = "postgresql://127.0.0.1:5432/app"',
  'backend_tls = "disable"',
  `users.alice = { scram = "${VERIFIER}", backend_password_env = "ALICE_PASSWORD" }`,
].join('\n');

describe('config: the environment pass', () => {
  it('checks the variables the file names against the environment it is given', () => {
    assert.equal(parseConfigText(TEXT, '/tmp', 'config', { ALICE_PASSWORD: 'x' }).tenants.get('acme')?.users.get('alice')?.backendPasswordEnv, 'ALICE_PASSWORD');
    assert.throws(() => parseConfigText(TEXT, '/tmp', 'config', {}), {
      constructor: ConfigError,
      problems: ['tenants.acme.users.alice.backend_password_env: environment variable ALICE_PASSWORD is not set'],
    });
  });

  it('puts each variable problem where the file names it, between the file problems', () => {
    const file = {
      config: null,
      problems: ['a: bad', 'b: bad', 'c: bad'],
      envReferences: [
        { key: 'x_env', name: 'X', at: 1 },
        { key: 'y_env', name: 'Y', at: 1 },
        { key: 'z_env', name: 'Z', at: 3 },
      ],
    };
    assert.deepEqual(problemsWithEnvironment(file, { Y: 'set' }), ['a: bad', 'x_env: environment variable X is not set', 'b: bad', 'c: bad', 'z_env: environment variable Z is not set']);
  });
});
