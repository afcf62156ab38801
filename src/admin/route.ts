/**
 * What a route of the admin API is (api.ts routes, authenticates and audits; the route files say
 * what each command does): the backend commands act on, a route's binding of one request, and
 * the error a command answers with.
 */
import type { StaffRevocation } from './revocations.js';

/** What the admin API can do; every method acts cluster-wide where the issue says so. */
/** A session id as pgwarden makes them (a UUID, lower case): anything else names no session. */
export const SESSION_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface AdminBackend {
  /** Sessions on this instance (all its workers), optionally of one tenant. */
  listSessions(tenant: string | null): Promise<readonly object[]>;
  /** Backend pools on this instance (all its workers), one row per tenant, as the metrics listener's GET /pools. */
  listPools(): Promise<readonly object[]>;
  /** Each served tenant's effective limits and its use on this instance (limits-view.ts), optionally one tenant's. */
  listLimits(tenant: string | null): Promise<readonly object[]>;
  /** Ends the session (57P01) if it is on this instance; false if there is none with that id. */
  terminateSession(id: string): Promise<boolean>;
  /** Whether the tenant is served (suspending a typo would silently do nothing). */
  hasTenant(id: string): Promise<boolean>;
  suspend(tenantId: string, suspended: boolean): Promise<void>;
  /** Remembers the revocation on every instance and ends the matching staff sessions there. */
  revokeStaff(rev: StaffRevocation): Promise<void>;
  reload(): Promise<void>;
  /** Staff revocations in force on this instance (made anywhere in the cluster while the bus carried them). */
  listRevocations(): readonly StaffRevocation[];
  /** How long a revocation must be remembered: any token valid now expires within this. */
  revocationTtlMs(): number;
  /** The tenant catalog the tenant routes read and write; null when the configuration file is the source of tenants. */
  tenantCatalog(): TenantCatalog | null;
}

/**
 * Reads and validated writes of the tenant catalog (catalog/store.ts's CatalogStore). A write
 * refused for its body throws an error with `reason: 'invalid'` and `problems` (keys named as
 * check-config names them); one for a tenant that is not there `reason: 'not_found'`; anything
 * else thrown means the catalog could not be reached.
 */
export interface TenantCatalog {
  get(id: string): Promise<{ readonly body: Record<string, unknown>; readonly updatedAt: Date } | undefined>;
  put(id: string, body: unknown): Promise<{ readonly created: boolean }>;
  delete(id: string): Promise<boolean>;
  putUser(id: string, name: string, userBody: unknown): Promise<{ readonly created: boolean }>;
  deleteUser(id: string, name: string): Promise<boolean>;
}

/** An answer: status and JSON body. Errors are always {"error": "..."} (plus `problems` for an invalid body). */
export type Reply = readonly [status: number, body: object, headers?: Record<string, string>];

/** A command's refusal: its status, message, and what else the body carries (`problems`). */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
    readonly extra: Readonly<Record<string, unknown>> = {},
    /** What went wrong underneath (logged, never answered). */
    cause?: unknown,
  ) {
    super(message, cause === undefined ? undefined : { cause });
  }
}

/** What a matched route does with one request: the audit target, and the command itself. */
export interface Bound {
  /** What the command acts on (validated, so no attacker text reaches the audit log), or null. */
  readonly target: object | null;
  readonly run: (body: unknown) => Promise<Reply>;
}

/** What a route is given to bind: path parameters percent-decoded ("" for a malformed escape). */
export interface RouteRequest {
  readonly backend: AdminBackend;
  readonly params: Readonly<Record<string, string>>;
  readonly query: URLSearchParams;
}

/**
 * One operation of the API. `path` is written as the OpenAPI document (openapi.ts) writes it,
 * `{name}` standing for one segment; the router matches exactly these templates, and
 * test/integration/admin-openapi.test.ts holds this table equal to the document's operations.
 */
export interface AdminRoute {
  readonly method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  readonly path: string;
  /** Bounded label for the audit record and the log (the document's `x-audit-command`). */
  readonly command: string;
  /** Validates what the URL carries; no side effects (it runs before the token is checked). */
  readonly bind: (req: RouteRequest) => Bound;
}
