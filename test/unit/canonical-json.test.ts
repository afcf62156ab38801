/**
 * canonicalJson is the audit chain's RFC 8785 form: it must give exactly the bytes of the
 * reference implementation (the `canonicalize` package), or old logs would stop verifying.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import canonicalize from 'canonicalize';
import { canonicalJson, recordHash, sealRecord, uuidv7 } from '../../src/audit/record.js';

/** A deterministic generator of JSON values shaped like audit records (and odder). */
function* values(seed: number, n: number): Generator {
  let x = seed;
  const rnd = (): number => {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    return x / 0x7fffffff;
  };
  const strings = ['', 'SELECT 1', 'a"b\\c', 'line\nbreak\t', '\u0000\u001f', 'é', '😀', '\uffff', 'Ω≈ç', '\u2028\u2029', 'z', 'A', '_'];
  const nums = [0, -0, 1, -1, 0.1, 1e21, 1e-7, 123456789.125, Number.MAX_SAFE_INTEGER, -2.5e-300, 4294967296];
  const gen = (depth: number): unknown => {
    const r = rnd();
    if (depth > 3 || r < 0.3) return strings[Math.floor(rnd() * strings.length)];
    if (r < 0.45) return nums[Math.floor(rnd() * nums.length)];
    if (r < 0.5) return rnd() < 0.5;
    if (r < 0.55) return null;
    if (r < 0.7) return Array.from({ length: Math.floor(rnd() * 4) }, () => (rnd() < 0.1 ? undefined : gen(depth + 1)));
    const o: Record<string, unknown> = {};
    for (let i = Math.floor(rnd() * 6); i > 0; i--) o[strings[Math.floor(rnd() * strings.length)]! + String(i % 2)] = rnd() < 0.1 ? undefined : gen(depth + 1);
    return o;
  };
  for (let i = 0; i < n; i++) yield gen(0);
}

describe('canonical JSON (RFC 8785)', () => {
  it('matches the reference implementation byte for byte', () => {
    let count = 0;
    for (const v of values(42, 5000)) {
      assert.equal(canonicalJson(v), canonicalize(v), JSON.stringify(v));
      count++;
    }
    assert.equal(count, 5000);
  });

  it('sorts keys by UTF-16 code units, as RFC 8785 says', () => {
    assert.equal(canonicalJson({ '\uffff': 1, '😀': 2, b: 3, a: { d: 1, c: 2 } }), '{"a":{"c":2,"d":1},"b":3,"😀":2,"\uffff":1}');
  });

  it('seals a record in one serialization: the line is the canonical form and carries the hash verify recomputes', () => {
    for (const v of values(7, 500)) {
      const rec = { zeta: v, alpha: [v], event: 'session.query', seq: 3, chain: { prev: 'ab'.repeat(32) } } as { chain: { prev: string | null } } & Record<string, unknown>;
      const { hash, line } = sealRecord(rec);
      assert.ok(line.endsWith('\n'));
      const parsed = JSON.parse(line) as { chain: { prev: string; hash: string } } & Record<string, unknown>;
      assert.equal(parsed.chain.hash, hash);
      assert.equal(recordHash(parsed), hash);
      assert.equal(hash, recordHash({ ...rec, chain: { prev: rec.chain.prev } }));
      assert.equal(line, `${canonicalJson(parsed)}\n`);
    }
    const first = sealRecord({ chain: { prev: null } });
    assert.equal(first.line, `{"chain":{"hash":"${first.hash}","prev":null}}\n`);
  });

  it('refuses what JSON cannot carry faithfully', () => {
    assert.throws(() => canonicalJson({ n: Number.NaN }));
    assert.throws(() => canonicalJson({ n: Infinity }));
    assert.throws(() => canonicalJson({ s: 'lone \ud800 surrogate' }));
    assert.equal(canonicalJson('pair 😀 ok'), '"pair 😀 ok"');
  });

  it('gives unique, time-ordered UUIDv7s from the pooled randomness', () => {
    const ids = Array.from({ length: 2000 }, () => uuidv7());
    assert.equal(new Set(ids).size, ids.length);
    for (const id of ids) assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });
});
