/**
 * Keeps the `Errors` catalogue (src/errors.ts) and docs/errors.md in step, and checks that each
 * PgError becomes a well-formed ErrorResponse that says exactly what the catalogue says.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Errors, PgError, sanitizeName } from '../../src/errors.js';
import { readErrorField } from '../../src/protocol/backend.js';

/** The compiled test sits in dist/test/unit/, so the repository root is three levels up. */
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

type FactoryName = keyof typeof Errors;
/** One sample call per factory; adding a factory without a sample is a type error here. */
type SampleArgs = { readonly [K in FactoryName]: Parameters<(typeof Errors)[K]> };

const SAMPLES: SampleArgs = {
  dataAfterSslRequest: [],
  dataAfterGssRequest: [],
  startupLayout: [],
  unsupportedProtocol: [4, 2],
  noUser: [],
  badReplicationValue: ['bogus'],
  replicationNotSupported: [],
  tooManyClients: [],
  shuttingDown: [],
  unsupportedOptions: [],
  settingNotAllowed: ['session_authorization'],
  unknownPgwardenOption: ['pgwarden.bogus'],
  tlsRequired: [],
  noTenant: [],
  inconsistentTenant: [],
  invalidTenant: [],
  expectedSaslResponse: [81],
  expectedPasswordResponse: [81],
  invalidMechanism: [],
  malformedScram: ['Garbage found at the end of client-final-message.'],
  invalidScramResponse: ['Nonce does not match.'],
  scramNonceNotPrintable: [],
  scramAuthzid: [],
  scramExtension: [],
  scramCbType: ['tls-unique'],
  scramUnexpectedCb: [],
  authFailed: ['alice', 'bad_password'],
  channelBindingNegotiation: [],
  channelBindingFailed: [],
  invalidLength: [],
  authTimeout: [],
  tooManyAttempts: ['rate_limited'],
  tooManyConnectionsForRole: ['alice'],
  messageTooLarge: [],
  idleSessionTimeout: [],
  idleInTransactionTimeout: [],
  transactionTimeout: [],
  tenantSuspended: [],
  undefinedDatabase: ['otherdb'],
  tooManyConnectionsForDatabase: ['appdb'],
  poolTimeout: [],
  invalidFrontendType: [120],
  invalidFormat: [],
  adminShutdown: ['drain_deadline'],
  auditUnavailable: [],
  auditUnavailableSession: [],
  staffAccessExpired: [],
  staffAccessWithdrawn: [],
  transparencyLagging: [],
  internal: [],
  upstreamConnect: ['backend_connect_failed', new Error('connect ECONNREFUSED 10.0.0.5:5432')],
  upstreamLost: [],
};

/** Hostile strings where a factory takes one; names from the client must come out sanitized. */
const HOSTILE = 'x"\n\0\u00e9\u202e' + 'y'.repeat(100);
const HOSTILE_SAMPLES: SampleArgs = {
  ...SAMPLES,
  badReplicationValue: [HOSTILE],
  scramCbType: [HOSTILE],
  authFailed: [HOSTILE, 'unknown_user'],
  tooManyConnectionsForDatabase: [HOSTILE],
  tooManyConnectionsForRole: [HOSTILE],
  undefinedDatabase: [HOSTILE],
  settingNotAllowed: [HOSTILE],
  unknownPgwardenOption: [HOSTILE],
};

const FACTORY_NAMES = Object.keys(Errors) as FactoryName[];

function make(name: FactoryName, samples: SampleArgs = SAMPLES): PgError {
  const factory = Errors[name] as unknown as (...args: readonly unknown[]) => unknown;
  const err = factory(...samples[name]);
  assert.ok(err instanceof PgError, `${name} must return a PgError`);
  return err;
}

interface DocRow {
  factory: string;
  rows: string;
  sqlstate: string;
  severity: string;
  kind: string;
  message: string;
  detailHint: string;
  when: string;
}

const unquote = (cell: string): string => {
  const m = /^`(.*)`$/.exec(cell);
  return m === null ? cell : m[1]!;
};

/** Rows of the table under "## Catalogue" in docs/errors.md. */
function readDocTable(): DocRow[] {
  const text = readFileSync(path.join(ROOT, 'docs/errors.md'), 'utf8');
  const start = text.indexOf('## Catalogue');
  assert.ok(start >= 0, 'docs/errors.md has a "## Catalogue" section');
  const end = text.indexOf('\n## ', start + 1);
  const section = text.slice(start, end < 0 ? undefined : end);
  const rows: DocRow[] = [];
  for (const line of section.split('\n')) {
    if (!line.startsWith('| `')) continue;
    const cells = line.split('|').slice(1, -1).map((c) => c.trim());
    assert.equal(cells.length, 8, `8 columns in: ${line}`);
    const [factory, rowIds, sqlstate, severity, kind, message, detailHint, when] = cells as [string, string, string, string, string, string, string, string];
    rows.push({ factory: unquote(factory), rows: rowIds, sqlstate, severity, kind, message: unquote(message), detailHint, when });
  }
  return rows;
}

/** `%s` / `%d` / `%u` placeholders of the docs as a regular expression over the whole message. */
function templateToRegExp(template: string): RegExp {
  const escaped = template.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`^${escaped.replace(/%s/g, '[\\x20-\\x7e]{0,63}').replace(/%[du]/g, '-?\\d+')}$`);
}

/** Backticked literals of a DETAIL / HINT cell, by label. */
function literals(cell: string, label: 'DETAIL' | 'HINT'): string[] | undefined {
  const at = cell.indexOf(`${label}:`);
  if (at < 0) return undefined;
  const other = label === 'DETAIL' ? 'HINT:' : 'DETAIL:';
  const stop = cell.indexOf(other, at);
  const part = cell.slice(at, stop > at ? stop : undefined);
  return [...part.matchAll(/`([^`]*)`/g)].map((m) => m[1]!);
}

/** Decodes an ErrorResponse without the project's helpers: type, length, then code+cstring fields. */
function decodeErrorResponse(frame: Buffer): Map<string, string> {
  assert.equal(frame[0], 0x45, 'type E');
  assert.equal(frame.readUInt32BE(1), frame.length - 1, 'length word counts itself and the body');
  const fields = new Map<string, string>();
  let pos = 5;
  while (true) {
    assert.ok(pos < frame.length, 'terminator present');
    const code = frame[pos]!;
    if (code === 0) {
      assert.equal(pos, frame.length - 1, 'nothing after the terminator');
      break;
    }
    const end = frame.indexOf(0, pos + 1);
    assert.ok(end > pos, 'field is NUL-terminated');
    const key = String.fromCharCode(code);
    assert.ok(!fields.has(key), `field ${key} appears once`);
    fields.set(key, frame.toString('utf8', pos + 1, end));
    pos = end + 1;
  }
  return fields;
}

describe('Errors catalogue ↔ docs/errors.md', () => {
  const docs = readDocTable();
  const byName = new Map(docs.map((r) => [r.factory, r]));

  it('the docs table has one row per name', () => {
    assert.ok(docs.length > 0);
    assert.equal(byName.size, docs.length, 'duplicate factory rows');
  });

  it('every factory is documented', () => {
    const missing = FACTORY_NAMES.filter((n) => !byName.has(n));
    assert.deepEqual(missing, [], 'factories without a row in docs/errors.md');
  });

  it('nothing documented is missing from the code', () => {
    const known = new Set<string>(FACTORY_NAMES);
    const stale = docs.map((r) => r.factory).filter((n) => !known.has(n));
    assert.deepEqual(stale, [], 'rows in docs/errors.md without a factory in Errors');
  });

  for (const name of FACTORY_NAMES) {
    it(`${name}: SQLSTATE, severity, kind, message and DETAIL/HINT match the docs`, () => {
      const row = byName.get(name);
      assert.ok(row !== undefined, `${name} is not documented`);
      const err = make(name);
      assert.match(row.rows, /^[NTASR]\d+(?:, [NTASR]\d+)*$/, 'SECURITY.md row ids');
      assert.match(err.sqlstate, /^[0-9A-Z]{5}$/);
      assert.equal(err.sqlstate, row.sqlstate);
      assert.equal(err.severity, row.severity);
      assert.equal(err.kind, row.kind);
      assert.match(err.message, templateToRegExp(row.message), `message "${err.message}" vs docs "${row.message}"`);
      const detail = literals(row.detailHint, 'DETAIL');
      const hint = literals(row.detailHint, 'HINT');
      if (err.detail === undefined) assert.equal(detail, undefined, 'docs list a DETAIL the code does not send');
      else assert.ok(detail?.includes(err.detail), `DETAIL "${err.detail}" is not in the docs row`);
      if (err.hint === undefined) assert.equal(hint, undefined, 'docs list a HINT the code does not send');
      else assert.ok(hint?.includes(err.hint), `HINT "${err.hint}" is not in the docs row`);
      assert.ok(row.when.length > 0, 'the row says when');
    });
  }

  it('no PgError is built outside src/errors.ts (the catalogue is the only source)', () => {
    const offenders: string[] = [];
    const walk = (dir: string): void => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) walk(full);
        else if (entry.name.endsWith('.ts') && full !== path.join(ROOT, 'src/errors.ts')) {
          readFileSync(full, 'utf8')
            .split('\n')
            .forEach((line, i) => {
              if (/\bnew PgError\(/.test(line)) offenders.push(`${path.relative(ROOT, full)}:${i + 1}`);
            });
        }
      }
    };
    walk(path.join(ROOT, 'src'));
    assert.deepEqual(offenders, []);
  });
});

describe('PgError.toFrame()', () => {
  for (const name of FACTORY_NAMES) {
    it(`${name}: a valid ErrorResponse whose S/V/C/M/D/H fields match`, () => {
      const err = make(name);
      const fields = decodeErrorResponse(err.toFrame());
      const expectedKeys = ['S', 'V', 'C', 'M', ...(err.detail === undefined ? [] : ['D']), ...(err.hint === undefined ? [] : ['H'])];
      assert.deepEqual([...fields.keys()], expectedKeys);
      assert.equal(fields.get('S'), err.severity);
      assert.equal(fields.get('V'), err.severity);
      assert.equal(fields.get('C'), err.sqlstate);
      assert.equal(fields.get('M'), err.message);
      assert.equal(fields.get('D'), err.detail);
      assert.equal(fields.get('H'), err.hint);
      // The project's own reader agrees.
      const body = err.toFrame().subarray(5);
      assert.equal(readErrorField(body, 0x43 /* C */), err.sqlstate);
      assert.equal(readErrorField(body, 0x4d /* M */), err.message);
    });
  }

  it('client-supplied names come out sanitized: printable ASCII, at most 63 bytes each', () => {
    for (const name of FACTORY_NAMES) {
      const err = make(name, HOSTILE_SAMPLES);
      assert.match(err.message, /^[\x20-\x7e]*$/, `${name}: ${JSON.stringify(err.message)}`);
      assert.ok(!err.message.includes('y'.repeat(64)), `${name}: name not truncated`);
      const fields = decodeErrorResponse(err.toFrame());
      assert.equal(fields.get('M'), err.message);
    }
    assert.equal(sanitizeName(HOSTILE).length, 63);
  });

  it('the cause never reaches the wire', () => {
    const err = make('upstreamConnect');
    assert.ok(err.cause instanceof Error);
    const frame = err.toFrame().toString('latin1');
    assert.ok(!frame.includes('10.0.0.5'));
    assert.ok(!frame.includes('ECONNREFUSED'));
    assert.ok(!frame.includes('backend_connect_failed'), 'the internal reason stays internal');
  });

  it('unsupportedProtocol answers a 1.x or 2.x client in the protocol-2 format, as PostgreSQL does; 0.0 and 4.0 in protocol 3', () => {
    for (const [major, minor] of [
      [2, 0],
      [1, 0],
      [0, 1],
    ] as const) {
      const frame = Errors.unsupportedProtocol(major, minor).toFrame();
      assert.equal(frame.toString('utf8'), `EFATAL:  unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.0\n\0`);
    }
    for (const [major, minor] of [
      [0, 0],
      [4, 0],
      [1234, 5679],
    ] as const) {
      assert.equal(decodeErrorResponse(Errors.unsupportedProtocol(major, minor).toFrame()).get('C'), '0A000');
    }
  });

  it('credential failures are indistinguishable on the wire whatever the reason', () => {
    const reasons = ['bad_password', 'unknown_user', 'unknown_tenant', 'tenant_disabled', 'secret_expired', 'source_not_allowed'];
    const frames = reasons.map((r) => Errors.authFailed('alice', r).toFrame());
    for (const f of frames) assert.ok(f.equals(frames[0]!));
  });
});
