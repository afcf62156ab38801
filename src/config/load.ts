/**
 * Reads a TOML config file into a validated Config. Paths inside the file are relative to it.
 * A TOML syntax error is reported with its line and column, like a validation problem.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse, TomlError } from 'smol-toml';
import { ConfigError, validateConfig, type Config } from './schema.js';

export async function loadConfigFile(file: string): Promise<Config> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError([`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`]);
  }
  return parseConfigText(text, path.dirname(path.resolve(file)), file);
}

export function parseConfigText(text: string, baseDir: string, name = 'config'): Config {
  let tree: Record<string, unknown>;
  try {
    tree = parse(text);
  } catch (err) {
    if (err instanceof TomlError) throw new ConfigError([`${name}:${err.line}:${err.column}: TOML syntax error: ${err.message.split('\n')[0] ?? ''}`]);
    throw err;
  }
  return validateConfig(tree, (p) => path.resolve(baseDir, p));
}
