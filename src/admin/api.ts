/**
 * The operators' admin API (`[admin] listen`): HTTP with JSON in and out, a bearer token checked
 * against the SHA-256 in the config, and one `admin.command` audit record per call. The auditor
 * token (`auditor_token_sha256`) is refused here with 403 on every route: it reads the audit in the
 * browser view under /ui/ (ui/handler.ts), served by the same listener. It parses,
 * authenticates, routes (ADMIN_ROUTES, the paths of the OpenAPI document openapi.ts, which it serves
 * at GET /openapi.json) and records; what a command does is the AdminBackend's part (the single
 * process's Proxy, or the primary of a worker set).
 */
import http from 'node:http';
import type { AuditSink } from '../audit/log.js';
import type { Logger } from '../observability/logger.js';
import { TENANT_ID_RE } from '../config/schema.js';
import { isRevocationId, MAX_REVOCATION_MS, type StaffRevocation } from './revocations.js';
import { OPENAPI } from './openapi.js';
import { HttpError, SESSION_ID_RE, type AdminBackend, type AdminRoute, type Bound, type Reply, type RouteRequest } from './route.js';
import { CATALOG_DOWN_MESSAGE, TENANT_ROUTES } from './tenant-routes.js';
import { RefusalAudit } from './refusals.js';
import { tokenRole, type AdminCredentials } from './tokens.js';
import { createUiHandler, isUiPath } from './ui/handler.js';
import type { AuditConfig } from '../config/schema.js';

export { tokenMatches } from './tokens.js';

export interface AdminApiOptions extends AdminCredentials {
  /** Where the audit view (/ui/) reads the audit: the current [audit] section. */
  readonly auditConfig: () => AuditConfig;
  readonly backend: AdminBackend;
  readonly audit: () => AuditSink;
  readonly log: Logger;
}

export const MAX_BODY_BYTES = 64 * 1024;

export interface AdminApi {
  readonly server: http.Server;
  /** Writes the pending summary of refused calls (at shutdown). */
  stop(): void;
}

export function createAdminApi(opts: AdminApiOptions): AdminApi {
  const refusals = new RefusalAudit(opts.audit);
  const ui = createUiHandler({ ...opts, refusals });
  const server = http.createServer((req, res) => {
    // The audit view (/ui/) answers HTML with its own login; the rest is the JSON API.
    if (isUiPath(req.url)) return ui.serve(req, res);
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
  return {
    server,
    stop: () => {
      refusals.stop();
      ui.close();
    },
  };
}

async function handle(opts: AdminApiOptions, refusals: RefusalAudit, req: http.IncomingMessage): Promise<Reply> {
  const addr = req.socket.remoteAddress ?? 'unknown';
  const url = new URL(req.url ?? '/', 'http://admin.invalid');
  const method = req.method ?? 'GET';
  const match = matchRoute(opts.backend, url, method);
  const command = match?.route.command ?? 'unknown';
  const target = match?.bound.target ?? null;

  const presented = /^Bearer +([^\s]+) *$/i.exec(req.headers.authorization ?? '')?.[1];
  const role = presented === undefined ? undefined : tokenRole(presented, opts);
  if (role === undefined) {
    // RFC 6750 §3: no credentials → just the scheme; wrong ones → error="invalid_token".
    const challenge = presented === undefined ? 'Bearer realm="pgwarden-admin"' : 'Bearer realm="pgwarden-admin", error="invalid_token"';
    refusals.record({ command, target, addr });
    opts.log.warn({ command, client: addr }, 'admin API: refused, bad or missing token');
    return [401, { error: presented === undefined ? 'missing bearer token' : 'invalid bearer token' }, { 'www-authenticate': challenge }];
  }
  if (role === 'auditor') {
    // The API has no audit routes: the auditor token reads the audit in /ui/ and may call nothing
    // here, reads included (sessions and pools are live state, not the audit). RFC 6750 §3.1.
    opts.audit().append({ event: 'admin.command', command, target, role, outcome: { success: false, status: 403 }, client: { addr } });
    opts.log.warn({ command, client: addr }, 'admin API: refused, the auditor token may only read the audit');
    return [
      403,
      { error: 'the auditor token may only read the audit (/ui/)' },
      { 'www-authenticate': 'Bearer realm="pgwarden-admin", error="insufficient_scope"' },
    ];
  }

  let reply: Reply;
  try {
    if (match === undefined) throw new HttpError(404, 'not found');
    if (!match.allowed.includes(method)) throw new HttpError(405, 'method not allowed', { allow: match.allowed.join(', ') });
    const body = await readJson(req);
    reply = await match.bound.run(body);
  } catch (err) {
    if (err instanceof HttpError) {
      if (err.cause !== undefined) opts.log.error({ err: err.cause, command }, `admin command failed: ${err.message}`);
      reply = [err.status, { error: err.message, ...err.extra }, err.headers];
    } else {
      // The command ran here; what failed is telling the other instances (Redis down).
      opts.log.error({ err, command }, 'admin command not shared with other instances');
      reply = [503, { error: `${command} applied on this instance only: shared state unavailable` }];
    }
  }
  const [status] = reply;
  opts.audit().append({
    event: 'admin.command',
    command,
    target,
    outcome: { success: status < 400, status },
    client: { addr },
  });
  opts.log.info({ command, target, status, client: addr }, 'admin command');
  return reply;
}

const terminateSession = ({ backend, params }: RouteRequest): Bound => {
  const id = params['id']!.toLowerCase();
  const valid = SESSION_ID_RE.test(id);
  return {
    target: valid ? { session: id } : null,
    run: async () => {
      if (!valid) throw new HttpError(400, 'invalid session id');
      if (!(await backend.terminateSession(id))) throw new HttpError(404, 'no such session');
      return [200, { session: id, terminated: true }];
    },
  };
};

const suspendTenant =
  (suspended: boolean) =>
  ({ backend, params }: RouteRequest): Bound => {
    const tenant = params['id']!;
    const valid = TENANT_ID_RE.test(tenant);
    return {
      target: valid ? { tenant } : null,
      run: async () => {
        if (!valid) throw new HttpError(400, 'invalid tenant id');
        const known = await backend.hasTenant(tenant).catch((err: unknown) => {
          throw new HttpError(503, CATALOG_DOWN_MESSAGE, {}, {}, err);
        });
        if (!known) throw new HttpError(404, 'no such tenant');
        await backend.suspend(tenant, suspended);
        return [200, { tenant, suspended }];
      },
    };
  };

/** A list with an optional `?tenant=ID` filter, answered as `{ [key]: rows }`. */
const listByTenant =
  (key: string, list: (backend: AdminBackend, tenant: string | null) => Promise<readonly object[]>) =>
  ({ backend, query }: RouteRequest): Bound => {
    const tenant = query.get('tenant');
    const valid = tenant === null || TENANT_ID_RE.test(tenant);
    return {
      target: tenant !== null && valid ? { tenant } : null,
      run: async () => {
        if (!valid) throw new HttpError(400, 'invalid tenant id');
        return [200, { [key]: await list(backend, tenant) }];
      },
    };
  };

/** Every route of the API; a new one goes here and into openapi.ts (the test fails otherwise). */
export const ADMIN_ROUTES: readonly AdminRoute[] = [
  { method: 'GET', path: '/sessions', command: 'sessions.list', bind: listByTenant('sessions', (backend, tenant) => backend.listSessions(tenant)) },
  {
    method: 'GET',
    path: '/pools',
    command: 'pools.list',
    bind: ({ backend }) => ({ target: null, run: async () => [200, { pools: await backend.listPools() }] }),
  },
  { method: 'GET', path: '/limits', command: 'limits.list', bind: listByTenant('limits', (backend, tenant) => backend.listLimits(tenant)) },
  { method: 'DELETE', path: '/sessions/{id}', command: 'session.terminate', bind: terminateSession },
  { method: 'POST', path: '/sessions/{id}/terminate', command: 'session.terminate', bind: terminateSession },
  { method: 'POST', path: '/tenants/{id}/suspend', command: 'tenant.suspend', bind: suspendTenant(true) },
  { method: 'POST', path: '/tenants/{id}/resume', command: 'tenant.resume', bind: suspendTenant(false) },
  {
    method: 'GET',
    path: '/staff/revocations',
    command: 'staff.revocations',
    bind: ({ backend }) => ({
      target: null,
      run: () => {
        const revocations = [...backend.listRevocations()]
          .sort((a, b) => a.untilMs - b.untilMs)
          .map((r) => ({ by: r.by, id: r.id, until: new Date(r.untilMs).toISOString() }));
        return Promise.resolve([200, { revocations }]);
      },
    }),
  },
  {
    method: 'POST',
    path: '/staff/revoke',
    command: 'staff.revoke',
    bind: ({ backend }) => {
      // The target is only known once the body is read: filled in by run().
      const target: { jti?: string; sub?: string } = {};
      return {
        target,
        run: async (body) => {
          const rev = parseRevocation(body, backend.revocationTtlMs());
          target[rev.by] = rev.id;
          await backend.revokeStaff(rev);
          return [200, { revoked: { [rev.by]: rev.id }, until: new Date(rev.untilMs).toISOString() }];
        },
      };
    },
  },
  {
    method: 'POST',
    path: '/reload',
    command: 'reload',
    bind: ({ backend }) => ({
      target: null,
      run: async () => {
        await backend.reload();
        return [202, { status: 'reload requested' }];
      },
    }),
  },
  ...TENANT_ROUTES,
  {
    method: 'GET',
    path: '/openapi.json',
    command: 'openapi.get',
    bind: () => ({ target: null, run: () => Promise.resolve([200, OPENAPI]) }),
  },
];

/** Each route's path as a regular expression, `{name}` a non-empty segment captured under that name. */
const COMPILED_ROUTES = ADMIN_ROUTES.map((route) => {
  const names: string[] = [];
  const source = route.path
    .split('/')
    .map((segment) => {
      const param = /^\{(\w+)\}$/.exec(segment);
      if (param === null) return segment.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      names.push(param[1]!);
      return '([^/]+)';
    })
    .join('/');
  return { route, names, re: new RegExp(`^${source}$`) };
});

/** The route for this path and method; with a wrong method, the path's first route and what is allowed there. */
function matchRoute(backend: AdminBackend, url: URL, method: string): { route: AdminRoute; bound: Bound; allowed: readonly string[] } | undefined {
  const hits: { route: AdminRoute; params: Record<string, string> }[] = [];
  for (const { route, names, re } of COMPILED_ROUTES) {
    const m = re.exec(url.pathname);
    if (m === null) continue;
    const params: Record<string, string> = {};
    names.forEach((name, i) => (params[name] = safeDecode(m[i + 1]!)));
    hits.push({ route, params });
  }
  const hit = hits.find((h) => h.route.method === method) ?? hits[0];
  if (hit === undefined) return undefined;
  return { route: hit.route, bound: hit.route.bind({ backend, params: hit.params, query: url.searchParams }), allowed: hits.map((h) => h.route.method) };
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
