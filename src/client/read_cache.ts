// The NBD server's local read cache (--cache-dir, --cache-size): 64 KiB blocks of the volumes it
// serves, in one file of fixed slots on a local SSD, shared by every volume of the process.
//
// It can never return old or wrong bytes:
// - a block's key names the volume, its cache generation, the chunk's id and version, and the
//   block. A volume keeps its generation across this host's close and next open only when that
//   open's lease epoch directly follows the one it closed cleanly with (nobody else opened it for
//   write in between: every write open raises the epoch); after another host took the lease, a
//   lease lost, or anything else, the generation moves on and nothing cached before is found. A
//   change of a chunk's members (a new version) likewise;
// - a write, zeroing or trim through this host drops the blocks it touches, and a block read
//   from the chunk servers while such a change was in flight is not taken in (`changeSeq`);
// - each cached block's crc32c is kept in memory and checked on every hit: a corrupted cache file
//   is a miss (the block is dropped and counted), never wrong data;
// - the file is emptied at start: nothing survives a restart, whose index would be gone anyway;
// - a volume whose lease is lost, or not confirmed lately, is not served from the cache (volume.ts).
// Losing the cache device loses nothing: every block is also on the chunk servers.
//
// Which blocks it takes in: cache_admission.ts (TinyLFU; sequential scans skipped). Eviction:
// least recently used. Memory: an index entry per slot (bounded by --cache-size / 64 KiB) and
// the frequency sketch (a few bytes per slot).

import { open, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32c } from '@node-rs/crc32';
import { StorageError } from '../errors.ts';
import { assert } from '../util/assert.ts';
import { lockFile, mkdirDurable } from '../util/fs.ts';
import type { Logger } from '../util/log.ts';
import { FrequencySketch, SequentialDetector, hashKey } from './cache_admission.ts';

export const CACHE_BLOCK_BYTES = 64 * 1024;
/** The smallest cache worth having: 16 blocks. */
export const CACHE_BYTES_MIN = 16 * CACHE_BLOCK_BYTES;
/** The slot file's name in --cache-dir. */
export const READ_CACHE_FILE = 'read-cache.bin';
/** A stream of reads past this many bytes is a scan: not taken in, not counted. */
const SEQUENTIAL_BYTES = 512 * 1024;
/** A read continues a stream when it starts within this many of its own lengths of where the stream got to. */
const SEQUENTIAL_NEAR_LENGTHS = 8;
/** Changes remembered for the in-flight check; a read older than the oldest one is not taken in. */
const CHANGES_KEPT = 1024;
/** Volumes whose generation is remembered (the oldest forgotten, with its blocks). */
const VOLUMES_MAX = 65_536;

export interface ReadCacheStats {
  hits: number;
  misses: number;
  admissions: number;
  evictions: number;
  /** Blocks that failed their checksum in the cache file (dropped, read from the chunk servers). */
  corrupt: number;
  /** Blocks dropped by writes through this host, and by volumes closed or fenced. */
  invalidations: number;
}

interface Entry {
  readonly slot: number;
  readonly crc: number;
  readonly volumeId: number;
}

/** Where a block lives: the key's parts, as the volume knows them at read time. */
export interface BlockAddress {
  readonly volumeId: number;
  /** The volume's cache generation (openVolume). */
  readonly generation: number;
  readonly chunkId: number;
  readonly version: number;
  /** The block's index in the volume (its byte offset / CACHE_BLOCK_BYTES). */
  readonly blockIndex: number;
}

export class ReadCache {
  readonly stats: ReadCacheStats = { hits: 0, misses: 0, admissions: 0, evictions: 0, corrupt: 0, invalidations: 0 };
  readonly capacityBytes: number;
  private readonly file: FileHandle;
  private readonly releaseLock: () => Promise<void>;
  private readonly log: Logger;
  private readonly slots: number;
  /** key -> entry, in least-recently-used-first order (a hit moves it to the end). */
  private readonly index = new Map<string, Entry>();
  /** volumeId -> the volume's blocks in the cache, as block index -> key (for invalidation). */
  private readonly byVolume = new Map<number, Map<number, Set<string>>>();
  private readonly free: number[] = [];
  private readonly sketch: FrequencySketch;
  private readonly sequential = new SequentialDetector(SEQUENTIAL_BYTES, SEQUENTIAL_NEAR_LENGTHS);
  /** Grows with every change through this host; each volume's last changes kept as (seq, first and last block). */
  private changeSeq = 0;
  private readonly changes = new Map<number, Array<{ seq: number; firstBlock: number; lastBlock: number }>>();
  /** Per volume served: its generation, and the epoch of the lease it last closed cleanly with. */
  private readonly volumes = new Map<number, { generation: number; closedEpoch: number | null }>();

  private constructor(file: FileHandle, capacityBytes: number, log: Logger, releaseLock: () => Promise<void>) {
    this.releaseLock = releaseLock;
    this.file = file;
    this.log = log;
    this.capacityBytes = capacityBytes;
    this.slots = Math.floor(capacityBytes / CACHE_BLOCK_BYTES);
    for (let slot = this.slots - 1; slot >= 0; slot -= 1) this.free.push(slot);
    this.sketch = new FrequencySketch(this.slots * 4, this.slots * 10);
  }

  /** Opens (emptying) the cache file in `dir`, of `sizeBytes` rounded down to whole blocks. */
  static async open(dir: string, sizeBytes: number, log: Logger): Promise<ReadCache> {
    if (sizeBytes < CACHE_BYTES_MIN) {
      throw new StorageError('ERR_CONFIG', `--cache-size must be at least ${CACHE_BYTES_MIN} bytes (16 blocks of 64 KiB)`);
    }
    await mkdirDurable(dir);
    // One process per cache directory: two would write each other's slots.
    const lock = await lockFile(join(dir, 'lock'));
    if (!('release' in lock)) {
      throw new StorageError('ERR_CONFIG', `the read cache in ${dir} is in use by process ${lock.heldBy}: give each NBD server its own --cache-dir`);
    }
    const path = join(dir, READ_CACHE_FILE);
    // What a previous process cached has no index any more: start empty.
    await rm(path, { force: true });
    const file = await open(path, 'w+', 0o600);
    const capacityBytes = Math.floor(sizeBytes / CACHE_BLOCK_BYTES) * CACHE_BLOCK_BYTES;
    await file.truncate(capacityBytes);
    log.info('read cache ready', { path, capacityBytes });
    return new ReadCache(file, capacityBytes, log, lock.release);
  }

  /**
   * A write open of a volume at lease `epoch`: its cache generation. What was cached under this
   * host's last lease stays valid only if that lease was closed cleanly at `epoch - 1`.
   */
  openVolume(volumeId: number, epoch: number): number {
    const state = this.volumes.get(volumeId);
    if (state !== undefined && state.closedEpoch !== null && epoch === state.closedEpoch + 1) {
      state.closedEpoch = null;
      return state.generation;
    }
    this.invalidateVolume(volumeId);
    const generation = (state?.generation ?? 0) + 1;
    if (state === undefined && this.volumes.size >= VOLUMES_MAX) {
      const oldest = this.volumes.keys().next();
      if (oldest.done !== true) {
        this.invalidateVolume(oldest.value);
        this.volumes.delete(oldest.value);
      }
    }
    this.volumes.set(volumeId, { generation, closedEpoch: null });
    return generation;
  }

  /** The write open closes: cleanly (its lease released, never lost), its blocks may serve the next open. */
  closeVolume(volumeId: number, epoch: number, clean: boolean): void {
    const state = this.volumes.get(volumeId);
    if (state === undefined) return;
    if (clean) {
      state.closedEpoch = epoch;
      return;
    }
    state.closedEpoch = null;
    this.invalidateVolume(volumeId);
  }

  get usedBytes(): number {
    return this.index.size * CACHE_BLOCK_BYTES;
  }

  /**
   * Notes a read of `lengthBytes` at `offsetBytes` of a volume: whether it is part of a scan
   * (then nothing is counted or taken in for it).
   */
  noteRead(volumeId: number, offsetBytes: number, lengthBytes: number): { scan: boolean } {
    return { scan: this.sequential.isSequential(volumeId, offsetBytes, lengthBytes) };
  }

  /** The block's bytes if cached and intact, else null; counts the access (unless `scan`). */
  async lookup(address: BlockAddress, scan: boolean): Promise<Buffer | null> {
    const key = keyOf(address);
    if (!scan) this.sketch.increment(hashKey(key));
    const entry = this.index.get(key);
    if (entry === undefined) {
      this.stats.misses += 1;
      return null;
    }
    // Most recently used: to the end.
    this.index.delete(key);
    this.index.set(key, entry);
    const block = Buffer.allocUnsafe(CACHE_BLOCK_BYTES);
    let bytesRead = 0;
    try {
      ({ bytesRead } = await this.file.read(block, 0, CACHE_BLOCK_BYTES, entry.slot * CACHE_BLOCK_BYTES));
    } catch (error) {
      // A failing cache device costs misses, never a guest's read.
      this.log.warn('the read cache could not read a block: read from the chunk servers', { slot: entry.slot, error });
    }
    // The slot may have been given to another block meanwhile: the checksum tells.
    if (bytesRead !== CACHE_BLOCK_BYTES || crc32c(block) !== entry.crc) {
      if (this.index.get(key) === entry) {
        this.stats.corrupt += 1;
        this.drop(key, entry);
        this.log.warn('a read-cache block failed its checksum: dropped, read from the chunk servers', { slot: entry.slot });
      }
      this.stats.misses += 1;
      return null;
    }
    this.stats.hits += 1;
    return block;
  }

  /** Whether the block is cached (counts nothing). */
  has(address: BlockAddress): boolean {
    return this.index.has(keyOf(address));
  }

  /** A block looked up in vain (it was not all there): counted as a miss, and as an access unless `scan`. */
  noteMiss(address: BlockAddress, scan: boolean): void {
    if (!scan) this.sketch.increment(hashKey(keyOf(address)));
    this.stats.misses += 1;
  }

  /** The change sequence now: a block read after this may be taken in if no change overlapped it since. */
  get sequence(): number {
    return this.changeSeq;
  }

  /** Whether a block that missed should be read whole and taken in. */
  wants(address: BlockAddress, scan: boolean): boolean {
    if (scan) return false;
    const frequency = this.sketch.frequency(hashKey(keyOf(address)));
    if (frequency < 2) return false;
    if (this.free.length > 0) return true;
    const victim = this.index.keys().next();
    return victim.done !== true && frequency > this.sketch.frequency(hashKey(victim.value));
  }

  /** Takes a block in (read whole from the chunk servers since `sinceSeq`), evicting the least recently used one if full. */
  async admit(address: BlockAddress, block: Buffer, sinceSeq: number): Promise<void> {
    assert(block.length === CACHE_BLOCK_BYTES, 'the cache takes whole blocks');
    const key = keyOf(address);
    if (this.index.has(key) || this.changedSince(address, sinceSeq)) return;
    let slot = this.free.pop();
    if (slot === undefined) {
      const victim = this.index.entries().next();
      if (victim.done === true) return;
      this.drop(victim.value[0], victim.value[1]);
      this.stats.evictions += 1;
      slot = this.free.pop();
      if (slot === undefined) return;
    }
    // Summed before the write: what the slot is checked against is what was handed in.
    const crc = crc32c(block);
    try {
      await this.file.write(block, 0, CACHE_BLOCK_BYTES, slot * CACHE_BLOCK_BYTES);
    } catch (error) {
      this.free.push(slot);
      this.log.warn('could not write to the read cache; the block is read from the chunk servers', { error });
      return;
    }
    // A change may have landed while the slot was written.
    if (this.index.has(key) || this.changedSince(address, sinceSeq)) {
      this.free.push(slot);
      return;
    }
    const entry: Entry = { slot, crc, volumeId: address.volumeId };
    this.index.set(key, entry);
    let blocks = this.byVolume.get(address.volumeId);
    if (blocks === undefined) {
      blocks = new Map();
      this.byVolume.set(address.volumeId, blocks);
    }
    let keys = blocks.get(address.blockIndex);
    if (keys === undefined) {
      keys = new Set();
      blocks.set(address.blockIndex, keys);
    }
    keys.add(key);
    this.stats.admissions += 1;
  }

  /** A write, zeroing or trim through this host of blocks first..last of a volume: they leave the cache. */
  invalidate(volumeId: number, firstBlock: number, lastBlock: number): void {
    this.changeSeq += 1;
    let changes = this.changes.get(volumeId);
    if (changes === undefined) {
      if (this.changes.size >= VOLUMES_MAX) {
        const oldest = this.changes.keys().next();
        if (oldest.done !== true) this.changes.delete(oldest.value);
      }
      changes = [];
      this.changes.set(volumeId, changes);
    }
    changes.push({ seq: this.changeSeq, firstBlock, lastBlock });
    if (changes.length > CHANGES_KEPT) changes.shift();
    const blocks = this.byVolume.get(volumeId);
    if (blocks === undefined) return;
    if (lastBlock - firstBlock + 1 > blocks.size) {
      for (const [blockIndex, keys] of [...blocks]) if (blockIndex >= firstBlock && blockIndex <= lastBlock) this.dropKeys(keys);
    } else {
      for (let blockIndex = firstBlock; blockIndex <= lastBlock; blockIndex += 1) {
        const keys = blocks.get(blockIndex);
        if (keys !== undefined) this.dropKeys(keys);
      }
    }
  }

  /** Every block of a volume leaves the cache (closed, its lease lost). */
  invalidateVolume(volumeId: number): void {
    this.invalidate(volumeId, 0, Number.MAX_SAFE_INTEGER);
  }

  async close(): Promise<void> {
    await this.file.close();
    await this.releaseLock();
  }

  private changedSince(address: BlockAddress, sinceSeq: number): boolean {
    if (this.changeSeq === sinceSeq) return false;
    const changes = this.changes.get(address.volumeId) ?? [];
    // This volume's changes since `sinceSeq` are all still kept unless the list is full and its
    // oldest is newer than that: then one may have been forgotten, and it is assumed to overlap.
    const oldest = changes[0];
    if (oldest !== undefined && changes.length >= CHANGES_KEPT && oldest.seq > sinceSeq) return true;
    return changes.some((change) => change.seq > sinceSeq && change.firstBlock <= address.blockIndex && address.blockIndex <= change.lastBlock);
  }

  private dropKeys(keys: ReadonlySet<string>): void {
    for (const key of [...keys]) {
      const entry = this.index.get(key);
      if (entry !== undefined) {
        this.drop(key, entry);
        this.stats.invalidations += 1;
      }
    }
  }

  private drop(key: string, entry: Entry): void {
    this.index.delete(key);
    this.free.push(entry.slot);
    const blocks = this.byVolume.get(entry.volumeId);
    const blockIndex = Number(key.slice(key.lastIndexOf('/') + 1));
    const keys = blocks?.get(blockIndex);
    keys?.delete(key);
    if (keys !== undefined && keys.size === 0) blocks?.delete(blockIndex);
    if (blocks !== undefined && blocks.size === 0) this.byVolume.delete(entry.volumeId);
  }
}

function keyOf(address: BlockAddress): string {
  return `${address.volumeId}/${address.generation}/${address.chunkId}/${address.version}/${address.blockIndex}`;
}
