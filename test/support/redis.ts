/**
 * Starts a real, throwaway `redis-server` for tests (a fresh temp dir, no persistence, a free
 * loopback port) and stops, kills, pauses or restarts it on the same port; what runs against it
 * is left to each test. Every failure message carries the tail of the server's output.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './ports.js';

export interface RedisServer {
  readonly host: string;
  readonly port: number;
  /** `redis://127.0.0.1:<port>`. */
  readonly url: string;
  /** Starts the server again on the same port (after stop() or kill()); a no-op while it runs. */
  start(): Promise<void>;
  /** SIGTERM, waits for exit, removes the temp dir. Safe to call twice. */
  stop(): Promise<void>;
  /** SIGKILL, as a host crash would; waits for exit and removes the temp dir. */
  kill(): Promise<void>;
  /** SIGSTOP: the socket stays open but nothing answers (a hung server). */
  pause(): void;
  /** SIGCONT after pause(). */
  resume(): void;
}

const HOST = '127.0.0.1';
const BINARY = process.env['PGWARDEN_REDIS_SERVER'] ?? '/usr/bin/redis-server';
const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 10_000;
const PORT_ATTEMPTS = 3;
const OUTPUT_TAIL_CHARS = 2_000;

/** Sends an inline PING and resolves true on `+PONG` (false on any error or after `timeoutMs`). */
function ping(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: HOST, port });
    let reply = '';
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk.toString('latin1');
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'));
    });
  });
}

class RedisProcess implements RedisServer {
  readonly host = HOST;
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  private dir: string | null = null;
  private output = '';

  constructor(readonly port: number) {}

  get url(): string {
    return `redis://${HOST}:${this.port}`;
  }

  async start(): Promise<void> {
    if (this.child !== null) return;
    this.dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-redis-'));
    this.output = '';
    const child = spawn(
      BINARY,
      ['--port', String(this.port), '--bind', HOST, '--save', '', '--appendonly', 'no', '--dir', this.dir, '--daemonize', 'no'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child = child;
    const keep = (chunk: Buffer): void => {
      this.output = (this.output + chunk.toString('utf8')).slice(-OUTPUT_TAIL_CHARS);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    let exitCode: number | null | undefined;
    this.exited = new Promise<void>((resolve) => {
      child.once('exit', (code, signal) => {
        exitCode = code ?? (signal === null ? -1 : null);
        resolve();
      });
      // spawn failures (ENOENT) arrive as 'error' without 'exit'.
      child.once('error', (err) => {
        this.output += `\n${err.message}`;
        exitCode = -1;
        resolve();
      });
    });
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (exitCode !== undefined) break;
      if (await ping(this.port)) return;
      await new Promise((r) => setTimeout(r, 25));
    }
    const why = exitCode !== undefined ? 'exited during start' : `did not answer PING within ${START_TIMEOUT_MS} ms`;
    await this.halt('SIGKILL');
    throw new Error(`redis-server on port ${this.port} ${why}:\n${this.output}`);
  }

  stop(): Promise<void> {
    return this.halt('SIGTERM');
  }

  kill(): Promise<void> {
    return this.halt('SIGKILL');
  }

  pause(): void {
    this.child?.kill('SIGSTOP');
  }

  resume(): void {
    this.child?.kill('SIGCONT');
  }

  /** Whether the last start failed because another process holds the port. */
  lostPortRace(): boolean {
    return this.output.includes('Address already in use');
  }

  private async halt(signal: NodeJS.Signals): Promise<void> {
    const child = this.child;
    if (child !== null) {
      this.child = null;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGCONT'); // a paused server would never act on SIGTERM
        child.kill(signal);
        const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
        await this.exited;
        clearTimeout(timer);
      }
    }
    const dir = this.dir;
    this.dir = null;
    if (dir !== null) await rm(dir, { recursive: true, force: true });
  }
}

/** Starts redis-server on a free loopback port, retrying with another port if it loses the race for one. */
export async function startRedis(): Promise<RedisServer> {
  for (let attempt = 1; ; attempt++) {
    const server = new RedisProcess(await freePort());
    try {
      await server.start();
      return server;
    } catch (err) {
      if (attempt >= PORT_ATTEMPTS || !server.lostPortRace()) throw err;
    }
  }
}
