/**
 * Child process of the idle phase (forked with IPC by idle.ts): opens authenticated, idle TLS
 * connections to one proxy in batches of concurrent logins, keeps them open, and reports.
 *   parent → child: { type: 'init', spec, batch }, { type: 'open', total }, { type: 'close' }
 *   child → parent: { type: 'opened', ... } after each 'open'
 */
import type tls from 'node:tls';
import { login, type LoginSpec } from './login.js';

export type WorkerRequest = { type: 'init'; spec: LoginSpec; batch: number } | { type: 'open'; total: number } | { type: 'close' };

export interface OpenedReport {
  type: 'opened';
  /** Connections logged in and still open. */
  open: number;
  attempted: number;
  failed: number;
  /** Logged-in connections the server closed since. */
  lostAfterLogin: number;
  /** First few distinct failure messages. */
  errors: string[];
  elapsedMs: number;
}

let spec: LoginSpec | null = null;
let batch = 200;
const sockets = new Set<tls.TLSSocket>();
let lostAfterLogin = 0;

/** Logs in until `total` connections are open (failures are counted, not retried). */
async function openUpTo(total: number): Promise<OpenedReport> {
  const started = Date.now();
  const errors = new Set<string>();
  let toStart = Math.max(0, total - sockets.size);
  const attempted = toStart;
  let failed = 0;
  const worker = async (): Promise<void> => {
    while (toStart > 0) {
      toStart--;
      try {
        const s = await login(spec!);
        sockets.add(s);
        s.once('close', () => {
          if (sockets.delete(s)) lostAfterLogin++;
        });
      } catch (err) {
        failed++;
        if (errors.size < 5) errors.add(err instanceof Error ? err.message : String(err));
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(batch, attempted) }, worker));
  return { type: 'opened', open: sockets.size, attempted, failed, lostAfterLogin, errors: [...errors], elapsedMs: Date.now() - started };
}

process.on('message', (msg: WorkerRequest) => {
  if (msg.type === 'init') {
    spec = msg.spec;
    batch = msg.batch;
    return;
  }
  if (msg.type === 'open') {
    void openUpTo(msg.total).then((report) => process.send?.(report));
    return;
  }
  for (const s of sockets) {
    sockets.delete(s);
    s.destroy();
  }
  process.disconnect();
  process.exit(0);
});
// The parent going away (Ctrl-C, crash) ends this process too.
process.on('disconnect', () => process.exit(0));
