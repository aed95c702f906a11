// Chunk replicas on one disk: data files, per-block checksums, metadata, and the journal that
// makes each change durable before it is acknowledged.
//
//   chunks/<hh>/<chunkId>.data   the chunk's bytes; sparse, holes read as zeroes
//   chunks/<hh>/<chunkId>.sums   8 bytes per 4 KiB block: u32 crc32c of the block, u32 flags
//                                (bit 0: written). Flags 0 = hole: reads as zeroes, never checked.
//                                Kept in memory while the chunk is open, written at checkpoints
//                                (the layout: block_sums.ts).
//   meta/                        the catalog (LMDB): chunkId -> ChunkMeta, volumeId -> fence epoch
//
// Fences: a volume's fence epoch (the newest writer's lease epoch this server knows) is raised in
// memory at once and recorded in the catalog after. Client changes are admitted against it and
// tracked in flight per volume (admitChange), and raising a fence waits for the admitted changes
// of older epochs to finish: once a FENCE is acknowledged, no change of a fenced writer lands.
//
// Invariants: a written block's checksum matches its bytes (checked on every read, and on the
// edge blocks of a partial write before they are merged, so a bad block is never re-blessed with
// a fresh checksum); a replica's version only grows; a change reaches the journal while its block
// range is locked, so journal order equals file order for overlapping changes; a journal segment
// is recycled only after every chunk file its records went to was synced without error (a failed
// sync stops the disk for writes and keeps the journal for replay).
//
// This module says what each operation means: the catalog records, the data path under the
// range locks, journal replay, the files left over from a crash. When a chunk's files are opened,
// synced and closed is the handle cache's business (handle_cache.ts).
//
// All file I/O goes through a Disk (disk/disk.ts) and all records through a Catalog, so seeded
// tests run this very code on a simulated disk that loses, tears and fails writes.

import { crc32c } from '@node-rs/crc32';
import { join } from 'node:path';
import { StorageError, fromSystemError } from '../errors.ts';
import { BLOCK_BYTES, CS_EXTENTS_MAX } from '../limits.ts';
import { assert } from '../util/assert.ts';
import { systemClock, type Clock } from '../util/clock.ts';
import type { VolumeListEntry, VolumeDescription } from '../protocol/cs_messages.ts';
import type { Logger } from '../util/log.ts';
import {
  FLAG_WRITTEN, ZERO_BLOCK_SUM, blockCount, blockSums, clearSums, holdsWrittenBlocks, isWritten, setSum, storedSum, sumsBytes,
} from './block_sums.ts';
import { LmdbCatalog, type Catalog, type ChunkMeta } from './catalog.ts';
import { createSparseFile, readFully, writeFully, writeZeroes } from './chunk_file_io.ts';
import { isUnsupported, type Disk } from './disk/disk.ts';
import { realDisk } from './disk/real_disk.ts';
import { HandleCache, markDirty, type ChunkHandle } from './handle_cache.ts';
import { JOURNAL_RECORD_TYPE, Journal, type JournalRecord, type JournalTicket } from './journal.ts';

export type { ChunkMeta } from './catalog.ts';

/** How long a failed chunk write keeps the server reported unhealthy (new chunks go elsewhere). */
const WRITE_ERROR_MEMORY_MS = 60_000;

export interface ChunkStoreOptions {
  readonly directory: string;
  readonly openChunksMax: number;
  readonly journalSegmentBytesMax: number;
  readonly log: Logger;
  readonly disk: Disk;
  readonly clock: Clock;
  /** Opens the catalog, durably created; the daemon's is LMDB in `<directory>/meta`. */
  readonly openCatalog: (path: string) => Catalog | Promise<Catalog>;
}

export interface ChunkStoreStats {
  checksumErrorsTotal: number;
  readBytesTotal: number;
  writtenBytesTotal: number;
  zeroedBytesTotal: number;
  repairedBlocksTotal: number;
  /** Data bytes written into replicas that are not members yet or are being settled (version null): copies. */
  filledBytesTotal: number;
}

/** What the daemon runs the store on: the real disk, the system clock, LMDB. */
export const REAL_STORE_ENV: Pick<ChunkStoreOptions, 'disk' | 'clock' | 'openCatalog'> = {
  disk: realDisk,
  clock: systemClock,
  openCatalog: (path) => LmdbCatalog.open(path),
};

/** A client change admitted past the fence check, until it has landed or failed. */
interface AdmittedChange {
  readonly epoch: number;
  readonly finished: Promise<void>;
}

/**
 * How a change is checked and recorded: live changes carry the writer's version (null for a
 * replica being filled) and go through the journal; replayed ones come from the journal.
 */
type Mode = { readonly kind: 'live'; readonly version: number | null } | { readonly kind: 'replay' };
const REPLAY: Mode = { kind: 'replay' };

export class ChunkStore {
  readonly stats: ChunkStoreStats = {
    checksumErrorsTotal: 0,
    readBytesTotal: 0,
    writtenBytesTotal: 0,
    zeroedBytesTotal: 0,
    repairedBlocksTotal: 0,
    filledBytesTotal: 0,
  };
  private readonly options: ChunkStoreOptions;
  private readonly disk: Disk;
  private readonly catalog: Catalog;
  private readonly handles: HandleCache;
  /** chunks/<hh> directories known to exist with their entry synced (at most 256). */
  private readonly durableDirectories = new Set<string>();
  /** Chunk id -> bitmap of blocks changed since TRACK_CHANGES (only chunks being copied). */
  private readonly changes = new Map<number, Uint8Array>();
  private journalInstance: Journal | null = null;
  private punchSupported = true;
  /** Set when start-up found data it could not restore; reported as unhealthy to the MDS. */
  damage: string | null = null;
  private lastWriteError: { message: string; atMs: number } | null = null;
  /**
   * Fence epochs raised in this run and not yet in the catalog: a raise takes effect here at once,
   * before its record is written. An entry leaves once the catalog holds as much.
   */
  private readonly fences = new Map<number, number>();
  /** Fence records are written one at a time, in order, so a lower epoch never lands last. */
  private fenceWrites: Promise<void> = Promise.resolve();
  /** Per volume, the client changes admitted and not finished (bounded by the requests in flight). */
  private readonly admitted = new Map<number, Set<AdmittedChange>>();
  /**
   * False when the previous run did not stop cleanly (a crash, a power cut, a kill): it may have
   * died while forwarding a write, leaving members of a chunk different, so the MDS compares them.
   */
  readonly previousStopClean: boolean;

  private constructor(options: ChunkStoreOptions, catalog: Catalog) {
    this.options = options;
    this.disk = options.disk;
    this.catalog = catalog;
    this.previousStopClean = catalog.getState('cleanStop') === 1;
    this.handles = new HandleCache({
      disk: options.disk,
      openChunksMax: options.openChunksMax,
      log: options.log,
      getMeta: (chunkId) => this.getMeta(chunkId),
      paths: (chunkId) => this.paths(chunkId),
      finishDelete: (chunkId) => this.finishDelete(chunkId),
      // While the journal replays at start-up it is not there yet: the syncDirty that ends the
      // replay reports the failure instead (the cache remembers it for every later syncDirty).
      failChunkSync: (error) => void this.journalInstance?.failChunkSync(error),
    });
  }

  static async open(options: ChunkStoreOptions): Promise<ChunkStore> {
    const { disk, directory } = options;
    await disk.mkdir(join(directory, 'chunks'));
    const store = new ChunkStore(options, await options.openCatalog(join(directory, 'meta')));
    // The entry of chunks/ just created must survive a power cut like the catalog's.
    await disk.syncDirectory(directory);
    // From here until a clean close, a crash counts as an unclean stop.
    if (store.previousStopClean) await store.catalog.putState('cleanStop', 0);
    await store.removeOrphanFiles();
    store.journalInstance = await Journal.open(
      {
        disk,
        clock: options.clock,
        directory: join(directory, 'journal'),
        segmentBytesMax: options.journalSegmentBytesMax,
        batchBytesMax: 16 * 1024 * 1024,
        log: options.log,
        syncChunkFiles: () => store.syncDirty(),
      },
      (record) => store.replay(record),
    );
    return store;
  }

  get journal(): Journal {
    assert(this.journalInstance !== null, 'journal is open');
    return this.journalInstance;
  }

  get chunkCount(): number {
    return this.catalog.chunkCount();
  }

  // ---- metadata -----------------------------------------------------------------------------------

  getMeta(chunkId: number): ChunkMeta | undefined {
    return this.catalog.getChunk(chunkId);
  }

  fenceEpoch(volumeId: number): number {
    return Math.max(this.fences.get(volumeId) ?? 0, this.catalog.getFence(volumeId));
  }

  /**
   * Fences writers of `volumeId` below `epoch`: from this call on (synchronously) their changes are
   * refused; the returned promise resolves once every change of theirs admitted before has
   * finished (landed or failed) and the fence is recorded. A FENCE is acknowledged only then, so a
   * change that passed the check but still waited (for the block lock, for the journal) can never
   * land after the takeover was acknowledged. Epochs only grow.
   */
  async raiseFence(volumeId: number, epoch: number): Promise<void> {
    assert(Number.isSafeInteger(epoch) && epoch >= 0, 'fence epochs are whole numbers');
    if (epoch > this.fenceEpoch(volumeId)) this.fences.set(volumeId, epoch);
    const older = [...(this.admitted.get(volumeId) ?? [])].filter((change) => change.epoch < epoch);
    if (older.length > 0) await Promise.all(older.map((change) => change.finished));
    // Nothing ahead of the catalog: no record to wait for (and no wait behind other volumes' records).
    if (this.fences.has(volumeId)) await this.recordFence(volumeId);
  }

  /** Writes the volume's fence epoch to the catalog if it is ahead there (in order, see fenceWrites). */
  private recordFence(volumeId: number): Promise<void> {
    const write = this.fenceWrites.then(async () => {
      const epoch = this.fences.get(volumeId);
      if (epoch === undefined) return;
      if (epoch > this.catalog.getFence(volumeId)) await this.catalog.putFence(volumeId, epoch);
      // Raised again meanwhile? Then that raise's own write records it.
      if (this.fences.get(volumeId) === epoch) this.fences.delete(volumeId);
    });
    this.fenceWrites = write.catch(() => undefined);
    return write;
  }

  /**
   * Runs `change`, a client's WRITE or ZERO to `volumeId` under lease `epoch` (its local write and
   * its forwards), unless a newer epoch has fenced that writer (ERR_LEASE_FENCED). The check and
   * the registration in flight happen in one synchronous step, so a raiseFence either comes
   * before (the change is refused) or waits for the change to finish. A takeover waits for
   * `change`, so it must be bounded: its I/O, its forwards (the peer timeout) and, when members
   * refused it as fenced, its report to the MDS (the MDS client's timeout).
   */
  async admitChange<T>(volumeId: number, epoch: number, change: () => Promise<T>): Promise<T> {
    const fence = this.fenceEpoch(volumeId);
    if (epoch < fence) {
      throw new StorageError(
        'ERR_LEASE_FENCED',
        `write to volume ${volumeId} carries lease epoch ${epoch}, but epoch ${fence} has taken over`,
      );
    }
    let finish!: () => void;
    const admitted: AdmittedChange = { epoch, finished: new Promise<void>((resolve) => (finish = resolve)) };
    let inFlight = this.admitted.get(volumeId);
    if (inFlight === undefined) {
      inFlight = new Set();
      this.admitted.set(volumeId, inFlight);
    }
    inFlight.add(admitted);
    try {
      return await change();
    } finally {
      inFlight.delete(admitted);
      if (inFlight.size === 0 && this.admitted.get(volumeId) === inFlight) this.admitted.delete(volumeId);
      finish();
    }
  }

  /** Changes admitted and not finished, all volumes (for tests and metrics). */
  get admittedCount(): number {
    let count = 0;
    for (const inFlight of this.admitted.values()) count += inFlight.size;
    return count;
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
    const paths = this.paths(meta.chunkId);
    try {
      if (!this.durableDirectories.has(paths.directory)) {
        await this.disk.mkdir(paths.directory);
        await this.disk.syncDirectory(join(this.options.directory, 'chunks'));
        this.durableDirectories.add(paths.directory);
      }
      await Promise.all([
        createSparseFile(this.disk, paths.data, meta.sizeBytes),
        createSparseFile(this.disk, paths.sums, sumsBytes(meta.sizeBytes)),
      ]);
      await this.disk.syncDirectory(paths.directory);
    } catch (error) {
      throw this.noteWriteError(fromSystemError(error, `creating chunk ${meta.chunkId}`));
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
    this.changes.delete(chunkId);
    await this.handles.closeForDelete(chunkId, async () => {
      await this.removeFiles(chunkId);
      await this.catalog.removeChunk(chunkId);
    });
  }

  private async removeFiles(chunkId: number): Promise<void> {
    const paths = this.paths(chunkId);
    await this.disk.remove(paths.data);
    await this.disk.remove(paths.sums);
    await this.disk.syncDirectory(paths.directory);
  }

  // ---- data -------------------------------------------------------------------------------------

  /**
   * Writes `data` at `offsetBytes` and resolves when the change is durable. `version` is the
   * version the writer holds, checked under the block lock so that a version change (which takes
   * the whole chunk's lock) cleanly separates writes before it from writes after it; null for a
   * replica being filled, which is not a member yet.
   */
  async write(chunkId: number, version: number | null, offsetBytes: number, data: Buffer): Promise<void> {
    await this.handles.withHandle(chunkId, (handle) => this.applyWrite(handle, offsetBytes, data, { kind: 'live', version }));
    this.stats.writtenBytesTotal += data.length;
    if (version === null) this.stats.filledBytesTotal += data.length;
  }

  /** Zeroes a range (whole blocks become holes) and resolves when the change is durable. */
  async zero(chunkId: number, version: number | null, offsetBytes: number, lengthBytes: number): Promise<void> {
    await this.handles.withHandle(chunkId, (handle) => this.applyZero(handle, offsetBytes, lengthBytes, { kind: 'live', version }));
    this.stats.zeroedBytesTotal += lengthBytes;
  }

  /** Reads a range, every written block checked against its checksum (ERR_CHECKSUM if one fails). */
  async read(chunkId: number, version: number | null, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const bytes = await this.handles.withHandle(chunkId, (handle) => this.readLocked(handle, offsetBytes, lengthBytes, version));
    this.stats.readBytesTotal += lengthBytes;
    return bytes;
  }

  /**
   * The crc32c of each block the range touches, as u32 LE, a hole counted as a block of zeroes:
   * what the MDS compares between members to find where they differ without reading the data.
   * Taken under a read lock at `version`, so no change is half-applied in it.
   */
  async blockSums(chunkId: number, version: number, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    return this.handles.withHandle(chunkId, async (handle) => {
      const { first, last } = blockSpan(offsetBytes, lengthBytes);
      const release = await handle.lock.acquire(first, last, false);
      try {
        this.checkVersion(handle.meta.chunkId, { kind: 'live', version });
        const out = Buffer.allocUnsafe((last - first + 1) * 4);
        for (let block = first; block <= last; block += 1) {
          out.writeUInt32LE(isWritten(handle.sums, block) ? storedSum(handle.sums, block) : ZERO_BLOCK_SUM, (block - first) * 4);
        }
        return out;
      } finally {
        release();
      }
    });
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
        return updated;
      } finally {
        release();
      }
    });
  }

  /** Starts (or restarts) recording which blocks of a chunk change. */
  trackChanges(chunkId: number): void {
    const meta = this.requireMeta(chunkId);
    this.changes.set(chunkId, new Uint8Array(Math.ceil(meta.sizeBytes / BLOCK_BYTES / 8)));
  }

  /**
   * Runs of blocks in a range as [offsetBytes, lengthBytes, allocated] with adjacent runs of equal
   * state merged. With `changedOnly`, only blocks changed since trackChanges, whose marks are
   * cleared: a change after this call marks its blocks again.
   */
  async copyRuns(chunkId: number, offsetBytes: number, lengthBytes: number, changedOnly: boolean): Promise<Array<[number, number, boolean]>> {
    const changed = this.changes.get(chunkId);
    if (changedOnly && changed === undefined) {
      throw new StorageError('ERR_INVALID_ARGUMENT', `chunk ${chunkId} has no change tracking; send TRACK_CHANGES first`);
    }
    return this.handles.withHandle(chunkId, async (handle) => {
      const runs: Array<[number, number, boolean]> = [];
      const { first, last } = blockSpan(offsetBytes, lengthBytes);
      for (let block = first; block <= last; block += 1) {
        if (changedOnly && changed !== undefined) {
          if (!testBit(changed, block)) continue;
          clearBit(changed, block);
        }
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

  /**
   * Replaces the blocks of `blocks` (whole blocks at `offsetBytes`) that fail their checksum here.
   * Each block is checked and replaced under its lock, so a block a client rewrote in the meantime
   * (now good) is left alone.
   */
  async repair(chunkId: number, version: number, offsetBytes: number, blocks: Buffer): Promise<number> {
    const repaired = await this.handles.withHandle(chunkId, async (handle) => {
      const replaced: number[] = [];
      const first = offsetBytes / BLOCK_BYTES;
      for (let block = first; block < first + blocks.length / BLOCK_BYTES; block += 1) {
        const release = await handle.lock.acquire(block, block, true);
        try {
          if (!(await this.blockIsBad(handle, block))) continue;
          const start = (block - first) * BLOCK_BYTES;
          await this.writeLocked(handle, block * BLOCK_BYTES, blocks.subarray(start, start + BLOCK_BYTES), { kind: 'live', version });
          replaced.push(block);
        } finally {
          release();
        }
      }
      return replaced;
    });
    if (repaired.length > 0) this.options.log.warn('blocks repaired from another replica', { chunkId, blocks: repaired });
    this.stats.repairedBlocksTotal += repaired.length;
    return repaired.length;
  }

  private async blockIsBad(handle: ChunkHandle, block: number): Promise<boolean> {
    if (!isWritten(handle.sums, block)) return false;
    const bytes = Buffer.allocUnsafe(BLOCK_BYTES);
    await readFully(handle.data, bytes, block * BLOCK_BYTES);
    return crc32c(bytes) !== storedSum(handle.sums, block);
  }


  /** Written blocks of a range whose bytes no longer match their checksum (the scrubber's check). */
  async findBadBlocks(chunkId: number, offsetBytes: number, lengthBytes: number): Promise<number[]> {
    return this.handles.withHandle(chunkId, async (handle) => {
      const { first, last } = blockSpan(offsetBytes, lengthBytes);
      const release = await handle.lock.acquire(first, last, false);
      try {
        const bytes = Buffer.allocUnsafe((last - first + 1) * BLOCK_BYTES);
        await readFully(handle.data, bytes, first * BLOCK_BYTES);
        const bad: number[] = [];
        for (let block = first; block <= last; block += 1) {
          if (!isWritten(handle.sums, block)) continue;
          const start = (block - first) * BLOCK_BYTES;
          if (crc32c(bytes.subarray(start, start + BLOCK_BYTES)) !== storedSum(handle.sums, block)) bad.push(block);
        }
        return bad;
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

  /** Under the block lock: the writer's version must be the replica's. */
  private checkVersion(chunkId: number, mode: Mode): void {
    if (mode.kind !== 'live' || mode.version === null) return;
    const meta = this.requireMeta(chunkId);
    if (meta.version !== mode.version) {
      throw new StorageError(
        'ERR_CHUNK_VERSION',
        `chunk ${chunkId} is at version ${meta.version} here, the request carries version ${mode.version}`,
      );
    }
  }

  private markChanged(chunkId: number, first: number, last: number): void {
    const changed = this.changes.get(chunkId);
    if (changed === undefined) return;
    for (let block = first; block <= last; block += 1) setBit(changed, block);
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

  /**
   * Applies a write under the block-range lock, write-ahead: the journal record is durable before
   * the chunk file changes, so after a crash every change found in a chunk file since the last
   * checkpoint is also in the journal, and replay makes file and checksums agree again.
   */
  private async applyWrite(handle: ChunkHandle, offsetBytes: number, data: Buffer, mode: Mode): Promise<void> {
    const { first, last } = blockSpan(offsetBytes, data.length);
    const release = await handle.lock.acquire(first, last, true);
    try {
      await this.writeLocked(handle, offsetBytes, data, mode);
    } finally {
      release();
    }
  }

  /** The body of applyWrite; the caller holds the exclusive lock on the write's blocks. */
  private async writeLocked(handle: ChunkHandle, offsetBytes: number, data: Buffer, mode: Mode): Promise<void> {
    const { first, last } = blockSpan(offsetBytes, data.length);
    let ticket: JournalTicket | null = null;
    try {
      this.checkVersion(handle.meta.chunkId, mode);
      const alignedStart = first * BLOCK_BYTES;
      const alignedBytes = (last - first + 1) * BLOCK_BYTES;
      let blocks = data;
      if (offsetBytes !== alignedStart || data.length !== alignedBytes) {
        blocks = Buffer.allocUnsafe(alignedBytes);
        await this.readEdgeBlocks(handle, first, last, blocks, mode);
        data.copy(blocks, offsetBytes - alignedStart);
      }
      if (mode.kind === 'live') ticket = this.journal.append(JOURNAL_RECORD_TYPE.WRITE, handle.meta.chunkId, offsetBytes, data.length, data);
      // Checksums are computed while the journal commit is under way.
      const sums = blockSums(blocks);
      await ticket?.durable;
      await this.writeData(handle, blocks, alignedStart);
      for (const [index, crc] of sums.entries()) setSum(handle.sums, first + index, crc, FLAG_WRITTEN);
      markDirty(handle, first, last);
      this.markChanged(handle.meta.chunkId, first, last);
    } finally {
      ticket?.applied();
    }
  }


  /** Zeroes a range under the lock, write-ahead as applyWrite; whole blocks become holes. */
  private async applyZero(handle: ChunkHandle, offsetBytes: number, lengthBytes: number, mode: Mode): Promise<void> {
    const { first, last } = blockSpan(offsetBytes, lengthBytes);
    const release = await handle.lock.acquire(first, last, true);
    let ticket: JournalTicket | null = null;
    try {
      this.checkVersion(handle.meta.chunkId, mode);
      const endBytes = offsetBytes + lengthBytes;
      const fullFirst = Math.ceil(offsetBytes / BLOCK_BYTES);
      const fullLast = Math.floor(endBytes / BLOCK_BYTES) - 1;
      const edges: Array<{ block: number; bytes: Buffer }> = [];
      for (const block of new Set([first, last])) {
        // Whole blocks are deallocated below; a hole already reads as zeroes in every byte.
        if ((block >= fullFirst && block <= fullLast) || !isWritten(handle.sums, block)) continue;
        const bytes = Buffer.allocUnsafe(BLOCK_BYTES);
        await this.readEdgeBlocks(handle, block, block, bytes, mode);
        const blockStart = block * BLOCK_BYTES;
        bytes.fill(0, Math.max(offsetBytes, blockStart) - blockStart, Math.min(endBytes, blockStart + BLOCK_BYTES) - blockStart);
        edges.push({ block, bytes });
      }
      if (mode.kind === 'live') ticket = this.journal.append(JOURNAL_RECORD_TYPE.ZERO, handle.meta.chunkId, offsetBytes, lengthBytes);
      await ticket?.durable;
      for (const { block, bytes } of edges) {
        await this.writeData(handle, bytes, block * BLOCK_BYTES);
        setSum(handle.sums, block, crc32c(bytes), FLAG_WRITTEN);
        markDirty(handle, block, block);
      }
      if (fullFirst <= fullLast) await this.deallocateBlocks(handle, fullFirst, fullLast);
      this.markChanged(handle.meta.chunkId, first, last);
    } finally {
      ticket?.applied();
      release();
    }
  }

  private async deallocateBlocks(handle: ChunkHandle, first: number, last: number): Promise<void> {
    const startBytes = first * BLOCK_BYTES;
    const lengthBytes = (last - first + 1) * BLOCK_BYTES;
    try {
      if (this.punchSupported) {
        try {
          await handle.data.punchHole(startBytes, lengthBytes);
        } catch (error) {
          if (!isUnsupported(error)) throw error;
          this.options.log.warn('file system cannot punch holes: zeroing instead (space is not given back)');
          this.punchSupported = false;
        }
      }
      if (!this.punchSupported) await writeZeroes(handle.data, startBytes, lengthBytes);
    } catch (error) {
      throw this.noteWriteError(fromSystemError(error, `zeroing blocks of chunk ${handle.meta.chunkId}`));
    }
    clearSums(handle.sums, first, last);
    markDirty(handle, first, last);
  }

  /** Fills the first and last block of `target` (blocks first..last) from disk, checked. */
  private async readEdgeBlocks(handle: ChunkHandle, first: number, last: number, target: Buffer, mode: Mode): Promise<void> {
    for (const block of new Set([first, last])) {
      const start = (block - first) * BLOCK_BYTES;
      const view = target.subarray(start, start + BLOCK_BYTES);
      if (!isWritten(handle.sums, block)) {
        view.fill(0);
        continue;
      }
      await readFully(handle.data, view, block * BLOCK_BYTES);
      // During replay a block may hold a torn, never-acknowledged write; the record rewrites it.
      if (mode.kind === 'live') this.verifyBlock(handle, block, view);
    }
  }

  private async writeData(handle: ChunkHandle, bytes: Buffer, position: number): Promise<void> {
    try {
      await writeFully(handle.data, bytes, position);
    } catch (error) {
      throw this.noteWriteError(fromSystemError(error, `writing chunk ${handle.meta.chunkId}`));
    }
  }

  /** A failed write (disk full, disk error) makes the server report itself unhealthy for a while. */
  private noteWriteError(error: StorageError): StorageError {
    this.lastWriteError = { message: error.message, atMs: this.options.clock.nowMs() };
    this.options.log.error('chunk write failed', { code: error.code, message: error.message });
    return error;
  }

  /** Why this server should not get new replicas now, or null. */
  get healthProblem(): string | null {
    const journal = this.journal.healthError;
    if (journal !== null) return journal.message;
    if (this.damage !== null) return this.damage;
    if (this.lastWriteError !== null && this.options.clock.nowMs() - this.lastWriteError.atMs < WRITE_ERROR_MEMORY_MS) {
      return this.lastWriteError.message;
    }
    return null;
  }

  private async readLocked(handle: ChunkHandle, offsetBytes: number, lengthBytes: number, version: number | null): Promise<Buffer> {
    const { first, last } = blockSpan(offsetBytes, lengthBytes);
    const alignedStart = first * BLOCK_BYTES;
    const alignedBytes = (last - first + 1) * BLOCK_BYTES;
    let anyWritten = false;
    for (let block = first; block <= last && !anyWritten; block += 1) anyWritten = isWritten(handle.sums, block);
    const release = await handle.lock.acquire(first, last, false);
    try {
      this.checkVersion(handle.meta.chunkId, { kind: 'live', version });
      if (!anyWritten) return Buffer.alloc(lengthBytes);
      const bytes = Buffer.allocUnsafe(alignedBytes);
      await readFully(handle.data, bytes, alignedStart);
      for (let block = first; block <= last; block += 1) {
        const view = bytes.subarray((block - first) * BLOCK_BYTES, (block - first + 1) * BLOCK_BYTES);
        if (isWritten(handle.sums, block)) this.verifyBlock(handle, block, view);
        else view.fill(0);
      }
      return bytes.subarray(offsetBytes - alignedStart, offsetBytes - alignedStart + lengthBytes);
    } finally {
      release();
    }
  }

  private verifyBlock(handle: ChunkHandle, block: number, bytes: Buffer): void {
    const expected = storedSum(handle.sums, block);
    const actual = crc32c(bytes);
    if (expected === actual) return;
    this.stats.checksumErrorsTotal += 1;
    this.options.log.error('checksum mismatch', { chunkId: handle.meta.chunkId, block, expected, actual });
    throw new StorageError(
      'ERR_CHECKSUM',
      `chunk ${handle.meta.chunkId} block ${block} (bytes ${block * BLOCK_BYTES}..${(block + 1) * BLOCK_BYTES}) failed its checksum`,
    );
  }

  // ---- journal replay and checkpoints ---------------------------------------------------------------

  private async replay(record: JournalRecord): Promise<void> {
    const meta = this.getMeta(record.chunkId);
    if (meta === undefined) return; // deleted after the record was written
    if (record.offsetBytes + record.lengthBytes > meta.sizeBytes) {
      this.options.log.error('journal record outside its chunk: skipped', { chunkId: record.chunkId, segment: record.segmentNumber, index: record.index });
      return;
    }
    try {
      await this.handles.withHandle(record.chunkId, async (handle) => {
        if (record.type === JOURNAL_RECORD_TYPE.WRITE) await this.applyWrite(handle, record.offsetBytes, record.payload, REPLAY);
        else await this.applyZero(handle, record.offsetBytes, record.lengthBytes, REPLAY);
      });
    } catch (error) {
      // The server still starts, to serve what it has, but it says it is damaged; the journal,
      // told by the rejection, keeps its segments for the next start and takes no writes.
      const failure = fromSystemError(error, `replaying journal record ${record.segmentNumber}/${record.index} into chunk ${record.chunkId}`);
      this.damage = failure.message;
      this.options.log.error('journal replay failed for a record', { segment: record.segmentNumber, index: record.index, chunkId: record.chunkId, error: failure });
      throw failure;
    }
  }

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
    if (clean && this.damage === null) await this.catalog.putState('cleanStop', 1);
    await this.catalog.close();
  }

  /** Closes at once, as a crash would (for tests that cut power to a store in this process). */
  async abandon(): Promise<void> {
    await this.journal.abandon();
    await this.handles.abandon();
    await this.catalog.close();
  }

  // ---- chunk files: where they are, deletes a crash cut short, leftovers at start ----------------------

  /**
   * A record whose files are gone (the handle cache found them missing when it opened the chunk):
   * a delete that a crash cut short after its files went (files are made durable before their
   * record, see createChunk). The record goes too.
   */
  private async finishDelete(chunkId: number): Promise<never> {
    this.options.log.warn('finishing the removal of a chunk whose files were already removed', { chunkId });
    await this.removeFiles(chunkId);
    await this.catalog.removeChunk(chunkId);
    throw new StorageError('ERR_CHUNK_NOT_FOUND', `chunk ${chunkId} is not on this server (its removal was cut short and is now finished)`);
  }

  private paths(chunkId: number): { directory: string; data: string; sums: string } {
    const directory = join(this.options.directory, 'chunks', (chunkId % 256).toString(16).padStart(2, '0'));
    return { directory, data: join(directory, `${chunkId}.data`), sums: join(directory, `${chunkId}.sums`) };
  }

  /**
   * Files of chunks without a catalog record. A crash between creating a chunk's files and its
   * record leaves them empty: removed. Files that hold written blocks are never removed on sight
   * (a lost or damaged catalog must not destroy data): they are moved to `orphaned/` and logged.
   */
  private async removeOrphanFiles(): Promise<void> {
    const chunksDir = join(this.options.directory, 'chunks');
    const kept: string[] = [];
    for (const sub of await this.disk.readdir(chunksDir)) {
      for (const name of await this.disk.readdir(join(chunksDir, sub))) {
        const match = /^(\d+)\.sums$/.exec(name);
        if (match === null || this.getMeta(Number(match[1])) !== undefined) continue;
        const chunkId = Number(match[1]);
        const paths = this.paths(chunkId);
        if (holdsWrittenBlocks(await this.disk.readFile(paths.sums))) {
          await this.setAside(chunkId);
          kept.push(String(chunkId));
          continue;
        }
        this.options.log.warn('removing the files of a chunk whose creation never completed', { chunkId });
        await this.disk.remove(paths.data);
        await this.disk.remove(paths.sums);
      }
      for (const name of await this.disk.readdir(join(chunksDir, sub))) {
        const match = /^(\d+)\.data$/.exec(name);
        // A data file whose checksums are gone holds nothing this server could vouch for.
        if (match !== null && this.getMeta(Number(match[1])) === undefined) await this.disk.remove(join(chunksDir, sub, name));
      }
    }
    // Not a reason to stop taking replicas: the data is kept aside for an admin to look at.
    if (kept.length > 0) this.options.log.error('chunk files with data but no catalog record were set aside in orphaned/, not deleted', { chunks: kept });
  }

  private async setAside(chunkId: number): Promise<void> {
    const orphaned = join(this.options.directory, 'orphaned');
    await this.disk.mkdir(orphaned);
    const paths = this.paths(chunkId);
    await this.disk.rename(paths.sums, join(orphaned, `${chunkId}.sums`));
    await this.disk.rename(paths.data, join(orphaned, `${chunkId}.data`)).catch(() => undefined);
    await this.disk.syncDirectory(orphaned);
    await this.disk.syncDirectory(this.options.directory);
    await this.disk.syncDirectory(paths.directory);
  }
}

function blockSpan(offsetBytes: number, lengthBytes: number): { first: number; last: number } {
  assert(lengthBytes > 0, 'block span of a non-empty range');
  return { first: Math.floor(offsetBytes / BLOCK_BYTES), last: Math.floor((offsetBytes + lengthBytes - 1) / BLOCK_BYTES) };
}

function testBit(bits: Uint8Array, index: number): boolean {
  return ((bits[index >> 3] ?? 0) & (1 << (index & 7))) !== 0;
}

function setBit(bits: Uint8Array, index: number): void {
  bits[index >> 3] = (bits[index >> 3] ?? 0) | (1 << (index & 7));
}

function clearBit(bits: Uint8Array, index: number): void {
  bits[index >> 3] = (bits[index >> 3] ?? 0) & ~(1 << (index & 7));
}
