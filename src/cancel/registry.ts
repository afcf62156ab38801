/**
 * Proxy-issued cancel keys and what they point at. A client only ever sees our key; the
 * upstream's key stays here. Lookup compares the secret in constant time, and an unknown key
 * is simply not found: the caller drops it silently, as PostgreSQL does. A cancel that must reach
 * another instance or worker travels as the key's hash (hashCancelSecret), never the key.
 */
import { createHash, createHmac, randomInt, timingSafeEqual } from 'node:crypto';
import { pooledRandomBytes } from '../auth/random.js';

/**
 * What a cancel carries instead of the secret: HMAC-SHA256 under a key every instance shares
 * (the mock-salt secret: server.mock_secret_env, or one derived from the shared TLS key), so a
 * reader of the channel cannot brute-force the 4-byte secret from it. Without a key (tests of
 * the bus alone), a plain SHA-256.
 */
export function hashCancelSecret(secretKey: Buffer, clusterKey?: Buffer): string {
  if (clusterKey === undefined) return createHash('sha256').update(secretKey).digest('hex');
  return createHmac('sha256', clusterKey).update('pgwarden-cancel\0').update(secretKey).digest('hex');
}

export interface CancelTarget {
  readonly tenantId: string | undefined;
  /** Sends the cancel to whatever upstream currently serves the session (may change with pooling). */
  cancel(): void;
}

interface Entry {
  /**
   * The 4-byte secret as an unsigned integer: an entry lives as long as its session, and a number
   * costs nothing where a Buffer costs an ArrayBuffer and a native backing store (issue 15, idle
   * memory). Lookups, which are rare, compare it as bytes in constant time.
   */
  readonly secret: number;
  readonly target: CancelTarget;
}

function secretBytes(secret: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(secret, 0);
  return b;
}

export class CancelRegistry {
  private readonly entries = new Map<number, Entry>();

  /** Issues a fresh (processId, secretKey) for a session. 3.0 keys are 4 bytes. */
  issue(target: CancelTarget): { processId: number; secretKey: Buffer } {
    let processId: number;
    do processId = randomInt(1, 0x7fffffff);
    while (this.entries.has(processId));
    const secretKey = pooledRandomBytes(4);
    this.entries.set(processId, { secret: secretKey.readUInt32BE(0), target });
    return { processId, secretKey };
  }

  release(processId: number): void {
    this.entries.delete(processId);
  }

  lookup(processId: number, secretKey: Buffer): CancelTarget | undefined {
    const e = this.entries.get(processId);
    if (e === undefined || secretKey.length !== 4) return undefined;
    return timingSafeEqual(secretBytes(e.secret), secretKey) ? e.target : undefined;
  }

  /** A cancel relayed by another instance or worker: the secret arrives as hashCancelSecret() under `clusterKey`. */
  lookupByHash(processId: number, secretHash: string, clusterKey: Buffer): CancelTarget | undefined {
    const e = this.entries.get(processId);
    if (e === undefined || !/^[0-9a-f]{64}$/.test(secretHash)) return undefined;
    const mine = Buffer.from(hashCancelSecret(secretBytes(e.secret), clusterKey), 'hex');
    return timingSafeEqual(mine, Buffer.from(secretHash, 'hex')) ? e.target : undefined;
  }

  get size(): number {
    return this.entries.size;
  }
}
