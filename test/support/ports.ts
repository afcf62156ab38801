/** Ports for the real servers tests start (PostgreSQL, Redis, HAProxy, Prometheus), which need a number in their config. */
import net from 'node:net';

/** A loopback port that was free a moment ago: listen on 0, read it, close. The server may still lose a race for it. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const server = net.createServer();
  server.unref();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no TCP address from listen(0)');
  return address.port;
}
