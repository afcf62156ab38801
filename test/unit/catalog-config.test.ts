/**
 * [catalog] and the process model: the catalog is followed by one process for now, so a config
 * with [catalog] runs one worker unless it asks for more, and asking for more is refused by name.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import os from 'node:os';
import { parseConfigText } from '../../src/config/load.js';
import { ConfigError } from '../../src/config/schema.js';

const ENV = 'PGWARDEN_TEST_CATALOG_CONFIG_PW';
const toml = (server: string): string =>
  `[server]\nlisten = "127.0.0.1:0"\nrequire_tls = false\n${server}\n[catalog]\nurl = "postgresql://pgwarden@10.0.0.9:5432/catalog"\npassword_env = "${ENV}"\nsnapshot_file = "/tmp/snapshot.json"\n`;

describe('[catalog] and server.workers', () => {
  before(() => (process.env[ENV] = 'x'));
  after(() => Reflect.deleteProperty(process.env, ENV));

  it('runs one worker when the file does not say', () => {
    assert.equal(parseConfigText(toml(''), os.tmpdir()).server.workers, 1);
  });

  it('refuses more than one worker, naming the key', () => {
    assert.throws(
      () => parseConfigText(toml('workers = 2'), os.tmpdir()),
      (err: unknown) => err instanceof ConfigError && err.problems.some((p) => p.startsWith('server.workers: must be 1 with [catalog]')),
    );
  });

  it('keeps the cores default without [catalog]', () => {
    const c = parseConfigText('[server]\nlisten = "127.0.0.1:0"\nrequire_tls = false\n', os.tmpdir());
    assert.equal(c.server.workers, os.availableParallelism());
  });
});
