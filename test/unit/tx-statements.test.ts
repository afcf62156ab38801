/**
 * Transaction mode's statement renaming (session/relay/tx-statements.ts), bytes in, bytes out: what a
 * client's Parse/Bind/Describe/Close become on the backend at hand (StatementTracker), and how the
 * backend's replies are matched back to what the client asked (ReplyQueue), with no sockets.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { serialize } from 'pg-protocol';
import { Backend as B } from '../../src/protocol/codes.js';
import { FrameReader } from '../../src/protocol/frame-reader.js';
import { MAX_PREPARED_PER_BACKEND, ReplyQueue, StatementTracker, type Expectation, type PreparedCache } from '../../src/session/relay/tx-statements.js';
import { typed } from '../support/wire.js';

/** A backend's prepared-statement cache, as pool/backend.ts keeps it. */
const backend = (): PreparedCache => ({ prepared: new Set<string>() });

/** One client frame as the relay hands it over: type, body, whole frame. */
interface ClientFrame {
  type: number;
  body: Buffer;
  raw: Buffer;
}
const client = (raw: Buffer): ClientFrame => ({ type: raw[0]!, body: raw.subarray(5), raw });

/** Splits concatenated frames into [type letter, body]. */
function frames(bufs: readonly Buffer[]): [string, Buffer][] {
  const all = Buffer.concat(bufs);
  const out: [string, Buffer][] = [];
  for (let pos = 0; pos < all.length; ) {
    const len = all.readUInt32BE(pos + 1);
    out.push([String.fromCharCode(all[pos]!), all.subarray(pos + 5, pos + 1 + len)]);
    pos += 1 + len;
  }
  return out;
}

/** Statement name and definition of a Parse body. */
function parseParts(body: Buffer): { name: string; definition: Buffer } {
  const end = body.indexOf(0);
  return { name: body.toString('utf8', 0, end), definition: body.subarray(end + 1) };
}

/** The server name pgwarden must choose: pgw_ and 24 hex digits of SHA-256 over text\0, Int16 count, Int32 types. */
function expectedName(text: string, types: number[]): string {
  const definition = parseParts(serialize.parse({ name: 'x', text, types }).subarray(5)).definition;
  return `pgw_${createHash('sha256').update(definition).digest('hex').slice(0, 24)}`;
}

function rewrite(t: StatementTracker, b: PreparedCache, ...raws: Buffer[]): { out: Buffer[]; expect: Expectation[] } {
  const out: Buffer[] = [];
  const expect: Expectation[] = [];
  for (const raw of raws) {
    const f = client(raw);
    t.rewrite(f.type, f.body, f.raw, b, out, expect);
  }
  return { out, expect };
}

const parse = (name: string, text: string, types: number[] = []): Buffer => serialize.parse({ name, text, types });
const bind = (statement: string, portal = '', values: string[] = []): Buffer => serialize.bind({ statement, portal, values });
const PARSE_COMPLETE = typed('1', Buffer.alloc(0));
const BIND_COMPLETE = typed('2', Buffer.alloc(0));
const CLOSE_COMPLETE = typed('3', Buffer.alloc(0));
const NO_DATA = typed('n', Buffer.alloc(0));
const rfq = (s: string): Buffer => typed('Z', Buffer.from(s));
const commandComplete = (tag: string): Buffer => typed('C', Buffer.from(`${tag}\0`));
const errorResponse = (code: string): Buffer => typed('E', Buffer.from(`SERROR\0VERROR\0C${code}\0Mboom\0\0`));

describe('StatementTracker: renaming', () => {
  it('a named Parse goes to the backend as pgw_<hash of text and types>, with the definition byte for byte', () => {
    const t = new StatementTracker();
    const b = backend();
    const { out, expect } = rewrite(t, b, parse('client_stmt', 'SELECT $1::int', [23]));
    const sent = frames(out);
    assert.equal(sent.length, 1);
    assert.equal(sent[0]![0], 'P');
    const { name, definition } = parseParts(sent[0]![1]);
    assert.equal(name, expectedName('SELECT $1::int', [23]));
    assert.match(name, /^pgw_[0-9a-f]{24}$/);
    assert.deepEqual(definition, parseParts(parse('client_stmt', 'SELECT $1::int', [23]).subarray(5)).definition);
    assert.deepEqual([...b.prepared], [name]);
    assert.equal(t.size, 1);
    // The client asked for this Parse: its ParseComplete is not swallowed.
    assert.equal(expect.length, 1);
    assert.equal(expect[0]!.ends, '1');
    assert.equal(expect[0]!.swallow, false);
    assert.equal(expect[0]!.barrier, false);
  });

  it('same text and types give the same name for every client; other types or text another', () => {
    const a = rewrite(new StatementTracker(), backend(), parse('s1', 'SELECT $1', [23]));
    const b = rewrite(new StatementTracker(), backend(), parse('other_name', 'SELECT $1', [23]));
    const c = rewrite(new StatementTracker(), backend(), parse('s1', 'SELECT $1', [25]));
    const d = rewrite(new StatementTracker(), backend(), parse('s1', 'SELECT $1 ', [23]));
    const nameOf = (r: { out: Buffer[] }): string => parseParts(frames(r.out)[0]![1]).name;
    assert.equal(nameOf(a), nameOf(b));
    assert.notEqual(nameOf(a), nameOf(c));
    assert.notEqual(nameOf(a), nameOf(d));
  });

  it('a Parse the backend already has is answered by pgwarden: nothing is sent', () => {
    const b = backend();
    rewrite(new StatementTracker(), b, parse('s1', 'SELECT 1'));
    const { out, expect } = rewrite(new StatementTracker(), b, parse('mine', 'SELECT 1'));
    assert.equal(out.length, 0);
    assert.equal(expect.length, 1);
    assert.deepEqual(expect[0]!.synth, PARSE_COMPLETE);
  });

  it('unnamed statements, unknown names and other messages pass unchanged', () => {
    const t = new StatementTracker();
    const b = backend();
    const raws = [parse('', 'SELECT 1'), bind(''), bind('never_parsed'), serialize.describe({ type: 'P', name: '' }), serialize.execute({}), serialize.sync(), serialize.query('SELECT 1')];
    const { out, expect } = rewrite(t, b, ...raws);
    assert.equal(out.length, raws.length);
    out.forEach((o, i) => assert.equal(o, raws[i], 'the same buffer, not a copy'));
    assert.deepEqual(
      expect.map((e) => [e.ends, e.swallow, e.barrier]),
      [
        ['1', false, false],
        ['2', false, false],
        ['2', false, false],
        ['Tn', false, false],
        ['CIs', false, false],
        ['Z', false, true],
        ['Z', false, true],
      ],
    );
    assert.equal(b.prepared.size, 0);
    assert.equal(t.size, 0);
  });

  it('Bind and Describe of a named statement use the server name; portal and parameters stay byte for byte', () => {
    const t = new StatementTracker();
    const b = backend();
    rewrite(t, b, parse('s1', 'SELECT $1::text', [25]));
    const server = expectedName('SELECT $1::text', [25]);
    const { out, expect } = rewrite(t, b, bind('s1', 'portal_a', ['héllo']), serialize.describe({ type: 'S', name: 's1' }));
    const sent = frames(out);
    assert.deepEqual(
      sent.map(([type]) => type),
      ['B', 'D'],
    );
    const want = bind(server, 'portal_a', ['héllo']).subarray(5);
    assert.deepEqual(sent[0]![1], want);
    assert.deepEqual(sent[1]![1], Buffer.from(`S${server}\0`));
    assert.deepEqual(
      expect.map((e) => [e.ends, e.swallow]),
      [
        ['2', false],
        ['Tn', false],
      ],
    );
  });

  it('on a backend without the statement, Bind first prepares it with an injected Parse whose reply is swallowed', () => {
    const t = new StatementTracker();
    rewrite(t, backend(), parse('s1', 'SELECT 1'));
    const other = backend();
    const { out, expect } = rewrite(t, other, bind('s1'));
    const sent = frames(out);
    assert.deepEqual(
      sent.map(([type]) => type),
      ['P', 'B'],
    );
    assert.equal(parseParts(sent[0]![1]).name, expectedName('SELECT 1', []));
    assert.deepEqual([...other.prepared], [expectedName('SELECT 1', [])]);
    assert.deepEqual(
      expect.map((e) => [e.ends, e.swallow]),
      [
        ['1', true],
        ['2', false],
      ],
    );
  });

  it("the client's Close is answered by pgwarden and the server statement stays for others", () => {
    const t = new StatementTracker();
    const b = backend();
    rewrite(t, b, parse('s1', 'SELECT 1'));
    const { out, expect } = rewrite(t, b, serialize.close({ type: 'S', name: 's1' }));
    assert.equal(out.length, 0);
    assert.deepEqual(expect[0]!.synth, CLOSE_COMPLETE);
    assert.equal(t.size, 0);
    assert.equal(b.prepared.size, 1);
    // The name is gone for this client: a Bind now goes to the server as is (which says "does not exist").
    const raw = bind('s1');
    assert.equal(rewrite(t, b, raw).out[0], raw);
    // Closing a portal is the server's business.
    const portal = serialize.close({ type: 'P', name: 'p' });
    assert.equal(rewrite(t, b, portal).out[0], portal);
  });

  it(`keeps at most ${MAX_PREPARED_PER_BACKEND} statements per backend, closing the least recently used with a swallowed Close`, () => {
    const t = new StatementTracker();
    const b = backend();
    for (let i = 0; i < MAX_PREPARED_PER_BACKEND; i++) rewrite(t, b, parse(`s${i}`, `SELECT ${i}`));
    assert.equal(b.prepared.size, MAX_PREPARED_PER_BACKEND);
    // Using s0 makes it the most recent: s1 is now the coldest.
    assert.equal(rewrite(t, b, bind('s0')).out.length, 1);
    const { out, expect } = rewrite(t, b, parse('new', 'SELECT 999'));
    const sent = frames(out);
    assert.deepEqual(
      sent.map(([type]) => type),
      ['C', 'P'],
    );
    assert.deepEqual(sent[0]![1], Buffer.from(`S${expectedName('SELECT 1', [])}\0`));
    assert.deepEqual(
      expect.map((e) => [e.ends, e.swallow]),
      [
        ['3', true],
        ['1', false],
      ],
    );
    assert.equal(b.prepared.size, MAX_PREPARED_PER_BACKEND);
    assert.equal(b.prepared.has(expectedName('SELECT 1', [])), false);
    assert.equal(b.prepared.has(expectedName('SELECT 0', [])), true);
  });
});

describe('ReplyQueue: replies matched to what the client asked', () => {
  /** Runs client frames through the tracker into the queue, then server replies; returns what the client gets. */
  function exchange(t: StatementTracker, b: PreparedCache, q: ReplyQueue, clientFrames: Buffer[], replies: Buffer[]): { sent: Buffer[]; got: Buffer[] } {
    const { out, expect } = rewrite(t, b, ...clientFrames);
    for (const e of expect) q.push(e);
    const got: Buffer[] = [];
    q.flushSynth(got);
    for (const r of replies) q.onReply(r[0]!, r, got);
    return { sent: out, got };
  }

  it('swallows the injected Parse reply, passes the rest in order, and ends at ReadyForQuery', () => {
    const t = new StatementTracker();
    rewrite(t, backend(), parse('s1', 'SELECT 1'));
    const q = new ReplyQueue();
    const { got } = exchange(t, backend(), q, [bind('s1'), serialize.execute({}), serialize.sync()], [PARSE_COMPLETE, BIND_COMPLETE, typed('D', Buffer.from([0, 1, 0, 0, 0, 1, 0x31])), commandComplete('SELECT 1'), rfq('I')]);
    assert.deepEqual(
      frames(got).map(([type]) => type),
      ['2', 'D', 'C', 'Z'],
    );
    assert.equal(q.empty, true);
  });

  it('synthesised replies take their place in the order the client sent the messages', () => {
    const t = new StatementTracker();
    const b = backend();
    rewrite(t, b, parse('warm', 'SELECT 1'));
    const q = new ReplyQueue();
    // Parse (answered by us: the backend has it), Bind, Close (answered by us), Sync.
    const { sent, got } = exchange(t, b, q, [parse('again', 'SELECT 1'), bind('again'), serialize.close({ type: 'S', name: 'again' }), serialize.sync()], []);
    assert.deepEqual(
      frames(sent).map(([type]) => type),
      ['B', 'S'],
    );
    // Our ParseComplete is due at once: nothing the backend owes comes before it.
    assert.deepEqual(
      frames(got).map(([type]) => type),
      ['1'],
    );
    const rest: Buffer[] = [];
    q.onReply(B.BindComplete, BIND_COMPLETE, rest);
    // BindComplete, then our CloseComplete right after it, before the backend's ReadyForQuery.
    assert.deepEqual(
      frames(rest).map(([type]) => type),
      ['2', '3'],
    );
    const last: Buffer[] = [];
    q.onReply(B.ReadyForQuery, rfq('I'), last);
    assert.deepEqual(frames(last), [['Z', Buffer.from('I')]]);
    assert.equal(q.empty, true);
  });

  it('an error skips to the Sync barrier, undoing the injected Parse so the statement is prepared again next time', () => {
    const t = new StatementTracker();
    rewrite(t, backend(), parse('s1', 'SELEC 1'));
    const b = backend();
    const q = new ReplyQueue();
    const { got } = exchange(t, b, q, [bind('s1'), serialize.execute({}), serialize.sync()], [errorResponse('42601'), rfq('I')]);
    // The client sees the error (its statement is broken) and the ReadyForQuery; nothing for Bind or Execute.
    assert.deepEqual(
      frames(got).map(([type]) => type),
      ['E', 'Z'],
    );
    assert.equal(b.prepared.size, 0, 'the failed Parse did not prepare anything on this backend');
    assert.equal(q.empty, true);
    const again = rewrite(t, b, bind('s1'));
    assert.deepEqual(
      frames(again.out).map(([type]) => type),
      ['P', 'B'],
    );
  });

  it('an error in a simple Query does not pop past it: the Query ends at its own ReadyForQuery', () => {
    const q = new ReplyQueue();
    const t = new StatementTracker();
    const { got } = exchange(t, backend(), q, [serialize.query('SELECT 1/0'), serialize.query('SELECT 1')], [errorResponse('22012'), rfq('I')]);
    assert.deepEqual(
      frames(got).map(([type]) => type),
      ['E', 'Z'],
    );
    assert.equal(q.empty, false, 'the second Query is still owed');
    const more: Buffer[] = [];
    for (const r of [commandComplete('SELECT 1'), rfq('I')]) q.onReply(r[0]!, r, more);
    assert.equal(q.empty, true);
  });

  it('NoticeResponse, NotificationResponse and ParameterStatus pass without completing anything', () => {
    const q = new ReplyQueue();
    const t = new StatementTracker();
    const notice = typed('N', Buffer.from('SNOTICE\0Mhi\0\0'));
    const notify = typed('A', Buffer.concat([Buffer.from([0, 0, 0, 1]), Buffer.from('ch\0payload\0')]));
    const status = typed('S', Buffer.from('TimeZone\0UTC\0'));
    const { got } = exchange(t, backend(), q, [serialize.sync()], [notice, notify, status]);
    assert.deepEqual(got, [notice, notify, status]);
    assert.equal(q.empty, false);
    // With nothing owed, replies pass too.
    const idle = new ReplyQueue();
    const out: Buffer[] = [];
    idle.onReply(B.NoticeResponse, notice, out);
    assert.deepEqual(out, [notice]);
  });

  it('Describe ends at RowDescription or NoData; Execute at CommandComplete, EmptyQueryResponse or PortalSuspended', () => {
    for (const [end, owedAfter] of [
      [NO_DATA, false],
      [typed('T', Buffer.from([0, 0])), false],
    ] as const) {
      const q = new ReplyQueue();
      const { got } = exchange(new StatementTracker(), backend(), q, [serialize.describe({ type: 'P', name: '' })], [typed('t', Buffer.from([0, 0])), end]);
      assert.equal(got.length, 2);
      assert.equal(q.empty, !owedAfter);
    }
    for (const end of [commandComplete('SELECT 0'), typed('I', Buffer.alloc(0)), typed('s', Buffer.alloc(0))]) {
      const q = new ReplyQueue();
      exchange(new StatementTracker(), backend(), q, [serialize.execute({})], [typed('D', Buffer.from([0, 0])), end]);
      assert.equal(q.empty, true, `Execute ends at ${String.fromCharCode(end[0]!)}`);
    }
  });

  it('fed as bytes split at every offset, the client gets the same frames', () => {
    const t = new StatementTracker();
    rewrite(t, backend(), parse('s1', 'SELECT 1'));
    const stream = Buffer.concat([PARSE_COMPLETE, BIND_COMPLETE, typed('D', Buffer.from([0, 1, 0, 0, 0, 1, 0x31])), commandComplete('SELECT 1'), rfq('I')]);
    let reference: Buffer | null = null;
    for (let cut = 0; cut <= stream.length; cut++) {
      const b = backend();
      const q = new ReplyQueue();
      const { expect } = rewrite(t, b, bind('s1'), serialize.execute({}), serialize.sync());
      for (const e of expect) q.push(e);
      const reader = new FrameReader();
      const got: Buffer[] = [];
      for (const chunk of [stream.subarray(0, cut), stream.subarray(cut)]) {
        reader.push(chunk);
        for (let f = reader.nextTyped(() => 1 << 20); f !== null; f = reader.nextTyped(() => 1 << 20)) q.onReply(f.type, Buffer.from(f.raw), got);
      }
      const bytes = Buffer.concat(got);
      reference ??= bytes;
      assert.deepEqual(bytes, reference, `split at ${cut}`);
      assert.equal(q.empty, true);
    }
    assert.deepEqual(
      frames([reference!]).map(([type]) => type),
      ['2', 'D', 'C', 'Z'],
    );
  });
});
