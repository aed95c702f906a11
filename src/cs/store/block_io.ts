// The data path of a replica: writes, zeroes and reads of a chunk's blocks under its range lock,
// each written block's crc32c kept in its sums, and every written block checked against it when
// read. What "durable" means for a change is the journal's (write-ahead, see applyWrite).
//
// Invariants: a written block's checksum matches its bytes (checked on every read, and on the
// edge blocks of a partial write before they are merged, so a bad block is never re-blessed with
// a fresh checksum); a change reaches the journal while its block range is locked, so journal
// order equals file order for overlapping changes; the version a live change carries is checked
// under the block lock (a version change takes the whole chunk's lock).

import { crc32c } from '@node-rs/crc32';
import { StorageError, fromSystemError } from '../../errors.ts';
import { BLOCK_BYTES } from '../../limits.ts';
import { assert } from '../../util/assert.ts';
import type { Logger } from '../../util/log.ts';
import { isUnsupported } from '../disk/disk.ts';
import type { Journal, JournalTicket } from '../journal/journal.ts';
import { JOURNAL_RECORD_TYPE } from '../journal/record.ts';
import { FLAG_WRITTEN, ZERO_BLOCK_SUM, blockSums, clearSums, isWritten, setSum, storedSum } from './block_sums.ts';
import type { ChangeTracker } from './changes.ts';
import { readFully, writeFully, writeZeroes } from './chunk_file_io.ts';
import type { ChunkHandle } from './handle_cache.ts';
import { markDirty } from './handle_cache.ts';
import type { StoreHealth } from './health.ts';

/**
 * How a change is checked and recorded: live changes carry the writer's version (null for a
 * replica being filled) and go through the journal; replayed ones come from the journal.
 */
export type Mode = { readonly kind: 'live'; readonly version: number | null } | { readonly kind: 'replay' };
export const REPLAY: Mode = { kind: 'replay' };

export interface BlockIOOptions {
  readonly log: Logger;
  readonly health: StoreHealth;
  readonly changes: ChangeTracker;
  /** The journal live changes go through (not there yet while it replays at start-up). */
  readonly journal: () => Journal;
  /** The replica's version now, or undefined if the chunk is not here. */
  readonly version: (chunkId: number) => number | undefined;
  /** Counts a block that failed its checksum. */
  readonly onChecksumError: () => void;
}

export class BlockIO {
  private readonly options: BlockIOOptions;
  private punchSupported = true;

  constructor(options: BlockIOOptions) {
    this.options = options;
  }

  /**
   * Applies a write under the block-range lock, write-ahead: the journal record is durable before
   * the chunk file changes, so after a crash every change found in a chunk file since the last
   * checkpoint is also in the journal, and replay makes file and checksums agree again.
   */
  async applyWrite(handle: ChunkHandle, offsetBytes: number, data: Buffer, mode: Mode): Promise<void> {
    const { first, last } = blockSpan(offsetBytes, data.length);
    const release = await handle.lock.acquire(first, last, true);
    try {
      await this.writeLocked(handle, offsetBytes, data, mode);
    } finally {
      release();
    }
  }

  /** The body of applyWrite; the caller holds the exclusive lock on the write's blocks. */
  async writeLocked(handle: ChunkHandle, offsetBytes: number, data: Buffer, mode: Mode): Promise<void> {
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
      if (mode.kind === 'live') ticket = this.options.journal().append(JOURNAL_RECORD_TYPE.WRITE, handle.meta.chunkId, offsetBytes, data.length, data);
      // Checksums are computed while the journal commit is under way.
      const sums = blockSums(blocks);
      await ticket?.durable;
      await this.writeData(handle, blocks, alignedStart);
      for (const [index, crc] of sums.entries()) setSum(handle.sums, first + index, crc, FLAG_WRITTEN);
      markDirty(handle, first, last);
      this.options.changes.mark(handle.meta.chunkId, first, last);
    } finally {
      ticket?.applied();
    }
  }

  /** Zeroes a range under the lock, write-ahead as applyWrite; whole blocks become holes. */
  async applyZero(handle: ChunkHandle, offsetBytes: number, lengthBytes: number, mode: Mode): Promise<void> {
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
      if (mode.kind === 'live') ticket = this.options.journal().append(JOURNAL_RECORD_TYPE.ZERO, handle.meta.chunkId, offsetBytes, lengthBytes);
      await ticket?.durable;
      for (const { block, bytes } of edges) {
        await this.writeData(handle, bytes, block * BLOCK_BYTES);
        setSum(handle.sums, block, crc32c(bytes), FLAG_WRITTEN);
        markDirty(handle, block, block);
      }
      if (fullFirst <= fullLast) await this.deallocateBlocks(handle, fullFirst, fullLast);
      this.options.changes.mark(handle.meta.chunkId, first, last);
    } finally {
      ticket?.applied();
      release();
    }
  }

  /** Reads a range under a read lock at `version`, every written block checked (ERR_CHECKSUM). */
  async read(handle: ChunkHandle, offsetBytes: number, lengthBytes: number, version: number | null): Promise<Buffer> {
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

  /** The crc32c of each block of a range as u32 LE (a hole as a block of zeroes), under a read lock at `version`. */
  async blockSums(handle: ChunkHandle, version: number, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
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
  }

  /**
   * Replaces the blocks of `blocks` (whole blocks at `offsetBytes`) that fail their checksum here;
   * returns the blocks replaced. Each block is checked and replaced under its lock, so a block a
   * client rewrote in the meantime (now good) is left alone.
   */
  async repair(handle: ChunkHandle, version: number, offsetBytes: number, blocks: Buffer): Promise<number[]> {
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
  }

  /** Written blocks of a range whose bytes no longer match their checksum (the scrubber's check). */
  async findBadBlocks(handle: ChunkHandle, offsetBytes: number, lengthBytes: number): Promise<number[]> {
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
  }

  private async blockIsBad(handle: ChunkHandle, block: number): Promise<boolean> {
    if (!isWritten(handle.sums, block)) return false;
    const bytes = Buffer.allocUnsafe(BLOCK_BYTES);
    await readFully(handle.data, bytes, block * BLOCK_BYTES);
    return crc32c(bytes) !== storedSum(handle.sums, block);
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
      throw this.options.health.noteWriteError(fromSystemError(error, `zeroing blocks of chunk ${handle.meta.chunkId}`));
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
      throw this.options.health.noteWriteError(fromSystemError(error, `writing chunk ${handle.meta.chunkId}`));
    }
  }

  private verifyBlock(handle: ChunkHandle, block: number, bytes: Buffer): void {
    const expected = storedSum(handle.sums, block);
    const actual = crc32c(bytes);
    if (expected === actual) return;
    this.options.onChecksumError();
    this.options.log.error('checksum mismatch', { chunkId: handle.meta.chunkId, block, expected, actual });
    throw new StorageError(
      'ERR_CHECKSUM',
      `chunk ${handle.meta.chunkId} block ${block} (bytes ${block * BLOCK_BYTES}..${(block + 1) * BLOCK_BYTES}) failed its checksum`,
    );
  }

  /** Under the block lock: the writer's version must be the replica's. */
  private checkVersion(chunkId: number, mode: Mode): void {
    if (mode.kind !== 'live' || mode.version === null) return;
    const version = this.options.version(chunkId);
    if (version === undefined) throw new StorageError('ERR_CHUNK_NOT_FOUND', `chunk ${chunkId} is not on this server`);
    if (version !== mode.version) {
      throw new StorageError(
        'ERR_CHUNK_VERSION',
        `chunk ${chunkId} is at version ${version} here, the request carries version ${mode.version}`,
      );
    }
  }
}

export function blockSpan(offsetBytes: number, lengthBytes: number): { first: number; last: number } {
  assert(lengthBytes > 0, 'block span of a non-empty range');
  return { first: Math.floor(offsetBytes / BLOCK_BYTES), last: Math.floor((offsetBytes + lengthBytes - 1) / BLOCK_BYTES) };
}
