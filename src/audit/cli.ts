/**
 * `pgwarden audit verify` and `pgwarden audit keygen`: argument handling and the report an
 * auditor reads. The checks are verify.ts's, the key format checkpoint.ts's.
 */
import { parseArgs } from 'node:util';
import { writeFile } from 'node:fs/promises';
import { createPublicKey, type KeyObject } from 'node:crypto';
import { loadConfigFile } from '../config/load.js';
import { ConfigError } from '../config/schema.js';
import { generateCheckpointKey, keyId, loadPrivateKey, loadPublicKey, rawPublicKey } from './checkpoint.js';
import { orderAuditFiles } from './files.js';
import { auditFileSet, verifyAuditFiles } from './verify.js';

/** Exit code, or null for a usage error (the caller prints the usage). */
export async function runAuditCommand(args: readonly string[], out: (text: string) => void): Promise<number | null> {
  const [sub, ...rest] = args;
  try {
    if (sub === 'verify') return await verify(rest, out);
    if (sub === 'keygen') return await keygen(rest, out);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code?.startsWith('ERR_PARSE_ARGS') === true || err instanceof ConfigError) throw err;
    // Missing files, unreadable keys: one line, no stack.
    process.stderr.write(`pgwarden audit ${sub ?? ''}: ${e.message}\n`);
    return 1;
  }
  return null;
}

async function verify(args: readonly string[], out: (text: string) => void): Promise<number | null> {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    options: { 'public-key': { type: 'string' }, config: { type: 'string', short: 'c' } },
  });
  let publicKey: KeyObject | undefined;
  let origin: string | undefined;
  let files = positionals;
  if (values['public-key'] !== undefined) publicKey = await loadPublicKey(values['public-key']);
  if (values.config !== undefined) {
    const config = await loadConfigFile(values.config);
    if (publicKey === undefined && config.audit.checkpointKeyPath !== undefined) publicKey = createPublicKey(await loadPrivateKey(config.audit.checkpointKeyPath));
    origin = config.audit.checkpointOrigin;
    if (files.length === 0 && config.audit.file !== undefined) files = [config.audit.file];
  }
  if (files.length === 0) return null;
  // One path: the live file and its rotated siblings. Several: as given, rotated ones first, oldest first.
  const set = files.length === 1 ? await auditFileSet(files[0]!) : orderAuditFiles(files);
  const r = await verifyAuditFiles(set, publicKey === undefined ? {} : { publicKey });
  const what = `${r.records} record${r.records === 1 ? '' : 's'} in ${r.files} file${r.files === 1 ? '' : 's'}, ${r.checkpoints} checkpoint${r.checkpoints === 1 ? '' : 's'} ${r.signaturesChecked ? 'verified' : 'checked (signatures NOT checked: no --public-key or --config)'}`;
  if (!r.ok) {
    const b = r.firstBad!;
    out(`FAILED: ${b.file}:${b.line}${b.id === undefined ? '' : ` (id ${b.id})`}: ${b.problem}\n`);
    out(`before it: ${what}\n`);
    return 1;
  }
  out(`OK: ${what}; head ${r.head ?? '(empty)'}\n`);
  if (publicKey !== undefined) out(`key id ${keyId(origin ?? 'pgwarden', rawPublicKey(publicKey))}${origin === undefined ? ' (for origin "pgwarden")' : ''}\n`);
  for (const g of r.gaps) out(`WARNING: ${g.file}:${g.line}: declared gap, records seq ${g.fromSeq}..${g.toSeq} were not written (${g.cause})\n`);
  if (r.uncovered > 0 && r.signaturesChecked) out(`note: the last ${r.uncovered} record${r.uncovered === 1 ? ' is' : 's are'} after the last checkpoint (chained, not yet signed)\n`);
  return 0;
}

async function keygen(args: readonly string[], out: (text: string) => void): Promise<number | null> {
  const { values } = parseArgs({ args: [...args], options: { out: { type: 'string', short: 'o' }, origin: { type: 'string' } } });
  if (values.out === undefined) return null;
  const origin = values.origin ?? 'pgwarden';
  const key = generateCheckpointKey();
  // 'wx': never overwrite a key (an existing one signs checkpoints already written).
  await writeFile(values.out, key.privatePem, { mode: 0o600, flag: 'wx' });
  await writeFile(`${values.out}.pub`, key.publicPem, { mode: 0o644, flag: 'wx' });
  out(`private key: ${values.out} (mode 0600; set [audit] checkpoint_key to it)\npublic key:  ${values.out}.pub (give it to auditors: pgwarden audit verify --public-key ${values.out}.pub FILE)\n`);
  out(`key id ${keyId(origin, key.publicRaw)} for origin "${origin}"\n${key.publicPem}`);
  return 0;
}
