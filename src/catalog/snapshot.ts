/**
 * The catalog's snapshot file: the bodies of the served tenants (verifiers included, hence mode
 * 0600), the copy served when the catalog is down at start-up. Reading and writing it; when to
 * write is source.ts's.
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../observability/logger.js';

const FORMAT = 'pgwarden.catalog-snapshot/v1';

/** The snapshot file's content: the bodies of the served tenants, as the catalog holds them. */
export interface Snapshot {
  readonly format: typeof FORMAT;
  /** When the copy was last known to match the catalog (ms since the epoch). */
  readonly synced_at_ms: number;
  readonly tenants: Record<string, Record<string, unknown>>;
}

/** The snapshot in `file`, or null when there is none or it is not one (logged). */
export async function readSnapshot(file: string, log: Logger): Promise<Snapshot | null> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log.warn({ snapshot: file, code: (err as NodeJS.ErrnoException).code }, 'tenant catalog snapshot unreadable');
    return null;
  }
  try {
    const s = JSON.parse(text) as { format?: unknown; synced_at_ms?: unknown; tenants?: unknown };
    if (s.format !== FORMAT || typeof s.synced_at_ms !== 'number' || typeof s.tenants !== 'object' || s.tenants === null || Array.isArray(s.tenants)) throw new Error('format');
    return s as Snapshot;
  } catch {
    log.warn({ snapshot: file }, 'tenant catalog snapshot is not a pgwarden catalog snapshot; ignored');
    return null;
  }
}

/**
 * Writes the snapshot atomically from the bodies' JSON texts (the same document as JSON.stringify
 * of a Snapshot, without re-serializing every body); rejects when it cannot.
 */
export async function writeSnapshot(file: string, syncedAtMs: number, bodies: Iterable<readonly [string, string]>): Promise<void> {
  const parts: string[] = [];
  for (const [id, bodyJson] of bodies) parts.push(`${JSON.stringify(id)}:${bodyJson}`);
  await writeFileAtomic(file, `{"format":"${FORMAT}","synced_at_ms":${syncedAtMs},"tenants":{${parts.join(',')}}}\n`);
}

/** Temp file (0600) in the same folder, fsync, rename over: a reader sees the old file or the new one, never half. */
async function writeFileAtomic(file: string, text: string): Promise<void> {
  // A name of its own (two sources, or workers, may share the file): 'wx' creates it 0600, never reuses one.
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await open(tmp, 'wx', 0o600);
  try {
    try {
      await fh.writeFile(text, 'utf8');
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}
