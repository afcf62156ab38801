/**
 * What the audit view shows, read through the same code as `pgwarden audit sessions | query`
 * (query-source.ts's filters and sources, query-report.ts's session rows) and `pgwarden audit
 * verify` (verify.ts): session rows, one session's statements paired with their results, staff
 * access decisions, and the chain's state. Plain data out; the HTML is pages.ts's.
 */
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { stat } from 'node:fs/promises';
import type { AuditConfig } from '../../config/schema.js';
import { loadPrivateKey } from '../../audit/checkpoint.js';
import { listSessions, type SessionRow } from '../../audit/query-report.js';
import { sourceOfAuditConfig, type AuditFilter, type AuditSource } from '../../audit/query-source.js';
import { objectField } from '../../audit/record.js';
import { auditFileSet, ChainVerifier, type ChainPoint, type ChainRecords, type VerifyResult } from '../../audit/verify.js';

/** Rows a list page shows at most (the newest); the page says when there were more. */
export const MAX_ROWS = 500;

export type Rec = Record<string, unknown>;

/** A record's object field, or an empty one: the views read through absent fields. */
const obj = (v: unknown): Rec => objectField(v) ?? {};

/**
 * At most MAX_ROWS of the newest by time, newest first, and how many there were. Sorted by time,
 * not taken in log order: under workers the log order may stray from the times by a little, and
 * the older page (pages.ts) asks for everything before the oldest row shown. Record times are all
 * RFC 3339 UTC with microseconds, so they sort as strings; the sort is stable.
 */
function newest<T>(rows: readonly T[], time: (row: T) => unknown): { rows: T[]; total: number } {
  const key = (row: T): string => String(time(row));
  const sorted = [...rows].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
  return { rows: sorted.slice(-MAX_ROWS).reverse(), total: rows.length };
}

export interface SessionQuery extends AuditFilter {
  /** session.end's reason, or "open"; matched exactly. */
  readonly end?: string;
}

export interface Statement {
  readonly ei: number | null;
  readonly time: string;
  readonly kind: string;
  readonly query: string | null;
  readonly truncated: boolean;
  readonly statementName: string | null;
  /** The matching session.query_result (its `ref` is this statement's ei), if written. */
  readonly result: Rec | undefined;
}

export interface SessionDetail {
  readonly start: Rec | undefined;
  readonly end: Rec | undefined;
  readonly access: Rec | undefined;
  /** In the order the session sent them. */
  readonly statements: Statement[];
  readonly records: number;
}

export interface ChainState {
  readonly source: 'file' | 'postgres';
  /** The files' verification (verify.ts); null when the audit is read from the store. */
  readonly verify: VerifyResult | null;
  /** Of the files verified: how many were read now, and how many rotated ones were verified before and have not changed since. */
  readonly read: { readonly files: number; readonly unchanged: number } | null;
  readonly lastCheckpoint: Rec | undefined;
  readonly checkpoints: number;
  readonly gaps: Rec[];
}

/** What the view reads (AuditReader here; reader-thread.ts runs it off the proxy's thread). */
export interface AuditReading {
  sessions(q: SessionQuery): Promise<{ rows: SessionRow[]; total: number }>;
  session(id: string): Promise<SessionDetail>;
  staffDecisions(filter: AuditFilter & { decision?: 'allow' | 'deny' }): Promise<{ rows: Rec[]; total: number }>;
  chain(): Promise<ChainState>;
}

/** The audit as this instance's [audit] section says (read per call: a reload may change it). */
export class AuditReader implements AuditReading {
  constructor(private readonly audit: () => AuditConfig) {}

  /** Whether there is anything to read (an [audit] file or store). */
  get configured(): boolean {
    const a = this.audit();
    return a.file !== undefined || a.postgres !== undefined;
  }

  async sessions(q: SessionQuery): Promise<{ rows: SessionRow[]; total: number }> {
    const { end, ...filter } = q;
    const rows = await this.withSource((s) => listSessions(s, filter));
    return newest(end === undefined ? rows : rows.filter((r) => r.end === end), (r) => r.start);
  }

  async session(id: string): Promise<SessionDetail> {
    const recs = await this.withSource((s) => collect(s, { session: id }));
    const statements: Statement[] = [];
    const results = new Map<number, Rec>();
    for (const r of recs) {
      if (r['event'] === 'session.query_result' && typeof r['ref'] === 'number') results.set(r['ref'], r);
    }
    for (const r of recs) {
      if (r['event'] !== 'session.query') continue;
      const ei = typeof r['ei'] === 'number' ? r['ei'] : typeof obj(r['session'])['ei'] === 'number' ? (obj(r['session'])['ei'] as number) : null;
      statements.push({
        ei,
        time: String(r['time']),
        kind: typeof r['kind'] === 'string' ? r['kind'] : 'unknown',
        query: typeof r['query'] === 'string' ? r['query'] : null,
        truncated: r['query_truncated'] === true,
        statementName: typeof r['statement_name'] === 'string' && r['statement_name'] !== '' ? r['statement_name'] : null,
        result: ei === null ? undefined : results.get(ei),
      });
    }
    const first = (event: string): Rec | undefined => recs.find((r) => r['event'] === event);
    return { start: first('session.start'), end: first('session.end'), access: first('staff.access'), statements, records: recs.length };
  }

  async staffDecisions(filter: AuditFilter & { decision?: 'allow' | 'deny' }): Promise<{ rows: Rec[]; total: number }> {
    const { decision, ...f } = filter;
    const recs = await this.withSource((s) => collect(s, { ...f, events: ['staff.access'] }));
    return newest(decision === undefined ? recs : recs.filter((r) => r['decision'] === decision), (r) => r['time']);
  }

  /** The last checkpoint and every gap record; with a file, the whole chain verified (signatures too, given the key). */
  async chain(): Promise<ChainState> {
    const audit = this.audit();
    let verify: VerifyResult | null = null;
    let read: ChainState['read'] = null;
    if (audit.file !== undefined) {
      const key = await publicKeyOf(audit.checkpointKeyPath);
      const v = await verifiedFiles.verify(await auditFileSet(audit.file), audit.file, key);
      verify = v.result;
      read = { files: v.files, unchanged: v.unchanged };
      // A whole chain verified passed every checkpoint and gap record: no second read for them.
      if (verify.ok) return { source: 'file', verify, read, lastCheckpoint: v.seen.lastCheckpoint, checkpoints: verify.checkpoints, gaps: [...v.seen.gaps] };
    }
    const recs = await this.withSource((s) => collect(s, { events: ['audit.checkpoint', 'audit.gap'] }));
    const checkpoints = recs.filter((r) => r['event'] === 'audit.checkpoint');
    return {
      source: audit.file !== undefined ? 'file' : 'postgres',
      verify,
      read,
      lastCheckpoint: checkpoints.at(-1),
      checkpoints: checkpoints.length,
      gaps: recs.filter((r) => r['event'] === 'audit.gap'),
    };
  }

  private async withSource<T>(read: (s: AuditSource) => Promise<T>): Promise<T> {
    const source = sourceOfAuditConfig(this.audit());
    if (source === undefined) throw new NoAuditError();
    try {
      return await read(source);
    } finally {
      await source.close().catch(() => undefined);
    }
  }
}

/**
 * A file as it is now: any write, truncation, rename or utimes changes one of these, and the
 * change time cannot be set back from user space.
 */
async function identity(file: string): Promise<string | null> {
  try {
    const st = await stat(file, { bigint: true });
    return `${st.dev}:${st.ino}:${st.size}:${st.ctimeNs}:${st.mtimeNs}`;
  } catch {
    return null;
  }
}

/**
 * Rotated audit files are never written again, so the chain page verifies each one once: the
 * verifier's state after each is kept with the file's identity, and a later page goes on from the
 * longest run of files (oldest first) still identical, reading only the files after it and always
 * the live one. The result is what verifying every file would give. Kept per key (a new
 * checkpoint key verifies everything again). `pgwarden audit verify` always reads everything.
 */
export class VerifiedFiles {
  private keyId = '';
  private done: { file: string; identity: string; point: ChainPoint }[] = [];

  async verify(files: readonly string[], live: string, key: KeyObject | undefined): Promise<{ result: VerifyResult; seen: ChainRecords; files: number; unchanged: number }> {
    const keyId = key === undefined ? 'none' : createHash('sha256').update(key.export({ type: 'spki', format: 'der' })).digest('hex');
    if (keyId !== this.keyId) {
      this.keyId = keyId;
      this.done = [];
    }
    const rotated = files.filter((f) => f !== live);
    // Taken before reading: a file changed while it is read is cached under its old identity, so it is read again next time.
    const ids = await Promise.all(rotated.map(identity));
    let k = 0;
    while (k < this.done.length && k < rotated.length && this.done[k]!.file === rotated[k] && this.done[k]!.identity === ids[k]) k++;
    this.done.length = k;
    const v = new ChainVerifier(key === undefined ? {} : { publicKey: key }, k === 0 ? undefined : this.done[k - 1]!.point);
    let read = 0;
    let caching = true;
    for (let i = k; i < rotated.length; i++) {
      read++;
      if (!(await v.file(rotated[i]!))) return { result: v.result(), seen: v.records(), files: read, unchanged: k };
      const id = ids[i];
      if (id === null || id === undefined) caching = false; // it vanished meanwhile: keep nothing after it
      else if (caching) this.done.push({ file: rotated[i]!, identity: id, point: v.point() });
    }
    if (files.includes(live)) {
      read++;
      await v.file(live);
    }
    return { result: v.result(), seen: v.records(), files: read, unchanged: k };
  }
}

/** One per thread: the reader thread's reads share it. */
const verifiedFiles = new VerifiedFiles();

/** This instance keeps no audit to read ([audit] has neither file nor store). */
export class NoAuditError extends Error {
  constructor() {
    super('this pgwarden keeps no audit log to read ([audit] has no file and no [audit.postgres])');
  }
}

async function collect(source: AuditSource, filter: AuditFilter): Promise<Rec[]> {
  const out: Rec[] = [];
  for await (const r of source.records(filter)) out.push(r);
  return out;
}

/** The checkpoint key's public half, so verification checks signatures; the private key never leaves here. */
async function publicKeyOf(path: string | undefined): Promise<KeyObject | undefined> {
  if (path === undefined) return undefined;
  try {
    return createPublicKey(await loadPrivateKey(path));
  } catch {
    return undefined;
  }
}
