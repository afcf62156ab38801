/**
 * The OpenAPI 3.1 document of the admin API, served at GET /openapi.json: every route api.ts
 * answers, what it takes and every status it can answer with, with JSON Schemas of the bodies.
 * Serving, authentication and auditing are api.ts's part, like for any other route.
 *
 * Adding a route is one entry in `paths` here (beside its entry in api.ts's ADMIN_ROUTES):
 * `operation()` adds what every route can answer (400 for a body that is not JSON, 401, 403, 413).
 * The named examples are also the test's cases (test/integration/admin-openapi.test.ts): each
 * example of a response names a request that gets it, built from the parameters' and request
 * body's examples of the same name, or their first example (a valid request) when they have none
 * of that name; `x-fixture: "session"` stands for the id of a session the test opens. A few
 * names are requests no JSON value can describe: `noToken`, `wrongToken`, `notJson`, `tooLarge`,
 * and `sharedStateDown` (Redis unreachable). Every documented status needs at least one example.
 * @see https://spec.openapis.org/oas/v3.1.0
 */
import { TENANT_ID_RE } from '../config/schema.js';
import { API_USER_NAME_RE } from './tenant-routes.js';

/** The subset of JSON Schema (2020-12, as OpenAPI 3.1 uses it) the document is written in. */
export interface JsonSchema {
  readonly $ref?: string;
  readonly type?: JsonType | readonly JsonType[];
  readonly description?: string;
  readonly properties?: Readonly<Record<string, JsonSchema>>;
  readonly required?: readonly string[];
  readonly additionalProperties?: boolean | JsonSchema;
  readonly minProperties?: number;
  readonly maxProperties?: number;
  readonly items?: JsonSchema;
  readonly enum?: readonly (string | number | boolean | null)[];
  readonly pattern?: string;
  readonly minimum?: number;
  readonly format?: 'date-time' | 'uuid';
}
export type JsonType = 'object' | 'array' | 'string' | 'integer' | 'number' | 'boolean' | 'null';

export interface Example {
  readonly summary: string;
  readonly value: unknown;
  /** The test replaces the value with a live one: `session`, the id of a session it opened. */
  readonly 'x-fixture'?: 'session';
}
type Examples = Readonly<Record<string, Example>>;

export interface MediaType {
  readonly schema: JsonSchema;
  readonly examples: Examples;
}

export interface Parameter {
  readonly name: string;
  readonly in: 'path' | 'query';
  readonly required: boolean;
  readonly description: string;
  readonly schema: JsonSchema;
  /** The first is a valid value. */
  readonly examples: Examples;
}

export interface Response {
  readonly description: string;
  readonly headers?: Readonly<Record<string, { readonly description: string; readonly required: boolean; readonly schema: JsonSchema }>>;
  readonly content: { readonly 'application/json': MediaType };
}
export interface Reference {
  readonly $ref: string;
}

export interface Operation {
  readonly operationId: string;
  readonly summary: string;
  readonly description?: string;
  /** The `command` of the call's `admin.command` audit record. */
  readonly 'x-audit-command': string;
  readonly parameters?: readonly Parameter[];
  readonly requestBody?: { readonly required: boolean; readonly content: { readonly 'application/json': MediaType } };
  readonly responses: Readonly<Record<string, Response | Reference>>;
}

export type Method = 'get' | 'put' | 'post' | 'delete';
export type PathItem = Partial<Readonly<Record<Method, Operation>>>;

export interface OpenApiDocument {
  readonly openapi: '3.1.0';
  readonly info: { readonly title: string; readonly version: string; readonly description: string };
  readonly security: readonly Readonly<Record<string, readonly string[]>>[];
  readonly paths: Readonly<Record<string, PathItem>>;
  readonly components: {
    readonly securitySchemes: Readonly<Record<string, { readonly type: 'http'; readonly scheme: 'bearer'; readonly description: string }>>;
    readonly schemas: Readonly<Record<string, JsonSchema>>;
    readonly responses: Readonly<Record<string, Response>>;
  };
}

const ref = (name: string): JsonSchema => ({ $ref: `#/components/schemas/${name}` });
const json = (schema: JsonSchema, examples: Examples): { readonly 'application/json': MediaType } => ({ 'application/json': { schema, examples } });
const error = (summary: string, message: string): Example => ({ summary, value: { error: message } });

const EXAMPLE_SESSION = '7c6f0e52-3d1a-4b8e-9f2c-5a0d6e4b1c37';

const tenantId: JsonSchema = { type: 'string', pattern: TENANT_ID_RE.source, description: 'A tenant id: a lower-case DNS label.' };
const userName: JsonSchema = { type: 'string', pattern: API_USER_NAME_RE.source, description: 'A user name: 1 to 63 printable ASCII characters, no space.' };
const tenantParam: Parameter = {
  name: 'id',
  in: 'path',
  required: true,
  description: 'The tenant id.',
  schema: tenantId,
  examples: {
    ok: { summary: 'a configured tenant', value: 'acme' },
    notFound: { summary: 'no such tenant', value: 'nosuch' },
    badId: { summary: 'not a tenant id', value: 'Not_A_Tenant' },
  },
};
const sessionParam: Parameter = {
  name: 'id',
  in: 'path',
  required: true,
  description: 'The session id, as GET /sessions lists it (upper-case hex digits are accepted too).',
  schema: { type: 'string', pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' },
  examples: {
    ok: { summary: 'a session on this instance', value: EXAMPLE_SESSION, 'x-fixture': 'session' },
    notFound: { summary: 'no such session on this instance', value: '00000000-0000-4000-8000-000000000000' },
    badId: { summary: 'not a session id', value: 'not-a-uuid' },
  },
};

/** What every route answers with too: `notJson` for any body that is not JSON, 401, 403 (the auditor token) and 413. */
function operation(op: Omit<Operation, 'responses'> & { readonly responses: Readonly<Record<string, Response>> }): Operation {
  const { '400': badRequest, ...rest } = op.responses;
  const badExamples = badRequest?.content['application/json'].examples ?? {};
  return {
    ...op,
    responses: {
      ...rest,
      '400': {
        description: badRequest === undefined ? 'The request body is not JSON.' : `${badRequest.description} Or the request body is not JSON.`,
        content: json(ref('Error'), { ...badExamples, notJson: error('a body that is not JSON', 'request body is not valid JSON') }),
      },
      '401': { $ref: '#/components/responses/Unauthorized' },
      '403': { $ref: '#/components/responses/Forbidden' },
      '413': { $ref: '#/components/responses/PayloadTooLarge' },
    },
  };
}

const sharedStateDown = (command: string): Response => ({
  description: 'The command took effect on this instance but could not be shared with the other instances (Redis unreachable).',
  content: json(ref('Error'), { sharedStateDown: error('Redis unreachable', `${command} applied on this instance only: shared state unavailable`) }),
});

const suspension = (suspended: boolean): Operation =>
  operation({
    operationId: suspended ? 'suspendTenant' : 'resumeTenant',
    summary: suspended ? 'Suspend a tenant on every instance' : 'Resume a suspended tenant on every instance',
    description: suspended
      ? "Ends the tenant's sessions (57P01) and refuses its logins as a disabled tenant (28P01) until resumed."
      : 'Lifts a suspension; resuming a tenant that is not suspended is no error.',
    'x-audit-command': suspended ? 'tenant.suspend' : 'tenant.resume',
    parameters: [tenantParam],
    responses: {
      '200': {
        description: suspended ? 'Suspended.' : 'Resumed.',
        content: json(
          {
            type: 'object',
            required: ['tenant', 'suspended'],
            additionalProperties: false,
            properties: { tenant: tenantId, suspended: { enum: [suspended] } },
          },
          { ok: { summary: suspended ? 'suspended' : 'resumed', value: { tenant: 'acme', suspended } } },
        ),
      },
      '400': { description: 'Not a tenant id.', content: json(ref('Error'), { badId: error('not a tenant id', 'invalid tenant id') }) },
      '404': { description: 'No tenant with this id is configured.', content: json(ref('Error'), { notFound: error('no such tenant', 'no such tenant') }) },
      '503': sharedStateDown(suspended ? 'tenant.suspend' : 'tenant.resume'),
    },
  });

const termination = (how: 'delete' | 'post'): Operation =>
  operation({
    operationId: how === 'delete' ? 'deleteSession' : 'terminateSession',
    summary: how === 'delete' ? 'End a session' : 'End a session (the same as DELETE /sessions/{id})',
    description: 'The client gets 57P01 terminating connection due to administrator command. Sessions are per instance: ask the one that holds it.',
    'x-audit-command': 'session.terminate',
    parameters: [sessionParam],
    responses: {
      '200': {
        description: 'The session was ended.',
        content: json(
          {
            type: 'object',
            required: ['session', 'terminated'],
            additionalProperties: false,
            properties: { session: { type: 'string', format: 'uuid' }, terminated: { enum: [true] } },
          },
          { ok: { summary: 'ended', value: { session: EXAMPLE_SESSION, terminated: true } } },
        ),
      },
      '400': { description: 'Not a session id.', content: json(ref('Error'), { badId: error('not a session id', 'invalid session id') }) },
      '404': {
        description: 'No session with this id on this instance.',
        content: json(ref('Error'), { notFound: error('no such session', 'no such session') }),
      },
    },
  });

/** A made-up verifier (of the password "example-password"): what `pgwarden hash-password` prints. */
const EXAMPLE_VERIFIER =
  'SCRAM-SHA-256$4096:POZQoKKdzQdKzUq1QbRZgg==$7hLEQgiPjTiUbshcL//2F6GY7QxCLhYBOz7aeF90L0Q=:ZmH95xcqHFbOEX/jpwOdV3+HVAvNowd45zIDzekdzxE=';
const EXAMPLE_BODY = {
  backend: 'postgresql://10.20.0.7:5432/postgres',
  backend_tls: 'require',
  allow_cidrs: ['10.0.0.0/8'],
  max_client_connections: 200,
  users: { app: { scram: EXAMPLE_VERIFIER } },
};

/** The tenant id of a tenant route; `examples` name the requests (the first: a valid id). */
const tenantRouteParam = (examples: Examples): Parameter => ({
  name: 'id',
  in: 'path',
  required: true,
  description: 'The tenant id.',
  schema: tenantId,
  examples: { ...examples, badId: { summary: 'not a tenant id', value: 'Not_A_Tenant' } },
});
/** The optional `?tenant=ID` filter of a list. */
const tenantFilter = (description: string): Parameter => ({
  name: 'tenant',
  in: 'query',
  required: false,
  description,
  schema: tenantId,
  examples: { oneTenant: { summary: 'one tenant', value: 'acme' }, badId: { summary: 'not a tenant id', value: 'Not_A_Tenant' } },
});
const userParam = (examples: Examples): Parameter => ({
  name: 'name',
  in: 'path',
  required: true,
  description: "The user's name as clients log in with it.",
  schema: userName,
  examples: { ...examples, badName: { summary: 'not a user name', value: 'has space' } },
});

/** What every tenant route can answer besides its own: bad id, the file as the source, the catalog down. */
const tenantRouteResponses = (notFound: Examples | null, badId: Examples = {}): Readonly<Record<string, Response>> => ({
  ...(notFound === null ? {} : { '404': { description: 'No such tenant (or user) in the catalog.', content: json(ref('Error'), notFound) } }),
  '409': {
    description: 'The configuration file is the source of tenants (no `[catalog]`): edit it and reload.',
    content: json(ref('Error'), {
      fileSource: error('tenants from the file', 'tenants come from the configuration file: edit it and reload ([catalog] makes a database the source)'),
    }),
  },
  '503': {
    description: 'The tenant catalog cannot be reached; nothing was written. Instances go on serving their last good copy.',
    content: json(ref('Error'), { catalogDown: error('catalog unreachable', 'tenant catalog unavailable') }),
  },
  '400': {
    description: 'Not a tenant id (or user name).',
    content: json(ref('Error'), { badId: error('not a tenant id', 'invalid tenant id'), ...badId }),
  },
});

const invalidBody = (summary: string, problems: string[]): Example => ({ summary, value: { error: 'invalid tenant body', problems } });

const written = (withUser: boolean): Response['content'] =>
  json(
    {
      type: 'object',
      required: withUser ? ['tenant', 'user', 'created'] : ['tenant', 'created'],
      additionalProperties: false,
      properties: { tenant: tenantId, ...(withUser ? { user: userName } : {}), created: { type: 'boolean' } },
    },
    {},
  );
const withExamples = (content: Response['content'], examples: Examples): Response['content'] => ({
  'application/json': { ...content['application/json'], examples },
});

const revocationId: JsonSchema = { type: 'string', pattern: '^[!-~]{1,256}$', description: '1 to 256 printable ASCII characters, no space.' };
/** Exactly one of `jti` (one token) or `sub` (every token of that person). */
const revocationTarget: JsonSchema = {
  type: 'object',
  minProperties: 1,
  maxProperties: 1,
  additionalProperties: false,
  properties: { jti: revocationId, sub: revocationId },
};

export const OPENAPI: OpenApiDocument = {
  openapi: '3.1.0',
  info: {
    title: 'pgwarden admin API',
    version: '1',
    description: [
      "Operators' commands, on the `[admin] listen` HTTP listener; JSON in and out.",
      'Every call, this document included, needs `Authorization: Bearer <token>` and is an `admin.command` audit record',
      "(its `command` is the operation's `x-audit-command`; `unknown` for a path no route has).",
      'Besides what each operation lists: a path no route has answers 404 `{"error": "not found"}`,',
      'and a method a path does not have answers 405 with `Allow` (components/responses/NotFound and MethodNotAllowed);',
      'without a valid token both are 401, so routes are not revealed. A 500 `{"error": "internal error"}` is a bug.',
      'The auditor token (`[admin] auditor_token_sha256`) is answered 403 on every operation here: it reads the audit in the',
      'browser view under `/ui/` on the same listener (HTML with its own login, not part of this API), and nothing else.',
    ].join(' '),
  },
  security: [{ bearer: [] }],
  paths: {
    '/sessions': {
      get: operation({
        operationId: 'listSessions',
        summary: "This instance's sessions (all its workers)",
        'x-audit-command': 'sessions.list',
        parameters: [tenantFilter('Only the sessions of this tenant.')],
        responses: {
          '200': {
            description: 'The sessions.',
            content: json(
              { type: 'object', required: ['sessions'], additionalProperties: false, properties: { sessions: { type: 'array', items: ref('Session') } } },
              {
                all: {
                  summary: 'every session',
                  value: {
                    sessions: [
                      {
                        id: EXAMPLE_SESSION,
                        tenant: 'acme',
                        user: 'app',
                        database: 'postgres',
                        staff: null,
                        client: { addr: '127.0.0.1', port: 53422, via: null },
                        tls: 'TLSv1.3',
                        started_at: '2026-01-01T12:00:00.000Z',
                        phase: 'relaying',
                        tx_status: 'I',
                        bytes_in: 1032,
                        bytes_out: 4120,
                        queries: 3,
                      },
                    ],
                  },
                },
                oneTenant: { summary: "one tenant's", value: { sessions: [] } },
              },
            ),
          },
          '400': { description: 'Not a tenant id.', content: json(ref('Error'), { badId: error('not a tenant id', 'invalid tenant id') }) },
        },
      }),
    },
    '/pools': {
      get: operation({
        operationId: 'listPools',
        summary: "This instance's backend pools (all its workers), like PgBouncer's SHOW POOLS",
        description: "The same rows as GET /pools on the metrics listener, with `worker` added per worker's pool when `server.workers` > 1.",
        'x-audit-command': 'pools.list',
        responses: {
          '200': {
            description: 'One row per tenant pool.',
            content: json(
              { type: 'object', required: ['pools'], additionalProperties: false, properties: { pools: { type: 'array', items: ref('Pool') } } },
              { all: { summary: 'every pool', value: { pools: [{ tenant: 'acme', mode: 'session', max: 100, keys: 1, total: 2, idle: 1, active: 1, waiting: 0 }] } } },
            ),
          },
        },
      }),
    },
    '/limits': {
      get: operation({
        operationId: 'listLimits',
        summary: "Each served tenant's effective limits and what it uses now on this instance",
        description:
          'The `[limits]` and `[pool]` defaults with the tenant\'s overrides, beside its logged-in sessions and open backend connections on this instance (all its workers). Durations are milliseconds; 0 turns a limit off. A tenant that is not served is not listed.',
        'x-audit-command': 'limits.list',
        parameters: [tenantFilter('Only this tenant.')],
        responses: {
          '200': {
            description: 'One row per tenant, by id.',
            content: json(
              { type: 'object', required: ['limits'], additionalProperties: false, properties: { limits: { type: 'array', items: ref('TenantLimits') } } },
              {
                all: {
                  summary: 'every tenant',
                  value: {
                    limits: [
                      {
                        tenant: 'acme',
                        enabled: true,
                        pool_mode: 'transaction',
                        clients: 3,
                        cluster_clients: null,
                        max_client_connections: 100,
                        max_connections_per_user: 0,
                        new_connections_per_second: 0,
                        new_connections_burst: 0,
                        backends: 2,
                        max_backend_connections: 20,
                        pool_timeout_ms: 30000,
                        query_timeout_ms: 0,
                        idle_timeout_ms: 0,
                        idle_in_transaction_timeout_ms: 0,
                        transaction_timeout_ms: 0,
                        max_bandwidth_bytes_per_second: 0,
                        max_message_bytes: 1073741824,
                        auth_failure_limit: 20,
                      },
                    ],
                  },
                },
                oneTenant: { summary: "one tenant's", value: { limits: [] } },
              },
            ),
          },
          '400': { description: 'Not a tenant id.', content: json(ref('Error'), { badId: error('not a tenant id', 'invalid tenant id') }) },
        },
      }),
    },
    '/sessions/{id}': { delete: termination('delete') },
    '/sessions/{id}/terminate': { post: termination('post') },
    '/tenants/{id}/suspend': { post: suspension(true) },
    '/tenants/{id}/resume': { post: suspension(false) },
    '/tenants/{id}': {
      get: operation({
        operationId: 'getTenant',
        summary: "A tenant's body in the catalog, verifiers left out",
        description: "The `[tenants.<id>]` table as JSON, as stored; each user's `scram` verifier is never read back.",
        'x-audit-command': 'tenant.get',
        parameters: [tenantRouteParam({ ok: { summary: 'a tenant in the catalog', value: 'acme' }, notFound: { summary: 'no such tenant', value: 'nosuch' } })],
        responses: {
          '200': {
            description: 'The tenant.',
            content: json(
              {
                type: 'object',
                required: ['tenant', 'body', 'updated_at'],
                additionalProperties: false,
                properties: { tenant: tenantId, body: ref('TenantBody'), updated_at: { type: 'string', format: 'date-time' } },
              },
              {
                ok: {
                  summary: 'a tenant',
                  value: { tenant: 'acme', body: { ...EXAMPLE_BODY, users: { app: {} } }, updated_at: '2026-01-01T12:00:00.000Z' },
                },
              },
            ),
          },
          ...tenantRouteResponses({ notFound: error('no such tenant', 'no such tenant') }),
        },
      }),
      put: operation({
        operationId: 'putTenant',
        summary: 'Create or replace a tenant in the catalog (every instance follows within a second)',
        description:
          "The body is the tenant's `[tenants.<id>]` table as JSON, same keys and defaults as the file, validated by the same code; users carry SCRAM verifiers (`pgwarden hash-password`), never passwords. A replaced tenant's running sessions keep their settings; a tenant now `enabled = false` has its sessions ended (57P01).",
        'x-audit-command': 'tenant.put',
        parameters: [tenantRouteParam({ ok: { summary: 'a tenant in the catalog', value: 'initech' }, created: { summary: 'a new tenant', value: 'globex' } })],
        requestBody: {
          required: true,
          content: json(ref('TenantBody'), {
            ok: { summary: 'a tenant', value: EXAMPLE_BODY },
            invalid: {
              summary: 'a body the file would refuse too',
              value: { ...EXAMPLE_BODY, max_client_connections: -1, users: { app: { password: 'plaintext' } } },
            },
            notObject: { summary: 'not an object', value: [EXAMPLE_BODY] },
          }),
        },
        responses: {
          '200': {
            description: 'Replaced.',
            content: withExamples(written(false), { ok: { summary: 'replaced', value: { tenant: 'initech', created: false } } }),
          },
          '201': {
            description: 'Created.',
            content: withExamples(written(false), { created: { summary: 'created', value: { tenant: 'globex', created: true } } }),
          },
          ...tenantRouteResponses(null, {
            invalid: invalidBody('a body the file would refuse too', [
              'tenants.initech.users.app.password: not accepted; give scram, a SCRAM-SHA-256 verifier (make one with "pgwarden hash-password")',
              'tenants.initech.users.app.scram: missing (make one with "pgwarden hash-password")',
              'tenants.initech.max_client_connections: must be an integer from 0 to 1000000',
            ]),
            notObject: error('not an object', 'expected a JSON object: the [tenants.<id>] table'),
          }),
        },
      }),
      delete: operation({
        operationId: 'deleteTenant',
        summary: 'Remove a tenant from the catalog',
        description: "Every instance ends the tenant's sessions (57P01) and its logins get 28P01, the answer to a wrong password.",
        'x-audit-command': 'tenant.delete',
        parameters: [
          tenantRouteParam({ ok: { summary: 'a tenant in the catalog', value: 'initech' }, notFound: { summary: 'no such tenant', value: 'nosuch' } }),
        ],
        responses: {
          '200': {
            description: 'Removed.',
            content: json(
              { type: 'object', required: ['tenant', 'deleted'], additionalProperties: false, properties: { tenant: tenantId, deleted: { enum: [true] } } },
              { ok: { summary: 'removed', value: { tenant: 'initech', deleted: true } } },
            ),
          },
          ...tenantRouteResponses({ notFound: error('no such tenant', 'no such tenant') }),
        },
      }),
    },
    '/tenants/{id}/users/{name}': {
      put: operation({
        operationId: 'putTenantUser',
        summary: 'Create or replace one user of a catalog tenant',
        description:
          "The body is the user's `[tenants.<id>.users.<name>]` table: `scram` (a SCRAM-SHA-256 verifier, never a password), optionally `backend_user`, `backend_password_env`, `max_connections`. The whole tenant is validated with the user in place.",
        'x-audit-command': 'tenant.user.put',
        parameters: [
          tenantRouteParam({ ok: { summary: 'a tenant in the catalog', value: 'acme' }, notFound: { summary: 'no such tenant', value: 'nosuch' } }),
          userParam({ ok: { summary: 'a user of the tenant', value: 'reporting' }, created: { summary: 'a new user', value: 'analyst' } }),
        ],
        requestBody: {
          required: true,
          content: json(ref('TenantUser'), {
            ok: { summary: 'a verifier', value: { scram: EXAMPLE_VERIFIER, max_connections: 10 } },
            invalid: { summary: 'a password instead of a verifier', value: { password: 'plaintext' } },
            notObject: { summary: 'not an object', value: EXAMPLE_VERIFIER },
          }),
        },
        responses: {
          '200': {
            description: 'Replaced.',
            content: withExamples(written(true), { ok: { summary: 'replaced', value: { tenant: 'acme', user: 'reporting', created: false } } }),
          },
          '201': {
            description: 'Created.',
            content: withExamples(written(true), { created: { summary: 'created', value: { tenant: 'acme', user: 'analyst', created: true } } }),
          },
          ...tenantRouteResponses(
            { notFound: error('no such tenant', 'no such tenant') },
            {
              badName: error('not a user name', 'invalid user name'),
              invalid: invalidBody('a password instead of a verifier', [
                'tenants.acme.users.reporting.password: not accepted; give scram, a SCRAM-SHA-256 verifier (make one with "pgwarden hash-password")',
                'tenants.acme.users.reporting.scram: missing (make one with "pgwarden hash-password")',
              ]),
              notObject: error('not an object', 'expected a JSON object: the [tenants.<id>.users.<name>] table'),
            },
          ),
        },
      }),
      delete: operation({
        operationId: 'deleteTenantUser',
        summary: 'Remove one user of a catalog tenant',
        'x-audit-command': 'tenant.user.delete',
        parameters: [
          tenantRouteParam({ ok: { summary: 'a tenant in the catalog', value: 'acme' }, notFound: { summary: 'no such tenant', value: 'nosuch' } }),
          userParam({ ok: { summary: 'a user of the tenant', value: 'analyst' }, noUser: { summary: 'no such user', value: 'nobody' } }),
        ],
        responses: {
          '200': {
            description: 'Removed.',
            content: json(
              {
                type: 'object',
                required: ['tenant', 'user', 'deleted'],
                additionalProperties: false,
                properties: { tenant: tenantId, user: userName, deleted: { enum: [true] } },
              },
              { ok: { summary: 'removed', value: { tenant: 'acme', user: 'analyst', deleted: true } } },
            ),
          },
          ...tenantRouteResponses(
            { notFound: error('no such tenant', 'no such tenant'), noUser: error('no such user', 'no such user') },
            { badName: error('not a user name', 'invalid user name') },
          ),
        },
      }),
    },
    '/staff/revocations': {
      get: operation({
        operationId: 'listRevocations',
        summary: 'Staff revocations in force on this instance, soonest to lapse first',
        description:
          'Each by token id (`jti`) or by person (`sub`), with the time until which it is remembered. Revocations travel between instances on the Redis bus: one made on another instance while Redis was unreachable is not here.',
        'x-audit-command': 'staff.revocations',
        responses: {
          '200': {
            description: 'The revocations.',
            content: json(
              {
                type: 'object',
                required: ['revocations'],
                additionalProperties: false,
                properties: {
                  revocations: {
                    type: 'array',
                    items: {
                      type: 'object',
                      required: ['by', 'id', 'until'],
                      additionalProperties: false,
                      properties: { by: { type: 'string', enum: ['jti', 'sub'] }, id: { type: 'string' }, until: { type: 'string', format: 'date-time' } },
                    },
                  },
                },
              },
              { all: { summary: 'in force', value: { revocations: [{ by: 'sub', id: 'alice', until: '2026-01-02T12:00:00.000Z' }] } } },
            ),
          },
        },
      }),
    },
    '/staff/revoke': {
      post: operation({
        operationId: 'revokeStaff',
        summary: 'Revoke a staff token, or every token of a person, on every instance',
        description:
          'Ends the matching staff sessions with 57P01 and refuses them at login while remembered: until any token valid now has expired ([staff] maximum token lifetime plus clock tolerance), at most 24 h.',
        'x-audit-command': 'staff.revoke',
        requestBody: {
          required: true,
          content: json(revocationTarget, {
            byToken: { summary: 'one token', value: { jti: 'tok-1' } },
            byPerson: { summary: 'every token of a person', value: { sub: 'alice' } },
            notObject: { summary: 'not an object', value: ['tok-1'] },
            empty: { summary: 'neither key', value: {} },
            both: { summary: 'both keys', value: { jti: 'tok-1', sub: 'alice' } },
            unknownKey: { summary: 'another key', value: { email: 'alice@example.com' } },
            notString: { summary: 'not a string', value: { jti: 42 } },
            tooLong: { summary: 'over 256 characters', value: { sub: 'x'.repeat(257) } },
          }),
        },
        responses: {
          '200': {
            description: 'Revoked; remembered until `until`.',
            content: json(
              {
                type: 'object',
                required: ['revoked', 'until'],
                additionalProperties: false,
                properties: { revoked: revocationTarget, until: { type: 'string', format: 'date-time' } },
              },
              {
                byToken: { summary: 'one token', value: { revoked: { jti: 'tok-1' }, until: '2026-01-02T12:00:00.000Z' } },
                byPerson: { summary: 'a person', value: { revoked: { sub: 'alice' }, until: '2026-01-02T12:00:00.000Z' } },
              },
            ),
          },
          '400': {
            description: 'Not exactly one of `jti` or `sub` with a valid value.',
            content: json(ref('Error'), {
              notObject: error('not an object', 'expected a JSON object {"jti": "..."} or {"sub": "..."}'),
              empty: error('neither key', 'expected exactly one of "jti" or "sub"'),
              both: error('both keys', 'expected exactly one of "jti" or "sub"'),
              unknownKey: error('another key', 'expected exactly one of "jti" or "sub"'),
              notString: error('not a string', '"jti" must be a string of 1 to 256 printable characters'),
              tooLong: error('over 256 characters', '"sub" must be a string of 1 to 256 printable characters'),
            }),
          },
          '503': sharedStateDown('staff.revoke'),
        },
      }),
    },
    '/reload': {
      post: operation({
        operationId: 'reload',
        summary: 'Every instance re-reads its configuration file (as SIGHUP)',
        'x-audit-command': 'reload',
        responses: {
          '202': {
            description: 'Requested; a file that does not load is logged and the old configuration kept.',
            content: json(
              { type: 'object', required: ['status'], additionalProperties: false, properties: { status: { enum: ['reload requested'] } } },
              { ok: { summary: 'requested', value: { status: 'reload requested' } } },
            ),
          },
          '503': sharedStateDown('reload'),
        },
      }),
    },
    '/openapi.json': {
      get: operation({
        operationId: 'getOpenApi',
        summary: 'This document',
        'x-audit-command': 'openapi.get',
        responses: {
          '200': {
            description: 'The OpenAPI 3.1 document of this API.',
            content: json(
              {
                type: 'object',
                required: ['openapi', 'info', 'paths', 'components'],
                properties: { openapi: { enum: ['3.1.0'] }, info: { type: 'object' }, paths: { type: 'object' }, components: { type: 'object' } },
              },
              { ok: { summary: 'the document', value: { openapi: '3.1.0', info: { title: 'pgwarden admin API', version: '1' }, paths: {}, components: {} } } },
            ),
          },
        },
      }),
    },
  },
  components: {
    securitySchemes: {
      bearer: {
        type: 'http',
        scheme: 'bearer',
        description:
          'The token whose SHA-256 is `[admin] token_sha256` (`pgwarden hash-token`); compared in constant time. The auditor token (`auditor_token_sha256`) is refused with 403.',
      },
    },
    schemas: {
      Error: {
        type: 'object',
        required: ['error'],
        additionalProperties: false,
        properties: {
          error: { type: 'string', description: 'What went wrong; never a secret.' },
          problems: {
            type: 'array',
            items: { type: 'string' },
            description: 'With `invalid tenant body`: every problem, each naming the offending key as `pgwarden check-config` does.',
          },
        },
      },
      TenantBody: {
        type: 'object',
        description:
          'A `[tenants.<id>]` table as JSON: `backend` (required), `backend_tls`, `backend_ca`, `allow_cidrs`, `enabled`, `databases`, `max_client_connections`, `users`, and the `[pool]`, `[limits]` and audit keys a tenant may override; config.example.toml describes each. Validated by pgwarden (unknown keys are refused by name), not by this schema alone.',
        required: ['backend'],
        properties: { backend: { type: 'string' }, users: { type: 'object', additionalProperties: ref('TenantUser') } },
      },
      TenantUser: {
        type: 'object',
        description: 'A `[tenants.<id>.users.<name>]` table: a SCRAM-SHA-256 verifier (`pgwarden hash-password`), never a password.',
        properties: {
          scram: { type: 'string', pattern: '^SCRAM-SHA-256\\$' },
          backend_user: { type: 'string' },
          backend_password_env: { type: 'string' },
          max_connections: { type: 'integer', minimum: 0 },
        },
      },
      Pool: {
        type: 'object',
        description: "A tenant's backend pools: its pool mode, its cap on backends, how many pool keys (database, role, parameters) it has, and its backends and waiting clients.",
        required: ['tenant', 'mode', 'max', 'keys', 'total', 'idle', 'active', 'waiting'],
        additionalProperties: false,
        properties: {
          tenant: { type: 'string' },
          mode: { type: 'string', enum: ['session', 'transaction'] },
          max: { type: 'integer', minimum: 0 },
          keys: { type: 'integer', minimum: 0 },
          total: { type: 'integer', minimum: 0 },
          idle: { type: 'integer', minimum: 0 },
          active: { type: 'integer', minimum: 0 },
          waiting: { type: 'integer', minimum: 0 },
          worker: { type: 'integer', minimum: 1, description: 'The worker process holding it, with `server.workers` > 1.' },
        },
      },
      TenantLimits: {
        type: 'object',
        description:
          "A tenant's effective limits (durations in milliseconds, 0: off) and its use on this instance: `clients` (logged-in sessions) and `backends` (open backend connections); with Redis, `cluster_clients` across every instance sharing it.",
        required: [
          'tenant', 'enabled', 'pool_mode', 'clients', 'cluster_clients', 'max_client_connections', 'max_connections_per_user', 'new_connections_per_second', 'new_connections_burst',
          'backends', 'max_backend_connections', 'pool_timeout_ms', 'query_timeout_ms', 'idle_timeout_ms', 'idle_in_transaction_timeout_ms', 'transaction_timeout_ms',
          'max_bandwidth_bytes_per_second', 'max_message_bytes', 'auth_failure_limit',
        ],
        additionalProperties: false,
        properties: {
          tenant: { type: 'string' },
          enabled: { type: 'boolean' },
          pool_mode: { type: 'string', enum: ['session', 'transaction'] },
          clients: { type: 'integer', minimum: 0 },
          cluster_clients: {
            type: ['integer', 'null'],
            minimum: 0,
            description:
              "With Redis: the tenant's client slots held by every live instance sharing it (what max_client_connections caps cluster-wide; staff in their reserve are not among them), read when asked. null on a single instance, or while Redis is degraded or not answering.",
          },
          max_client_connections: { type: 'integer', minimum: 0 },
          max_connections_per_user: { type: 'integer', minimum: 0 },
          new_connections_per_second: { type: 'number', minimum: 0 },
          new_connections_burst: { type: 'number', minimum: 0 },
          backends: { type: 'integer', minimum: 0 },
          max_backend_connections: { type: 'integer', minimum: 0 },
          pool_timeout_ms: { type: 'integer', minimum: 0 },
          query_timeout_ms: { type: 'integer', minimum: 0 },
          idle_timeout_ms: { type: 'integer', minimum: 0 },
          idle_in_transaction_timeout_ms: { type: 'integer', minimum: 0 },
          transaction_timeout_ms: { type: 'integer', minimum: 0 },
          max_bandwidth_bytes_per_second: { type: 'integer', minimum: 0 },
          max_message_bytes: { type: 'integer', minimum: 0 },
          auth_failure_limit: { type: 'integer', minimum: 0 },
        },
      },
      Session: {
        type: 'object',
        description: 'A session as GET /sessions lists it: no secrets; user and database names sanitized.',
        required: ['id', 'tenant', 'user', 'database', 'staff', 'client', 'tls', 'started_at', 'phase', 'tx_status', 'bytes_in', 'bytes_out', 'queries'],
        additionalProperties: false,
        properties: {
          id: { type: 'string', format: 'uuid' },
          tenant: { type: ['string', 'null'], description: 'null until the tenant is known.' },
          user: { type: ['string', 'null'] },
          database: { type: ['string', 'null'] },
          staff: {
            type: ['object', 'null'],
            description: 'The staff token behind the session; null for a tenant user.',
            required: ['sub', 'ticket', 'access', 'jti', 'expires_at'],
            additionalProperties: false,
            properties: {
              sub: { type: 'string' },
              ticket: { type: 'string' },
              access: { enum: ['read', 'write'] },
              jti: { type: 'string' },
              expires_at: { type: 'string', format: 'date-time' },
            },
          },
          client: {
            type: 'object',
            required: ['addr', 'port', 'via'],
            additionalProperties: false,
            description: "The client's address: with [server] proxy_protocol, the one a trusted load balancer gave.",
            properties: {
              addr: { type: 'string' },
              port: { type: 'integer', minimum: 0 },
              via: { type: ['string', 'null'], description: 'The load balancer that gave the address (PROXY protocol), null for a direct connection.' },
            },
          },
          tls: { type: ['string', 'null'], description: 'The TLS version, null without TLS.' },
          started_at: { type: 'string', format: 'date-time' },
          phase: { enum: ['negotiating', 'tls_handshake', 'admitting', 'authenticating', 'connecting', 'relaying', 'closed'] },
          tx_status: { enum: ['I', 'T', 'E'], description: "ReadyForQuery's transaction status." },
          bytes_in: { type: 'integer', minimum: 0 },
          bytes_out: { type: 'integer', minimum: 0 },
          queries: { type: 'integer', minimum: 0 },
          worker: { type: 'integer', minimum: 1, description: 'The worker process holding it, with `server.workers` > 1.' },
        },
      },
    },
    responses: {
      Unauthorized: {
        description: 'No bearer token, or a wrong one: nothing runs (RFC 6750 §3).',
        headers: {
          'WWW-Authenticate': {
            description: '`Bearer realm="pgwarden-admin"`, with `error="invalid_token"` for a wrong token.',
            required: true,
            schema: { type: 'string', pattern: '^Bearer realm="pgwarden-admin"' },
          },
        },
        content: json(ref('Error'), {
          noToken: error('no Authorization header', 'missing bearer token'),
          wrongToken: error('a wrong token', 'invalid bearer token'),
        }),
      },
      Forbidden: {
        description: 'The auditor token: it may read the audit in the browser view (/ui/) and call nothing here, reads included; nothing runs.',
        headers: {
          'WWW-Authenticate': {
            description: '`Bearer realm="pgwarden-admin", error="insufficient_scope"` (RFC 6750 §3.1).',
            required: true,
            schema: { type: 'string', pattern: '^Bearer realm="pgwarden-admin", error="insufficient_scope"$' },
          },
        },
        content: json(ref('Error'), { auditorToken: error('the auditor token', 'the auditor token may only read the audit (/ui/)') }),
      },
      PayloadTooLarge: {
        description: 'A request body over 64 KiB (65536 bytes); the connection is closed after the answer.',
        content: json(ref('Error'), { tooLarge: error('a body over 64 KiB', 'request body over 65536 bytes') }),
      },
      NotFound: {
        description: 'A path no route has.',
        content: json(ref('Error'), { unknownPath: error('a path no route has', 'not found') }),
      },
      MethodNotAllowed: {
        description: 'A method the path does not have.',
        headers: { Allow: { description: "The path's methods.", required: true, schema: { type: 'string' } } },
        content: json(ref('Error'), { wrongMethod: error('a method the path does not have', 'method not allowed') }),
      },
    },
  },
};
