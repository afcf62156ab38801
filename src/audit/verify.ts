/**
 * `pgwarden audit verify`: re-derives every record's hash and checks the chain links (across
 * rotated files), the per-boot sequence, declared gaps, and every checkpoint: its signature (given
 * the public key), and that its head_hash, last_seq, first_seq and count match the records it
 * covers. Names the first record that does not fit (file, line, id, problem).
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import type { KeyObject } from 'node:crypto';
import { AUDIT_SCHEMA, recordHash } from './record.js';
import { checkSignature, SIG_ALG } from './checkpoint.js';
import { rotatedSiblings } from './files.js';

export interface VerifyOptions {
  /** Checkpoint signatures are checked only with a key; without one only their heads are. */
  readonly publicKey?: KeyObject;
}

export interface BadRecord {
  file: string;
  line: number;
  id: string | undefined;
  problem: string;
}

export interface DeclaredGap {
  file: string;
  line: number;
  fromSeq: number;
  toSeq: number;
  cause: string;
}

export interface VerifyResult {
  ok: boolean;
  records: number;
  files: number;
  /** Checkpoints whose head matched (and whose signature verified, when a key was given). */
  checkpoints: number;
  signaturesChecked: boolean;
  /** Records after the last good checkpoint: covered by the chain only, not by a signature. */
  uncovered: number;
  /** audit.gap records: records the writer had to drop (the chain skips them, declared). */
  gaps: DeclaredGap[];
  head: string | null;
  firstBad?: BadRecord;
}

type Rec = Record<string, unknown> & { chain?: { prev?: unknown; hash?: unknown } | null };

interface BootState {
  lastSeq: number;
  /** seq of the boot's last checkpoint, or -1 when the boot's first record (seq 0) was seen without one; undefined when the boot started before the files given. */
  lastCheckpoint: number | undefined;
}

/** The files of a live audit log: its rotated siblings oldest first, then the file itself. */
export async function auditFileSet(file: string): Promise<string[]> {
  const files = await rotatedSiblings(file);
  try {
    await stat(file);
    files.push(file);
  } catch {
    if (files.length === 0) files.push(file); // let the read report the missing file
  }
  return files;
}

export async function verifyAuditFile(file: string, opts: VerifyOptions = {}): Promise<VerifyResult> {
  return verifyAuditFiles([file], opts);
}

/** Verifies the files as one chain, in the order given (oldest first). */
export async function verifyAuditFiles(files: readonly string[], opts: VerifyOptions = {}): Promise<VerifyResult> {
  const v = new ChainVerifier(opts);
  for (const file of files) if (!(await v.file(file))) break;
  return v.result();
}

/**
 * Where a verification stood after some files: enough to go on with the next file exactly as one
 * run over all of them would. A copy: the verifier it came from may go on.
 */
export interface ChainPoint {
  readonly result: VerifyResult;
  readonly prevHash: string | null | undefined;
  readonly boots: ReadonlyMap<string, Readonly<BootState>>;
  readonly seen: ChainRecords;
}

/** The records a verification passed that tell the chain's state: the last checkpoint, and every declared gap. */
export interface ChainRecords {
  readonly lastCheckpoint: Readonly<Record<string, unknown>> | undefined;
  readonly gaps: readonly Readonly<Record<string, unknown>>[];
}

/**
 * One chain verified file by file (oldest first), so a caller may stop after any file, keep
 * `point()`, and later go on from it with the files that came after (the audit view does, for
 * rotated files that cannot have changed since).
 */
export class ChainVerifier {
  private res: VerifyResult;
  private prevHash: string | null | undefined; // undefined: no record yet
  private readonly boots: Map<string, BootState>;
  private lastCheckpoint: Rec | undefined;
  private readonly gapRecords: Rec[];

  constructor(
    private readonly opts: VerifyOptions = {},
    from?: ChainPoint,
  ) {
    this.res = from === undefined ? { ok: true, records: 0, files: 0, checkpoints: 0, signaturesChecked: opts.publicKey !== undefined, uncovered: 0, gaps: [], head: null } : copyResult(from.result);
    this.prevHash = from?.prevHash;
    this.boots = new Map([...(from?.boots ?? [])].map(([id, b]) => [id, { ...b }]));
    this.lastCheckpoint = from?.seen.lastCheckpoint;
    this.gapRecords = [...((from?.seen.gaps ?? []) as Rec[])];
  }

  /** The last checkpoint and the declared gaps among the records verified so far (records are not changed after parsing, so they are shared). */
  records(): ChainRecords {
    return { lastCheckpoint: this.lastCheckpoint, gaps: [...this.gapRecords] };
  }

  /** What was found so far (ok false names the first bad record; nothing is verified after it). */
  result(): VerifyResult {
    return this.res.ok ? { ...copyResult(this.res), head: this.prevHash ?? null } : copyResult(this.res);
  }

  point(): ChainPoint {
    return { result: copyResult(this.res), prevHash: this.prevHash, boots: new Map([...this.boots].map(([id, b]) => [id, { ...b }])), seen: this.records() };
  }

  /** Verifies one more file; false when a record in it does not fit (then no more files may follow). */
  async file(file: string): Promise<boolean> {
    if (!this.res.ok) return false;
    const result = this.res;
    const boots = this.boots;
    result.files++;
    const rl = createInterface({ input: createReadStream(file, 'utf8'), crlfDelay: Infinity });
    let lineNo = 0;
    const bad = (id: string | undefined, problem: string): false => {
      rl.close();
      this.res = { ...result, ok: false, head: this.prevHash ?? null, firstBad: { file, line: lineNo, id, problem } };
      return false;
    };
    for await (const line of rl) {
      lineNo++;
      if (line.length === 0) continue;
      let rec: Rec | null;
      try {
        rec = JSON.parse(line) as Rec | null;
      } catch {
        return bad(undefined, 'not valid JSON (a torn or edited line)');
      }
      if (typeof rec !== 'object' || rec === null || Array.isArray(rec)) return bad(undefined, 'not a JSON object');
      const id = typeof rec['id'] === 'string' ? rec['id'] : undefined;
      if (rec['schema'] !== AUDIT_SCHEMA) return bad(id, `schema is not ${AUDIT_SCHEMA}`);
      const chain = rec.chain;
      if (typeof chain !== 'object' || chain === null || typeof chain.hash !== 'string' || !(typeof chain.prev === 'string' || chain.prev === null)) {
        return bad(id, 'missing chain');
      }
      const expected = recordHash(rec as Parameters<typeof recordHash>[0]);
      if (expected !== chain.hash) return bad(id, 'hash mismatch: the record was altered');
      const instance = rec['instance'] as { boot_id?: unknown } | undefined;
      const bootId = typeof instance?.boot_id === 'string' ? instance.boot_id : '';
      const seq = rec['seq'];
      if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 0) return bad(id, 'missing seq');
      const boot = boots.get(bootId);

      // A declared gap: the writer dropped to_seq - from_seq + 1 records it could not keep, and says so.
      const gap = rec['event'] === 'audit.gap' ? declaredGap(rec, seq, boot) : null;
      if (this.prevHash !== undefined && chain.prev !== this.prevHash && gap === null) {
        return bad(id, 'chain broken: a record before this one was removed, inserted or reordered');
      }
      if (gap === null) {
        if (boot === undefined ? seq !== 0 && result.records > 0 : seq !== boot.lastSeq + 1) {
          return bad(id, `sequence gap: expected seq ${boot === undefined ? 0 : boot.lastSeq + 1}, found ${seq}`);
        }
      } else {
        result.gaps.push({ file, line: lineNo, fromSeq: gap.from, toSeq: gap.to, cause: typeof rec['cause'] === 'string' ? rec['cause'] : 'unknown' });
      }
      const state: BootState = boot ?? { lastSeq: seq, lastCheckpoint: seq === 0 ? -1 : undefined };
      boots.set(bootId, state);

      if (rec['event'] === 'audit.checkpoint') {
        const problem = checkCheckpoint(rec, seq, chain.prev, this.prevHash, state, this.opts.publicKey);
        if (problem !== null) return bad(id, problem);
        state.lastCheckpoint = seq;
        this.lastCheckpoint = rec;
        result.checkpoints++;
        result.uncovered = 0;
      } else {
        result.uncovered++;
      }
      // Every gap record, declared drops and also a restart's (a new boot saying the last one ended uncleanly).
      if (rec['event'] === 'audit.gap') this.gapRecords.push(rec);
      state.lastSeq = seq;
      this.prevHash = chain.hash;
      result.records++;
    }
    return true;
  }
}

function copyResult(r: VerifyResult): VerifyResult {
  return { ...r, gaps: r.gaps.map((g) => ({ ...g })), ...(r.firstBad === undefined ? {} : { firstBad: { ...r.firstBad } }) };
}

/** The range an audit.gap record declares, if it fits exactly between the last record and itself. */
function declaredGap(rec: Rec, seq: number, boot: BootState | undefined): { from: number; to: number } | null {
  const from = rec['from_seq'];
  const to = rec['to_seq'];
  if (boot === undefined || typeof from !== 'number' || typeof to !== 'number') return null;
  if (from !== boot.lastSeq + 1 || to !== seq - 1 || to < from) return null;
  return { from, to };
}

function checkCheckpoint(rec: Rec, seq: number, prev: unknown, prevHash: string | null | undefined, boot: BootState, key: KeyObject | undefined): string | null {
  const { origin, first_seq: firstSeq, last_seq: lastSeq, count, head_hash: head, sig_alg: alg, key_id: kid, signature } = rec;
  if (typeof origin !== 'string' || typeof firstSeq !== 'number' || typeof lastSeq !== 'number' || typeof count !== 'number' || typeof head !== 'string' || typeof kid !== 'string' || typeof signature !== 'string') {
    return 'checkpoint is missing fields';
  }
  if (alg !== SIG_ALG) return `checkpoint sig_alg is not ${SIG_ALG}`;
  // The head is the record just before the checkpoint, in this boot.
  if (lastSeq !== seq - 1 || head !== prev || (prevHash !== undefined && head !== prevHash)) {
    return 'checkpoint head does not match the records it covers (head_hash/last_seq is not the previous record)';
  }
  if (boot.lastCheckpoint !== undefined && firstSeq !== boot.lastCheckpoint + 1) {
    return `checkpoint first_seq ${firstSeq} does not follow the previous checkpoint (expected ${boot.lastCheckpoint + 1})`;
  }
  if (count !== lastSeq - firstSeq + 1) return 'checkpoint count does not match first_seq..last_seq';
  return key === undefined ? null : checkSignature(key, { origin, last_seq: lastSeq, head_hash: head, key_id: kid, signature });
}
