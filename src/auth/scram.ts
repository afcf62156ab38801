/**
 * SCRAM-SHA-256 (RFC 5802, RFC 7677) with channel binding `tls-server-end-point` (RFC 5929):
 * the server side for clients, the client side for logging in to tenant servers, and making
 * verifiers (their text format is config/scram-verifier.ts's). Messages follow PostgreSQL's auth-scram.c, including its
 * error texts. Sockets and policy (which verifier, mock or real) are the session's business.
 */
import { createHash, createHmac, pbkdf2, randomBytes, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';
import { LRUCache } from 'lru-cache';
import { pooledRandomBytes } from './random.js';
import { Errors, PgError } from '../errors.js';
import { decodeBase64Strict, formatScramVerifier, SCRAM_KEY_BYTES, type ScramVerifier } from '../config/scram-verifier.js';

// The verifier's text format belongs to the config that holds it; SCRAM's users find it here too.
export { formatScramVerifier, parseScramVerifier, type ScramVerifier } from '../config/scram-verifier.js';

const pbkdf2Async = promisify(pbkdf2);

export const SCRAM_SHA_256 = 'SCRAM-SHA-256';
export const SCRAM_SHA_256_PLUS = 'SCRAM-SHA-256-PLUS';
export const CHANNEL_BINDING_TYPE = 'tls-server-end-point';
/** PostgreSQL's default (scram_iterations). */
export const DEFAULT_ITERATIONS = 4096;
/** Upper bound on iterations we agree to compute for an upstream (a hostile server could ask for 2^31). */
export const MAX_UPSTREAM_ITERATIONS = 1_000_000;
const NONCE_BYTES = 18;

const sha256 = (b: Buffer): Buffer => createHash('sha256').update(b).digest();
const hmac = (key: Buffer, data: Buffer | string): Buffer => createHmac('sha256', key).update(data).digest();

function xor(a: Buffer, b: Buffer): Buffer {
  // Not from the shared pool: a client key lives as long as its session (SCRAM pass-through), and
  // a pool slice would keep the whole 8 KiB slab it sits in alive with it (issue 15, idle memory).
  const out = Buffer.allocUnsafeSlow(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

/**
 * SASLprep (RFC 4013) as PostgreSQL applies it to passwords: map non-ASCII spaces to space, drop
 * "mapped to nothing" characters, NFKC. Like PostgreSQL, a password that fails (prohibited
 * characters) is used as raw bytes.
 */
export function saslprep(password: string): Buffer {
  if (/^[\x20-\x7e]*$/.test(password)) return Buffer.from(password, 'utf8');
  const mapped = password
    .replace(/[\u00a0\u1680\u2000-\u200b\u202f\u205f\u3000]/g, ' ')
    // eslint-disable-next-line no-misleading-character-class -- a set of single code points (RFC 3454 B.1), not combined sequences
    .replace(/[\u00ad\u034f\u1806\u180b-\u180d\u200b-\u200d\u2060\ufe00-\ufe0f\ufeff]/g, '')
    .normalize('NFKC');
  // eslint-disable-next-line no-control-regex
  if (mapped.length === 0 || /[\u0000-\u001f\u007f-\u009f\ufff9-\ufffd\ud800-\udfff]/.test(mapped)) {
    return Buffer.from(password, 'utf8');
  }
  return Buffer.from(mapped, 'utf8');
}

/** Derived-key cache: PBKDF2 runs once per (password, salt, iterations). Keys are hashes, never passwords. */
const saltedPasswordCache = new LRUCache<string, Buffer>({ max: 1024 });

export async function saltedPassword(password: string, salt: Buffer, iterations: number): Promise<Buffer> {
  const key = createHash('sha256').update(password).update('\0').update(salt).update(String(iterations)).digest('hex');
  const hit = saltedPasswordCache.get(key);
  if (hit !== undefined) return hit;
  const derived = await pbkdf2Async(saslprep(password), salt, iterations, SCRAM_KEY_BYTES, 'sha256');
  saltedPasswordCache.set(key, derived);
  return derived;
}

export function keysFromSaltedPassword(sp: Buffer): { clientKey: Buffer; storedKey: Buffer; serverKey: Buffer } {
  const clientKey = hmac(sp, 'Client Key');
  return { clientKey, storedKey: sha256(clientKey), serverKey: hmac(sp, 'Server Key') };
}

export async function makeScramVerifier(password: string, iterations = DEFAULT_ITERATIONS, salt: Buffer = randomBytes(16)): Promise<string> {
  const { storedKey, serverKey } = keysFromSaltedPassword(await saltedPassword(password, salt, iterations));
  return formatScramVerifier({ iterations, salt, storedKey, serverKey });
}

/**
 * A verifier for a user who does not exist, derived from a server secret so the same claimed
 * (tenant, user) always gets the same salt (SECURITY.md rule 3: a random salt per attempt gives
 * the game away). Its keys match no password.
 */
export function mockVerifier(secret: Buffer, tenant: string, user: string, iterations = DEFAULT_ITERATIONS): ScramVerifier {
  const seed = hmac(secret, `pgwarden-mock\0${tenant}\0${user}`);
  return {
    iterations,
    salt: seed.subarray(0, 16),
    storedKey: hmac(seed, 'stored'),
    serverKey: hmac(seed, 'server'),
  };
}

/** Printable per RFC 5802: 0x21-0x7E except ','. */
function isScramPrintable(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x21 || c > 0x7e || c === 0x2c) return false;
  }
  return true;
}

/** An attribute PostgreSQL's read_any_attr accepts: one ASCII letter, '=', a value (extensions are skipped only if so). */
const ANY_ATTR_RE = /^[A-Za-z]=/;

/** Splits "a=…" attributes; PostgreSQL's read_attribute rejects anything else as malformed. */
function readAttr(parts: string[], idx: number, want: string): string {
  const p = parts[idx];
  if (p === undefined || p.length < 2 || p[1] !== '=' || p[0] !== want) {
    throw Errors.malformedScram(`Expected attribute "${want}" but found "${p === undefined ? 'end of message' : sanitizeAttr(p)}".`);
  }
  return p.slice(2);
}
const sanitizeAttr = (p: string): string => (p.length === 0 ? '' : /[a-zA-Z]/.test(p[0]!) ? p[0]! : '?');

export type ExchangeResult =
  | { ok: true; serverFinal: Buffer; clientKey: Buffer }
  | { ok: false; error: PgError };

/**
 * One server-side exchange. `verifier` is the user's, or a mock one (`mock` set, with the
 * audit reason): the exchange then runs in full and fails at the proof, like a wrong password.
 */
export class ScramServerExchange {
  private clientNonce = '';
  private serverNonce = '';
  private clientFirstBare = '';
  private serverFirst = '';
  private gs2Header = '';
  private cbFlag: 'n' | 'y' | 'p' = 'n';
  private phase: 'first' | 'final' | 'done' = 'first';

  constructor(
    private readonly verifier: ScramVerifier,
    /** Why this must fail even with a right proof (unknown user, disabled tenant…); null for a real user. */
    private readonly failReason: string | null,
    private readonly user: string,
    /** tls-server-end-point data when the connection is TLS, else null. */
    private readonly channelBinding: Buffer | null,
    /** Tests only: a fixed server nonce to replay RFC 7677's vector. */
    private readonly fixedServerNonce?: string,
  ) {}

  /** Mechanisms to offer, PLUS first when channel binding is possible (SECURITY.md rule 4). */
  static mechanisms(channelBindingAvailable: boolean): string[] {
    return channelBindingAvailable ? [SCRAM_SHA_256_PLUS, SCRAM_SHA_256] : [SCRAM_SHA_256];
  }

  /** Whether the client may select this mechanism here (PLUS only when channel binding is possible). */
  acceptsMechanism(mechanism: string): boolean {
    return mechanism === SCRAM_SHA_256 || (mechanism === SCRAM_SHA_256_PLUS && this.channelBinding !== null);
  }

  /**
   * Handles the client-first-message (in SASLInitialResponse, or after one without data in the next
   * SASLResponse); returns server-first-message. Throws PgError. The message is read as bytes
   * (latin1, one char per byte), as PostgreSQL reads it: a byte that is not UTF-8 is judged where
   * it stands (a nonce is then "non-printable"), not as a length mismatch.
   */
  clientFirst(mechanism: string, data: Buffer | null): Buffer {
    if (this.phase !== 'first') throw Errors.malformedScram('Unexpected message.');
    const plus = mechanism === SCRAM_SHA_256_PLUS;
    if (!this.acceptsMechanism(mechanism)) throw Errors.invalidMechanism();
    if (data === null || data.length === 0) throw Errors.malformedScram('The message is empty.');
    const msg = data.toString('latin1');
    if (msg.includes('\0')) throw Errors.malformedScram('Message length does not match input length.');
    let pos: number;
    const flag = msg[0];
    if (flag === 'p') {
      if (!msg.startsWith('p=')) throw Errors.malformedScram('Unexpected channel-binding flag.');
      const comma = msg.indexOf(',');
      if (comma < 0) throw Errors.malformedScram('Comma expected.');
      const cbType = msg.slice(2, comma);
      if (!plus) {
        throw Errors.malformedScram('The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.');
      }
      if (cbType !== CHANNEL_BINDING_TYPE) throw Errors.scramCbType(cbType);
      this.cbFlag = 'p';
      pos = comma + 1;
    } else if (flag === 'y' || flag === 'n') {
      if (plus) {
        throw Errors.malformedScram('The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.');
      }
      if (msg[1] !== ',') throw Errors.malformedScram('Comma expected.');
      // 'y' on TLS means the client thinks we cannot bind: a downgrade (RFC 5802 §6, A8).
      if (flag === 'y' && this.channelBinding !== null) throw Errors.channelBindingNegotiation();
      this.cbFlag = flag;
      pos = 2;
    } else {
      throw Errors.malformedScram(`Unexpected channel-binding flag "${sanitizeAttr(msg)}".`);
    }
    if (msg[pos] === 'a') throw Errors.scramAuthzid();
    if (msg[pos] !== ',') throw Errors.malformedScram('Comma expected.');
    pos += 1;
    this.gs2Header = msg.slice(0, pos);
    this.clientFirstBare = msg.slice(pos);
    const parts = this.clientFirstBare.split(',');
    if (parts[0]?.startsWith('m=')) throw Errors.scramExtension();
    readAttr(parts, 0, 'n'); // PostgreSQL ignores the SCRAM user name: the startup user counts.
    const nonce = readAttr(parts, 1, 'r');
    // An empty nonce passes, as in PostgreSQL: the server nonce is ours and random.
    if (!isScramPrintable(nonce)) throw Errors.scramNonceNotPrintable();
    // Optional extensions after the nonce are skipped, but each must be an attribute.
    for (let i = 2; i < parts.length; i++) {
      if (!ANY_ATTR_RE.test(parts[i]!)) throw Errors.malformedScram(`Attribute expected, but found invalid character "${sanitizeAttr(parts[i]!)}".`);
    }
    this.clientNonce = nonce;
    this.serverNonce = this.fixedServerNonce ?? pooledRandomBytes(NONCE_BYTES).toString('base64');
    this.serverFirst = `r=${this.clientNonce}${this.serverNonce},s=${this.verifier.salt.toString('base64')},i=${this.verifier.iterations}`;
    this.phase = 'final';
    return Buffer.from(this.serverFirst, 'utf8');
  }

  /**
   * Handles SASLResponse (client-final-message). Protocol errors throw; credential failures
   * return ok:false. The checks run in PostgreSQL's order (read_client_final_message, then
   * verify_final_nonce, then the proof), so a message with two faults gets PostgreSQL's answer.
   */
  clientFinal(data: Buffer): ExchangeResult {
    if (this.phase !== 'final') throw Errors.malformedScram('Unexpected message.');
    this.phase = 'done';
    const msg = data.toString('latin1');
    if (msg.length === 0) throw Errors.malformedScram('The message is empty.');
    if (msg.includes('\0')) throw Errors.malformedScram('Message length does not match input length.');
    const parts = msg.split(',');
    // PostgreSQL compares the c= text with the base64 it expects, before anything else is read.
    const cbAttr = readAttr(parts, 0, 'c');
    if (this.cbFlag === 'p') {
      const expected = Buffer.concat([Buffer.from(this.gs2Header, 'latin1'), this.channelBinding ?? Buffer.alloc(0)]).toString('base64');
      if (cbAttr !== expected) return { ok: false, error: Errors.channelBindingFailed() };
    } else if (cbAttr !== Buffer.from(this.gs2Header, 'latin1').toString('base64')) {
      throw Errors.scramUnexpectedCb();
    }
    const nonce = readAttr(parts, 1, 'r');
    let idx = 2;
    // Extensions before the proof are skipped, but each must be an attribute (read_any_attr).
    while (idx < parts.length && !parts[idx]!.startsWith('p=')) {
      if (!ANY_ATTR_RE.test(parts[idx]!)) throw Errors.malformedScram(`Attribute expected, but found invalid character "${sanitizeAttr(parts[idx]!)}".`);
      idx++;
    }
    if (idx >= parts.length) throw Errors.malformedScram('Attribute expected, but found end of string.');
    const proof = decodeBase64Strict(parts[idx]!.slice(2));
    if (proof === undefined || proof.length !== SCRAM_KEY_BYTES) throw Errors.malformedScram('Malformed proof in client-final-message.');
    if (idx !== parts.length - 1) throw Errors.malformedScram('Garbage found at the end of client-final-message.');
    if (nonce !== this.clientNonce + this.serverNonce) throw Errors.invalidScramResponse('Nonce does not match.');
    const withoutProof = msg.slice(0, msg.length - parts[idx]!.length - 1);
    // The bytes as received: every part was read as latin1, one char per byte.
    const authMessage = Buffer.from(`${this.clientFirstBare},${this.serverFirst},${withoutProof}`, 'latin1');
    // Always compute and compare, even when the answer is already known (mock user).
    const clientSignature = hmac(this.verifier.storedKey, authMessage);
    const clientKey = xor(proof, clientSignature);
    const proofOk = timingSafeEqual(sha256(clientKey), this.verifier.storedKey);
    if (this.failReason !== null) return { ok: false, error: Errors.authFailed(this.user, this.failReason) };
    if (!proofOk) return { ok: false, error: Errors.authFailed(this.user, 'bad_password') };
    const serverSignature = hmac(this.verifier.serverKey, authMessage);
    return { ok: true, serverFinal: Buffer.from(`v=${serverSignature.toString('base64')}`, 'utf8'), clientKey };
  }

  get usedChannelBinding(): boolean {
    return this.cbFlag === 'p';
  }
}

/** How pgwarden proves itself to a tenant's server. */
export type UpstreamCredential =
  | { kind: 'password'; password: string }
  /** SCRAM pass-through: the client's ClientKey plus the verifier it was checked against. */
  | { kind: 'client_key'; clientKey: Buffer; verifier: ScramVerifier };

/** Client side of SCRAM-SHA-256 (no channel binding) towards an untrusted upstream. */
export class ScramClientExchange {
  private readonly clientNonce = randomBytes(NONCE_BYTES).toString('base64');
  private clientFirstBare = '';
  private authMessage = '';
  private serverKey: Buffer | null = null;

  constructor(private readonly credential: UpstreamCredential) {}

  clientFirst(): string {
    this.clientFirstBare = `n=,r=${this.clientNonce}`;
    return `n,,${this.clientFirstBare}`;
  }

  /** Returns client-final-message; throws Error (upstream's fault) on anything odd. */
  async serverFirst(data: string): Promise<string> {
    if (data.length > 1024) throw new Error('server-first-message too long');
    const parts = data.split(',');
    const r = parts[0]?.startsWith('r=') ? parts[0].slice(2) : undefined;
    const s = parts[1]?.startsWith('s=') ? decodeBase64Strict(parts[1].slice(2)) : undefined;
    const iStr = parts[2]?.startsWith('i=') ? parts[2].slice(2) : undefined;
    const iterations = iStr !== undefined && /^\d{1,10}$/.test(iStr) ? Number(iStr) : NaN;
    if (r === undefined || s === undefined || s.length === 0 || !Number.isInteger(iterations)) throw new Error('malformed server-first-message');
    if (!r.startsWith(this.clientNonce) || r.length === this.clientNonce.length || !isScramPrintable(r)) throw new Error('bad server nonce');
    if (iterations < 1 || iterations > MAX_UPSTREAM_ITERATIONS) throw new Error('server iteration count out of range');
    let clientKey: Buffer;
    let storedKey: Buffer;
    if (this.credential.kind === 'password') {
      const keys = keysFromSaltedPassword(await saltedPassword(this.credential.password, s, iterations));
      clientKey = keys.clientKey;
      storedKey = keys.storedKey;
      this.serverKey = keys.serverKey;
    } else {
      const v = this.credential.verifier;
      // Pass-through works only if the server holds the same verifier (same salt and count).
      if (iterations !== v.iterations || !s.equals(v.salt)) throw new Error('upstream verifier differs from the configured one');
      clientKey = this.credential.clientKey;
      storedKey = v.storedKey;
      this.serverKey = v.serverKey;
    }
    const withoutProof = `c=biws,r=${r}`;
    this.authMessage = `${this.clientFirstBare},${data},${withoutProof}`;
    const proof = xor(clientKey, hmac(storedKey, this.authMessage));
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  /** Checks the server's signature: a server that cannot sign does not hold the verifier. */
  serverFinal(data: string): void {
    if (this.serverKey === null) throw new Error('server-final before server-first');
    if (data.startsWith('e=')) throw new Error('server reported a SCRAM error');
    const v = data.startsWith('v=') ? decodeBase64Strict(data.slice(2).split(',')[0] ?? '') : undefined;
    const expected = hmac(this.serverKey, this.authMessage);
    if (v === undefined || v.length !== expected.length || !timingSafeEqual(v, expected)) throw new Error('bad server signature');
  }
}

/**
 * The iteration count a mock verifier should show (rule 3: "a realistic iteration count"): the most
 * common one among the verifiers an attacker could compare it with (a tenant's users; given as a
 * histogram, iterations → how many), ties to the
 * larger, and PostgreSQL's default when there are none. A fixed 4096 would mark unknown users on a
 * tenant whose verifiers were made with another scram_iterations.
 */
export function typicalIterations(counts: ReadonlyMap<number, number>): number {
  let best = DEFAULT_ITERATIONS;
  let bestCount = 0;
  for (const [iterations, n] of counts) {
    if (n > bestCount || (n === bestCount && iterations > best)) {
      best = iterations;
      bestCount = n;
    }
  }
  return best;
}
