/**
 * What an idle, logged-in session keeps (issue 15, idle memory): nothing the login alone needed.
 * The login's AbortController (its signal holds two Maps and a listener) must be collectable once
 * the relay runs, in both pool modes; a session that kept it, or anything reaching it (the SNI
 * callback the TLS socket keeps for life, the login's failure accounting), fails here.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import v8 from 'node:v8';
import vm from 'node:vm';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, connect, type RunningProxy } from '../support/proxy.js';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;
const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Runs `fn` while every AbortController made is tracked by a WeakRef; returns them with fn's result. */
async function tracked<T>(fn: () => Promise<T>): Promise<{ result: T; controllers: WeakRef<AbortController>[] }> {
  const Original = globalThis.AbortController;
  const controllers: WeakRef<AbortController>[] = [];
  globalThis.AbortController = class extends Original {
    constructor() {
      super();
      controllers.push(new WeakRef(this));
    }
  };
  try {
    return { result: await fn(), controllers };
  } finally {
    globalThis.AbortController = Original;
  }
}

describe('idle sessions keep no login state', () => {
  let pgc: Cluster;
  let rp: RunningProxy;
  before(async () => {
    pgc = await startCluster({ users: [{ name: 'app', password: 'secret-app' }] });
    const verifier = await readVerifier(pgc, 'app');
    rp = await startProxy({
      tenants: [
        { id: 'acme', cluster: pgc, users: [{ name: 'app', verifier }], pool: { pool_mode: 'transaction' } },
        { id: 'globex', cluster: pgc, users: [{ name: 'app', verifier }], pool: { pool_mode: 'session' } },
      ],
    });
  });
  after(async () => {
    await rp?.close();
    await pgc?.stop();
  });

  for (const tenant of ['acme', 'globex']) {
    it(`${tenant === 'acme' ? 'transaction' : 'session'} mode: the login's AbortController is collectable while the session idles`, async () => {
      const { result: client, controllers } = await tracked(() => connect(rp, { tenant, user: 'app', password: 'secret-app' }));
      try {
        assert.equal((await client.query<{ one: number }>('select 1 as one')).rows[0]?.one, 1);
        assert.ok(controllers.length >= 1, 'the login made an AbortController');
        const live = [...rp.proxy.sessions].filter((s) => s.phase === 'relaying' && s.tenantId === tenant);
        assert.equal(live.length, 1);
        for (let i = 0; i < 3; i++) {
          await tick();
          gc();
        }
        assert.equal(live[0]!.phase, 'relaying');
        assert.deepEqual(
          controllers.map((c) => c.deref() === undefined),
          controllers.map(() => true),
          'an idle session still reaches its login AbortController',
        );
      } finally {
        await client.end();
      }
    });
  }
});
