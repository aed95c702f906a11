// Replay of one journal segment at start-up. Records are applied in order; each one sets the
// bytes of its range, so replaying a record twice, or a record whose effect already reached the
// chunk file, is harmless. Replay stops at the first record that is torn, corrupt or not the next
// one (the tail a crash cut off, zeroes, or a recycled file's records of its earlier life). A
// valid record of the same segment further on, of a batch that began after the stop, proves that a
// synced record was lost: damage, counted and said loudly (segment_reader.ts, laterBatchPastStop).

import { StorageError } from '../../errors.ts';
import type { Logger } from '../../util/log.ts';
import type { JournalRecord } from './record.ts';
import type { SegmentReader } from './segment_reader.ts';
import type { SegmentName } from './segments.ts';

export interface SegmentReplay {
  /** Records replayed (applied, or counted in `failures`). */
  readonly records: number;
  /** Records whose apply rejected with a StorageError: still owed to the chunk files. */
  readonly failures: number;
  /** Whether a valid later record proves that replay stopped at damage, not at the end. */
  readonly damaged: boolean;
}

export async function replaySegment(
  reader: SegmentReader,
  segment: SegmentName,
  isLast: boolean,
  batchBytesMax: number,
  apply: (record: JournalRecord) => Promise<void>,
  log: Logger,
): Promise<SegmentReplay> {
  let index = 0;
  let failures = 0;
  for await (const record of reader.records(segment.number)) {
    // A record that could not be applied (an operating error: the caller reports it) is counted
    // and replay goes on, as the later records are still owed to the chunk files. A programmer
    // error stops the start.
    await apply(record).catch((error: unknown) => {
      if (!(error instanceof StorageError)) throw error;
      failures += 1;
    });
    index += 1;
  }
  const damaged = await reader.laterBatchPastStop(segment.number, batchBytesMax);
  if (damaged) {
    log.error('journal damaged: replay stopped at a bad record; later records were not applied', {
      segment: segment.name, offset: reader.stopPositionBytes, index, isLast,
    });
  }
  return { records: index, failures, damaged };
}
