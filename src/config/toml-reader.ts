/**
 * The generic half of reading a config: typed values out of a parsed TOML tree (strings, numbers,
 * sizes, durations, listen addresses, tables), each problem naming the offending key. It knows no
 * pgwarden key; validate*.ts say which keys exist and what they mean.
 */

export type Tree = Record<string, unknown>;

/** A key whose value names an environment variable, to be checked by the environment pass (environment.ts). */
export interface EnvReference {
  /** The key, as problems name it (`tenants.acme.users.app.backend_password_env`). */
  readonly key: string;
  readonly name: string;
  /** How many file problems come before it: its problem goes there, so the list stays in file order. */
  readonly at: number;
}

/** Collects problems while reading typed values out of the TOML tree. */
export class Reader {
  readonly problems: string[] = [];
  readonly envReferences: EnvReference[] = [];

  /** Notes that `key` names the environment variable `name` (read, if at all, by the environment pass). */
  namesEnv(key: string, name: string | undefined): void {
    if (name !== undefined) this.envReferences.push({ key, name, at: this.problems.length });
  }

  section(tree: Tree, key: string, path: string, known: readonly string[], required = false): Tree | undefined {
    const v = tree[key];
    if (v === undefined) {
      if (required) this.problems.push(`${path}: missing section`);
      return undefined;
    }
    if (!isTable(v)) {
      this.problems.push(`${path}: must be a table`);
      return undefined;
    }
    this.unknownKeys(v, path, known);
    return v;
  }

  unknownKeys(tree: Tree, path: string, known: readonly string[]): void {
    for (const k of Object.keys(tree)) {
      if (!known.includes(k)) this.problems.push(`${path === '' ? k : `${path}.${k}`}: unknown key`);
    }
  }

  /**
   * The shape of every typed read: an absent key gives the default; a present one goes through
   * `accept`, and a value it refuses (undefined) is a problem naming the key, `must` saying why.
   */
  private value<T>(tree: Tree | undefined, key: string, path: string, dflt: T, accept: (v: unknown) => T | undefined, must: string): T {
    const v = tree?.[key];
    if (v === undefined) return dflt;
    const accepted = accept(v);
    if (accepted === undefined) {
      this.problems.push(`${path}.${key}: ${must}`);
      return dflt;
    }
    return accepted;
  }

  str(tree: Tree | undefined, key: string, path: string, dflt?: string): string | undefined {
    return this.value(tree, key, path, dflt, (v) => (typeof v === 'string' ? v : undefined), 'must be a string');
  }

  bool(tree: Tree | undefined, key: string, path: string, dflt: boolean): boolean {
    return this.value(tree, key, path, dflt, (v) => (typeof v === 'boolean' ? v : undefined), 'must be true or false');
  }

  num(tree: Tree | undefined, key: string, path: string, dflt: number, min: number, max: number): number {
    const accept = (v: unknown): number | undefined => inRange(toNumber(v), min, max, Number.isFinite);
    return this.value(tree, key, path, dflt, accept, `must be a number from ${min} to ${max}`);
  }

  int(tree: Tree | undefined, key: string, path: string, dflt: number, min: number, max: number): number {
    const accept = (v: unknown): number | undefined => inRange(toNumber(v), min, max, Number.isInteger);
    return this.value(tree, key, path, dflt, accept, `must be an integer from ${min} to ${max}`);
  }

  /** Sizes: an integer of bytes, or "64kB", "16MB", "1GB" (powers of 1024, as PostgreSQL's units). */
  bytes(tree: Tree | undefined, key: string, path: string, dflt: number, min: number, max: number): number {
    const accept = (v: unknown): number | undefined => inRange(parseBytes(v), min, max);
    return this.value(tree, key, path, dflt, accept, `must be a size like "16MB" from ${min} to ${max} bytes`);
  }

  /** Durations: "250ms", "30s", "5m", "1h", or an integer of milliseconds. */
  duration(tree: Tree | undefined, key: string, path: string, dfltMs: number, minMs: number, maxMs: number): number {
    const accept = (v: unknown): number | undefined => inRange(parseDurationMs(v), minMs, maxMs);
    return this.value(tree, key, path, dfltMs, accept, `must be a duration like "30s" from ${minMs} ms to ${maxMs} ms`);
  }

  strArray(tree: Tree | undefined, key: string, path: string, dflt: readonly string[]): readonly string[] {
    const accept = (v: unknown): readonly string[] | undefined => (Array.isArray(v) && v.every((x) => typeof x === 'string') ? v : undefined);
    return this.value(tree, key, path, dflt, accept, 'must be an array of strings');
  }

  /** A string that must be one of `allowed`. */
  oneOf<T extends string>(tree: Tree | undefined, key: string, path: string, allowed: readonly T[], dflt: T): T {
    const v = this.str(tree, key, path, dflt) ?? dflt;
    if ((allowed as readonly string[]).includes(v)) return v as T;
    this.problems.push(`${path}.${key}: must be ${allowed.map((a) => `"${a}"`).join(', ')}`);
    return dflt;
  }

  listen(tree: Tree | undefined, key: string, path: string, dflt: string): { host: string; port: number } {
    const s = this.str(tree, key, path, dflt) ?? dflt;
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(s);
    const port = m ? Number(m[3]) : NaN;
    if (!m || port > 65535) {
      this.problems.push(`${path}.${key}: must be "host:port" (IPv6 as "[::1]:port")`);
      return { host: '127.0.0.1', port: 0 };
    }
    return { host: (m[1] ?? m[2])!, port };
  }
}

/** TOML integers may arrive as bigint (smol-toml, beyond 2^53); anything else that is not a number stays undefined. */
function toNumber(v: unknown): number | undefined {
  if (typeof v === 'bigint') return Number(v);
  return typeof v === 'number' ? v : undefined;
}

function inRange(n: number | undefined, min: number, max: number, ok: (n: number) => boolean = () => true): number | undefined {
  return n !== undefined && ok(n) && n >= min && n <= max ? n : undefined;
}

export function isTable(v: unknown): v is Tree {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function parseDurationMs(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v;
  if (typeof v === 'bigint' && v >= 0n) return Number(v);
  if (typeof v !== 'string') return undefined;
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)$/.exec(v.trim());
  if (!m) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
  return Math.round(Number(m[1]) * unit);
}

export function parseBytes(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v;
  if (typeof v === 'bigint' && v >= 0n) return Number(v);
  if (typeof v !== 'string') return undefined;
  const m = /^(\d+)\s*(B|kB|MB|GB)$/.exec(v.trim());
  if (!m) return undefined;
  const unit = { B: 1, kB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 }[m[2] as 'B' | 'kB' | 'MB' | 'GB'];
  return Number(m[1]) * unit;
}
