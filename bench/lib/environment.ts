/** Records the machine and software versions a result was measured with. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pgBinDir } from '../../test/support/cluster.js';
import { pgBouncerVersion } from './pgbouncer.js';

export interface Environment {
  node: string;
  postgres: string;
  pgbench: string;
  pgbouncer: string | null;
  cpuModel: string;
  nproc: number;
  kernel: string;
  hostname: string;
  totalMemMb: number;
  loadAvgAtStart: number[];
  /** Soft/hard RLIMIT_NOFILE of the bench process, which its children (proxies, worker) inherit. */
  openFilesLimit: string;
  /** The commit measured, and files changed on top of it (pgwarden is built from the working tree). */
  git: { commit: string; dirty: string[] };
}

function git(): Environment['git'] {
  const run = (args: string[]): string => execFileSync('git', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  try {
    return { commit: run(['rev-parse', 'HEAD']).trim(), dirty: run(['status', '--porcelain']).split('\n').filter((l) => l.trim() !== '') };
  } catch {
    return { commit: 'unknown', dirty: [] };
  }
}

/** "soft/hard" open-files limit from /proc/self/limits. */
export function openFilesLimit(): string {
  try {
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m === null ? 'unknown' : `${m[1]!}/${m[2]!}`;
  } catch {
    return 'unknown';
  }
}

function firstLine(file: string, args: string[]): string {
  try {
    return execFileSync(file, args, { encoding: 'utf8' }).split('\n')[0]?.trim() ?? 'unknown';
  } catch (err) {
    return `unknown (${err instanceof Error ? err.message : String(err)})`;
  }
}

function cpuModel(): string {
  try {
    return /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown';
  } catch {
    return os.cpus()[0]?.model ?? 'unknown';
  }
}

export function describeEnvironment(pgbouncerBinary: string | null): Environment {
  return {
    node: process.version,
    postgres: firstLine(path.join(pgBinDir(), 'postgres'), ['--version']),
    pgbench: firstLine('pgbench', ['--version']),
    pgbouncer: pgbouncerBinary === null ? null : pgBouncerVersion(pgbouncerBinary),
    cpuModel: cpuModel(),
    nproc: os.availableParallelism(),
    kernel: `${os.type()} ${os.release()}`,
    hostname: os.hostname(),
    totalMemMb: Math.round(os.totalmem() / 2 ** 20),
    loadAvgAtStart: os.loadavg(),
    openFilesLimit: openFilesLimit(),
    git: git(),
  };
}
