/**
 * The operators' two listeners, started and closed the same way by a single process (server.ts)
 * and by the primary of a worker set (cluster/primary.ts): the read-only metrics listener
 * (`[metrics]`, http.ts) and the admin API (`[admin]`, api.ts). Each exists only when its section
 * does; what they answer is the caller's part, through the options.
 */
import type http from 'node:http';
import type net from 'node:net';
import type { Config } from '../config/schema.js';
import { createAdminServer, type AdminOptions } from './http.js';
import { createAdminApi, type AdminApi, type AdminApiOptions } from './api.js';

export interface OperatorListenerOptions {
  readonly metrics: AdminOptions;
  readonly api: AdminApiOptions;
}

export class OperatorListeners {
  private constructor(
    private readonly metrics: http.Server | null,
    private readonly api: AdminApi | null,
  ) {}

  /** Listens where `[metrics]` and `[admin]` say (metrics first); rejects if either cannot listen. */
  static async start(config: Pick<Config, 'metrics' | 'admin'>, opts: OperatorListenerOptions): Promise<OperatorListeners> {
    let metrics: http.Server | null = null;
    if (config.metrics !== undefined) {
      metrics = createAdminServer(opts.metrics);
      await listen(metrics, config.metrics);
    }
    let api: AdminApi | null = null;
    if (config.admin !== undefined) {
      api = createAdminApi(opts.api);
      await listen(api.server, config.admin);
    }
    return new OperatorListeners(metrics, api);
  }

  /** Where the metrics listener listens (port 0 in the config: the one chosen), or null. */
  get metricsAddress(): { host: string; port: number } | null {
    return addressOf(this.metrics);
  }

  get adminAddress(): { host: string; port: number } | null {
    return addressOf(this.api?.server ?? null);
  }

  /** Writes the admin API's pending audit summary, drops open connections and closes both. */
  async close(): Promise<void> {
    this.api?.stop();
    await Promise.all([closeNow(this.metrics), closeNow(this.api?.server ?? null)]);
  }
}

function listen(server: http.Server, at: { readonly listenHost: string; readonly listenPort: number }): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(at.listenPort, at.listenHost, () => resolve());
  });
}

function addressOf(server: http.Server | null): { host: string; port: number } | null {
  const a = server?.address() as net.AddressInfo | null | undefined;
  return a ? { host: a.address, port: a.port } : null;
}

/** Closes without waiting for clients: keep-alive and in-flight connections are dropped. */
function closeNow(server: http.Server | null): Promise<void> {
  return new Promise<void>((resolve) => {
    if (server === null) return resolve();
    server.closeAllConnections();
    server.close(() => resolve());
  });
}
