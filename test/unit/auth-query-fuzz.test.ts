/**
 * A short, fixed-seed run of the auth_query hostile-server fuzzer (test/support/auth-query-fuzz.ts):
 * every reply kind several times; `npm run fuzz -- --target auth-query` runs it for longer.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { AUTH_FUZZ_KINDS, runAuthQueryFuzz, type AuthFuzzSummary } from '../support/auth-query-fuzz.js';

describe('auth_query lookups against a hostile tenant server', () => {
  it('end every reply as a refusal, a valid verifier only for a valid reply, or 08006, in time, without a crash', async () => {
    const summary: AuthFuzzSummary = { cases: 0, byOutcome: {}, violations: [] };
    await runAuthQueryFuzz(42, 0, AUTH_FUZZ_KINDS.length * 4, summary);
    assert.deepEqual(summary.violations, []);
    assert.equal(summary.cases, AUTH_FUZZ_KINDS.length * 4);
    assert.equal(summary.byOutcome['valid:ok'], 4, JSON.stringify(summary.byOutcome));
    assert.equal(summary.byOutcome['no_rows:unknown_user'], 4);
  });
});
