// ESLint flat config: typescript-eslint strict type-checked rules over src/, test/, bench/ and scripts/ (STYLE.md §8).
// Formatting is Prettier's job (`npm run format`); none of the rules enabled here is a formatting rule, so
// eslint-config-prettier is not needed.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', '.demo/', 'bench/results/', 'certs/', 'audit/'] },
  {
    files: ['**/*.ts'],
    // eslint:recommended catches plain-JS mistakes (the code already carries no-control-regex directives for it);
    // strictTypeChecked is the full type-aware set, tuned below.
    extends: [js.configs.recommended, tseslint.configs.strictTypeChecked],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // node:test's describe()/it() return promises the runner itself awaits; every other promise must be handled.
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['describe', 'it', 'test', 'suite'] }] },
      ],
      '@typescript-eslint/switch-exhaustiveness-check': 'error',
      // `const { a: _a, ...rest } = x` drops fields on purpose (audit envelope); tsc's noUnusedLocals covers the rest.
      '@typescript-eslint/no-unused-vars': ['error', { ignoreRestSiblings: true }],
      // Numbers in messages (lengths, ports, limits, SQLSTATE type bytes) are intended; anything else must be made a string.
      '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true }],
      // `() => resolve()` and `return this.reject(...)` as an early exit from a void method are the codebase's idioms.
      '@typescript-eslint/no-confusing-void-expression': ['error', { ignoreArrowShorthand: true, ignoreVoidReturningFunctions: true }],
      // `while (true)` read loops are deliberate.
      '@typescript-eslint/no-unnecessary-condition': ['error', { allowConstantLoopConditions: 'only-allowed-literals' }],
      // Off: noUncheckedIndexedAccess makes `buf[i]!` after a bounds check the hot-path idiom (STYLE §2), and session
      // fields set by an earlier phase are read with `!`; runtime checks there would add a branch per frame.
      '@typescript-eslint/no-non-null-assertion': 'off',
    },
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // Off in tests: after() hooks use `fixture?.close()` because before() may have failed before assigning it,
      // and assertions probe values with `?.` that the types (wrongly, if the code under test is broken) call defined.
      '@typescript-eslint/no-unnecessary-condition': 'off',
    },
  },
  {
    files: ['**/*.js'],
    extends: [js.configs.recommended, tseslint.configs.disableTypeChecked],
  },
);
