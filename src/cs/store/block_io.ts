// The data path of a replica: writes, zeroes and reads of a chunk's blocks under its range lock,
// each written block's crc32c kept in its sums, and every written block checked against it when
// read.
//
// Two ways a write becomes durable:
// - journalled (writes below `inPlaceBytesMin`): the bytes go into a journal record; once it is
//   durable the chunk file changes, and the file is synced at the next checkpoint. Many small
//   writes to many files cost one sequential append and one sync. Records hold whole blocks (a
//   partial write's edge blocks merged, a zeroing's partial edge blocks as their merged bytes), so
//   replaying one depends on nothing the file held before it: the bytes of an earlier in-place
//   write are not in the journal to be replayed first.
// - in place (writes of `inPlaceBytesMin` and more): the disk sees the bytes once. Steps, under
//   the exclusive lock of the write's blocks:
//     1. each block's crc32c is computed, once: the record carries these very sums;
//     2. an IN_PLACE record (chunk, block range, the blocks' sums; no data) is made durable;
//     3. the blocks are written to the chunk file, their sums set in memory (what this process
//        reads then matches), and the file is fdatasync'd (syncs of one file are shared by the
//        writes that arrive together, shared_syncs.ts; syncs of different files run side by side);
//     4. the write is acknowledged. The .sums file follows at the next checkpoint, which keeps the
//        record until then; a checkpoint also comes after a few segments' worth of in-place bytes.
//   What a power cut (or a kill) leaves at each step, settled by replay (replay.ts):
//     - before 2 is durable: no record, the file untouched: the old bytes and sums stand.
//     - after 2, before 3 is durable (never acknowledged): each block holds its old bytes, the
//       new ones, or (a disk that tears inside a 4 KiB block) neither. A block takes the record's
//       sum only if its bytes match it: old bytes never look like the new write, nor new bytes
//       fail against an old sum. A block that matches neither its old sum nor the record's was
//       torn by this unacknowledged write: it keeps the bytes it holds and their sum (any content
//       is right for a write that was never acknowledged, and the MDS compares the members of
//       chunks after an unclean stop). The record is made durable before the data for this
//       reason: bytes that land without their record would match no sum anywhere.
//     - after 3: the file holds the new bytes, the record their sums.
//   Against older journalled records of the same blocks: the lock orders them, so an older
//   record's bytes reached the file before the in-place write replaced them, but that record is
//   still in the journal until the next checkpoint, and replaying it would put its older bytes
//   back over the newer ones. Replay therefore looks first (a scan of every record) for blocks
//   whose bytes match a later IN_PLACE record's sum, and skips the older records' changes to
//   those blocks; later records (journalled or in place) are applied after it as usual.
//   A failed fdatasync of the chunk file fails the write and stops the journal for good (as a
//   failed checkpoint sync does), and every later sync of that file fails too (shared_syncs.ts):
//   the page cache may have dropped bytes that earlier writes put there. Replay writes back the
//   bytes of every block it settles from an IN_PLACE record, since after a failed sync and a kill
//   the page cache may hold bytes the disk does not, which no sync would otherwise write.
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
import type { Journal, JournalAppend, JournalTicket } from '../journal/journal.ts';
import { JOURNAL_RECORD_TYPE, inPlaceSumsBytes } from '../journal/record.ts';
import { FLAG_WRITTEN, ZERO_BLOCK_SUM, blockSums, clearSums, isWritten, setSum, storedSum } from './block_sums.ts';
import type { ChangeTracker } from './changes.ts';
import { READ_NOW_BYTES_MAX, WRITE_NOW_BYTES_MAX, readFully, readFullyNow, writeFully, writeFullyNow, writeZeroes } from './chunk_file_io.ts';
import { READ_NOW_GATE_LIMITS, WRITE_NOW_GATE_LIMITS, OnLoopGate } from './on_loop_gate.ts';
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
  /** Live writes of at least this many bytes go in place (see the header); Infinity: none. */
  readonly inPlaceBytesMin: number;
  /**
   * Blocks first..last of a chunk are about to change, or a change of them is over (landed or
   * failed): called for both, under the blocks' lock, by every change of a replica's bytes
   * (the read cache drops them: chunk_read_cache.ts).
   */
  readonly changing?: (chunkId: number, first: number, last: number) => void;
}

export class BlockIO {
  private readonly options: BlockIOOptions;
  private punchSupported = true;
  /** Whether small applies may be done on the event loop (on_loop_gate.ts). */
  private readonly writeNowGate = new OnLoopGate(WRITE_NOW_GATE_LIMITS);
  /** Whether small reads may be done on the event loop (on_loop_gate.ts). */
  private readonly readNowGate = new OnLoopGate(READ_NOW_GATE_LIMITS);

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
    this.options.changing?.(handle.meta.chunkId, first, last);
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
      if (mode.kind === 'live' && data.length >= this.options.inPlaceBytesMin) {
        const sums = blockSums(blocks);
        ticket = this.options.journal().append(JOURNAL_RECORD_TYPE.IN_PLACE, handle.meta.chunkId, alignedStart, alignedBytes, encodeSums(sums));
        await ticket.durable;
        await this.writeData(handle, blocks, alignedStart);
        const synced = this.syncData(handle);
        // The file holds the new bytes now (synced or not): its sums follow, so that what this
        // process reads matches. After a failed sync the journal has stopped for good, and the
        // next start settles these blocks from what reached the disk (replay.ts).
        for (const [index, crc] of sums.entries()) setSum(handle.sums, first + index, crc, FLAG_WRITTEN);
        markDirty(handle, first, last);
        this.options.changes.mark(handle.meta.chunkId, first, last);
        await synced;
        return;
      }
      // Whole blocks, edges merged: replaying the record then depends on nothing the file held
      // before it (an in-place write's bytes are not in the journal to be replayed first).
      if (mode.kind === 'live') ticket = this.options.journal().append(JOURNAL_RECORD_TYPE.WRITE, handle.meta.chunkId, alignedStart, alignedBytes, blocks);
      // Checksums are computed while the journal commit is under way.
      const sums = blockSums(blocks);
      await ticket?.durable;
      // A small apply is a copy into the page cache: done at once, it costs a fraction of a
      // thread-pool round trip (measured: 6 µs of CPU against 20 µs per 4 KiB write).
      // Not while the file is being synced: the write could wait for the whole sync (seconds on an
      // HDD at a checkpoint), and the event loop with it.
      if (blocks.length <= WRITE_NOW_BYTES_MAX && !handle.data.syncing && this.writeNowGate.isOpen(performance.now())) {
        this.writeDataNow(handle, blocks, alignedStart);
      } else {
        await this.writeData(handle, blocks, alignedStart);
      }
      for (const [index, crc] of sums.entries()) setSum(handle.sums, first + index, crc, FLAG_WRITTEN);
      markDirty(handle, first, last);
      this.options.changes.mark(handle.meta.chunkId, first, last);
    } finally {
      ticket?.applied();
      this.options.changing?.(handle.meta.chunkId, first, last);
    }
  }

  /**
   * Replays an IN_PLACE record over blocks first..first+sums/4-1. `landed(index)` says whether a
   * block holds this record's bytes (replay.ts checked them against its sums): it takes the
   * record's sum. A block a later in-place record landed on (`superseded`) is left to it. A block
   * that does not hold the record's bytes keeps its sum if its bytes match it. Otherwise the write
   * never completed there (it was not acknowledged: its sync failed, or the disk tore the block)
   * and the block keeps the bytes it holds, whose sum it takes; counted in the returned number.
   * The bytes of the blocks that take a sum are written back: after a failed sync (then a kill,
   * no power cut) the page cache may hold bytes that are not on the disk and that no later sync
   * writes, so the replay's own sync must have them to write.
   */
  async replayInPlace(handle: ChunkHandle, offsetBytes: number, sums: Buffer,
    landed: (index: number) => boolean, superseded: (index: number) => boolean): Promise<number> {
    assert(offsetBytes % BLOCK_BYTES === 0, 'in-place records cover whole blocks');
    const first = offsetBytes / BLOCK_BYTES;
    const count = sums.length / 4;
    const release = await handle.lock.acquire(first, first + count - 1, true);
    let settled = 0;
    this.options.changing?.(handle.meta.chunkId, first, first + count - 1);
    try {
      const bytes = Buffer.allocUnsafe(count * BLOCK_BYTES);
      await readFully(handle.data, bytes, offsetBytes);
      for (let index = 0; index < count; index += 1) {
        if (superseded(index)) continue;
        const block = first + index;
        const view = bytes.subarray(index * BLOCK_BYTES, (index + 1) * BLOCK_BYTES);
        let crc = sums.readUInt32BE(index * 4);
        if (!landed(index)) {
          crc = crc32c(view);
          if (crc === (isWritten(handle.sums, block) ? storedSum(handle.sums, block) : ZERO_BLOCK_SUM)) continue;
          settled += 1;
        }
        await this.writeData(handle, view, block * BLOCK_BYTES);
        setSum(handle.sums, block, crc, FLAG_WRITTEN);
        markDirty(handle, block, block);
      }
    } finally {
      this.options.changing?.(handle.meta.chunkId, first, first + count - 1);
      release();
    }
    return settled;
  }

  /** Makes the chunk's data file durable; a failure stops the journal for good (see the header). */
  private async syncData(handle: ChunkHandle): Promise<void> {
    try {
      // Shared with the writes that arrive together, and failing for good once one failed (shared_syncs.ts).
      await handle.data.datasync();
    } catch (error) {
      this.options.journal().failChunkSync(error);
      throw this.options.health.noteWriteError(fromSystemError(error, `syncing chunk ${handle.meta.chunkId}`));
    }
  }

  /** Zeroes a range under the lock, write-ahead as applyWrite; whole blocks become holes. */
  async applyZero(handle: ChunkHandle, offsetBytes: number, lengthBytes: number, mode: Mode): Promise<void> {
    const { first, last } = blockSpan(offsetBytes, lengthBytes);
    const release = await handle.lock.acquire(first, last, true);
    const tickets: JournalTicket[] = [];
    this.options.changing?.(handle.meta.chunkId, first, last);
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
      if (mode.kind === 'live') {
        // As whole blocks, like writes: each written edge block with its merged bytes, and the
        // whole blocks between them as a ZERO record.
        // One unit: none of them is applied before all are durable (Journal.appendAll).
        const chunkId = handle.meta.chunkId;
        const records: JournalAppend[] = [];
        for (const { block, bytes } of edges) records.push({ type: JOURNAL_RECORD_TYPE.WRITE, chunkId, offsetBytes: block * BLOCK_BYTES, lengthBytes: BLOCK_BYTES, payload: bytes });
        if (fullFirst <= fullLast) {
          records.push({ type: JOURNAL_RECORD_TYPE.ZERO, chunkId, offsetBytes: fullFirst * BLOCK_BYTES, lengthBytes: (fullLast - fullFirst + 1) * BLOCK_BYTES, payload: undefined });
        }
        // Nothing to change (a part of a hole): still acknowledged only through a working journal.
        if (records.length === 0) records.push({ type: JOURNAL_RECORD_TYPE.ZERO, chunkId, offsetBytes, lengthBytes, payload: undefined });
        tickets.push(...this.options.journal().appendAll(records));
      }
      await Promise.all(tickets.map((ticket) => ticket.durable));
      for (const { block, bytes } of edges) {
        await this.writeData(handle, bytes, block * BLOCK_BYTES);
        setSum(handle.sums, block, crc32c(bytes), FLAG_WRITTEN);
        markDirty(handle, block, block);
      }
      if (fullFirst <= fullLast) await this.deallocateBlocks(handle, fullFirst, fullLast);
      this.options.changes.mark(handle.meta.chunkId, first, last);
    } finally {
      for (const ticket of tickets) ticket.applied();
      this.options.changing?.(handle.meta.chunkId, first, last);
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
      // A small read from the page cache costs less done at once than the thread pool's round
      // trip (its wake-ups take the other core on a small host); reads that miss it close the gate.
      if (alignedBytes <= READ_NOW_BYTES_MAX && this.readNowGate.isOpen(performance.now())) this.readDataNow(handle, bytes, alignedStart);
      else await readFully(handle.data, bytes, alignedStart);
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

  private readDataNow(handle: ChunkHandle, bytes: Buffer, position: number): void {
    const startedMs = performance.now();
    readFullyNow(handle.data, bytes, position);
    const endedMs = performance.now();
    const tookMs = endedMs - startedMs;
    if (this.readNowGate.observe(endedMs, tookMs) === 'closed') {
      this.options.log.info('reads missed the page cache: they go through the thread pool for a while', {
        chunkId: handle.meta.chunkId, bytes: bytes.length, tookMs: Math.round(tookMs * 1000) / 1000, pauseMs: READ_NOW_GATE_LIMITS.pauseMs,
      });
    }
  }

  private writeDataNow(handle: ChunkHandle, bytes: Buffer, position: number): void {
    const startedMs = performance.now();
    try {
      writeFullyNow(handle.data, bytes, position);
    } catch (error) {
      throw this.options.health.noteWriteError(fromSystemError(error, `writing chunk ${handle.meta.chunkId}`));
    }
    const endedMs = performance.now();
    const tookMs = endedMs - startedMs;
    if (this.writeNowGate.observe(endedMs, tookMs) === 'closed') {
      this.options.log.warn('page-cache writes were slow: applies go through the thread pool for a while', {
        chunkId: handle.meta.chunkId, bytes: bytes.length, tookMs: Math.round(tookMs * 1000) / 1000, pauseMs: WRITE_NOW_GATE_LIMITS.pauseMs,
      });
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

/** The sums of an IN_PLACE record's payload: u32 BE per block. */
export function encodeSums(sums: readonly number[]): Buffer {
  const out = Buffer.allocUnsafe(inPlaceSumsBytes(sums.length * BLOCK_BYTES));
  for (const [index, crc] of sums.entries()) out.writeUInt32BE(crc, index * 4);
  return out;
}
