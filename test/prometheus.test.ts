// Prometheus, for real: every daemon of a cluster that has served I/O exposes metrics that pass
// `promtool check metrics` (names, types, suffixes, help); the alert rules shipped in
// deploy/prometheus pass `promtool check rules` and their unit tests; and a real Prometheus
// scraping the five daemons with those rules sees every target up, has samples of every metric
// they expose, returns data for every query of the Grafana dashboard (deploy/grafana) while a
// client reads and writes, evaluates every rule without error, and raises the chunk-server alerts
// when one is killed.

import t from 'tap';
import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startCluster } from './helpers/cluster.ts';
import { run, runOk } from './helpers/run.ts';

// Compiled to build/test: the repository is two levels up.
const RULES_DIR = fileURLToPath(new URL('../../deploy/prometheus/', import.meta.url));
const RULES_FILE = join(RULES_DIR, 'shoal-alerts.yml');
const DASHBOARD_FILE = fileURLToPath(new URL('../../deploy/grafana/shoal-dashboard.json', import.meta.url));

interface Target {
  readonly job: string;
  readonly port: number;
}

/** Sample names in an exposition (histogram series included: `_bucket`, `_sum`, `_count`). */
function sampleNames(exposition: string): Set<string> {
  const names = new Set<string>();
  for (const line of exposition.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    names.add(line.split(/[{ ]/, 1)[0] ?? '');
  }
  return names;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0));
    });
  });
}

async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | null>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  while (Date.now() < deadline) {
    try {
      const value = await probe();
      if (value !== null) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last === null ? '' : ` (last error: ${String(last)})`}`);
}

t.test('the alert rules pass promtool check rules and their unit tests', async (t) => {
  const check = await run('promtool', ['check', 'rules', RULES_FILE]);
  t.equal(check.code, 0, `promtool check rules${check.code === 0 ? '' : `: ${check.stdout}${check.stderr}`}`);
  t.match(check.stdout, /SUCCESS: \d+ rules found/, check.stdout.trim().split('\n').at(-1) ?? '');
  const unit = await run('promtool', ['test', 'rules', join(RULES_DIR, 'shoal-alerts.test.yml')]);
  t.equal(unit.code, 0, `promtool test rules${unit.code === 0 ? '' : `: ${unit.stdout}${unit.stderr}`}`);
});

t.test('every daemon passes promtool, and Prometheus scrapes them all with the alert rules', async (t) => {
  t.setTimeout(120_000);
  const cluster = await startCluster(t);
  await cluster.admin.createVolume({ name: 'prom', sizeBytes: 64 * 1024 * 1024 });
  // Writes, reads and a flush, so that the data path's histograms and counters have samples.
  const uri = cluster.nbdUnixUri('prom');
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 1M', '-c', 'read -P 0x11 0 1M', '-c', 'flush', uri]);

  // The job names the alert rules expect (the README's scrape configuration).
  const targets: Target[] = [{ job: 'shoal-mds', port: Number(cluster.mds.ready['port']) }];
  for (const cs of cluster.chunkServers) {
    if (cs !== null) targets.push({ job: 'shoal-cs', port: Number(cs.ready['metricsPort']) });
  }
  const nbd = cluster.nbd;
  if (nbd === null) throw new Error('the cluster has no NBD server');
  targets.push({ job: 'shoal-nbd', port: Number(nbd.ready['metricsPort']) });
  t.equal(targets.filter((target) => Number.isInteger(target.port) && target.port > 0).length, 5, 'five daemons with a metrics port');

  const exposed = new Set<string>();
  for (const target of targets) {
    const text = await (await fetch(`http://127.0.0.1:${target.port}/metrics`)).text();
    const lint = await run('promtool', ['check', 'metrics'], { input: text });
    t.equal(lint.code, 0, `${target.job} on port ${target.port}: promtool check metrics passes${lint.code === 0 ? '' : `: ${lint.stdout}${lint.stderr}`}`);
    // Node's live requests and handles by type are exposed only while one of a type exists (a
    // file read in flight, say): one fetch may see what no scrape sees. Everything else is steady.
    for (const name of sampleNames(text)) if (!/_nodejs_active_(requests|handles|resources)$/.test(name)) exposed.add(name);
  }
  t.ok(exposed.size > 100, `${exposed.size} sample names exposed`);

  const promDir = join(cluster.dir, 'prometheus');
  const config = join(cluster.dir, 'prometheus.yml');
  const jobs = ['shoal-mds', 'shoal-cs', 'shoal-nbd'].map((job) => [
    `  - job_name: ${job}`,
    '    static_configs:',
    `      - targets: [${targets.filter((target) => target.job === job).map((target) => `'127.0.0.1:${target.port}'`).join(', ')}]`,
  ].join('\n'));
  await writeFile(config, [
    'global:', '  scrape_interval: 1s', '  scrape_timeout: 1s', '  evaluation_interval: 1s',
    `rule_files: ['${RULES_FILE}']`, 'scrape_configs:', ...jobs, '',
  ].join('\n'));
  const check = await run('promtool', ['check', 'config', config]);
  t.equal(check.code, 0, `promtool check config passes${check.code === 0 ? '' : `: ${check.stdout}${check.stderr}`}`);

  const port = await freePort();
  const prometheus = spawn('prometheus', [
    `--config.file=${config}`, `--storage.tsdb.path=${promDir}`, `--web.listen-address=127.0.0.1:${port}`,
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  prometheus.stderr.setEncoding('utf8').on('data', (text: string) => {
    log = (log + text).slice(-8000);
  });
  const exited = new Promise<void>((resolve) => prometheus.once('exit', () => resolve()));
  t.teardown(async () => {
    prometheus.kill('SIGKILL');
    await exited;
  });
  const api = `http://127.0.0.1:${port}/api/v1`;

  interface TargetsReply { data: { activeTargets: Array<{ scrapeUrl: string; health: string; lastError: string }> } }
  const active = await waitFor('five targets up', 60_000, async () => {
    if (prometheus.exitCode !== null) throw new Error(`prometheus exited ${prometheus.exitCode}: ${log}`);
    const reply = await (await fetch(`${api}/targets`)).json() as TargetsReply;
    const list = reply.data.activeTargets;
    return list.length === 5 && list.every((target) => target.health === 'up') ? list : null;
  });
  t.same(active.map((target) => target.health), ['up', 'up', 'up', 'up', 'up'], `targets up: ${active.map((target) => target.scrapeUrl).join(', ')}`);

  // Traffic while Prometheus watches, so that the dashboard's rates and latency quantiles have
  // something to show: writes, then reads, at queue depth 4.
  const image = `driver=nbd,server.type=unix,server.path=${new URL(uri).searchParams.get('socket') ?? ''},export=prom`;
  for (const mode of [['-w'], []]) {
    await runOk('qemu-img', ['bench', ...mode, '-c', '1500', '-d', '4', '-s', '4096', '--image-opts', image], { timeoutMs: 60_000 });
  }

  // One query: the names of every series Prometheus holds samples for, against what was exposed.
  interface QueryReply { status: string; data: { result: Array<{ metric: { __name__: string } }> } }
  const stored = await waitFor('samples of every exposed metric', 30_000, async () => {
    const query = encodeURIComponent('count by (__name__) ({__name__=~"shoal_.+"})');
    const reply = await (await fetch(`${api}/query?query=${query}`)).json() as QueryReply;
    const names = new Set(reply.data.result.map((series) => series.metric.__name__));
    return [...exposed].every((name) => names.has(name)) ? names : null;
  }).catch(async () => {
    const query = encodeURIComponent('count by (__name__) ({__name__=~"shoal_.+"})');
    const reply = await (await fetch(`${api}/query?query=${query}`)).json() as QueryReply;
    return new Set(reply.data.result.map((series) => series.metric.__name__));
  });
  const missing = [...exposed].filter((name) => !stored.has(name));
  t.same(missing, [], `Prometheus holds samples of all ${exposed.size} exposed metric names`);
  // What an admin's dashboard reads first: from each kind of daemon, scraped.
  for (const name of ['shoal_mds_up', 'shoal_mds_http_request_duration_seconds_count', 'shoal_cs_journal_commits_total', 'shoal_nbd_written_bytes_total', 'shoal_cs_process_resident_memory_bytes']) {
    t.ok(stored.has(name), `${name} is stored`);
  }

  // Every query of every dashboard panel returns data: at least one series with a number (a
  // quantile of a command that saw no request in the window is NaN, as Grafana shows it).
  interface Panel { title: string; targets: Array<{ expr: string }> }
  const dashboard = JSON.parse(await readFile(DASHBOARD_FILE, 'utf8')) as { panels: Panel[] };
  interface VectorReply { status: string; error?: string; data: { result: Array<{ value: [number, string] }> } }
  const queries = dashboard.panels.flatMap((panel) => panel.targets.map((target) => ({ title: panel.title, expr: target.expr })));
  let lacking: string[] = [];
  await waitFor('data for every dashboard query', 30_000, async () => {
    const without: string[] = [];
    for (const { title, expr } of queries) {
      const promql = expr.replaceAll('$__rate_interval', '1m');
      const reply = await (await fetch(`${api}/query?query=${encodeURIComponent(promql)}`)).json() as VectorReply;
      if (reply.status !== 'success') throw new Error(`${title}: ${promql}: ${reply.error ?? reply.status}`);
      if (!reply.data.result.some((series) => Number.isFinite(Number(series.value[1])))) without.push(`${title}: ${promql}`);
    }
    lacking = without;
    return without.length === 0 ? without : null;
  }).catch((error: unknown) => {
    if (lacking.length === 0) lacking = [String(error)];
  });
  t.same(lacking, [], `all ${queries.length} queries of the ${dashboard.panels.length} dashboard panels return data`);

  // Every rule evaluates against the live cluster without error, and none of the chunk-server
  // alerts is raised while all is well.
  interface Rule { name: string; health: string; lastError?: string; alerts?: Array<{ state: string; labels: Record<string, string> }> }
  interface RulesReply { data: { groups: Array<{ rules: Rule[] }> } }
  const rules = async (): Promise<Rule[]> => ((await (await fetch(`${api}/rules?type=alert`)).json()) as RulesReply).data.groups.flatMap((group) => group.rules);
  const evaluated = await waitFor('every rule evaluated', 30_000, async () => {
    const list = await rules();
    return list.length > 0 && list.every((rule) => rule.health !== 'unknown') ? list : null;
  });
  t.same(evaluated.filter((rule) => rule.health !== 'ok').map((rule) => `${rule.name}: ${rule.lastError ?? rule.health}`), [],
    `all ${evaluated.length} alert rules evaluate without error`);
  const raised = (list: Rule[], name: string): Array<{ state: string; labels: Record<string, string> }> =>
    list.find((rule) => rule.name === name)?.alerts ?? [];
  t.same(raised(evaluated, 'ShoalChunkServerOffline'), [], 'ShoalChunkServerOffline is quiet on a healthy cluster');
  t.same(raised(evaluated, 'ShoalDaemonDown'), [], 'ShoalDaemonDown is quiet on a healthy cluster');

  // A real fault: a chunk server dies. Prometheus cannot scrape it, and the MDS counts it offline
  // once its heartbeats stop (5 s): both alerts are raised (pending until their `for:` passes).
  const victim = cluster.chunkServers[2];
  if (victim === null || victim === undefined) throw new Error('no third chunk server');
  const victimTarget = `127.0.0.1:${Number(victim.ready['metricsPort'])}`;
  victim.kill('SIGKILL');
  await victim.waitExit();
  const after = await waitFor('both alerts raised', 60_000, async () => {
    const list = await rules();
    return raised(list, 'ShoalChunkServerOffline').length > 0 && raised(list, 'ShoalDaemonDown').length > 0 ? list : null;
  });
  t.same(raised(after, 'ShoalDaemonDown').map((alert) => [alert.labels['job'], alert.labels['instance']]), [['shoal-cs', victimTarget]],
    `ShoalDaemonDown names the dead chunk server (${victimTarget})`);
  t.same(raised(after, 'ShoalChunkServerOffline').map((alert) => alert.labels['severity']), ['warning'], 'ShoalChunkServerOffline is raised');
});
