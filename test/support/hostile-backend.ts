/**
 * A scripted, misbehaving "tenant server" for the faults a real PostgreSQL will not produce on
 * demand (SECURITY.md rule 6): broken framing, an ErrorResponse without a SQLSTATE, an absurd
 * SCRAM iteration count, bytes injected after the SSLRequest answer. It speaks just enough of the
 * protocol to get there.
 */
import net from 'node:net';

export type HostileScript =
  /** Logs in (trust), then answers the first Query with a frame whose length is 2. */
  | 'bad_length_after_login'
  /** Refuses the login with an ErrorResponse that has no SQLSTATE field. */
  | 'error_without_sqlstate'
  /** Asks for SCRAM and then announces 2^31-1 iterations. */
  | 'huge_scram_iterations'
  /** Answers SSLRequest with 'S' followed by plaintext bytes (CVE-2021-23222). */
  | 'bytes_after_ssl_answer';

/** A backend frame: type byte, Int32 length, body (a string is written as UTF-8). Shared with backend-fuzz.ts. */
export function frame(type: string, body: Buffer | string): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  const out = Buffer.alloc(5 + b.length);
  out.write(type, 0, 'latin1');
  out.writeUInt32BE(4 + b.length, 1);
  b.copy(out, 5);
  return out;
}

export const int32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
};

function loggedIn(): Buffer {
  return Buffer.concat([
    frame('R', int32(0)),
    frame('S', Buffer.from('server_version\u000015.0\u0000')),
    frame('K', Buffer.concat([int32(4242), int32(1)])),
    frame('Z', Buffer.from('I')),
  ]);
}

/** A fake tenant server: its port, and what it accepted. Shared with backend-fuzz.ts. */
export interface FakeServer {
  port: number;
  /** Connections accepted so far. */
  connections(): number;
  /** Connections open now. */
  open(): number;
  close(): Promise<void>;
}

export type HostileBackend = FakeServer;

/** Listens on 127.0.0.1 (port 0) and hands each connection to `serve`. */
export async function listenFake(serve: (s: net.Socket) => void): Promise<FakeServer> {
  let accepted = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    serve(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    connections: () => accepted,
    open: () => sockets.size,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

export function startHostileBackend(script: HostileScript): Promise<HostileBackend> {
  return listenFake((s) => {
    let startupSeen = false;
    s.on('data', (d: Buffer) => {
      if (d.length >= 8 && d.readUInt32BE(4) === 80877103) {
        // SSLRequest
        s.write(script === 'bytes_after_ssl_answer' ? Buffer.concat([Buffer.from('S'), frame('R', int32(0))]) : Buffer.from('N'));
        return;
      }
      if (!startupSeen) {
        startupSeen = true;
        if (script === 'error_without_sqlstate') s.write(frame('E', Buffer.from('SFATAL\u0000Mgo away\u0000\u0000')));
        else if (script === 'huge_scram_iterations') s.write(frame('R', Buffer.concat([int32(10), Buffer.from('SCRAM-SHA-256\u0000\u0000')])));
        else s.write(loggedIn());
        return;
      }
      if (script === 'huge_scram_iterations' && d[0] === 0x70 /* p */) {
        // Echo the client's nonce back extended, with an iteration count no one should compute.
        const text = d.toString('latin1');
        const nonce = /r=([^,]+)/.exec(text)?.[1] ?? '';
        s.write(frame('R', Buffer.concat([int32(11), Buffer.from(`r=${nonce}xyz,s=c2FsdA==,i=2147483647`)])));
        return;
      }
      if (script === 'bad_length_after_login' && d[0] === 0x51 /* Q */) {
        const bad = Buffer.from([0x44 /* D */, 0, 0, 0, 2]);
        s.write(Buffer.concat([frame('T', Buffer.concat([Buffer.from([0, 0])])), bad]));
      }
    });
  });
}
