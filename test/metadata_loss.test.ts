// Losing or rolling back the MDS's database must not destroy data. The MDS's folder is replaced
// with a copy taken before more chunks and a volume were written, and then with an empty one:
// no replica is deleted, what the map lacks shows up in the quarantine as newer than the map, and
// it is taken back into the map (volumes by their names, chunks with their newest copies), so
// every byte ever acknowledged reads back and new writes work (the volumes' epochs catch up with
// the fences the chunk servers hold).

import t, { type Test } from 'tap';
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { LocalCluster } from '../src/local/cluster.ts';
import { startCluster } from './helpers/cluster.ts';
import { sleep } from './helpers/faults.ts';
import { runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;

async function replicaFiles(cluster: LocalCluster): Promise<number> {
  let count = 0;
  for (const hashes of (await cluster.replicaHashes()).values()) count += hashes.length;
  return count;
}

/** Polls until the map holds `volumes` and the quarantine holds nothing newer; returns what stat showed meanwhile. */
async function waitTakenBack(cluster: LocalCluster, volumes: readonly string[]): Promise<{ newerSeen: number }> {
  let newerSeen = 0;
  for (let wait = 0; wait < 120; wait += 1) {
    try {
      const stat = await cluster.admin.stat();
      newerSeen = Math.max(newerSeen, stat.quarantine.newerThanMap);
      const names = (await cluster.admin.listVolumes()).volumes.map((volume) => volume.name);
      if (volumes.every((name) => names.includes(name)) && stat.quarantine.newerThanMap === 0 && newerSeen > 0) return { newerSeen };
    } catch {
      // the MDS is starting
    }
    await sleep(250);
  }
  throw new Error(`the map did not take back ${volumes.join(', ')} within 30 s`);
}

async function readsBack(t: Test, cluster: LocalCluster, volume: string, expected: Buffer, what: string): Promise<void> {
  const path = join(cluster.dir, `read-${volume}`);
  await runOk('nbdcopy', [cluster.nbdUnixUri(volume), path], { timeoutMs: 60_000 });
  t.ok((await readFile(path)).equals(expected), `${what}: volume ${volume} reads back every byte`);
}

async function write(cluster: LocalCluster, volume: string, pattern: number, offset: number, bytes: number, image: Buffer): Promise<void> {
  await runOk('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offset} ${bytes}`, cluster.nbdUnixUri(volume)]);
  image.fill(pattern, offset, offset + bytes);
}

t.test('a restored old database and a lost one: no replica deleted, every volume back', async (t) => {
  t.setTimeout(300_000);
  const cluster = await startCluster(t, { chunkServers: 3, mdsArgs: ['--heartbeat-interval-ms', '250', '--heartbeat-timeout-ms', '2000'] });
  const mdsDir = join(cluster.dir, 'mds');
  const a = Buffer.alloc(64 * MiB);
  const b = Buffer.alloc(16 * MiB);
  await cluster.admin.createVolume({ name: 'a', sizeBytes: a.length, chunkSizeBytes: 8 * MiB });
  await write(cluster, 'a', 0x11, 0, 16 * MiB, a);

  // The backup: a copy of the MDS's folder, taken while it is stopped.
  await cluster.mds.stop('SIGTERM');
  await cp(mdsDir, join(cluster.dir, 'mds-old'), { recursive: true });
  await cluster.restartMds();
  await cluster.waitOnline(3);

  // After the backup: two more chunks of "a", a new volume "b", a few more write opens (epochs).
  await write(cluster, 'a', 0x22, 32 * MiB, 16 * MiB, a);
  await write(cluster, 'a', 0x23, 4 * MiB, 4096, a);
  await cluster.admin.createVolume({ name: 'b', sizeBytes: b.length, chunkSizeBytes: 8 * MiB });
  await write(cluster, 'b', 0x33, 0, 12 * MiB, b);
  const filesBefore = await replicaFiles(cluster);
  t.equal(filesBefore, 6 * 3, 'six chunks (four of "a", two of "b"), three replicas each, on the disks');

  await t.test('the database replaced with the older copy', async (t) => {
    await cluster.nbd?.stop('SIGTERM');
    await cluster.mds.stop('SIGTERM');
    await rm(mdsDir, { recursive: true, force: true });
    await cp(join(cluster.dir, 'mds-old'), mdsDir, { recursive: true });
    await cluster.restartMds();
    const { newerSeen } = await waitTakenBack(cluster, ['a', 'b']);
    t.ok(newerSeen >= 3, `stat showed the replicas the old map lacks in quarantine, newer than the map (${newerSeen})`);
    t.equal(await replicaFiles(cluster), filesBefore, 'no replica was deleted');
    await cluster.startNbd();
    await readsBack(t, cluster, 'a', a, 'after the restore');
    await readsBack(t, cluster, 'b', b, 'after the restore');
    await write(cluster, 'a', 0x44, 60 * MiB, 64 * 1024, a);
    await readsBack(t, cluster, 'a', a, 'a new write after the restore');
  });

  await t.test('the database lost: an empty MDS with the cluster id', async (t) => {
    const clusterId = (await readFile(join(mdsDir, 'cluster-id'), 'utf8')).trim();
    await cluster.nbd?.stop('SIGTERM');
    await cluster.mds.stop('SIGTERM');
    await rm(mdsDir, { recursive: true, force: true });
    await mkdir(mdsDir, { recursive: true });
    await writeFile(join(mdsDir, 'cluster-id'), `${clusterId}\n`);
    const filesBefore = await replicaFiles(cluster);
    await cluster.restartMds();
    await cluster.waitOnline(3, 30_000);
    const { newerSeen } = await waitTakenBack(cluster, ['a', 'b']);
    t.ok(newerSeen >= 5, `every replica went to quarantine as newer than the (empty) map first (${newerSeen})`);
    t.equal(await replicaFiles(cluster), filesBefore, 'no replica was deleted');
    const volumes = (await cluster.admin.listVolumes()).volumes;
    t.match(volumes.find((v) => v.name === 'a'), { sizeBytes: 64 * MiB, chunkSizeBytes: 8 * MiB, replicas: { normal: 3, min: 2 } },
      'volume "a" came back with its name, size and replica counts');
    // Hypervisor credentials lived in the lost database: the admin issues the NBD server a new one.
    await cluster.reissueHypervisorCredential();
    await cluster.startNbd();
    await readsBack(t, cluster, 'a', a, 'after the rebuild');
    await readsBack(t, cluster, 'b', b, 'after the rebuild');
    await write(cluster, 'b', 0x55, 8 * MiB, 4 * MiB, b);
    await readsBack(t, cluster, 'b', b, 'a new write after the rebuild');
  });
});
