// The NBD server's read cache on a real cluster (--cache-dir, --cache-size 16M): fio's zipf(1.1)
// 4 KiB random reads over twice the cache's size hit at least 80 % once warm, across fio's
// reconnections (this host's next lease follows its last); a full sequential read of the volume in
// between costs at most 5 points; the cache file damaged under the running server, another host
// writing while this one had the volume closed, another host taking the lease by force (its
// writes held until this server's cache stops answering) and writing, and a restart of the server
// never give old or wrong bytes (every byte read back checked against its pattern).

import { join } from 'node:path';
import t, { type Test } from 'tap';
import { Volume } from '../src/client/volume.ts';
import { createLogger } from '../src/util/log.ts';
import { startCluster, type LocalCluster } from './helpers/cluster.ts';
import { eventually } from './helpers/eventually.ts';
import { damageCacheFile, readCacheArgs, readCacheCounters, verifyBlocks, zipfHitRatio, zipfReadArgs } from './helpers/read_cache.ts';
import { run, runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
const CACHE_BYTES = 16 * MiB;
const HOT_BYTES = 2 * CACHE_BYTES;

const cacheCounters = (cluster: LocalCluster) => readCacheCounters(Number(cluster.nbd?.ready['metricsPort']));

const verify = (cluster: LocalCluster, pattern: number): Promise<void> => verifyBlocks(cluster.nbdUnixUri('vm'), HOT_BYTES, pattern);
const zipf = (t: Test, cluster: LocalCluster, seconds: number): Promise<number> =>
  zipfHitRatio(t, cluster.nbdUnixUri('vm'), HOT_BYTES, seconds, () => cacheCounters(cluster));

t.test('the read cache: zipf hits, a scan, a damaged file, a forced takeover and a restart', async (t) => {
  t.setTimeout(240_000);
  // Leases renewed every second: the server that loses one to a forced takeover knows within two.
  const cluster = await startCluster(t, { chunkServers: 3, mdsArgs: ['--lease-timeout-ms', '4000'] });
  const cacheDir = join(cluster.dir, 'nbd-cache');
  const cacheArgs = readCacheArgs(cacheDir, CACHE_BYTES);
  await cluster.nbd?.stop('SIGTERM');
  await cluster.startNbd(cacheArgs);
  await cluster.admin.createVolume({ name: 'vm', sizeBytes: 64 * MiB, chunkSizeBytes: 4 * MiB });
  const image = cluster.nbdUnixUri('vm');
  await runOk('qemu-io', ['-f', 'raw', '-c', `write -P 0xa1 0 ${HOT_BYTES}`, image], { timeoutMs: 60_000 });

  await zipf(t, cluster, 8); // warm-up
  const warm = await zipf(t, cluster, 8);
  t.ok(warm >= 0.8, `zipf(1.1) over twice the cache, warm: ${(warm * 100).toFixed(1)} % hits`);
  const reported = await eventually('the stat to show the server\'s read cache', 10_000, async () => (await cluster.admin.stat()).readCaches[0] ?? null);
  t.match(reported, { hypervisor: 'local', capacityBytes: CACHE_BYTES, corrupt: 0 }, 'the stat shows the cache');
  t.ok(reported.usedBytes > 0 && reported.admissions > 0, `holding ${reported.usedBytes} bytes, ${reported.admissions} blocks taken in`);

  // A backup reads the whole volume in order (and every byte of the hot range is checked).
  await runOk('qemu-io', ['-f', 'raw', '-c', `read -P 0xa1 0 ${HOT_BYTES}`, '-c', `read ${HOT_BYTES} ${64 * MiB - HOT_BYTES}`, image], { timeoutMs: 60_000 });
  const afterScan = await zipf(t, cluster, 8);
  t.ok(warm - afterScan <= 0.05, `after a full scan: ${(afterScan * 100).toFixed(1)} % (${((warm - afterScan) * 100).toFixed(1)} points from warm)`);

  // The cache file damaged under the running server: misses, never the damaged bytes.
  await damageCacheFile(cacheDir, Array.from({ length: CACHE_BYTES / (256 * 1024) }, (_, i) => ({ offsetBytes: i * 256 * 1024 + 4096, data: Buffer.alloc(4096, 0xee) })));
  await verify(cluster, 0xa1);
  const damaged = await cacheCounters(cluster);
  t.ok(damaged.corrupt > 0, `${damaged.corrupt} damaged blocks found by their checksums, read from the chunk servers`);

  // While this server has the volume closed (its lease released), another host opens it, writes
  // everything anew and closes: the next open here is not the one right after this server's own.
  await zipf(t, cluster, 3); // the cache full of the old bytes again
  const pool = cluster.pool();
  t.teardown(() => pool.closeAll());
  const clientLog = createLogger('test-client');
  const between = await Volume.open({ mds: cluster.internal, pool, name: 'vm', readOnly: false, holder: 'other-host', log: clientLog });
  await between.write(0, Buffer.alloc(HOT_BYTES, 0xc3));
  await between.close();
  await verify(cluster, 0xc3);
  t.pass('after another host wrote while this one had the volume closed, every byte read here is the new one');

  // Another host takes the lease by force while the server is reading, and writes everything anew.
  const reading = run('fio', zipfReadArgs(image, HOT_BYTES, 8), { timeoutMs: 90_000 });
  await new Promise((resolve) => setTimeout(resolve, 2_000));
  const other = await Volume.open({ mds: cluster.internal, pool, name: 'vm', readOnly: false, force: true, holder: 'other-host', log: clientLog });
  // The server it took the lease from may answer its guest from its cache for 1.5 renewal
  // intervals (1.5 s here) after its lease was last confirmed: the new writer waits that out.
  const writeStartMs = performance.now();
  await other.write(0, Buffer.alloc(HOT_BYTES, 0xb2));
  const heldMs = performance.now() - writeStartMs;
  t.ok(heldMs >= 1_200, `the new writer's first write waited ${heldMs.toFixed(0)} ms for the old writer's cache to stop answering`);
  await other.close();
  await reading; // its reads after the takeover may fail (its lease is gone): only what follows matters
  await verify(cluster, 0xb2);
  t.pass('after the other host\'s writes, every byte read through the cached server is the new one');
  await zipf(t, cluster, 3);
  await verify(cluster, 0xb2);

  // A restart empties the cache.
  await cluster.nbd?.stop('SIGTERM');
  await cluster.startNbd(cacheArgs);
  t.equal((await cacheCounters(cluster)).used, 0, 'the restarted server\'s cache is empty');
  await verify(cluster, 0xb2);
});
