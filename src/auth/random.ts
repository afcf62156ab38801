/**
 * Random bytes for per-login secrets (SCRAM server nonces, cancel keys), handed out from a pool
 * that the CSPRNG refills 4 KiB at a time: OpenSSL 3's RAND_bytes costs some 8 µs a call here
 * (provider and DRBG lookups, a getpid), whatever the size. The bytes are the same CSPRNG output;
 * each is handed out once and wiped from the pool as it goes. Node's randomUUID pools the same way.
 */
import { randomFillSync } from 'node:crypto';

const POOL = Buffer.alloc(4096);
let offset = POOL.length;

/** `n` (≤ 256) fresh random bytes in a buffer of their own. */
export function pooledRandomBytes(n: number): Buffer {
  if (n > 256) throw new RangeError('pooledRandomBytes: at most 256 bytes');
  if (offset + n > POOL.length) {
    randomFillSync(POOL);
    offset = 0;
  }
  const out = Buffer.allocUnsafe(n);
  POOL.copy(out, 0, offset, offset + n);
  POOL.fill(0, offset, offset + n);
  offset += n;
  return out;
}
