/**
 * `pgwarden audit verify`: re-derives every record's hash and checks the chain links and the
 * per-boot sequence, naming the first record that does not fit (edited, removed or reordered).
 */
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { AUDIT_SCHEMA, recordHash } from './record.js';

export interface VerifyResult {
  ok: boolean;
  records: number;
  head: string | null;
  firstBad?: { line: number; id: string | undefined; problem: string };
}

export async function verifyAuditFile(file: string): Promise<VerifyResult> {
  const rl = createInterface({ input: createReadStream(file, 'utf8'), crlfDelay: Infinity });
  let lineNo = 0;
  let records = 0;
  let prevHash: string | null | undefined; // undefined: no record yet
  const lastSeq = new Map<string, number>();
  const bad = (line: number, id: string | undefined, problem: string): VerifyResult => {
    rl.close();
    return { ok: false, records, head: prevHash ?? null, firstBad: { line, id, problem } };
  };
  for await (const line of rl) {
    lineNo++;
    if (line.length === 0) continue;
    let rec: (Record<string, unknown> & { chain?: { prev?: unknown; hash?: unknown } | null }) | null;
    try {
      rec = JSON.parse(line) as typeof rec;
    } catch {
      return bad(lineNo, undefined, 'not valid JSON');
    }
    if (rec === null) return bad(lineNo, undefined, 'not a JSON object');
    const id = typeof rec['id'] === 'string' ? rec['id'] : undefined;
    if (rec['schema'] !== AUDIT_SCHEMA) return bad(lineNo, id, `schema is not ${AUDIT_SCHEMA}`);
    const chain = rec.chain;
    if (typeof chain !== 'object' || chain === null || typeof chain.hash !== 'string' || !(typeof chain.prev === 'string' || chain.prev === null)) {
      return bad(lineNo, id, 'missing chain');
    }
    const expected = recordHash(rec as Parameters<typeof recordHash>[0]);
    if (expected !== chain.hash) return bad(lineNo, id, 'hash mismatch: the record was altered');
    if (prevHash !== undefined && chain.prev !== prevHash) {
      return bad(lineNo, id, 'chain broken: a record before this one was removed, inserted or reordered');
    }
    const instance = rec['instance'] as { boot_id?: unknown } | undefined;
    const bootId = typeof instance?.boot_id === 'string' ? instance.boot_id : '';
    const seq = rec['seq'];
    if (typeof seq !== 'number' || !Number.isSafeInteger(seq)) return bad(lineNo, id, 'missing seq');
    const last = lastSeq.get(bootId);
    if (last === undefined ? seq !== 0 && records > 0 : seq !== last + 1) {
      return bad(lineNo, id, `sequence gap: expected seq ${last === undefined ? 0 : last + 1}, found ${seq}`);
    }
    lastSeq.set(bootId, seq);
    prevHash = chain.hash;
    records++;
  }
  return { ok: true, records, head: prevHash ?? null };
}
