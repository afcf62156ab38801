/**
 * SCRAM-SHA-256 verifiers in PostgreSQL's text format (pg_authid.rolpassword), as `users.<name>.scram`
 * holds them. Only the format lives here, so that config/ depends on nothing; the SCRAM exchange
 * that uses a verifier is auth/scram.ts's.
 */

export interface ScramVerifier {
  readonly iterations: number;
  readonly salt: Buffer;
  readonly storedKey: Buffer;
  readonly serverKey: Buffer;
}

/** StoredKey, ServerKey and proofs: SHA-256 output. */
export const SCRAM_KEY_BYTES = 32;

const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
/** Base64 that round-trips exactly (Buffer.from alone skips bad characters). */
export function decodeBase64Strict(s: string): Buffer | undefined {
  return B64_RE.test(s) ? Buffer.from(s, 'base64') : undefined;
}

/** `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as in pg_authid.rolpassword. */
export function parseScramVerifier(s: string): ScramVerifier | undefined {
  const m = /^SCRAM-SHA-256\$(\d{1,10}):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$/.exec(s);
  if (!m) return undefined;
  const iterations = Number(m[1]);
  const salt = decodeBase64Strict(m[2]!);
  const storedKey = decodeBase64Strict(m[3]!);
  const serverKey = decodeBase64Strict(m[4]!);
  if (!salt || !storedKey || !serverKey || iterations < 1 || iterations > 0x7fffffff) return undefined;
  if (storedKey.length !== SCRAM_KEY_BYTES || serverKey.length !== SCRAM_KEY_BYTES || salt.length === 0) return undefined;
  return { iterations, salt, storedKey, serverKey };
}

export function formatScramVerifier(v: ScramVerifier): string {
  return `SCRAM-SHA-256$${v.iterations}:${v.salt.toString('base64')}$${v.storedKey.toString('base64')}:${v.serverKey.toString('base64')}`;
}
