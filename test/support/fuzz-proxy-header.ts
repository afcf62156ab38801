/**
 * The PROXY v2 header's fuzz target (scripts/fuzz.ts, and a short run in the unit tests): valid
 * headers of every kind, mutated (a byte flipped, a length changed, cut short, garbage appended)
 * and fed whole and split at random points. The decoder must never throw, must agree with itself
 * whatever the split, never claim more bytes than it was given or than its cap, and only yield
 * addresses that are valid IP text. In-process and bounded by `cases`.
 */
import { isIP } from 'node:net';
import { decodeProxyV2, encodeProxyV2, MAX_PROXY_V2_BYTES, PROXY_V2_SIGNATURE, type ProxyV2Decode } from '../../src/protocol/proxy-v2.js';
import { Rng } from './fuzz.js';

export interface ProxyHeaderFuzzResult {
  readonly cases: number;
  readonly outcomes: Record<string, number>;
  readonly violations: string[];
}

function ipv4(rng: Rng): string {
  return [0, 1, 2, 3].map(() => rng.int(256)).join('.');
}

function ipv6(rng: Rng): string {
  return Array.from({ length: 8 }, () => (rng.int(3) === 0 ? 0 : rng.int(65536)).toString(16)).join(':');
}

/** A valid header (PROXY v4/v6 with TLVs, LOCAL, or a raw family/transport byte) and maybe the startup packet behind it. */
function validCase(rng: Rng): Buffer {
  const k = rng.int(4);
  let h: Buffer;
  if (k === 0) h = encodeProxyV2({ command: 'local' });
  else {
    const v6 = k === 2;
    const ep = (): { addr: string; port: number } => ({ addr: v6 ? ipv6(rng) : ipv4(rng), port: rng.int(65536) });
    const tlvs = Array.from({ length: rng.int(4) }, () => ({ type: rng.int(256), value: rng.bytes(rng.int(k === 3 ? 600 : 40)) }));
    h = encodeProxyV2({ command: 'proxy', source: ep(), destination: ep(), tlvs });
  }
  return rng.int(2) === 0 ? h : Buffer.concat([h, Buffer.from('0000000800030000', 'hex')]);
}

function mutate(rng: Rng, b: Buffer): Buffer {
  const out = Buffer.from(b);
  switch (rng.int(6)) {
    case 0:
      if (out.length > 0) out[rng.int(out.length)] = rng.int(256);
      return out;
    case 1:
      out.writeUInt16BE(rng.int(65536), 14); // the declared length
      return out;
    case 2:
      out[13] = rng.int(256); // family and transport
      return out;
    case 3:
      return out.subarray(0, rng.int(out.length));
    case 4:
      return Buffer.concat([PROXY_V2_SIGNATURE, rng.bytes(rng.int(64))]);
    default:
      return Buffer.concat([out, rng.bytes(rng.int(32))]);
  }
}

/** Feeds the bytes as a reader would: growing prefixes at random cut points, until decided. */
function decodeSplit(rng: Rng, b: Buffer): ProxyV2Decode {
  let upTo = 0;
  for (;;) {
    upTo = Math.min(b.length, upTo + 1 + rng.int(24));
    const d = decodeProxyV2(b.subarray(0, upTo));
    if (d.kind !== 'incomplete' || upTo === b.length) return d;
  }
}

export function fuzzProxyHeader(seed: number, cases: number): ProxyHeaderFuzzResult {
  const rng = new Rng(seed);
  const outcomes: Record<string, number> = {};
  const violations: string[] = [];
  for (let i = 0; i < cases; i++) {
    const valid = validCase(rng);
    const bytes = rng.int(3) === 0 ? valid : mutate(rng, valid);
    let whole: ProxyV2Decode;
    let split: ProxyV2Decode;
    try {
      whole = decodeProxyV2(bytes);
      split = decodeSplit(rng, bytes);
    } catch (err) {
      violations.push(`case ${i}: threw ${(err as Error).message} on ${bytes.toString('hex')}`);
      continue;
    }
    const key = whole.kind === 'invalid' ? `invalid:${whole.problem}` : whole.kind === 'header' ? `header:${whole.header.command}` : 'incomplete';
    outcomes[whole.kind] = (outcomes[whole.kind] ?? 0) + 1;
    outcomes[key] = (outcomes[key] ?? 0) + 1;
    if (JSON.stringify(whole) !== JSON.stringify(split)) violations.push(`case ${i}: split decode differs from whole on ${bytes.toString('hex')}`);
    if (bytes === valid && whole.kind !== 'header') violations.push(`case ${i}: a valid header was not decoded (${key})`);
    if (whole.kind === 'header') {
      const h = whole.header;
      if (h.bytes > bytes.length || h.bytes > MAX_PROXY_V2_BYTES) violations.push(`case ${i}: header claims ${h.bytes} bytes of ${bytes.length}`);
      if (h.command === 'proxy' && (isIP(h.source.addr) === 0 || isIP(h.destination.addr) === 0)) violations.push(`case ${i}: not an IP: ${h.source.addr}`);
    }
  }
  return { cases, outcomes, violations };
}
