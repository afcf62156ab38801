/**
 * The operator's HTTP listener. Reads: GET /metrics (Prometheus text), /pools (backend pools,
 * JSON), /healthz (the process runs), /readyz (it accepts new sessions: not draining).
 * Commands (POST, only when `[metrics] admin_token_env` names a token, sent as
 * `Authorization: Bearer <token>`): /tenants/<id>/suspend, /tenants/<id>/resume (every instance,
 * through the cluster bus), /reload (every instance re-reads its configuration file).
 */
import http from 'node:http';
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Metrics } from '../observability/metrics.js';
import type { Logger } from '../observability/logger.js';
import { TENANT_ID_RE } from '../config/schema.js';

/** What GET /pools shows: one row per tenant pool, like PgBouncer's SHOW POOLS. */
export type PoolsView = () => unknown;  // or a Promise of it (the primary asks its workers)

export interface AdminCommands {
  suspend(tenantId: string, suspended: boolean): Promise<void>;
  reload(): Promise<void>;
}

export interface AdminOptions {
  readonly metrics: Metrics;
  /** Overrides the exposition text (the primary aggregates its workers' metrics). */
  readonly metricsText?: () => Promise<string>;
  readonly isReady: () => boolean;
  readonly log: Logger;
  readonly pools?: PoolsView;
  /** The bearer token for commands; undefined turns commands off (404). */
  readonly token?: () => string | undefined;
  readonly commands?: AdminCommands;
}

const JSON_TYPE = { 'content-type': 'application/json' };

export function createAdminServer(opts: AdminOptions): http.Server {
  const { metrics, isReady, log } = opts;
  const pools = opts.pools ?? ((): unknown => []);
  const metricsText = opts.metricsText ?? (() => metrics.registry.metrics());
  return http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (req.method === 'POST') {
      command(opts, req, url).then(
        ([status, body]) => res.writeHead(status, JSON_TYPE).end(`${JSON.stringify(body)}\n`),
        (err: unknown) => {
          // Commands act on this instance first; what failed is telling the others (Redis down).
          log.error({ err }, 'admin command not shared with other instances');
          res.writeHead(503, JSON_TYPE).end('{"error":"applied on this instance only: shared state unavailable"}\n');
        },
      );
      req.resume();
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { ...JSON_TYPE, allow: 'GET, HEAD, POST' }).end('{"error":"method not allowed"}\n');
      return;
    }
    if (url === '/metrics') {
      metricsText()
        .then((body) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(body))
        .catch((err: unknown) => {
          log.error({ err }, 'metrics collection failed');
          res.writeHead(500, JSON_TYPE).end('{"error":"metrics unavailable"}\n');
        });
      return;
    }
    if (url === '/pools') {
      Promise.resolve(pools()).then(
        (view) => res.writeHead(200, JSON_TYPE).end(`${JSON.stringify(view)}\n`),
        (err: unknown) => {
          log.error({ err }, 'pools view failed');
          res.writeHead(500, JSON_TYPE).end('{"error":"pools unavailable"}\n');
        },
      );
      return;
    }
    if (url === '/healthz') {
      res.writeHead(200, JSON_TYPE).end('{"status":"ok"}\n');
      return;
    }
    if (url === '/readyz') {
      const ready = isReady();
      res.writeHead(ready ? 200 : 503, JSON_TYPE).end(ready ? '{"status":"ready"}\n' : '{"status":"draining"}\n');
      return;
    }
    res.writeHead(404, JSON_TYPE).end('{"error":"not found"}\n');
  });
}

async function command(opts: AdminOptions, req: http.IncomingMessage, url: string): Promise<[number, object]> {
  const token = opts.token?.();
  if (token === undefined || token === '' || opts.commands === undefined) return [404, { error: 'not found' }];
  if (!bearerMatches(req.headers.authorization, token)) {
    opts.log.warn({ url: url.slice(0, 100), client: req.socket.remoteAddress }, 'admin command refused: bad or missing token');
    return [401, { error: 'unauthorized' }];
  }
  const m = /^\/tenants\/([^/]+)\/(suspend|resume)$/.exec(url);
  if (m !== null) {
    const tenantId = m[1]!;
    if (!TENANT_ID_RE.test(tenantId)) return [400, { error: 'invalid tenant id' }];
    const suspended = m[2] === 'suspend';
    await opts.commands.suspend(tenantId, suspended);
    opts.log.info({ tenant: tenantId, suspended }, 'admin command');
    return [200, { tenant: tenantId, suspended }];
  }
  if (url === '/reload') {
    await opts.commands.reload();
    return [202, { status: 'reload requested' }];
  }
  return [404, { error: 'not found' }];
}

/** Constant-time comparison of hashes, so neither the token nor its length leaks through timing. */
function bearerMatches(header: string | undefined, token: string): boolean {
  const m = /^Bearer (.+)$/.exec(header ?? '');
  if (m === null) return false;
  const a = createHash('sha256').update(m[1]!).digest();
  const b = createHash('sha256').update(token).digest();
  return timingSafeEqual(a, b);
}
