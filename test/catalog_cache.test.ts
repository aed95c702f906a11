// The chunk server's catalog on LMDB keeps replica records and fence epochs in memory: a read
// during a put still sees the committed record (the store's contract), and once the put has
// resolved every read sees the new one, never a copy cached before it.

import t from 'tap';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LmdbCatalog, type ChunkMeta } from '../src/cs/store/catalog.ts';

const meta = (version: number): ChunkMeta => ({ chunkId: 7, volumeId: 1, chunkIndex: 0, sizeBytes: 1 << 20, version, generation: 1 });

t.test('reads during a change see the committed value, reads after it the new one', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'shoal-catalog-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const catalog = await LmdbCatalog.open(join(dir, 'catalog'));
  t.teardown(() => catalog.close());

  t.equal(catalog.getChunk(7), undefined, 'absent');
  await catalog.putChunk(meta(1));
  t.equal(catalog.getChunk(7)?.version, 1);
  t.equal(catalog.getChunk(7)?.version, 1, 'read again (from memory)');

  for (let version = 2; version <= 20; version += 1) {
    const put = catalog.putChunk(meta(version));
    t.equal(catalog.getChunk(7)?.version, version - 1, `v${version} in flight: the committed v${version - 1} is read`);
    await put;
    t.equal(catalog.getChunk(7)?.version, version, `v${version} resolved: read`);
  }

  const removed = catalog.removeChunk(7);
  catalog.getChunk(7);
  await removed;
  t.equal(catalog.getChunk(7), undefined, 'removed');

  t.equal(catalog.getFence(3), 0);
  const fenced = catalog.putFence(3, 5);
  t.equal(catalog.getFence(3), 0, 'fence in flight: the committed epoch');
  await fenced;
  t.equal(catalog.getFence(3), 5, 'fence resolved');
  await catalog.putFence(3, 6);
  t.equal(catalog.getFence(3), 6);
});
