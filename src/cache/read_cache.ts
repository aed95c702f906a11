// A local read cache of 64 KiB blocks in one file of fixed slots on a local SSD: the NBD server's
// (--cache-dir, --cache-size: the volumes it serves, src/client/volume.ts) and a chunk server's
// (the same flags: the replicas on its disk, src/cs/store/chunk_read_cache.ts), one implementation.
//
// A block's key is its group (a volume, a chunk: what changes and scans are counted by), its
// index in the group, and a tag naming whatever else must match for the bytes to be current (the
// chunk's version; on the NBD server also the volume's cache generation and the chunk's id).
//
// It can never return old or wrong bytes:
// - a change of the bytes its owner knows about (a write through the NBD server; any change of a
//   replica on the chunk server) drops the blocks it touches, before and after it runs, and a
//   block read from the source while such a change was in flight is not taken in (`sequence`);
// - a key carries the chunk's version: after a version change, nothing cached before is found;
// - each cached block's crc32c is kept in memory and checked on every hit: a corrupted cache file
//   is a miss (the block is dropped and counted), never wrong data;
// - the file is emptied at start: nothing survives a restart, whose index would be gone anyway.
// Losing the cache device loses nothing: every block is also where it was read from.
//
// Groups with generations (the NBD server's volumes, opened under lease epochs): a group keeps
// its generation across a close and the next open only when that open's epoch directly follows
// the one it closed cleanly with (nobody else opened it for write in between: every write open
// raises the epoch); otherwise the generation moves on and nothing cached before is found.
//
// Which blocks it takes in: cache_admission.ts (TinyLFU; sequential scans skipped). Eviction:
// least recently used. Memory: an index entry per slot (READ_CACHE_INDEX_BYTES_PER_SLOT, bounded
// by --cache-size / 64 KiB), and a ring of the last CHANGES_KEPT changes (fixed).

import { open, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32c } from '@node-rs/crc32';
import { StorageError } from '../errors.ts';
import type { ReadCacheTotals } from '../protocol/api.ts';
import { assert } from '../util/assert.ts';
import { lockFile, mkdirDurable } from '../util/fs.ts';
import type { Logger } from '../util/log.ts';
import { parseSizeBytes } from '../util/size.ts';
import { FrequencySketch, SequentialDetector, hashKey } from './cache_admission.ts';

export const CACHE_BLOCK_BYTES = 64 * 1024;
/** The smallest cache worth having: 16 blocks. */
export const CACHE_BYTES_MIN = 16 * CACHE_BLOCK_BYTES;
/**
 * Memory per slot of the cache, beyond the file: what a full cache's index (the key string, its
 * entry, the per-group blocks), its free list and its frequency sketch take (V8 heap and array
 * buffers). Measured on Node 20 after a full GC, full caches of 4,096 to 65,536 slots, less the
 * empty cache's fixed part: about 215 bytes a slot with a chunk server's keys (many blocks a
 * chunk), 345 with one block a chunk, 330 with the NBD server's keys, 400 with its longest
 * (13-digit chunk ids, 10-digit versions). Rounded up; test/read_cache.test.ts checks a full
 * cache with the longest keys against READ_CACHE_FIXED_BYTES + slots * this.
 */
export const READ_CACHE_INDEX_BYTES_PER_SLOT = 448;
/**
 * Memory of a cache whatever its size: the ring of changes (384 KiB), the scan detector's streams
 * (4,096 at most, about 300 KiB). Not counted: the 64 KiB buffers of reads in flight (bounded by
 * the daemon's in-flight limits), and on the NBD server each volume's generation (about 100
 * bytes a volume served since the start, 65,536 at most).
 */
export const READ_CACHE_FIXED_BYTES = 1024 * 1024;

/** The memory a cache of `capacityBytes` takes beyond its file: its share of a memory budget. */
export function readCacheIndexBytes(capacityBytes: number): number {
  return READ_CACHE_FIXED_BYTES + Math.floor(capacityBytes / CACHE_BLOCK_BYTES) * READ_CACHE_INDEX_BYTES_PER_SLOT;
}
/** The slot file's name in --cache-dir. */
export const READ_CACHE_FILE = 'read-cache.bin';
/** A stream of reads past this many bytes is a scan: not taken in, not counted. */
const SEQUENTIAL_BYTES = 512 * 1024;
/** A read continues a stream when it starts within this many of its own lengths of where the stream got to. */
const SEQUENTIAL_NEAR_LENGTHS = 8;
/**
 * Changes remembered for the in-flight check, all groups together (fixed memory); a read during
 * which more happened is not taken in.
 */
const CHANGES_KEPT = 16_384;
/** Groups whose generation is remembered (the oldest forgotten, with its blocks). */
const GROUPS_MAX = 65_536;

export interface ReadCacheStats {
  hits: number;
  misses: number;
  admissions: number;
  evictions: number;
  /** Blocks that failed their checksum in the cache file (dropped, read from the source). */
  corrupt: number;
  /** Blocks dropped by changes (and by groups closed or fenced). */
  invalidations: number;
}

/** Where a block lives, as its user knows it at read time. */
export interface BlockKey {
  /** What changes, invalidations and scan detection go by: a volume, a chunk. */
  readonly group: number;
  /** The block's index in its group (its byte offset there / CACHE_BLOCK_BYTES). */
  readonly blockIndex: number;
  /** The rest of what must match for the cached bytes to be current (a version, a generation). */
  readonly tag: string;
}

/** A read through the cache of a range within one unit (a chunk) whose blocks are 64 KiB-aligned. */
export interface CachedRead {
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  /** Where the unit's readable bytes end: a block past it is never read whole nor kept. */
  readonly endBytes: number;
  /** Part of a scan (noteRead): nothing counted as an access, nothing taken in. */
  readonly scan: boolean;
  /** The key of the unit's block `index` (its offset in the unit / CACHE_BLOCK_BYTES). */
  readonly keyOf: (index: number) => BlockKey;
  /** Reads bytes of the unit from where the cache's copies come from (the chunk servers, the disk). */
  readonly source: (offsetBytes: number, lengthBytes: number) => Promise<Buffer>;
  /**
   * Whether a failure to read a whole block (to keep it) should be answered by reading only the
   * range asked for (a bad 4 KiB block beside it); default no: the failure stands.
   */
  readonly narrowOnError?: (error: unknown) => boolean;
}

/** Where a daemon's read cache is and how large (--cache-dir, --cache-size). */
export interface ReadCacheConfig {
  readonly dir: string;
  readonly sizeBytes: number;
}

/** --cache-dir and --cache-size, which go together; undefined without them. */
export function parseReadCacheFlags(dir: string | undefined, size: string | undefined): ReadCacheConfig | undefined {
  if ((dir === undefined) !== (size === undefined)) throw new StorageError('ERR_CONFIG', '--cache-dir and --cache-size go together');
  if (dir === undefined || size === undefined) return undefined;
  const sizeBytes = parseSizeBytes(size, '--cache-size');
  checkCacheSize(sizeBytes);
  return { dir, sizeBytes };
}

function checkCacheSize(sizeBytes: number): void {
  if (sizeBytes < CACHE_BYTES_MIN) {
    throw new StorageError('ERR_CONFIG', `--cache-size must be at least ${CACHE_BYTES_MIN} bytes (16 blocks of 64 KiB)`);
  }
}

interface Entry {
  readonly slot: number;
  readonly crc: number;
  readonly group: number;
  readonly blockIndex: number;
}

export interface ReadCacheOpenOptions {
  /** Who uses it, for the messages: "NBD server", "chunk server". */
  readonly owner: string;
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
  /**
   * group -> its blocks in the cache: the key of its only one, or block index -> key (or keys,
   * rarely: other tags). A chunk server's hot blocks may each be in a chunk of its own.
   */
  private readonly byGroup = new Map<number, string | Map<number, string | Set<string>>>();
  private readonly free: number[] = [];
  private readonly sketch: FrequencySketch;
  private readonly sequential = new SequentialDetector(SEQUENTIAL_BYTES, SEQUENTIAL_NEAR_LENGTHS);
  /** Grows with every change; the last CHANGES_KEPT changes in a ring: (group, first and last block), at seq % CHANGES_KEPT. */
  private changeSeq = 0;
  private readonly changeGroups = new Float64Array(CHANGES_KEPT);
  private readonly changeFirst = new Float64Array(CHANGES_KEPT);
  private readonly changeLast = new Float64Array(CHANGES_KEPT);
  /** Per group with generations: its generation, and the epoch it last closed cleanly at. */
  private readonly generations = new Map<number, { generation: number; closedEpoch: number | null }>();
  /** Admissions whose slot writes are under way (close waits for them). */
  private readonly admitting = new Set<Promise<void>>();

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
  static async open(dir: string, sizeBytes: number, log: Logger, options: ReadCacheOpenOptions): Promise<ReadCache> {
    checkCacheSize(sizeBytes);
    await mkdirDurable(dir);
    // One process per cache directory: two would write each other's slots.
    const lock = await lockFile(join(dir, 'lock'));
    if (!('release' in lock)) {
      throw new StorageError('ERR_CONFIG', `the read cache in ${dir} is in use by process ${lock.heldBy}: give each ${options.owner} its own --cache-dir`);
    }
    const path = join(dir, READ_CACHE_FILE);
    try {
      // What a previous process cached has no index any more: start empty.
      await rm(path, { force: true });
      const file = await open(path, 'w+', 0o600);
      const capacityBytes = Math.floor(sizeBytes / CACHE_BLOCK_BYTES) * CACHE_BLOCK_BYTES;
      await file.truncate(capacityBytes);
      log.info('read cache ready', { path, capacityBytes });
      return new ReadCache(file, capacityBytes, log, lock.release);
    } catch (error) {
      await lock.release();
      throw error;
    }
  }

  get usedBytes(): number {
    return this.index.size * CACHE_BLOCK_BYTES;
  }

  /** The running totals, as reports to the MDS carry them. */
  totals(): ReadCacheTotals {
    const { hits, misses, admissions, evictions, corrupt } = this.stats;
    return { hits, misses, admissions, evictions, corrupt, usedBytes: this.usedBytes, capacityBytes: this.capacityBytes };
  }

  /**
   * An open of a group with generations at `epoch`: its generation, for the keys' tags. What was
   * cached under the group's last open stays valid only if that one was closed cleanly at `epoch - 1`.
   */
  openGroup(group: number, epoch: number): number {
    const state = this.generations.get(group);
    if (state !== undefined && state.closedEpoch !== null && epoch === state.closedEpoch + 1) {
      state.closedEpoch = null;
      return state.generation;
    }
    this.invalidateGroup(group);
    const generation = (state?.generation ?? 0) + 1;
    if (state === undefined && this.generations.size >= GROUPS_MAX) {
      const oldest = this.generations.keys().next();
      if (oldest.done !== true) {
        this.invalidateGroup(oldest.value);
        this.generations.delete(oldest.value);
      }
    }
    this.generations.set(group, { generation, closedEpoch: null });
    return generation;
  }

  /** The group's open ends: cleanly (its lease released, never lost), its blocks may serve the next open. */
  closeGroup(group: number, epoch: number, clean: boolean): void {
    const state = this.generations.get(group);
    if (state === undefined) return;
    if (clean) {
      state.closedEpoch = epoch;
      return;
    }
    state.closedEpoch = null;
    this.invalidateGroup(group);
  }

  /**
   * Notes a read of `lengthBytes` at `offsetBytes` of a group: whether it is part of a scan
   * (then nothing is counted or taken in for it).
   */
  noteRead(group: number, offsetBytes: number, lengthBytes: number): { scan: boolean } {
    return { scan: this.sequential.isSequential(group, offsetBytes, lengthBytes) };
  }

  /**
   * Reads a range through the cache: from it when every block the range touches is there and
   * intact, else from the source, keeping the whole blocks worth keeping (a small read of such a
   * block is widened to the whole block).
   */
  async read(request: CachedRead): Promise<Buffer> {
    const { offsetBytes, lengthBytes, scan, keyOf, source } = request;
    const firstBlock = Math.floor(offsetBytes / CACHE_BLOCK_BYTES);
    const lastBlock = Math.floor((offsetBytes + lengthBytes - 1) / CACHE_BLOCK_BYTES);
    const sinceSeq = this.changeSeq;
    const keys = Array.from({ length: lastBlock - firstBlock + 1 }, (_, i) => keyOf(firstBlock + i));
    // Answered from the cache only when every block is there; else the range is read whole.
    const cached = keys.every((key) => this.index.has(keyString(key))) ? await Promise.all(keys.map((key) => this.lookup(key, scan))) : null;
    if (cached === null) for (const key of keys) this.noteMiss(key, scan);
    if (cached !== null && cached.every((block) => block !== null)) {
      const result = Buffer.allocUnsafe(lengthBytes);
      for (const [i, block] of cached.entries()) {
        const blockStart = (firstBlock + i) * CACHE_BLOCK_BYTES;
        const from = Math.max(offsetBytes, blockStart);
        const to = Math.min(offsetBytes + lengthBytes, blockStart + CACHE_BLOCK_BYTES);
        block?.copy(result, from - offsetBytes, from - blockStart, to - blockStart);
      }
      return result;
    }
    // A small read of a block worth keeping: read the whole block, keep it, answer from it.
    const blockStart = firstBlock * CACHE_BLOCK_BYTES;
    const firstKey = keys[0];
    if (firstKey !== undefined && firstBlock === lastBlock && blockStart + CACHE_BLOCK_BYTES <= request.endBytes && this.wants(firstKey, scan)) {
      let block: Buffer;
      try {
        block = await source(blockStart, CACHE_BLOCK_BYTES);
      } catch (error) {
        if (request.narrowOnError?.(error) !== true) throw error;
        return source(offsetBytes, lengthBytes);
      }
      this.admitLater(firstKey, block, sinceSeq);
      return block.subarray(offsetBytes - blockStart, offsetBytes - blockStart + lengthBytes);
    }
    const data = await source(offsetBytes, lengthBytes);
    // Whole blocks the read covered, worth keeping.
    for (const [i, key] of keys.entries()) {
      const from = (firstBlock + i) * CACHE_BLOCK_BYTES - offsetBytes;
      if (from < 0 || from + CACHE_BLOCK_BYTES > lengthBytes || this.index.has(keyString(key)) || !this.wants(key, scan)) continue;
      this.admitLater(key, Buffer.from(data.subarray(from, from + CACHE_BLOCK_BYTES)), sinceSeq);
    }
    return data;
  }

  /** The block's bytes if cached and intact, else null; counts the access (unless `scan`). */
  async lookup(key: BlockKey, scan: boolean): Promise<Buffer | null> {
    const name = keyString(key);
    if (!scan) this.sketch.increment(hashKey(name));
    const entry = this.index.get(name);
    if (entry === undefined) {
      this.stats.misses += 1;
      return null;
    }
    // Most recently used: to the end.
    this.index.delete(name);
    this.index.set(name, entry);
    const block = Buffer.allocUnsafe(CACHE_BLOCK_BYTES);
    let bytesRead = 0;
    try {
      ({ bytesRead } = await this.file.read(block, 0, CACHE_BLOCK_BYTES, entry.slot * CACHE_BLOCK_BYTES));
    } catch (error) {
      // A failing cache device costs misses, never a read.
      this.log.warn('the read cache could not read a block: read from the source', { slot: entry.slot, error });
    }
    // The slot may have been given to another block meanwhile: the checksum tells.
    if (bytesRead !== CACHE_BLOCK_BYTES || crc32c(block) !== entry.crc) {
      if (this.index.get(name) === entry) {
        this.stats.corrupt += 1;
        this.drop(name, entry);
        this.log.warn('a read-cache block failed its checksum: dropped, read from the source', { slot: entry.slot });
      }
      this.stats.misses += 1;
      return null;
    }
    this.stats.hits += 1;
    return block;
  }

  /** Whether the block is cached (counts nothing). */
  has(key: BlockKey): boolean {
    return this.index.has(keyString(key));
  }

  /** A block looked up in vain (it was not all there): counted as a miss, and as an access unless `scan`. */
  noteMiss(key: BlockKey, scan: boolean): void {
    if (!scan) this.sketch.increment(hashKey(keyString(key)));
    this.stats.misses += 1;
  }

  /** The change sequence now: a block read after this may be taken in if no change overlapped it since. */
  get sequence(): number {
    return this.changeSeq;
  }

  /** Whether a block that missed should be read whole and taken in. */
  wants(key: BlockKey, scan: boolean): boolean {
    if (scan) return false;
    const frequency = this.sketch.frequency(hashKey(keyString(key)));
    if (frequency < 2) return false;
    if (this.free.length > 0) return true;
    const victim = this.index.keys().next();
    return victim.done !== true && frequency > this.sketch.frequency(hashKey(victim.value));
  }

  /** Takes a block in (read whole from the source since `sinceSeq`), evicting the least recently used one if full. */
  async admit(key: BlockKey, block: Buffer, sinceSeq: number): Promise<void> {
    assert(block.length === CACHE_BLOCK_BYTES, 'the cache takes whole blocks');
    const name = keyString(key);
    if (this.index.has(name) || this.changedSince(key, sinceSeq)) return;
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
      this.log.warn('could not write to the read cache; the block is read from the source', { error });
      return;
    }
    // A change may have landed while the slot was written.
    if (this.index.has(name) || this.changedSince(key, sinceSeq)) {
      this.free.push(slot);
      return;
    }
    this.index.set(name, { slot, crc, group: key.group, blockIndex: key.blockIndex });
    let blocks = this.byGroup.get(key.group);
    if (blocks === undefined) {
      this.byGroup.set(key.group, name);
      this.stats.admissions += 1;
      return;
    }
    if (typeof blocks === 'string') {
      const only = blocks;
      blocks = new Map([[this.index.get(only)?.blockIndex ?? -1, only]]);
      this.byGroup.set(key.group, blocks);
    }
    const there = blocks.get(key.blockIndex);
    if (there === undefined) blocks.set(key.blockIndex, name);
    else if (typeof there === 'string') blocks.set(key.blockIndex, new Set([there, name]));
    else there.add(name);
    this.stats.admissions += 1;
  }

  /** Blocks first..last of a group change (call before and after the change): they leave the cache. */
  invalidate(group: number, firstBlock: number, lastBlock: number): void {
    this.changeSeq += 1;
    const at = this.changeSeq % CHANGES_KEPT;
    this.changeGroups[at] = group;
    this.changeFirst[at] = firstBlock;
    this.changeLast[at] = lastBlock;
    const blocks = this.byGroup.get(group);
    if (blocks === undefined) return;
    if (typeof blocks === 'string') {
      const blockIndex = this.index.get(blocks)?.blockIndex ?? -1;
      if (blockIndex >= firstBlock && blockIndex <= lastBlock) this.dropKeys(blocks);
    } else if (lastBlock - firstBlock + 1 > blocks.size) {
      for (const [blockIndex, keys] of [...blocks]) if (blockIndex >= firstBlock && blockIndex <= lastBlock) this.dropKeys(keys);
    } else {
      for (let blockIndex = firstBlock; blockIndex <= lastBlock; blockIndex += 1) {
        const keys = blocks.get(blockIndex);
        if (keys !== undefined) this.dropKeys(keys);
      }
    }
  }

  /** Every block of a group leaves the cache. */
  invalidateGroup(group: number): void {
    this.invalidate(group, 0, Number.MAX_SAFE_INTEGER);
  }

  /** Closes the file once the slot writes under way are done, and lets go of the directory. */
  async close(): Promise<void> {
    await Promise.all([...this.admitting]);
    await this.file.close();
    await this.releaseLock();
  }

  private admitLater(key: BlockKey, block: Buffer, sinceSeq: number): void {
    const admitting = this.admit(key, block, sinceSeq).finally(() => this.admitting.delete(admitting));
    this.admitting.add(admitting);
  }

  private changedSince(key: BlockKey, sinceSeq: number): boolean {
    // Changes older than the ring's are forgotten: one of them may have overlapped.
    if (this.changeSeq - sinceSeq >= CHANGES_KEPT) return true;
    for (let seq = this.changeSeq; seq > sinceSeq; seq -= 1) {
      const at = seq % CHANGES_KEPT;
      if (this.changeGroups[at] === key.group && (this.changeFirst[at] ?? 0) <= key.blockIndex && key.blockIndex <= (this.changeLast[at] ?? 0)) return true;
    }
    return false;
  }

  private dropKeys(keys: string | ReadonlySet<string>): void {
    for (const name of typeof keys === 'string' ? [keys] : [...keys]) {
      const entry = this.index.get(name);
      if (entry !== undefined) {
        this.drop(name, entry);
        this.stats.invalidations += 1;
      }
    }
  }

  private drop(name: string, entry: Entry): void {
    this.index.delete(name);
    this.free.push(entry.slot);
    const blocks = this.byGroup.get(entry.group);
    if (blocks === undefined || blocks === name) {
      this.byGroup.delete(entry.group);
      return;
    }
    if (typeof blocks === 'string') return;
    const keys = blocks.get(entry.blockIndex);
    if (keys === name) blocks.delete(entry.blockIndex);
    else if (typeof keys === 'object') {
      keys.delete(name);
      if (keys.size === 1) blocks.set(entry.blockIndex, [...keys][0] ?? name);
    }
    if (blocks.size === 0) this.byGroup.delete(entry.group);
  }
}

function keyString(key: BlockKey): string {
  return `${key.group}/${key.tag}/${key.blockIndex}`;
}
