/**
 * Names of rotated audit files, `<file>.<YYYYMMDDTHHMMSS.mmmZ>.<first seq>[-n]` (UTC rotation time,
 * the seq of the first record written into it, a counter on a clash), and their order
 * (oldest first). The writer (writer.ts) rotates into the name rotatedName picks; the log and the
 * verifier find them here.
 */
import { open, readdir, stat } from 'node:fs/promises';
import path from 'node:path';

const ROTATED_SUFFIX = /^\.(\d{8}T\d{6}\.\d{3}Z)\.(\d+)(?:-(\d+))?$/;

interface Key {
  readonly stamp: string;
  readonly seq: number;
  readonly n: number;
}

/** The sort key of a rotated name, or null for a file that is not `<base>.<stamp>.<seq>`. */
function rotatedKey(base: string, file: string): Key | null {
  if (!file.startsWith(base)) return null;
  const m = ROTATED_SUFFIX.exec(file.slice(base.length));
  if (m === null) return null;
  return { stamp: m[1]!, seq: Number(m[2]), n: m[3] === undefined ? 0 : Number(m[3]) };
}

function compareKeys(a: Key, b: Key): number {
  if (a.stamp !== b.stamp) return a.stamp < b.stamp ? -1 : 1;
  return a.seq - b.seq || a.n - b.n;
}

/** A free rotated name for `file` cut now, whose first record has `firstSeq`. */
export async function rotatedName(file: string, firstSeq: number): Promise<string> {
  // ISO 8601 basic format with milliseconds: sorts by time even across restarts in one second.
  const stamp = `${new Date().toISOString().slice(0, 23).replace(/[-:]/g, '')}Z`;
  const base = `${file}.${stamp}.${firstSeq}`;
  let target = base;
  for (let i = 1; await exists(target); i++) target = `${base}-${i}`;
  return target;
}

/** Makes a rename durable (the directory entry), as PostgreSQL does after durable_rename(). */
export async function syncDir(dir: string): Promise<void> {
  try {
    const d = await open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    // Some filesystems refuse fsync on directories; the rename still happened.
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

/** The rotated files of `file`, oldest first (by rotation time, then first seq). */
export async function rotatedSiblings(file: string): Promise<string[]> {
  const dir = path.dirname(file);
  const base = path.basename(file);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  return names
    .map((name) => ({ name, key: rotatedKey(base, name) }))
    .filter((x): x is { name: string; key: Key } => x.key !== null)
    .sort((a, b) => compareKeys(a.key, b.key))
    .map((x) => path.join(dir, x.name));
}

/**
 * Orders files given on a command line (e.g. a shell glob `audit.jsonl*`): rotated files first,
 * oldest first, then the others in the order given (a live file comes after its rotated ones).
 */
export function orderAuditFiles(files: readonly string[]): string[] {
  const keyed = files.map((f, i) => {
    const m = /^(.*)\.(\d{8}T\d{6}\.\d{3}Z)\.(\d+)(?:-(\d+))?$/.exec(f);
    const key: Key | null = m === null ? null : { stamp: m[2]!, seq: Number(m[3]), n: m[4] === undefined ? 0 : Number(m[4]) };
    return { f, i, key };
  });
  return keyed
    .sort((a, b) => {
      if (a.key !== null && b.key !== null) return compareKeys(a.key, b.key) || a.i - b.i;
      if (a.key !== null) return -1;
      if (b.key !== null) return 1;
      return a.i - b.i;
    })
    .map((x) => x.f);
}
