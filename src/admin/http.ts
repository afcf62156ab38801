/**
 * The operator's HTTP listener: GET /metrics (Prometheus text), /pools (backend pools, JSON),
 * /healthz (the process runs), /readyz (it accepts new sessions: not draining). Admin commands arrive with issue 5.
 */
import http from 'node:http';
import type { Metrics } from '../observability/metrics.js';
import type { Logger } from '../observability/logger.js';

/** What GET /pools shows: one row per tenant pool, like PgBouncer's SHOW POOLS. */
export type PoolsView = () => unknown;

export function createAdminServer(metrics: Metrics, isReady: () => boolean, log: Logger, pools: PoolsView = () => []): http.Server {
  return http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { 'content-type': 'application/json', allow: 'GET, HEAD' }).end('{"error":"method not allowed"}\n');
      return;
    }
    if (url === '/metrics') {
      metrics.registry
        .metrics()
        .then((body) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(body))
        .catch((err: unknown) => {
          log.error({ err }, 'metrics collection failed');
          res.writeHead(500, { 'content-type': 'application/json' }).end('{"error":"metrics unavailable"}\n');
        });
      return;
    }
    if (url === '/pools') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(`${JSON.stringify(pools())}\n`);
      return;
    }
    if (url === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}\n');
      return;
    }
    if (url === '/readyz') {
      const ready = isReady();
      res.writeHead(ready ? 200 : 503, { 'content-type': 'application/json' }).end(ready ? '{"status":"ready"}\n' : '{"status":"draining"}\n');
      return;
    }
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not found"}\n');
  });
}
