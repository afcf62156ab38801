/**
 * CLI behind `npm run certs`: writes a development CA and a wildcard server certificate into a
 * directory and prints the paths; the PKI itself lives in src/tools/dev-certs.ts.
 *
 * Usage: node dist/scripts/make-certs.js [--dir certs] [--suffix db.example.com] [--host name ...]
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { makeDevCerts } from '../src/tools/dev-certs.js';

const USAGE =
  'usage: node dist/scripts/make-certs.js [--dir certs] [--suffix db.example.com] [--host extra.name ...]';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      dir: { type: 'string', default: 'certs' },
      suffix: { type: 'string', default: 'db.example.com' },
      host: { type: 'string', multiple: true, default: [] },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const suffix = values.suffix.replace(/^\*?\.+/, '');
  // Tenants are told apart by SNI (`<tenant>.<suffix>`); `*.pg.test` serves local demos.
  const hostnames = [`*.${suffix}`, suffix, '*.pg.test', 'localhost', ...values.host];
  const certs = await makeDevCerts({ dir: path.resolve(values.dir), hostnames });
  console.log(`development certificates for ${[...new Set(hostnames)].join(', ')}, 127.0.0.1`);
  console.log(`  CA certificate      ${certs.caCertPath}`);
  console.log(`  CA key (0600)       ${certs.caKeyPath}`);
  console.log(`  server certificate  ${certs.serverCertPath}`);
  console.log(`  server key (0600)   ${certs.serverKeyPath}`);
  console.log('These are for development only: never commit the keys or use them in production.');
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  console.error(USAGE);
  process.exitCode = 1;
});
