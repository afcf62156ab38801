/**
 * The PROXY protocol version 2 header a load balancer puts in front of a connection: bytes only
 * (signature, version and command, family and transport, addresses, TLVs). Whom to trust and what
 * to do with the address is net/proxy-header.ts's.
 * @see https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt (section 2.2)
 */

/** The 12-byte signature: "\r\n\r\n\0\r\nQUIT\n". No PostgreSQL message starts with 0x0D (lengths ≤ 10 000, TLS 0x16). */
export const PROXY_V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** Signature, version/command, family/transport, length. */
export const PROXY_V2_FIXED_BYTES = 16;
/**
 * Our cap on a whole header (the spec allows 16 + 65 535). Addresses take at most 216 bytes (AF_UNIX);
 * the rest is TLVs (ALPN, authority, unique id up to 128, SSL facts): 2 KiB leaves room for those.
 */
export const MAX_PROXY_V2_BYTES = 2048;

/** Byte 13, high nibble: the address family. */
export const ProxyFamily = { Unspec: 0x0, Inet: 0x1, Inet6: 0x2, Unix: 0x3 } as const;
/** Byte 13, low nibble: the transport. */
export const ProxyTransport = { Unspec: 0x0, Stream: 0x1, Dgram: 0x2 } as const;
/** Byte 12, low nibble (the high nibble is the version, 2). */
export const ProxyCommand = { Local: 0x0, Proxy: 0x1 } as const;

export interface ProxyEndpoint {
  readonly addr: string;
  readonly port: number;
}

export interface ProxyTlv {
  readonly type: number;
  /** A copy (the header's chunk is not pinned). */
  readonly value: Buffer;
}

export type ProxyV2Header =
  /** A connection the balancer made itself (health check): use the connection's own endpoints. */
  | { readonly command: 'local'; readonly bytes: number }
  | {
      readonly command: 'proxy';
      readonly family: 'inet' | 'inet6';
      readonly source: ProxyEndpoint;
      readonly destination: ProxyEndpoint;
      readonly tlvs: readonly ProxyTlv[];
      /** Length of the whole header; what follows belongs to the client's stream. */
      readonly bytes: number;
    };

/** Why a header is refused: bounded, for metrics and logs. */
export type ProxyV2Problem = 'bad_signature' | 'bad_version' | 'bad_command' | 'oversized' | 'unsupported_family' | 'bad_address_length' | 'bad_tlv';

export type ProxyV2Decode =
  | { readonly kind: 'incomplete' }
  | { readonly kind: 'header'; readonly header: ProxyV2Header }
  | { readonly kind: 'invalid'; readonly problem: ProxyV2Problem };

const INCOMPLETE: ProxyV2Decode = { kind: 'incomplete' };

/** Whether `buf` (possibly shorter than 12 bytes) could be the start of the signature. */
export function startsLikeProxyV2(buf: Buffer): boolean {
  const n = Math.min(buf.length, PROXY_V2_SIGNATURE.length);
  return buf.subarray(0, n).equals(PROXY_V2_SIGNATURE.subarray(0, n));
}

/**
 * Decodes a header from the start of `buf` (everything read so far). Decides as early as the bytes
 * allow: a wrong signature byte, version, command or an over-long length is refused before the rest
 * arrives, so nothing is buffered beyond `maxBytes` plus one chunk.
 */
export function decodeProxyV2(buf: Buffer, maxBytes = MAX_PROXY_V2_BYTES): ProxyV2Decode {
  if (!startsLikeProxyV2(buf)) return { kind: 'invalid', problem: 'bad_signature' };
  if (buf.length < PROXY_V2_FIXED_BYTES) {
    if (buf.length > 12 && buf[12]! >> 4 !== 2) return { kind: 'invalid', problem: 'bad_version' };
    return INCOMPLETE;
  }
  const verCmd = buf[12]!;
  if (verCmd >> 4 !== 2) return { kind: 'invalid', problem: 'bad_version' };
  const cmd = verCmd & 0x0f;
  if (cmd !== ProxyCommand.Local && cmd !== ProxyCommand.Proxy) return { kind: 'invalid', problem: 'bad_command' };
  const family = buf[13]! >> 4;
  const transport = buf[13]! & 0x0f;
  const length = buf.readUInt16BE(14);
  const total = PROXY_V2_FIXED_BYTES + length;
  if (total > maxBytes) return { kind: 'invalid', problem: 'oversized' };
  if (buf.length < total) return INCOMPLETE;
  // LOCAL: "the receiver must accept this connection as valid and must use the real connection
  // endpoints and discard the protocol block including the family".
  if (cmd === ProxyCommand.Local) return { kind: 'header', header: { command: 'local', bytes: total } };
  // Only TCP over IPv4 or IPv6 carries a client address we can act on.
  if (transport !== ProxyTransport.Stream || (family !== ProxyFamily.Inet && family !== ProxyFamily.Inet6)) {
    return { kind: 'invalid', problem: 'unsupported_family' };
  }
  const body = buf.subarray(PROXY_V2_FIXED_BYTES, total);
  const v4 = family === ProxyFamily.Inet;
  const addrBytes = v4 ? 4 : 16;
  const addressBlock = 2 * addrBytes + 4;
  if (body.length < addressBlock) return { kind: 'invalid', problem: 'bad_address_length' };
  const fmt = v4 ? formatIPv4 : formatIPv6;
  const source = { addr: fmt(body.subarray(0, addrBytes)), port: body.readUInt16BE(2 * addrBytes) };
  const destination = { addr: fmt(body.subarray(addrBytes, 2 * addrBytes)), port: body.readUInt16BE(2 * addrBytes + 2) };
  const tlvs = decodeTlvs(body.subarray(addressBlock));
  if (tlvs === null) return { kind: 'invalid', problem: 'bad_tlv' };
  return { kind: 'header', header: { command: 'proxy', family: v4 ? 'inet' : 'inet6', source, destination, tlvs, bytes: total } };
}

/** Type (1), length (2), value: they must tile the rest of the header exactly. */
function decodeTlvs(b: Buffer): ProxyTlv[] | null {
  const tlvs: ProxyTlv[] = [];
  let at = 0;
  while (at < b.length) {
    if (b.length - at < 3) return null;
    const len = b.readUInt16BE(at + 1);
    if (at + 3 + len > b.length) return null;
    tlvs.push({ type: b[at]!, value: Buffer.from(b.subarray(at + 3, at + 3 + len)) });
    at += 3 + len;
  }
  return tlvs;
}

function formatIPv4(b: Buffer): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

/** RFC 5952 text (longest run of two or more zero groups as "::"); IPv4-mapped as Node writes it, "::ffff:a.b.c.d". */
function formatIPv6(b: Buffer): string {
  if (b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) return `::ffff:${formatIPv4(b.subarray(12))}`;
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i));
  let bestAt = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestAt = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (gs: number[]): string => gs.map((g) => g.toString(16)).join(':');
  if (bestAt < 0) return hex(groups);
  return `${hex(groups.slice(0, bestAt))}::${hex(groups.slice(bestAt + bestLen))}`;
}

/** Builds a header (tests, the fuzzer): PROXY over TCP with `source` → `destination`, or LOCAL. */
export function encodeProxyV2(
  h: { command: 'local' } | { command: 'proxy'; source: ProxyEndpoint; destination: ProxyEndpoint; tlvs?: readonly ProxyTlv[] },
): Buffer {
  if (h.command === 'local') return Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
  const v6 = h.source.addr.includes(':');
  const addr = (a: string): Buffer => (v6 ? parseIPv6(a) : Buffer.from(a.split('.').map(Number)));
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(h.source.port, 0);
  ports.writeUInt16BE(h.destination.port, 2);
  const tlvs = (h.tlvs ?? []).map((t) => {
    const head = Buffer.from([t.type, 0, 0]);
    head.writeUInt16BE(t.value.length, 1);
    return Buffer.concat([head, t.value]);
  });
  const body = Buffer.concat([addr(h.source.addr), addr(h.destination.addr), ports, ...tlvs]);
  const fixed = Buffer.from([0x21, v6 ? 0x21 : 0x11, 0, 0]);
  fixed.writeUInt16BE(body.length, 2);
  return Buffer.concat([PROXY_V2_SIGNATURE, fixed, body]);
}

function parseIPv6(a: string): Buffer {
  const [head = '', tail] = a.split('::', 2);
  const part = (s: string): number[] => (s === '' ? [] : s.split(':').map((g) => parseInt(g, 16)));
  const h = part(head);
  const t = tail === undefined ? [] : part(tail);
  const groups = tail === undefined ? h : [...h, ...Array<number>(8 - h.length - t.length).fill(0), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}
