/**
 * A lean PostgreSQL login for the idle-connection phase: SSLRequest, TLS with SNI and a CA check,
 * StartupMessage and SCRAM-SHA-256 (no channel binding), up to ReadyForQuery. What is left is an
 * authenticated, idle TLS connection and nothing else: no pg.Client objects, no parser per socket.
 * PBKDF2 runs once per (password, salt, iterations), so ten thousand logins cost TLS + a few HMACs each.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';

export interface LoginSpec {
  port: number;
  /** SNI and certificate name. */
  servername: string;
  caPem: string;
  user: string;
  password: string;
  database: string;
  timeoutMs: number;
}

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
const salted = new Map<string, Buffer>();

function saltedPassword(password: string, salt: string, iterations: number): Buffer {
  const key = `${salt}:${iterations}`;
  let value = salted.get(key);
  if (value === undefined) {
    // The bench password is hex, so SASLprep leaves it unchanged.
    value = pbkdf2Sync(password, Buffer.from(salt, 'base64'), iterations, 32, 'sha256');
    salted.set(key, value);
  }
  return value;
}

const hmac = (key: Buffer, text: string): Buffer => createHmac('sha256', key).update(text).digest();

function message(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeUInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

function startupMessage(user: string, database: string): Buffer {
  const body = Buffer.from(`user\0${user}\0database\0${database}\0application_name\0pgwarden-bench-idle\0\0`);
  const head = Buffer.alloc(8);
  head.writeUInt32BE(body.length + 8, 0);
  head.writeUInt32BE(196608, 4);
  return Buffer.concat([head, body]);
}

function errorText(body: Buffer): string {
  const fields: string[] = [];
  for (let pos = 0; pos < body.length && body[pos] !== 0; ) {
    const end = body.indexOf(0, pos + 1);
    const type = String.fromCharCode(body[pos]!);
    if (type === 'C' || type === 'M') fields.push(body.toString('utf8', pos + 1, end));
    pos = end + 1;
  }
  return fields.join(' ');
}

/** One SCRAM-SHA-256 client exchange without channel binding (gs2 header "n,,"). */
class Scram {
  private readonly nonce = randomBytes(18).toString('base64');
  private readonly clientFirstBare = `n=,r=${this.nonce}`;
  private expectedServerSignature: Buffer | null = null;

  constructor(private readonly password: string) {}

  initialResponse(): Buffer {
    const data = Buffer.from(`n,,${this.clientFirstBare}`);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    return message('p', Buffer.concat([Buffer.from('SCRAM-SHA-256\0'), len, data]));
  }

  finalResponse(serverFirst: string): Buffer {
    const attrs = new Map(serverFirst.split(',').map((kv) => [kv.slice(0, 1), kv.slice(2)] as const));
    const nonce = attrs.get('r') ?? '';
    const salt = attrs.get('s') ?? '';
    const iterations = Number(attrs.get('i'));
    if (!nonce.startsWith(this.nonce) || salt === '' || !Number.isInteger(iterations)) throw new Error(`bad SCRAM server-first: ${serverFirst}`);
    const withoutProof = `c=biws,r=${nonce}`;
    const authMessage = `${this.clientFirstBare},${serverFirst},${withoutProof}`;
    const sp = saltedPassword(this.password, salt, iterations);
    const clientKey = hmac(sp, 'Client Key');
    const storedKey = createHash('sha256').update(clientKey).digest();
    const signature = hmac(storedKey, authMessage);
    const proof = Buffer.from(clientKey.map((b, i) => b ^ signature[i]!));
    this.expectedServerSignature = hmac(hmac(sp, 'Server Key'), authMessage);
    return message('p', Buffer.from(`${withoutProof},p=${proof.toString('base64')}`));
  }

  checkServerFinal(serverFinal: string): void {
    const v = Buffer.from(/(?:^|,)v=([^,]+)/.exec(serverFinal)?.[1] ?? '', 'base64');
    const expected = this.expectedServerSignature;
    if (expected === null || v.length !== expected.length || !timingSafeEqual(v, expected)) throw new Error('SCRAM server signature mismatch');
  }
}

/** Resolves with the logged-in TLS socket, idle after ReadyForQuery; rejects on any error or timeout. */
export function login(spec: LoginSpec): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const raw = net.connect({ host: '127.0.0.1', port: spec.port });
    let secure: tls.TLSSocket | null = null;
    let settled = false;
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      (secure ?? raw).destroy();
      raw.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new Error(`login timed out after ${spec.timeoutMs} ms`)), spec.timeoutMs);
    raw.on('error', fail);
    raw.once('connect', () => raw.write(SSL_REQUEST));
    raw.once('data', (answer: Buffer) => {
      if (answer.length !== 1 || answer[0] !== 0x53) return fail(new Error(`SSLRequest answered ${JSON.stringify(answer.toString('latin1'))}`));
      const s = tls.connect({ socket: raw, ca: spec.caPem, servername: spec.servername });
      secure = s;
      s.on('error', fail);
      const onClose = (): void => fail(new Error('closed during login'));
      s.once('close', onClose);
      s.once('secureConnect', () => s.write(startupMessage(spec.user, spec.database)));
      const scram = new Scram(spec.password);
      let buf: Buffer = Buffer.alloc(0);
      const onData = (chunk: Buffer): void => {
        buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
        try {
          while (buf.length >= 5) {
            const len = buf.readUInt32BE(1);
            if (buf.length < len + 1) return;
            const type = String.fromCharCode(buf[0]!);
            const body = buf.subarray(5, len + 1);
            buf = buf.subarray(len + 1);
            if (type === 'E') throw new Error(`login refused: ${errorText(body)}`);
            if (type === 'R') {
              const code = body.readUInt32BE(0);
              if (code === 10) s.write(scram.initialResponse());
              else if (code === 11) s.write(scram.finalResponse(body.toString('utf8', 4)));
              else if (code === 12) scram.checkServerFinal(body.toString('utf8', 4));
              else if (code !== 0) throw new Error(`unexpected authentication request ${code}`);
            }
            if (type === 'Z') {
              settled = true;
              clearTimeout(timer);
              s.removeListener('data', onData);
              s.removeListener('close', onClose);
              s.removeListener('error', fail);
              raw.removeListener('error', fail);
              s.on('error', () => undefined);
              // Anything after login (NoticeResponse, ParameterStatus) is read and dropped.
              s.on('data', () => undefined);
              return resolve(s);
            }
          }
        } catch (err) {
          fail(err instanceof Error ? err : new Error(String(err)));
        }
      };
      s.on('data', onData);
    });
  });
}
