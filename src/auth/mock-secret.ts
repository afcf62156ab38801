/**
 * The key behind mock SCRAM salts (SECURITY.md rule 3: an unknown role gets a salt as stable as a
 * real one), which also keys cancel hashes between instances. Where it comes from is decided here;
 * how a mock verifier is made from it is auth/scram.ts's.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Config } from '../config/schema.js';

/** Used when neither an env var nor a TLS key gives one: salts then change on restart (documented). */
const PROCESS_MOCK_SECRET = randomBytes(32);

/**
 * The mock-salt key: from the env var server.mock_secret_env names, else derived from the TLS key
 * (stable across restarts and secret), else random per process.
 */
export function mockSecretFor(config: Config): Buffer {
  const env = config.server.mockSecretEnv;
  const value = env === undefined ? undefined : process.env[env];
  if (value !== undefined) return createHash('sha256').update(value).digest();
  if (config.server.tlsKeyPath !== undefined) {
    return createHash('sha256').update('pgwarden-mock-v1\0').update(readFileSync(config.server.tlsKeyPath)).digest();
  }
  return PROCESS_MOCK_SECRET;
}
