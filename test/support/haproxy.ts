/**
 * A real HAProxy in front of pgwarden for tests: `mode tcp`, one listener on a loopback port,
 * `send-proxy-v2` to the proxy, with health checks. Runs as our own child (`haproxy -f <tmp> -db`), never as the
 * system service; stopped (and its config removed) by `stop()`.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { sleep } from './wait.js';
import { freePort } from './ports.js';

export interface RunningHaproxy {
  /** Where clients connect (127.0.0.1). */
  readonly port: number;
  logs(): string;
  stop(): Promise<void>;
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

export async function startHaproxy(backendPort: number): Promise<RunningHaproxy> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-haproxy-'));
  const port = await freePort();
  const cfg = path.join(dir, 'haproxy.cfg');
  await writeFile(
    cfg,
    [
      'global',
      '  maxconn 200',
      'defaults',
      '  mode tcp',
      '  timeout connect 5s',
      '  timeout client 60s',
      '  timeout server 60s',
      'listen pgwarden',
      `  bind 127.0.0.1:${port}`,
      // `check`: HAProxy's health checks, a LOCAL header then a close, run alongside the tests.
      `  server s1 127.0.0.1:${backendPort} send-proxy-v2 check inter 300`,
      '',
    ].join('\n'),
  );
  const child = spawn('haproxy', ['-f', cfg, '-db'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(3000)]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    await rm(dir, { recursive: true, force: true });
  };
  // Ready once it accepts a connection (that probe reaches pgwarden at most as a closed connection).
  const until = Date.now() + 10_000;
  while (!(await accepts(port))) {
    if (child.exitCode !== null) throw new Error(`haproxy exited (${child.exitCode}):\n${out}`);
    if (Date.now() > until) {
      await stop();
      throw new Error(`haproxy did not listen on ${port}:\n${out}`);
    }
    await sleep(50);
  }
  return { port, logs: () => out, stop };
}
