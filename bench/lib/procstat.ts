/** Reads a process's CPU time and memory from Linux /proc; sampling and differences are the caller's. */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

let cachedTicks: number | undefined;

/** Clock ticks per second for /proc/<pid>/stat times (almost always 100). */
function clockTicks(): number {
  if (cachedTicks !== undefined) return cachedTicks;
  try {
    cachedTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    cachedTicks = 100;
  }
  return cachedTicks;
}

export interface CpuTimes {
  /** utime of all threads, seconds. */
  userS: number;
  /** stime of all threads, seconds. */
  systemS: number;
}

/**
 * `pid` and its descendants (pgwarden with `workers > 1` is a primary and its workers), from
 * /proc/<pid>/task/<tid>/children.
 */
export function processTree(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    const p = out[i]!;
    let tasks: string[];
    try {
      tasks = readdirSync(`/proc/${p}/task`);
    } catch {
      continue;
    }
    for (const t of tasks) {
      try {
        for (const c of readFileSync(`/proc/${p}/task/${t}/children`, 'utf8').trim().split(/\s+/)) if (c !== '') out.push(Number(c));
      } catch {
        // the task ended meanwhile
      }
    }
  }
  return out;
}

/** The text of /proc/<p>/<file> for `pid` and each live descendant (the root must exist). */
function treeFiles(pid: number, file: 'stat' | 'status'): string[] {
  const out: string[] = [];
  for (const p of processTree(pid)) {
    try {
      out.push(readFileSync(`/proc/${p}/${file}`, 'utf8'));
    } catch {
      if (p === pid) throw new Error(`no process ${pid}`);
      // a descendant that ended meanwhile
    }
  }
  return out;
}

/** utime and stime of all threads of `pid` and its descendants, in seconds. @see proc(5), fields 14 and 15 */
export function cpuTimes(pid: number): CpuTimes {
  let user = 0;
  let system = 0;
  for (const stat of treeFiles(pid, 'stat')) {
    // Fields after "(comm)" start with field 3 (state); comm may contain spaces.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    user += Number(fields[14 - 3]);
    system += Number(fields[15 - 3]);
  }
  return { userS: user / clockTicks(), systemS: system / clockTicks() };
}

/** utime + stime of `pid` alone (not its descendants: a primary without its workers), in seconds. */
export function ownCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[14 - 3]) + Number(fields[15 - 3])) / clockTicks();
}

/** utime + stime of all threads of `pid`, in seconds. */
export function cpuSeconds(pid: number): number {
  const t = cpuTimes(pid);
  return t.userS + t.systemS;
}

export interface MemorySample {
  rssMb: number;
  peakRssMb: number;
}

/** VmRSS and VmHWM (peak RSS) of `pid` and its descendants (summed), in MiB. */
export function memory(pid: number): MemorySample {
  let rss = 0;
  let peak = 0;
  for (const status of treeFiles(pid, 'status')) {
    const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
    rss += kb('VmRSS');
    peak += kb('VmHWM');
  }
  return { rssMb: rss / 1024, peakRssMb: peak / 1024 };
}

/** Open file descriptors of `pid` (the process itself, not its descendants). */
export function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

export interface HostTicks {
  busy: number;
  total: number;
}

/** Machine-wide CPU ticks from the first line of /proc/stat (idle and iowait count as not busy). */
export function hostTicks(): HostTicks {
  const fields = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1, 9).map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
  return { busy: total - idle, total };
}

/** Share of all CPUs that was busy between two samples, in percent. */
export function busyPercent(before: HostTicks, after: HostTicks): number {
  const total = after.total - before.total;
  return total > 0 ? (100 * (after.busy - before.busy)) / total : Number.NaN;
}
