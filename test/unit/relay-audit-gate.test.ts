/**
 * AuditGate fed client bytes, with a real StatementAudit and a host that records what it is asked
 * (forward, hold, release, append, durable append, audit failure); and refusals.ts, the statements
 * that let the server refuse. No sockets.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { AuditGate, type AuditGateHost } from '../../src/session/relay/audit-gate.js';
import { StatementAudit } from '../../src/session/relay/statement-audit.js';
import { refusedStatement } from '../../src/session/relay/refusals.js';
import { FrameReader, type Frame } from '../../src/protocol/frame-reader.js';
import { encodeFrame, cstring } from '../../src/protocol/frame.js';
import { encodeQuery } from '../../src/protocol/frontend.js';
import { Frontend, TxStatus } from '../../src/protocol/codes.js';
import type { AuditEvent } from '../../src/audit/record.js';

// ---------------------------------------------------------------- frames

const query = (sql: string): Buffer => encodeQuery(sql);
const sync = (): Buffer => encodeFrame(Frontend.Sync);
function parse(name: string, sql: string, types: readonly number[] = []): Buffer {
  const t = Buffer.alloc(2 + 4 * types.length);
  t.writeInt16BE(types.length, 0);
  types.forEach((oid, i) => t.writeUInt32BE(oid, 2 + 4 * i));
  return encodeFrame(Frontend.Parse, cstring(name), cstring(sql), t);
}
const bind = (statement: string): Buffer => encodeFrame(Frontend.Bind, cstring(''), cstring(statement), Buffer.alloc(6));
const execute = (): Buffer => encodeFrame(Frontend.Execute, cstring(''), Buffer.alloc(4));

/** Reads whole frames from bytes (the test's own view of what was forwarded). */
function frames(bytes: Buffer): Frame[] {
  const r = new FrameReader();
  r.push(bytes);
  const out: Frame[] = [];
  for (let f = r.nextTyped(() => 1 << 24); f !== null; f = r.nextTyped(() => 1 << 24)) out.push(f);
  assert.equal(r.buffered, 0, 'forwarded bytes end on a frame boundary');
  return out;
}
const frameOf = (bytes: Buffer): Frame => {
  const [f] = frames(bytes);
  return f!;
};

/** The SQL text of a Query body or of a Parse body. */
function sqlOf(f: Frame): string {
  const start = f.type === Frontend.Parse ? f.body.indexOf(0) + 1 : 0;
  return f.body.toString('utf8', start, f.body.indexOf(0, start));
}

/** A Parse body's statement name and declared parameter types. */
function parseParts(f: Frame): { name: string; sql: string; types: number[] } {
  const nameEnd = f.body.indexOf(0);
  const sqlEnd = f.body.indexOf(0, nameEnd + 1);
  const n = f.body.readInt16BE(sqlEnd + 1);
  assert.equal(f.body.length, sqlEnd + 3 + 4 * n, 'nothing after the declared types');
  return {
    name: f.body.toString('utf8', 0, nameEnd),
    sql: f.body.toString('utf8', nameEnd + 1, sqlEnd),
    types: Array.from({ length: n }, (_, i) => f.body.readUInt32BE(sqlEnd + 3 + 4 * i)),
  };
}

// ---------------------------------------------------------------- host

interface DurableCall {
  readonly e: AuditEvent;
  resolve(): void;
  reject(err: unknown): void;
}

class RecordingHost implements AuditGateHost {
  readonly forwarded: Buffer[] = [];
  readonly appended: AuditEvent[] = [];
  readonly durable: DurableCall[] = [];
  readonly auditFailures: unknown[] = [];
  readonly failures: unknown[] = [];
  readonly log: string[] = [];
  held = false;
  open = true;
  txStatus: number = TxStatus.Idle;
  readonly maxMessageBytes = 1 << 20;
  /** Called after each forward (a forwarded chunk may end the session). */
  afterForward: (() => void) | null = null;

  forward(chunk: Buffer): void {
    this.forwarded.push(Buffer.from(chunk));
    this.log.push('forward');
    this.afterForward?.();
  }
  holdClient(): void {
    this.held = true;
    this.log.push('hold');
  }
  releaseClient(): void {
    this.held = false;
    this.log.push('release');
  }
  isOpen(): boolean {
    return this.open;
  }
  append(e: AuditEvent): void {
    this.appended.push(e);
  }
  appendDurable(e: AuditEvent): Promise<void> {
    return new Promise<void>((resolve, reject) => this.durable.push({ e, resolve: () => resolve(), reject }));
  }
  auditFailed(err: unknown): void {
    this.auditFailures.push(err);
    this.open = false;
  }
  fail(err: unknown): void {
    this.failures.push(err);
  }

  get forwardedBytes(): Buffer {
    return Buffer.concat(this.forwarded);
  }
}

function gate(opts: { failClosed?: boolean; readOnly?: boolean } = {}): { g: AuditGate; host: RecordingHost } {
  let ei = 0;
  const auditor = new StatementAudit({ params: 'full', queryMaxBytes: 4096, paramMaxBytes: 64 }, () => ++ei);
  const host = new RecordingHost();
  return { g: new AuditGate(auditor, opts.failClosed ?? false, opts.readOnly ?? false, host), host };
}

/** Lets the durable append's promise chain run. */
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('AuditGate: best effort', () => {
  it('passes a chunk at once, unchanged, and appends a record per statement message', () => {
    const { g, host } = gate();
    const chunk = Buffer.concat([query('SELECT 1'), parse('s1', 'SELECT $1', [23]), bind('s1'), execute(), sync()]);
    g.onClientChunk(chunk);
    assert.equal(host.forwarded.length, 1, 'one forward per chunk');
    assert.deepEqual(host.forwarded[0], chunk);
    assert.deepEqual(
      host.appended.map((e) => [e['event'], e['kind']]),
      [
        ['session.query', 'simple'],
        ['session.query', 'parse'],
        ['session.query', 'bind'],
        ['session.query', 'execute'],
      ],
    );
    assert.equal(host.appended[0]!['query'], 'SELECT 1');
    assert.equal(host.durable.length, 0);
    assert.equal(host.held, false);
    assert.deepEqual(host.log, ['forward'], 'never holds the client');
  });

  it('records the transaction status the host reports', () => {
    const { g, host } = gate();
    host.txStatus = TxStatus.InTransaction;
    g.onClientChunk(query('SELECT 1'));
    assert.equal(host.appended[0]!['tx_status_before'], 'T');
  });

  it('a frame split across chunks is forwarded whole once complete, at every split offset', () => {
    const frame = query('SELECT 42');
    for (let cut = 1; cut < frame.length; cut++) {
      const { g, host } = gate();
      g.onClientChunk(frame.subarray(0, cut));
      assert.equal(host.forwarded.length, 0, `nothing before the frame is whole (cut ${cut})`);
      assert.equal(host.appended.length, 0);
      g.onClientChunk(frame.subarray(cut));
      assert.deepEqual(host.forwardedBytes, frame, `cut ${cut}`);
      assert.equal(host.appended.length, 1);
      assert.equal(host.appended[0]!['query'], 'SELECT 42');
    }
  });

  it('forwards whole frames and keeps a partial one for the next chunk', () => {
    const { g, host } = gate();
    const a = query('SELECT 1');
    const b = query('SELECT 2');
    g.onClientChunk(Buffer.concat([a, b.subarray(0, 7)]));
    assert.deepEqual(host.forwardedBytes, a);
    g.onClientChunk(b.subarray(7));
    assert.deepEqual(host.forwardedBytes, Buffer.concat([a, b]));
  });

  it('a bad frame type ends the batch: what came before is forwarded, then the tail from the bad byte', () => {
    const { g, host } = gate();
    const good = query('SELECT 1');
    const tail = Buffer.concat([Buffer.from('z\0\0\0\x04'), query('SELECT 2')]);
    g.onClientChunk(Buffer.concat([good, tail]));
    assert.equal(host.forwarded.length, 2);
    assert.deepEqual(host.forwarded[0], good);
    assert.deepEqual(host.forwarded[1], tail, 'the relay raises the error on the bad frame');
    assert.equal(host.appended.length, 1, 'nothing after the bad frame is audited');
  });

  it('a bad length ends the batch the same way', () => {
    const { g, host } = gate();
    const good = query('SELECT 1');
    const tail = Buffer.from([Frontend.Query, 0, 0, 0, 3]);
    g.onClientChunk(Buffer.concat([good, tail]));
    assert.deepEqual(host.forwarded, [good, tail]);
  });

  it('a bad frame first forwards only the tail', () => {
    const { g, host } = gate();
    const tail = Buffer.concat([Buffer.from('z\0\0\0\x04'), query('SELECT 2')]);
    g.onClientChunk(tail);
    assert.deepEqual(host.forwarded, [tail]);
    assert.equal(host.appended.length, 0);
  });

  it('does not forward the tail when forwarding what came before ended the session', () => {
    const { g, host } = gate();
    host.afterForward = () => (host.open = false);
    const good = query('SELECT 1');
    g.onClientChunk(Buffer.concat([good, Buffer.from('z\0\0\0\x04')]));
    assert.deepEqual(host.forwarded, [good]);
  });
});

describe('AuditGate: fail closed', () => {
  it('holds the client and forwards nothing until the durable append resolves, then releases', async () => {
    const { g, host } = gate({ failClosed: true });
    const q = query('DELETE FROM accounts');
    g.onClientChunk(q);
    assert.equal(host.held, true);
    assert.equal(g.isWaiting(), true);
    assert.equal(host.forwarded.length, 0);
    assert.equal(host.appended.length, 0, 'no best-effort append');
    assert.equal(host.durable.length, 1);
    assert.equal(host.durable[0]!.e['query'], 'DELETE FROM accounts');
    await settle();
    assert.equal(host.forwarded.length, 0, 'still waiting for the write');
    host.durable[0]!.resolve();
    await settle();
    assert.deepEqual(host.forwarded, [q]);
    assert.equal(host.held, false);
    assert.equal(g.isWaiting(), false);
    assert.deepEqual(host.log, ['hold', 'forward', 'release']);
  });

  it('waits for every record of the chunk', async () => {
    const { g, host } = gate({ failClosed: true });
    const chunk = Buffer.concat([parse('', 'UPDATE t SET x = 1'), bind(''), execute(), sync()]);
    g.onClientChunk(chunk);
    assert.equal(host.durable.length, 3);
    host.durable[0]!.resolve();
    host.durable[2]!.resolve();
    await settle();
    assert.equal(host.forwarded.length, 0);
    host.durable[1]!.resolve();
    await settle();
    assert.deepEqual(host.forwarded, [chunk]);
  });

  it('keeps later chunks in order behind the write, including ones that need no record', async () => {
    const { g, host } = gate({ failClosed: true });
    const q1 = query('SELECT 1');
    const q2 = query('SELECT 2');
    const s = sync();
    g.onClientChunk(q1);
    g.onClientChunk(q2);
    g.onClientChunk(s); // no record of its own, but it must not overtake q2
    assert.equal(host.forwarded.length, 0);
    assert.equal(host.durable.length, 1, 'queued chunks are not parsed yet');
    host.durable[0]!.resolve();
    await settle();
    assert.deepEqual(host.forwarded, [q1], 'q2 now waits for its own record');
    assert.equal(host.durable.length, 2);
    assert.equal(host.durable[1]!.e['query'], 'SELECT 2');
    assert.equal(host.held, true, 'still held behind the second write');
    assert.equal(g.isWaiting(), true);
    host.durable[1]!.resolve();
    await settle();
    assert.deepEqual(host.forwarded, [q1, q2, s]);
    assert.equal(host.held, false);
    assert.deepEqual(host.log, ['hold', 'forward', 'hold', 'forward', 'forward', 'release']);
  });

  it('a chunk with no statement record passes at once when nothing is in flight', () => {
    const { g, host } = gate({ failClosed: true });
    g.onClientChunk(sync());
    assert.deepEqual(host.forwarded, [sync()]);
    assert.equal(host.held, false);
    assert.equal(host.durable.length, 0);
  });

  it('a rejected durable append forwards nothing and reports the failure', async () => {
    const { g, host } = gate({ failClosed: true });
    g.onClientChunk(query('DROP TABLE accounts'));
    g.onClientChunk(query('SELECT 2'));
    const boom = new Error('audit store down');
    host.durable[0]!.reject(boom);
    await settle();
    assert.equal(host.forwarded.length, 0);
    assert.deepEqual(host.auditFailures, [boom]);
    assert.equal(host.durable.length, 1, 'the queued chunk is not audited or forwarded');
    assert.equal(host.held, true, 'the client is not resumed: the session ends');
    assert.equal(g.isWaiting(), false);
  });

  it('forwards nothing when the session ended while the write was in flight', async () => {
    const { g, host } = gate({ failClosed: true });
    g.onClientChunk(query('SELECT 1'));
    host.open = false;
    host.durable[0]!.resolve();
    await settle();
    assert.equal(host.forwarded.length, 0);
    assert.deepEqual(host.auditFailures, []);
  });

  it('a frame split across chunks: the record is written once the frame is whole', async () => {
    const { g, host } = gate({ failClosed: true });
    const q = query('INSERT INTO t VALUES (1)');
    g.onClientChunk(q.subarray(0, 9));
    assert.equal(host.durable.length, 0);
    assert.equal(host.held, false);
    g.onClientChunk(q.subarray(9));
    assert.equal(host.durable.length, 1);
    assert.equal(host.durable[0]!.e['query'], 'INSERT INTO t VALUES (1)');
    host.durable[0]!.resolve();
    await settle();
    assert.deepEqual(host.forwardedBytes, q);
  });

  it('a bad frame after an audited one: the good frame waits for its record, then the tail follows', async () => {
    const { g, host } = gate({ failClosed: true });
    const good = query('SELECT 1');
    const tail = Buffer.from('z\0\0\0\x04');
    g.onClientChunk(Buffer.concat([good, tail]));
    assert.equal(host.forwarded.length, 0);
    host.durable[0]!.resolve();
    await settle();
    assert.deepEqual(host.forwarded, [good, tail]);
  });

  it('an exception while passing the frames goes to fail()', async () => {
    const { g, host } = gate({ failClosed: true });
    const boom = new Error('relay threw');
    host.afterForward = () => {
      throw boom;
    };
    g.onClientChunk(query('SELECT 1'));
    host.durable[0]!.resolve();
    await settle();
    assert.deepEqual(host.failures, [boom]);
  });
});

describe('AuditGate: staff read-only guard', () => {
  const REFUSAL = /RAISE EXCEPTION USING ERRCODE = 'read_only_sql_transaction'/;

  for (const sql of [
    'SET default_transaction_read_only = off',
    'set transaction_read_only to off',
    'BEGIN READ WRITE',
    'begin read /* sneaky */ write',
    'START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ\n WRITE',
    "SELECT set_config('default_transaction_read_only', 'off', false)",
  ]) {
    it(`replaces the Query ${JSON.stringify(sql)} with the refusal`, () => {
      const { g, host } = gate({ readOnly: true });
      g.onClientChunk(query(sql));
      const [f, ...rest] = frames(host.forwardedBytes);
      assert.equal(rest.length, 0);
      assert.equal(f!.type, Frontend.Query);
      assert.equal(f!.body[f!.body.length - 1], 0, 'NUL-terminated');
      assert.match(sqlOf(f!), /^DO \$pgwarden\$BEGIN /);
      assert.match(sqlOf(f!), REFUSAL);
      assert.doesNotMatch(sqlOf(f!), /default_transaction_read_only = off|READ WRITE/i);
      assert.equal(host.appended[0]!['query'], sql, 'the audit records what the client sent');
    });
  }

  it('replaces a Parse, keeping its statement name', () => {
    const { g, host } = gate({ readOnly: true });
    g.onClientChunk(Buffer.concat([parse('s7', 'BEGIN READ WRITE'), sync()]));
    const [p, s] = frames(host.forwardedBytes);
    assert.equal(p!.type, Frontend.Parse);
    const parts = parseParts(p!);
    assert.equal(parts.name, 's7');
    assert.match(parts.sql, REFUSAL);
    assert.deepEqual(s!.raw, sync(), 'the frames after it pass');
  });

  it('passes a plain SELECT (and the frames around it) unchanged', () => {
    const { g, host } = gate({ readOnly: true });
    const chunk = Buffer.concat([query('SELECT * FROM accounts'), parse('', 'SELECT $1', [25]), bind(''), execute(), sync()]);
    g.onClientChunk(chunk);
    assert.deepEqual(host.forwardedBytes, chunk);
  });

  it('only rewrites the offending frame of a batch', () => {
    const { g, host } = gate({ readOnly: true });
    const before = query('SELECT 1');
    const after = query('SELECT 2');
    g.onClientChunk(Buffer.concat([before, query('BEGIN READ WRITE'), after]));
    const [a, b, c] = frames(host.forwardedBytes);
    assert.deepEqual(a!.raw, before);
    assert.match(sqlOf(b!), REFUSAL);
    assert.deepEqual(c!.raw, after);
  });

  it('is off for sessions without read-only access', () => {
    const { g, host } = gate({ readOnly: false });
    const q = query('SET default_transaction_read_only = off');
    g.onClientChunk(q);
    assert.deepEqual(host.forwardedBytes, q);
  });

  it('in a fail-closed session the refusal is forwarded after the record is durable', async () => {
    const { g, host } = gate({ readOnly: true, failClosed: true });
    g.onClientChunk(query('BEGIN READ WRITE'));
    assert.equal(host.forwarded.length, 0);
    host.durable[0]!.resolve();
    await settle();
    assert.match(sqlOf(frameOf(host.forwardedBytes)), REFUSAL);
  });
});

describe('refusedStatement', () => {
  it('replaces a Query with the default refusal (feature_not_supported), as a well-formed Query', () => {
    const orig = frameOf(query('SET search_path = evil'));
    const r = refusedStatement(orig);
    assert.equal(r.type, Frontend.Query);
    assert.deepEqual(r.body, r.raw.subarray(5));
    const f = frameOf(r.raw);
    assert.equal(f.type, Frontend.Query);
    assert.match(sqlOf(f), /ERRCODE = 'feature_not_supported'/);
    assert.equal(f.body.length, Buffer.byteLength(sqlOf(f)) + 1, 'one NUL-terminated string');
  });

  it('uses the SQL it is given', () => {
    const r = refusedStatement(frameOf(query('SELECT 1')), 'SELECT 0');
    assert.deepEqual(r.raw, query('SELECT 0'));
  });

  it('keeps a Parse statement name and declares as many parameters as the $n in the text', () => {
    const r = refusedStatement(frameOf(parse('stmt_a', 'SET search_path = $1 || $3')));
    assert.equal(r.type, Frontend.Parse);
    const p = parseParts(frameOf(r.raw));
    assert.equal(p.name, 'stmt_a');
    assert.match(p.sql, /feature_not_supported/);
    assert.deepEqual(p.types, [25, 25, 25], 'text for each $n up to the highest');
  });

  it('keeps the declared types, then text for further $n', () => {
    const p = parseParts(frameOf(refusedStatement(frameOf(parse('s', 'LISTEN x; SELECT $1, $2, $4', [23, 0]))).raw));
    assert.deepEqual(p.types, [23, 0, 25, 25]);
  });

  it('declares every declared type even when the text uses fewer', () => {
    const p = parseParts(frameOf(refusedStatement(frameOf(parse('', 'SET x = 1', [20, 1043, 16]))).raw));
    assert.equal(p.name, '');
    assert.deepEqual(p.types, [20, 1043, 16]);
  });

  it('declares no parameters for a statement without any', () => {
    const p = parseParts(frameOf(refusedStatement(frameOf(parse('n', 'DISCARD ALL'))).raw));
    assert.deepEqual(p.types, []);
  });

  it('is well-formed for the client: a Parse frame the reader accepts, no trailing bytes', () => {
    const raw = refusedStatement(frameOf(parse('s', 'SELECT $2', [23]))).raw;
    assert.equal(raw.readUInt32BE(1), raw.length - 1);
    assert.equal(frames(raw).length, 1);
  });
});
