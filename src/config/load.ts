/**
 * Reads a TOML config file into a validated Config, in passes: read the file, parse the TOML,
 * check pgwarden's keys (validate.ts), then the environment variables the file names
 * (environment.ts). Paths inside the file are relative to it. A TOML syntax error is reported
 * with its line and column, like a validation problem.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse, TomlError } from 'smol-toml';
import { problemsWithEnvironment } from './environment.js';
import { ConfigError, type Config } from './schema.js';
import { validateConfigTree } from './validate.js';

export async function loadConfigFile(file: string): Promise<Config> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError([`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`]);
  }
  return parseConfigText(text, path.dirname(path.resolve(file)), file);
}

export function parseConfigText(text: string, baseDir: string, name = 'config', env: NodeJS.ProcessEnv = process.env): Config {
  let tree: Record<string, unknown>;
  try {
    tree = parse(text);
  } catch (err) {
    if (err instanceof TomlError) throw new ConfigError([`${name}:${err.line}:${err.column}: TOML syntax error: ${err.message.split('\n')[0] ?? ''}`]);
    throw err;
  }
  const file = validateConfigTree(tree, (p) => path.resolve(baseDir, p));
  const problems = problemsWithEnvironment(file, env);
  if (problems.length > 0) throw new ConfigError(problems);
  return file.config;
}
