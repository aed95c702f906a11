// The chunk files a chunk server keeps open: a handle per chunk (its data and .sums files, the
// whole .sums in memory, the range lock of its blocks), with at most `openChunksMax` of them open
// while idle, the least recently used closed first. The chunk store decides what a read or a change
// means and takes the range lock; this module decides when a chunk's files are opened, when its
// checksums reach the .sums file and its files are synced, and when they are closed.
//
// Invariants (each one the fix of a bug a seeded simulation or a power-cut test found):
// - a handle is used only while it is the cached one of its chunk (acquire checks again after an
//   open); an eviction takes only a handle nobody uses (`users`) whose range lock is free, and a
//   delete waits until nobody uses it;
// - one handle per chunk: a chunk is not opened again until its evicted handle has written its
//   checksums and closed (`closing`); an eviction whose sync failed keeps its handle open, since
//   its checksums in memory are the only ones that match the file, and the next open reuses it;
// - syncDirty (a checkpoint's) covers the open handles, each held in use while it syncs, and the
//   evictions in flight; once an eviction's sync failed, no later syncDirty succeeds, and the
//   journal is told at once (`failChunkSync`);
// - a chunk being deleted gets no new use from the first moment (`deleting`) until the store has
//   removed its files and its record.

import { StorageError, fromSystemError } from '../../errors.ts';
import { assert } from '../../util/assert.ts';
import type { Logger } from '../../util/log.ts';
import { RangeLock } from '../../util/range_lock.ts';
import { SUM_BYTES, sumsBytes } from './block_sums.ts';
import type { ChunkMeta } from './catalog.ts';
import { readFully, writeFully } from './chunk_file_io.ts';
import { shareSyncs, type SharedSyncFile } from './shared_syncs.ts';
import { errnoCode, type Disk, type DiskFile } from '../disk/disk.ts';

/**
 * An open chunk. The store reads and writes through `data`, `sums` and `lock`, and reports every
 * change to the file or the checksums with markDirty; the other fields are this module's.
 */
export interface ChunkHandle {
  readonly meta: ChunkMeta;
  readonly data: SharedSyncFile;
  readonly sumsFile: DiskFile;
  /** The whole .sums file, kept in memory while the chunk is open. */
  readonly sums: Buffer;
  readonly lock: RangeLock;
  users: number;
  /** Woken when `users` drops to zero (a delete waits for that). */
  readonly unusedWaiters: Array<() => void>;
  /** The data file changed since its last sync. */
  dirty: boolean;
  /** Blocks whose checksums changed in memory since the .sums file was last written. */
  sumsDirty: { first: number; last: number } | null;
}

export interface HandleCacheOptions {
  readonly disk: Disk;
  /** Handles kept open; past it idle ones are closed (all in use: over the limit until they are not). */
  readonly openChunksMax: number;
  /**
   * The open handles' checksums in memory (a .sums file each, sized by its chunk) at most: past it
   * idle ones are closed as past openChunksMax (default: no limit but the count). Part of the
   * chunk server's memory budget.
   */
  readonly openSumsBytesMax?: number;
  readonly log: Logger;
  /** The chunk's catalog record, or undefined when this server does not hold the chunk. */
  readonly getMeta: (chunkId: number) => ChunkMeta | undefined;
  readonly paths: (chunkId: number) => { readonly data: string; readonly sums: string };
  /** A chunk whose record is there but whose files are gone: the store ends its delete and rejects with ERR_CHUNK_NOT_FOUND. */
  readonly finishDelete: (chunkId: number) => Promise<never>;
  /** An evicted handle's sync failed: the journal must stop taking writes and keep its segments. */
  readonly failChunkSync: (error: unknown) => void;
}

export class HandleCache {
  private readonly options: HandleCacheOptions;
  /** Map order is the LRU order, least recently used first. */
  private readonly handles = new Map<number, ChunkHandle>();
  private readonly opening = new Map<number, Promise<ChunkHandle>>();
  /**
   * Handles evicted from `handles` whose sync and close are still running. A checkpoint waits for
   * them as for the open ones (their data may be what the journal is about to give up), and a
   * chunk is not opened again until its previous handle has written its checksums and closed.
   */
  private readonly closing = new Map<number, Promise<void>>();
  /** Chunks being removed: no new use of them (see closeForDelete). */
  private readonly deleting = new Set<number>();
  /** An evicted handle's sync failed: no later syncDirty succeeds (see syncAndClose). */
  private chunkSyncFailure: unknown = null;
  /** Bytes of checksums the handles in `handles` hold. */
  private openSumsBytes = 0;

  constructor(options: HandleCacheOptions) {
    this.options = options;
  }

  /** Runs `use` with the chunk's handle held in use: no eviction or delete closes it meanwhile. */
  async withHandle<T>(chunkId: number, use: (handle: ChunkHandle) => Promise<T>): Promise<T> {
    const handle = await this.acquire(chunkId);
    try {
      return await use(handle);
    } finally {
      releaseUse(handle);
    }
  }

  /** A delete of the chunk is under way: it is not on this server for anyone else. */
  isDeleting(chunkId: number): boolean {
    return this.deleting.has(chunkId);
  }

  /**
   * Closes a chunk that is being deleted, then runs `remove` (its files, then its record). No new
   * use of it from the call until `remove` is done: an open in between would find files half
   * removed, or bring back a handle to files that are gone.
   */
  async closeForDelete(chunkId: number, remove: () => Promise<void>): Promise<void> {
    this.deleting.add(chunkId);
    try {
      await this.opening.get(chunkId)?.catch(() => undefined);
      // An evicted handle may still be syncing, and is kept open if its sync failed (syncAndClose).
      await this.closing.get(chunkId)?.catch(() => undefined);
      const handle = this.handles.get(chunkId);
      if (handle !== undefined) {
        this.untrack(chunkId);
        await waitUnused(handle);
        await closeHandle(handle);
      }
      await remove();
    } finally {
      this.deleting.delete(chunkId);
    }
  }

  /**
   * Makes every chunk file written since the last call durable, checksums included: the open
   * handles and those being evicted. Rejects if any sync failed; the journal then stops for good.
   */
  async syncDirty(): Promise<void> {
    const dirty = [...this.handles.values()].filter((handle) => handle.dirty);
    // Each is in use while it syncs: an eviction must not close it under this sync, nor find it
    // clean (this sync took its dirty marks) and close it before its checksums are written.
    for (const handle of dirty) handle.users += 1;
    const results = await Promise.allSettled([
      ...dirty.map((handle) => syncHandle(handle).finally(() => releaseUse(handle))),
      ...this.closing.values(),
    ]);
    const failed = results.find((result) => result.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    if (this.chunkSyncFailure !== null) throw this.chunkSyncFailure;
  }

  /** Closes every open handle, after a syncDirty (a shutdown): a close that fails rejects. */
  async closeAll(): Promise<void> {
    for (const handle of this.handles.values()) await closeHandle(handle);
    this.handles.clear();
    this.openSumsBytes = 0;
  }

  /** Closes everything without syncing, as a crash would: the evictions in flight end first. */
  async abandon(): Promise<void> {
    await Promise.allSettled(this.closing.values());
    for (const handle of this.handles.values()) await closeHandle(handle).catch(() => undefined);
    this.handles.clear();
    this.openSumsBytes = 0;
  }

  private async acquire(chunkId: number): Promise<ChunkHandle> {
    for (;;) {
      const cached = this.handles.get(chunkId);
      if (cached !== undefined) {
        // Map order is the LRU order: move to the back.
        this.handles.delete(chunkId);
        this.handles.set(chunkId, cached);
        cached.users += 1;
        return cached;
      }
      let opening = this.opening.get(chunkId);
      if (opening === undefined) {
        opening = this.openHandle(chunkId).finally(() => this.opening.delete(chunkId));
        this.opening.set(chunkId, opening);
      }
      const handle = await opening;
      // Between the open and this moment the new handle was idle: another request's eviction may
      // have taken it. Using it would write through a closing file, whose dirty marks and
      // checksums nobody syncs any more: open the chunk again instead.
      if (this.handles.get(chunkId) !== handle) continue;
      handle.users += 1;
      this.evictIfNeeded();
      return handle;
    }
  }

  private async openHandle(chunkId: number): Promise<ChunkHandle> {
    // The previous handle of this chunk may still be writing its checksums, and is kept if it failed.
    await this.closing.get(chunkId)?.catch(() => undefined);
    const kept = this.handles.get(chunkId);
    if (kept !== undefined) return kept;
    const meta = this.options.getMeta(chunkId);
    if (meta === undefined || this.deleting.has(chunkId)) throw new StorageError('ERR_CHUNK_NOT_FOUND', `chunk ${chunkId} is not on this server`);
    const paths = this.options.paths(chunkId);
    let data: SharedSyncFile | null = null;
    try {
      data = shareSyncs(await this.options.disk.open(paths.data, 'readWrite'));
      const sumsFile = await this.options.disk.open(paths.sums, 'readWrite');
      const sums = Buffer.alloc(sumsBytes(meta.sizeBytes));
      await readFully(sumsFile, sums, 0).catch(async (error: unknown) => {
        await sumsFile.close();
        throw error;
      });
      const handle: ChunkHandle = {
        meta, data, sumsFile, sums, lock: new RangeLock(), users: 0, unusedWaiters: [], dirty: false, sumsDirty: null,
      };
      this.track(handle);
      return handle;
    } catch (error) {
      await data?.close().catch(() => undefined);
      // A record whose files are gone: a delete that a crash cut short after its files went.
      if (errnoCode(error) === 'ENOENT') return this.options.finishDelete(chunkId);
      throw fromSystemError(error, `opening chunk ${chunkId}`);
    }
  }

  /**
   * Closes the least recently used idle handles past the limit. Their sync runs in the background
   * (never inside the request that opened a new handle), tracked in `closing` so that a
   * checkpoint waits for it. A failed sync there is a failed chunk sync: the journal stops.
   */
  private evictIfNeeded(): void {
    const sumsBytesMax = this.options.openSumsBytesMax ?? Number.POSITIVE_INFINITY;
    while (this.handles.size > this.options.openChunksMax || (this.openSumsBytes > sumsBytesMax && this.handles.size > 1)) {
      let victim: ChunkHandle | undefined;
      for (const handle of this.handles.values()) {
        if (handle.users === 0 && handle.lock.idle && !this.closing.has(handle.meta.chunkId)) {
          victim = handle;
          break;
        }
      }
      if (victim === undefined) return; // everything is in use: go over the limit until it is not
      const chunkId = victim.meta.chunkId;
      this.untrack(chunkId);
      const closed = this.syncAndClose(victim).finally(() => {
        if (this.closing.get(chunkId) === closed) this.closing.delete(chunkId);
      });
      this.closing.set(chunkId, closed);
      closed.catch(() => undefined); // reported through the journal; awaited by the next checkpoint
    }
  }

  /** Every change of `handles` goes through track/untrack, which keep openSumsBytes. */
  private track(handle: ChunkHandle): void {
    assert(!this.handles.has(handle.meta.chunkId), 'one handle per chunk');
    this.handles.set(handle.meta.chunkId, handle);
    this.openSumsBytes += handle.sums.length;
  }

  private untrack(chunkId: number): void {
    const handle = this.handles.get(chunkId);
    if (handle === undefined) return;
    this.handles.delete(chunkId);
    this.openSumsBytes -= handle.sums.length;
    assert(this.openSumsBytes >= 0, 'open checksum bytes never negative');
  }

  private async syncAndClose(handle: ChunkHandle): Promise<void> {
    try {
      if (handle.dirty || handle.sumsDirty !== null) await syncHandle(handle);
    } catch (error) {
      // Remembered for every later syncDirty (this promise may be gone from `closing` before one
      // looks), and the journal stops.
      this.chunkSyncFailure ??= error;
      this.options.failChunkSync(error);
      // Kept open: its checksums in memory are the only ones that match the file's bytes now (the
      // .sums file missed them), so reads go on through it until a restart replays the journal.
      this.track(handle);
      throw error;
    }
    await closeHandle(handle).catch((error: unknown) => this.options.log.warn('closing a chunk file failed', { error }));
  }
}

/** Records a change to blocks first..last of the chunk: its files and those checksums need a sync. */
export function markDirty(handle: ChunkHandle, first: number, last: number): void {
  handle.dirty = true;
  const range = handle.sumsDirty;
  handle.sumsDirty = range === null ? { first, last } : { first: Math.min(range.first, first), last: Math.max(range.last, last) };
}

/**
 * Writes the changed checksums and syncs both files. Checksums reach the .sums file only here
 * (checkpoints, eviction, shutdown): between checkpoints the journal can rebuild them. The dirty
 * marks are taken before the I/O (a change made meanwhile marks them again) and given back if it
 * fails, though a failed sync is fatal anyway (the journal is kept, see Journal.failChunkSync).
 */
async function syncHandle(handle: ChunkHandle): Promise<void> {
  const range = handle.sumsDirty;
  handle.sumsDirty = null;
  handle.dirty = false;
  try {
    if (range !== null) {
      const start = range.first * SUM_BYTES;
      await writeFully(handle.sumsFile, handle.sums.subarray(start, (range.last + 1) * SUM_BYTES), start);
    }
    await handle.data.datasync();
    await handle.sumsFile.datasync();
  } catch (error) {
    handle.dirty = true;
    if (range !== null) markDirty(handle, range.first, range.last);
    throw error;
  }
}

async function closeHandle(handle: ChunkHandle): Promise<void> {
  await handle.data.close();
  await handle.sumsFile.close();
}

/** Ends one use of a handle (a request, or a sync that pinned it); wakes a delete waiting for none. */
function releaseUse(handle: ChunkHandle): void {
  handle.users -= 1;
  assert(handle.users >= 0, 'chunk handle users never negative');
  if (handle.users === 0) for (const wake of handle.unusedWaiters.splice(0)) wake();
}

/** Resolves once nobody uses the handle (its range locks are all taken inside a use). */
async function waitUnused(handle: ChunkHandle): Promise<void> {
  while (handle.users > 0) await new Promise<void>((resolve) => handle.unusedWaiters.push(resolve));
}
