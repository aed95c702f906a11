// Journal replay into the chunk files at start-up: each record that survived the crash is applied
// again, as a replayed change (no version check, no journal, edge blocks not verified: they may
// hold a torn write that was never acknowledged, which the record rewrites). A record that cannot
// be applied marks the store damaged and is rejected, so the journal keeps its segments for the
// next start and takes no writes meanwhile.

import { fromSystemError } from '../../errors.ts';
import type { Logger } from '../../util/log.ts';
import { JOURNAL_RECORD_TYPE, type JournalRecord } from '../journal/record.ts';
import { REPLAY, type BlockIO } from './block_io.ts';
import type { ChunkMeta } from './catalog.ts';
import type { HandleCache } from './handle_cache.ts';
import type { StoreHealth } from './health.ts';

export interface ReplayTarget {
  readonly log: Logger;
  readonly health: StoreHealth;
  readonly handles: HandleCache;
  readonly blocks: BlockIO;
  readonly getMeta: (chunkId: number) => ChunkMeta | undefined;
}

export async function replayRecord(target: ReplayTarget, record: JournalRecord): Promise<void> {
  const meta = target.getMeta(record.chunkId);
  if (meta === undefined) return; // deleted after the record was written
  if (record.offsetBytes + record.lengthBytes > meta.sizeBytes) {
    target.log.error('journal record outside its chunk: skipped', { chunkId: record.chunkId, segment: record.segmentNumber, index: record.index });
    return;
  }
  try {
    await target.handles.withHandle(record.chunkId, async (handle) => {
      if (record.type === JOURNAL_RECORD_TYPE.WRITE) await target.blocks.applyWrite(handle, record.offsetBytes, record.payload, REPLAY);
      else await target.blocks.applyZero(handle, record.offsetBytes, record.lengthBytes, REPLAY);
    });
  } catch (error) {
    // The server still starts, to serve what it has, but it says it is damaged; the journal,
    // told by the rejection, keeps its segments for the next start and takes no writes.
    const failure = fromSystemError(error, `replaying journal record ${record.segmentNumber}/${record.index} into chunk ${record.chunkId}`);
    target.health.damage = failure.message;
    target.log.error('journal replay failed for a record', { segment: record.segmentNumber, index: record.index, chunkId: record.chunkId, error: failure });
    throw failure;
  }
}
