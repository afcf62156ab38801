/**
 * The audit view's reads off the proxy's thread: a page reads a whole audit file (or table) and
 * the chain page re-verifies every file, which on a large log is seconds of CPU that must not be
 * taken from the sessions this process relays. One worker thread (reader-worker.ts) runs
 * AuditReader; requests go to it one at a time (a queue bounded at MAX_QUEUED: more is 503), so
 * auditors clicking around cannot run many reads at once either. The thread starts at the first
 * read and does not keep the process alive.
 */
import { Worker } from 'node:worker_threads';
import type { AuditConfig } from '../../config/schema.js';
import { NoAuditError, type AuditReading } from './audit-reader.js';

/** Reads waiting for the thread beyond the one it runs; past this the view answers 503. */
export const MAX_QUEUED = 16;

/** The reader thread is busy with as many reads as it may queue. */
export class ReaderBusyError extends Error {
  constructor() {
    super('the audit reader is busy; try again shortly');
  }
}

type Method = 'sessions' | 'session' | 'staffDecisions' | 'chain';

/** What reader-worker.ts is sent and answers. */
export interface ReadRequest {
  readonly id: number;
  readonly config: AuditConfig;
  readonly method: Method;
  readonly arg: unknown;
}
export type ReadReply = { readonly id: number; readonly ok: true; readonly value: unknown } | { readonly id: number; readonly ok: false; readonly noAudit: boolean; readonly message: string };

interface Pending {
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: Error) => void;
}

export class ThreadedAuditReader implements AuditReading {
  private worker: Worker | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;

  constructor(private readonly audit: () => AuditConfig) {}

  sessions(q: Parameters<AuditReading['sessions']>[0]): ReturnType<AuditReading['sessions']> {
    return this.call('sessions', q) as ReturnType<AuditReading['sessions']>;
  }

  session(id: string): ReturnType<AuditReading['session']> {
    return this.call('session', id) as ReturnType<AuditReading['session']>;
  }

  staffDecisions(f: Parameters<AuditReading['staffDecisions']>[0]): ReturnType<AuditReading['staffDecisions']> {
    return this.call('staffDecisions', f) as ReturnType<AuditReading['staffDecisions']>;
  }

  chain(): ReturnType<AuditReading['chain']> {
    return this.call('chain', null) as ReturnType<AuditReading['chain']>;
  }

  /** Ends the thread (reads in flight fail); the next read starts a new one. */
  async close(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    if (w !== null) await w.terminate();
  }

  private call(method: Method, arg: unknown): Promise<unknown> {
    if (this.pending.size > MAX_QUEUED) return Promise.reject(new ReaderBusyError());
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.thread().postMessage({ id, config: this.audit(), method, arg } satisfies ReadRequest);
    });
  }

  private thread(): Worker {
    if (this.worker !== null) return this.worker;
    const w = new Worker(new URL('./reader-worker.js', import.meta.url));
    w.unref();
    w.on('message', (m: ReadReply) => {
      const p = this.pending.get(m.id);
      if (p === undefined) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.value);
      else p.reject(m.noAudit ? new NoAuditError() : new Error(m.message));
    });
    // The thread died (a bug, or out of memory on a huge log): fail what waited; the next read starts another.
    const fail = (err: Error): void => {
      if (this.worker === w) this.worker = null;
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    w.on('error', fail);
    w.on('exit', (code) => fail(new Error(`audit reader thread exited (${code})`)));
    this.worker = w;
    return w;
  }
}
