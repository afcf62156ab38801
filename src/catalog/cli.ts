/**
 * `pgwarden catalog init --config FILE`: creates the tenant catalog's tables (store.ts) in the
 * database [catalog] names. Idempotent, like `audit init`.
 */
import { parseArgs } from 'node:util';
import { loadConfigFile } from '../config/load.js';
import { CatalogStore } from './store.js';

export const CATALOG_USAGE = `  pgwarden catalog init --config FILE    create the tenant catalog's schema, table and NOTIFY
                                          trigger in the [catalog] database (idempotent)
`;

/** Exit code, or null when `args` is not a catalog command this knows (the caller prints the usage). */
export async function runCatalogCommand(args: readonly string[], out: (text: string) => void, err: (text: string) => void): Promise<number | null> {
  const [sub, ...rest] = args;
  if (sub !== 'init') return null;
  const { values } = parseArgs({ args: [...rest], options: { config: { type: 'string', short: 'c' } } });
  if (values.config === undefined) return null;
  const config = await loadConfigFile(values.config);
  if (config.catalog === undefined) {
    err(`pgwarden catalog init: ${values.config} has no [catalog] section\n`);
    return 1;
  }
  const store = new CatalogStore(config.catalog, config);
  try {
    const created = await store.init();
    const where = `${config.catalog.schema}.tenants`;
    out(created ? `created tenant catalog ${where} and its NOTIFY trigger\n` : `tenant catalog ${where} exists; trigger checked\n`);
    return 0;
  } catch (e) {
    // pg's messages name no password (the URL has none).
    const x = e as { code?: string; message?: string };
    err(`pgwarden catalog init: ${x.code === undefined ? '' : `${x.code}: `}${x.message ?? String(e)}\n`);
    return 1;
  } finally {
    await store.close();
  }
}
