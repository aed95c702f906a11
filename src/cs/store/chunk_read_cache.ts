// A chunk server's read cache (`shoal run cs --cache-dir PATH --cache-size N`): an SSD in front of
// an HDD's replicas, on the store's read path. One implementation with the NBD server's
// (../../cache/read_cache.ts): 64 KiB blocks in one slot file, crc32c checked on every hit,
// TinyLFU admission with sequential scans skipped, least recently used evicted, emptied at start,
// one process per directory.
//
// A block's key: its chunk (the group), the replica's version (the tag) and its index in the
// chunk. Clients' reads (the READ op) go through it; copies to other servers do not. A read is
// answered from the cache when every 64 KiB block it touches is there and intact (a bad crc is a
// miss, counted corrupt); otherwise from the disk, through the store's own checks of each 4 KiB
// block, and the blocks worth keeping are kept (a small read of one is widened to the block; a
// block the widened read cannot take whole, for a bad 4 KiB block beside the asked range, is not
// kept and the asked range is read alone).
//
// Never old bytes: every change of a replica's bytes passes through BlockIO (client writes and
// zeroings, writes forwarded by the primary, copies and resyncs filling a replica, repairs,
// journal replay), which calls `changing` before the bytes change and again once the change is
// over, under the blocks' lock; creating, deleting and a new version of a replica call
// `changingChunk` (chunk_store.ts). Each drops the blocks touched, and a block read from the disk
// while such a change was in flight is not taken in (ReadCache's change sequence). A read carrying
// another version than the replica's goes to the disk, which refuses it.

import { isStorageError } from '../../errors.ts';
import { BLOCK_BYTES } from '../../limits.ts';
import { CACHE_BLOCK_BYTES, type ReadCache } from '../../cache/read_cache.ts';
import type { ChunkMeta } from './catalog.ts';

export class ChunkReadCache {
  readonly cache: ReadCache;

  constructor(cache: ReadCache) {
    this.cache = cache;
  }

  /**
   * Bytes [offsetBytes, +lengthBytes) of the replica `meta` describes now, through the cache;
   * `fromDisk` is the store's checked read of the replica.
   */
  read(meta: ChunkMeta, offsetBytes: number, lengthBytes: number, fromDisk: (offsetBytes: number, lengthBytes: number) => Promise<Buffer>): Promise<Buffer> {
    const { chunkId } = meta;
    const tag = String(meta.version);
    return this.cache.read({
      offsetBytes,
      lengthBytes,
      endBytes: meta.sizeBytes,
      scan: this.cache.noteRead(chunkId, offsetBytes, lengthBytes).scan,
      keyOf: (blockIndex) => ({ group: chunkId, blockIndex, tag }),
      source: fromDisk,
      narrowOnError: (error) => isStorageError(error, 'ERR_CHECKSUM'),
    });
  }

  /** 4 KiB blocks first..last of a replica change (called before and after): the cached blocks holding them go. */
  changing(chunkId: number, first: number, last: number): void {
    this.cache.invalidate(chunkId, Math.floor((first * BLOCK_BYTES) / CACHE_BLOCK_BYTES), Math.floor((last * BLOCK_BYTES) / CACHE_BLOCK_BYTES));
  }

  /** A replica is created, deleted or moves to another version: every cached block of it goes. */
  changingChunk(chunkId: number): void {
    this.cache.invalidateGroup(chunkId);
  }
}
