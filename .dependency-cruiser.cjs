// Import rules checked by `npm run lint` (dependency-cruiser). One rule: no cycles, counting type-only
// imports too (tsPreCompilationDeps), since a cycle of types still means two modules own one concern
// between them (issue 12). ESLint's import plugins cannot do this: their no-cycle skips `import type`.
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
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
};
