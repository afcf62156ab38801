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
  const result: VerifyResult = { ok: true, records: 0, files: 0, checkpoints: 0, signaturesChecked: opts.publicKey !== undefined, uncovered: 0, gaps: [], head: null };
  let prevHash: string | null | undefined; // undefined: no record yet
  const boots = new Map<string, BootState>();

  for (const file of files) {
    result.files++;
    const rl = createInterface({ input: createReadStream(file, 'utf8'), crlfDelay: Infinity });
    let lineNo = 0;
    const bad = (id: string | undefined, problem: string): VerifyResult => {
      rl.close();
      return { ...result, ok: false, head: prevHash ?? null, firstBad: { file, line: lineNo, id, problem } };
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
      if (prevHash !== undefined && chain.prev !== prevHash && gap === null) {
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
        const problem = checkCheckpoint(rec, seq, chain.prev, prevHash, state, opts.publicKey);
        if (problem !== null) return bad(id, problem);
        state.lastCheckpoint = seq;
        result.checkpoints++;
        result.uncovered = 0;
      } else {
        result.uncovered++;
      }
      state.lastSeq = seq;
      prevHash = chain.hash;
      result.records++;
    }
  }
  return { ...result, head: prevHash ?? null };
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
