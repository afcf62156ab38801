/**
 * The PROXY protocol v2 header decoder (protocol/proxy-v2.ts): addresses, LOCAL, TLVs, headers
 * split across chunks, and every way a header can be refused.
 * @see https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BlockList, isIP } from 'node:net';
import { isTrustedPeer } from '../../src/net/proxy-header.js';
import { decodeProxyV2, encodeProxyV2, MAX_PROXY_V2_BYTES, PROXY_V2_SIGNATURE, startsLikeProxyV2, type ProxyV2Decode } from '../../src/protocol/proxy-v2.js';
import { fuzzProxyHeader } from '../support/fuzz-proxy-header.js';

const V4 = encodeProxyV2({ command: 'proxy', source: { addr: '203.0.113.7', port: 51234 }, destination: { addr: '10.0.0.1', port: 6432 } });
const STARTUP = Buffer.from('0000000800030000', 'hex');

/** A raw header: version/command byte, family/transport byte, then `body` with its length. */
function raw(verCmd: number, famProto: number, body: Buffer, declared = body.length): Buffer {
  const fixed = Buffer.from([verCmd, famProto, 0, 0]);
  fixed.writeUInt16BE(declared, 2);
  return Buffer.concat([PROXY_V2_SIGNATURE, fixed, body]);
}

function header(d: ProxyV2Decode): Extract<ProxyV2Decode, { kind: 'header' }>['header'] {
  if (d.kind !== 'header') assert.fail(`not a header: ${JSON.stringify(d)}`);
  return d.header;
}

describe('PROXY v2 decoder: valid headers', () => {
  it('TCP over IPv4: source and destination, 28 bytes', () => {
    const h = header(decodeProxyV2(V4));
    assert.equal(h.command, 'proxy');
    assert.equal(h.bytes, 28);
    if (h.command !== 'proxy') return;
    assert.equal(h.family, 'inet');
    assert.deepEqual(h.source, { addr: '203.0.113.7', port: 51234 });
    assert.deepEqual(h.destination, { addr: '10.0.0.1', port: 6432 });
    assert.deepEqual(h.tlvs, []);
  });

  it('TCP over IPv6, in RFC 5952 text; IPv4-mapped as Node writes it', () => {
    const h = header(decodeProxyV2(encodeProxyV2({ command: 'proxy', source: { addr: '2001:db8::0:1', port: 1 }, destination: { addr: 'fd00:0:0:1::', port: 2 } })));
    assert.equal(h.bytes, 16 + 36);
    if (h.command !== 'proxy') return;
    assert.equal(h.family, 'inet6');
    assert.deepEqual(h.source, { addr: '2001:db8::1', port: 1 });
    assert.deepEqual(h.destination, { addr: 'fd00:0:0:1::', port: 2 });
    const mapped = Buffer.alloc(36);
    mapped.writeUInt16BE(0xffff, 10);
    Buffer.from([192, 0, 2, 9]).copy(mapped, 12);
    const m = header(decodeProxyV2(raw(0x21, 0x21, mapped)));
    if (m.command === 'proxy') assert.equal(m.source.addr, '::ffff:192.0.2.9');
    const all = header(decodeProxyV2(raw(0x21, 0x21, Buffer.alloc(36))));
    if (all.command === 'proxy') assert.equal(all.source.addr, '::');
  });

  it('LOCAL (health checks): accepted whatever its family, addresses ignored', () => {
    assert.deepEqual(header(decodeProxyV2(encodeProxyV2({ command: 'local' }))), { command: 'local', bytes: 16 });
    assert.deepEqual(header(decodeProxyV2(raw(0x20, 0x00, Buffer.alloc(0)))), { command: 'local', bytes: 16 });
    // LOCAL with an address block (some balancers send one) or a unix family: still LOCAL.
    assert.deepEqual(header(decodeProxyV2(raw(0x20, 0x11, Buffer.alloc(12)))), { command: 'local', bytes: 28 });
    assert.deepEqual(header(decodeProxyV2(raw(0x20, 0x31, Buffer.alloc(216)))), { command: 'local', bytes: 232 });
  });

  it('TLVs after the addresses are returned (copied), and count in the header length', () => {
    const tlvs = [
      { type: 0x01, value: Buffer.from('postgresql') }, // PP2_TYPE_ALPN
      { type: 0x02, value: Buffer.from('acme.pg.test') }, // PP2_TYPE_AUTHORITY
      { type: 0x04, value: Buffer.alloc(0) }, // PP2_TYPE_NOOP
    ];
    const bytes = encodeProxyV2({ command: 'proxy', source: { addr: '198.51.100.1', port: 9 }, destination: { addr: '10.0.0.1', port: 6432 }, tlvs });
    const h = header(decodeProxyV2(bytes));
    assert.equal(h.bytes, bytes.length);
    if (h.command !== 'proxy') return;
    assert.deepEqual(
      h.tlvs.map((t) => [t.type, t.value.toString()]),
      [
        [1, 'postgresql'],
        [2, 'acme.pg.test'],
        [4, ''],
      ],
    );
    bytes.fill(0, 28);
    assert.equal(h.tlvs[0]!.value.toString(), 'postgresql', 'a copy, not a view of the chunk');
  });

  it('bytes after the header are not part of it (the startup packet in the same segment)', () => {
    const h = header(decodeProxyV2(Buffer.concat([V4, STARTUP])));
    assert.equal(h.bytes, V4.length);
  });
});

describe('PROXY v2 decoder: split and truncated', () => {
  it('is incomplete at every prefix of a valid header, and decodes the same at the end', () => {
    for (const whole of [V4, encodeProxyV2({ command: 'local' })]) {
      for (let n = 0; n < whole.length; n++) assert.deepEqual(decodeProxyV2(whole.subarray(0, n)), { kind: 'incomplete' }, `prefix ${n}`);
      assert.equal(decodeProxyV2(whole).kind, 'header');
    }
  });

  it('a header whose declared length is longer than what arrived stays incomplete', () => {
    assert.deepEqual(decodeProxyV2(raw(0x21, 0x11, Buffer.alloc(12), 40)), { kind: 'incomplete' });
  });

  it('the fuzz target: random and mutated headers, split anywhere, never throw and agree with the whole', () => {
    const r = fuzzProxyHeader(7, 2000);
    assert.deepEqual(r.violations, []);
    assert.ok(r.outcomes['header'] !== undefined && r.outcomes['invalid'] !== undefined, JSON.stringify(r.outcomes));
  });
});

describe('PROXY v2 decoder: refused', () => {
  it('a wrong signature byte, as soon as it arrives', () => {
    assert.deepEqual(decodeProxyV2(STARTUP), { kind: 'invalid', problem: 'bad_signature' });
    assert.deepEqual(decodeProxyV2(Buffer.from('\r\n\r\n\0\r\nQUIX')), { kind: 'invalid', problem: 'bad_signature' });
    assert.deepEqual(decodeProxyV2(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n')), { kind: 'invalid', problem: 'bad_signature' }); // v1 text
    assert.equal(startsLikeProxyV2(Buffer.from([0x0d, 0x0a])), true);
    assert.equal(startsLikeProxyV2(Buffer.from([0x16])), false);
  });

  it('a version other than 2, as soon as byte 13 arrives', () => {
    assert.deepEqual(decodeProxyV2(Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x11])])), { kind: 'invalid', problem: 'bad_version' });
    assert.deepEqual(decodeProxyV2(raw(0x31, 0x11, Buffer.alloc(12))), { kind: 'invalid', problem: 'bad_version' });
  });

  it('a command other than LOCAL or PROXY', () => {
    assert.deepEqual(decodeProxyV2(raw(0x22, 0x11, Buffer.alloc(12))), { kind: 'invalid', problem: 'bad_command' });
  });

  it('a declared length over the cap, before the body arrives', () => {
    const head = raw(0x21, 0x11, Buffer.alloc(0), 0xffff);
    assert.deepEqual(decodeProxyV2(head), { kind: 'invalid', problem: 'oversized' });
    assert.deepEqual(decodeProxyV2(raw(0x21, 0x11, Buffer.alloc(0), MAX_PROXY_V2_BYTES - 15)), { kind: 'invalid', problem: 'oversized' });
    assert.deepEqual(decodeProxyV2(raw(0x21, 0x11, Buffer.alloc(0), MAX_PROXY_V2_BYTES - 16)), { kind: 'incomplete' });
    assert.deepEqual(decodeProxyV2(raw(0x21, 0x11, Buffer.alloc(0), 100), 64), { kind: 'invalid', problem: 'oversized' });
  });

  it('PROXY with UNSPEC, AF_UNIX, UDP (DGRAM) or an unknown family: no address we can use', () => {
    assert.deepEqual(decodeProxyV2(raw(0x21, 0x00, Buffer.alloc(0))), { kind: 'invalid', problem: 'unsupported_family' });
    assert.deepEqual(decodeProxyV2(raw(0x21, 0x31, Buffer.alloc(216))), { kind: 'invalid', problem: 'unsupported_family' });
    assert.deepEqual(decodeProxyV2(raw(0x21, 0x12, Buffer.alloc(12))), { kind: 'invalid', problem: 'unsupported_family' });
    assert.deepEqual(decodeProxyV2(raw(0x21, 0x22, Buffer.alloc(36))), { kind: 'invalid', problem: 'unsupported_family' });
    assert.deepEqual(decodeProxyV2(raw(0x21, 0x10, Buffer.alloc(12))), { kind: 'invalid', problem: 'unsupported_family' });
    assert.deepEqual(decodeProxyV2(raw(0x21, 0x41, Buffer.alloc(12))), { kind: 'invalid', problem: 'unsupported_family' });
  });

  it('an address block shorter than its family needs', () => {
    assert.deepEqual(decodeProxyV2(raw(0x21, 0x11, Buffer.alloc(11))), { kind: 'invalid', problem: 'bad_address_length' });
    assert.deepEqual(decodeProxyV2(raw(0x21, 0x21, Buffer.alloc(12))), { kind: 'invalid', problem: 'bad_address_length' });
  });

  it('TLVs that do not tile the rest of the header', () => {
    assert.deepEqual(decodeProxyV2(raw(0x21, 0x11, Buffer.concat([Buffer.alloc(12), Buffer.from([0x01, 0x00])]))), { kind: 'invalid', problem: 'bad_tlv' });
    assert.deepEqual(decodeProxyV2(raw(0x21, 0x11, Buffer.concat([Buffer.alloc(12), Buffer.from([0x01, 0x00, 0x05, 0x61])]))), { kind: 'invalid', problem: 'bad_tlv' });
  });

  it('decoded addresses are always valid IP text', () => {
    for (let i = 0; i < 200; i++) {
      const body = Buffer.alloc(36);
      for (let j = 0; j < 36; j++) body[j] = (i * 31 + j * 17) & (j % 3 === 0 ? 0 : 0xff);
      const h = header(decodeProxyV2(raw(0x21, 0x21, body)));
      if (h.command === 'proxy') assert.equal(isIP(h.source.addr), 6, h.source.addr);
    }
  });
});

describe('trusted balancers (net/proxy-header.ts isTrustedPeer)', () => {
  const trusted = new BlockList();
  trusted.addSubnet('10.0.5.0', 28, 'ipv4');
  trusted.addAddress('fd00::7', 'ipv6');

  it('matches IPv4 peers, also as Node writes them on a dual-stack listener (::ffff:a.b.c.d)', () => {
    assert.equal(isTrustedPeer(trusted, '10.0.5.3'), true);
    assert.equal(isTrustedPeer(trusted, '::ffff:10.0.5.3'), true);
    assert.equal(isTrustedPeer(trusted, '10.0.5.16'), false);
    assert.equal(isTrustedPeer(trusted, '::ffff:10.0.5.16'), false);
  });

  it('matches IPv6 peers; an unknown peer address (a closed socket) is never trusted', () => {
    assert.equal(isTrustedPeer(trusted, 'fd00::7'), true);
    assert.equal(isTrustedPeer(trusted, 'fd00::8'), false);
    assert.equal(isTrustedPeer(trusted, ''), false);
  });
});
