// Chunk servers' read caches on a real cluster: three chunk servers of tier 0 (plain directories
// standing in for HDDs), each with --cache-dir and --cache-size 16M, and an NBD server without a
// cache of its own, so that every guest read reaches them. fio's zipf(1.1) 4 KiB random reads over
// twice a cache's size (each server sees them all: reads rotate over a chunk's three members) hit
// at least 80 % once warm, by the servers' metrics; the stat and `shoal stat` show each cache; a
// write through the NBD server then every block read back gives the new bytes (and the cache is
// used again after it); the caches' files damaged under the running servers are misses counted
// corrupt, never wrong bytes; a restarted server's cache is empty. Every byte read back is
// checked against its pattern.

import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { cliRunner } from './helpers/cli.ts';
import { startCluster, type LocalCluster } from './helpers/cluster.ts';
import { eventually } from './helpers/eventually.ts';
import { metricValue } from './helpers/metrics.ts';
import { verifyBlocks, zipfHitRatio } from './helpers/read_cache.ts';
import { runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
const CACHE_BYTES = 16 * MiB;
const HOT_BYTES = 2 * CACHE_BYTES;
const SERVERS = 3;

interface Counters {
  hits: number;
  misses: number;
  corrupt: number;
  invalidations: number;
  used: number;
}

/** The chunk servers' cache counters, summed. */
async function cacheCounters(cluster: LocalCluster): Promise<Counters> {
  const sum: Counters = { hits: 0, misses: 0, corrupt: 0, invalidations: 0, used: 0 };
  for (const daemon of cluster.chunkServers) {
    const port = Number(daemon?.ready['metricsPort']);
    sum.hits += await metricValue(port, 'shoal_cs_read_cache_hits_total');
    sum.misses += await metricValue(port, 'shoal_cs_read_cache_misses_total');
    sum.corrupt += await metricValue(port, 'shoal_cs_read_cache_corrupt_blocks_total');
    sum.invalidations += await metricValue(port, 'shoal_cs_read_cache_invalidations_total');
    sum.used += await metricValue(port, 'shoal_cs_read_cache_bytes', '{kind="used"}');
  }
  return sum;
}

const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const verify = (cluster: LocalCluster, pattern: number): Promise<void> => verifyBlocks(cluster.nbdUnixUri('vm'), HOT_BYTES, pattern);
const zipf = (t: Test, cluster: LocalCluster, seconds: number): Promise<number> =>
  zipfHitRatio(t, cluster.nbdUnixUri('vm'), HOT_BYTES, seconds, () => cacheCounters(cluster));

t.test('chunk servers\' read caches: zipf hits, the stat, a write, a damaged file, a restart', async (t) => {
  t.setTimeout(300_000);
  const root = await mkdtemp(join(tmpdir(), 'shoal-cs-cache-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const cacheDir = (index: number): string => join(root, 'cache', `cs${index}`);
  const cluster = await startCluster(t, {
    parentDir: root,
    chunkServers: SERVERS,
    mdsArgs: ['--heartbeat-interval-ms', '500'],
    csArgsFor: (index) => ['--tier', '0', '--cache-dir', cacheDir(index), '--cache-size', '16M'],
  });
  for (const [index, daemon] of cluster.chunkServers.entries()) {
    t.match(daemon?.log ?? '', new RegExp(`chunk server ready.*${escape(JSON.stringify({ readCache: { dir: cacheDir(index), capacityBytes: CACHE_BYTES } }).slice(1, -1))}`), `cs${index}'s ready line names its cache`);
  }
  await cluster.admin.createVolume({ name: 'vm', sizeBytes: 64 * MiB, chunkSizeBytes: 4 * MiB, tier: 0 });
  await runOk('qemu-io', ['-f', 'raw', '-c', `write -P 0xa1 0 ${HOT_BYTES}`, cluster.nbdUnixUri('vm')], { timeoutMs: 60_000 });

  // ---- zipf(1.1) over twice a cache's size
  await zipf(t, cluster, 8); // warm-up
  const warm = await zipf(t, cluster, 8);
  t.ok(warm >= 0.8, `zipf(1.1) over twice each cache, warm: ${(warm * 100).toFixed(1)} % hits`);
  const reported = await eventually('the stat to show the chunk servers\' caches', 10_000, async () => {
    const caches = (await cluster.admin.stat()).chunkServerReadCaches;
    return caches.length === SERVERS ? caches : null;
  });
  for (const cache of reported) {
    t.match(cache, { capacityBytes: CACHE_BYTES, corrupt: 0 }, `cs ${cache.csId}: the stat shows its cache`);
    t.ok(cache.usedBytes > 0 && cache.admissions > 0 && cache.hits > 0, `cs ${cache.csId}: ${cache.usedBytes} bytes held, ${cache.admissions} taken in, ${cache.hits} hits`);
  }
  const cli = await cliRunner(t);
  const stat = await cli.shoal(['stat'], { SHOAL_MDS: cluster.mdsUrl, SHOAL_TOKEN: cluster.adminToken });
  t.equal(stat.code, 0, `shoal stat exits 0\n${stat.stderr}`);
  for (const cache of reported) {
    const line = new RegExp(`read cache cs ${cache.csId}: +[\\d.]+ MiB of 16\\.0 MiB, ([\\d.]+ % hits lately|no reads lately);`);
    if (!t.match(stat.stdout, line, `shoal stat: a line for cs ${cache.csId}`)) t.comment(stat.stdout);
  }

  // ---- a write through the NBD server, then every block read back: the new bytes
  const beforeWrite = await cacheCounters(cluster);
  await runOk('qemu-io', ['-f', 'raw', '-c', `write -P 0xb2 0 ${HOT_BYTES}`, cluster.nbdUnixUri('vm')], { timeoutMs: 60_000 });
  t.ok((await cacheCounters(cluster)).invalidations > beforeWrite.invalidations, 'the write dropped cached blocks');
  await verify(cluster, 0xb2);
  t.pass('after the write, every byte read is the new one');
  const again = await zipf(t, cluster, 3);
  t.ok(again > 0.3, `the caches fill again with the new bytes: ${(again * 100).toFixed(1)} % hits`);
  await verify(cluster, 0xb2);
  t.pass('and read from the caches, every byte is still the new one');

  // ---- the caches' files damaged under the running servers: misses, never the damaged bytes
  for (let index = 0; index < SERVERS; index += 1) {
    const file = await open(join(cacheDir(index), 'read-cache.bin'), 'r+');
    for (let offset = 0; offset < CACHE_BYTES; offset += 128 * 1024) await file.write(Buffer.alloc(4096, 0xee), 0, 4096, offset + 4096);
    await file.close();
  }
  await verify(cluster, 0xb2);
  await verify(cluster, 0xb2);
  const damaged = await cacheCounters(cluster);
  t.ok(damaged.corrupt > 0, `${damaged.corrupt} damaged blocks found by their checksums, read from the disks`);
  await eventually('the stat to count the damaged blocks', 10_000, async () => {
    const caches = (await cluster.admin.stat()).chunkServerReadCaches;
    return caches.reduce((sum, cache) => sum + cache.corrupt, 0) === damaged.corrupt ? true : null;
  });

  // ---- a restarted server starts with an empty cache
  await cluster.chunkServers[0]?.stop('SIGTERM');
  const restarted = await cluster.startChunkServer(0);
  t.equal(await metricValue(Number(restarted.ready['metricsPort']), 'shoal_cs_read_cache_bytes', '{kind="used"}'), 0, 'the restarted server\'s cache is empty');
  await cluster.waitOnline(SERVERS);
  await verify(cluster, 0xb2);
  t.pass('after the restart, every byte read is still the new one');
});
