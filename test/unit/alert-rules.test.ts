/**
 * The Prometheus alert rules shipped in deploy/prometheus/ (issue 16): Prometheus's own promtool
 * checks the rules and the scrape config and runs the rules' unit tests (alerts.test.yml); every
 * alert has a test in which it fires, a runbook section in docs/operations.md that its runbook_url
 * names, and a row in that document's alert table naming the metrics its expression reads.
 * promtool is Debian's `prometheus` package, which .ci/run installs.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const PROM = path.join(ROOT, 'deploy', 'prometheus');
const read = (rel: string): string => readFileSync(path.join(ROOT, rel), 'utf8');

interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels: { severity: string };
  annotations: { summary: string; description: string; runbook_url: string };
}
interface AlertTest {
  eval_time: string;
  alertname: string;
  exp_alerts: { exp_labels: Record<string, string> }[];
}

const rules = (parseYaml(read('deploy/prometheus/alerts.yml')) as { groups: { rules: Rule[] }[] }).groups.flatMap((g) => g.rules);
const unitTests = (parseYaml(read('deploy/prometheus/alerts.test.yml')) as { tests: { alert_rule_test: AlertTest[] }[] }).tests.flatMap((t) => t.alert_rule_test);
const operations = read('docs/operations.md');

/** Runs promtool; a missing binary fails with what to install (never a skip). */
async function promtool(...args: string[]): Promise<string> {
  try {
    const { stdout, stderr } = await promisify(execFile)('promtool', args, { cwd: PROM, timeout: 60_000 });
    return stdout + stderr;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stdout?: string; stderr?: string };
    if (e.code === 'ENOENT') assert.fail("promtool not found: install Debian's prometheus package (.ci/run does)");
    assert.fail(`promtool ${args.join(' ')} failed:\n${e.stdout ?? ''}${e.stderr ?? ''}`);
  }
}

/** GitHub's heading anchor for a heading made of one word (the alert names are). */
const anchor = (heading: string): string => heading.toLowerCase().replace(/[^a-z0-9 -]/g, '').replace(/ /g, '-');

describe('deploy/prometheus alert rules', () => {
  it('promtool accepts the rules and the scrape config that loads them', async () => {
    assert.match(await promtool('check', 'rules', 'alerts.yml'), /SUCCESS: \d+ rules found/);
    const config = await promtool('check', 'config', 'prometheus.yml');
    assert.match(config, /SUCCESS: 1 rule files found/);
    assert.match(config, /is valid prometheus config file syntax/);
  });

  it("the rules' unit tests pass (promtool test rules)", async () => {
    assert.match(await promtool('test', 'rules', 'alerts.test.yml'), /SUCCESS/);
  });

  it('every alert has a unit test in which it fires, per severity', () => {
    for (const r of rules) {
      const fired = unitTests.filter((t) => t.alertname === r.alert).flatMap((t) => t.exp_alerts.map((a) => a.exp_labels.severity));
      assert.ok(fired.includes(r.labels.severity), `${r.alert} (${r.labels.severity}) fires in alerts.test.yml`);
    }
    // And every test names an alert that exists (a renamed alert leaves no test behind).
    const names = new Set(rules.map((r) => r.alert));
    for (const t of unitTests) assert.ok(names.has(t.alertname), `alerts.test.yml tests ${t.alertname}, which alerts.yml does not have`);
  });

  it('every alert has a summary, a severity and a runbook section in docs/operations.md', () => {
    const headings = new Set([...operations.matchAll(/^## (\S+)$/gm)].map((m) => anchor(m[1]!)));
    for (const r of rules) {
      assert.ok(['critical', 'warning', 'info'].includes(r.labels.severity), `${r.alert} severity`);
      assert.ok(r.annotations.summary.includes('{{ $labels.instance }}'), `${r.alert} summary names the instance`);
      assert.ok(r.annotations.description.length > 0, `${r.alert} description`);
      assert.equal(r.annotations.runbook_url, `docs/operations.md#${anchor(r.alert)}`, `${r.alert} runbook_url`);
      assert.ok(headings.has(anchor(r.alert)), `docs/operations.md has a section ## ${r.alert}`);
    }
  });

  it("the alert table in docs/operations.md lists each alert with the metrics its expression reads", () => {
    for (const r of rules) {
      const row = operations.split('\n').find((l) => l.startsWith(`| [${r.alert}]`));
      assert.ok(row, `table row for ${r.alert}`);
      assert.ok(row.includes(r.labels.severity), `${r.alert} row names severity ${r.labels.severity}`);
      for (const m of r.expr.match(/\bpgwarden_[a-z0-9_]+/g) ?? []) assert.ok(row.includes(m), `${r.alert} row names ${m}`);
    }
  });

  it("PgwardenDown watches the job the scrape config names", () => {
    const jobs = (parseYaml(read('deploy/prometheus/prometheus.yml')) as { scrape_configs: { job_name: string }[] }).scrape_configs.map((s) => s.job_name);
    const down = rules.find((r) => r.alert === 'PgwardenDown');
    assert.ok(down);
    const job = /up\{job="([^"]+)"\}/.exec(down.expr)?.[1];
    assert.ok(job !== undefined && jobs.includes(job), `up{job="${job}"} is one of ${jobs.join(', ')}`);
  });
});
