/**
 * The audit view on the admin listener (/ui/): routes, the login and logout (the only POSTs),
 * the session cookie, security headers, and the admin.command records of logins, logouts and page
 * reads. It only reads the audit: audit-reader.ts reads, pages.ts renders, sessions.ts remembers
 * who is logged in, tokens.ts says whose token it is. The JSON API beside it is api.ts's.
 */
import type http from 'node:http';
import type { AuditSink } from '../../audit/log.js';
import type { AuditConfig } from '../../config/schema.js';
import type { Logger } from '../../observability/logger.js';
import { AuditUsageError, parseTimeMicros, type AuditFilter } from '../../audit/query-source.js';
import type { RefusalAudit } from '../refusals.js';
import { SESSION_ID_RE } from '../route.js';
import { roleTokenSha256, tokenRole, type AdminCredentials } from '../tokens.js';
import { NoAuditError, type SessionQuery } from './audit-reader.js';
import { ReaderBusyError, ThreadedAuditReader } from './reader-thread.js';
import { clearSessionCookie, readSessionCookie, setSessionCookie } from './cookie.js';
import type { Html } from './html.js';
import { chainPage, errorPage, loginPage, sessionPage, sessionsPage, staffPage, type SessionsForm, type StaffForm } from './pages.js';
import { UiSessions, type UiRole } from './sessions.js';
import { STYLE_CSS } from './style.js';
import { LoginThrottle } from './throttle.js';

export interface UiOptions extends AdminCredentials {
  readonly auditConfig: () => AuditConfig;
  readonly audit: () => AuditSink;
  readonly refusals: RefusalAudit;
  readonly log: Logger;
}

export interface UiHandler {
  serve(req: http.IncomingMessage, res: http.ServerResponse): void;
  /** Ends the reader thread (at shutdown). */
  close(): void;
}

/** Sent with every answer of the view. No script may run at all; styles come from /ui/style.css only. */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cache-control': 'no-store',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
};

/** The login form carries one token: anything longer is not one. */
const MAX_LOGIN_BODY_BYTES = 4096;
/** A filter value longer than this matches nothing a record holds; refused rather than searched. */
const MAX_FILTER_CHARS = 256;

/** The view's paths, and /favicon.ico (which browsers ask for by themselves: a 404 here, not a refused API call in the audit). */
export function isUiPath(url: string | undefined): boolean {
  return url !== undefined && (url === '/ui' || url.startsWith('/ui/') || url.startsWith('/ui?') || url === '/favicon.ico');
}

interface Answer {
  readonly status: number;
  readonly body?: Html | string;
  readonly type?: string;
  readonly headers?: Record<string, string>;
}

const redirect = (to: string, headers: Record<string, string> = {}): Answer => ({ status: 303, headers: { location: to, ...headers } });

export function createUiHandler(opts: UiOptions): UiHandler {
  const sessions = new UiSessions();
  const throttle = new LoginThrottle();
  const reader = new ThreadedAuditReader(opts.auditConfig);
  /** A login lasts only while its token is the configured one: a reload that rotates or removes it ends it. */
  const configured = (role: UiRole): string | undefined => roleTokenSha256(role, opts);

  const record = (command: 'ui.login' | 'ui.logout' | 'ui.read', role: UiRole, status: number, addr: string, target: Record<string, unknown> | null = null): void => {
    opts.audit().append({ event: 'admin.command', command, target, role, outcome: { success: status < 400, status }, client: { addr } });
    opts.log.info({ command, role, status, client: addr }, 'admin command');
  };

  async function route(req: http.IncomingMessage): Promise<Answer> {
    const url = new URL(req.url ?? '/', 'http://admin.invalid');
    const method = req.method ?? 'GET';
    const path = url.pathname;
    const addr = req.socket.remoteAddress ?? 'unknown';
    const sid = readSessionCookie(req.headers.cookie);

    if (method === 'POST' && (path === '/ui/login' || path === '/ui/logout')) {
      if (!sameOrigin(req)) return { status: 403, body: errorPage(null, 403, 'Refused: this form was sent from another site.') };
      if (path === '/ui/logout') {
        const role = sessions.end(sid, configured);
        if (role !== undefined) record('ui.logout', role, 303, addr);
        return redirect('/ui/login', { 'set-cookie': clearSessionCookie() });
      }
      return login(req, addr);
    }
    if (method !== 'GET')
      return {
        status: 405,
        body: errorPage(null, 405, 'Method not allowed: the audit view only reads.'),
        headers: { allow: path === '/ui/login' ? 'GET, POST' : 'GET' },
      };
    if (path === '/ui/style.css') return { status: 200, body: STYLE_CSS, type: 'text/css; charset=utf-8' };
    if (path === '/favicon.ico') return { status: 404, type: 'text/plain; charset=utf-8' };

    const role = sessions.touch(sid, configured);
    if (path === '/ui/login') return role === undefined ? { status: 200, body: loginPage(null) } : redirect('/ui/sessions');
    if (role === undefined) return redirect('/ui/login', sid === undefined ? {} : { 'set-cookie': clearSessionCookie() });
    if (path === '/ui' || path === '/ui/') return redirect('/ui/sessions');
    // Reading the audit is itself audited, as the API's reads are: who looked at what, when.
    const answer = await page(role, path, url.searchParams);
    record('ui.read', role, answer.status, addr, readTarget(path, url.searchParams));
    return answer;
  }

  async function login(req: http.IncomingMessage, addr: string): Promise<Answer> {
    if (!throttle.allows(addr)) {
      opts.refusals.record({ command: 'ui.login', target: null, addr });
      return { status: 429, body: loginPage('Too many failed logins from this address; try again in a few minutes.'), headers: { 'retry-after': '300' } };
    }
    const token = await readLoginToken(req);
    const role = token === undefined ? undefined : tokenRole(token, opts);
    if (role === undefined) {
      throttle.failed(addr);
      opts.refusals.record({ command: 'ui.login', target: null, addr });
      opts.log.warn({ command: 'ui.login', client: addr }, 'audit view: login refused, bad or missing token');
      return { status: 401, body: loginPage('Token refused.') };
    }
    throttle.succeeded(addr);
    record('ui.login', role, 303, addr);
    return redirect('/ui/sessions', { 'set-cookie': setSessionCookie(sessions.create(role, configured(role)!)) });
  }

  async function page(role: UiRole, path: string, q: URLSearchParams): Promise<Answer> {
    try {
      if (path === '/ui/sessions') {
        const form = pick(q, ['tenant', 'user', 'staff', 'ticket', 'since', 'until', 'end']) as SessionsForm;
        const parsed = parseFilter(form);
        if (typeof parsed === 'string') return { status: 400, body: sessionsPage(role, form, [], 0, parsed) };
        const query: SessionQuery = { ...parsed, ...(form.end === undefined ? {} : { end: form.end }) };
        const { rows, total } = await reader.sessions(query);
        return { status: 200, body: sessionsPage(role, form, rows, total, null) };
      }
      const one = /^\/ui\/sessions\/([^/]+)$/.exec(path);
      if (one !== null) {
        const id = one[1]!.toLowerCase();
        if (!SESSION_ID_RE.test(id)) return { status: 404, body: errorPage(role, 404, 'No such session id.') };
        return { status: 200, body: sessionPage(role, id, await reader.session(id)) };
      }
      if (path === '/ui/staff') {
        const form = pick(q, ['tenant', 'staff', 'ticket', 'since', 'until', 'decision']) as StaffForm;
        const parsed = parseFilter(form);
        const decision = form.decision === 'allow' || form.decision === 'deny' ? form.decision : undefined;
        if (typeof parsed === 'string' || (form.decision !== undefined && decision === undefined)) {
          return { status: 400, body: staffPage(role, form, [], 0, typeof parsed === 'string' ? parsed : 'Decision: allow or deny.') };
        }
        const { rows, total } = await reader.staffDecisions({ ...parsed, ...(decision === undefined ? {} : { decision }) });
        return { status: 200, body: staffPage(role, form, rows, total, null) };
      }
      if (path === '/ui/chain') return { status: 200, body: chainPage(role, await reader.chain()) };
      return { status: 404, body: errorPage(role, 404, 'No such page.') };
    } catch (err) {
      if (err instanceof NoAuditError) return { status: 503, body: errorPage(role, 503, err.message) };
      if (err instanceof ReaderBusyError) return { status: 503, body: errorPage(role, 503, 'The audit reader is busy with other reads; try again shortly.'), headers: { 'retry-after': '5' } };
      // The cause (a store's host, a file's path) goes to the log only.
      opts.log.error({ err, path }, 'audit view: reading the audit failed');
      return { status: 503, body: errorPage(role, 503, 'The audit log could not be read; the log says why.') };
    }
  }

  return {
    close: () => void reader.close(),
    serve(req, res) {
      route(req).then(
        (a) => {
          const body = a.body === undefined ? '' : String(a.body);
          const close = !req.complete ? { connection: 'close' } : {};
          res.writeHead(a.status, { ...SECURITY_HEADERS, 'content-type': a.type ?? 'text/html; charset=utf-8', ...close, ...a.headers }).end(body);
          if (!req.complete) res.once('finish', () => req.destroy());
        },
        (err: unknown) => {
          opts.log.error({ err }, 'audit view: internal error');
          res.writeHead(500, { ...SECURITY_HEADERS, 'content-type': 'text/plain; charset=utf-8', connection: 'close' }).end('internal error\n');
        },
      );
    },
  };
}

/**
 * A POST must come from the view's own pages (login CSRF: another site logging a victim in as
 * someone else; SameSite=Strict already keeps the cookie off other sites' requests). Browsers send
 * Sec-Fetch-Site with every request: it must say same-origin. Without it, Origin must be this
 * host (a browser sends `Origin: null` under Referrer-Policy no-referrer, which is refused).
 * Tools that send neither header (curl) pass: they are not a victim's browser.
 */
export function sameOrigin(req: http.IncomingMessage): boolean {
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined) return site === 'same-origin';
  const origin = req.headers.origin;
  if (origin === undefined) return true;
  return origin === `http://${req.headers.host ?? ''}` || origin === `https://${req.headers.host ?? ''}`;
}

/** The `token` field of an application/x-www-form-urlencoded body; undefined for anything else. */
async function readLoginToken(req: http.IncomingMessage): Promise<string | undefined> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/x-www-form-urlencoded') return undefined;
  if (Number(req.headers['content-length'] ?? 0) > MAX_LOGIN_BODY_BYTES) return undefined;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_LOGIN_BODY_BYTES) return undefined;
    chunks.push(c as Buffer);
  }
  const token = new URLSearchParams(Buffer.concat(chunks).toString('utf8')).get('token');
  return token === null || token === '' ? undefined : token;
}

/** The filter names the pages read; a ui.read record names those given (each cut to MAX_FILTER_CHARS). */
const FILTER_NAMES = ['tenant', 'user', 'staff', 'ticket', 'since', 'until', 'end', 'decision'] as const;

/** What a ui.read record says was read: the page (its path under /ui/, cut to 128 characters) and the filters given. */
export function readTarget(path: string, q: URLSearchParams): Record<string, unknown> {
  const filter: Record<string, string> = {};
  for (const [k, v] of Object.entries(pick(q, FILTER_NAMES))) filter[k] = v.slice(0, MAX_FILTER_CHARS);
  return { page: path.slice('/ui/'.length, '/ui/'.length + 128), ...(Object.keys(filter).length === 0 ? {} : { filter }) };
}

/** The named query parameters that are set (trimmed, non-empty). */
function pick(q: URLSearchParams, names: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const n of names) {
    const v = q.get(n)?.trim();
    if (v !== undefined && v !== '') out[n] = v;
  }
  return out;
}

/** The form's fields as an AuditFilter (times as `pgwarden audit` takes them), or what is wrong. */
export function parseFilter(form: { tenant?: string; user?: string; staff?: string; ticket?: string; since?: string; until?: string }): AuditFilter | string {
  for (const [k, v] of Object.entries(form)) if (typeof v === 'string' && v.length > MAX_FILTER_CHARS) return `${k}: at most ${MAX_FILTER_CHARS} characters`;
  try {
    const nowMs = Date.now();
    return {
      ...(form.tenant === undefined ? {} : { tenant: form.tenant }),
      ...(form.user === undefined ? {} : { user: form.user }),
      ...(form.staff === undefined ? {} : { staff: form.staff }),
      ...(form.ticket === undefined ? {} : { ticket: form.ticket }),
      ...(form.since === undefined ? {} : { sinceUs: parseTimeMicros(form.since, nowMs) }),
      ...(form.until === undefined ? {} : { untilUs: parseTimeMicros(form.until, nowMs) }),
    };
  } catch (err) {
    if (err instanceof AuditUsageError) return err.message;
    throw err;
  }
}
