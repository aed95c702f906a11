// `shoal top` and the I/O rates behind it. The rates alone first (totals to rates, a reporter that
// restarts, volumes served by two NBD servers). Then a real cluster with fio writing one volume:
// the MDS's GET /v1/io names it with its rate, and `shoal top` in an 80x24 tmux window (as over
// SSH) shows it at the top with fio's IOPS within 20 %, changes its sort on a key, and quits on q,
// giving the terminal back.

import t from 'tap';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fioArgs, parseFioReport, type FioJob } from '../bench/nbd/fio.ts';
import { SHOAL_ENTRY } from '../src/local/daemon_process.ts';
import { IoRateTable, ratesBetween, sumRates } from '../src/mds/io_rates.ts';
import type { IoTotals } from '../src/protocol/api.ts';
import { cliRunner } from './helpers/cli.ts';
import { startCluster } from './helpers/cluster.ts';
import { run } from './helpers/run.ts';
import { eventually } from './helpers/eventually.ts';

const MiB = 1024 * 1024;

const totals = (ops: number, seconds: number): IoTotals =>
  ({ readOps: 0, writeOps: ops, readBytes: 0, writtenBytes: ops * 4096, readSeconds: 0, writeSeconds: seconds });

t.test('rates from running totals', async (t) => {
  const rates = ratesBetween(totals(100, 1), totals(500, 3), 2_000);
  t.equal(rates.writeIops, 200, '400 writes in 2 s');
  t.equal(rates.writeBytesPerSecond, 200 * 4096);
  t.equal(rates.writeLatencyMs, 5, '2 s of request time over 400 writes: 5 ms each');
  t.equal(ratesBetween(totals(500, 3), totals(40, 0.2), 2_000).writeIops, 20, 'totals that went down: the reporter restarted, count from zero');

  const table = new IoRateTable<string>(10_000, 2);
  table.record('a', 'vol', totals(0, 0), 0);
  table.record('a', 'vol', totals(100, 0.1), 1_000);
  table.record('b', 'vol', totals(0, 0), 0);
  table.record('b', 'vol', totals(300, 0.9), 1_000);
  const both = sumRates(table.current(1_000).map((entry) => entry.rates));
  t.equal(both.writeIops, 400, 'one volume on two NBD servers: the rates add up');
  t.equal(both.writeLatencyMs, 2.5, 'and the latency is the mean over all its requests');
  table.record('c', 'other', totals(0, 0), 1_000);
  t.same(table.current(1_000).map((entry) => entry.key).sort(), ['other', 'vol'], 'over the bound the oldest-reported source goes');
  t.same(table.current(20_000), [], 'sources silent past the stale time are forgotten');
});

t.test('shoal top in an 80x24 terminal shows the volume fio writes, with fio\'s rate', async (t) => {
  t.setTimeout(180_000);
  const cluster = await startCluster(t);
  const cli = await cliRunner(t);
  const env = { SHOAL_MDS: cluster.mdsUrl, SHOAL_TOKEN: cluster.adminToken };
  // A limit keeps fio's rate steady on a shared machine, so that a glance and fio's average agree.
  await cluster.admin.createVolume({ name: 'busy', sizeBytes: 256 * MiB, chunkSizeBytes: 16 * MiB, qos: { iopsLimit: 150, iopsBurst: 15 } });
  await cluster.admin.createVolume({ name: 'quiet', sizeBytes: 64 * MiB });

  const job: FioJob = { name: 'top-randwrite', rw: 'randwrite', blockBytes: 4096, iodepth: 8 };
  const fioOutput = join(cluster.dir, 'fio-top.json');
  const fio = run('fio', fioArgs(job, { uris: [cluster.nbdUnixUri('busy')], regionBytes: 64 * MiB, runtimeSeconds: 40, outputPath: fioOutput }),
    { timeoutMs: 90_000 });

  const io = await eventually('the MDS to report the volume\'s writes', 30_000, async () => {
    const reply = await cluster.admin.ioStats();
    const busy = reply.volumes.find((volume) => volume.name === 'busy');
    return busy !== undefined && busy.writeIops > 50 && reply.chunkServers.length === 3 ? reply : null;
  });
  t.equal(io.volumes[0]?.name, 'busy', 'GET /v1/io: the written volume comes first');
  t.ok(io.chunkServers.every((server) => server.writeIops > 0), 'every chunk server reports the writes it holds a replica of');

  const tmuxDir = await mkdtemp(join(tmpdir(), 'shoal-tmux-'));
  t.teardown(() => rm(tmuxDir, { recursive: true, force: true }));
  const socket = join(tmuxDir, 'tmux.sock');
  const tmux = (...args: string[]) => run('tmux', ['-S', socket, ...args], { timeoutMs: 10_000 });
  const envText = Object.entries({ ...cli.cleanEnv, ...env, NO_COLOR: '' }).map(([key, value]) => `${key}='${value}'`).join(' ');
  const started = await tmux('new-session', '-d', '-s', 'top', '-x', '80', '-y', '24',
    `env ${envText} TERM=xterm ${process.execPath} ${SHOAL_ENTRY} top --interval 1`);
  t.equal(started.code, 0, `tmux starts shoal top: ${started.stderr}`);
  t.teardown(async () => {
    await tmux('kill-server');
  });
  const screen = await eventually('shoal top to show the volume', 20_000, async () => {
    const captured = await tmux('capture-pane', '-p', '-t', 'top');
    const lines = captured.stdout.replace(/\n$/, '').split('\n');
    const header = lines.findIndex((line) => line.startsWith('VOLUME'));
    return header >= 0 && lines[header + 1]?.startsWith('busy') === true ? lines : null;
  });
  t.comment(`the screen:\n${screen.join('\n')}`);
  t.ok(screen.every((line) => line.length <= 80), 'every line fits 80 columns');
  t.ok(screen.length <= 24, 'and the screen 24 rows');
  t.match(screen.join('\n'), /health: OK, 3 of 3 chunk servers online/, 'health first');
  t.match(screen.join('\n'), /space tier 0: .* used/, 'space per tier');
  // What a person glancing at it sees, every 2 s (one report interval each) for most of fio's run:
  // their mean is compared with fio's own over its whole run. A single glance is one interval of a
  // rate that dips whenever the shared machine is busy; the mean of many follows fio's.
  const glances: number[] = [];
  for (let index = 0; index < 10; index += 1) {
    const lines = (await tmux('capture-pane', '-p', '-t', 'top')).stdout.split('\n');
    const header = lines.findIndex((line) => line.startsWith('VOLUME'));
    const row = lines[header + 1] ?? '';
    if (row.startsWith('busy')) glances.push(Number(row.trim().split(/\s+/)[2]));
    await new Promise((resolve) => setTimeout(resolve, 2_000));
  }
  t.ok(glances.length >= 8, `the volume stays on top (${glances.length} of 10 glances)`);
  const shownWriteIops = Math.round(glances.reduce((sum, glance) => sum + glance, 0) / glances.length);
  t.ok(screen.some((line) => /^\s+\d+\s+127\.0\.0\.1:\d+\s+0\s/.test(line)), 'the chunk servers, with address and tier');

  await tmux('send-keys', '-t', 'top', 'n');
  await eventually('the sort to change', 10_000, async () => {
    const captured = await tmux('capture-pane', '-p', '-t', 'top');
    return captured.stdout.includes('sort: name') ? true : null;
  });
  t.pass('n sorts by name');
  await tmux('send-keys', '-t', 'top', 'q');
  await eventually('shoal top to quit', 10_000, async () => ((await tmux('has-session', '-t', 'top')).code !== 0 ? true : null));
  t.pass('q quits (the tmux session ends with it)');

  const fioResult = await fio;
  t.equal(fioResult.code, 0, `fio exits 0: ${fioResult.stderr}`);
  const fioIops = parseFioReport(job, await readFile(fioOutput, 'utf8')).iops;
  const ratio = shownWriteIops / fioIops;
  t.ok(ratio >= 0.75 && ratio <= 1.25,
    `shoal top showed ${shownWriteIops} write IOPS for the volume (mean of ${glances.join(', ')}), fio measured ${fioIops.toFixed(0)} (ratio ${ratio.toFixed(2)})`);

  // Not a terminal: one screen, plain, and the same view.
  const piped = await cli.shoal(['top'], env);
  t.equal(piped.code, 0, piped.stderr);
  t.match(piped.stdout, /^shoal top .*\n/, 'into a pipe it prints one screen');
  t.notMatch(piped.stdout, /\u001b/, 'with no escape codes');
  const bad = await cli.shoal(['top', '--sort', 'size'], env);
  t.equal(bad.code, 2);
  t.match(bad.stderr, /--sort must be one of iops, bandwidth, latency, name, got "size"/);

  // q while a refresh is still waiting for the MDS: top quits once it answers (a refresh in flight
  // at the quit had started the next one, and the process ran on without a screen).
  const again = await tmux('new-session', '-d', '-s', 'top2', '-x', '80', '-y', '24',
    `env ${envText} TERM=xterm ${process.execPath} ${SHOAL_ENTRY} top --interval 1`);
  t.equal(again.code, 0, `tmux starts shoal top again: ${again.stderr}`);
  await eventually('shoal top to draw', 20_000, async () => ((await tmux('capture-pane', '-p', '-t', 'top2')).stdout.includes('VOLUME') ? true : null));
  cluster.mds.kill('SIGSTOP');
  try {
    await new Promise((resolve) => setTimeout(resolve, 2_500)); // past the next refresh, which now waits
    await tmux('send-keys', '-t', 'top2', 'q');
    await new Promise((resolve) => setTimeout(resolve, 500));
  } finally {
    cluster.mds.kill('SIGCONT');
  }
  await eventually('shoal top to quit after the MDS answers', 15_000, async () => ((await tmux('has-session', '-t', 'top2')).code !== 0 ? true : null));
  t.pass('q during a refresh quits once the refresh ends');
});
