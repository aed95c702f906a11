// Restarting must not re-replicate what was never lost. A clean restart of everything, an MDS
// restart alone and a kill -9 of everything copy nothing between chunk servers and never take a
// replica out of a chunk's set; a chunk server away while writes go on gets back only what was
// written meanwhile, not whole chunks. Bytes copied are counted where they land (each chunk
// server's shoal_cs_replica_fill_bytes_total) and where they are decided (the MDS's stat).

import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { LocalCluster } from '../src/local/cluster.ts';
import { startCluster } from './helpers/cluster.ts';
import { sleep } from './helpers/faults.ts';
import { metricValue } from './helpers/metrics.ts';
import { runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
const VOLUME = 'restarts';
const CHUNK_BYTES = 16 * MiB;
// Three chunks, each on all three servers: what a restart must not copy is per chunk, so more
// chunks proved nothing more (it was 96 MiB: twice the bytes written and read back each time).
const VOLUME_BYTES = 48 * MiB;

/** Polls the chunk map and remembers the fewest members any chunk had (the MDS's own record). */
class MembershipWatcher {
  fewestMembers = Number.POSITIVE_INFINITY;
  private stopped = false;
  private readonly loop: Promise<void>;

  constructor(cluster: LocalCluster) {
    this.loop = (async () => {
      while (!this.stopped) {
        try {
          const { chunks } = await cluster.internal.chunkMap(VOLUME, 0, 1024);
          for (const chunk of chunks) this.fewestMembers = Math.min(this.fewestMembers, chunk.replicas.length);
        } catch {
          // the MDS is restarting
        }
        await sleep(100);
      }
    })();
  }

  async stop(): Promise<number> {
    this.stopped = true;
    await this.loop;
    return this.fewestMembers;
  }
}

/** Bytes copied into replicas so far, summed over the running chunk servers. */
async function filledBytes(cluster: LocalCluster): Promise<number> {
  let total = 0;
  for (const daemon of cluster.chunkServers) {
    if (daemon === null || !daemon.running) continue;
    total += await metricValue(Number(daemon.ready['metricsPort']), 'shoal_cs_replica_fill_bytes_total');
  }
  return total;
}

/** Waits until every server is online and recovery has had nothing to do for two seconds. */
async function waitQuiet(cluster: LocalCluster, atLeastMs: number): Promise<void> {
  const startedMs = Date.now();
  let quietSinceMs: number | null = null;
  while (Date.now() - startedMs < 90_000) {
    const stat = await cluster.admin.stat();
    const quiet = stat.chunkServers.offline === 0 && stat.recovery.running === 0 && stat.recovery.pending === 0;
    quietSinceMs = quiet ? (quietSinceMs ?? Date.now()) : null;
    if (quietSinceMs !== null && Date.now() - quietSinceMs >= 2_000 && Date.now() - startedMs >= atLeastMs) return;
    await sleep(250);
  }
  throw new Error('recovery did not go quiet within 90 s');
}

async function copiedSinceStart(cluster: LocalCluster): Promise<number> {
  const stat = await cluster.admin.stat();
  return Math.max(await filledBytes(cluster), stat.recovery.copiedBytes + stat.recovery.settledBytes);
}

async function checkImage(t: Test, cluster: LocalCluster, expected: Buffer, what: string): Promise<void> {
  const readBack = join(cluster.dir, 'read-back');
  await runOk('nbdcopy', [cluster.nbdUnixUri(VOLUME), readBack], { timeoutMs: 60_000 });
  t.ok((await readFile(readBack)).equals(expected), `${what}: every byte reads back`);
}

t.test('restarts copy only what changed while a server was away', async (t) => {
  t.setTimeout(300_000);
  const cluster = await startCluster(t, {
    chunkServers: 3,
    mdsArgs: ['--heartbeat-interval-ms', '250', '--heartbeat-timeout-ms', '2000'],
  });
  await cluster.admin.createVolume({ name: VOLUME, sizeBytes: VOLUME_BYTES, chunkSizeBytes: CHUNK_BYTES });
  const image = randomBytes(VOLUME_BYTES);
  image.fill(0, 20 * MiB, 26 * MiB);
  await writeFile(join(cluster.dir, 'image'), image);
  await runOk('nbdcopy', [join(cluster.dir, 'image'), cluster.nbdUnixUri(VOLUME)], { timeoutMs: 60_000 });

  await t.test('a clean restart of everything', async (t) => {
    const watcher = new MembershipWatcher(cluster);
    await cluster.stopAll('SIGTERM');
    await cluster.startAll();
    await waitQuiet(cluster, 6_000);
    const copied = await copiedSinceStart(cluster);
    t.equal(copied, 0, `no byte copied between chunk servers (${copied})`);
    const fewest = await watcher.stop();
    t.equal(fewest, 3, `no chunk ever had fewer than its three members (fewest seen: ${fewest})`);
    await checkImage(t, cluster, image, 'after a clean restart');
  });

  await t.test('the MDS alone restarts', async (t) => {
    const before = await filledBytes(cluster);
    const watcher = new MembershipWatcher(cluster);
    await cluster.restartMds();
    await waitQuiet(cluster, 6_000);
    const copied = (await filledBytes(cluster)) - before;
    t.equal(copied, 0, `no byte copied between chunk servers (${copied})`);
    const fewest = await watcher.stop();
    t.equal(fewest, 3, `no chunk ever had fewer than its three members (fewest seen: ${fewest})`);
    await checkImage(t, cluster, image, 'after an MDS restart');
  });

  await t.test('kill -9 of everything', async (t) => {
    const watcher = new MembershipWatcher(cluster);
    await cluster.stopAll('SIGKILL');
    await cluster.startAll();
    await waitQuiet(cluster, 6_000);
    const copied = await copiedSinceStart(cluster);
    t.equal(copied, 0, `no byte copied: nothing was in flight, so the members compare equal (${copied})`);
    const fewest = await watcher.stop();
    t.equal(fewest, 3, `no chunk ever had fewer than its three members (fewest seen: ${fewest})`);
    await checkImage(t, cluster, image, 'after kill -9 and restart');
  });

  await t.test('a chunk server away while writes go on', async (t) => {
    const away = 2;
    await cluster.chunkServers[away]?.stop('SIGTERM');
    // Writes land on the three chunks while it is away: 3 x 256 KiB.
    const writes = [{ at: 1 * MiB, bytes: 256 * 1024 }, { at: 17 * MiB, bytes: 256 * 1024 }, { at: 33 * MiB + 4096, bytes: 256 * 1024 }];
    for (const [index, write] of writes.entries()) {
      const pattern = 0x30 + index;
      await runOk('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${write.at} ${write.bytes}`, cluster.nbdUnixUri(VOLUME)]);
      image.fill(pattern, write.at, write.at + write.bytes);
    }
    const writtenBytes = writes.reduce((sum, write) => sum + write.bytes, 0);
    await sleep(5_000);
    const before = await filledBytes(cluster);
    await cluster.startChunkServer(away);
    await cluster.waitOnline(3);
    // Back to three members each, and quiet.
    const deadline = Date.now() + 90_000;
    for (;;) {
      const { chunks } = await cluster.internal.chunkMap(VOLUME, 0, 1024);
      if (chunks.every((chunk) => chunk.replicas.length === 3)) break;
      if (Date.now() > deadline) throw new Error('chunks did not get their third member back');
      await sleep(250);
    }
    await waitQuiet(cluster, 0);
    const copied = (await filledBytes(cluster)) - before;
    t.ok(copied > 0, `the returning server got what it missed (${copied} bytes)`);
    t.ok(copied <= writtenBytes, `only what was written meanwhile: ${copied} bytes copied for ${writtenBytes} written (a whole chunk is ${CHUNK_BYTES})`);
    await checkImage(t, cluster, image, 'after the server caught up');
  });
});
