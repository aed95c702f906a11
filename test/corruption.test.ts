// A replica's bytes are damaged on disk behind the chunk server's back. A read that meets the
// damage is served from another replica and the damaged blocks are repaired; damage that no read
// meets is found by the background scrubber and repaired. Both show in the metrics.

import t from 'tap';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { LocalCluster } from '../src/local/cluster.ts';
import { startCluster } from './helpers/cluster.ts';
import { eventually } from './helpers/faults.ts';
import { metricValue } from './helpers/metrics.ts';
import { runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;

async function replicaFile(cluster: LocalCluster, csId: number, chunkId: number): Promise<string> {
  const index = await cluster.chunkServerIndex(csId);
  return join(cluster.chunkServerDir(index), 'chunks', (chunkId % 256).toString(16).padStart(2, '0'), `${chunkId}.data`);
}

async function readAt(path: string, offset: number, length: number): Promise<Buffer> {
  const handle = await open(path, 'r');
  const bytes = Buffer.alloc(length);
  await handle.read(bytes, 0, length, offset);
  await handle.close();
  return bytes;
}

async function damage(path: string, offset: number): Promise<void> {
  const handle = await open(path, 'r+');
  await handle.write(Buffer.from('this block was damaged on disk by the test'), 0, undefined, offset);
  await handle.close();
}


t.test('damaged replicas are read around, found and repaired', async (t) => {
  t.setTimeout(120_000);
  const cluster = await startCluster(t, { csArgs: ['--scrub-bytes-per-second', '0'] });
  await cluster.admin.createVolume({ name: 'rot', sizeBytes: 64 * MiB, chunkSizeBytes: 8 * MiB });
  const uri = cluster.nbdUnixUri('rot');
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 8M', '-c', 'write -P 0x6b 8M 8M', uri]);
  const { chunks } = await cluster.internal.chunkMap('rot', 0, 16);
  const [first, second] = chunks;
  if (first === undefined || second === undefined) throw new Error('two chunks expected');

  await t.test('a read meeting damage gets good bytes; the block is repaired', async (t) => {
    const primary = first.replicas[0]!.csId;
    const file = await replicaFile(cluster, primary, first.chunkId);
    await damage(file, 5 * 4096 + 100);
    t.notOk((await readAt(file, 5 * 4096, 4096)).every((b) => b === 0x5a), 'the primary replica is damaged on disk');
    const { stdout } = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x5a 0 8M', uri]);
    t.notMatch(stdout, /verification failed/, 'the read returns the right bytes');
    const port = Number(cluster.chunkServers[await cluster.chunkServerIndex(primary)]!.ready['metricsPort']);
    t.ok((await metricValue(port, 'shoal_cs_checksum_errors_total')) >= 1, 'the damaged server counts a checksum error');
    t.ok(await eventually(async () => (await readAt(file, 5 * 4096, 4096)).every((b) => b === 0x5a), 10_000),
      'the damaged block is repaired on disk from another replica');
    t.ok(await eventually(async () => (await metricValue(port, 'shoal_cs_repaired_blocks_total')) >= 1, 5_000), 'and counted as repaired');
  });

  await t.test('the scrubber finds damage no read meets, and it is repaired', async (t) => {
    const secondary = second.replicas[2]!.csId;
    const index = await cluster.chunkServerIndex(secondary);
    const file = await replicaFile(cluster, secondary, second.chunkId);
    // Restart that server with a fast scrubber; damage its copy first, while it is down.
    await cluster.chunkServers[index]!.stop('SIGTERM');
    await damage(file, 1000 * 4096 + 7);
    await cluster.startChunkServer(index, { extraArgs: ['--scrub-bytes-per-second', String(256 * MiB), '--scrub-interval-ms', '1000'] });
    const port = Number(cluster.chunkServers[index]!.ready['metricsPort']);
    t.ok(await eventually(async () => (await metricValue(port, 'shoal_cs_scrub_bad_blocks_total')) >= 1, 30_000),
      'the scrubber reports the bad block');
    t.ok(await eventually(async () => (await readAt(file, 1000 * 4096, 4096)).every((b) => b === 0x6b), 15_000),
      'the block is repaired on disk');
    t.ok(await eventually(async () => (await metricValue(port, 'shoal_cs_repaired_blocks_total')) >= 1, 5_000), 'and counted as repaired');
    const { stdout } = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x6b 8M 8M', uri]);
    t.notMatch(stdout, /verification failed/, 'the volume reads right');
  });
});
