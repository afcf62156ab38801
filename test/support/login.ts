/**
 * A raw SCRAM login over the Wire client, for tests that need to speak after authentication
 * with exact bytes (bad message types, bad lengths, pipelining).
 */
import { serialize } from 'pg-protocol';
import { ScramClientExchange } from '../../src/auth/scram.js';
import { decodeError, startupMessage, Wire } from './wire.js';

export async function rawLogin(
  port: number,
  ca: string,
  o: { tenant: string; user: string; password: string; database?: string; params?: Record<string, string>; localAddress?: string },
): Promise<Wire> {
  const w = await Wire.connect(port, o.localAddress);
  await w.startTls(ca, `${o.tenant}.pg.test`);
  w.write(startupMessage({ user: o.user, database: o.database ?? 'postgres', ...o.params }));
  const scram = new ScramClientExchange({ kind: 'password', password: o.password });
  for (;;) {
    const f = await w.frame();
    if (f === null) throw new Error('closed during login');
    if (f.type === 'E') throw new Error(`login failed: ${JSON.stringify(decodeError(f.body))}`);
    if (f.type === 'R') {
      const code = f.body.readUInt32BE(0);
      if (code === 10) w.write(serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256', scram.clientFirst()));
      else if (code === 11) w.write(serialize.sendSCRAMClientFinalMessage(await scram.serverFirst(f.body.toString('utf8', 4))));
      else if (code === 12) scram.serverFinal(f.body.toString('utf8', 4));
    }
    if (f.type === 'Z') return w;
  }
}
