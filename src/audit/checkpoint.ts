/**
 * Signed audit checkpoints (SECURITY.md §2.7): the C2SP tlog-checkpoint note body, the C2SP
 * signed-note key id, Ed25519 keys from PEM, signing and checking. The writer (log.ts) decides when
 * to checkpoint; the verifier (verify.ts) decides which records a checkpoint must match.
 *
 * What is signed, byte for byte (a C2SP tlog-checkpoint note text, three lines, no extensions):
 *   <origin>\n<tree size>\n<base64 of the 32 head-hash bytes>\n
 * - origin: `[audit] checkpoint_origin` (also the signed-note key name);
 * - tree size: last_seq + 1, the number of records of this boot up to and including the head
 *   (seq is gapless from 0 per boot_id, so it only grows within a boot);
 * - head hash: chain.hash of the record with seq = last_seq, which is the record just before the
 *   checkpoint record (so a checkpoint's chain.prev equals its head_hash).
 * The signature is Ed25519 over those bytes (RFC 8032, no pre-hash), stored base64 in `signature`.
 * A standard signed note is `<body>\n— <origin> <base64(key id bytes ‖ signature)>\n`.
 * @see https://c2sp.org/tlog-checkpoint
 * @see https://c2sp.org/signed-note
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';

export const SIG_ALG = 'ed25519';

/** The note text that is signed. */
export function checkpointBody(origin: string, treeSize: number, headHashHex: string): string {
  return `${origin}\n${treeSize}\n${Buffer.from(headHashHex, 'hex').toString('base64')}\n`;
}

/** The raw 32-byte Ed25519 public key (RFC 8032) of a public or private KeyObject. */
export function rawPublicKey(key: KeyObject): Buffer {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  const jwk = pub.export({ format: 'jwk' });
  if (typeof jwk.x !== 'string') throw new Error('not an Ed25519 key');
  return Buffer.from(jwk.x, 'base64url');
}

/**
 * C2SP signed-note key id: the first 4 bytes of SHA-256(key name ‖ "\n" ‖ 0x01 ‖ public key), where
 * 0x01 names Ed25519; in hex (8 characters). The key name is the checkpoint origin.
 */
export function keyId(origin: string, publicRaw: Buffer): string {
  return createHash('sha256')
    .update(Buffer.concat([Buffer.from(`${origin}\n`, 'utf8'), Buffer.from([0x01]), publicRaw]))
    .digest()
    .subarray(0, 4)
    .toString('hex');
}

function requireEd25519(key: KeyObject, what: string): KeyObject {
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`${what}: not an Ed25519 key (found ${key.asymmetricKeyType ?? 'unknown'})`);
  return key;
}

/** The private key from a PEM file (PKCS#8). The error names the file, never its contents. */
export async function loadPrivateKey(file: string): Promise<KeyObject> {
  let key: KeyObject;
  try {
    key = createPrivateKey(await readFile(file));
  } catch (err) {
    throw new Error(`audit.checkpoint_key ${file}: cannot read an Ed25519 private key (PEM, PKCS#8): ${(err as NodeJS.ErrnoException).code ?? 'invalid key'}`, { cause: err });
  }
  return requireEd25519(key, `audit.checkpoint_key ${file}`);
}

/** A public key from a PEM file: SPKI public key, or a private key (its public half is used). */
export async function loadPublicKey(file: string): Promise<KeyObject> {
  const pem = await readFile(file);
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch {
    throw new Error(`${file}: not a PEM public key`);
  }
  return requireEd25519(key, file);
}

export class CheckpointSigner {
  readonly keyId: string;

  constructor(
    private readonly key: KeyObject,
    readonly origin: string,
  ) {
    this.keyId = keyId(origin, rawPublicKey(key));
  }

  /** The checkpoint fields (SECURITY.md §2.7) for the records first_seq..last_seq ending at head. */
  fields(firstSeq: number, lastSeq: number, headHashHex: string): Record<string, unknown> {
    const body = checkpointBody(this.origin, lastSeq + 1, headHashHex);
    return {
      origin: this.origin,
      first_seq: firstSeq,
      last_seq: lastSeq,
      count: lastSeq - firstSeq + 1,
      head_hash: headHashHex,
      sig_alg: SIG_ALG,
      key_id: this.keyId,
      signature: sign(null, Buffer.from(body, 'utf8'), this.key).toString('base64'),
    };
  }
}

/** Checks a checkpoint record's signature; a string says what is wrong, null means it verifies. */
export function checkSignature(publicKey: KeyObject, cp: { origin: string; last_seq: number; head_hash: string; key_id: string; signature: string }): string | null {
  const expected = keyId(cp.origin, rawPublicKey(publicKey));
  if (cp.key_id !== expected) return `checkpoint signed with another key (key_id ${cp.key_id}, expected ${expected})`;
  const body = checkpointBody(cp.origin, cp.last_seq + 1, cp.head_hash);
  const sig = Buffer.from(cp.signature, 'base64');
  if (sig.length !== 64 || !verify(null, Buffer.from(body, 'utf8'), publicKey, sig)) return 'checkpoint signature does not verify (forged, or the covered records were rewritten)';
  return null;
}

/** A new Ed25519 key pair as PEM (PKCS#8 private, SPKI public) for `pgwarden audit keygen`. */
export function generateCheckpointKey(): { privatePem: string; publicPem: string; publicRaw: Buffer } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privatePem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    publicPem: publicKey.export({ format: 'pem', type: 'spki' }).toString(),
    publicRaw: rawPublicKey(publicKey),
  };
}
