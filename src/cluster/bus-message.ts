/**
 * What instances tell each other over the bus channel (redis-bus.ts), and the decoder for it: anyone
 * who can reach Redis can publish, so a message is untrusted input, checked here before any handler
 * sees it. What a message means is the handlers' (bus.ts).
 */
import { decodeRevocation } from '../admin/revocations.js';

/** What travels on the channel. Never a secret: a cancel carries the SHA-256 of the secret key. */
export type BusMessage =
  | { readonly from: string; readonly kind: 'cancel'; readonly processId: number; readonly secretHash: string }
  | { readonly from: string; readonly kind: 'suspend'; readonly tenantId: string; readonly suspended: boolean }
  | { readonly from: string; readonly kind: 'reload' }
  | { readonly from: string; readonly kind: 'revoke'; readonly by: 'jti' | 'sub'; readonly id: string; readonly untilMs: number };

/** Bigger than any valid message; longer input is dropped before JSON.parse. */
const MAX_MESSAGE_CHARS = 2_048;
const MAX_ID_CHARS = 256;
const SHA256_HEX = /^[0-9a-f]{64}$/;

export function isId(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0 && v.length <= MAX_ID_CHARS;
}

/**
 * Decodes one channel message, or null if it is anything but a well-formed message of a known kind.
 * Anyone who can reach Redis can publish, so this is input like any other.
 */
export function decodeBusMessage(raw: string): BusMessage | null {
  if (raw.length > MAX_MESSAGE_CHARS) return null;
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const m = v as Record<string, unknown>;
  const from = m['from'];
  if (!isId(from)) return null;
  switch (m['kind']) {
    case 'cancel': {
      const processId = m['processId'];
      const secretHash = m['secretHash'];
      // BackendKeyData's process id is an Int32; we accept its unsigned reading too.
      if (typeof processId !== 'number' || !Number.isInteger(processId) || processId < -0x80000000 || processId > 0xffffffff) return null;
      if (typeof secretHash !== 'string' || !SHA256_HEX.test(secretHash)) return null;
      return { from, kind: 'cancel', processId, secretHash };
    }
    case 'suspend': {
      const tenantId = m['tenantId'];
      const suspended = m['suspended'];
      if (!isId(tenantId) || typeof suspended !== 'boolean') return null;
      return { from, kind: 'suspend', tenantId, suspended };
    }
    case 'reload':
      return { from, kind: 'reload' };
    case 'revoke': {
      const rev = decodeRevocation(m);
      return rev === null ? null : { from, kind: 'revoke', ...rev };
    }
    default:
      return null;
  }
}
