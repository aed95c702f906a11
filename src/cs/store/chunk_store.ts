// Chunk replicas on one disk (the ReplicaStore, replica_store.ts): data files, per-block
// checksums, metadata, and the journal that makes each change durable before it is acknowledged.
//
//   chunks/<hh>/<chunkId>.data|.sums   a replica's bytes and checksums (chunk_files.ts, block_sums.ts)
//   meta/                              the catalog (LMDB): chunkId -> ChunkMeta, volumeId -> fence epoch
//   journal/                           the write journal (../journal/), unless it lives elsewhere
//                                      (journalDirectory: another device, e.g. an SSD before an HDD)
//
// This module says what each operation on a replica means in the catalog (create, delete, version
// changes, volumes) and ties the parts together: fences and admission (fences.ts), the data path
// with its checksums (block_io.ts), change tracking for copies (changes.ts), journal replay
// (replay.ts), health (health.ts), the read cache on an SSD if the server has one
// (chunk_read_cache.ts: told of every change). When a chunk's files are opened, synced and closed
// is the handle cache's business (handle_cache.ts).
//
// Invariants: a replica's version only grows; a journal segment is recycled only after every chunk
// file its records went to was synced without error (a failed sync stops the disk for writes and
// keeps the journal for replay); the catalog record is a chunk's commit point (its files are
// durable before it is written, and removed durably before it goes).
//
// All file I/O goes through a Disk (../disk/disk.ts) and all records through a Catalog, so seeded
// tests run this very code on a simulated disk that loses, tears and fails writes.

import { join, resolve } from 'node:path';
import { StorageError, fromSystemError } from '../../errors.ts';
import { BLOCK_BYTES, CS_EXTENTS_MAX } from '../../limits.ts';
import { assert } from '../../util/assert.ts';
import { systemClock, type Clock, type Timers } from '../../util/clock.ts';
import type { VolumeListEntry, VolumeDescription } from '../../protocol/cs_messages.ts';
import type { Logger } from '../../util/log.ts';
import type { Disk } from '../disk/disk.ts';
import { realDisk } from '../disk/real_disk.ts';
import { Journal } from '../journal/journal.ts';
import { blockCount, isWritten } from './block_sums.ts';
import { BlockIO, blockSpan } from './block_io.ts';
import { LmdbCatalog, type Catalog, type ChunkMeta } from './catalog.ts';
import { ChangeTracker } from './changes.ts';
import { ChunkFiles } from './chunk_files.ts';
import type { ChunkReadCache } from './chunk_read_cache.ts';
import { Fences } from './fences.ts';
import { HandleCache } from './handle_cache.ts';
import { StoreHealth } from './health.ts';
import type { ChunkStoreStats, ReadOptions, ReplicaStore } from './replica_store.ts';
import { JournalReplay } from './replay.ts';

export type { ChunkMeta } from './catalog.ts';
export type { ChunkStoreStats } from './replica_store.ts';

export interface ChunkStoreOptions {
  readonly directory: string;
  readonly openChunksMax: number;
  /** The open chunks' checksums in memory at most (handle_cache.ts); default: only the count bounds them. */
  readonly openSumsBytesMax?: number;
  readonly journalSegmentBytesMax: number;
  /** Segment files the journal's space holds (at least 2); default JOURNAL_SEGMENTS_DEFAULT. */
  readonly journalSegmentsMax?: number;
  /** Where the journal lives; default `<directory>/journal`. */
  readonly journalDirectory?: string;
  /** The data directory's uuid (cs.json): the owner named in every journal segment. */
  readonly ownerUuid: string;
  /** Whether the data directory is known to have had a journal before (cs.json names one). */
  readonly journalRecorded?: boolean;
  /**
   * Writes of at least this many bytes go straight to the chunk file, with only their blocks'
   * sums in the journal (block_io.ts); Infinity keeps every write in the journal. Default
   * IN_PLACE_WRITE_BYTES_MIN_DEFAULT.
   */
  readonly inPlaceWriteBytesMin?: number;
  readonly log: Logger;
  readonly disk: Disk;
  readonly clock: Clock;
  /** What the journal paces writers and times its drain with (default: the system's). */
  readonly timers?: Timers;
  /** Opens the catalog, durably created; the daemon's is LMDB in `<directory>/meta`. */
  readonly openCatalog: (path: string) => Catalog | Promise<Catalog>;
  /** Clients' reads go through it, and every change of a replica drops what it touches (chunk_read_cache.ts). */
  readonly readCache?: ChunkReadCache;
}

/**
 * 64 KiB: below it, the journal's path is the cheaper one: the bytes written twice cost less than
 * the data file's own fdatasync after the record's (two syncs in a row instead of one shared with
 * the batch), and small random writes to many chunks stay one sequential append. From there on,
 * writing each byte once wins: the qemu/NBD clients send 64 KiB-1 MiB requests for sequential and
 * large-block I/O, and those are the writes whose second copy filled the journal.
 */
export const IN_PLACE_WRITE_BYTES_MIN_DEFAULT = 64 * 1024;

/**
 * 1 MiB, when the journal has a device of its own (an SSD in front of an HDD): there the journal's
 * path is also the faster one for the large writes of sequential I/O, acknowledged at the SSD's
 * speed and drained to the HDD in the background at checkpoints (paced to its speed,
 * drain_pacer.ts); only writes of a megabyte and more, which the HDD streams about as fast as the
 * journal device would, go in place and spare the journal their bytes.
 */
export const IN_PLACE_WRITE_BYTES_MIN_OWN_JOURNAL_DEVICE = 1024 * 1024;

/** What the daemon runs the store on: the real disk, the system clock, LMDB. */
export const REAL_STORE_ENV: Pick<ChunkStoreOptions, 'disk' | 'clock' | 'openCatalog'> = {
  disk: realDisk,
  clock: systemClock,
  openCatalog: (path) => LmdbCatalog.open(path),
};

export class ChunkStore implements ReplicaStore {
  readonly stats: ChunkStoreStats = {
    checksumErrorsTotal: 0,
    readBytesTotal: 0,
    writtenBytesTotal: 0,
    zeroedBytesTotal: 0,
    repairedBlocksTotal: 0,
    filledBytesTotal: 0,
  };
  private readonly options: ChunkStoreOptions;
  private readonly catalog: Catalog;
  private readonly files: ChunkFiles;
  private readonly handles: HandleCache;
  private readonly fences: Fences;
  private readonly changes = new ChangeTracker();
  private readonly health: StoreHealth;
  private readonly blocks: BlockIO;
  private journalInstance: Journal | null = null;
  /**
   * False when the previous run did not stop cleanly (a crash, a power cut, a kill): it may have
   * died while forwarding a write, leaving members of a chunk different, so the MDS compares them.
   */
  readonly previousStopClean: boolean;

  private constructor(options: ChunkStoreOptions, catalog: Catalog) {
    this.options = options;
    this.catalog = catalog;
    this.previousStopClean = catalog.getState('cleanStop') === 1;
    this.files = new ChunkFiles(options.disk, options.directory, options.log);
    this.fences = new Fences(catalog);
    this.health = new StoreHealth(options.clock, options.log);
    this.handles = new HandleCache({
      disk: options.disk,
      openChunksMax: options.openChunksMax,
      ...(options.openSumsBytesMax === undefined ? {} : { openSumsBytesMax: options.openSumsBytesMax }),
      log: options.log,
      getMeta: (chunkId) => this.getMeta(chunkId),
      paths: (chunkId) => this.files.paths(chunkId),
      finishDelete: (chunkId) => this.finishDelete(chunkId),
      // While the journal replays at start-up it is not there yet: the syncDirty that ends the
      // replay reports the failure instead (the cache remembers it for every later syncDirty).
      failChunkSync: (error) => void this.journalInstance?.failChunkSync(error),
    });
    this.blocks = new BlockIO({
      log: options.log,
      health: this.health,
      changes: this.changes,
      journal: () => this.journal,
      version: (chunkId) => this.getMeta(chunkId)?.version,
      onChecksumError: () => {
        this.stats.checksumErrorsTotal += 1;
      },
      inPlaceBytesMin: options.inPlaceWriteBytesMin ?? IN_PLACE_WRITE_BYTES_MIN_DEFAULT,
      changing: (chunkId, first, last) => options.readCache?.changing(chunkId, first, last),
    });
  }

  static async open(options: ChunkStoreOptions): Promise<ChunkStore> {
    const { disk, directory } = options;
    await disk.mkdir(join(directory, 'chunks'));
    const store = new ChunkStore(options, await options.openCatalog(join(directory, 'meta')));
    // The entry of chunks/ just created must survive a power cut like the catalog's.
    await disk.syncDirectory(directory);
    // Whether the journal may hold records not yet in the chunk files: the last run did not end
    // with a clean close (its journal checkpointed), and there are replicas they could belong to.
    // A first start has written no stop word yet.
    const cleanStop = store.catalog.getState('cleanStop');
    const mayHoldUnapplied = cleanStop === 0 && store.catalog.chunkCount() > 0;
    await store.files.removeOrphans((chunkId) => store.getMeta(chunkId) !== undefined);
    const journalDirectory = options.journalDirectory ?? join(directory, 'journal');
    const replay = new JournalReplay({
      log: options.log, health: store.health, handles: store.handles, blocks: store.blocks, getMeta: (chunkId) => store.getMeta(chunkId),
    });
    try {
      store.journalInstance = await Journal.open(
        {
          disk,
          clock: options.clock,
          ...(options.timers === undefined ? {} : { timers: options.timers }),
          directory: journalDirectory,
          segmentBytesMax: options.journalSegmentBytesMax,
          ...(options.journalSegmentsMax === undefined ? {} : { segmentsMax: options.journalSegmentsMax }),
          ownerUuid: options.ownerUuid,
          ownerFacts: {
            dataDir: directory,
            isDataDirJournal: resolve(journalDirectory) === resolve(directory, 'journal'),
            mayHoldUnapplied,
            hadJournal: options.journalRecorded === true || store.catalog.chunkCount() > 0,
          },
          batchBytesMax: 16 * 1024 * 1024,
          log: options.log,
          syncChunkFiles: () => store.syncDirty(),
          // From here until a clean close, a crash counts as an unclean stop. (Not before the
          // journal is known to be this disk's: a refused start changes nothing, so a clean stop
          // stays one.)
          onOwnerChecked: async () => {
            if (cleanStop !== 0) await store.catalog.putState('cleanStop', 0);
          },
        },
        (record) => replay.apply(record),
        (record) => replay.scan(record),
      );
    } catch (error) {
      // A journal refused (another disk's, or lost; nothing was changed) or one that could not be
      // opened: let go of the catalog so that the process can exit or try again.
      await store.handles.abandon();
      await store.catalog.close();
      throw error;
    }
    return store;
  }

  get journal(): Journal {
    assert(this.journalInstance !== null, 'journal is open');
    return this.journalInstance;
  }

  get chunkCount(): number {
    return this.catalog.chunkCount();
  }

  /** Set when start-up found data it could not restore; reported as unhealthy to the MDS. */
  get damage(): string | null {
    return this.health.damage;
  }

  /** Why this server should not get new replicas now, or null. */
  get healthProblem(): string | null {
    return this.health.problem(this.journal.healthError);
  }

  // ---- metadata -----------------------------------------------------------------------------------

  getMeta(chunkId: number): ChunkMeta | undefined {
    return this.catalog.getChunk(chunkId);
  }

  fenceEpoch(volumeId: number): number {
    return this.fences.epoch(volumeId);
  }

  /**
   * Fences writers of `volumeId` below `epoch`: from this call on (synchronously) their changes are
   * refused; the returned promise resolves once every change of theirs admitted before has
   * finished (landed or failed) and the fence is recorded. A FENCE is acknowledged only then, so a
   * change that passed the check but still waited (for the block lock, for the journal) can never
   * land after the takeover was acknowledged. Epochs only grow.
   */
  raiseFence(volumeId: number, epoch: number): Promise<void> {
    return this.fences.raise(volumeId, epoch);
  }

  /**
   * Runs `change`, a client's WRITE or ZERO to `volumeId` under lease `epoch` (its local write and
   * its forwards), unless a newer epoch has fenced that writer (ERR_LEASE_FENCED). The check and
   * the registration in flight happen in one synchronous step, so a raiseFence either comes
   * before (the change is refused) or waits for the change to finish. A takeover waits for
   * `change`, so it must be bounded: its I/O, its forwards (the peer timeout) and, when members
   * refused it as fenced, its report to the MDS (the MDS client's timeout).
   */
  admitChange<T>(volumeId: number, epoch: number, change: () => Promise<T>): Promise<T> {
    return this.fences.admit(volumeId, epoch, change);
  }

  /** Changes admitted and not finished, all volumes (for tests and metrics). */
  get admittedCount(): number {
    return this.fences.admittedCount;
  }

  /**
   * Creates an empty replica (idempotent for the same chunk). `volume` describes the volume it
   * belongs to, kept for rebuilding the chunk map from the chunk servers if the MDS's is lost.
   */
  async createChunk(meta: ChunkMeta, volume?: VolumeDescription): Promise<ChunkMeta> {
    if (volume !== undefined) await this.describeVolume(meta.volumeId, volume);
    const existing = this.getMeta(meta.chunkId);
    if (existing !== undefined) {
      if (existing.volumeId === meta.volumeId && existing.chunkIndex === meta.chunkIndex && existing.sizeBytes === meta.sizeBytes) {
        return existing;
      }
      throw new StorageError('ERR_INVALID_ARGUMENT', `chunk ${meta.chunkId} exists here for another volume or size`);
    }
    // A replica of this id deleted before (its blocks are gone from the cache then) or left by a crash.
    this.options.readCache?.changingChunk(meta.chunkId);
    try {
      await this.files.create(meta.chunkId, meta.sizeBytes);
    } catch (error) {
      throw this.health.noteWriteError(fromSystemError(error, `creating chunk ${meta.chunkId}`));
    }
    // The catalog record is the commit point: files without one are removed at the next start.
    await this.catalog.putChunk(meta);
    return meta;
  }

  /** Keeps the latest description of a volume (its size only grows). */
  private async describeVolume(volumeId: number, volume: VolumeDescription): Promise<void> {
    const known = this.catalog.getVolume(volumeId);
    if (known !== undefined && known.name === volume.name && known.sizeBytes >= volume.sizeBytes &&
      known.replicasNormal === volume.replicasNormal && known.replicasMin === volume.replicasMin) return;
    await this.catalog.putVolume(volumeId, { ...volume, sizeBytes: Math.max(volume.sizeBytes, known?.sizeBytes ?? 0) });
  }

  /** The volumes this server holds replicas of or has fences for, with what it knows of them. */
  listVolumes(limit: number): VolumeListEntry[] {
    return this.catalog.listVolumeIds().slice(0, limit).map((volumeId) => ({
      volumeId,
      description: this.catalog.getVolume(volumeId) ?? null,
      fenceEpoch: this.fenceEpoch(volumeId),
    }));
  }

  /**
   * Removes a replica: no new use of it from the start (the handle cache refuses any until the
   * record is gone), its files removed and their removal made durable, and only then its catalog
   * record. A crash in between leaves a record without files, which the next open of the chunk
   * finishes removing; the other order would leave files full of data without a record, which
   * look like a lost catalog's and are never deleted on sight.
   */
  async deleteChunk(chunkId: number): Promise<void> {
    if (this.getMeta(chunkId) === undefined || this.handles.isDeleting(chunkId)) {
      throw new StorageError('ERR_CHUNK_NOT_FOUND', `chunk ${chunkId} is not on this server`);
    }
    this.changes.forget(chunkId);
    this.options.readCache?.changingChunk(chunkId);
    try {
      await this.handles.closeForDelete(chunkId, async () => {
        await this.files.remove(chunkId);
        await this.catalog.removeChunk(chunkId);
      });
    } finally {
      this.options.readCache?.changingChunk(chunkId);
    }
  }

  /**
   * Moves the replica to `toVersion` after every change in flight on it has finished (the whole
   * chunk is locked meanwhile). With `expectedVersion`, the replica must be exactly there.
   */
  async setVersion(chunkId: number, toVersion: number, expectedVersion: number | undefined, generation: number): Promise<ChunkMeta> {
    return this.handles.withHandle(chunkId, async (handle) => {
      const release = await handle.lock.acquire(0, blockCount(handle.sums) - 1, true);
      try {
        const meta = this.requireMeta(chunkId);
        if (meta.version === toVersion) return meta;
        if (expectedVersion !== undefined ? meta.version !== expectedVersion : meta.version > toVersion) {
          throw new StorageError(
            'ERR_CHUNK_VERSION',
            `chunk ${chunkId} is at version ${meta.version}; cannot move it to ${toVersion}` +
              (expectedVersion === undefined ? '' : ` from ${expectedVersion}`),
          );
        }
        assert(toVersion > meta.version, 'replica versions only grow');
        const updated: ChunkMeta = { ...meta, version: toVersion, generation: Math.max(meta.generation, generation) };
        await this.catalog.putChunk(updated);
        // The old version's blocks would never be found again (the version is in their keys): their slots go now.
        this.options.readCache?.changingChunk(chunkId);
        return updated;
      } finally {
        release();
      }
    });
  }

  /** Replicas held, by ascending chunk id. */
  listChunks(fromChunkId: number, limit: number): ChunkMeta[] {
    return this.catalog.listChunks(fromChunkId, limit);
  }

  private requireMeta(chunkId: number): ChunkMeta {
    const meta = this.getMeta(chunkId);
    if (meta === undefined) throw new StorageError('ERR_CHUNK_NOT_FOUND', `chunk ${chunkId} is not on this server`);
    return meta;
  }

  // ---- data (block_io.ts) -------------------------------------------------------------------------

  /**
   * Writes `data` at `offsetBytes` and resolves when the change is durable. `version` is the
   * version the writer holds, checked under the block lock so that a version change (which takes
   * the whole chunk's lock) cleanly separates writes before it from writes after it; null for a
   * replica being filled, which is not a member yet.
   */
  async write(chunkId: number, version: number | null, offsetBytes: number, data: Buffer): Promise<void> {
    await this.handles.withHandle(chunkId, (handle) => this.blocks.applyWrite(handle, offsetBytes, data, { kind: 'live', version }));
    this.stats.writtenBytesTotal += data.length;
    if (version === null) this.stats.filledBytesTotal += data.length;
  }

  /** Zeroes a range (whole blocks become holes) and resolves when the change is durable. */
  async zero(chunkId: number, version: number | null, offsetBytes: number, lengthBytes: number): Promise<void> {
    await this.handles.withHandle(chunkId, (handle) => this.blocks.applyZero(handle, offsetBytes, lengthBytes, { kind: 'live', version }));
    this.stats.zeroedBytesTotal += lengthBytes;
  }

  /**
   * Reads a range, every written block checked against its checksum (ERR_CHECKSUM if one fails).
   * A client's read goes through the read cache, if any, when it asks for the replica's version
   * (any other is refused by the disk's read); a copy's (`uncached`) does not.
   */
  async read(chunkId: number, version: number | null, offsetBytes: number, lengthBytes: number, options: ReadOptions = {}): Promise<Buffer> {
    const fromDisk = (offset: number, length: number): Promise<Buffer> =>
      this.handles.withHandle(chunkId, (handle) => this.blocks.read(handle, offset, length, version));
    const cache = this.options.readCache;
    const meta = cache === undefined || options.uncached === true ? undefined : this.getMeta(chunkId);
    const bytes = cache === undefined || meta === undefined || (version !== null && version !== meta.version) || this.handles.isDeleting(chunkId)
      ? await fromDisk(offsetBytes, lengthBytes)
      : await cache.read(meta, offsetBytes, lengthBytes, fromDisk);
    this.stats.readBytesTotal += lengthBytes;
    return bytes;
  }

  /**
   * The crc32c of each block the range touches, as u32 LE, a hole counted as a block of zeroes:
   * what the MDS compares between members to find where they differ without reading the data.
   * Taken under a read lock at `version`, so no change is half-applied in it.
   */
  blockSums(chunkId: number, version: number, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    return this.handles.withHandle(chunkId, (handle) => this.blocks.blockSums(handle, version, offsetBytes, lengthBytes));
  }

  /**
   * Replaces the blocks of `blocks` (whole blocks at `offsetBytes`) that fail their checksum here.
   * Each block is checked and replaced under its lock, so a block a client rewrote in the meantime
   * (now good) is left alone.
   */
  async repair(chunkId: number, version: number, offsetBytes: number, blocks: Buffer): Promise<number> {
    const repaired = await this.handles.withHandle(chunkId, (handle) => this.blocks.repair(handle, version, offsetBytes, blocks));
    if (repaired.length > 0) this.options.log.warn('blocks repaired from another replica', { chunkId, blocks: repaired });
    this.stats.repairedBlocksTotal += repaired.length;
    return repaired.length;
  }

  /** Written blocks of a range whose bytes no longer match their checksum (the scrubber's check). */
  findBadBlocks(chunkId: number, offsetBytes: number, lengthBytes: number): Promise<number[]> {
    return this.handles.withHandle(chunkId, (handle) => this.blocks.findBadBlocks(handle, offsetBytes, lengthBytes));
  }

  /**
   * Allocation of a range as flat [lengthBytes, allocated 0|1] pairs, adjacent runs merged; at
   * most CS_EXTENTS_MAX pairs, covering a prefix of the range when it is fragmented.
   */
  async blockStatus(chunkId: number, offsetBytes: number, lengthBytes: number): Promise<number[]> {
    return this.handles.withHandle(chunkId, async (handle) => {
      const extents: number[] = [];
      const endBytes = offsetBytes + lengthBytes;
      let position = offsetBytes;
      while (position < endBytes) {
        const block = Math.floor(position / BLOCK_BYTES);
        const blockEnd = Math.min(endBytes, (block + 1) * BLOCK_BYTES);
        const allocated = isWritten(handle.sums, block) ? 1 : 0;
        const last = extents.length - 2;
        if (last >= 0 && extents[last + 1] === allocated) extents[last] = (extents[last] ?? 0) + (blockEnd - position);
        else if (extents.length / 2 === CS_EXTENTS_MAX) break;
        else extents.push(blockEnd - position, allocated);
        position = blockEnd;
      }
      return extents;
    });
  }

  // ---- change tracking (changes.ts) -----------------------------------------------------------------

  /** Starts (or restarts) recording which blocks of a chunk change. */
  trackChanges(chunkId: number): void {
    this.changes.track(chunkId, this.requireMeta(chunkId).sizeBytes);
  }

  /**
   * Runs of blocks in a range as [offsetBytes, lengthBytes, allocated] with adjacent runs of equal
   * state merged. With `changedOnly`, only blocks changed since trackChanges, whose marks are
   * cleared: a change after this call marks its blocks again.
   */
  async copyRuns(chunkId: number, offsetBytes: number, lengthBytes: number, changedOnly: boolean): Promise<Array<[number, number, boolean]>> {
    if (changedOnly && !this.changes.isTracked(chunkId)) {
      throw new StorageError('ERR_INVALID_ARGUMENT', `chunk ${chunkId} has no change tracking; send TRACK_CHANGES first`);
    }
    return this.handles.withHandle(chunkId, async (handle) => {
      const runs: Array<[number, number, boolean]> = [];
      const { first, last } = blockSpan(offsetBytes, lengthBytes);
      for (let block = first; block <= last; block += 1) {
        if (changedOnly && !this.changes.take(chunkId, block)) continue;
        const allocated = isWritten(handle.sums, block);
        const previous = runs.at(-1);
        if (previous !== undefined && previous[2] === allocated && previous[0] + previous[1] === block * BLOCK_BYTES) {
          previous[1] += BLOCK_BYTES;
        } else {
          runs.push([block * BLOCK_BYTES, BLOCK_BYTES, allocated]);
        }
      }
      return runs;
    });
  }

  // ---- durability and shutdown --------------------------------------------------------------------

  /**
   * Makes every chunk file written since the last call durable, checksums included (the journal's
   * checkpoints call it). Rejects if any sync failed; the journal then stops for good.
   */
  syncDirty(): Promise<void> {
    return this.handles.syncDirty();
  }

  /**
   * Stops in order: the journal commits and checkpoints (every chunk file synced), handles close,
   * and only then is the stop recorded as clean. After a disk failure the journal is kept for
   * replay and the stop is not clean.
   */
  async close(): Promise<void> {
    await this.journal.close();
    let clean = this.journal.healthError === null;
    await this.syncDirty().catch((error: unknown) => {
      clean = false;
      this.options.log.error('chunk files could not be synced at shutdown; the journal replays at the next start', { error });
    });
    await this.handles.closeAll();
    if (clean && this.health.damage === null) await this.catalog.putState('cleanStop', 1);
    await this.catalog.close();
  }

  /** Closes at once, as a crash would (for tests that cut power to a store in this process). */
  async abandon(): Promise<void> {
    await this.journal.abandon();
    await this.handles.abandon();
    await this.catalog.close();
  }

  /**
   * A record whose files are gone (the handle cache found them missing when it opened the chunk):
   * a delete that a crash cut short after its files went (files are made durable before their
   * record, see createChunk). The record goes too.
   */
  private async finishDelete(chunkId: number): Promise<never> {
    this.options.log.warn('finishing the removal of a chunk whose files were already removed', { chunkId });
    this.options.readCache?.changingChunk(chunkId);
    await this.files.remove(chunkId);
    await this.catalog.removeChunk(chunkId);
    throw new StorageError('ERR_CHUNK_NOT_FOUND', `chunk ${chunkId} is not on this server (its removal was cut short and is now finished)`);
  }
}
