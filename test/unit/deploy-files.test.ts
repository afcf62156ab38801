/**
 * The deployment files in deploy/ (issue 16, part 4), checked without Docker or Kubernetes: every
 * YAML file parses; compose.yaml and the Kubernetes Deployment run the image as the Dockerfile
 * builds it (user, exposed ports, config path); their container ports are the listen ports of the
 * pgwarden.toml they mount, which passes pgwarden's own config validation; the probes ask the
 * metrics listener for paths it serves; and the stop grace periods leave room for the drain.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { parseConfigText } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const DEPLOY = path.join(ROOT, 'deploy');

/** The image's `node` user (node:20-bookworm-slim), which Kubernetes can only name by uid. */
const NODE_UID = 1000;

type Yaml = Record<string, unknown>;

const read = (rel: string): string => readFileSync(path.join(ROOT, rel), 'utf8');
const obj = (v: unknown, what: string): Yaml => {
  assert.ok(typeof v === 'object' && v !== null && !Array.isArray(v), `${what} is a mapping`);
  return v as Yaml;
};
const arr = (v: unknown, what: string): unknown[] => {
  assert.ok(Array.isArray(v), `${what} is a list`);
  return v;
};

/** The YAML files under dir, relative to the repo (a walk: Dirent.parentPath needs Node 20.12). */
function yamlFiles(dir: string): string[] {
  const found: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) found.push(...yamlFiles(full));
    else if (e.isFile() && /\.ya?ml$/.test(e.name)) found.push(path.relative(ROOT, full));
  }
  return found.sort();
}

/** Every document of a multi-document YAML file (Kubernetes manifests). */
function documents(rel: string): Yaml[] {
  return parseAllDocuments(read(rel)).map((d, i) => obj(d.toJS(), `${rel} document ${i}`));
}

function manifest(kind: string): Yaml {
  for (const rel of yamlFiles(path.join(DEPLOY, 'kubernetes'))) {
    const found = documents(rel).find((d) => d.kind === kind);
    if (found) return found;
  }
  assert.fail(`no ${kind} in deploy/kubernetes/`);
}

/** What the Dockerfile's runtime stage says: EXPOSE, USER, ENTRYPOINT and CMD. */
function dockerfile(): { ports: number[]; user: string; cmd: string[]; configPath: string } {
  const text = read('Dockerfile');
  const runtime = text.slice(text.lastIndexOf('\nFROM '));
  const line = (instr: string): string => {
    const m = new RegExp(`^${instr} (.+)$`, 'm').exec(runtime);
    assert.ok(m?.[1], `Dockerfile runtime stage has ${instr}`);
    return m[1];
  };
  const ports = line('EXPOSE').split(/\s+/).map(Number);
  const cmd = JSON.parse(line('CMD')) as string[];
  const configPath = cmd[cmd.indexOf('--config') + 1];
  assert.ok(configPath, 'CMD names --config');
  return { ports, user: line('USER'), cmd, configPath };
}

/** The env vars a pgwarden.toml names (…_env keys), each set to a dummy value. */
function namedEnv(toml: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const m of toml.matchAll(/^\s*\w+_env\s*=\s*"([A-Za-z_][A-Za-z0-9_]*)"/gm)) env[m[1]!] = 'dummy';
  return env;
}

function loadToml(toml: string, name: string): Config {
  return parseConfigText(toml, path.join(DEPLOY), name, namedEnv(toml));
}

const durationSeconds = (s: unknown): number => {
  const m = /^(\d+)(s|m)$/.exec(String(s));
  assert.ok(m, `duration ${String(s)}`);
  return Number(m[1]) * (m[2] === 'm' ? 60 : 1);
};

// compose.yaml and its pgwarden.toml
const composeToml = read('deploy/pgwarden.toml');
const compose = obj(parseYaml(read('deploy/compose.yaml')), 'compose.yaml');
const services = obj(compose.services, 'compose services');
const composePgwarden = obj(services.pgwarden, 'compose pgwarden service');

// the Kubernetes Deployment and its ConfigMap
const deployment = manifest('Deployment');
const podSpec = obj(obj(obj(deployment.spec, 'Deployment spec').template, 'pod template').spec, 'pod spec');
const container = obj(arr(podSpec.containers, 'containers')[0], 'pgwarden container');
const configMapToml = String(obj(manifest('ConfigMap').data, 'ConfigMap data')['pgwarden.toml']);
const containerPort = (name: string): number => {
  const p = arr(container.ports, 'container ports')
    .map((x) => obj(x, 'port'))
    .find((x) => x.name === name);
  assert.ok(p, `container port ${name}`);
  return Number(p.containerPort);
};

describe('deploy/ files', () => {
  it('every YAML file parses', () => {
    const files = yamlFiles(DEPLOY);
    assert.ok(files.length >= 8, `found ${files.join(', ')}`);
    for (const rel of files) {
      for (const doc of parseAllDocuments(read(rel))) assert.deepEqual(doc.errors, [], rel);
    }
  });

  it('both pgwarden.toml files pass pgwarden config validation, with the env vars they name', () => {
    const c = loadToml(composeToml, 'deploy/pgwarden.toml');
    const k = loadToml(configMapToml, 'configmap pgwarden.toml');
    for (const cfg of [c, k]) {
      assert.equal(cfg.server.listenHost, '0.0.0.0', 'a container listens on all interfaces');
      assert.ok(cfg.metrics, 'a metrics listener for probes and Prometheus');
      assert.equal(cfg.metrics.listenHost, '0.0.0.0');
      assert.ok(cfg.admin, 'an admin listener');
      assert.ok(cfg.audit.file?.startsWith('/var/lib/pgwarden/'), 'the audit file lives in the image volume / the emptyDir');
    }
  });

  it('compose runs the image as the Dockerfile builds it, on the ports pgwarden.toml listens on', () => {
    const df = dockerfile();
    const cfg = loadToml(composeToml, 'deploy/pgwarden.toml');
    assert.equal(obj(composePgwarden.build, 'build').dockerfile, 'Dockerfile');
    assert.equal(composePgwarden.user, df.user);
    const volumes = arr(composePgwarden.volumes, 'volumes').map(String);
    assert.ok(volumes.includes(`./pgwarden.toml:${df.configPath}:ro`), `mounts pgwarden.toml at ${df.configPath}`);
    assert.ok(
      volumes.some((v) => v.startsWith('audit:/var/lib/pgwarden')),
      'the image VOLUME holds the audit',
    );
    const published = arr(composePgwarden.ports, 'ports').map((p) => Number(String(p).split(':').pop()));
    for (const p of df.ports) assert.ok(published.includes(p), `EXPOSE ${p} is published`);
    for (const p of [cfg.server.listenPort, cfg.metrics?.listenPort, cfg.admin?.listenPort]) {
      assert.ok(published.includes(Number(p)), `listen port ${String(p)} is published`);
    }
    const environment = obj(composePgwarden.environment, 'environment');
    for (const name of Object.keys(namedEnv(composeToml))) assert.ok(name in environment, `compose sets ${name}`);
    // The tenant's backend is the postgres service, with the role and database it creates.
    const pg = obj(obj(services.postgres, 'postgres').environment, 'postgres environment');
    const acme = cfg.tenants.get('acme');
    assert.ok(acme, 'tenant acme');
    assert.equal(environment.ACME_APP_DB_PASSWORD, pg.POSTGRES_PASSWORD);
    assert.match(composeToml, new RegExp(`backend = "postgresql://postgres:5432/${String(pg.POSTGRES_DB)}"`));
    const scrape = read('deploy/prometheus/prometheus.yml');
    assert.ok(scrape.includes(`pgwarden:${String(cfg.metrics?.listenPort)}`), 'Prometheus scrapes the metrics listener');
  });

  it('the Deployment runs the image as the Dockerfile builds it, on the ConfigMap listen ports', () => {
    const df = dockerfile();
    const cfg = loadToml(configMapToml, 'configmap pgwarden.toml');
    assert.equal(df.user, 'node');
    const podSec = obj(podSpec.securityContext, 'pod securityContext');
    assert.equal(podSec.runAsNonRoot, true);
    assert.equal(podSec.runAsUser, NODE_UID);
    const sec = obj(container.securityContext, 'container securityContext');
    assert.equal(sec.readOnlyRootFilesystem, true);
    assert.equal(sec.allowPrivilegeEscalation, false);
    assert.deepEqual(obj(sec.capabilities, 'capabilities').drop, ['ALL']);
    assert.ok(obj(container.resources, 'resources').limits, 'resource limits');
    assert.deepEqual(container.args, df.cmd);
    assert.equal(containerPort('postgres'), cfg.server.listenPort);
    assert.equal(containerPort('metrics'), cfg.metrics?.listenPort);
    assert.equal(containerPort('admin'), cfg.admin?.listenPort);
    const declared = arr(container.ports, 'ports').map((p) => Number(obj(p, 'port').containerPort));
    for (const p of df.ports) assert.ok(declared.includes(p), `EXPOSE ${p} is a container port`);
    // The config is mounted where CMD reads it, and the audit directory is writable (an emptyDir).
    const mounts = arr(container.volumeMounts, 'volumeMounts').map((m) => obj(m, 'mount'));
    assert.ok(
      mounts.some((m) => m.mountPath === df.configPath),
      `pgwarden.toml at ${df.configPath}`,
    );
    const auditDir = path.dirname(cfg.audit.file ?? '');
    const auditMount = mounts.find((m) => auditDir === m.mountPath || auditDir.startsWith(`${String(m.mountPath)}/`));
    assert.ok(auditMount, 'the audit directory is mounted');
    const volume = arr(podSpec.volumes, 'volumes')
      .map((v) => obj(v, 'volume'))
      .find((v) => v.name === auditMount.name);
    assert.ok(volume && 'emptyDir' in volume, 'the audit directory is an emptyDir');
    // The Service targets the client and metrics ports; the env Secret carries every env var the config names.
    const svcPorts = arr(obj(manifest('Service').spec, 'Service spec').ports, 'Service ports').map((p) => obj(p, 'port').targetPort);
    assert.deepEqual(svcPorts.sort(), ['metrics', 'postgres']);
    const envSecret = documents('deploy/kubernetes/secret.yaml').find((d) => obj(d.metadata, 'metadata').name === 'pgwarden-env');
    assert.ok(envSecret, 'Secret pgwarden-env');
    const envFrom = arr(container.envFrom, 'envFrom').map((e) => obj(obj(e, 'envFrom').secretRef, 'secretRef').name);
    assert.ok(envFrom.includes('pgwarden-env'));
    for (const name of Object.keys(namedEnv(configMapToml))) {
      assert.ok(name in obj(envSecret.stringData, 'stringData'), `Secret pgwarden-env sets ${name}`);
    }
    const pdb = obj(manifest('PodDisruptionBudget').spec, 'PDB spec');
    assert.deepEqual(obj(pdb.selector, 'PDB selector').matchLabels, obj(obj(deployment.spec, 'spec').selector, 'selector').matchLabels);
  });

  it('probes ask the metrics listener for /readyz and /healthz, which pgwarden serves', () => {
    const http = read('src/admin/http.ts');
    for (const [probe, route] of [
      ['readinessProbe', '/readyz'],
      ['livenessProbe', '/healthz'],
    ] as const) {
      const get = obj(obj(container[probe], probe).httpGet, `${probe}.httpGet`);
      assert.equal(get.path, route);
      assert.equal(get.port, 'metrics');
      assert.ok(http.includes(`url === '${route}'`), `src/admin/http.ts serves ${route}`);
    }
    const healthcheck = arr(obj(composePgwarden.healthcheck, 'healthcheck').test, 'healthcheck test').join(' ');
    const metricsPort = loadToml(composeToml, 'deploy/pgwarden.toml').metrics?.listenPort;
    assert.ok(healthcheck.includes(`127.0.0.1:${String(metricsPort)}/readyz`), 'compose health check asks /readyz');
  });

  it('the grace periods leave room for preStop and the drain (shutdown_timeout)', () => {
    const k = loadToml(configMapToml, 'configmap pgwarden.toml');
    const preStop = arr(obj(obj(obj(container.lifecycle, 'lifecycle').preStop, 'preStop').exec, 'exec').command, 'command');
    assert.equal(preStop[0], 'sleep');
    const sleepS = Number(preStop[1]);
    const grace = Number(podSpec.terminationGracePeriodSeconds);
    assert.ok(grace > sleepS + k.server.shutdownTimeoutMs / 1000, `${grace}s > ${sleepS}s preStop + ${k.server.shutdownTimeoutMs / 1000}s drain`);
    const c = loadToml(composeToml, 'deploy/pgwarden.toml');
    const stop = durationSeconds(composePgwarden.stop_grace_period);
    assert.ok(stop > c.server.shutdownTimeoutMs / 1000, `compose stop_grace_period ${stop}s > shutdown_timeout`);
  });

  it('the Grafana dashboard has the shape Grafana loads: unique panel ids, a grid without overlaps, defined variables', () => {
    const dash = obj(JSON.parse(read('deploy/grafana/pgwarden.json')), 'pgwarden.json');
    assert.equal(dash.uid, 'pgwarden');
    assert.equal(typeof dash.title, 'string');
    assert.ok(Number(dash.schemaVersion) >= 36, 'a schemaVersion of Grafana 9 or later');
    const vars = arr(obj(dash.templating, 'templating').list, 'variables').map((v) => obj(v, 'variable'));
    const names = vars.map((v) => String(v.name));
    assert.deepEqual(names, ['datasource', 'instance', 'tenant']);
    const tenant = vars.find((v) => v.name === 'tenant')!;
    assert.equal(tenant.type, 'query');
    assert.equal(tenant.includeAll, true);
    assert.match(String(tenant.definition), /label_values\(pgwarden_\w+.*, tenant\)/);
    const panels = arr(dash.panels, 'panels').map((p) => obj(p, 'panel'));
    const ids = panels.map((p) => Number(p.id));
    assert.equal(new Set(ids).size, ids.length, 'panel ids are unique');
    const cells = new Set<string>();
    let tenantPanels = 0;
    for (const p of panels) {
      const g = obj(p.gridPos, `panel ${String(p.id)} gridPos`);
      const [x, y, w, h] = [g.x, g.y, g.w, g.h].map(Number) as [number, number, number, number];
      assert.ok(x >= 0 && w > 0 && x + w <= 24 && h > 0, `panel ${String(p.title)} fits the 24-column grid`);
      for (let i = x; i < x + w; i++) {
        for (let j = y; j < y + h; j++) {
          assert.ok(!cells.has(`${i},${j}`), `panel ${String(p.title)} overlaps another at ${i},${j}`);
          cells.add(`${i},${j}`);
        }
      }
      if (p.type === 'row') continue;
      assert.ok(['timeseries', 'stat'].includes(String(p.type)), `panel type ${String(p.type)}`);
      assert.equal(obj(p.datasource, 'panel datasource').uid, '${datasource}');
      const targets = arr(p.targets, `panel ${String(p.title)} targets`).map((t) => obj(t, 'target'));
      assert.ok(targets.length > 0, `panel ${String(p.title)} has queries`);
      for (const t of targets) {
        const expr = String(t.expr);
        assert.match(expr, /pgwarden_/, `panel ${String(p.title)} queries pgwarden`);
        for (const v of expr.match(/\$(\w+)/g) ?? []) assert.ok(v === '$__rate_interval' || names.includes(v.slice(1)), `${v} in ${String(p.title)} is defined`);
        assert.equal(expr.split('(').length, expr.split(')').length, `balanced parentheses: ${expr}`);
        if (expr.includes('tenant=~"$tenant"')) tenantPanels++;
      }
    }
    assert.ok(tenantPanels >= 10, `${tenantPanels} queries follow the tenant variable`);
  });

  it('compose provisions the alert rules into Prometheus and the dashboard into Grafana', () => {
    const prom = obj(services.prometheus, 'prometheus service');
    const promVolumes = arr(prom.volumes, 'prometheus volumes').map(String);
    const promConfig = obj(parseYaml(read('deploy/prometheus/prometheus.yml')), 'prometheus.yml');
    const configMount = promVolumes.find((v) => v.startsWith('./prometheus/prometheus.yml:'))?.split(':')[1];
    assert.ok(configMount, 'prometheus.yml is mounted');
    for (const rel of arr(promConfig.rule_files, 'rule_files').map(String)) {
      const inContainer = path.posix.join(path.posix.dirname(configMount), rel);
      assert.ok(promVolumes.includes(`./prometheus/${rel}:${inContainer}:ro`), `${rel} is mounted at ${inContainer}`);
    }
    const grafana = obj(services.grafana, 'grafana service');
    const grafanaVolumes = arr(grafana.volumes, 'grafana volumes').map(String);
    const provider = obj(arr(obj(parseYaml(read('deploy/grafana/provisioning/dashboards/pgwarden.yaml')), 'provider file').providers, 'providers')[0], 'provider');
    const dashDir = String(obj(provider.options, 'provider options').path);
    assert.ok(grafanaVolumes.includes('./grafana/provisioning/dashboards:/etc/grafana/provisioning/dashboards:ro'), 'the dashboard provider is mounted');
    assert.ok(grafanaVolumes.includes(`./grafana/pgwarden.json:${dashDir}/pgwarden.json:ro`), `the dashboard is mounted in ${dashDir}`);
  });
});
