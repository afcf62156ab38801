/**
 * A raw protocol client for tests that need exact bytes: startup packets, SSLRequest followed by
 * smuggled data, bad lengths, dribbled input. It reads replies as frames and decodes ErrorResponse.
 */
import net from 'node:net';
import tls from 'node:tls';

export interface WireError {
  severity: string;
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

export class Wire {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  closed = false;

  private constructor(public socket: net.Socket) {
    this.attach(socket);
  }

  private attach(s: net.Socket): void {
    s.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    s.on('close', () => {
      this.closed = true;
      this.wake();
    });
    s.on('error', () => undefined);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Connects to 127.0.0.1:port, from `localAddress` if given (e.g. 127.0.0.2: another source). */
  static connect(port: number, localAddress?: string): Promise<Wire> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port, ...(localAddress === undefined ? {} : { localAddress }) }, () => resolve(new Wire(s)));
      s.once('error', reject);
    });
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  /** Waits for n bytes (or close). */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n && !this.closed) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout waiting for ${n} bytes (have ${this.buf.length})`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(out.length);
    return out;
  }

  /** Puts bytes back in front of what is buffered (after a one-byte peek that was a frame). */
  unread(b: Buffer): void {
    this.buf = Buffer.concat([b, this.buf]);
  }

  /** The next byte without taking it (-1 on close). */
  async peek(timeoutMs = 5000): Promise<number> {
    const b = await this.read(1, timeoutMs);
    if (b.length === 0) return -1;
    this.unread(b);
    return b[0]!;
  }

  /** Reads one typed frame; null if the connection closed first. */
  async frame(timeoutMs = 5000): Promise<{ type: string; body: Buffer } | null> {
    const head = await this.read(5, timeoutMs);
    if (head.length < 5) return null;
    const len = head.readUInt32BE(1);
    const body = await this.read(len - 4, timeoutMs);
    return { type: String.fromCharCode(head[0]!), body };
  }

  /** Reads frames until an ErrorResponse (returned) or close (null). */
  async error(timeoutMs = 5000): Promise<WireError | null> {
    for (;;) {
      const f = await this.frame(timeoutMs);
      if (f === null) return null;
      if (f.type === 'E') return decodeError(f.body);
    }
  }

  /** Resolves true if the peer closes within the time. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }

  /** SSLRequest, expect 'S', then TLS with the given SNI. */
  async startTls(ca: string, servername: string | undefined): Promise<void> {
    this.write(sslRequest());
    const answer = await this.read(1);
    if (answer.toString() !== 'S') throw new Error(`SSLRequest answered ${answer.toString()}`);
    const raw = this.socket;
    raw.removeAllListeners('data');
    const secure = tls.connect({ socket: raw, ca, ...(servername === undefined ? {} : { servername }), checkServerIdentity: () => undefined });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    this.socket = secure;
    this.attach(secure);
  }

  end(): void {
    this.socket.destroy();
  }
}

export function decodeError(body: Buffer): WireError {
  const fields: Record<string, string> = {};
  let pos = 0;
  while (pos < body.length && body[pos] !== 0) {
    const end = body.indexOf(0, pos + 1);
    fields[String.fromCharCode(body[pos]!)] = body.toString('utf8', pos + 1, end);
    pos = end + 1;
  }
  return {
    severity: fields['V'] ?? fields['S'] ?? '',
    code: fields['C'] ?? '',
    message: fields['M'] ?? '',
    ...(fields['D'] === undefined ? {} : { detail: fields['D'] }),
    ...(fields['H'] === undefined ? {} : { hint: fields['H'] }),
  };
}

export function sslRequest(): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(8, 0);
  b.writeUInt32BE(80877103, 4);
  return b;
}

export function gssencRequest(): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(8, 0);
  b.writeUInt32BE(80877104, 4);
  return b;
}

export function startupMessage(params: Record<string, string>, version = 196608): Buffer {
  const parts = [Buffer.alloc(8)];
  for (const [k, v] of Object.entries(params)) parts.push(Buffer.from(`${k}\0${v}\0`));
  parts.push(Buffer.from([0]));
  const b = Buffer.concat(parts);
  b.writeUInt32BE(b.length, 0);
  b.writeUInt32BE(version, 4);
  return b;
}

export function typed(type: string, body: Buffer): Buffer {
  const b = Buffer.alloc(5 + body.length);
  b.write(type, 0, 'latin1');
  b.writeUInt32BE(4 + body.length, 1);
  body.copy(b, 5);
  return b;
}

/** SASLInitialResponse: mechanism, Int32 length of the data (-1: none), the data. */
export function saslInitial(mechanism: string, data: string | null): Buffer {
  const d = data === null ? Buffer.alloc(0) : Buffer.from(data, 'utf8');
  const len = Buffer.alloc(4);
  len.writeInt32BE(data === null ? -1 : d.length);
  return typed('p', Buffer.concat([Buffer.from(`${mechanism}\0`), len, d]));
}

export function cancelRequest(pid: number, key: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(16, 0);
  b.writeUInt32BE(80877102, 4);
  b.writeUInt32BE(pid, 8);
  b.writeUInt32BE(key >>> 0, 12);
  return b;
}

/** Sends a CancelRequest on a plain connection, as libpq does, and waits for the proxy to close it. */
export async function sendCancel(port: number, pid: number, key: number): Promise<void> {
  const s = net.connect({ host: '127.0.0.1', port });
  s.on('error', () => undefined);
  await new Promise((r) => s.once('connect', r));
  s.write(cancelRequest(pid, key));
  await new Promise((r) => s.once('close', r));
}
