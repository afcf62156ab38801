/**
 * The audit view's reader thread (reader-thread.ts starts it): runs AuditReader's reads one at a
 * time, in the order asked, and posts back plain data.
 */
import { parentPort } from 'node:worker_threads';
import { AuditReader, NoAuditError } from './audit-reader.js';
import type { ReadReply, ReadRequest } from './reader-thread.js';

const port = parentPort;
if (port === null) throw new Error('reader-worker.ts runs as a worker thread');

let chain: Promise<void> = Promise.resolve();
port.on('message', (m: ReadRequest) => {
  chain = chain.then(async () => {
    const reader = new AuditReader(() => m.config);
    let reply: ReadReply;
    try {
      const value =
        m.method === 'sessions'
          ? await reader.sessions(m.arg as Parameters<AuditReader['sessions']>[0])
          : m.method === 'session'
            ? await reader.session(m.arg as string)
            : m.method === 'staffDecisions'
              ? await reader.staffDecisions(m.arg as Parameters<AuditReader['staffDecisions']>[0])
              : await reader.chain();
      reply = { id: m.id, ok: true, value };
    } catch (err) {
      reply = { id: m.id, ok: false, noAudit: err instanceof NoAuditError, message: (err as Error).message };
    }
    port.postMessage(reply);
  });
});
