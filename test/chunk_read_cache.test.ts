// A chunk server's read cache (src/cs/store/chunk_read_cache.ts) on the real chunk store in a
// temporary folder: a block read twice is kept and then served from the cache; every way a
// replica's bytes or version change drops what the cache holds of it (a client write, a zeroing,
// a forwarded write, a copy filling the replica, a repair, a new version, a delete and a new
// replica of the same id, journal replay), and a read racing a write never leaves the old bytes
// behind; a damaged cache file is a miss counted corrupt, never wrong bytes; copies bypass it,
// scans take nothing in; a restart empties it; one server per cache directory.

import { randomUUID } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { CACHE_BLOCK_BYTES, ReadCache } from '../src/cache/read_cache.ts';
import { ChunkReadCache } from '../src/cs/store/chunk_read_cache.ts';
import { ChunkStore, REAL_STORE_ENV } from '../src/cs/store/chunk_store.ts';
import type { Logger } from '../src/util/log.ts';
import { eventually } from './helpers/eventually.ts';

const KiB = 1024;
const CHUNK_BYTES = 1024 * KiB;
const CHUNK = 7;
const log: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };
const CS = { owner: 'chunk server' };

interface Opened {
  readonly store: ChunkStore;
  readonly cache: ReadCache;
}

async function openStore(root: string, uuid: string): Promise<Opened> {
  const cache = await ReadCache.open(join(root, 'cache'), 32 * CACHE_BLOCK_BYTES, log, CS);
  const store = await ChunkStore.open({
    ...REAL_STORE_ENV, directory: join(root, 'data'), ownerUuid: uuid, openChunksMax: 8, journalSegmentBytesMax: 1024 * KiB, log,
    readCache: new ChunkReadCache(cache),
  });
  return { store, cache };
}

/** A store with a cache and one empty chunk; closed when `t` ends unless `closedByTest`. */
async function setUp(t: Test, closedByTest = false): Promise<Opened & { root: string; uuid: string }> {
  const root = await mkdtemp(join(tmpdir(), 'shoal-cs-cache-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const uuid = randomUUID();
  const opened = await openStore(root, uuid);
  if (!closedByTest) {
    t.teardown(async () => {
      await opened.store.close();
      await opened.cache.close();
    });
  }
  await opened.store.createChunk({ chunkId: CHUNK, volumeId: 1, chunkIndex: 0, sizeBytes: CHUNK_BYTES, version: 1, generation: 0 });
  return { ...opened, root, uuid };
}

/**
 * Reads 4 KiB at `offset` until the cache has kept the block holding it (the second read of a
 * block takes it in), then once more: that read must be a hit. Returns its bytes.
 */
async function readCached(t: Test, { store, cache }: Opened, version: number, offset: number): Promise<Buffer> {
  const admitted = cache.stats.admissions;
  await store.read(CHUNK, version, offset, 4 * KiB);
  await store.read(CHUNK, version, offset, 4 * KiB);
  await eventually('the block to be kept', 5_000, async () => (cache.stats.admissions > admitted ? true : null));
  const hits = cache.stats.hits;
  const bytes = await store.read(CHUNK, version, offset, 4 * KiB);
  t.equal(cache.stats.hits, hits + 1, `a read at ${offset} is served from the cache`);
  return bytes;
}

/** After a change, a read of the block gives exactly `expected` (and the cache dropped what it held). */
async function readsBack(t: Test, { store, cache }: Opened, version: number, offset: number, expected: Buffer, what: string): Promise<void> {
  const hits = cache.stats.hits;
  const bytes = await store.read(CHUNK, version, offset, expected.length);
  t.ok(bytes.equals(expected), `${what}: the new bytes are read`);
  t.equal(cache.stats.hits, hits, `${what}: not from the cache`);
}

t.test('every change of a replica drops what the cache holds of it', async (t) => {
  const opened = await setUp(t);
  const { store, cache } = opened;
  await store.write(CHUNK, 1, 0, Buffer.alloc(CHUNK_BYTES, 0xa1));
  t.same(await readCached(t, opened, 1, 12 * KiB), Buffer.alloc(4 * KiB, 0xa1), 'the cached bytes are the written ones');
  t.equal(cache.usedBytes, CACHE_BLOCK_BYTES, 'one 64 KiB block kept');

  // A client's write (journalled: small) to another 4 KiB block of the same 64 KiB block.
  await store.write(CHUNK, 1, 8 * KiB, Buffer.alloc(4 * KiB, 0xb2));
  await readsBack(t, opened, 1, 8 * KiB, Buffer.alloc(4 * KiB, 0xb2), 'a small write beside the block read');
  await readCached(t, opened, 1, 8 * KiB);
  // In place (a write of 64 KiB or more goes straight to the chunk file).
  await store.write(CHUNK, 1, 0, Buffer.alloc(CACHE_BLOCK_BYTES, 0xc3));
  await readsBack(t, opened, 1, 8 * KiB, Buffer.alloc(4 * KiB, 0xc3), 'a write in place');
  await readCached(t, opened, 1, 8 * KiB);
  // A zeroing (a guest's TRIM).
  await store.zero(CHUNK, 1, 0, 32 * KiB);
  await readsBack(t, opened, 1, 8 * KiB, Buffer.alloc(4 * KiB), 'a zeroing');
  await readCached(t, opened, 1, 8 * KiB);
  // A copy filling the replica (REPLICA_WRITE and REPLICA_ZERO carry no version).
  await store.write(CHUNK, null, 8 * KiB, Buffer.alloc(4 * KiB, 0xd4));
  await readsBack(t, opened, 1, 8 * KiB, Buffer.alloc(4 * KiB, 0xd4), 'a copy\'s write');
  await readCached(t, opened, 1, 8 * KiB);
  await store.zero(CHUNK, null, 8 * KiB, 4 * KiB);
  await readsBack(t, opened, 1, 8 * KiB, Buffer.alloc(4 * KiB), 'a copy\'s zeroing');

  // A repair: the bytes on disk rot under the cache, the MDS sends good ones.
  await store.write(CHUNK, 1, 64 * KiB, Buffer.alloc(4 * KiB, 0xe5));
  await readCached(t, opened, 1, 64 * KiB);
  const dataFile = await open(join(opened.root, 'data', 'chunks', (CHUNK % 256).toString(16).padStart(2, '0'), `${CHUNK}.data`), 'r+');
  await dataFile.write(Buffer.alloc(4 * KiB, 0x00), 0, 4 * KiB, 64 * KiB);
  await dataFile.close();
  const invalidations = cache.stats.invalidations;
  t.equal(await store.repair(CHUNK, 1, 64 * KiB, Buffer.alloc(4 * KiB, 0xe5)), 1, 'the rotten block is repaired');
  t.ok(cache.stats.invalidations > invalidations, 'and what the cache held of it dropped');
  t.same(await store.read(CHUNK, 1, 64 * KiB, 4 * KiB), Buffer.alloc(4 * KiB, 0xe5));

  // A new version (a seal): the old one's blocks are never found again, and the old version is refused.
  await readCached(t, opened, 1, 64 * KiB);
  const before = cache.stats.invalidations;
  await store.setVersion(CHUNK, 2, 1, 1);
  t.ok(cache.stats.invalidations > before, 'a new version drops the old one\'s blocks');
  await t.rejects(store.read(CHUNK, 1, 64 * KiB, 4 * KiB), { code: 'ERR_CHUNK_VERSION' }, 'a read at the old version is refused');
  await readsBack(t, opened, 2, 64 * KiB, Buffer.alloc(4 * KiB, 0xe5), 'at the new version');

  // Deleted, and created again under the same id: nothing of the old replica is read.
  await readCached(t, opened, 2, 64 * KiB);
  await store.deleteChunk(CHUNK);
  await store.createChunk({ chunkId: CHUNK, volumeId: 1, chunkIndex: 0, sizeBytes: CHUNK_BYTES, version: 2, generation: 1 });
  await readsBack(t, opened, 2, 64 * KiB, Buffer.alloc(4 * KiB), 'a new replica of the same id and version');
  t.equal(cache.stats.corrupt, 0, 'nothing was found damaged');
});

t.test('a read racing a write never leaves the old bytes in the cache', async (t) => {
  const opened = await setUp(t);
  const { store, cache } = opened;
  await store.write(CHUNK, 1, 0, Buffer.alloc(CHUNK_BYTES, 0));
  for (let round = 1; round <= 200; round += 1) {
    const offset = (round % 4) * CACHE_BLOCK_BYTES + 4 * KiB * (round % 16);
    const pattern = Buffer.alloc(4 * KiB, round % 256);
    // Reads of the block before, during and after the write, the write small (journalled) or large (in place).
    const reads = [store.read(CHUNK, 1, offset, 4 * KiB), store.read(CHUNK, 1, offset, 4 * KiB)];
    const write = round % 2 === 0 ? store.write(CHUNK, 1, offset, pattern) : store.write(CHUNK, 1, offset - (offset % CACHE_BLOCK_BYTES), Buffer.alloc(CACHE_BLOCK_BYTES, round % 256));
    reads.push(store.read(CHUNK, 1, offset, 4 * KiB));
    await Promise.all([write, ...reads]);
    for (let i = 0; i < 3; i += 1) {
      const bytes = await store.read(CHUNK, 1, offset, 4 * KiB);
      if (!bytes.equals(pattern)) {
        t.fail(`round ${round}: read ${i} after the write gave old bytes (0x${bytes[0]?.toString(16)})`);
        return;
      }
    }
  }
  t.ok(cache.stats.hits > 0 && cache.stats.admissions > 0, `the cache was used: ${cache.stats.hits} hits, ${cache.stats.admissions} blocks kept`);
});

t.test('a damaged cache file is a miss, never wrong bytes; copies bypass the cache; scans take nothing in', async (t) => {
  const opened = await setUp(t);
  const { store, cache } = opened;
  await store.write(CHUNK, 1, 0, Buffer.alloc(CHUNK_BYTES, 0x5a));
  for (const offset of [0, 128 * KiB, 512 * KiB]) await readCached(t, opened, 1, offset);
  const file = await open(join(opened.root, 'cache', 'read-cache.bin'), 'r+');
  for (let slot = 0; slot < 32; slot += 1) await file.write(Buffer.alloc(512, 0xee), 0, 512, slot * CACHE_BLOCK_BYTES + 1000);
  await file.close();
  for (const offset of [0, 128 * KiB, 512 * KiB]) {
    t.same(await store.read(CHUNK, 1, offset, 4 * KiB), Buffer.alloc(4 * KiB, 0x5a), `block at ${offset}: the right bytes, from the disk`);
  }
  t.equal(cache.stats.corrupt, 3, 'the three damaged blocks are counted');
  // Dropped, and (being hot) read whole from the disk and kept again.
  for (const offset of [0, 128 * KiB, 512 * KiB]) {
    await eventually('the block to be kept again', 5_000, async () => (cache.has({ group: CHUNK, blockIndex: offset / CACHE_BLOCK_BYTES, tag: '1' }) ? true : null));
    t.same(await store.read(CHUNK, 1, offset, 4 * KiB), Buffer.alloc(4 * KiB, 0x5a), `block at ${offset}: kept again from the disk, read back`);
  }
  t.equal(cache.stats.corrupt, 3, 'and intact now');

  const { hits, misses } = cache.stats;
  await store.read(CHUNK, 1, 0, CHUNK_BYTES, { uncached: true });
  await store.read(CHUNK, 1, 0, 4 * KiB, { uncached: true });
  t.same([cache.stats.hits, cache.stats.misses], [hits, misses], 'a copy\'s reads do not touch the cache');

  // A backup reads the chunk in order, 128 KiB at a time, twice.
  const used = cache.usedBytes;
  for (let pass = 0; pass < 2; pass += 1) {
    for (let offset = 0; offset < CHUNK_BYTES; offset += 128 * KiB) await store.read(CHUNK, 1, offset, 128 * KiB);
  }
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.ok(cache.usedBytes - used <= CACHE_BLOCK_BYTES, `a sequential scan takes (almost) nothing in: ${(cache.usedBytes - used) / CACHE_BLOCK_BYTES} blocks`);
});

t.test('a restart, clean or not, starts empty and replays through the cache\'s hook; one server per cache directory', async (t) => {
  const opened = await setUp(t, true);
  await opened.store.write(CHUNK, 1, 0, Buffer.alloc(CHUNK_BYTES, 0x31));
  await readCached(t, opened, 1, 4 * KiB);
  await t.rejects(ReadCache.open(join(opened.root, 'cache'), 32 * CACHE_BLOCK_BYTES, log, CS),
    { code: 'ERR_CONFIG', message: /in use by process \d+: give each chunk server its own --cache-dir/ }, 'a second server on the directory is refused');
  // Small writes go through the journal; a crash leaves them to replay.
  await opened.store.write(CHUNK, 1, 4 * KiB, Buffer.alloc(4 * KiB, 0x32));
  await opened.store.abandon();
  await opened.cache.close();
  const reopened = await openStore(opened.root, opened.uuid);
  t.teardown(async () => {
    await reopened.store.close();
    await reopened.cache.close();
  });
  t.equal(reopened.cache.usedBytes, 0, 'the cache is empty after a restart');
  t.ok(reopened.cache.sequence > 0, 'the journal replay told the cache of the blocks it changed');
  t.same(await readCached(t, reopened, 1, 4 * KiB), Buffer.alloc(4 * KiB, 0x32), 'the replayed bytes are read, then cached');
});
