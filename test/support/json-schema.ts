/**
 * A JSON Schema checker for the subset the admin API's OpenAPI document is written in (the
 * keywords of src/admin/openapi.ts's JsonSchema, local `$ref`s); a keyword outside it is an
 * error rather than silently unchecked. Reading the document is the caller's part.
 */
import type { JsonSchema, JsonType } from '../../src/admin/openapi.js';

const KNOWN = new Set([
  '$ref',
  'type',
  'description',
  'properties',
  'required',
  'additionalProperties',
  'minProperties',
  'maxProperties',
  'items',
  'enum',
  'pattern',
  'minimum',
  'format',
]);

/** RFC 3339 date-time as Date#toISOString writes it (and with an offset). */
const DATE_TIME_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function typeOf(v: unknown): JsonType {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v as JsonType;
}

/**
 * Where `value` breaks `schema`, one line per problem with its JSON pointer ([] when it validates).
 * `root` resolves `#/...` references.
 */
export function validate(schema: JsonSchema, value: unknown, root: unknown, at = ''): string[] {
  for (const k of Object.keys(schema)) if (!KNOWN.has(k)) throw new Error(`${at || '/'}: keyword ${k} is not supported by the checker`);
  if (schema.$ref !== undefined) return validate(resolve(root, schema.$ref) as JsonSchema, value, root, at);
  const where = at || '/';
  const t = typeOf(value);
  if (schema.type !== undefined) {
    const types: readonly JsonType[] = typeof schema.type === 'string' ? [schema.type] : schema.type;
    if (!types.includes(t) && !(t === 'integer' && types.includes('number'))) return [`${where}: ${t}, expected ${types.join(' or ')}`];
  }
  const errs: string[] = [];
  if (schema.enum !== undefined && !schema.enum.some((e) => e === value)) errs.push(`${where}: ${JSON.stringify(value)} not in ${JSON.stringify(schema.enum)}`);
  if (typeof value === 'string') {
    if (schema.pattern !== undefined && !new RegExp(schema.pattern, 'u').test(value))
      errs.push(`${where}: ${JSON.stringify(value)} does not match ${schema.pattern}`);
    if (schema.format === 'date-time' && !(DATE_TIME_RE.test(value) && !Number.isNaN(Date.parse(value)))) errs.push(`${where}: not a date-time`);
    if (schema.format === 'uuid' && !UUID_RE.test(value)) errs.push(`${where}: not a uuid`);
  }
  if (typeof value === 'number' && schema.minimum !== undefined && value < schema.minimum) errs.push(`${where}: below ${schema.minimum}`);
  if (Array.isArray(value) && schema.items !== undefined) {
    value.forEach((item, i) => errs.push(...validate(schema.items!, item, root, `${at}/${i}`)));
  }
  if (t === 'object') {
    const obj = value as Record<string, unknown>;
    const keys = Object.keys(obj);
    for (const r of schema.required ?? []) if (!(r in obj)) errs.push(`${where}: missing ${r}`);
    if (schema.minProperties !== undefined && keys.length < schema.minProperties) errs.push(`${where}: fewer than ${schema.minProperties} properties`);
    if (schema.maxProperties !== undefined && keys.length > schema.maxProperties) errs.push(`${where}: more than ${schema.maxProperties} properties`);
    for (const k of keys) {
      const sub = schema.properties?.[k];
      if (sub !== undefined) errs.push(...validate(sub, obj[k], root, `${at}/${k}`));
      else if (schema.additionalProperties === false) errs.push(`${where}: unexpected property ${k}`);
      else if (typeof schema.additionalProperties === 'object') errs.push(...validate(schema.additionalProperties, obj[k], root, `${at}/${k}`));
    }
  }
  return errs;
}

/** Follows a local reference (`#/components/schemas/Error`) in `root`. */
export function resolve(root: unknown, ref: string): unknown {
  if (!ref.startsWith('#/')) throw new Error(`only local references are supported: ${ref}`);
  let node = root;
  for (const raw of ref.slice(2).split('/')) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (typeof node !== 'object' || node === null || !(key in node)) throw new Error(`unresolved reference ${ref}`);
    node = (node as Record<string, unknown>)[key];
  }
  return node;
}
