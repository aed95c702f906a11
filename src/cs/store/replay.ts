// Journal replay into the chunk files at start-up: each record that survived the crash is applied
// again, as a replayed change (no version check, no journal, edge blocks not verified: they may
// hold a torn write that was never acknowledged, which the record rewrites). A record that cannot
// be applied marks the store damaged and is rejected, so the journal keeps its segments for the
// next start and takes no writes meanwhile.
//
// IN_PLACE records (writes that went straight to the chunk file, see block_io.ts) carry only the
// blocks' sums. Before anything is applied, a scan of every record collects them; when replay first
// touches a chunk (before it changes any of its bytes) each block an IN_PLACE record covers is read
// once, and the latest such record whose sum the bytes match is the block's "landed" record. Then:
// - a journalled change (WRITE, ZERO) skips the blocks whose landed record is later than it: the
//   file already holds newer bytes that were written over the change's (and it was applied before
//   them, under the block lock);
// - an IN_PLACE record gives its sum to the blocks it landed on and skips those a later one
//   landed on; on the others it never completed (it was not acknowledged): a block keeps its sum
//   if its bytes match it, else (a sync that failed, a block the disk tore) the bytes it holds
//   are what the block holds, and take their sum. Old bytes never take the record's sum.
// Records later than a block's landed record are applied as usual, in order.

import { crc32c } from '@node-rs/crc32';
import { fromSystemError, isStorageError } from '../../errors.ts';
import { BLOCK_BYTES } from '../../limits.ts';
import type { Logger } from '../../util/log.ts';
import { JOURNAL_RECORD_TYPE, type JournalRecord } from '../journal/record.ts';
import { REPLAY, type BlockIO } from './block_io.ts';
import type { ChunkMeta } from './catalog.ts';
import { readFully } from './chunk_file_io.ts';
import type { ChunkHandle, HandleCache } from './handle_cache.ts';
import type { StoreHealth } from './health.ts';

export interface ReplayTarget {
  readonly log: Logger;
  readonly health: StoreHealth;
  readonly handles: HandleCache;
  readonly blocks: BlockIO;
  readonly getMeta: (chunkId: number) => ChunkMeta | undefined;
}

/** Where a record stands in the journal: segments in order, records in order within one. */
interface Place {
  readonly segment: number;
  readonly index: number;
}

function later(a: Place, b: Place): boolean {
  return a.segment !== b.segment ? a.segment > b.segment : a.index > b.index;
}

interface InPlaceRecord extends Place {
  readonly firstBlock: number;
  readonly sums: Buffer;
}

export class JournalReplay {
  private readonly target: ReplayTarget;
  /** Chunk id -> its IN_PLACE records, in journal order (from the scan). */
  private readonly inPlace = new Map<number, InPlaceRecord[]>();
  /** Chunk id -> block -> the latest IN_PLACE record whose sum the block's bytes match. */
  private readonly landed = new Map<number, Map<number, Place>>();

  constructor(target: ReplayTarget) {
    this.target = target;
  }

  /** The first pass: remembers the IN_PLACE records. */
  scan(record: JournalRecord): void {
    if (record.type !== JOURNAL_RECORD_TYPE.IN_PLACE) return;
    let records = this.inPlace.get(record.chunkId);
    if (records === undefined) {
      records = [];
      this.inPlace.set(record.chunkId, records);
    }
    records.push({
      segment: record.segmentNumber, index: record.index, firstBlock: record.offsetBytes / BLOCK_BYTES, sums: Buffer.from(record.payload),
    });
  }

  async apply(record: JournalRecord): Promise<void> {
    const { target } = this;
    const meta = target.getMeta(record.chunkId);
    if (meta === undefined) return; // deleted after the record was written
    if (record.offsetBytes + record.lengthBytes > meta.sizeBytes) {
      target.log.error('journal record outside its chunk: skipped', { chunkId: record.chunkId, segment: record.segmentNumber, index: record.index });
      return;
    }
    try {
      await target.handles.withHandle(record.chunkId, async (handle) => {
        const landed = await this.landedBlocks(handle);
        const place: Place = { segment: record.segmentNumber, index: record.index };
        if (record.type === JOURNAL_RECORD_TYPE.IN_PLACE) {
          const first = record.offsetBytes / BLOCK_BYTES;
          const isMine = (index: number): boolean => {
            const at = landed.get(first + index);
            return at !== undefined && at.segment === place.segment && at.index === place.index;
          };
          // A later in-place write landed on a block: this record's turn there has passed.
          const superseded = (index: number): boolean => {
            const at = landed.get(first + index);
            return at !== undefined && later(at, place);
          };
          const settled = await target.blocks.replayInPlace(handle, record.offsetBytes, record.payload, isMine, superseded);
          if (settled > 0) {
            target.log.warn('blocks of an in-place write that never completed keep the bytes they hold', {
              chunkId: record.chunkId, segment: record.segmentNumber, index: record.index, blocks: settled,
            });
          }
          return;
        }
        for (const run of unsupersededRuns(record, place, landed)) {
          if (record.type === JOURNAL_RECORD_TYPE.WRITE) {
            const from = run.offsetBytes - record.offsetBytes;
            await target.blocks.applyWrite(handle, run.offsetBytes, record.payload.subarray(from, from + run.lengthBytes), REPLAY);
          } else {
            await target.blocks.applyZero(handle, run.offsetBytes, run.lengthBytes, REPLAY);
          }
        }
      });
    } catch (error) {
      // A delete that a crash cut short after the chunk's files went is finished when replay opens
      // the chunk (ChunkStore.finishDelete): the chunk is gone, and its records have nothing to change.
      if (isStorageError(error, 'ERR_CHUNK_NOT_FOUND') && target.getMeta(record.chunkId) === undefined) {
        target.log.info('journal record of a chunk removed before the crash: skipped', {
          chunkId: record.chunkId, segment: record.segmentNumber, index: record.index,
        });
        return;
      }
      // The server still starts, to serve what it has, but it says it is damaged; the journal,
      // told by the rejection, keeps its segments for the next start and takes no writes.
      const failure = fromSystemError(error, `replaying journal record ${record.segmentNumber}/${record.index} into chunk ${record.chunkId}`);
      target.health.damage = failure.message;
      target.log.error('journal replay failed for a record', { segment: record.segmentNumber, index: record.index, chunkId: record.chunkId, error: failure });
      throw failure;
    }
  }

  /** The chunk's landed blocks, read at the first record that touches it (before any change to it). */
  private async landedBlocks(handle: ChunkHandle): Promise<Map<number, Place>> {
    const chunkId = handle.meta.chunkId;
    const known = this.landed.get(chunkId);
    if (known !== undefined) return known;
    const landed = new Map<number, Place>();
    for (const record of this.inPlace.get(chunkId) ?? []) {
      const blocks = record.sums.length / 4;
      if ((record.firstBlock + blocks) * BLOCK_BYTES > handle.meta.sizeBytes) continue; // skipped at apply
      const bytes = Buffer.allocUnsafe(blocks * BLOCK_BYTES);
      await readFully(handle.data, bytes, record.firstBlock * BLOCK_BYTES);
      for (let index = 0; index < blocks; index += 1) {
        if (crc32c(bytes.subarray(index * BLOCK_BYTES, (index + 1) * BLOCK_BYTES)) !== record.sums.readUInt32BE(index * 4)) continue;
        // Records come in journal order: a later match replaces an earlier one.
        landed.set(record.firstBlock + index, record);
      }
    }
    this.landed.set(chunkId, landed);
    return landed;
  }
}

/**
 * The parts of a journalled change's range whose blocks no later IN_PLACE record landed on, as
 * byte ranges within the change's range.
 */
function unsupersededRuns(record: JournalRecord, place: Place, landed: ReadonlyMap<number, Place>): Array<{ offsetBytes: number; lengthBytes: number }> {
  const endBytes = record.offsetBytes + record.lengthBytes;
  if (landed.size === 0 || record.lengthBytes === 0) return record.lengthBytes === 0 ? [] : [{ offsetBytes: record.offsetBytes, lengthBytes: record.lengthBytes }];
  const runs: Array<{ offsetBytes: number; lengthBytes: number }> = [];
  const first = Math.floor(record.offsetBytes / BLOCK_BYTES);
  const last = Math.floor((endBytes - 1) / BLOCK_BYTES);
  let runStart: number | null = null;
  for (let block = first; block <= last + 1; block += 1) {
    const at = block <= last ? landed.get(block) : undefined;
    const superseded = at !== undefined && later(at, place);
    if (block <= last && !superseded) {
      runStart ??= block;
      continue;
    }
    if (runStart !== null) {
      const from = Math.max(record.offsetBytes, runStart * BLOCK_BYTES);
      const to = Math.min(endBytes, block * BLOCK_BYTES);
      runs.push({ offsetBytes: from, lengthBytes: to - from });
      runStart = null;
    }
  }
  return runs;
}
