#!/usr/bin/env node
/**
 * The `pgwarden` command: serve, check-config, hash-password, hash-token, audit …, catalog init.
 * Each subcommand is a thin shell around the module that does the work.
 */
import { parseArgs } from 'node:util';
import { createHash, randomBytes } from 'node:crypto';
import { loadConfigFile } from './config/load.js';
import { ConfigError } from './config/schema.js';
import { DEFAULT_ITERATIONS, makeScramVerifier } from './auth/scram.js';
import { runAuditCommand } from './audit/cli.js';
import { StaffTokenVerifier } from './auth/jwt.js';
import { AUDIT_STORE_USAGE, runAuditStoreCommand } from './audit/query.js';
import { CATALOG_USAGE, runCatalogCommand } from './catalog/cli.js';
import { serve } from './main.js';
import { SHOW_USAGE, ShowError, ShowUsageError, runShowCommand } from './tools/show.js';
import { tenantSqlScript } from './auth/tenant-sql.js';

const USAGE = `usage:
  pgwarden serve --config FILE            run the proxy
  pgwarden check-config --config FILE     validate a config file
  pgwarden hash-password [--iterations N] read a password on stdin, print a SCRAM-SHA-256 verifier
  pgwarden hash-token [--generate] [--auditor]
                                          read an admin API token on stdin (or make one), print its
                                          [admin] token_sha256 (--auditor: auditor_token_sha256,
                                          the audit view's read-only token)
  pgwarden audit verify [--public-key PEM | --config FILE] [FILE...]
                                          check an audit log's hash chain across rotated files
                                          and its signed checkpoints (FILE: the live file finds
                                          its rotated siblings; default: the config's audit.file)
  pgwarden audit keygen --out FILE [--origin NAME]
                                          new Ed25519 checkpoint key: FILE (0600), FILE.pub
  pgwarden tenant-sql [--auth-user NAME]  print what a tenant installs for staff_access = "on_request"
                                          and access_transparency (its grants, functions and
                                          pgwarden.staff_access_log; NAME: its auth_user,
                                          default pgwarden_auth)
${AUDIT_STORE_USAGE}${CATALOG_USAGE}${SHOW_USAGE}`;

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'serve': {
      const { values } = parseArgs({ args: rest, options: { config: { type: 'string', short: 'c' } } });
      if (values.config === undefined) throw new UsageError('serve needs --config FILE');
      await serve(values.config);
      return -1; // keeps running
    }
    case 'check-config': {
      const { values } = parseArgs({ args: rest, options: { config: { type: 'string', short: 'c' } } });
      if (values.config === undefined) throw new UsageError('check-config needs --config FILE');
      const config = await loadConfigFile(values.config);
      // Files the config names are read at start-up: check the ones a typo would break.
      if (config.staff !== undefined && !/^https:/.test(config.staff.jwks)) new StaffTokenVerifier(config.staff);
      const tenants = config.catalog !== undefined ? 'tenants from the catalog' : `${config.tenants.size} tenant${config.tenants.size === 1 ? '' : 's'}`;
      process.stdout.write(`${values.config}: OK (${tenants})\n`);
      return 0;
    }
    case 'hash-password': {
      const { values } = parseArgs({ args: rest, options: { iterations: { type: 'string', short: 'i' } } });
      const iterations = values.iterations === undefined ? DEFAULT_ITERATIONS : Number(values.iterations);
      if (!Number.isInteger(iterations) || iterations < 1000 || iterations > 10_000_000) throw new UsageError('--iterations must be an integer from 1000 to 10000000');
      if (process.stdin.isTTY) process.stderr.write('password (then Enter, Ctrl-D): ');
      const password = (await readStdin()).replace(/\r?\n$/, '');
      if (password.length === 0) throw new UsageError('empty password on stdin');
      process.stdout.write(`${await makeScramVerifier(password, iterations)}\n`);
      return 0;
    }
    case 'hash-token': {
      const { values } = parseArgs({ args: rest, options: { generate: { type: 'boolean', short: 'g' }, auditor: { type: 'boolean' } } });
      // The config holds only the hash, so the token itself must resist guessing: 32 random bytes.
      if (values.generate !== true && process.stdin.isTTY) process.stderr.write('token (then Enter, Ctrl-D): ');
      const token = values.generate === true ? randomBytes(32).toString('base64url') : (await readStdin()).replace(/\r?\n$/, '');
      if (token.length < 16) throw new UsageError('token too short: use at least 16 characters (or --generate)');
      const hash = createHash('sha256').update(token, 'utf8').digest('hex');
      if (values.generate === true) process.stdout.write(`token: ${token}\n`);
      process.stdout.write(`${values.auditor === true ? 'auditor_token_sha256' : 'token_sha256'} = "${hash}"\n`);
      return 0;
    }
    case 'audit': {
      const storeCode = await runAuditStoreCommand(rest, (m) => process.stdout.write(m), (m) => process.stderr.write(m)); // init | sessions | query
      if (storeCode !== null) return storeCode;
      const code = await runAuditCommand(rest, (m) => process.stdout.write(m));
      if (code === null) throw new UsageError('audit verify [--public-key PEM | --config FILE] [FILE...] | audit keygen --out FILE');
      return code;
    }
    case 'catalog': {
      const code = await runCatalogCommand(rest, (m) => process.stdout.write(m), (m) => process.stderr.write(m));
      if (code === null) throw new UsageError('catalog init --config FILE');
      return code;
    }
    case 'tenant-sql': {
      const { values } = parseArgs({ args: rest, options: { 'auth-user': { type: 'string' } } });
      const role = values['auth-user'] ?? 'pgwarden_auth';
      if (role.length === 0 || role.length > 63 || role.includes('\0')) throw new UsageError('--auth-user must be a role name of 1 to 63 characters');
      process.stdout.write(tenantSqlScript(role));
      return 0;
    }
    case 'show':
      return await runShowCommand(rest, { out: (m) => process.stdout.write(m), err: (m) => process.stderr.write(m), env: process.env, tty: process.stdout.isTTY });
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      throw new UsageError(`unknown command "${cmd}"`);
  }
}

class UsageError extends Error {}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exitCode = 1;
    } else if (err instanceof ShowError) {
      process.stderr.write(`pgwarden show: ${err.message}\n`);
      process.exitCode = 1;
    } else if (err instanceof UsageError || err instanceof ShowUsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') === true) {
      process.stderr.write(`pgwarden: ${(err as Error).message}\n${USAGE}`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`pgwarden: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    }
    // A command that failed is done, whatever it left open (a Redis connection opened before a
    // start-up error, say): exit once the output is flushed, rather than linger doing nothing.
    setTimeout(() => process.exit(), 500).unref();
  },
);
