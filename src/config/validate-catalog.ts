/**
 * [catalog]: where tenants come from when they are not in the file (a PostgreSQL database, read by
 * catalog/), and the rule that the file then holds no [tenants.*]. One catalog tenant body is
 * checked by tenant-body.ts with the file's own code.
 */
import { readPgTarget } from './pg-target.js';
import type { CatalogConfig } from './schema.js';
import { isTable, type Reader, type Tree } from './toml-reader.js';

/** A schema name as the config accepts it: a lower-case identifier (quoted anyway where used). */
export const CATALOG_SCHEMA_RE = /^[a-z_][a-z0-9_]{0,62}$/;

export function readCatalog(r: Reader, tree: Tree, resolvePath: (p: string) => string): CatalogConfig | undefined {
  const c = r.section(tree, 'catalog', 'catalog', ['url', 'password_env', 'schema', 'snapshot_file', 'resync_interval']);
  if (c === undefined) return undefined;
  const { url, passwordEnv } = readPgTarget(r, c, 'catalog', 'postgresql://pgwarden@10.0.0.9:5432/catalog?sslmode=verify-full');
  const schema = r.str(c, 'schema', 'catalog', 'pgwarden_catalog') ?? 'pgwarden_catalog';
  if (!CATALOG_SCHEMA_RE.test(schema)) r.problems.push('catalog.schema: must be a lower-case identifier');
  const snapshot = r.str(c, 'snapshot_file', 'catalog');
  if (snapshot === undefined) r.problems.push('catalog.snapshot_file: missing (the last good copy, served when the catalog is down at start-up)');
  const resyncIntervalMs = r.duration(c, 'resync_interval', 'catalog', 30_000, 1000, 86_400_000);
  // The catalog is the source of tenants: a [tenants.*] table beside it would be silently ignored.
  const t = tree['tenants'];
  if (t !== undefined) {
    const ids = isTable(t) ? Object.keys(t) : [];
    if (ids.length === 0) r.problems.push('tenants: not allowed with [catalog] (the catalog is the source of tenants)');
    for (const id of ids) r.problems.push(`tenants.${id}: not allowed with [catalog] (the catalog is the source of tenants; put it there)`);
  }
  return { url, passwordEnv, schema, snapshotFile: snapshot === undefined ? '' : resolvePath(snapshot), resyncIntervalMs };
}
