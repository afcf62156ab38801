/**
 * FrameScanner (relay) and FrameReader (pre-auth) against exact bytes: every split of a stream
 * must give the same frames as the unsplit stream, and bad lengths and types must be refused
 * at the frame's first byte, before anything is buffered by a declared length (SECURITY.md rule 5).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FrameLengthError, FrameReader, FrameScanner, FrameTypeError, type ScanHandler } from '../../src/protocol/frame-reader.js';

const LARGE_CAP = 64 * 1024;
const SMALL_CAP = 10_000;

/** Types valid in these tests and their caps (including the length word). */
const CAPS: ReadonlyMap<number, number> = new Map([
  [0x51 /* Q */, LARGE_CAP],
  [0x64 /* d */, LARGE_CAP],
  [0x53 /* S */, SMALL_CAP],
  [0x58 /* X */, SMALL_CAP],
  [0x48 /* H */, SMALL_CAP],
  [0x45 /* E */, SMALL_CAP],
  [0x5a /* Z */, SMALL_CAP],
]);
const capOf = (type: number): number => CAPS.get(type) ?? -1;

function frame(type: string, body: Buffer | string): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  const out = Buffer.alloc(5 + b.length);
  out[0] = type.charCodeAt(0);
  out.writeUInt32BE(4 + b.length, 1);
  b.copy(out, 5);
  return out;
}

/** A header with any declared length (no body follows). */
function header(type: number, declared: number): Buffer {
  const out = Buffer.alloc(5);
  out[0] = type;
  out.writeUInt32BE(declared >>> 0, 1);
  return out;
}

/** Deterministic pseudo-random bytes, so a failure reproduces. */
function patterned(n: number, seed: number): Buffer {
  const out = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const FRAMES: readonly Buffer[] = [
  frame('Q', 'SELECT 1\0'),
  frame('S', ''), // empty body
  frame('d', patterned(20_000, 7)), // large, spans many chunks when split
  frame('H', ''),
  frame('Z', 'I'),
  frame('E', 'SERROR\0C08P01\0Mx\0\0'),
  frame('d', patterned(3, 9)),
  frame('X', ''),
];
const STREAM = Buffer.concat(FRAMES);
/** Offsets at which a frame starts or the stream ends. */
const BOUNDARIES: ReadonlySet<number> = (() => {
  const s = new Set<number>([0]);
  let pos = 0;
  for (const f of FRAMES) {
    pos += f.length;
    s.add(pos);
  }
  return s;
})();

interface Seen {
  type: number;
  length: number;
  body: Buffer | null;
}

/** Records every frame; copies bodies because a view pins (and may alias) the caller's chunk. */
class Recorder implements ScanHandler {
  readonly seen: Seen[] = [];
  constructor(private readonly want: (type: number) => boolean = () => true) {}
  maxFrameLength(type: number): number {
    return capOf(type);
  }
  wantsBody(type: number): boolean {
    return this.want(type);
  }
  onFrame(type: number, length: number, body: Buffer | null): void {
    this.seen.push({ type, length, body: body === null ? null : Buffer.from(body) });
  }
}

const EXPECTED: readonly Seen[] = FRAMES.map((f) => ({ type: f[0]!, length: f.readUInt32BE(1), body: f.subarray(5) }));

function assertSeen(actual: readonly Seen[], expected: readonly Seen[], label: string): void {
  assert.equal(actual.length, expected.length, `${label}: frame count`);
  for (let k = 0; k < expected.length; k++) {
    const a = actual[k]!;
    const e = expected[k]!;
    assert.equal(a.type, e.type, `${label}: type of frame ${k}`);
    assert.equal(a.length, e.length, `${label}: length of frame ${k}`);
    if (e.body === null) assert.equal(a.body, null, `${label}: body of frame ${k}`);
    else assert.ok(a.body !== null && a.body.equals(e.body), `${label}: body of frame ${k}`);
  }
}

describe('FrameScanner', () => {
  it('reports the unsplit stream frame by frame with bodies', () => {
    const rec = new Recorder();
    const scanner = new FrameScanner(rec);
    assert.equal(scanner.scan(STREAM), -1);
    assert.equal(scanner.error, null);
    assert.ok(scanner.atBoundary);
    assertSeen(rec.seen, EXPECTED, 'unsplit');
  });

  it('gives the same frames when the stream is split in two at every offset', () => {
    for (let i = 0; i <= STREAM.length; i++) {
      const rec = new Recorder();
      const scanner = new FrameScanner(rec);
      assert.equal(scanner.scan(STREAM.subarray(0, i)), -1, `split ${i}: first chunk`);
      assert.equal(scanner.atBoundary, BOUNDARIES.has(i), `split ${i}: atBoundary after first chunk`);
      assert.equal(scanner.scan(STREAM.subarray(i)), -1, `split ${i}: second chunk`);
      assert.ok(scanner.atBoundary, `split ${i}: atBoundary at the end`);
      assert.equal(scanner.error, null);
      assertSeen(rec.seen, EXPECTED, `split ${i}`);
    }
  });

  it('gives the same frames fed byte by byte, and is at a boundary only between frames', () => {
    const rec = new Recorder();
    const scanner = new FrameScanner(rec);
    for (let i = 0; i < STREAM.length; i++) {
      assert.equal(scanner.scan(STREAM.subarray(i, i + 1)), -1, `byte ${i}`);
      assert.equal(scanner.atBoundary, BOUNDARIES.has(i + 1), `atBoundary after byte ${i}`);
    }
    assertSeen(rec.seen, EXPECTED, 'byte by byte');
  });

  it('gives the same frames for random multi-way splits (seeded)', () => {
    const cuts = patterned(4000, 42);
    for (let run = 0; run < 200; run++) {
      const rec = new Recorder();
      const scanner = new FrameScanner(rec);
      let pos = 0;
      let k = run * 20;
      while (pos < STREAM.length) {
        const step = 1 + ((cuts[k++ % cuts.length]! * 37) % 3000);
        assert.equal(scanner.scan(STREAM.subarray(pos, pos + step)), -1);
        pos += step;
      }
      assertSeen(rec.seen, EXPECTED, `run ${run}`);
    }
  });

  it('captures bodies that span chunks into their own memory, not the reused chunk', () => {
    // The caller reuses one buffer for every read: a captured body must not alias it.
    const big = FRAMES[2]!;
    const bodies: Buffer[] = [];
    const scanner = new FrameScanner({
      maxFrameLength: capOf,
      wantsBody: () => true,
      onFrame: (_t, _l, body) => {
        if (body !== null) bodies.push(body);
      },
    });
    const reused = Buffer.alloc(1000);
    for (let pos = 0; pos < big.length; pos += reused.length) {
      const n = big.copy(reused, 0, pos, Math.min(pos + reused.length, big.length));
      assert.equal(scanner.scan(reused.subarray(0, n)), -1);
      reused.fill(0xee);
    }
    assert.equal(bodies.length, 1);
    assert.ok(bodies[0]!.equals(big.subarray(5)));
  });

  it('reports frames without capture when the handler does not want the body', () => {
    const wantOnlyZ = (t: number): boolean => t === 0x5a;
    const expected = EXPECTED.map((e) => ({ ...e, body: wantOnlyZ(e.type) ? e.body : null }));
    for (let i = 0; i <= STREAM.length; i += 97) {
      const rec = new Recorder(wantOnlyZ);
      const scanner = new FrameScanner(rec);
      scanner.scan(STREAM.subarray(0, i));
      scanner.scan(STREAM.subarray(i));
      assertSeen(rec.seen, expected, `split ${i}`);
      assert.ok(scanner.atBoundary);
    }
  });

  describe('rejects bad lengths at the frame start', () => {
    const prefix = Buffer.concat([FRAMES[0]!, FRAMES[1]!]);
    const cases: ReadonlyArray<[string, number, number]> = [
      ['0', 0x51, 0],
      ['3 (< 4)', 0x51, 3],
      ['2^31', 0x51, 2 ** 31],
      ['2^32 - 1', 0x51, 0xffffffff],
      ['small cap + 1', 0x53, SMALL_CAP + 1],
      ['large cap + 1', 0x64, LARGE_CAP + 1],
    ];
    for (const [label, type, declared] of cases) {
      it(`length ${label}`, () => {
        // Whole header in one chunk, after two good frames.
        const bad = Buffer.concat([prefix, header(type, declared), Buffer.from('trailing')]);
        const rec = new Recorder();
        const scanner = new FrameScanner(rec);
        assert.equal(scanner.scan(bad), prefix.length);
        assert.ok(scanner.error instanceof FrameLengthError);
        assert.equal(scanner.error.declared, declared);
        assert.equal(scanner.error.type, type);
        assert.equal(rec.seen.length, 2, 'only the frames before the bad one are reported');
        assert.equal(scanner.atBoundary, false, 'a broken stream has no boundary');

        // The same stream split at every offset: the bad frame is reported at its start in the chunk
        // that completes its header, or at 0 when it began in an earlier chunk.
        for (let i = 0; i <= bad.length; i++) {
          const r = new Recorder();
          const s = new FrameScanner(r);
          const first = s.scan(bad.subarray(0, i));
          let at: number;
          if (i >= prefix.length + 5) {
            at = first;
            assert.equal(at, prefix.length, `split ${i}`);
          } else {
            assert.equal(first, -1, `split ${i}: first chunk holds no complete bad header`);
            at = s.scan(bad.subarray(i));
            assert.equal(at, Math.max(prefix.length - i, 0), `split ${i}`);
          }
          assert.ok(s.error instanceof FrameLengthError, `split ${i}`);
          assert.equal(s.error.declared, declared, `split ${i}`);
          assert.equal(r.seen.length, 2, `split ${i}`);
        }
      });
    }
  });

  it('rejects an invalid type from its first byte, before the length is available', () => {
    const rec = new Recorder();
    const scanner = new FrameScanner(rec);
    const good = FRAMES[0]!;
    // One good frame plus a single byte of an invalid type (0x01): nothing more is needed.
    assert.equal(scanner.scan(Buffer.concat([good, Buffer.from([0x01])])), good.length);
    assert.ok(scanner.error instanceof FrameTypeError);
    assert.equal(scanner.error.type, 0x01);
    assert.equal(rec.seen.length, 1);

    // The invalid byte alone, as its own chunk after a boundary.
    const s2 = new FrameScanner(new Recorder());
    assert.equal(s2.scan(good), -1);
    assert.equal(s2.scan(Buffer.from([0x70 /* p: not valid on the relay */])), 0);
    assert.ok(s2.error instanceof FrameTypeError);
    assert.equal(s2.error.type, 0x70);
  });
});

function startupMessage(params: Record<string, string>): Buffer {
  const parts: Buffer[] = [Buffer.alloc(8)];
  for (const [k, v] of Object.entries(params)) parts.push(Buffer.from(`${k}\0${v}\0`, 'utf8'));
  parts.push(Buffer.from([0]));
  const out = Buffer.concat(parts);
  out.writeUInt32BE(out.length, 0);
  out.writeUInt32BE(196608, 4);
  return out;
}

function untypedHeader(declared: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(declared >>> 0, 0);
  b.writeUInt32BE(196608, 4);
  return b;
}

describe('FrameReader', () => {
  const startup = startupMessage({ user: 'alice', database: 'app', options: '-c pgwarden.tenant=acme' });
  const typedCap = (t: number): number => capOf(t);

  it('reads an untyped startup frame split at every offset', () => {
    for (let i = 0; i <= startup.length; i++) {
      const reader = new FrameReader();
      reader.push(startup.subarray(0, i));
      const early = reader.nextUntyped(10_000);
      if (i < startup.length) assert.equal(early, null, `split ${i}: incomplete`);
      else assert.ok(early !== null);
      reader.push(startup.subarray(i));
      const f = early ?? reader.nextUntyped(10_000);
      assert.ok(f !== null, `split ${i}`);
      assert.equal(f.type, -1);
      assert.ok(f.body.equals(startup.subarray(4)), `split ${i}: body`);
      assert.equal(reader.buffered, 0);
      assert.equal(reader.nextUntyped(10_000), null);
    }
  });

  it('reads a startup frame fed byte by byte, then the typed frame after it', () => {
    const stream = Buffer.concat([startup, FRAMES[0]!]);
    const reader = new FrameReader();
    let startupFrame = null;
    for (let i = 0; i < startup.length; i++) {
      reader.push(stream.subarray(i, i + 1));
      startupFrame = reader.nextUntyped(10_000);
      if (i < startup.length - 1) assert.equal(startupFrame, null, `byte ${i}`);
    }
    assert.ok(startupFrame !== null);
    reader.push(stream.subarray(startup.length));
    const q = reader.nextTyped(typedCap);
    assert.ok(q !== null);
    assert.equal(q.type, 0x51);
    assert.ok(q.body.equals(FRAMES[0]!.subarray(5)));
  });

  // The cap counts the body only, as PostgreSQL's MAX_STARTUP_PACKET_LENGTH: 10,005 is the first length over it.
  for (const declared of [0, 4, 7, 10_005, 2 ** 31, 0xffffffff]) {
    it(`rejects an untyped length of ${declared} as soon as the length word is in`, () => {
      const reader = new FrameReader();
      reader.push(untypedHeader(declared).subarray(0, 4));
      assert.throws(
        () => reader.nextUntyped(10_000),
        (err: unknown) => err instanceof FrameLengthError && err.declared === declared && err.type === -1,
      );
    });
  }

  it('accepts untyped lengths 8 and exactly the max (a 10,000-byte body: length 10,004)', () => {
    const r1 = new FrameReader();
    r1.push(untypedHeader(8));
    const f = r1.nextUntyped(10_000);
    assert.ok(f !== null);
    assert.equal(f.body.length, 4);
    const r2 = new FrameReader();
    r2.push(untypedHeader(10_004).subarray(0, 4));
    assert.equal(r2.nextUntyped(10_000), null, 'in range but incomplete: wait');
    const whole = Buffer.alloc(10_004);
    whole.writeUInt32BE(10_004, 0);
    r2.push(whole.subarray(4));
    assert.equal(r2.nextUntyped(10_000)?.body.length, 10_000);
  });

  it('reads typed frames split at every offset, in order', () => {
    for (let i = 0; i <= STREAM.length; i += 13) {
      const reader = new FrameReader();
      const seen: Seen[] = [];
      for (const chunk of [STREAM.subarray(0, i), STREAM.subarray(i)]) {
        reader.push(chunk);
        for (let f = reader.nextTyped(typedCap); f !== null; f = reader.nextTyped(typedCap)) {
          seen.push({ type: f.type, length: f.body.length + 4, body: Buffer.from(f.body) });
        }
      }
      assertSeen(seen, EXPECTED, `split ${i}`);
      assert.equal(reader.buffered, 0);
    }
  });

  it('checks the typed frame type before the length (1 byte fed)', () => {
    const reader = new FrameReader();
    reader.push(Buffer.from([0x01]));
    assert.throws(() => reader.nextTyped(typedCap), (err: unknown) => err instanceof FrameTypeError && err.type === 0x01);
  });

  for (const declared of [0, 3, 2 ** 31, SMALL_CAP + 1]) {
    it(`rejects a typed length of ${declared} from the header alone`, () => {
      const reader = new FrameReader();
      reader.push(header(0x53, declared));
      assert.throws(
        () => reader.nextTyped(typedCap),
        (err: unknown) => err instanceof FrameLengthError && err.declared === declared && err.type === 0x53,
      );
    });
  }

  it('drain() returns exactly the unconsumed bytes and empties the reader', () => {
    const reader = new FrameReader();
    const tail = FRAMES[2]!.subarray(0, 100);
    reader.push(Buffer.concat([FRAMES[0]!, FRAMES[1]!]));
    reader.push(tail);
    assert.ok(reader.nextTyped(typedCap) !== null);
    assert.ok(reader.nextTyped(typedCap) !== null);
    assert.equal(reader.nextTyped(typedCap), null);
    const rest = reader.drain();
    assert.ok(rest.equals(tail));
    assert.equal(reader.buffered, 0);
    assert.equal(reader.nextTyped(typedCap), null);
    assert.equal(reader.drain().length, 0);
  });
});
