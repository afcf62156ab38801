/**
 * Clients for the PostgreSQL databases pgwarden itself writes to (the audit store, the tenant
 * catalog): how one is configured and opened, and a lazily opened connection that a failed or
 * dead one is replaced on the next use. What is stored there is audit/'s and catalog/'s.
 */
import pg from 'pg';

/** Where such a database is: a URL without a password, and the environment variable that holds it. */
export interface PgTarget {
  readonly url: string;
  readonly passwordEnv: string | undefined;
}

const CONNECT_TIMEOUT_MS = 5_000;
/** A database that accepts the connection but never answers counts as down after this. */
const QUERY_TIMEOUT_MS = 15_000;

/**
 * A client for `target`. Commits are synchronous whatever the server's default: what pgwarden
 * acknowledges (a record leaving the spool, a catalog write) must survive a crash of that server.
 * The password is set on the client because pg lets a connection string's (empty) password
 * override one given beside it; without one, pg falls back to PGPASSWORD and ~/.pgpass.
 */
export function newPgClient(target: PgTarget, applicationName: string, keepAlive = false): pg.Client {
  const client = new pg.Client({
    connectionString: target.url,
    application_name: applicationName,
    options: '-c synchronous_commit=on',
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    query_timeout: QUERY_TIMEOUT_MS,
    ...(keepAlive ? { keepAlive: true } : {}),
  });
  const password = target.passwordEnv === undefined ? undefined : process.env[target.passwordEnv];
  if (password !== undefined) client.password = password;
  return client;
}

/**
 * One connection, opened on first use. A connection that dies while idle is forgotten (and its
 * error does not crash the process), so the next use opens a new one; `drop()` does the same
 * after an operation failed on it.
 */
export class LazyPgClient {
  private client: pg.Client | null = null;

  constructor(private readonly open: () => pg.Client) {}

  async get(): Promise<pg.Client> {
    if (this.client !== null) return this.client;
    const client = this.open();
    const forget = (): void => {
      if (this.client === client) this.client = null;
    };
    client.on('error', forget);
    client.on('end', forget);
    try {
      await client.connect();
    } catch (err) {
      void client.end().catch(() => undefined);
      throw err;
    }
    this.client = client;
    return client;
  }

  drop(): void {
    void this.end();
  }

  /** Closes the connection, if one is open (errors are swallowed: it is going away). */
  async end(): Promise<void> {
    const c = this.client;
    this.client = null;
    await c?.end().catch(() => undefined);
  }
}
