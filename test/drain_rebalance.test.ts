// A new, empty chunk server gets its share of the replicas over time (rebalancing), and a drained
// server gives all of its replicas away, a few at a time with visible progress, before it is
// removed. Throughout, every chunk keeps three replicas and the volume's bytes stay intact.

import t from 'tap';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster } from './helpers/cluster.ts';
import { FAST_CS_ARGS, FAST_MDS_ARGS, FAST_NBD_ARGS, checkReplicasIdentical, sleep } from './helpers/faults.ts';
import { runOk } from './helpers/run.ts';
import type { TaskInfo } from '../src/protocol/api.ts';

const MiB = 1024 * 1024;

t.test('rebalancing onto a new server, then draining one', async (t) => {
  t.setTimeout(240_000);
  const cluster = await startCluster(t, {
    chunkServers: 3,
    mdsArgs: [...FAST_MDS_ARGS, '--recovery-bytes-per-second', String(16 * MiB)],
    csArgs: [...FAST_CS_ARGS, '--capacity-bytes', '512M'],
    nbdArgs: FAST_NBD_ARGS,
  });
  await cluster.admin.createVolume({ name: 'fault', sizeBytes: 128 * MiB, chunkSizeBytes: 8 * MiB });
  const image = join(cluster.dir, 'image');
  const bytes = randomBytes(96 * MiB);
  await writeFile(image, bytes);
  await runOk('nbdcopy', [image, cluster.nbdUnixUri('fault')], { timeoutMs: 120_000 });
  const readBack = async (): Promise<boolean> => {
    const out = join(cluster.dir, 'out');
    await runOk('nbdcopy', [cluster.nbdUnixUri('fault'), out], { timeoutMs: 120_000 });
    return (await readFile(out)).subarray(0, 96 * MiB).equals(bytes);
  };
  const mapped = async (csId: number): Promise<number> =>
    (await cluster.admin.listChunkServers()).chunkServers.find((s) => s.id === csId)?.mappedReplicaCount ?? -1;

  await t.test('a new empty server gets its share', async (t) => {
    cluster.chunkServers.push(null);
    await cluster.startChunkServer(3);
    await cluster.waitOnline(4);
    const newcomer = await cluster.chunkServerId(3);
    t.equal(await mapped(newcomer), 0, 'the new server starts empty');
    // The MDS starts a rebalance task by itself (its threshold: 10 points of used space) and ends it
    // once the servers are within half of it: with 8 MiB replicas on 512 MiB servers, 1.5625 points each.
    let task: TaskInfo | undefined;
    for (let wait = 0; wait < 480 && task?.state !== 'done'; wait += 1) {
      await sleep(250);
      task = (await cluster.admin.listTasks()).tasks.find((candidate) => candidate.kind === 'rebalance');
    }
    t.match(task, { state: 'done', startedBy: 'mds', thresholdPercent: 5 }, 'the MDS rebalanced by itself, to within 5 points');
    const servers = (await cluster.admin.listChunkServers()).chunkServers;
    const points = servers.map((s) => (s.mappedReplicaCount * 8 * MiB) / s.capacityBytes * 100);
    t.ok(Math.max(...points) - Math.min(...points) <= 5, `the servers end within 5 points (${servers.map((s) => s.mappedReplicaCount).join(', ')} replicas)`);
    const share = await mapped(newcomer);
    t.ok(share >= 6, `the new server holds ${share} of 36 replicas after rebalancing`);
    t.equal(task?.progress.itemsDone, share, 'the task counted each replica moved to it');
    await waitSettled(cluster);
    await checkReplicasIdentical(t, cluster);
    t.ok(await readBack(), 'the volume reads back exactly');
  });

  await t.test('a drained server gives every replica away, then leaves', async (t) => {
    const leaving = await cluster.chunkServerId(0);
    const before = await mapped(leaving);
    t.ok(before > 0, `server ${leaving} holds ${before} replicas`);
    const drained = await cluster.admin.setChunkServerState(leaving, 'drain');
    t.equal(drained.adminState, 'draining');
    const seen = new Set<number>();
    let left = before;
    for (let wait = 0; wait < 480 && left > 0; wait += 1) {
      await sleep(250);
      left = await mapped(leaving);
      seen.add(left);
    }
    t.equal(left, 0, 'nothing is left on the drained server');
    t.ok([...seen].some((count) => count > 0 && count < before), `progress was gradual (${[...seen].sort((a, b) => b - a).join(', ')})`);
    await waitSettled(cluster);
    const { chunks } = await cluster.internal.chunkMap('fault', 0, 64);
    t.ok(chunks.every((chunk) => chunk.replicas.length === 3 && !chunk.replicas.some((r) => r.csId === leaving)),
      'every chunk has three replicas, none on the drained server');
    t.ok(await readBack(), 'the volume reads back exactly');
    const removed = await cluster.admin.setChunkServerState(leaving, 'remove');
    t.equal(removed.adminState, 'removed', 'the emptied server is removed');
  });
});

async function waitSettled(cluster: Awaited<ReturnType<typeof startCluster>>): Promise<void> {
  for (let wait = 0; wait < 240; wait += 1) {
    const stat = await cluster.admin.stat();
    if (stat.recovery.running === 0 && stat.recovery.pending === 0 && stat.chunks.byState.healthy === stat.chunks.total) return;
    await sleep(250);
  }
  throw new Error('recovery did not settle');
}
