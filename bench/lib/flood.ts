/**
 * Parent side of the noisy tenant: forks flood-worker.ts processes, starts their floods, and stops
 * them for their report. Used by the bench's isolation phase and by test/integration/isolation.test.ts.
 */
import { fork, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FloodMessage, FloodReport, FloodRequest, FloodSpec } from './flood-worker.js';

export type { FloodReport, FloodSpec } from './flood-worker.js';

const WORKER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'flood-worker.js');

export interface Flood {
  /** The workers' process ids (their CPU is the flood's, not the proxy's). */
  pids: number[];
  /** Resolves once every flood runs (the copy is copying, the stalled query was sent, the storm started). */
  ready: Promise<void>;
  /** Stops every flood and resolves with the counts; kills a worker that does not answer in time. */
  stop(timeoutMs?: number): Promise<FloodReport>;
  /** SIGKILL, for teardown. */
  kill(): void;
}

interface Worker {
  child: ChildProcess;
  exited: () => boolean;
  ready: Promise<void>;
  stop(timeoutMs: number): Promise<FloodReport>;
  kill(): void;
}

function forkWorker(spec: FloodSpec, nice: number): Worker {
  const child = fork(WORKER, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  if (nice !== 0 && child.pid !== undefined) os.setPriority(child.pid, nice);
  let exited = false;
  const exit = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      resolve();
    }),
  );
  const failure = new Promise<never>((_, reject) => {
    child.on('message', (msg: FloodMessage) => {
      if (msg.type === 'failed') reject(new Error(`flood failed: ${msg.message}`));
    });
    void exit.then(() => reject(new Error('flood worker exited')));
  });
  failure.catch(() => undefined); // observed through ready and stop
  const ready = Promise.race([new Promise<void>((resolve) => child.on('message', (msg: FloodMessage) => msg.type === 'ready' && resolve())), failure]);
  const report = Promise.race([
    new Promise<FloodReport>((resolve) => child.on('message', (msg: FloodMessage) => msg.type === 'report' && resolve(msg.report))),
    failure,
  ]);
  report.catch(() => undefined); // observed through stop
  child.send({ type: 'start', spec } satisfies FloodRequest);
  const kill = (): void => {
    if (!exited) child.kill('SIGKILL');
  };
  return {
    child,
    exited: () => exited,
    ready,
    kill,
    stop: async (timeoutMs) => {
      if (!exited) child.send({ type: 'stop' } satisfies FloodRequest);
      const timer = setTimeout(kill, timeoutMs);
      try {
        return await report;
      } finally {
        clearTimeout(timer);
        await exit;
      }
    },
  };
}

/**
 * Forks the workers and starts the floods: the COPY and the stalled reader in one worker, logged in
 * first so the storm's refusals cannot keep them out, then the storm in another, so a busy storm
 * does not slow the copy's writes. `nice` (0–19) lowers the workers' CPU priority: on one machine
 * the flooders' own TLS handshakes compete for the CPUs the proxy, pgbench and PostgreSQL share,
 * which a flood from other hosts would not.
 */
export function startFlood(spec: FloodSpec, nice = 0): Flood {
  const parts: FloodSpec[] = [];
  if (spec.copy !== null || spec.stall !== null) parts.push({ ...spec, storm: null });
  if (spec.storm !== null) parts.push({ ...spec, copy: null, stall: null });
  const workers: Worker[] = [];
  const ready = (async () => {
    for (const part of parts) {
      const w = forkWorker(part, nice);
      workers.push(w);
      await w.ready;
    }
  })();
  ready.catch(() => undefined); // observed by the caller
  const kill = (): void => {
    for (const w of workers) w.kill();
  };
  return {
    get pids() {
      return workers.map((w) => w.child.pid ?? 0);
    },
    ready,
    kill,
    stop: async (timeoutMs = 30_000) => {
      await ready.catch(() => undefined);
      const reports = await Promise.all(workers.map((w) => w.stop(timeoutMs)));
      return {
        durationS: Math.max(0, ...reports.map((r) => r.durationS)),
        storm: reports.find((r) => r.storm !== null)?.storm ?? null,
        copy: reports.find((r) => r.copy !== null)?.copy ?? null,
        stall: reports.find((r) => r.stall !== null)?.stall ?? null,
        cpuS: reports.reduce((n, r) => n + r.cpuS, 0),
      };
    },
  };
}
