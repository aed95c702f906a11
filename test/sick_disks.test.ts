// Sick disks on a real cluster: one of four chunk servers runs on the slow-disk helper (40 ms a
// seek, and every durable write paying for one), the others on the fast disk. Under writes the
// MDS marks it ill within --sick-after-ms of measuring it: `shoal cs list` says so, `shoal cs info`
// says why, the metric counts it; new chunks avoid it; the NBD server reads around it (its read
// counter stands still while the data reads back from the others).

import { join } from 'node:path';
import t from 'tap';
import { cliRunner } from './helpers/cli.ts';
import { startCluster } from './helpers/cluster.ts';
import { eventually } from './helpers/eventually.ts';
import { metricValue } from './helpers/metrics.ts';
import { run, runOk } from './helpers/run.ts';
import { mountSlowDisk } from './helpers/slow_disk.ts';

const MiB = 1024 * 1024;
const CHUNK_BYTES = 4 * MiB;

t.test('a chunk server on a disk far slower than its peers\' is marked ill: new chunks and reads avoid it', async (t) => {
  t.setTimeout(180_000);
  // Mounted first: torn down last, after the cluster's processes are gone.
  const disk = await mountSlowDisk(t, { seekMs: 40 });
  const cluster = await startCluster(t, {
    chunkServers: 4,
    mdsArgs: ['--heartbeat-interval-ms', '200', '--heartbeat-timeout-ms', '1500', '--sick-after-ms', '3000'],
    csArgsFor: (index) => (index === 3 ? ['--data', join(disk.path, 'cs3')] : []),
  });
  const cli = await cliRunner(t);
  const env = { SHOAL_MDS: cluster.mdsUrl, SHOAL_TOKEN: cluster.adminToken };
  const slowId = await cluster.chunkServerId(3);

  await cluster.admin.createVolume({ name: 'before', sizeBytes: 64 * MiB, chunkSizeBytes: CHUNK_BYTES });
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 32M', cluster.nbdUnixUri('before')], { timeoutMs: 60_000 });
  const { chunks: before } = await cluster.internal.chunkMap('before', 0, 64);
  t.ok(before.some((chunk) => chunk.replicas.some((r) => r.csId === slowId)), 'before it is found out, the slow server takes chunks like any other');

  // Small synced writes (to the half not written above): every member's journal commits them, the slow one 40 ms a time at least.
  const load = run('fio', [
    '--name=load', '--ioengine=nbd', `--uri=${cluster.nbdUnixUri('before')}`, '--rw=randwrite', '--bs=4k', '--iodepth=4', '--offset=32M', '--size=32M',
    '--time_based', '--runtime=20', '--output-format=json',
  ], { timeoutMs: 90_000 });
  const ill = await eventually('the MDS to mark the slow server ill', 60_000, async () =>
    (await cluster.admin.listChunkServers()).chunkServers.find((s) => s.id === slowId && s.ill !== null) ?? null);
  t.match(ill.ill?.reason, /journal commits take [\d.]+ ms on average, \d+x the median of the 3 other servers of its tier/, `why: ${ill.ill?.reason}`);
  const others = (await cluster.admin.listChunkServers()).chunkServers.filter((s) => s.id !== slowId);
  t.ok(others.every((s) => s.ill === null), 'the fast servers are well');
  const listed = await cli.shoal(['cs', 'list'], env);
  t.match(listed.stdout, new RegExp(`\\n\\s*${slowId}\\s+\\S+\\s+online/ill\\s`), 'shoal cs list marks it ill');
  const info = await cli.shoal(['cs', 'info', String(slowId)], env);
  t.match(info.stdout, /ill: +since .*: journal commits take .*reads and new chunks avoid it/);
  const mdsPort = Number(cluster.mds.ready['port']); // the MDS serves /metrics on its API port
  t.equal(await metricValue(mdsPort, 'shoal_mds_chunk_servers_ill'), 1, 'the metric counts it');
  t.equal((await load).code, 0, 'the writes went on meanwhile');

  // New chunks go to the three well servers.
  await cluster.admin.createVolume({ name: 'after', sizeBytes: 64 * MiB, chunkSizeBytes: CHUNK_BYTES });
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6b 0 32M', cluster.nbdUnixUri('after')], { timeoutMs: 60_000 });
  const { chunks: after } = await cluster.internal.chunkMap('after', 0, 64);
  t.equal(after.length, 8);
  t.ok(after.every((chunk) => chunk.replicas.every((r) => r.csId !== slowId)), 'no new chunk has a replica on the ill server');

  // Reads go around it: the NBD server learns the ill servers with its I/O reports (every 2 s).
  await new Promise((resolve) => setTimeout(resolve, 4_500));
  const readsOn = async (csId: number): Promise<number> => {
    const server = (await cluster.admin.listChunkServers()).chunkServers.find((s) => s.id === csId);
    return (await metricValue(server?.metricsPort ?? 0, 'shoal_cs_requests_total', '{op="read",code="ok"}')) || 0;
  };
  const slowBefore = await readsOn(slowId);
  const othersBefore = await Promise.all(others.map((s) => readsOn(s.id)));
  await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 0 32M', '-c', 'read 32M 32M', cluster.nbdUnixUri('before')], { timeoutMs: 60_000 });
  const slowAfter = await readsOn(slowId);
  const othersAfter = await Promise.all(others.map((s) => readsOn(s.id)));
  t.equal(slowAfter - slowBefore, 0, 'no read reached the ill server');
  const served = othersAfter.reduce((sum, value, index) => sum + value - (othersBefore[index] ?? 0), 0);
  t.ok(served >= 8, `the well servers served the reads (${served})`);
});
