/**
 * What the shipped dashboard (deploy/grafana/pgwarden.json) and alert rules
 * (deploy/prometheus/alerts.yml) read is what a running pgwarden exports: every metric they name
 * is in a real proxy's /metrics, every label value they match on is one pgwarden's source emits,
 * and the certificate-expiry gauge the expiry alert needs carries the served certificate's notAfter.
 * Then a real Prometheus scrapes that proxy with the rules loaded: every rule evaluates without
 * error, every dashboard query runs, and the expiry alert fires for the proxy's 7-day certificate
 * (warning, not yet critical) while the others stay quiet.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import type pg from 'pg';
import { startCluster, readVerifier, type Cluster } from '../support/cluster.js';
import { startProxy, connect, SNI_SUFFIX, type RunningProxy } from '../support/proxy.js';
import { startPrometheus, type RunningPrometheus } from '../support/prometheus.js';
import { waitFor } from '../support/wait.js';
import { makeDevCerts } from '../../src/tools/dev-certs.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const read = (rel: string): string => readFileSync(path.join(ROOT, rel), 'utf8');

/** Every PromQL expression the dashboard and the rules hold. */
function expressions(): { where: string; expr: string }[] {
  const dash = JSON.parse(read('deploy/grafana/pgwarden.json')) as { panels: { title: string; targets?: { expr: string }[] }[]; templating: { list: { name: string; definition?: string }[] } };
  const out = dash.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: `dashboard panel "${p.title}"`, expr: t.expr })));
  for (const v of dash.templating.list) if (v.definition !== undefined) out.push({ where: `dashboard variable ${v.name}`, expr: v.definition });
  for (const m of read('deploy/prometheus/alerts.yml').matchAll(/^\s+- alert: (\S+)\n\s+expr: (\|\n(?:\s{10}.+\n)+|.+\n)/gm)) out.push({ where: `alert ${m[1]!}`, expr: m[2]! });
  return out;
}

/** The TypeScript sources under src/, as one text (label values are string literals there). */
function sources(dir = path.join(ROOT, 'src')): string {
  return readdirSync(dir, { withFileTypes: true })
    .map((e) => (e.isDirectory() ? sources(path.join(dir, e.name)) : e.name.endsWith('.ts') ? readFileSync(path.join(dir, e.name), 'utf8') : ''))
    .join('\n');
}

describe('the dashboard and the alert rules read what pgwarden exports', () => {
  let cluster: Cluster;
  let rp: RunningProxy;
  let prom: RunningPrometheus;
  let client: pg.Client;
  let certDir: string;
  let exported: Map<string, string>;
  let text: string;

  before(async () => {
    cluster = await startCluster({ users: [{ name: 'app', password: 'app-pass' }] });
    // A certificate with 7 days left: inside the alert's 14 days, outside its critical 2.
    certDir = await mkdtemp(path.join(os.tmpdir(), 'pgwarden-obs-certs-'));
    const certs = await makeDevCerts({ dir: certDir, hostnames: [`*.${SNI_SUFFIX}`, SNI_SUFFIX], validDays: 7 });
    rp = await startProxy({ tenants: [{ id: 'acme', cluster, users: [{ name: 'app', verifier: await readVerifier(cluster, 'app') }] }] }, certs);
    client = await connect(rp, { tenant: 'acme', user: 'app', password: 'app-pass' });
    await client.query('select 1');
    const res = await fetch(`http://127.0.0.1:${rp.metricsPort}/metrics`);
    assert.equal(res.status, 200);
    text = await res.text();
    exported = new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
  });
  after(async () => {
    await prom?.stop();
    await client?.end().catch(() => undefined);
    await rp?.close();
    await cluster?.stop();
    if (certDir !== undefined) await rm(certDir, { recursive: true, force: true });
  });

  it('every metric named in the dashboard and the rules is exported', () => {
    const exprs = expressions();
    assert.ok(exprs.length >= 40, `${exprs.length} expressions found`);
    const named = new Set<string>();
    for (const { where, expr } of exprs) {
      for (const name of expr.match(/\bpgwarden_[a-z0-9_]+/g) ?? []) {
        const base = /^(.+)_(bucket|sum|count)$/.exec(name)?.[1];
        const ok = exported.has(name) || (base !== undefined && ['histogram', 'summary'].includes(exported.get(base) ?? ''));
        assert.ok(ok, `${where} reads ${name}, which pgwarden does not export`);
        named.add(name);
      }
    }
    assert.ok(named.size >= 35, `${named.size} distinct metrics named`);
  });

  it('every label value they match on is one pgwarden emits', () => {
    const src = sources();
    for (const { where, expr } of expressions()) {
      for (const sel of expr.matchAll(/\bpgwarden_[a-z0-9_]+\{([^}]*)\}/g)) {
        for (const m of sel[1]!.matchAll(/(\w+)\s*(?:=|!=|=~)\s*"([^"]*)"/g)) {
          const [label, value] = [m[1]!, m[2]!];
          if (['instance', 'job'].includes(label) || value.includes('$')) continue;
          for (const v of value.split('|')) assert.ok(src.includes(`'${v}'`), `${where}: ${label}="${v}" is not a value pgwarden's source emits`);
        }
      }
    }
  });

  it("exports the served certificate's expiry for the expiry alert", async () => {
    const notAfter = Math.floor(Date.parse(new X509Certificate(await readFile(rp.certs.serverCertPath)).validTo) / 1000);
    assert.match(text, new RegExp(`^pgwarden_tls_certificate_expiry_timestamp_seconds\\{certificate="server"\\} ${notAfter}$`, 'm'));
    assert.ok(notAfter > Date.now() / 1000, 'the test certificate is valid now');
  });

  it('a real Prometheus scraping the proxy evaluates every rule without error', async () => {
    prom = await startPrometheus({ target: `127.0.0.1:${rp.metricsPort}`, job: 'pgwarden', ruleFiles: [path.join(ROOT, 'deploy/prometheus/alerts.yml')] });
    type Rules = { groups: { rules: { name: string; health: string; lastError?: string; lastEvaluation: string }[] }[] };
    await waitFor(
      async () => (await prom.query('up{job="pgwarden"} == 1')).length === 1 && (await prom.get<Rules>('/api/v1/rules')).groups.every((g) => g.rules.every((r) => !r.lastEvaluation.startsWith('0001'))),
      30_000,
      'a scrape and an evaluation of every rule',
    );
    const rules = (await prom.get<Rules>('/api/v1/rules')).groups.flatMap((g) => g.rules);
    assert.equal(rules.length, (read('deploy/prometheus/alerts.yml').match(/^\s+- alert: /gm) ?? []).length);
    for (const r of rules) assert.equal(r.health, 'ok', `${r.name}: ${r.lastError ?? ''}`);
  });

  it('every dashboard query runs in Prometheus, and the session shows on the dashboard', async () => {
    const dash = JSON.parse(read('deploy/grafana/pgwarden.json')) as { panels: { title: string; targets?: { expr: string }[] }[] };
    // Grafana's variables as Grafana would fill them for "All".
    const fill = (e: string): string => e.replaceAll('$__rate_interval', '1m').replaceAll('$instance', '.*').replaceAll('$tenant', '.*');
    for (const p of dash.panels) for (const t of p.targets ?? []) await prom.query(fill(t.expr)); // throws on a PromQL error
    const sessions = await prom.query(fill(dash.panels.find((p) => p.title === 'Client sessions open')!.targets![0]!.expr));
    assert.deepEqual(
      sessions.map((s) => [s.metric['tenant'], s.value[1]]),
      [['acme', '1']],
    );
  });

  it("the certificate alert fires for the proxy's 7-day certificate, as a warning only; no other alert fires", async () => {
    type Alerts = { alerts: { labels: Record<string, string>; state: string }[] };
    await waitFor(async () => (await prom.get<Alerts>('/api/v1/alerts')).alerts.some((a) => a.state === 'firing'), 30_000, 'an alert firing');
    const firing = (await prom.get<Alerts>('/api/v1/alerts')).alerts.filter((a) => a.state !== 'inactive').map((a) => `${a.labels['alertname']}/${a.labels['severity']}/${a.state}`);
    assert.deepEqual(firing, ['PgwardenCertificateExpiringSoon/warning/firing']);
  });
});
