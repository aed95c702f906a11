// Per-volume I/O statistics of the NBD server (src/nbd/volume_stats.ts): the running totals and
// their bounds on their own with a fake clock, then a real cluster where qemu-img writes one
// volume and reads another and the NBD server's /metrics counts exactly those requests and bytes.

import t from 'tap';
import { join } from 'node:path';
import { VolumeIoStats } from '../src/nbd/volume_stats.ts';
import { startCluster } from './helpers/cluster.ts';
import { metricValue } from './helpers/metrics.ts';
import { runOk } from './helpers/run.ts';

t.test('entries: shared by connections, kept a while after the last closes, idle ones bounded', async (t) => {
  let nowMs = 0;
  const stats = new VolumeIoStats({ monotonicMs: () => nowMs }, 1_000, 2);
  const first = stats.acquire('a');
  const second = stats.acquire('a');
  t.equal(first, second, 'two connections of one volume share its totals');
  first.writeOps += 3;
  stats.release(first);
  t.same(stats.entries().map((entry) => entry.volume), ['a'], 'one connection still open: the entry stays');
  stats.release(second);
  nowMs = 999;
  t.same(stats.entries().map((entry) => [entry.volume, entry.writeOps]), [['a', 3]], 'closed, within the retention: totals still there');
  const again = stats.acquire('a');
  t.equal(again.writeOps, 3, 'a volume that reconnects in time keeps its totals');
  stats.release(again);
  nowMs = 2_000;
  t.same(stats.entries(), [], 'past the retention: gone');
  for (const [index, volume] of ['x', 'y', 'z'].entries()) {
    nowMs = 3_000 + index;
    stats.release(stats.acquire(volume));
  }
  t.same(stats.entries().map((entry) => entry.volume).sort(), ['y', 'z'], 'over the idle bound the oldest idle entry goes');
  const busy = stats.acquire('busy');
  nowMs = 100_000;
  t.same(stats.entries().map((entry) => entry.volume), ['busy'], 'an entry with a connection open never expires');
  stats.release(busy);
  t.throws(() => stats.release(busy), /released once per acquire/, 'a double release stops loudly');
});

t.test('the NBD server counts each volume\'s requests and bytes', async (t) => {
  t.setTimeout(120_000);
  const cluster = await startCluster(t);
  for (const name of ['va', 'vb']) await cluster.admin.createVolume({ name, sizeBytes: 64 * 1024 * 1024 });
  const socket = join(cluster.dir, 'nbd.sock');
  const image = (volume: string): string => `driver=nbd,server.type=unix,server.path=${socket},export=${volume}`;
  // va: 400 writes of 4 KiB; vb: 300 reads of 8 KiB; at once, on their own connections.
  await Promise.all([
    runOk('qemu-img', ['bench', '-w', '-c', '400', '-d', '4', '-s', '4096', '--image-opts', image('va')], { timeoutMs: 60_000 }),
    runOk('qemu-img', ['bench', '-c', '300', '-d', '4', '-s', '8192', '--image-opts', image('vb')], { timeoutMs: 60_000 }),
  ]);
  const nbd = cluster.nbd;
  if (nbd === null) throw new Error('the cluster has no NBD server');
  const port = Number(nbd.ready['metricsPort']);
  const value = (name: string, labels: string): Promise<number> => metricValue(port, name, labels);
  t.equal(await value('shoal_nbd_volume_requests_total', '{volume="va",op="write"}'), 400, 'va: 400 writes');
  t.equal(await value('shoal_nbd_volume_bytes_total', '{volume="va",direction="write"}'), 400 * 4096, 'va: 400 × 4 KiB written');
  t.equal(await value('shoal_nbd_volume_requests_total', '{volume="va",op="read"}'), 0, 'va: no reads');
  t.equal(await value('shoal_nbd_volume_requests_total', '{volume="vb",op="read"}'), 300, 'vb: 300 reads');
  t.equal(await value('shoal_nbd_volume_bytes_total', '{volume="vb",direction="read"}'), 300 * 8192, 'vb: 300 × 8 KiB read');
  t.equal(await value('shoal_nbd_volume_requests_total', '{volume="vb",op="write"}'), 0, 'vb: no writes');
  const writeSeconds = await value('shoal_nbd_volume_request_seconds_total', '{volume="va",op="write"}');
  t.ok(writeSeconds > 0 && writeSeconds < 400, `va's writes took ${writeSeconds.toFixed(3)} s in all`);
  t.equal(await value('shoal_nbd_volume_errors_total', '{volume="va"}'), 0, 'no errors');
});
