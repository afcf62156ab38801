/**
 * A Duplex over a socket that first replays bytes already read from it. Direct TLS (PostgreSQL
 * 17's sslnegotiation=direct) is recognised by its first byte, after Node has read the chunk;
 * TLSSocket does not see bytes read before it wraps a socket, so it wraps this instead.
 * Only that rare path pays for the extra stream hop.
 */
import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';

export class PrefixedStream extends Duplex {
  private prefix: Buffer | null;

  constructor(
    private readonly raw: Socket,
    prefix: Buffer,
  ) {
    super();
    this.prefix = prefix;
    raw.on('data', (d: Buffer) => {
      if (!this.push(d)) raw.pause();
    });
    raw.on('end', () => this.push(null));
    raw.on('error', (err) => this.destroy(err));
    raw.on('close', () => this.destroy());
  }

  override _read(): void {
    if (this.prefix !== null) {
      const p = this.prefix;
      this.prefix = null;
      this.push(p);
    }
    this.raw.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.raw.write(chunk, cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.raw.end(cb);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.raw.destroy();
    cb(err);
  }
}
