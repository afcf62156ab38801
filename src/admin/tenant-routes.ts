/**
 * The admin API's tenant routes (issue 13): a tenant's body is its `[tenants.<id>]` table as JSON,
 * users included, read from and written to the tenant catalog, which every instance follows. With
 * the configuration file as the source of tenants they answer 409. A verifier is written, never
 * read back: GET leaves each user's `scram` out, and no body ever reaches the audit record (the
 * target names the tenant and user only).
 */
import { TENANT_ID_RE } from '../config/schema.js';
import { HttpError, type AdminRoute, type Bound, type RouteRequest, type TenantCatalog } from './route.js';

/** A user name the API accepts in a path: 1 to 63 printable ASCII characters, no space (a PostgreSQL name is at most 63 bytes). */
export const API_USER_NAME_RE = /^[!-~]{1,63}$/;

export const FILE_SOURCE_MESSAGE = 'tenants come from the configuration file: edit it and reload ([catalog] makes a database the source)';
export const CATALOG_DOWN_MESSAGE = 'tenant catalog unavailable';
export const INVALID_BODY_MESSAGE = 'invalid tenant body';

/** The catalog's refusal of a write, as CatalogStore throws it (see TenantCatalog). */
const refusal = (err: unknown): { reason: string; problems: readonly string[] } | null => {
  const e = err as { reason?: unknown; problems?: unknown } | null;
  return typeof e?.reason === 'string' && Array.isArray(e.problems) ? { reason: e.reason, problems: e.problems as string[] } : null;
};

/** A catalog call, its failures as answers: invalid body 400 (with the problems), no tenant 404, unreachable 503. */
async function onCatalog<R>(op: () => Promise<R>, notFound = 'no such tenant'): Promise<R> {
  try {
    return await op();
  } catch (err) {
    const r = refusal(err);
    if (r?.reason === 'invalid') throw new HttpError(400, INVALID_BODY_MESSAGE, {}, { problems: r.problems });
    if (r?.reason === 'not_found') throw new HttpError(404, notFound);
    throw new HttpError(503, CATALOG_DOWN_MESSAGE, {}, {}, err);
  }
}

/** The catalog, or 409 when the file is the source. */
function catalogOf(req: RouteRequest): TenantCatalog {
  const catalog = req.backend.tenantCatalog();
  if (catalog === null) throw new HttpError(409, FILE_SOURCE_MESSAGE);
  return catalog;
}

/** Binds a tenant route: the id (and user name) validated before anything runs. */
const tenantRoute =
  (withUser: boolean, run: (catalog: TenantCatalog, tenant: string, user: string, body: unknown) => Promise<readonly [number, object]>) =>
  (req: RouteRequest): Bound => {
    const tenant = req.params['id']!;
    const user = req.params['name'] ?? '';
    const tenantOk = TENANT_ID_RE.test(tenant);
    const userOk = !withUser || API_USER_NAME_RE.test(user);
    return {
      target: tenantOk && userOk ? (withUser ? { tenant, user } : { tenant }) : null,
      run: async (body) => {
        if (!tenantOk) throw new HttpError(400, 'invalid tenant id');
        if (!userOk) throw new HttpError(400, 'invalid user name');
        return await run(catalogOf(req), tenant, user, body);
      },
    };
  };

/** The body as stored, each user's verifier left out. */
export function withoutVerifiers(body: Record<string, unknown>): Record<string, unknown> {
  const users = body['users'];
  if (typeof users !== 'object' || users === null || Array.isArray(users)) return body;
  const shown: Record<string, unknown> = {};
  for (const [name, u] of Object.entries(users as Record<string, unknown>)) {
    if (typeof u === 'object' && u !== null && !Array.isArray(u)) {
      const { scram: _verifier, ...rest } = u as Record<string, unknown>;
      shown[name] = rest;
    } else shown[name] = u;
  }
  return { ...body, users: shown };
}

const needObject = (body: unknown, what: string): void => {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new HttpError(400, `expected a JSON object: ${what}`);
};

export const TENANT_ROUTES: readonly AdminRoute[] = [
  {
    method: 'GET',
    path: '/tenants/{id}',
    command: 'tenant.get',
    bind: tenantRoute(false, async (catalog, tenant) => {
      const row = await onCatalog(() => catalog.get(tenant));
      if (row === undefined) throw new HttpError(404, 'no such tenant');
      return [200, { tenant, body: withoutVerifiers(row.body), updated_at: row.updatedAt.toISOString() }];
    }),
  },
  {
    method: 'PUT',
    path: '/tenants/{id}',
    command: 'tenant.put',
    bind: tenantRoute(false, async (catalog, tenant, _user, body) => {
      needObject(body, 'the [tenants.<id>] table');
      const { created } = await onCatalog(() => catalog.put(tenant, body));
      return [created ? 201 : 200, { tenant, created }];
    }),
  },
  {
    method: 'DELETE',
    path: '/tenants/{id}',
    command: 'tenant.delete',
    bind: tenantRoute(false, async (catalog, tenant) => {
      if (!(await onCatalog(() => catalog.delete(tenant)))) throw new HttpError(404, 'no such tenant');
      return [200, { tenant, deleted: true }];
    }),
  },
  {
    method: 'PUT',
    path: '/tenants/{id}/users/{name}',
    command: 'tenant.user.put',
    bind: tenantRoute(true, async (catalog, tenant, user, body) => {
      needObject(body, 'the [tenants.<id>.users.<name>] table');
      const { created } = await onCatalog(() => catalog.putUser(tenant, user, body));
      return [created ? 201 : 200, { tenant, user, created }];
    }),
  },
  {
    method: 'DELETE',
    path: '/tenants/{id}/users/{name}',
    command: 'tenant.user.delete',
    bind: tenantRoute(true, async (catalog, tenant, user) => {
      if (!(await onCatalog(() => catalog.deleteUser(tenant, user)))) throw new HttpError(404, 'no such user');
      return [200, { tenant, user, deleted: true }];
    }),
  },
];
