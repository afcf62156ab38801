// Import rules checked by `npm run lint` (dependency-cruiser): no cycles, counting type-only imports too
// (tsPreCompilationDeps), since a cycle of types still means two modules own one concern between them
// (issue 12; ESLint's import plugins cannot do this: their no-cycle skips `import type`); and the leaves
// of STYLE.md §1 stay leaves.
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'no-import-cycle',
      severity: 'error',
      comment: 'Break the cycle: move what both sides need into a third module, or inject it.',
      from: {},
      to: { circular: true },
    },
    {
      name: 'leaf-imports-nothing-of-ours',
      severity: 'error',
      comment: 'config/ and protocol/ import nothing from the rest of src/ (STYLE.md §1): move what they need in, or invert the dependency.',
      from: { path: '^src/(config|protocol)/' },
      to: { path: '^src/', pathNot: '^src/$1/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
};
