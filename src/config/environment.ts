/**
 * The environment pass: after the file is checked, the variables it names (passwords are never in
 * the file) must be set. Only this pass reads the environment at load time; the values themselves
 * are read where they are used, so a secret is never kept in the Config.
 */
import type { EnvReference } from './toml-reader.js';

/** What validating the file found: the Config (meaningful only without problems) and the variables it names. */
export interface FileValidation<C> {
  readonly config: C;
  readonly problems: readonly string[];
  readonly envReferences: readonly EnvReference[];
}

/**
 * The file's problems with those of the environment added, each where the file names its variable,
 * so a report lists problems in file order whichever pass found them.
 */
export function problemsWithEnvironment(file: FileValidation<unknown>, env: NodeJS.ProcessEnv): string[] {
  const problems: string[] = [];
  let next = 0;
  for (const ref of file.envReferences) {
    if (env[ref.name] !== undefined) continue;
    problems.push(...file.problems.slice(next, ref.at), `${ref.key}: environment variable ${ref.name} is not set`);
    next = ref.at;
  }
  problems.push(...file.problems.slice(next));
  return problems;
}
