/** Reads a process's CPU time and memory from Linux /proc; sampling and differences are the caller's. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

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

/** utime and stime of all threads of `pid`, in seconds. @see proc(5), fields 14 and 15 */
export function cpuTimes(pid: number): CpuTimes {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after "(comm)" start with field 3 (state); comm may contain spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { userS: Number(fields[14 - 3]) / clockTicks(), systemS: Number(fields[15 - 3]) / clockTicks() };
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

/** VmRSS and VmHWM (peak RSS) of `pid`, in MiB. */
export function memory(pid: number): MemorySample {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  return { rssMb: kb('VmRSS') / 1024, peakRssMb: kb('VmHWM') / 1024 };
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
