// A volume whose chunk map is full opens through the NBD server and reads and writes at its first,
// middle and last chunk, while the MDS keeps answering: the open reply carries no chunk list, and
// the client loads the map page by page as it needs it. Two sizes: 512 GiB (8,192 chunks of 64 MiB,
// eight pages) always runs; 64 TiB (1,048,576 chunks) runs with SHOAL_TEST_HUGE_MAP=1. The MDS's
// background work reads only what can need something through indexes kept with the records
// (map_scans.ts), so it no longer stalls at that size; the huge case stays opt-in only because
// building its map takes 40 to 60 s on a 2-core machine (three million index entries with it).
// The map is built straight into the stopped MDS's database (helpers/big_map.ts); the three
// chunks the test touches are written through the normal path first, so they exist on the chunk
// servers, and every other record names the same real servers.

import t, { type Test } from 'tap';
import { join } from 'node:path';
import { CHUNK_MAP_PAGE_CHUNKS } from '../src/protocol/api.ts';
import { startCluster } from './helpers/cluster.ts';
import { fillChunkMap } from './helpers/big_map.ts';
import { run, runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
const TiB = 1024 * 1024 * MiB;
const CHUNK_BYTES = 64 * MiB;
/** The MDS must answer within this while the volume opens and is read (it was seconds before). */
const HEALTH_LATENCY_MS_MAX = 1_000;

/** Asks /v1/health over and over and keeps the slowest answer, until stopped. */
function probeHealth(url: string): { stop: () => Promise<{ worstMs: number; count: number }> } {
  let stopped = false;
  let worstMs = 0;
  let count = 0;
  const loop = (async () => {
    while (!stopped) {
      const startedMs = performance.now();
      const response = await fetch(`${url}/v1/health`, { signal: AbortSignal.timeout(60_000) });
      await response.text();
      worstMs = Math.max(worstMs, performance.now() - startedMs);
      count += 1;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  })();
  return {
    stop: async () => {
      stopped = true;
      await loop;
      return { worstMs, count };
    },
  };
}

/** Waits until the MDS answers /v1/health within 100 ms five times in a row (30 s at most). */
async function settle(url: string): Promise<void> {
  const deadlineMs = Date.now() + 30_000;
  for (let quick = 0; quick < 5 && Date.now() < deadlineMs;) {
    const startedMs = performance.now();
    await (await fetch(`${url}/v1/health`, { signal: AbortSignal.timeout(60_000) })).text();
    quick = performance.now() - startedMs < 100 ? quick + 1 : 0;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function fullMapOpens(t: Test, volumeBytes: number): Promise<void> {
  const chunkCount = volumeBytes / CHUNK_BYTES;
  const MIDDLE_BYTES = volumeBytes / 2;
  const LAST_BYTES = volumeBytes - MiB;
  const cluster = await startCluster(t);
  await cluster.admin.createVolume({ name: 'big', sizeBytes: volumeBytes, chunkSizeBytes: CHUNK_BYTES });
  const uri = cluster.nbdUnixUri('big');
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 1M', '-c', `write -P 0x22 ${MIDDLE_BYTES} 1M`,
    '-c', `write -P 0x33 ${LAST_BYTES} 1M`, uri]);
  const written = (await cluster.internal.chunkMap('big', 0, 1)).chunks[0];
  t.ok(written !== undefined, 'the first chunk is allocated');
  const replicas = written?.replicas.map((replica) => replica.csId) ?? [];

  await cluster.mds.stop('SIGTERM');
  const fillStartedMs = Date.now();
  const filled = await fillChunkMap(join(cluster.dir, 'mds'), 'big', replicas);
  t.equal(filled.chunkCount, chunkCount, `the volume has ${chunkCount} chunk indexes`);
  t.equal(filled.added, chunkCount - 3, 'every index but the three written ones got a record');
  t.comment(`map filled in ${Date.now() - fillStartedMs} ms`);
  await cluster.restartMds();
  const info = await cluster.admin.getVolume('big');
  t.equal(info.chunkCount, chunkCount, 'the MDS counts every chunk');

  // The open reply carries no map, and one page answers however much is asked for.
  const opened = await cluster.internal.openVolume('big', { mode: 'read', holder: 'test' });
  t.notOk('chunks' in opened, 'the open reply carries no chunk list');
  const page = await cluster.internal.chunkMap('big', 0, 65_536);
  t.equal(page.endIndex, CHUNK_MAP_PAGE_CHUNKS, 'a reply covers one page of indexes');
  t.equal(page.chunks.length, CHUNK_MAP_PAGE_CHUNKS, 'and lists every chunk of it');

  // A restarted MDS first compares every chunk server's replicas with the map (a walk of the
  // whole map each): measured apart, that is not what this test is about.
  await settle(cluster.mdsUrl);
  const probe = probeHealth(cluster.mdsUrl);
  const openStartedMs = Date.now();
  const middle = MIDDLE_BYTES + 4 * MiB;
  const commands = [
    'read -P 0x11 0 1M',
    `read -P 0x22 ${MIDDLE_BYTES} 1M`,
    `read -P 0x33 ${LAST_BYTES} 1M`,
    // Unwritten blocks of an allocated chunk read as zeroes.
    `read -P 0x00 ${middle} 64k`,
    `write -P 0x44 ${middle} 1M`,
    `write -P 0x55 ${LAST_BYTES - 3 * MiB} 1M`,
    `read -P 0x44 ${middle} 1M`,
    `read -P 0x55 ${LAST_BYTES - 3 * MiB} 1M`,
    `read -P 0x33 ${LAST_BYTES} 1M`,
  ];
  const result = await run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri], { timeoutMs: 60_000 });
  const openMs = Date.now() - openStartedMs;
  const { worstMs, count } = await probe.stop();
  t.comment(`open, 7 reads and 2 writes took ${openMs} ms; slowest of ${count} health answers meanwhile: ${worstMs.toFixed(1)} ms`);
  t.equal(result.code, 0, `qemu-io succeeds: ${result.stderr.slice(0, 500)}`);
  t.notMatch(result.stdout, /Pattern verification failed/, 'every pattern reads back');
  t.equal((result.stdout.match(/^read /gm) ?? []).length, 7, 'every read ran');
  t.equal((result.stdout.match(/^wrote /gm) ?? []).length, 2, 'every write ran');
  t.ok(worstMs < HEALTH_LATENCY_MS_MAX, `the MDS answered within ${HEALTH_LATENCY_MS_MAX} ms throughout (worst ${worstMs.toFixed(1)} ms)`);

  // A second connection sees the writes: they reached the chunk servers, not a cache.
  const again = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', `read -P 0x44 ${middle} 1M`, '-c', `read -P 0x22 ${MIDDLE_BYTES} 1M`, uri]);
  t.notMatch(again.stdout, /Pattern verification failed/, 'the writes read back on a new connection');
}

t.test('a 512 GiB volume with a full chunk map opens and is read and written', async (t) => {
  t.setTimeout(90_000);
  await fullMapOpens(t, TiB / 2);
});

t.test('a 64 TiB volume with a full chunk map opens and is read and written', {
  skip: process.env['SHOAL_TEST_HUGE_MAP'] === '1' ? false : 'set SHOAL_TEST_HUGE_MAP=1 (about two minutes, most of it building the map; see the header)',
}, async (t) => {
  t.setTimeout(240_000);
  await fullMapOpens(t, 64 * TiB);
});
