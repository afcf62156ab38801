/**
 * The operators' admin API (`[admin] listen`): HTTP with JSON in and out, a bearer token checked
 * against the SHA-256 in the config, and one `admin.command` audit record per call. It parses,
 * authenticates, routes and records; what a command does is the AdminBackend's part (the single
 * process's Proxy, or the primary of a worker set).
 */
import http from 'node:http';
import { createHash, timingSafeEqual } from 'node:crypto';
import type { AuditSink } from '../audit/log.js';
import type { Logger } from '../observability/logger.js';
import { TENANT_ID_RE } from '../config/schema.js';
import { isRevocationId, MAX_REVOCATION_MS, type StaffRevocation } from './revocations.js';

/** What the admin API can do; every method acts cluster-wide where the issue says so. */
export interface AdminBackend {
  /** Sessions on this instance (all its workers), optionally of one tenant. */
  listSessions(tenant: string | null): Promise<readonly object[]>;
  /** Ends the session (57P01) if it is on this instance; false if there is none with that id. */
  terminateSession(id: string): Promise<boolean>;
  /** Whether the tenant is configured (suspending a typo would silently do nothing). */
  hasTenant(id: string): boolean;
  suspend(tenantId: string, suspended: boolean): Promise<void>;
  /** Remembers the revocation on every instance and ends the matching staff sessions there. */
  revokeStaff(rev: StaffRevocation): Promise<void>;
  reload(): Promise<void>;
  /** How long a revocation must be remembered: any token valid now expires within this. */
  revocationTtlMs(): number;
}

export interface AdminApiOptions {
  /** Hex SHA-256 of the token, read per request so a reload can rotate it; undefined refuses every call. */
  readonly tokenSha256: () => string | undefined;
  readonly backend: AdminBackend;
  readonly audit: () => AuditSink;
  readonly log: Logger;
}

export const MAX_BODY_BYTES = 64 * 1024;
/** Refused calls recorded one by one up to this many per window, then counted in one record. */
const REFUSALS_PER_WINDOW = 20;
const REFUSAL_WINDOW_MS = 60_000;
const SESSION_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** An answer: status and JSON body. Errors are always {"error": "..."}. */
type Reply = readonly [status: number, body: object, headers?: Record<string, string>];

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

interface Route {
  /** Bounded label for the audit record and the log. */
  readonly command: string;
  /** What the command acts on (validated, so no attacker text reaches the audit log), or null. */
  readonly target: object | null;
  readonly methods: readonly string[];
  readonly run: (body: unknown) => Promise<Reply>;
}

export interface AdminApi {
  readonly server: http.Server;
  /** Writes the pending summary of refused calls (at shutdown). */
  stop(): void;
}

export function createAdminApi(opts: AdminApiOptions): AdminApi {
  const refusals = new RefusalAudit(opts.audit);
  const server = http.createServer((req, res) => {
    handle(opts, refusals, req).then(
      ([status, body, headers]) => {
        // A body we did not read (too large, refused) must not be parsed as the next request.
        const close = !req.complete ? { connection: 'close' } : {};
        res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...close, ...headers }).end(`${JSON.stringify(body)}\n`);
        if (!req.complete) res.once('finish', () => req.destroy());
      },
      (err: unknown) => {
        opts.log.error({ err }, 'admin API: internal error');
        res.writeHead(500, { 'content-type': 'application/json', connection: 'close' }).end('{"error":"internal error"}\n');
      },
    );
  });
  // Operators' scripts, not browsers: short timeouts bound what a stuck client holds.
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  return { server, stop: () => refusals.stop() };
}

async function handle(opts: AdminApiOptions, refusals: RefusalAudit, req: http.IncomingMessage): Promise<Reply> {
  const addr = req.socket.remoteAddress ?? 'unknown';
  const url = new URL(req.url ?? '/', 'http://admin.invalid');
  const method = req.method ?? 'GET';
  const route = matchRoute(opts.backend, url);

  const hash = opts.tokenSha256();
  const presented = /^Bearer +([^\s]+) *$/i.exec(req.headers.authorization ?? '')?.[1];
  if (hash === undefined || presented === undefined || !tokenMatches(presented, hash)) {
    // RFC 6750 §3: no credentials → just the scheme; wrong ones → error="invalid_token".
    const challenge = presented === undefined ? 'Bearer realm="pgwarden-admin"' : 'Bearer realm="pgwarden-admin", error="invalid_token"';
    refusals.record({ command: route?.command ?? 'unknown', target: route?.target ?? null, addr });
    opts.log.warn({ command: route?.command ?? 'unknown', client: addr }, 'admin API: refused, bad or missing token');
    return [401, { error: presented === undefined ? 'missing bearer token' : 'invalid bearer token' }, { 'www-authenticate': challenge }];
  }

  let reply: Reply;
  try {
    if (route === undefined) throw new HttpError(404, 'not found');
    if (!route.methods.includes(method)) throw new HttpError(405, 'method not allowed', { allow: route.methods.join(', ') });
    const body = await readJson(req);
    reply = await route.run(body);
  } catch (err) {
    if (err instanceof HttpError) reply = [err.status, { error: err.message }, err.headers];
    else {
      // The command ran here; what failed is telling the other instances (Redis down).
      opts.log.error({ err, command: route?.command }, 'admin command not shared with other instances');
      reply = [503, { error: `${route?.command ?? 'command'} applied on this instance only: shared state unavailable` }];
    }
  }
  const [status] = reply;
  opts.audit().append({
    event: 'admin.command',
    command: route?.command ?? 'unknown',
    target: route?.target ?? null,
    outcome: { success: status < 400, status },
    client: { addr },
  });
  opts.log.info({ command: route?.command ?? 'unknown', target: route?.target ?? null, status, client: addr }, 'admin command');
  return reply;
}

/** SHA-256 of what was presented against the configured hash, in constant time (both 32 bytes). */
export function tokenMatches(presented: string, sha256Hex: string): boolean {
  const want = Buffer.from(sha256Hex, 'hex');
  const got = createHash('sha256').update(presented, 'utf8').digest();
  return want.length === got.length && timingSafeEqual(got, want);
}

function matchRoute(backend: AdminBackend, url: URL): Route | undefined {
  const p = url.pathname;
  if (p === '/sessions') {
    const tenant = url.searchParams.get('tenant');
    const valid = tenant === null || TENANT_ID_RE.test(tenant);
    return {
      command: 'sessions.list',
      target: tenant !== null && valid ? { tenant } : null,
      methods: ['GET'],
      run: async () => {
        if (!valid) throw new HttpError(400, 'invalid tenant id');
        return [200, { sessions: await backend.listSessions(tenant) }];
      },
    };
  }
  let m = /^\/sessions\/([^/]+)(\/terminate)?$/.exec(p);
  if (m !== null) {
    const id = safeDecode(m[1]!).toLowerCase();
    const valid = SESSION_ID_RE.test(id);
    return {
      command: 'session.terminate',
      target: valid ? { session: id } : null,
      methods: m[2] === undefined ? ['DELETE'] : ['POST'],
      run: async () => {
        if (!valid) throw new HttpError(400, 'invalid session id');
        if (!(await backend.terminateSession(id))) throw new HttpError(404, 'no such session');
        return [200, { session: id, terminated: true }];
      },
    };
  }
  m = /^\/tenants\/([^/]+)\/(suspend|resume)$/.exec(p);
  if (m !== null) {
    const tenant = safeDecode(m[1]!);
    const valid = TENANT_ID_RE.test(tenant);
    const suspended = m[2] === 'suspend';
    return {
      command: suspended ? 'tenant.suspend' : 'tenant.resume',
      target: valid ? { tenant } : null,
      methods: ['POST'],
      run: async () => {
        if (!valid) throw new HttpError(400, 'invalid tenant id');
        if (!backend.hasTenant(tenant)) throw new HttpError(404, 'no such tenant');
        await backend.suspend(tenant, suspended);
        return [200, { tenant, suspended }];
      },
    };
  }
  if (p === '/staff/revoke') {
    // The target is only known once the body is read: filled in by run().
    const target: { jti?: string; sub?: string } = {};
    return {
      command: 'staff.revoke',
      target,
      methods: ['POST'],
      run: async (body) => {
        const rev = parseRevocation(body, backend.revocationTtlMs());
        target[rev.by] = rev.id;
        await backend.revokeStaff(rev);
        return [200, { revoked: { [rev.by]: rev.id }, until: new Date(rev.untilMs).toISOString() }];
      },
    };
  }
  if (p === '/reload') {
    return {
      command: 'reload',
      target: null,
      methods: ['POST'],
      run: async () => {
        await backend.reload();
        return [202, { status: 'reload requested' }];
      },
    };
  }
  return undefined;
}

/** A path segment, percent-decoded; malformed escapes give "" (which no validator accepts). */
function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return '';
  }
}

function parseRevocation(body: unknown, ttlMs: number): StaffRevocation {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new HttpError(400, 'expected a JSON object {"jti": "..."} or {"sub": "..."}');
  const b = body as Record<string, unknown>;
  const keys = Object.keys(b);
  if (keys.length !== 1 || (keys[0] !== 'jti' && keys[0] !== 'sub')) throw new HttpError(400, 'expected exactly one of "jti" or "sub"');
  const by = keys[0];
  const id = b[by];
  if (!isRevocationId(id)) throw new HttpError(400, `"${by}" must be a string of 1 to 256 printable characters`);
  return { by, id, untilMs: Date.now() + Math.min(ttlMs, MAX_REVOCATION_MS) };
}

/** The body as JSON: none (or empty) is null; over MAX_BODY_BYTES 413; not JSON 400. */
async function readJson(req: http.IncomingMessage): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_BODY_BYTES) throw new HttpError(413, `request body over ${MAX_BODY_BYTES} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, `request body over ${MAX_BODY_BYTES} bytes`);
    chunks.push(c as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') return null;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new HttpError(400, 'request body is not valid JSON');
  }
}

/**
 * Refused calls (401) are audited too, one record each up to REFUSALS_PER_WINDOW a minute; past
 * that they are counted and written as one record with `count` when the window ends, so a token
 * guesser cannot flood the audit log.
 */
class RefusalAudit {
  private inWindow = 0;
  private suppressed = 0;
  private windowStart = new Date();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly audit: () => AuditSink) {
    this.timer = setInterval(() => this.roll(), REFUSAL_WINDOW_MS);
    this.timer.unref();
  }

  record(e: { command: string; target: object | null; addr: string }): void {
    if (this.inWindow++ < REFUSALS_PER_WINDOW) {
      this.audit().append({ event: 'admin.command', command: e.command, target: e.target, outcome: { success: false, status: 401 }, client: { addr: e.addr } });
    } else this.suppressed++;
  }

  stop(): void {
    clearInterval(this.timer);
    this.roll();
  }

  private roll(): void {
    const end = new Date();
    if (this.suppressed > 0) {
      this.audit().append({
        event: 'admin.command',
        command: 'refused',
        target: null,
        outcome: { success: false, status: 401 },
        count: this.suppressed,
        window: { start: this.windowStart.toISOString(), end: end.toISOString() },
      });
    }
    this.inWindow = 0;
    this.suppressed = 0;
    this.windowStart = end;
  }
}
