/** The soak's rule (bench/lib/soak.ts): a slope that is right, and a verdict that catches growth. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { judge, slope, type SoakSample } from '../../bench/lib/soak.js';

const sample = (t: number, rssMb: number, fds: number): SoakSample => ({ t, rssMb, fds, loopP99Ms: 1, auditQueue: 0, sessions: 4, tps: 100 });

describe('soak verdict', () => {
  it('computes the least-squares slope', () => {
    assert.equal(slope([0, 1, 2, 3], [5, 7, 9, 11]), 2);
    assert.equal(slope([0, 1, 2], [3, 3, 3]), 0);
    assert.equal(slope([1], [1]), 0);
    assert.ok(Math.abs(slope([0, 1, 2, 3], [0, 1.1, 1.9, 3]) - 0.98) < 1e-9);
  });

  it('calls a run that warms up and then stays level flat', () => {
    const samples = Array.from({ length: 120 }, (_, i) => sample(i * 5, i < 10 ? 90 + i * 3 : 120 + (i % 3), i < 5 ? 24 + i : 30 + (i % 2)));
    const v = judge(samples);
    assert.deepEqual(v.reasons, []);
    assert.equal(v.flat, true);
    assert.equal(v.rssFirst, 90);
    assert.equal(v.fdsLast, 31);
  });

  it('catches memory that keeps growing, and descriptors that leak', () => {
    const growing = Array.from({ length: 120 }, (_, i) => sample(i * 5, 100 + i * 0.5, 30)); // 6 MB/min
    const v = judge(growing);
    assert.equal(v.flat, false);
    assert.ok(v.rssSlope > 5.9 && v.rssSlope < 6.1, String(v.rssSlope));
    const leaking = Array.from({ length: 120 }, (_, i) => sample(i * 5, 100, 30 + Math.floor(i / 4))); // 3 fds/min
    const w = judge(leaking);
    assert.equal(w.flat, false);
    assert.ok(w.reasons.some((r) => r.startsWith('fds grow')), w.reasons.join('; '));
  });

  it('refuses to judge a run with too few samples', () => {
    assert.throws(() => judge([sample(0, 1, 1)]), /too few samples/);
  });
});

describe('Mann-Whitney U (enum-timing)', () => {
  it('finds no difference between samples from one distribution, and a clear one between shifted ones', async () => {
    const { mannWhitneyP } = await import('../../bench/lib/stats.js');
    const a = Array.from({ length: 200 }, (_, i) => 1000 + ((i * 7919) % 101));
    const b = Array.from({ length: 200 }, (_, i) => 1000 + ((i * 104729) % 101));
    assert.ok(mannWhitneyP(a, b) > 0.5, String(mannWhitneyP(a, b)));
    const shifted = b.map((v) => v + 20);
    assert.ok(mannWhitneyP(a, shifted) < 1e-6, String(mannWhitneyP(a, shifted)));
    // By hand: U = 1 for n1 = n2 = 5 (exact two-sided p = 4/252 = 0.016); with the continuity
    // correction, z = (12.5 - 1 - 0.5) / sqrt(25 * 11 / 12) = 2.298, so p = 0.0216.
    const p = mannWhitneyP([1, 2, 3, 4, 6], [5, 7, 8, 9, 10]);
    assert.ok(Math.abs(p - 0.0216) < 0.0005, String(p));
  });
});
