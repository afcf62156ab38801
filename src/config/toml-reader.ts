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

  str(tree: Tree | undefined, key: string, path: string, dflt?: string): string | undefined {
    const v = tree?.[key];
    if (v === undefined) return dflt;
    if (typeof v !== 'string') {
      this.problems.push(`${path}.${key}: must be a string`);
      return dflt;
    }
    return v;
  }

  bool(tree: Tree | undefined, key: string, path: string, dflt: boolean): boolean {
    const v = tree?.[key];
    if (v === undefined) return dflt;
    if (typeof v !== 'boolean') {
      this.problems.push(`${path}.${key}: must be true or false`);
      return dflt;
    }
    return v;
  }

  num(tree: Tree | undefined, key: string, path: string, dflt: number, min: number, max: number): number {
    const v = tree?.[key];
    if (v === undefined) return dflt;
    const n = typeof v === 'bigint' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isFinite(n) || n < min || n > max) {
      this.problems.push(`${path}.${key}: must be a number from ${min} to ${max}`);
      return dflt;
    }
    return n;
  }

  /** Sizes: an integer of bytes, or "64kB", "16MB", "1GB" (powers of 1024, as PostgreSQL's units). */
  bytes(tree: Tree | undefined, key: string, path: string, dflt: number, min: number, max: number): number {
    const v = tree?.[key];
    if (v === undefined) return dflt;
    const n = parseBytes(v);
    if (n === undefined || n < min || n > max) {
      this.problems.push(`${path}.${key}: must be a size like "16MB" from ${min} to ${max} bytes`);
      return dflt;
    }
    return n;
  }

  int(tree: Tree | undefined, key: string, path: string, dflt: number, min: number, max: number): number {
    const v = tree?.[key];
    if (v === undefined) return dflt;
    const n = typeof v === 'bigint' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
      this.problems.push(`${path}.${key}: must be an integer from ${min} to ${max}`);
      return dflt;
    }
    return n;
  }

  /** Durations: "250ms", "30s", "5m", "1h", or an integer of milliseconds. */
  duration(tree: Tree | undefined, key: string, path: string, dfltMs: number, minMs: number, maxMs: number): number {
    const v = tree?.[key];
    if (v === undefined) return dfltMs;
    const ms = parseDurationMs(v);
    if (ms === undefined || ms < minMs || ms > maxMs) {
      this.problems.push(`${path}.${key}: must be a duration like "30s" from ${minMs} ms to ${maxMs} ms`);
      return dfltMs;
    }
    return ms;
  }

  strArray(tree: Tree | undefined, key: string, path: string, dflt: readonly string[]): readonly string[] {
    const v = tree?.[key];
    if (v === undefined) return dflt;
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
      this.problems.push(`${path}.${key}: must be an array of strings`);
      return dflt;
    }
    return v;
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
