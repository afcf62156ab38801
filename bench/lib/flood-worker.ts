/**
 * Child process of the isolation scenario (forked with IPC by flood.ts): one tenant misbehaving on
 * purpose through the proxy, in a process of its own so its CPU and memory are not the proxy's.
 *   parent → child: { type: 'start', spec }, { type: 'stop' }
 *   child → parent: { type: 'ready' } once every flood runs, { type: 'report', report }, { type: 'failed', message }
 *
 * Three floods, each optional:
 * - storm: `lanes` clients log in over and over (TLS, StartupMessage, SCRAM), spread over several
 *   loopback source addresses as clients on several hosts would be, optionally paced to a rate; a
 *   login that succeeds holds its session for `holdMs`, then sends Terminate. Every outcome is
 *   counted by SQLSTATE.
 * - copy: one session runs COPY … FROM STDIN and writes CopyData as fast as the socket takes it.
 * - stall: one session asks for a huge result and never reads a byte of it.
 * Each login costs HMACs, not PBKDF2: the ClientKey is derived once from the role's verifier.
 */
import net from 'node:net';
import tls from 'node:tls';
import { keysFromSaltedPassword, parseScramVerifier, saltedPassword, ScramClientExchange, type UpstreamCredential } from '../../src/auth/scram.js';

export interface FloodSpec {
  port: number;
  /** SNI and certificate name: `<tenant>.pg.test`. */
  servername: string;
  caPem: string;
  user: string;
  password: string;
  /** The role's SCRAM verifier from pg_authid. */
  verifier: string;
  database: string;
  /**
   * `lanes` clients log in over and over, each pausing `pauseMs` after an attempt; with `ratePerS`
   * > 0 they start at most that many attempts per second between them (0: as fast as they can).
   */
  storm: { lanes: number; sources: string[]; holdMs: number; pauseMs: number; ratePerS: number } | null;
  copy: { table: string; rowBytes: number } | null;
  stall: { sql: string } | null;
}

export interface FloodReport {
  /** From 'ready' to 'stop'. */
  durationS: number;
  storm: {
    attempts: number;
    loggedIn: number;
    /** ErrorResponse answers by "SQLSTATE message". */
    refusals: Record<string, number>;
    /** Anything that was neither a login nor an ErrorResponse: a close, an I/O error, a timeout. */
    failures: Record<string, number>;
    /** Sessions that got in and were then ended by the proxy before they sent Terminate. */
    lostAfterLogin: number;
  } | null;
  copy: { bytesWritten: number; state: string } | null;
  stall: { bytesReceived: number; state: string } | null;
  /** The flooder's own CPU time (user + system), seconds. */
  cpuS: number;
}

export type FloodRequest = { type: 'start'; spec: FloodSpec } | { type: 'stop' };
export type FloodMessage = { type: 'ready' } | { type: 'report'; report: FloodReport } | { type: 'failed'; message: string };

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
const TERMINATE = Buffer.from([0x58, 0, 0, 0, 4]);
const LOGIN_TIMEOUT_MS = 15_000;

function typed(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeUInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

function startupMessage(user: string, database: string): Buffer {
  const body = Buffer.from(`user\0${user}\0database\0${database}\0application_name\0pgwarden-flood\0\0`);
  const head = Buffer.alloc(8);
  head.writeUInt32BE(body.length + 8, 0);
  head.writeUInt32BE(196608, 4);
  return Buffer.concat([head, body]);
}

const query = (sql: string): Buffer => typed('Q', Buffer.from(`${sql}\0`));

function errorFields(body: Buffer): { code: string; message: string } {
  const fields: Record<string, string> = {};
  for (let pos = 0; pos < body.length && body[pos] !== 0; ) {
    const end = body.indexOf(0, pos + 1);
    fields[String.fromCharCode(body[pos]!)] = body.toString('utf8', pos + 1, end);
    pos = end + 1;
  }
  return { code: fields['C'] ?? '?', message: fields['M'] ?? '' };
}

class Timeout extends Error {}

/** A TLS session to the proxy with a frame reader; reading stops for good when `stopReading` is called. */
class Conn {
  private buf: Buffer = Buffer.alloc(0);
  private wake: (() => void) | null = null;
  closed = false;
  error: string | null = null;
  bytesReceived = 0;

  private constructor(readonly socket: tls.TLSSocket) {
    socket.on('data', (chunk: Buffer) => {
      this.bytesReceived += chunk.length;
      this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
      this.notify();
    });
    socket.on('close', () => {
      this.closed = true;
      this.notify();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.error ??= err.code ?? err.message;
    });
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** TCP from `localAddress`, SSLRequest, then TLS with SNI and the CA check. */
  static open(spec: FloodSpec, context: tls.SecureContext, localAddress: string | undefined, deadline: number): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const raw = net.connect({ host: '127.0.0.1', port: spec.port, ...(localAddress === undefined ? {} : { localAddress }) });
      let done = false;
      const fail = (reason: string): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        raw.destroy();
        reject(new Error(reason));
      };
      const timer = setTimeout(() => fail('timeout (tls)'), Math.max(0, deadline - Date.now()));
      raw.on('error', (err: NodeJS.ErrnoException) => fail(`io ${err.code ?? err.message} (tls)`));
      const onClose = (): void => fail('closed (tls)');
      raw.once('close', onClose);
      raw.once('connect', () => raw.write(SSL_REQUEST));
      raw.once('data', (answer: Buffer) => {
        if (answer.length !== 1 || answer[0] !== 0x53 /* S */) return fail(`SSLRequest answered ${answer.toString('hex', 0, 16)}`);
        const s = tls.connect({ socket: raw, servername: spec.servername, secureContext: context });
        s.once('error', (err: NodeJS.ErrnoException) => fail(`io ${err.code ?? err.message} (tls)`));
        s.once('secureConnect', () => {
          if (done) return void s.destroy();
          done = true;
          clearTimeout(timer);
          raw.removeListener('close', onClose);
          resolve(new Conn(s));
        });
      });
    });
  }

  /** The next frame; null when the connection closed first; Timeout past `deadline`. */
  async frame(deadline: number): Promise<{ type: string; body: Buffer } | null> {
    for (;;) {
      if (this.buf.length >= 5) {
        const len = this.buf.readUInt32BE(1);
        if (this.buf.length >= len + 1) {
          const type = String.fromCharCode(this.buf[0]!);
          const body = this.buf.subarray(5, len + 1);
          this.buf = this.buf.subarray(len + 1);
          return { type, body };
        }
      }
      if (this.closed) return null;
      const left = deadline - Date.now();
      if (left <= 0) throw new Timeout();
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  /** Stops reading: the kernel buffers fill, then the proxy's writes back up. */
  stopReading(): void {
    this.socket.pause();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** What every login of the flood shares: the target, the pass-through credential, one TLS context. */
interface Client {
  spec: FloodSpec;
  credential: UpstreamCredential;
  /** Built once: a CA given per connection would be parsed again for every handshake. */
  context: tls.SecureContext;
}

type LoginOutcome = { kind: 'ok'; conn: Conn } | { kind: 'refused'; code: string; message: string } | { kind: 'failed'; reason: string };

/** One login up to ReadyForQuery; never throws. */
async function login(client: Client, localAddress: string | undefined): Promise<LoginOutcome> {
  const { spec, credential, context } = client;
  const deadline = Date.now() + LOGIN_TIMEOUT_MS;
  let conn: Conn;
  try {
    conn = await Conn.open(spec, context, localAddress, deadline);
  } catch (err) {
    return { kind: 'failed', reason: (err as Error).message };
  }
  const scram = new ScramClientExchange(credential);
  let stage = 'startup';
  try {
    conn.socket.write(startupMessage(spec.user, spec.database));
    for (;;) {
      const f = await conn.frame(deadline);
      if (f === null) {
        conn.destroy();
        return { kind: 'failed', reason: `closed without ErrorResponse (${stage})${conn.error === null ? '' : ` ${conn.error}`}` };
      }
      if (f.type === 'E') {
        conn.destroy();
        return { kind: 'refused', ...errorFields(f.body) };
      }
      if (f.type === 'R') {
        const code = f.body.readUInt32BE(0);
        if (code === 10) {
          stage = 'sasl';
          const data = Buffer.from(scram.clientFirst());
          const len = Buffer.alloc(4);
          len.writeUInt32BE(data.length);
          conn.socket.write(typed('p', Buffer.concat([Buffer.from('SCRAM-SHA-256\0'), len, data])));
        } else if (code === 11) {
          conn.socket.write(typed('p', Buffer.from(await scram.serverFirst(f.body.toString('utf8', 4)))));
        } else if (code === 12) {
          stage = 'after authentication';
          scram.serverFinal(f.body.toString('utf8', 4));
        }
      }
      if (f.type === 'Z') return { kind: 'ok', conn };
    }
  } catch (err) {
    conn.destroy();
    return { kind: 'failed', reason: err instanceof Timeout ? `timeout (${stage})` : `${(err as Error).message} (${stage})` };
  }
}

let stopping = false;
/** A function, not the flag, where an await since the last check may have changed it. */
const isStopping = (): boolean => stopping;
let onStop: () => void = () => undefined;
const stopped = new Promise<void>((resolve) => (onStop = resolve));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Sleeps `ms`, or less when the flood is stopped meanwhile. */
const pauseUnlessStopped = (ms: number): Promise<void> => Promise.race([sleep(ms), stopped]);

function count(map: Record<string, number>, key: string): void {
  map[key] = (map[key] ?? 0) + 1;
}

/** Resolves on 'drain', 'close' or stop, whichever comes first, and leaves no listener behind. */
function drainedClosedOrStopped(socket: tls.TLSSocket): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      socket.removeListener('drain', done);
      socket.removeListener('close', done);
      resolve();
    };
    socket.once('drain', done);
    socket.once('close', done);
    void stopped.then(done);
  });
}

async function runStorm(client: Client, stats: NonNullable<FloodReport['storm']>): Promise<void> {
  const storm = client.spec.storm!;
  // Pacing: each attempt takes the next start slot, 1/rate apart.
  let nextSlot = performance.now();
  const slot = async (): Promise<void> => {
    if (storm.ratePerS <= 0) return;
    const at = Math.max(performance.now(), nextSlot);
    nextSlot = at + 1000 / storm.ratePerS;
    const wait = at - performance.now();
    if (wait > 0) await pauseUnlessStopped(wait);
  };
  const lane = async (i: number): Promise<void> => {
    const source = storm.sources.length === 0 ? undefined : storm.sources[i % storm.sources.length];
    while (!stopping) {
      await slot();
      if (isStopping()) break;
      stats.attempts++;
      const outcome = await login(client, source);
      if (outcome.kind === 'refused') count(stats.refusals, `${outcome.code} ${outcome.message}`);
      else if (outcome.kind === 'failed') count(stats.failures, outcome.reason);
      else {
        stats.loggedIn++;
        await pauseUnlessStopped(storm.holdMs);
        if (outcome.conn.closed) stats.lostAfterLogin++;
        outcome.conn.socket.end(TERMINATE);
      }
      if (storm.pauseMs > 0) await pauseUnlessStopped(storm.pauseMs);
    }
  };
  // Lanes start spread over 100 ms rather than in one tick, as reconnecting clients would.
  await Promise.all(Array.from({ length: storm.lanes }, async (_, i) => {
    await sleep((i * 100) / storm.lanes);
    await lane(i);
  }));
}

/** Logs in and asserts the login worked (the copy and stall sessions must get in). */
async function mustLogin(client: Client): Promise<Conn> {
  const outcome = await login(client, undefined);
  if (outcome.kind === 'ok') return outcome.conn;
  throw new Error(outcome.kind === 'refused' ? `login refused: ${outcome.code} ${outcome.message}` : `login failed: ${outcome.reason}`);
}

/** COPY FROM STDIN, then CopyData frames as fast as the socket accepts them, until stopped (the copy is then abandoned). */
async function startCopy(client: Client, stats: NonNullable<FloodReport['copy']>): Promise<() => Promise<void>> {
  const { table, rowBytes } = client.spec.copy!;
  const conn = await mustLogin(client);
  conn.socket.write(query(`COPY ${table} FROM STDIN`));
  for (;;) {
    const f = await conn.frame(Date.now() + 10_000);
    if (f === null) throw new Error('copy session closed before CopyInResponse');
    if (f.type === 'E') throw new Error(`COPY refused: ${JSON.stringify(errorFields(f.body))}`);
    if (f.type === 'G') break;
  }
  const row = `${'x'.repeat(rowBytes - 1)}\n`;
  const chunk = typed('d', Buffer.from(row.repeat(Math.max(1, Math.floor(65_536 / rowBytes)))));
  stats.state = 'copying';
  const writer = (async () => {
    while (!stopping && !conn.closed) {
      stats.bytesWritten += chunk.length;
      if (!conn.socket.write(chunk)) await drainedClosedOrStopped(conn.socket);
    }
    stats.state = conn.closed ? `closed by the proxy${conn.error === null ? '' : ` (${conn.error})`}` : 'abandoned at stop';
    stats.bytesWritten -= conn.socket.writableLength;
  })();
  return async () => {
    await writer;
    conn.destroy();
  };
}

/** Sends the query, then never reads again. */
async function startStall(client: Client, stats: NonNullable<FloodReport['stall']>): Promise<() => void> {
  const conn = await mustLogin(client);
  conn.stopReading();
  const before = conn.bytesReceived;
  conn.socket.write(query(client.spec.stall!.sql));
  stats.state = 'not reading';
  return () => {
    stats.bytesReceived = conn.bytesReceived - before;
    if (conn.closed) stats.state = `closed by the proxy${conn.error === null ? '' : ` (${conn.error})`}`;
    conn.destroy();
  };
}

async function run(spec: FloodSpec): Promise<void> {
  const verifier = parseScramVerifier(spec.verifier);
  if (verifier === undefined) throw new Error('unreadable SCRAM verifier');
  const { clientKey } = keysFromSaltedPassword(await saltedPassword(spec.password, verifier.salt, verifier.iterations));
  const client: Client = { spec, credential: { kind: 'client_key', clientKey, verifier }, context: tls.createSecureContext({ ca: spec.caPem }) };
  const report: FloodReport = {
    durationS: 0,
    storm: spec.storm === null ? null : { attempts: 0, loggedIn: 0, refusals: {}, failures: {}, lostAfterLogin: 0 },
    copy: spec.copy === null ? null : { bytesWritten: 0, state: 'starting' },
    stall: spec.stall === null ? null : { bytesReceived: 0, state: 'starting' },
    cpuS: 0,
  };
  // The long-lived sessions first, so the storm's refusals cannot keep them out.
  const endCopy = report.copy === null ? null : await startCopy(client, report.copy);
  const endStall = report.stall === null ? null : await startStall(client, report.stall);
  const storm = report.storm === null ? null : runStorm(client, report.storm);
  const cpuBefore = process.cpuUsage();
  const readyAt = Date.now();
  process.send!({ type: 'ready' } satisfies FloodMessage);
  await stopped;
  report.durationS = (Date.now() - readyAt) / 1000;
  endStall?.();
  await endCopy?.();
  await storm;
  const cpu = process.cpuUsage(cpuBefore);
  report.cpuS = (cpu.user + cpu.system) / 1e6;
  process.send!({ type: 'report', report } satisfies FloodMessage, () => process.exit(0));
}

process.on('message', (msg: FloodRequest) => {
  if (msg.type === 'start') {
    run(msg.spec).catch((err: unknown) => {
      process.send!({ type: 'failed', message: err instanceof Error ? err.message : String(err) } satisfies FloodMessage, () => process.exit(1));
    });
  } else {
    stopping = true;
    onStop();
  }
});
// The parent went away: nothing left to report to.
process.on('disconnect', () => process.exit(0));
