/**
 * `url` and `password_env` of a PostgreSQL database pgwarden writes to ([audit.postgres],
 * [catalog]): a postgresql:// URL that carries no password, and the variable that does.
 */
import type { Reader, Tree } from './toml-reader.js';

/** Reads and checks both keys of `section` (at `path`); `example` is the URL a problem shows. */
export function readPgTarget(r: Reader, section: Tree, path: string, example: string): { url: string; passwordEnv: string | undefined } {
  const url = r.str(section, 'url', path);
  let urlOk = false;
  if (url !== undefined) {
    try {
      const u = new URL(url);
      urlOk = u.protocol === 'postgresql:' || u.protocol === 'postgres:';
      // Never echo the URL: it holds the password when this fires.
      if (u.password !== '') r.problems.push(`${path}.url: must not contain a password (use ${path}.password_env)`);
    } catch {
      urlOk = false;
    }
  }
  if (!urlOk) r.problems.push(`${path}.url: must be a URL like "${example}"`);
  const passwordEnv = r.str(section, 'password_env', path);
  r.namesEnv(`${path}.password_env`, passwordEnv);
  return { url: url ?? '', passwordEnv };
}
