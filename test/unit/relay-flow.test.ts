/**
 * Flow: pause reasons as sets. Real streams (PassThrough) stand in for the client and backend
 * sockets; the test reads isPaused() after each hold and release. No network.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import type { Socket } from 'node:net';
import { BackendHold, ClientHold, Flow } from '../../src/session/relay/flow.js';
import { socketIo, type SocketIo } from '../../src/net/socket-io.js';

const socket = (): Socket => new PassThrough() as unknown as Socket;
/** The stream path's I/O over a stand-in socket: Flow pauses and resumes through it. */
const io = (s: Socket): SocketIo => socketIo(s, 'stream');

/** Every order of the given items. */
function permutations<T>(items: readonly T[]): T[][] {
  if (items.length <= 1) return [items.slice()];
  const out: T[][] = [];
  items.forEach((x, i) => {
    for (const rest of permutations([...items.slice(0, i), ...items.slice(i + 1)])) out.push([x, ...rest]);
  });
  return out;
}

const CLIENT_HOLDS = [ClientHold.Throttled, ClientHold.Acquiring, ClientHold.Audit, ClientHold.BackendFull];
const BACKEND_HOLDS = [BackendHold.Throttled, BackendHold.ClientFull];

describe('Flow: client holds', () => {
  it('start() reads the client when nothing holds it, and not when something does', () => {
    const free = socket();
    free.pause();
    new Flow(io(free)).start();
    assert.equal(free.isPaused(), false);

    const held = socket();
    const f = new Flow(io(held));
    f.holdClient(ClientHold.Acquiring);
    f.start();
    assert.equal(held.isPaused(), true);
    f.releaseClient(ClientHold.Acquiring);
    assert.equal(held.isPaused(), false);
  });

  it('resumes the client only when every hold is released, in any order', () => {
    for (const order of permutations(CLIENT_HOLDS)) {
      const client = socket();
      const f = new Flow(io(client));
      f.start();
      for (const h of CLIENT_HOLDS) f.holdClient(h);
      assert.equal(client.isPaused(), true);
      order.forEach((h, i) => {
        assert.equal(f.clientHeld(h), true);
        f.releaseClient(h);
        assert.equal(f.clientHeld(h), false);
        const last = i === order.length - 1;
        assert.equal(client.isPaused(), !last, `order ${order.join(',')}: after releasing ${h} (${i + 1} of ${order.length})`);
      });
    }
  });

  it('a release of a hold not set resumes nothing', () => {
    const client = socket();
    const f = new Flow(io(client));
    f.holdClient(ClientHold.Audit);
    f.releaseClient(ClientHold.Throttled);
    f.releaseClient(ClientHold.BackendFull);
    assert.equal(client.isPaused(), true);
    assert.equal(f.clientHeld(ClientHold.Audit), true);
  });

  it('holding twice for the same reason needs one release', () => {
    const client = socket();
    const f = new Flow(io(client));
    f.holdClient(ClientHold.Throttled);
    f.holdClient(ClientHold.Throttled);
    f.releaseClient(ClientHold.Throttled);
    assert.equal(client.isPaused(), false);
  });

  it('client holds do not touch the backend, and backend holds do not touch the client', () => {
    const client = socket();
    const backend = socket();
    const f = new Flow(io(client));
    f.start();
    f.attach(io(backend));
    f.holdClient(ClientHold.Audit);
    assert.equal(backend.isPaused(), false);
    f.holdBackend(BackendHold.ClientFull);
    f.releaseClient(ClientHold.Audit);
    assert.equal(client.isPaused(), false);
    assert.equal(backend.isPaused(), true);
  });
});

describe('Flow: backend holds', () => {
  it('resumes the backend only when every hold is released, in any order', () => {
    for (const order of permutations(BACKEND_HOLDS)) {
      const backend = socket();
      const f = new Flow(io(socket()));
      f.attach(io(backend));
      assert.equal(backend.isPaused(), false);
      for (const h of BACKEND_HOLDS) f.holdBackend(h);
      assert.equal(backend.isPaused(), true);
      f.releaseBackend(order[0]!);
      assert.equal(backend.isPaused(), true, `order ${order.join(',')}`);
      f.releaseBackend(order[1]!);
      assert.equal(backend.isPaused(), false, `order ${order.join(',')}`);
    }
  });

  it('attach of a backend while a backend hold is set leaves it paused until the hold goes', () => {
    const f = new Flow(io(socket()));
    f.holdBackend(BackendHold.Throttled); // no backend yet (transaction mode between transactions)
    const backend = socket();
    f.attach(io(backend));
    assert.equal(backend.isPaused(), true);
    f.releaseBackend(BackendHold.Throttled);
    assert.equal(backend.isPaused(), false);
  });

  it('attach resumes a backend that arrives paused when nothing holds it', () => {
    const f = new Flow(io(socket()));
    const backend = socket();
    backend.pause(); // as the pool leaves an idle backend
    f.attach(io(backend));
    assert.equal(backend.isPaused(), false);
  });

  it('detach releases BackendFull on the client, and leaves the other client holds', () => {
    const client = socket();
    const f = new Flow(io(client));
    f.start();
    f.attach(io(socket()));
    f.holdClient(ClientHold.BackendFull);
    f.detach();
    assert.equal(f.clientHeld(ClientHold.BackendFull), false);
    assert.equal(client.isPaused(), false);

    f.attach(io(socket()));
    f.holdClient(ClientHold.BackendFull);
    f.holdClient(ClientHold.Throttled);
    f.detach();
    assert.equal(f.clientHeld(ClientHold.BackendFull), false);
    assert.equal(client.isPaused(), true, 'still throttled');
  });

  it('after detach, backend holds and releases no longer reach the old backend', () => {
    const f = new Flow(io(socket()));
    const old = socket();
    f.attach(io(old));
    f.detach();
    f.holdBackend(BackendHold.ClientFull);
    assert.equal(old.isPaused(), false);
    const next = socket();
    f.attach(io(next));
    assert.equal(next.isPaused(), true, 'the hold carries over to the next backend');
    old.pause();
    f.releaseBackend(BackendHold.ClientFull);
    assert.equal(old.isPaused(), true);
    assert.equal(next.isPaused(), false);
  });
});

describe('Flow: stop', () => {
  it('after stop(), releasing the last hold resumes neither socket', () => {
    const client = socket();
    const backend = socket();
    const f = new Flow(io(client));
    f.start();
    f.attach(io(backend));
    f.holdClient(ClientHold.Audit);
    f.holdBackend(BackendHold.ClientFull);
    f.stop();
    f.releaseClient(ClientHold.Audit);
    f.releaseBackend(BackendHold.ClientFull);
    assert.equal(client.isPaused(), true);
    assert.equal(backend.isPaused(), true);
    assert.equal(f.clientHeld(ClientHold.Audit), false, 'the hold itself is gone');
  });

  it('after stop(), detach releasing BackendFull does not resume the client', () => {
    const client = socket();
    const f = new Flow(io(client));
    f.start();
    f.attach(io(socket()));
    f.holdClient(ClientHold.BackendFull);
    f.stop();
    f.detach();
    assert.equal(client.isPaused(), true);
  });

  it('after stop(), new holds still pause', () => {
    const client = socket();
    const f = new Flow(io(client));
    f.start();
    f.stop();
    f.holdClient(ClientHold.Throttled);
    assert.equal(client.isPaused(), true);
  });
});
