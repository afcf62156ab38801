/**
 * Step 1, the handshake: SSLRequest / GSSENCRequest / direct TLS (with ALPN) / the startup packet
 * or a CancelRequest. Returns what the client asked for, or a silent refusal; a PgError is the
 * FATAL PostgreSQL would send. Says nothing about tenants or users (admission does).
 * @see https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-SSL
 */
import type tls from 'node:tls';
import { Errors } from '../../errors.js';
import { SSL_ACCEPTED, SSL_REFUSED, encodeNegotiateProtocolVersion } from '../../protocol/backend.js';
import { Limits } from '../../protocol/codes.js';
import { FrameLengthError } from '../../protocol/frame-reader.js';
import { decodeFirstMessage, ProtocolFormatError } from '../../protocol/frontend.js';
import type { TlsMaterial } from '../../net/tls.js';
import type { ClientConn } from '../client-conn.js';
import type { SessionContext } from '../context.js';
import { tenantFromSni } from '../../routing/resolve.js';
import { PROXY_V2_SIGNATURE } from '../../protocol/proxy-v2.js';

/** First byte of a TLS record carrying a handshake (ClientHello). */
const TLS_HANDSHAKE = 0x16;

/** How the connection was secured, for routing and the audit record. */
export interface TlsFacts {
  negotiation: 'sslrequest' | 'direct' | 'none';
  version: string | null;
  cipher: string | null;
  sni: string | undefined;
  alpn: string | null;
}

export type HandshakeResult =
  | { readonly kind: 'startup'; readonly params: Map<string, string>; readonly negotiate: Buffer | null }
  | { readonly kind: 'cancel'; readonly processId: number; readonly secretKey: Buffer }
  /** Pre-startup noise: closed without a word (N4), counted by reason. */
  | { readonly kind: 'refused'; readonly reason: string };

export interface HandshakeDeps {
  readonly tls: TlsMaterial | null;
  /** proxy_protocol is on and the peer is not a trusted balancer: a PROXY header is refused. */
  readonly refuseProxyHeader: boolean;
  /** The TLS handshake starts or ends (the session writes its phase). */
  readonly onTlsPhase: (inHandshake: boolean) => void;
  /** Called with the SNI name mid-handshake; an Error refuses it before the costly part. */
  readonly onSni: (servername: string) => Error | null;
  /** Whether onSni could refuse anything now (a tenant is rate-shielded); if not, it is not installed. */
  readonly sniCheckNeeded: () => boolean;
  /** A completed TLS handshake (metrics). */
  readonly onTlsDone: (version: string | null) => void;
}

export async function handshake(conn: ClientConn, deps: HandshakeDeps, facts: TlsFacts): Promise<HandshakeResult> {
  // A PROXY v2 signature starts with 0x0D, which no startup packet (length ≤ 10 000), SSLRequest or
  // ClientHello does: the first byte is enough. Only a trusted balancer may say who the client is.
  if (deps.refuseProxyHeader && (await conn.firstByte()) === PROXY_V2_SIGNATURE[0]) return { kind: 'refused', reason: 'proxy_protocol:untrusted' };
  // Direct TLS (PostgreSQL 17): a ClientHello instead of a startup packet.
  if (deps.tls !== null && (await conn.firstByte()) === TLS_HANDSHAKE) {
    const refused = await secure(conn, deps, deps.tls, conn.reader.drain(), facts);
    if (refused !== null) return refused;
  }
  let sslRequested = false;
  let gssRequested = false;
  for (;;) {
    let body: Buffer;
    try {
      body = (await conn.nextUntyped(Limits.startupBytes)).body;
    } catch (err) {
      if (err instanceof FrameLengthError) return { kind: 'refused', reason: 'protocol_violation:startup_length' };
      throw err;
    }
    let msg;
    try {
      msg = decodeFirstMessage(body);
    } catch (err) {
      if (!(err instanceof ProtocolFormatError)) throw err;
      // A malformed CancelRequest is closed silently, as PostgreSQL does; a broken startup packet gets N5.
      if (err.code === 'cancel_length') return { kind: 'refused', reason: 'protocol_violation:cancel_length' };
      throw Errors.startupLayout();
    }
    switch (msg.kind) {
      case 'ssl_request': {
        // PostgreSQL treats a second SSLRequest as an unknown protocol version 1234.5679.
        if (sslRequested || facts.negotiation !== 'none') throw Errors.unsupportedProtocol(1234, 5679);
        sslRequested = true;
        // Answer first (never with an ErrorResponse: CVE-2024-10977), then the buffer must be
        // empty: bytes sent before the handshake were not encrypted (CVE-2021-23214).
        conn.send(deps.tls === null ? SSL_REFUSED : SSL_ACCEPTED);
        if (conn.reader.buffered > 0) throw Errors.dataAfterSslRequest();
        if (deps.tls !== null) {
          const refused = await secure(conn, deps, deps.tls, null, facts);
          if (refused !== null) return refused;
        }
        continue;
      }
      case 'gssenc_request':
        if (gssRequested || facts.negotiation !== 'none') throw Errors.unsupportedProtocol(1234, 5680);
        gssRequested = true;
        conn.send(SSL_REFUSED); // 'N': no GSSAPI encryption
        if (conn.reader.buffered > 0) throw Errors.dataAfterGssRequest();
        continue;
      case 'cancel':
        return { kind: 'cancel', processId: msg.processId, secretKey: msg.secretKey };
      case 'unsupported_version':
        throw Errors.unsupportedProtocol(msg.major, msg.minor);
      case 'startup': {
        const negotiate = msg.minor > 0 || msg.unknownProtocolOptions.length > 0 ? encodeNegotiateProtocolVersion(msg.unknownProtocolOptions) : null;
        return { kind: 'startup', params: msg.params, negotiate };
      }
    }
  }
}

/** The TLS handshake and its ALPN rule; null when the client may go on. */
async function secure(conn: ClientConn, deps: HandshakeDeps, material: TlsMaterial, prefix: Buffer | null, facts: TlsFacts): Promise<HandshakeResult | null> {
  deps.onTlsPhase(true);
  const s: tls.TLSSocket = await conn.upgradeTls({
    secureContext: material.secureContext,
    prefix,
    onSni: deps.sniCheckNeeded()
      ? (servername) => {
          facts.sni = servername;
          return deps.onSni(servername);
        }
      : null,
  });
  if (facts.sni === undefined && typeof s.servername === 'string') facts.sni = s.servername;
  const direct = prefix !== null;
  facts.negotiation = direct ? 'direct' : 'sslrequest';
  facts.version = s.getProtocol();
  // @types/node says getCipher() is never null, but Node returns null once the handle is gone.
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
  facts.cipher = s.getCipher()?.name ?? null;
  const alpn = s.alpnProtocol;
  facts.alpn = alpn || null;
  deps.onTlsDone(facts.version);
  deps.onTlsPhase(false);
  // ALPN (PostgreSQL 17): direct TLS requires "postgresql"; after SSLRequest it is optional,
  // but a client that offers protocols must include it (N10).
  if (alpn !== 'postgresql' && (direct || alpn !== false)) return { kind: 'refused', reason: 'protocol_violation:alpn' };
  return null;
}

/**
 * A tenant whose connection-rate bucket is known to be empty: refuse before the costly part of
 * the handshake (key exchange, signature). The client sees a TLS alert, not 53300: during a
 * storm that is the price of not spending a handshake on every attempt.
 */
export function rateShieldedHandshake(ctx: SessionContext, servername: string, remoteAddress: string): Error | null {
  const tenant = tenantFromSni(servername, ctx.config.server.sniSuffix);
  if (tenant === undefined || !ctx.rateShielded(tenant)) return null;
  ctx.metrics.limitRejections.inc({ tenant: ctx.config.tenants.has(tenant) ? tenant : 'unknown', limit: 'new_connections_per_second' });
  ctx.rejections.record('rate_limited_handshake', remoteAddress, tenant);
  return new Error('connection rate exceeded');
}
