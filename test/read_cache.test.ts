// The read cache (src/cache/read_cache.ts) on a real file, keyed as the NBD server keys it: a zipf(1.1) workload over
// twice the cache's size hits at least 80 % once warm; a full sequential scan in between costs at
// most 5 points; a block changed while it was being read is not taken in; a corrupted cache file
// is a miss, never wrong bytes; a reopened cache is empty; a full cache keeps within
// READ_CACHE_FIXED_BYTES + READ_CACHE_INDEX_BYTES_PER_SLOT a slot.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { CACHE_BLOCK_BYTES, READ_CACHE_FIXED_BYTES, READ_CACHE_INDEX_BYTES_PER_SLOT, ReadCache, type BlockKey } from '../src/cache/read_cache.ts';
import type { Logger } from '../src/util/log.ts';
import { seededRandom } from '../src/util/clock.ts';
import { damageCacheFile } from './helpers/read_cache.ts';
import { zipf } from './helpers/zipf.ts';
import { run } from './helpers/run.ts';

const log: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };
const CACHE_BLOCKS = 256;
const VOLUME_BLOCKS = 2 * CACHE_BLOCKS;

const address = (blockIndex: number, generation = 1): BlockKey => ({ group: 1, blockIndex, tag: `${generation}/${100 + (blockIndex >> 4)}/1` });
const NBD = { owner: 'NBD server' };
const contentOf = (blockIndex: number): Buffer => Buffer.alloc(CACHE_BLOCK_BYTES, blockIndex % 251);

/** What the NBD server does per 4 KiB read of a block: look up, else read the block and maybe keep it. */
async function read(cache: ReadCache, blockIndex: number): Promise<boolean> {
  const scan = cache.noteRead(1, blockIndex * CACHE_BLOCK_BYTES + 4096 * (blockIndex % 16), 4096).scan;
  const hit = await cache.lookup(address(blockIndex), scan);
  if (hit !== null) {
    if (!hit.equals(contentOf(blockIndex))) throw new Error(`block ${blockIndex}: wrong bytes from the cache`);
    return true;
  }
  if (cache.wants(address(blockIndex), scan)) await cache.admit(address(blockIndex), contentOf(blockIndex), cache.sequence);
  return false;
}

async function hitRatio(cache: ReadCache, next: () => number, reads: number): Promise<number> {
  let hits = 0;
  for (let i = 0; i < reads; i += 1) if (await read(cache, next())) hits += 1;
  return hits / reads;
}

t.test('a full cache takes at most READ_CACHE_FIXED_BYTES + READ_CACHE_INDEX_BYTES_PER_SLOT a slot, with the longest keys', async (t) => {
  // In a process of its own: what this one holds (tap, the other tests) would blur the figure.
  const slots = 4096;
  const budget = READ_CACHE_FIXED_BYTES + slots * READ_CACHE_INDEX_BYTES_PER_SLOT;
  const dir = await mkdtemp(join(tmpdir(), 'shoal-cache-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const script = `
    const { ReadCache, CACHE_BLOCK_BYTES } = await import(${JSON.stringify(new URL('../src/cache/read_cache.js', import.meta.url).href)});
    const log = { debug() {}, info() {}, warn() {}, error() {} };
    // The NBD server's longest keys: a large volume id, 13-digit chunk ids, 10-digit versions;
    // a chunk server's with each block in a chunk of its own.
    const keyOf = (shape, i) => shape === 'nbd'
      ? { group: 1048576, blockIndex: 16000000000 + i, tag: '4096/' + (1000000000000 + (i >> 6)) + '/4000000000' }
      : { group: 1000000000000 + i, blockIndex: 1023, tag: '4000000000' };
    const memory = () => { gc(); gc(); const { heapUsed, arrayBuffers } = process.memoryUsage(); return heapUsed + arrayBuffers; };
    const block = Buffer.alloc(CACHE_BLOCK_BYTES, 1);
    const before = memory();
    const cache = await ReadCache.open(process.argv[1], ${slots} * CACHE_BLOCK_BYTES, log, { owner: 'test' });
    for (let i = 0; i < ${slots}; i += 1) await cache.admit(keyOf(process.argv[2], i), block, cache.sequence);
    const used = memory() - before;
    if (cache.stats.admissions !== ${slots}) throw new Error('the cache is not full: ' + cache.stats.admissions);
    await cache.close();
    process.stdout.write(String(used));
  `;
  for (const [shape, what] of [['nbd', 'the NBD server\'s longest keys'], ['cs', 'a chunk server\'s keys, a block a chunk']] as const) {
    const result = await run(process.execPath, ['--expose-gc', '--input-type=module', '-e', script, dir, shape], { timeoutMs: 60_000 });
    t.equal(result.code, 0, `the measurement runs\n${result.stderr}`);
    const used = Number(result.stdout);
    t.ok(used > 0 && used <= budget, `${what}: ${used} bytes for ${slots} slots, ${(used / slots).toFixed(0)} a slot (budget ${budget})`);
  }
});

t.test('zipf(1.1) over twice the cache: 80 % hits when warm; a full scan costs at most 5 points', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'shoal-cache-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const cache = await ReadCache.open(dir, CACHE_BLOCKS * CACHE_BLOCK_BYTES, log, NBD);
  t.teardown(() => cache.close());
  const random = seededRandom(11);
  const next = zipf(VOLUME_BLOCKS, 1.1, random);
  await hitRatio(cache, next, 20_000); // warm-up
  const warm = await hitRatio(cache, next, 20_000);
  t.ok(warm >= 0.8, `hit ratio when warm: ${(warm * 100).toFixed(1)} %`);
  // A backup reads the whole volume in order, 1 MiB at a time.
  for (let offset = 0; offset < VOLUME_BLOCKS * CACHE_BLOCK_BYTES; offset += 1024 * 1024) {
    const scan = cache.noteRead(1, offset, 1024 * 1024).scan;
    t.ok(scan, 'a sequential stream is a scan') || t.end();
    for (let block = offset / CACHE_BLOCK_BYTES; block < (offset + 1024 * 1024) / CACHE_BLOCK_BYTES; block += 1) {
      if ((await cache.lookup(address(block), scan)) === null && cache.wants(address(block), scan)) t.fail('a scan takes nothing in');
    }
  }
  const afterScan = await hitRatio(cache, next, 5_000);
  t.ok(warm - afterScan <= 0.05, `right after the scan: ${(afterScan * 100).toFixed(1)} % (${((warm - afterScan) * 100).toFixed(1)} points lost)`);
  t.ok(cache.stats.admissions > 0 && cache.stats.evictions > 0, `admissions ${cache.stats.admissions}, evictions ${cache.stats.evictions}`);
});

t.test('never old or wrong bytes: a change in flight, another epoch, a corrupted file, a restart', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'shoal-cache-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const cache = await ReadCache.open(dir, 16 * CACHE_BLOCK_BYTES, log, NBD);
  t.equal(cache.openGroup(1, 5), 1, 'the first open at epoch 5: generation 1');
  const keep = async (blockIndex: number, sinceSeq = cache.sequence): Promise<void> => {
    await cache.lookup(address(blockIndex), false);
    await cache.lookup(address(blockIndex), false);
    t.ok(cache.wants(address(blockIndex), false), `block ${blockIndex} is worth keeping on its second read`);
    await cache.admit(address(blockIndex), contentOf(blockIndex), sinceSeq);
  };
  await keep(3);
  t.same(await cache.lookup(address(3), false), contentOf(3), 'kept, and read back');

  // Read from the chunk servers while a write of the same block went on: not kept.
  const before = cache.sequence;
  cache.invalidate(1, 5, 5);
  await keep(5, before);
  t.equal(await cache.lookup(address(5), false), null, 'a block read before an overlapping change is not kept');
  // A change of another block does not stop it.
  const before7 = cache.sequence;
  cache.invalidate(1, 9, 9);
  await keep(7, before7);
  t.ok((await cache.lookup(address(7), false)) !== null, 'a change elsewhere does not matter');
  // A write through this host drops the block.
  cache.invalidate(1, 3, 3);
  t.equal(await cache.lookup(address(3), false), null, 'a write drops what it touches');
  // Generations: a clean close at epoch 5 and this host's next open at 6 keep what is cached; a
  // gap (another host opened it for write in between), or a lease lost, does not.
  cache.closeGroup(1, 5, true);
  t.equal(cache.openGroup(1, 6), 1, 'reopened right after its own lease: the same generation');
  t.ok((await cache.lookup(address(7), false)) !== null, 'and its blocks');
  cache.closeGroup(1, 6, true);
  t.equal(cache.openGroup(1, 8), 2, 'another host held epoch 7: a new generation');
  t.equal(await cache.lookup(address(7), false), null, 'nothing of the old one is found');
  t.equal(await cache.lookup(address(7, 2), false), null);
  await keep(7);
  cache.closeGroup(1, 8, false);
  t.equal(cache.openGroup(1, 9), 3, 'after a lost lease: a new generation, even at the next epoch');

  // The cache file is damaged under it: a miss, counted, never the damaged bytes.
  await keep(11);
  await keep(7);
  await damageCacheFile(dir, Array.from({ length: 16 }, (_, slot) => ({ offsetBytes: slot * CACHE_BLOCK_BYTES + 8192, data: Buffer.alloc(4096, 0xee) })));
  t.equal(await cache.lookup(address(11), false), null, 'a corrupted block is a miss');
  t.equal(await cache.lookup(address(7), false), null);
  t.equal(cache.stats.corrupt, 2, 'both counted');
  t.equal(await cache.lookup(address(11), false), null, 'and dropped');
  await cache.close();

  // A restart: empty, whatever the file held.
  const reopened = await ReadCache.open(dir, 16 * CACHE_BLOCK_BYTES, log, NBD);
  // One process per directory: a second one is refused while the first runs.
  await t.rejects(ReadCache.open(dir, 16 * CACHE_BLOCK_BYTES, log, NBD), { code: 'ERR_CONFIG', message: /in use by process \d+: give each NBD server its own --cache-dir/ });
  t.equal(reopened.usedBytes, 0);
  t.equal(await reopened.lookup(address(7), false), null, 'nothing survives a restart');
  await reopened.close();
});
