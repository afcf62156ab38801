/** Command-line options of `npm run bench`, validated into one typed object. */
import os from 'node:os';
import { parseArgs } from 'node:util';
import type { TargetName } from './target.js';

export interface BenchOptions {
  durationS: number;
  rounds: number;
  clients: number;
  jobs: number;
  scale: number;
  warmupS: number;
  protocol: 'simple' | 'extended' | 'prepared';
  targets: TargetName[];
}

export const USAGE = `usage: npm run bench -- [options]
  --duration S    seconds per measured run (default 15)
  --rounds N      rounds; each round runs every target once (default 3)
  --clients N     pgbench clients (default 16)
  --jobs N        pgbench threads (default: min(clients, CPUs))
  --scale N       pgbench -i scale factor (default 10)
  --warmup S      unrecorded run per target before round 1 (default 5; 0 = none)
  --protocol P    pgbench -M: simple, extended or prepared (default simple)
  --targets LIST  comma-separated subset of direct,pgbouncer,pgwarden (default all)
`;

const ALL_TARGETS: readonly TargetName[] = ['direct', 'pgbouncer', 'pgwarden'];
const PROTOCOLS = ['simple', 'extended', 'prepared'] as const;

function positiveInt(name: string, text: string | undefined, fallback: number, min = 1): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < min) throw new Error(`--${name} must be an integer ≥ ${min}, got "${text}"`);
  return value;
}

function targetList(text: string | undefined): TargetName[] {
  if (text === undefined) return [...ALL_TARGETS];
  const names = text.split(',').map((s) => s.trim());
  const unknown = names.filter((n) => !(ALL_TARGETS as readonly string[]).includes(n));
  if (unknown.length > 0) throw new Error(`--targets: unknown ${unknown.join(', ')}`);
  return ALL_TARGETS.filter((t) => names.includes(t));
}

function protocol(text: string | undefined): BenchOptions['protocol'] {
  const value = text ?? 'simple';
  const known = PROTOCOLS.find((p) => p === value);
  if (known === undefined) throw new Error(`--protocol must be one of ${PROTOCOLS.join(', ')}`);
  return known;
}

/** Parsed options, or null when --help was asked for. */
export function parseOptions(argv: string[]): BenchOptions | null {
  const { values } = parseArgs({
    args: argv,
    options: {
      duration: { type: 'string' }, rounds: { type: 'string' }, clients: { type: 'string' }, jobs: { type: 'string' },
      scale: { type: 'string' }, warmup: { type: 'string' }, protocol: { type: 'string' }, targets: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help === true) return null;
  const clients = positiveInt('clients', values.clients, 16);
  return {
    durationS: positiveInt('duration', values.duration, 15),
    rounds: positiveInt('rounds', values.rounds, 3),
    clients,
    jobs: Math.min(clients, positiveInt('jobs', values.jobs, Math.min(clients, os.availableParallelism()))),
    scale: positiveInt('scale', values.scale, 10),
    warmupS: positiveInt('warmup', values.warmup, 5, 0),
    protocol: protocol(values.protocol),
    targets: targetList(values.targets),
  };
}
