// The MDS's status page, loaded by headless chromium against a real cluster with two volumes and
// a drain running: the page's DOM shows the volumes and the running task's progress, a
// screenshot is taken, nothing is loaded from anywhere but the MDS, and without the admin token
// (or with a wrong one) the page shows no cluster data.

import t from 'tap';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster } from './helpers/cluster.ts';
import { run, runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;

t.test('headless chromium shows the cluster\'s volumes and a running drain\'s progress', async (t) => {
  t.setTimeout(240_000);
  const cluster = await startCluster(t, {
    chunkServers: 4,
    // Slow copies: the drain is still running while the page is loaded.
    mdsArgs: ['--heartbeat-interval-ms', '200', '--heartbeat-timeout-ms', '1500', '--recovery-bytes-per-second', String(MiB)],
  });
  await cluster.admin.createVolume({ name: 'web1', sizeBytes: 256 * MiB, chunkSizeBytes: 16 * MiB, qos: { iopsLimit: 1000 } });
  await cluster.admin.createVolume({ name: 'db', sizeBytes: 64 * MiB });
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 48M', cluster.nbdUnixUri('web1')], { timeoutMs: 60_000 });
  const servers = (await cluster.admin.listChunkServers()).chunkServers;
  const fullest = [...servers].sort((a, b) => b.mappedReplicaCount - a.mappedReplicaCount)[0];
  if (fullest === undefined) throw new Error('no chunk server');
  const task = await cluster.admin.startTask({ kind: 'drain', chunkServerId: fullest.id });
  t.equal(task.state, 'running', `task ${task.id} drains chunk server ${fullest.id} (${task.progress.itemsTotal} replicas)`);

  const reply = await fetch(`${cluster.mdsUrl}/status`);
  const html = await reply.text();
  t.equal(reply.status, 200, 'GET /status needs no token: the document holds no data');
  t.match(reply.headers.get('content-type') ?? '', /^text\/html/);
  t.match(reply.headers.get('content-security-policy') ?? '', /default-src 'none'; script-src 'sha256-[^']+'; style-src 'sha256-[^']+'; connect-src 'self'/,
    'a policy that allows only its own script and style, and requests to the MDS');
  t.notMatch(html, /\b(src|href)\s*=/i, 'no external asset: nothing is loaded by reference');
  t.notMatch(html, /web1|chunk server \d/, 'and no cluster data in the document itself');

  const profile = await mkdtemp(join(tmpdir(), 'shoal-chromium-'));
  t.teardown(() => rm(profile, { recursive: true, force: true }));
  const chromium = (url: string, ...extra: string[]) => run('chromium', [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', `--user-data-dir=${profile}`,
    '--virtual-time-budget=8000', ...extra, url,
  ], { timeoutMs: 90_000 });

  const page = `${cluster.mdsUrl}/status#token=${cluster.adminToken}`;
  const dom = await chromium(page, '--dump-dom');
  t.equal(dom.code, 0, `chromium exits 0: ${dom.stderr.slice(-500)}`);
  const text = dom.stdout;
  t.match(text, /<tr data-volume="web1">/, 'the DOM lists volume web1');
  t.match(text, /<tr data-volume="db">/, 'and volume db');
  t.match(text, /1000 IOPS/, 'with web1\'s limit');
  const row = new RegExp(`<tr data-task="${task.id}" data-state="(\\w+)">(.*?)</tr>`).exec(text);
  t.ok(row !== null, `the task's row is there (task ${task.id})`);
  t.equal(row?.[1], 'running', 'the drain is running');
  const progress = /<td class="num progress-text">(\d+)\/(\d+)<\/td>/.exec(row?.[2] ?? '');
  t.ok(progress !== null && Number(progress[2]) >= 1 && Number(progress[1]) <= Number(progress[2]),
    `its progress shows: ${progress?.[1]}/${progress?.[2]} replicas moved`);
  t.match(row?.[2] ?? '', /<progress max="\d+" value="\d+">/, 'with a progress bar');
  t.match(text, new RegExp(`<tr data-server="${fullest.id}">.*?online/draining`), 'the draining server is shown draining');
  t.match(text, /id="health"[^>]*>(OK|WARNING)/, 'the health line');
  t.match(text, /<tr data-tier="0">/, 'space per tier');

  const screenshot = join(profile, 'status.png');
  const shot = await chromium(page, `--screenshot=${screenshot}`, '--window-size=1280,1000');
  t.equal(shot.code, 0, `chromium takes a screenshot: ${shot.stderr.slice(-500)}`);
  const png = await readFile(screenshot);
  t.same([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'a PNG');
  t.ok(png.length > 20_000, `of a page with content (${png.length} bytes)`);
  // To look at it: SHOAL_STATUS_SCREENSHOT=/tmp/status.png npx tap build/test/status_page.test.js
  const keep = process.env['SHOAL_STATUS_SCREENSHOT'];
  if (keep !== undefined && keep !== '') await copyFile(screenshot, keep);

  const anonymous = await chromium(`${cluster.mdsUrl}/status`, '--dump-dom');
  t.match(anonymous.stdout, /<form id="login">/, 'without a token the page asks for one');
  t.notMatch(anonymous.stdout, /data-volume=/, 'and shows no volume');
  const wrong = await chromium(`${cluster.mdsUrl}/status#token=${'0'.repeat(64)}`, '--dump-dom');
  t.match(wrong.stdout, /refused the admin token/, 'a wrong token is refused, and the page says so');
  t.notMatch(wrong.stdout, /data-volume=/, 'and shows nothing');
});
