/**
 * PROXY protocol v2 behind a real HAProxy (`mode tcp`, `send-proxy-v2`) and with hand-made
 * headers: the client's address is the one the balancer names, everywhere (GET /sessions, the
 * audit's client.addr, allow_cidrs); headers from untrusted peers, malformed, oversized or missing
 * ones close the connection without a byte; LOCAL is accepted; a CancelRequest through HAProxy
 * cancels its query. Clients bind to other loopback addresses (127.0.0.2, 127.0.0.3) to differ
 * from the balancer's 127.0.0.1. The per-source pre-auth cap and auth cool-down, and two workers, have their own parts.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, spawnProxy, clientConfig, connectError, testCerts, type ChildProxy, type ProxySpec, type RunningProxy } from '../support/proxy.js';
import { startHaproxy, type RunningHaproxy } from '../support/haproxy.js';
import { waitFor } from '../support/wait.js';
import { encodeProxyV2, PROXY_V2_SIGNATURE } from '../../src/protocol/proxy-v2.js';

const TOKEN = 'proxy-protocol-test-token-8d1c';
const TOKEN_SHA256 = createHash('sha256').update(TOKEN).digest('hex');
const SSL_REQUEST = Buffer.from('0000000804d2162f', 'hex');

interface View {
  id: string;
  tenant: string | null;
  client: { addr: string; port: number; via: string | null };
}

function getJson(port: number, urlPath: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: urlPath, headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve(JSON.parse(text) as Record<string, unknown>));
    });
    req.on('error', reject);
    req.end();
  });
}

function metricsText(port: number): Promise<string> {
  return fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text());
}

function headerCount(metrics: string, outcome: string): number {
  return Number(new RegExp(`^pgwarden_proxy_protocol_headers_total\\{outcome="${outcome}"\\} (\\d+)`, 'm').exec(metrics)?.[1] ?? 0);
}

/**
 * A socket for node-postgres that connects from `localAddress` and, when given, writes `header`
 * before anything pg writes (a hand-made PROXY header).
 */
function boundStream(localAddress: string, header?: Buffer): () => net.Socket {
  return () => {
    const s = new net.Socket();
    const connect = s.connect.bind(s) as (o: net.TcpSocketConnectOpts) => net.Socket;
    (s as unknown as { connect: (port: number, host: string) => net.Socket }).connect = (port, host) => {
      const r = connect({ port, host, localAddress });
      if (header !== undefined) r.write(header);
      return r;
    };
    return s;
  };
}

/** Writes `bytes` in one write from `localAddress`, then collects what comes back until the server closes (or `waitMs`). */
function exchange(port: number, bytes: Buffer | null, localAddress = '127.0.0.1', waitMs = 3000): Promise<{ reply: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = net.connect({ port, host: '127.0.0.1', localAddress }, () => {
      if (bytes !== null) s.write(bytes);
    });
    const done = (closed: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      resolve({ reply: Buffer.concat(chunks), closed });
    };
    const timer = setTimeout(() => done(false), waitMs);
    s.on('data', (d: Buffer) => {
      chunks.push(d);
      if (chunks.length === 1 && d.length === 1) setTimeout(() => done(false), 200); // a one-byte answer (SSLRequest): enough
    });
    s.on('error', () => undefined);
    s.on('close', () => done(true));
  });
}

async function auditRecords(file: string): Promise<Record<string, unknown>[]> {
  return (await readFile(file, 'utf8'))
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('PROXY protocol v2', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  let hap: RunningHaproxy;
  let dir: string;
  let auditFile: string;
  let spec: ProxySpec;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-proxyproto-'));
    auditFile = path.join(dir, 'audit.jsonl');
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    const users = [{ name: 'app', verifier: await readVerifier(cluster, 'app') }];
    spec = {
      auditFile,
      admin: { token_sha256: TOKEN_SHA256 },
      // The balancer (HAProxy, and the hand-made headers) is 127.0.0.1; 127.0.0.3 is an untrusted client.
      server: { proxy_protocol: 'v2', proxy_protocol_trusted: ['127.0.0.1/32'], auth_timeout: '10s' },
      tenants: [
        { id: 'acme', cluster, users },
        { id: 'narrow', cluster, users, allowCidrs: ['127.0.0.2/32', '198.51.100.0/24'] },
      ],
    };
    rp = await startProxy(spec);
    hap = await startHaproxy(rp.port);
  });
  after(async () => {
    await hap?.stop();
    await rp?.close();
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  const viaHaproxy = (tenant: string, from: string): pg.ClientConfig => ({
    ...clientConfig({ port: hap.port, certs: rp.certs }, { tenant, user: 'app', password: 'app-pass' }),
    stream: boundStream(from),
  });
  const sessions = async (): Promise<View[]> => (await getJson(rp.adminPort, '/sessions'))['sessions'] as View[];

  it("logs in through HAProxy under the client's address: GET /sessions, the audit's client block", async () => {
    const c = new pg.Client(viaHaproxy('acme', '127.0.0.2'));
    await c.connect();
    try {
      const r = await c.query<{ one: number }>('SELECT 1 AS one');
      assert.equal(r.rows[0]!.one, 1);
      const localPort = (c as unknown as { connection: { stream: { localPort: number } } }).connection.stream.localPort;
      const mine = (await sessions()).filter((s) => s.tenant === 'acme' && s.client.port === localPort);
      assert.equal(mine.length, 1, JSON.stringify(await sessions()));
      assert.deepEqual(mine[0]!.client, { addr: '127.0.0.2', port: localPort, via: '127.0.0.1' });
      await waitFor(async () => (await auditRecords(auditFile)).some((e) => e['event'] === 'session.start' && (e['session'] as { id: string }).id === mine[0]!.id));
      const start = (await auditRecords(auditFile)).find((e) => e['event'] === 'session.start' && (e['session'] as { id: string }).id === mine[0]!.id)!;
      const client = start['client'] as Record<string, unknown>;
      assert.equal(client['addr'], '127.0.0.2');
      assert.equal(client['port'], localPort);
      assert.equal(client['via_proxy_protocol'], true);
    } finally {
      await c.end();
    }
  });

  it('applies allow_cidrs to the client address, not the balancer', async () => {
    const ok = new pg.Client(viaHaproxy('narrow', '127.0.0.2'));
    await ok.connect();
    await ok.end();
    // 127.0.0.3 through the same balancer (127.0.0.1, which narrow does not list either): refused.
    const err = await connectError(viaHaproxy('narrow', '127.0.0.3'));
    assert.equal(err.code, '28P01', err.message);
    await waitFor(async () =>
      (await auditRecords(auditFile)).some(
        (e) => e['event'] === 'session.auth_failure' && e['reason'] === 'source_not_allowed' && (e['client'] as { addr: string }).addr === '127.0.0.3',
      ),
    );
  });

  it('a hand-made header names any address: the session list and allow_cidrs follow it', async () => {
    const header = encodeProxyV2({ command: 'proxy', source: { addr: '198.51.100.9', port: 4242 }, destination: { addr: '127.0.0.1', port: rp.port } });
    const cfg = { ...clientConfig(rp, { tenant: 'narrow', user: 'app', password: 'app-pass' }), stream: boundStream('127.0.0.1', header) };
    const c = new pg.Client(cfg);
    await c.connect();
    try {
      const mine = (await sessions()).filter((s) => s.client.addr === '198.51.100.9');
      assert.deepEqual(
        mine.map((s) => s.client),
        [{ addr: '198.51.100.9', port: 4242, via: '127.0.0.1' }],
      );
    } finally {
      await c.end();
    }
    const outside = encodeProxyV2({ command: 'proxy', source: { addr: '203.0.113.5', port: 1 }, destination: { addr: '127.0.0.1', port: rp.port } });
    const err = await connectError({ ...cfg, stream: boundStream('127.0.0.1', outside) });
    assert.equal(err.code, '28P01');
  });

  it('the header and the first message in one write: the bytes after the header reach the session', async () => {
    const header = encodeProxyV2({ command: 'proxy', source: { addr: '192.0.2.44', port: 5555 }, destination: { addr: '127.0.0.1', port: rp.port } });
    const r = await exchange(rp.port, Buffer.concat([header, SSL_REQUEST]));
    assert.equal(r.reply.toString(), 'S');
    // IPv6 client through an IPv4 balancer, with TLVs, in one write too.
    const v6 = encodeProxyV2({
      command: 'proxy',
      source: { addr: '2001:db8::7', port: 6000 },
      destination: { addr: '2001:db8::1', port: 6432 },
      tlvs: [{ type: 0x02, value: Buffer.from('acme.pg.test') }],
    });
    assert.equal((await exchange(rp.port, Buffer.concat([v6, SSL_REQUEST]))).reply.toString(), 'S');
  });

  it('direct TLS (a ClientHello right after the header) is handed to TLS with the bytes already read', async () => {
    const header = encodeProxyV2({ command: 'proxy', source: { addr: '192.0.2.45', port: 5556 }, destination: { addr: '127.0.0.1', port: rp.port } });
    const raw = net.connect({ port: rp.port, host: '127.0.0.1' });
    raw.on('error', () => undefined);
    await new Promise((r) => raw.once('connect', r));
    raw.cork(); // the header and the ClientHello usually leave in one segment
    raw.write(header);
    const secure = tls.connect({ socket: raw, servername: 'acme.pg.test', ca: rp.certs.caCertPem, ALPNProtocols: ['postgresql'] });
    process.nextTick(() => raw.uncork());
    try {
      await new Promise<void>((resolve, reject) => {
        secure.once('secureConnect', resolve);
        secure.once('error', reject);
      });
      assert.equal(secure.alpnProtocol, 'postgresql');
    } finally {
      secure.destroy();
    }
  });

  it('an untrusted peer: served as before under its own address, but a header from it closes without a byte', async () => {
    const direct = { ...clientConfig(rp, { tenant: 'acme', user: 'app', password: 'app-pass' }), stream: boundStream('127.0.0.3') };
    const c = new pg.Client(direct);
    await c.connect();
    try {
      const localPort = (c as unknown as { connection: { stream: { localPort: number } } }).connection.stream.localPort;
      assert.deepEqual((await sessions()).find((s) => s.client.port === localPort)?.client, { addr: '127.0.0.3', port: localPort, via: null });
    } finally {
      await c.end();
    }
    const before = headerCount(await metricsText(rp.metricsPort), 'untrusted');
    const header = encodeProxyV2({ command: 'proxy', source: { addr: '127.0.0.2', port: 1 }, destination: { addr: '127.0.0.1', port: rp.port } });
    const r = await exchange(rp.port, Buffer.concat([header, SSL_REQUEST]), '127.0.0.3');
    assert.deepEqual(r, { reply: Buffer.alloc(0), closed: true });
    assert.equal(headerCount(await metricsText(rp.metricsPort), 'untrusted'), before + 1);
  });

  it('from a trusted peer, a missing, malformed or oversized header closes without a byte (counted)', async () => {
    const good = encodeProxyV2({ command: 'proxy', source: { addr: '192.0.2.1', port: 1 }, destination: { addr: '127.0.0.1', port: 2 } });
    const badVersion = Buffer.from(good);
    badVersion[12] = 0x11;
    const oversized = Buffer.from(good);
    oversized.writeUInt16BE(60_000, 14);
    const unix = Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x21, 0x31, 0x00, 0xd8]), Buffer.alloc(216)]);
    const udp = Buffer.from(good);
    udp[13] = 0x12;
    const cases: [string, Buffer][] = [
      ['bad_signature', SSL_REQUEST], // no header at all: a plain client on a balancer's address
      ['bad_version', badVersion],
      ['oversized', oversized],
      ['unsupported_family', unix],
      ['unsupported_family', udp],
      ['bad_signature', Buffer.from('PROXY TCP4 192.0.2.1 127.0.0.1 1 2\r\n')], // version 1 is not accepted
    ];
    for (const [outcome, bytes] of cases) {
      const before = headerCount(await metricsText(rp.metricsPort), outcome);
      const r = await exchange(rp.port, Buffer.concat([bytes, SSL_REQUEST]));
      assert.deepEqual(r, { reply: Buffer.alloc(0), closed: true }, outcome);
      assert.equal(headerCount(await metricsText(rp.metricsPort), outcome), before + 1, outcome);
    }
  });

  it('a header that does not arrive in time: closed without a byte', async () => {
    const before = headerCount(await metricsText(rp.metricsPort), 'timeout');
    const t0 = Date.now();
    const r = await exchange(rp.port, PROXY_V2_SIGNATURE.subarray(0, 8), '127.0.0.1', 9000);
    assert.deepEqual(r, { reply: Buffer.alloc(0), closed: true });
    assert.ok(Date.now() - t0 >= 4000 && Date.now() - t0 < 8000, `${Date.now() - t0} ms`);
    assert.equal(headerCount(await metricsText(rp.metricsPort), 'timeout'), before + 1);
  });

  it('LOCAL (health checks): the connection goes on under its own address; connect-and-leave is only counted', async () => {
    const local = encodeProxyV2({ command: 'local' });
    assert.equal((await exchange(rp.port, Buffer.concat([local, SSL_REQUEST]))).reply.toString(), 'S');
    const before = headerCount(await metricsText(rp.metricsPort), 'health_check');
    const r = await exchange(rp.port, local, '127.0.0.1', 300);
    assert.equal(r.reply.length, 0);
    const s = net.connect({ port: rp.port, host: '127.0.0.1' }, () => s.end(local));
    await new Promise((res) => s.on('close', res));
    await waitFor(async () => headerCount(await metricsText(rp.metricsPort), 'health_check') >= before + 1);
    assert.equal((await sessions()).filter((v) => v.tenant === null).length, 0, 'no session left behind');
  });

  it("HAProxy's own health checks (LOCAL, then close) are only counted: no session, no rejection", async () => {
    const m0 = await metricsText(rp.metricsPort);
    const rejected = (m: string): number =>
      [...m.matchAll(/^pgwarden_connection_rejections_total\{reason="[^"]*"\} (\d+)/gm)].reduce((n, x) => n + Number(x[1]), 0);
    // A check closes at once: counted as health_check, or as aborted when it was gone before its address was read.
    const checks = (m: string): number => headerCount(m, 'health_check') + headerCount(m, 'aborted');
    await waitFor(async () => checks(await metricsText(rp.metricsPort)) >= checks(m0) + 3, 10_000, 'three health checks');
    const m1 = await metricsText(rp.metricsPort);
    assert.equal(rejected(m1), rejected(m0), m1.split('\n').filter((l) => /rejections_total|proxy_protocol_headers/.test(l)).join('\n'));
    assert.equal((await sessions()).length, 0);
  });

  it('a reload turns it off for new connections: a running session keeps its client address', async () => {
    const c = new pg.Client(viaHaproxy('acme', '127.0.0.2'));
    await c.connect();
    try {
      rp.reload({ ...spec, server: { auth_timeout: '10s' } });
      const header = encodeProxyV2({ command: 'proxy', source: { addr: '192.0.2.50', port: 1 }, destination: { addr: '127.0.0.1', port: rp.port } });
      // Off: a header is no PostgreSQL message (its length reads as 218 762 506): closed without a byte, as before the feature.
      assert.deepEqual(await exchange(rp.port, Buffer.concat([header, SSL_REQUEST])), { reply: Buffer.alloc(0), closed: true });
      assert.equal((await exchange(rp.port, SSL_REQUEST)).reply.toString(), 'S');
      assert.equal((await c.query<{ one: number }>('SELECT 1 AS one')).rows[0]!.one, 1);
      assert.ok((await sessions()).some((s) => s.client.addr === '127.0.0.2' && s.client.via === '127.0.0.1'));
    } finally {
      await c.end();
      rp.reload(spec);
    }
  });

  it('a CancelRequest through HAProxy cancels the running query', async () => {
    const c = new pg.Client(viaHaproxy('acme', '127.0.0.2'));
    await c.connect();
    try {
      const running = c.query('SELECT pg_sleep(30)');
      const settled = running.then(
        () => null,
        (err: unknown) => err as Error & { code?: string },
      );
      await new Promise((r) => setTimeout(r, 300));
      const { processID, secretKey } = c as unknown as { processID: number; secretKey: number };
      const cancel = Buffer.alloc(16);
      cancel.writeInt32BE(16, 0);
      cancel.writeInt32BE(80877102, 4);
      cancel.writeInt32BE(processID, 8);
      cancel.writeInt32BE(secretKey, 12);
      const t0 = Date.now();
      const r = await exchange(hap.port, cancel, '127.0.0.2');
      assert.equal(r.reply.length, 0);
      const err = await settled;
      assert.equal(err?.code, '57014', String(err));
      assert.ok(Date.now() - t0 < 10_000);
    } finally {
      await c.end();
    }
  });
});

describe('PROXY protocol v2: per-source caps and cool-downs are per client, not per balancer', () => {
  const PER_SOURCE = 2;
  let cluster: Cluster;
  let rp: RunningProxy;
  let hap: RunningHaproxy;
  const held: net.Socket[] = [];

  before(async () => {
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    const users = [{ name: 'app', verifier: await readVerifier(cluster, 'app') }];
    rp = await startProxy({
      server: { proxy_protocol: 'v2', proxy_protocol_trusted: ['127.0.0.1'], max_preauth_per_source: PER_SOURCE, auth_timeout: '20s' },
      tenants: [
        { id: 'acme', cluster, users },
        { id: 'locks', cluster, users, limits: { auth_failure_limit: 2, auth_failure_window: '1m', auth_failure_cooldown: '1m' } },
      ],
    });
    hap = await startHaproxy(rp.port);
  });
  after(async () => {
    for (const s of held) s.destroy();
    await hap?.stop();
    await rp?.close();
    await cluster?.stop();
  });

  /** A connection that sits in pre-auth: it sends `bytes` (a header, maybe) and nothing more. */
  async function hold(port: number, bytes: Buffer | null, localAddress = '127.0.0.1'): Promise<void> {
    const s = net.connect({ port, host: '127.0.0.1', localAddress });
    s.on('error', () => undefined);
    await new Promise((r) => s.once('connect', r));
    if (bytes !== null) s.write(bytes);
    held.push(s);
  }

  const from = (addr: string): Buffer => encodeProxyV2({ command: 'proxy', source: { addr, port: 40000 }, destination: { addr: '127.0.0.1', port: rp.port } });
  const STARTUP = Buffer.from('0000000800030000', 'hex');
  const tooManyClients = (r: { reply: Buffer }): boolean => r.reply[0] === 0x45 /* E */ && r.reply.includes('53300');

  it('hand-made headers: a third pre-auth connection of one client gets 53300; other clients, all from the same balancer, go on', async () => {
    await hold(rp.port, from('192.0.2.1'));
    await hold(rp.port, from('192.0.2.1'));
    await waitFor(() => rp.proxy.preauth.active >= PER_SOURCE);
    assert.ok(tooManyClients(await exchange(rp.port, Buffer.concat([from('192.0.2.1'), STARTUP]))));
    // The balancer already holds two pre-auth connections; as clients, these are someone else.
    for (const addr of ['192.0.2.2', '192.0.2.3', '2001:db8::5']) {
      assert.equal((await exchange(rp.port, Buffer.concat([from(addr), SSL_REQUEST]))).reply.toString(), 'S', addr);
    }
  });

  it("the authentication cool-down keyed by source locks out the client behind HAProxy, not the balancer's other clients", async () => {
    const cfg = (from: string, password: string): pg.ClientConfig => ({
      ...clientConfig({ port: hap.port, certs: rp.certs }, { tenant: 'locks', user: 'app', password }),
      stream: boundStream(from),
    });
    for (let i = 0; i < 2; i++) assert.equal((await connectError(cfg('127.0.0.4', 'wrong'))).code, '28P01');
    const locked = await connectError(cfg('127.0.0.4', 'app-pass'));
    assert.equal(locked.code, '53300', locked.message);
    const other = new pg.Client(cfg('127.0.0.5', 'app-pass'));
    await other.connect();
    await other.end();
  });

  it('one pre-auth deadline from accept: time spent on the header counts', async () => {
    const fast = await startProxy({
      server: { proxy_protocol: 'v2', proxy_protocol_trusted: ['127.0.0.1'], auth_timeout: '2s' },
      tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier: await readVerifier(cluster, 'app') }] }],
    });
    try {
      const s = net.connect({ port: fast.port, host: '127.0.0.1' });
      s.on('error', () => undefined);
      await new Promise((r) => s.once('connect', r));
      const t0 = Date.now();
      const closed = new Promise<number>((r) => s.once('close', () => r(Date.now() - t0)));
      const replied: Buffer[] = [];
      s.on('data', (d: Buffer) => replied.push(d));
      await new Promise((r) => setTimeout(r, 1500));
      s.write(encodeProxyV2({ command: 'proxy', source: { addr: '192.0.2.77', port: 7 }, destination: { addr: '127.0.0.1', port: fast.port } }));
      const ms = await closed;
      assert.ok(ms >= 1900 && ms < 3000, `closed after ${ms} ms (the deadline is 2000 ms from accept, not from the header)`);
      assert.equal(Buffer.concat(replied).length, 0, 'closed silently, still before the startup packet');
    } finally {
      await fast.close();
    }
  });

  it('through HAProxy: the cap counts 127.0.0.2 and 127.0.0.3 apart', async () => {
    await hold(hap.port, null, '127.0.0.2');
    await hold(hap.port, null, '127.0.0.2');
    await waitFor(() => rp.proxy.preauth.active >= 2 * PER_SOURCE, 10_000, 'two more pre-auth sessions');
    assert.ok(tooManyClients(await exchange(hap.port, STARTUP, '127.0.0.2')));
    const ok = new pg.Client({ ...clientConfig({ port: hap.port, certs: rp.certs }, { tenant: 'acme', user: 'app', password: 'app-pass' }), stream: boundStream('127.0.0.3') });
    await ok.connect();
    await ok.end();
  });
});

/**
 * Two workers both ways connections reach them: the primary's hand-off (any Node) and, on the Node 22
 * that PGWARDEN_TEST_NODE22 names (.ci/run sets it), each worker's own SO_REUSEPORT listener.
 */
const NODE22 = process.env['PGWARDEN_TEST_NODE22'];
for (const variant of [
  { accept: 'primary', node: process.execPath, logins: 4, skip: false as const },
  { accept: 'reuseport', node: NODE22 ?? '', logins: 16, skip: NODE22 === undefined || NODE22 === '' ? 'PGWARDEN_TEST_NODE22 is not set (.ci/run sets it)' : (false as const) },
]) describe(`PROXY protocol v2 with two workers (the real CLI), worker_accept = "${variant.accept}"`, { skip: variant.skip }, () => {
  let cluster: Cluster;
  let child: ChildProxy;
  let hap: RunningHaproxy;

  before(async () => {
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    const users = [{ name: 'app', verifier: await readVerifier(cluster, 'app') }];
    child = await spawnProxy({
      server: { workers: 2, worker_accept: variant.accept, proxy_protocol: 'v2', proxy_protocol_trusted: ['127.0.0.1/32'] },
      admin: { token_sha256: TOKEN_SHA256 },
      tenants: [{ id: 'acme', cluster, users }],
    }, {}, variant.node);
    hap = await startHaproxy(child.port);
  });
  after(async () => {
    await hap?.stop();
    await child?.stop();
    await cluster?.stop();
  });

  it("each worker reads the header: the primary's session list shows the client behind HAProxy", async () => {
    const certs = await testCerts();
    const clients: pg.Client[] = [];
    try {
      // Round robin covers both workers in 4; the kernel's hash, in 16 but for odds of 2^-15.
      for (let i = 0; i < variant.logins; i++) {
        const c = new pg.Client({ ...clientConfig({ port: hap.port, certs }, { tenant: 'acme', user: 'app', password: 'app-pass' }), stream: boundStream('127.0.0.2') });
        await c.connect();
        clients.push(c);
      }
      const list = (await getJson(child.adminPort!, '/sessions'))['sessions'] as (View & { worker?: number })[];
      assert.equal(list.length, variant.logins, JSON.stringify(list));
      for (const s of list) assert.deepEqual({ addr: s.client.addr, via: s.client.via }, { addr: '127.0.0.2', via: '127.0.0.1' });
      assert.deepEqual([...new Set(list.map((s) => s.worker))].sort(), [1, 2], 'sessions on both workers');
    } finally {
      for (const c of clients) await c.end();
    }
  });
});
