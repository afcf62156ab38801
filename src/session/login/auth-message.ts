/**
 * Reads one authentication message ('p') from the client. Anything else is PostgreSQL's FATAL
 * 08P01 "expected SASL response, got message type N" (or "password response"), Terminate
 * included; a length beyond the exchange's cap is an invalid length.
 */
import { frameError } from '../../errors.js';
import type { Frame } from '../../protocol/frame-reader.js';
import type { ClientConn } from '../client-conn.js';

export async function readAuthMessage(conn: ClientConn, maxLength: (type: number) => number, exchange: 'sasl' | 'password'): Promise<Frame> {
  try {
    return await conn.nextTyped(maxLength);
  } catch (err) {
    throw frameError(err, exchange);
  }
}
