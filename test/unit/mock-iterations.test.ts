/** typicalIterations: the iteration count a mock SCRAM verifier shows, so unknown users do not stand out (rule 3). */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_ITERATIONS, mockVerifier, typicalIterations, type ScramVerifier } from '../../src/auth/scram.js';

const withIterations = (iterations: number): ScramVerifier => ({ ...mockVerifier(Buffer.alloc(32), 't', 'u'), iterations });

describe('typicalIterations', () => {
  it("is PostgreSQL's default without verifiers", () => {
    assert.equal(typicalIterations([]), DEFAULT_ITERATIONS);
  });
  it("is the tenant's count when every user shares it", () => {
    assert.equal(typicalIterations([withIterations(10_000), withIterations(10_000)]), 10_000);
  });
  it('is the most common count, ties going to the larger', () => {
    assert.equal(typicalIterations([4096, 10_000, 10_000, 4096, 50_000].map(withIterations)), 10_000);
    assert.equal(typicalIterations([4096, 8192].map(withIterations)), 8192);
  });
});
