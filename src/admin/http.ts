/**
 * The metrics listener (`[metrics] listen`), read-only and without a token: GET /metrics
 * (Prometheus text), /pools (backend pools, JSON), /healthz (the process runs), /readyz (it
 * accepts new sessions: not draining). Commands live on the admin API's own listener (api.ts).
 */
import http from 'node:http';
import type { Metrics } from '../observability/metrics.js';
import type { Logger } from '../observability/logger.js';

/** What GET /pools shows: one row per tenant pool, like PgBouncer's SHOW POOLS. */
export type PoolsView = () => unknown; // or a Promise of it (the primary asks its workers)

export interface AdminOptions {
  readonly metrics: Metrics;
  /** Overrides the exposition text (the primary aggregates its workers' metrics). */
  readonly metricsText?: () => Promise<string>;
  readonly isReady: () => boolean;
  readonly log: Logger;
  readonly pools?: PoolsView;
}

const JSON_TYPE = { 'content-type': 'application/json' };

export function createAdminServer(opts: AdminOptions): http.Server {
  const { metrics, isReady, log } = opts;
  const pools = opts.pools ?? ((): unknown => []);
  const metricsText = opts.metricsText ?? (() => metrics.registry.metrics());
  return http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { ...JSON_TYPE, allow: 'GET, HEAD' }).end('{"error":"method not allowed"}\n');
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
