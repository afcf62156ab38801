/**
 * Opens and logs in one connection to a tenant's PostgreSQL server. The server is untrusted
 * input (SECURITY.md rule 6): every login message passes a FrameScanner with small caps before
 * it is decoded, TLS follows the single-byte answer rule, SCRAM values are bounded.
 * Outgoing login messages use pg-protocol's serializer. Pooling (issue 3) builds on this.
 */
import net from 'node:net';
import tls from 'node:tls';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { serialize } from 'pg-protocol';
import { AuthCode, Backend, ErrorField, Limits, TxStatus } from '../protocol/codes.js';
import { decodeParameterStatus, encodeErrorResponseBody, readErrorField, SSL_ACCEPTED } from '../protocol/backend.js';
import { encodeCancelRequest, encodeStartupMessage, SSL_REQUEST } from '../protocol/frontend.js';
import { FrameScanner, type ScanHandler } from '../protocol/frame-reader.js';
import { ScramClientExchange, SCRAM_SHA_256, type UpstreamCredential } from '../auth/scram.js';
import { Errors, PgError } from '../errors.js';
import type { BackendTls } from '../config/schema.js';

export interface UpstreamTarget {
  readonly host: string;
  readonly port: number;
  readonly tls: BackendTls;
  readonly ca: Buffer | undefined;
}

/** A backend_ca file's content, read once per path into `cache` (a reload gives a new cache, so files are read again). */
export function backendCa(cache: Map<string, Buffer>, path: string): Buffer {
  let ca = cache.get(path);
  if (ca === undefined) cache.set(path, (ca = readFileSync(path)));
  return ca;
}

export interface UpstreamLogin {
  readonly user: string;
  readonly database: string;
  /** Allow-listed startup parameters (without user and database). */
  readonly params: ReadonlyMap<string, string>;
  readonly credential: UpstreamCredential | { kind: 'none' };
}

export interface UpstreamConnection {
  readonly socket: net.Socket;
  readonly parameters: Map<string, string>;
  readonly processId: number;
  readonly secretKey: Buffer;
  readonly txStatus: number;
  readonly tlsVersion: string | null;
}

/**
 * The upstream refused the login with an ErrorResponse that the client may see unchanged
 * (3D000, 53300, 57P03…), as PostgreSQL would show it. Credential refusals become 08006 instead.
 */
export class UpstreamRefused extends Error {
  constructor(
    readonly frame: Buffer,
    readonly sqlstate: string,
  ) {
    super(`upstream refused login: ${sqlstate}`);
  }
}

const LOGIN_TYPES = new Set<number>([
  Backend.Authentication,
  Backend.ParameterStatus,
  Backend.BackendKeyData,
  Backend.ReadyForQuery,
  Backend.ErrorResponse,
  Backend.NoticeResponse,
  Backend.NegotiateProtocolVersion,
]);

/** Opens the TCP (and TLS) connection. Resolves with a socket ready for the startup message. */
async function openSocket(target: UpstreamTarget, signal: AbortSignal): Promise<{ socket: net.Socket; tlsVersion: string | null }> {
  const raw = net.connect({ host: target.host, port: target.port, noDelay: true });
  const onAbort = (): void => void raw.destroy(new Error('backend connect timeout'));
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    await new Promise<void>((resolve, reject) => {
      raw.once('connect', resolve);
      raw.once('error', reject);
    });
    if (target.tls === 'disable') return { socket: raw, tlsVersion: null };
    raw.write(SSL_REQUEST);
    const answer = await new Promise<Buffer>((resolve, reject) => {
      raw.once('data', resolve);
      raw.once('error', reject);
      raw.once('close', () => reject(new Error('backend closed during SSLRequest')));
    });
    raw.removeAllListeners('data');
    raw.removeAllListeners('close');
    // The answer is one byte; anything more was injected before TLS (CVE-2021-23222).
    if (answer.length !== 1) throw new Error('backend sent data after its SSLRequest answer');
    if (!answer.equals(SSL_ACCEPTED)) throw new Error('backend does not accept TLS');
    raw.pause();
    const verify = target.tls === 'verify-full';
    const servername = net.isIP(target.host) === 0 ? target.host : undefined;
    const secure = tls.connect({
      socket: raw,
      ...(servername === undefined ? {} : { servername }),
      ...(target.ca === undefined ? {} : { ca: target.ca }),
      rejectUnauthorized: verify,
      ...(verify ? {} : { checkServerIdentity: () => undefined }),
    });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    secure.setNoDelay(true);
    return { socket: secure, tlsVersion: secure.getProtocol() };
  } catch (err) {
    raw.destroy();
    throw err;
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

function md5Password(user: string, password: string, salt: Buffer): string {
  const inner = createHash('md5').update(password + user).digest('hex');
  return `md5${createHash('md5').update(Buffer.concat([Buffer.from(inner), salt])).digest('hex')}`;
}

/** Runs the login conversation over `socket`. */
function login(socket: net.Socket, loginInfo: UpstreamLogin, tlsVersion: string | null, signal: AbortSignal): Promise<UpstreamConnection> {
  return new Promise<UpstreamConnection>((resolve, reject) => {
    const parameters = new Map<string, string>();
    let processId = 0;
    let secretKey = Buffer.alloc(0);
    let scram: ScramClientExchange | null = null;
    let busy: Promise<void> = Promise.resolve();
    let done = false;

    const finish = (err: Error | null, value?: UpstreamConnection): void => {
      if (done) return;
      done = true;
      socket.removeListener('data', onData);
      socket.removeListener('error', onError);
      socket.removeListener('close', onClose);
      signal.removeEventListener('abort', onAbort);
      if (err !== null) {
        socket.destroy();
        reject(err);
      } else resolve(value!);
    };
    const onError = (err: Error): void => finish(err);
    const onClose = (): void => finish(new Error('backend closed the connection during login'));
    const onAbort = (): void => finish(new Error('backend login timeout'));

    const handle = async (type: number, body: Buffer): Promise<void> => {
      switch (type) {
        case Backend.Authentication: {
          if (body.length < 4) throw new Error('short authentication message');
          const code = body.readUInt32BE(0);
          const cred = loginInfo.credential;
          if (code === AuthCode.Ok) return;
          if (code === AuthCode.CleartextPassword || code === AuthCode.MD5Password) {
            if (cred.kind !== 'password') throw new Error(`backend asked for a password (code ${code}) but pgwarden holds none for this role`);
            if (code === AuthCode.CleartextPassword) {
              if (tlsVersion === null) throw new Error('refusing to send a cleartext password without TLS');
              socket.write(serialize.password(cred.password));
            } else {
              if (body.length !== 8) throw new Error('bad MD5 salt');
              socket.write(serialize.password(md5Password(loginInfo.user, cred.password, body.subarray(4, 8))));
            }
            return;
          }
          if (code === AuthCode.SASL) {
            const mechs = body.toString('utf8', 4).split('\0');
            if (!mechs.includes(SCRAM_SHA_256)) throw new Error('backend offers no SCRAM-SHA-256');
            if (cred.kind === 'none') throw new Error('backend asked for SCRAM but pgwarden holds no credential for this role');
            scram = new ScramClientExchange(cred);
            socket.write(serialize.sendSASLInitialResponseMessage(SCRAM_SHA_256, scram.clientFirst()));
            return;
          }
          if (code === AuthCode.SASLContinue) {
            if (scram === null) throw new Error('SASLContinue before SASL');
            const final = await scram.serverFirst(body.toString('utf8', 4));
            socket.write(serialize.sendSCRAMClientFinalMessage(final));
            return;
          }
          if (code === AuthCode.SASLFinal) {
            if (scram === null) throw new Error('SASLFinal before SASL');
            scram.serverFinal(body.toString('utf8', 4));
            return;
          }
          throw new Error(`unsupported backend authentication request ${code}`);
        }
        case Backend.ParameterStatus: {
          const p = decodeParameterStatus(body);
          if (p === null) throw new Error('malformed ParameterStatus');
          parameters.set(p.name, p.value);
          return;
        }
        case Backend.BackendKeyData:
          if (body.length < 8 || body.length > 4 + 256) throw new Error('malformed BackendKeyData');
          processId = body.readUInt32BE(0);
          secretKey = Buffer.from(body.subarray(4));
          return;
        case Backend.ReadyForQuery: {
          const status = body[0];
          if (body.length !== 1 || (status !== TxStatus.Idle && status !== TxStatus.InTransaction && status !== TxStatus.Failed)) {
            throw new Error('malformed ReadyForQuery');
          }
          finish(null, { socket, parameters, processId, secretKey, txStatus: status, tlsVersion });
          return;
        }
        case Backend.ErrorResponse: {
          const code = readErrorField(body, ErrorField.Code) ?? '';
          if (code === '28P01' || code === '28000') throw Errors.upstreamConnect('backend_auth_failed');
          // An ErrorResponse without a SQLSTATE is hostile or broken (PgBouncer CVE-2026-6666).
          if (!/^[0-9A-Z]{5}$/.test(code)) throw new Error('backend ErrorResponse without a valid SQLSTATE');
          throw new UpstreamRefused(encodeErrorResponseBody(body), code);
        }
        default:
          return; // NoticeResponse, NegotiateProtocolVersion: nothing to do during login
      }
    };

    let pendingType = 0;
    const handler: ScanHandler = {
      maxFrameLength: (type) => (LOGIN_TYPES.has(type) ? Limits.upstreamLoginMessageBytes : -1),
      wantsBody: () => true,
      onFrame: (type, _length, body) => {
        pendingType = type;
        const copy = Buffer.from(body!);
        busy = busy.then(() => (done ? undefined : handle(pendingType === type ? type : type, copy))).catch((err: unknown) => finish(err as Error));
      },
    };
    const scanner = new FrameScanner(handler);
    const onData = (chunk: Buffer): void => {
      if (scanner.scan(chunk) >= 0) finish(new Error(`backend violated the protocol during login: ${scanner.error?.message ?? ''}`));
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
    signal.addEventListener('abort', onAbort, { once: true });

    const startup = new Map<string, string>([
      ['user', loginInfo.user],
      ['database', loginInfo.database],
      ...loginInfo.params,
    ]);
    socket.write(encodeStartupMessage(startup));
  });
}

/**
 * Connects and logs in within `timeoutMs`. Throws UpstreamRefused (pass the frame on) or PgError 08006.
 */
export async function connectUpstream(target: UpstreamTarget, loginInfo: UpstreamLogin, timeoutMs: number): Promise<UpstreamConnection> {
  const signal = AbortSignal.timeout(timeoutMs);
  let socket: net.Socket | undefined;
  try {
    const opened = await openSocket(target, signal);
    socket = opened.socket;
    const conn = await login(socket, loginInfo, opened.tlsVersion, signal);
    socket.pause();
    return conn;
  } catch (err) {
    socket?.destroy();
    if (err instanceof UpstreamRefused || err instanceof PgError) throw err;
    throw Errors.upstreamConnect(signal.aborted ? 'backend_timeout' : 'backend_connect_failed', err);
  }
}

/**
 * Sends a CancelRequest for an upstream key, as a client would. `onDone` runs once the server
 * has closed that connection (it has then signalled the backend) or the attempt failed.
 */
export function sendUpstreamCancel(target: UpstreamTarget, processId: number, secretKey: Buffer, timeoutMs: number, onDone: () => void = () => undefined): void {
  const req = encodeCancelRequest(processId, secretKey);
  const signal = AbortSignal.timeout(timeoutMs);
  let done = false;
  const finish = (): void => {
    if (done) return;
    done = true;
    onDone();
  };
  openSocket(target, signal)
    .then(({ socket }) => {
      socket.setTimeout(timeoutMs, () => socket.destroy());
      socket.on('error', () => socket.destroy());
      socket.on('close', finish);
      socket.end(req);
      socket.resume();
    })
    .catch(finish); // the server is gone: nothing to cancel
}
