/**
 * PROXY protocol v2 on the accept path: which peers are trusted balancers, and reading a trusted
 * peer's header off the socket (bounded in bytes and time) before any session exists. Decoding
 * is protocol/proxy-v2.ts's; caps, metrics and logs are server.ts's.
 */
import { isIPv4, type BlockList, type Socket } from 'node:net';
import { decodeProxyV2, MAX_PROXY_V2_BYTES, type ProxyV2Problem } from '../protocol/proxy-v2.js';

/** Who the client is: the connection's peer, or the address a trusted balancer vouched for (`via` is then the balancer). */
export interface ClientAddress {
  readonly addr: string;
  readonly port: number;
  readonly via: { readonly addr: string; readonly port: number } | null;
}

/** The connection's own peer as a ClientAddress. */
export function peerAddress(socket: Socket): ClientAddress {
  return { addr: socket.remoteAddress ?? '', port: socket.remotePort ?? 0, via: null };
}

/** Whether `addr` (as Node writes a peer, IPv4-mapped included) is in `trusted`. */
export function isTrustedPeer(trusted: BlockList, addr: string): boolean {
  const v4 = addr.startsWith('::ffff:') ? addr.slice(7) : addr;
  if (isIPv4(v4)) return trusted.check(v4, 'ipv4');
  return addr !== '' && trusted.check(addr, 'ipv6');
}

export type ProxyHeaderRefusal = ProxyV2Problem | 'timeout';

export type ProxyHeaderResult =
  /** The client's address, and bytes read past the header (they belong to the client's stream). */
  | { readonly kind: 'proxied'; readonly client: ClientAddress; readonly rest: Buffer }
  /** LOCAL (the balancer's own connection): its own address; at least one byte of its stream in `rest`. */
  | { readonly kind: 'local'; readonly client: ClientAddress; readonly rest: Buffer }
  /** The peer closed: before a complete header ('aborted'), or after LOCAL without a byte ('health_check'). */
  | { readonly kind: 'closed'; readonly reason: 'aborted' | 'health_check' }
  /** Not a header we accept (or none in time): close without a reply. */
  | { readonly kind: 'refused'; readonly reason: ProxyHeaderRefusal };

/**
 * Reads a PROXY v2 header from a trusted balancer's connection. Resolves once it is decided, with
 * the socket paused and our listeners gone: the caller resumes it once its own reader is attached.
 * A LOCAL header waits on for the first byte after it (or the close), so that a health check that
 * only connects and leaves never becomes a session.
 */
export function readProxyHeader(socket: Socket, timeoutMs: number, maxBytes = MAX_PROXY_V2_BYTES): Promise<ProxyHeaderResult> {
  return new Promise((resolve) => {
    let buf: Buffer = Buffer.alloc(0);
    let local = false;
    const finish = (r: ProxyHeaderResult): void => {
      clearTimeout(timer);
      socket.pause();
      socket.removeListener('data', onData);
      socket.removeListener('close', onClose);
      resolve(r);
    };
    const onData = (chunk: Buffer): void => {
      if (local) return finish({ kind: 'local', client: peerAddress(socket), rest: chunk });
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const d = decodeProxyV2(buf, maxBytes);
      if (d.kind === 'incomplete') return;
      if (d.kind === 'invalid') return finish({ kind: 'refused', reason: d.problem });
      const h = d.header;
      // Copied: a subarray would pin the whole chunk for as long as the session keeps its first bytes.
      const rest = Buffer.from(buf.subarray(h.bytes));
      if (h.command === 'proxy') {
        const via = { addr: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 };
        return finish({ kind: 'proxied', client: { addr: h.source.addr, port: h.source.port, via }, rest });
      }
      if (rest.length > 0) return finish({ kind: 'local', client: peerAddress(socket), rest });
      local = true;
      buf = Buffer.alloc(0);
    };
    const onClose = (): void => finish({ kind: 'closed', reason: local ? 'health_check' : 'aborted' });
    const timer = setTimeout(() => finish({ kind: 'refused', reason: 'timeout' }), timeoutMs);
    socket.on('data', onData);
    socket.once('close', onClose);
  });
}
