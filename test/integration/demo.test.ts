/**
 * `npm run demo` end to end: runs dist/scripts/demo.js as a child, runs a printed psql command
 * through the shell exactly as printed, then sends SIGINT and expects exit 0 and no `.demo/`.
 * What the demo stages is scripts/demo.ts's business; this only holds it to its printed word.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants, existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const DEMO = path.join(REPO, 'dist/scripts/demo.js');
const WORK = path.join(REPO, '.demo');
const TIMEOUT_MS = 60_000;

function onPath(cmd: string): boolean {
  return (process.env['PATH'] ?? '').split(path.delimiter).some((dir) => {
    try {
      accessSync(path.join(dir || '.', cmd), fsConstants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** A demo someone started by hand owns `.demo/`; the test must not fight it. */
function liveDemoPid(): number | undefined {
  try {
    const pid = Number(readFileSync(path.join(WORK, 'demo.pid'), 'utf8'));
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}

function sh(command: string, input: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('/bin/sh', ['-c', command], {
      cwd: REPO,
      env: { ...process.env, PSQLRC: '/dev/null', PGCONNECT_TIMEOUT: '10' },
      timeout: TIMEOUT_MS,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(input);
  });
}

const livePid = liveDemoPid();

describe('npm run demo', { skip: livePid === undefined ? false : `a demo is running (pid ${livePid})`, timeout: 3 * TIMEOUT_MS }, () => {
  let demo: ChildProcess;
  let out = '';
  let exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  before(async () => {
    demo = spawn(process.execPath, [DEMO], { cwd: REPO, env: { ...process.env, INIT_CWD: REPO }, stdio: ['ignore', 'pipe', 'pipe'] });
    demo.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    demo.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    exited = new Promise((resolve) => demo.once('exit', (code, signal) => resolve({ code, signal })));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`demo not ready after ${TIMEOUT_MS} ms:\n${out}`)), TIMEOUT_MS);
      const check = (): void => {
        if (!out.includes('Press Ctrl-C')) return;
        clearTimeout(timer);
        resolve();
      };
      demo.stdout!.on('data', check);
      void exited.then(({ code }) => {
        clearTimeout(timer);
        reject(new Error(`demo exited with ${code} before it was ready:\n${out}`));
      });
    });
  });

  after(async () => {
    if (demo?.exitCode !== null || demo.signalCode !== null) return;
    demo.kill('SIGINT');
    const t = setTimeout(() => demo.kill('SIGKILL'), TIMEOUT_MS);
    await exited;
    clearTimeout(t);
  });

  it('prints a psql command per tenant and the cross-tenant refusal', () => {
    for (const [tenant, role] of [['acme', 'acme_app'], ['globex', 'globex_app']]) {
      const re = new RegExp(`^  PGPASSWORD='[A-Za-z0-9_-]+' psql "host=${tenant}\\.pg\\.test hostaddr=127\\.0\\.0\\.1 port=\\d+ user=${role} dbname=${tenant} sslmode=verify-full sslrootcert=\\S+/\\.demo/certs/ca\\.crt channel_binding=require"$`, 'm');
      assert.match(out, re);
    }
    assert.match(out, /^ {2}=> .*FATAL: {2}password authentication failed for user "acme_app"/m);
    assert.match(out, /^ {2}node dist\/src\/cli\.js audit verify \.demo\/audit\.jsonl$/m);
  });

  it('the printed acme command works when pasted into a shell', { skip: onPath('psql') ? false : 'psql is not installed' }, async () => {
    const line = /^ {2}(PGPASSWORD=.* psql "host=acme\.pg\.test .*")$/m.exec(out)?.[1];
    assert.ok(line, `no acme command in:\n${out}`);
    const r = await sh(line, "SELECT current_user || '@' || current_database() || ':' || count(*) AS who FROM products;\n");
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /acme_app@acme:3/);
  });

  it("prints a staff line refused until acme grants, working after, and acme's own view of what staff did", { skip: onPath('psql') ? false : 'psql is not installed' }, async () => {
    const line = /^ {2}(PGPASSWORD='eyJ[^']+' psql "host=acme\.pg\.test [^"]* user=staff dbname=acme [^"]*")$/m.exec(out)?.[1];
    assert.ok(line, `no staff command in:\n${out}`);
    assert.ok(!line.includes('channel_binding'), 'a token exchange has no SCRAM to bind');
    const staffSql = "SELECT 'who:' || current_user FROM products LIMIT 1;\nDELETE FROM products;\n";
    const refused = await sh(line, staffSql);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /password authentication failed for user "staff"/);
    const acmeLine = (fn: string): string => {
      const l = new RegExp(`^ {2}(PGPASSWORD=.* psql "host=acme\\.pg\\.test [^"]* user=acme_app [^"]*" -c "SELECT[^"]*${fn}[^"]*")$`, 'm').exec(out)?.[1];
      assert.ok(l, `no ${fn} line in:\n${out}`);
      return l;
    };
    const grant = await sh(acmeLine('pgwarden.grant_support'), '');
    assert.equal(grant.code, 0, grant.stderr);
    const r = await sh(line, staffSql);
    assert.match(r.stdout, /who:acme_staff_ro/);
    assert.match(r.stderr, /cannot execute DELETE in a read-only transaction/);
    const grep = /^ {2}(grep '"reason_or_ticket":"DEMO-1"' .*)$/m.exec(out)?.[1];
    assert.ok(grep, 'no audit grep line');
    await new Promise((res) => setTimeout(res, 300)); // the audit file is written asynchronously
    const g = await sh(grep, '');
    assert.equal(g.code, 0, g.stderr);
    assert.match(g.stdout, /DELETE FROM products/);
    assert.match(g.stdout, /"sqlstate":"25006"/);
    const records = readFileSync(path.join(WORK, 'audit.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { event: string; decision?: string; staff?: { reason_or_ticket?: string; amr?: string[] } });
    const allow = records.find((rec) => rec.event === 'staff.access' && rec.decision === 'allow' && rec.staff?.reason_or_ticket === 'DEMO-1');
    assert.ok(allow, 'a staff.access allow record with the ticket');
    assert.deepEqual(allow.staff?.amr, ['pwd', 'mfa']);
    // acme's own table: the access and the statements, with the ticket (written asynchronously).
    const watch = acmeLine('pgwarden.staff_access_log');
    let seen = '';
    for (let i = 0; i < 50 && !/DELETE FROM products/.test(seen); i++) {
      await new Promise((res) => setTimeout(res, 100));
      seen = (await sh(watch, '')).stdout;
    }
    assert.match(seen, /DELETE FROM products/);
    assert.match(seen, /DEMO-1/);
    assert.match(seen, /demo-operator/);
    const revoke = await sh(acmeLine('pgwarden.revoke_support'), '');
    assert.equal(revoke.code, 0, revoke.stderr);
    assert.notEqual((await sh(line, staffSql)).code, 0, 'refused again after the revoke');
  });

  it('SIGINT stops everything, exits 0 and removes .demo/', async () => {
    assert.ok(existsSync(WORK));
    demo.kill('SIGINT');
    let timer: NodeJS.Timeout | undefined;
    const result = await Promise.race([
      exited,
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`demo still running ${TIMEOUT_MS} ms after SIGINT:\n${out}`)), TIMEOUT_MS))),
    ]).finally(() => clearTimeout(timer));
    assert.deepEqual(result, { code: 0, signal: null }, out);
    assert.equal(existsSync(WORK), false, '.demo/ is still there');
  });
});
