/**
 * The client's connection before the relay takes it: one socket (replaced by a TLS one on
 * upgrade, with the session's listeners moved across), one frame reader, and reads that a
 * pre-auth step awaits. Pre-auth is not the hot path, so steps read top to bottom; every wait
 * ends with `Aborted` once the session fires its signal (client gone, pre-auth deadline, operator): the
 * session then calls interrupt(). Policy is the steps'; this file only moves bytes.
 */
import type { Socket } from 'node:net';
import tls from 'node:tls';
import { FrameReader, type Frame } from '../protocol/frame-reader.js';
import { PrefixedStream } from '../net/prefixed-stream.js';
import type { ClientAddress } from '../net/proxy-header.js';
import type { Notice } from './types.js';
import { socketIo, type IoSink, type RelayIoMode, type SocketIo } from '../net/socket-io.js';

/** ALPN protocol list ["postgresql"] in its wire form (built once, not per handshake). */
const ALPN_POSTGRESQL = Buffer.from('\x0apostgresql', 'latin1');

/** After a FATAL is written, how long the peer gets to read it before the socket is destroyed. */
const CLOSE_GRACE_MS = 5_000;

/** The session's signal fired while a step waited; the session has already ended (or is ending) the connection. */
export class Aborted extends Error {
  constructor() {
    super('session aborted');
  }
}

/** Throws Aborted once the signal fired: for steps to call after each await. */
export function checkAborted(signal: AbortSignal): void {
  if (signal.aborted) throw new Aborted();
}

/** The listeners a session keeps on whichever socket the client is on. */
export interface ClientListeners {
  readonly data: (chunk: Buffer) => void;
  readonly error: (err: Error) => void;
  readonly close: () => void;
}

export interface TlsUpgrade {
  readonly secureContext: tls.SecureContext;
  /** Bytes already read that belong to the TLS stream (direct TLS: the ClientHello). */
  readonly prefix: Buffer | null;
  /**
   * Asked for the SNI name during the handshake; an Error refuses the handshake (TLS alert). Null:
   * no callback, so OpenSSL does not stop mid-handshake for a round trip into JS (the name is
   * then read from the socket afterwards).
   */
  readonly onSni: ((servername: string) => Error | null) | null;
}

export class ClientConn {
  sock: Socket;
  readonly reader = new FrameReader();
  /** The client's address: the peer's, or the one a trusted load balancer gave (PROXY protocol). */
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly via: ClientAddress['via'];
  /** Bytes read from the client before the relay took over. */
  bytesIn = 0;
  /** The relay's I/O on the socket once the relay took it (its drain goes to the relay). */
  private io: SocketIo | null = null;
  private wake: (() => void) | null = null;
  /**
   * The session's pre-auth signal, dropped when the relay takes the socket: the session drops its
   * controller then too.
   */
  private signal: AbortSignal | null;

  constructor(
    socket: Socket,
    client: ClientAddress,
    private readonly listeners: ClientListeners,
    signal: AbortSignal,
  ) {
    this.sock = socket;
    this.remoteAddress = client.addr;
    this.remotePort = client.port;
    this.via = client.via;
    this.signal = signal;
    socket.setNoDelay(true);
    this.listen(socket);
  }

  /**
   * The session's signal just fired: a step waiting for bytes wakes up and throws Aborted. Called
   * by the session right after abort(), instead of an 'abort' listener on the signal (an
   * EventTarget dispatch costs a login some 20 µs).
   */
  interrupt(): void {
    this.wakeUp();
  }

  /** The session's data listener, before the relay: bytes wait in the reader for the step that reads them. */
  push(chunk: Buffer): void {
    this.bytesIn += chunk.length;
    this.reader.push(chunk);
    this.wakeUp();
  }

  /** The first byte the client sent, once it is here. */
  async firstByte(): Promise<number> {
    while (this.reader.buffered === 0) await this.more();
    return this.reader.peekByte();
  }

  /** The next untyped message (startup, SSLRequest, CancelRequest); FrameLengthError outside [8, maxBytes]. */
  async nextUntyped(maxBytes: number): Promise<Frame> {
    for (;;) {
      const f = this.reader.nextUntyped(maxBytes);
      if (f !== null) return f;
      await this.more();
    }
  }

  /** The next typed message; FrameTypeError or FrameLengthError as `maxLengthFor` decides. */
  async nextTyped(maxLengthFor: (type: number) => number): Promise<Frame> {
    for (;;) {
      const f = this.reader.nextTyped(maxLengthFor);
      if (f !== null) return f;
      await this.more();
    }
  }

  /** Writes frames as one batch. */
  send(...frames: Buffer[]): void {
    if (frames.length === 1) {
      this.sock.write(frames[0]!);
      return;
    }
    this.sock.cork();
    for (const f of frames) this.sock.write(f);
    this.sock.uncork();
  }

  /**
   * Upgrades to TLS (after SSLRequest, or direct TLS with the ClientHello as prefix) and resolves
   * once the handshake is done. A failed handshake is reported through the error listener, which
   * aborts the session: this then rejects with Aborted.
   */
  async upgradeTls(u: TlsUpgrade): Promise<tls.TLSSocket> {
    const raw = this.sock;
    this.unlisten(raw);
    // The socket keeps its options (and so this callback) for life: what the callback reaches is
    // dropped once the handshake is done, so an idle session does not hold the handshake's closures.
    let pending: TlsUpgrade | null = u;
    const secure = new tls.TLSSocket(u.prefix === null ? raw : new PrefixedStream(raw, u.prefix), {
      isServer: true,
      secureContext: u.secureContext,
      ALPNProtocols: ALPN_POSTGRESQL,
      ...(u.onSni === null
        ? {}
        : {
            SNICallback: (servername: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void) => {
              if (pending === null || pending.onSni === null) return cb(new Error('SNI after the handshake'));
              const refusal = pending.onSni(servername);
              if (refusal !== null) cb(refusal);
              else cb(null, pending.secureContext);
            },
          }),
    });
    this.sock = secure;
    this.listen(secure);
    const state = { secured: false };
    secure.once('secure', () => {
      state.secured = true;
      this.wakeUp();
    });
    try {
      while (!state.secured) await this.more();
    } finally {
      pending = null;
    }
    return secure;
  }

  /** The I/O the relay will read and write the socket with (net/socket-io.ts). */
  relayIo(mode: RelayIoMode): SocketIo {
    return (this.io = socketIo(this.sock, mode));
  }

  /**
   * Hands the socket to the relay: from now on its bytes go to `sink`; error and close stay the
   * session's. Returns what was read and not yet consumed, for the relay to take first.
   */
  handOver(sink: IoSink): Buffer {
    this.sock.removeListener('data', this.listeners.data);
    this.signal = null;
    const fromReader = this.reader.drain();
    const fromSocket = this.io!.start(sink);
    if (fromSocket === null) return fromReader;
    this.bytesIn += fromSocket.length;
    return fromReader.length === 0 ? fromSocket : Buffer.concat([fromReader, fromSocket]);
  }

  /**
   * Ends the connection as `notice` says: a FATAL (then a grace to read it), a plain end, a reset, or
   * nothing. The relay's last writes go first: the stream may not write while one is in flight.
   */
  endWith(notice: Notice): void {
    const io = this.io;
    if (io !== null) {
      this.io = null;
      io.stop();
      if (notice !== 'none' && notice !== 'destroy' && io.busy) {
        io.whenFlushed(() => this.endNow(notice));
        return;
      }
    }
    this.endNow(notice);
  }

  private endNow(notice: Notice): void {
    const sock = this.sock;
    if (notice === 'none') return;
    if (notice === 'destroy') {
      sock.destroy();
      return;
    }
    if (notice === 'end_soon') {
      sock.end();
      sock.destroySoon();
      return;
    }
    if (sock.destroyed) return;
    if (notice === 'end') {
      sock.end();
      return;
    }
    sock.end(notice);
    // Keep reading (and discarding) so the peer's FIN is seen; a paused socket would linger.
    sock.resume();
    setTimeout(() => sock.destroy(), CLOSE_GRACE_MS).unref();
  }
  private async more(): Promise<void> {
    const signal = this.signal!;
    checkAborted(signal);
    await new Promise<void>((resolve) => (this.wake = resolve));
    checkAborted(signal);
  }

  private wakeUp(): void {
    const w = this.wake;
    if (w !== null) {
      this.wake = null;
      w();
    }
  }

  private listen(s: Socket): void {
    s.on('data', this.listeners.data);
    s.on('error', this.listeners.error);
    s.on('close', this.listeners.close);
  }

  private unlisten(s: Socket): void {
    s.removeListener('data', this.listeners.data);
    s.removeListener('error', this.listeners.error);
    s.removeListener('close', this.listeners.close);
  }
}
