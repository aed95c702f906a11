// Replay of one journal segment at start-up. Records are applied in order; each one sets the
// bytes of its range, so replaying a record twice, or a record whose effect already reached the
// chunk file, is harmless. Replay stops at the first record that is torn, corrupt or not the next
// one (the tail a crash cut off, zeroes, or a recycled file's records of its earlier life). A
// valid record of the same segment further on, of a batch that began after the stop, proves that a
// synced record was lost: damage, counted and said loudly (record.ts, hasLaterRecord).

import { StorageError } from '../../errors.ts';
import type { Logger } from '../../util/log.ts';
import { hasLaterRecord, parseRecord, parseSegmentHeader, recordsStart, type JournalRecord } from './record.ts';
import type { SegmentName } from './segments.ts';

export interface SegmentReplay {
  /** Records replayed (applied, or counted in `failures`). */
  readonly records: number;
  /** Records whose apply rejected with a StorageError: still owed to the chunk files. */
  readonly failures: number;
  /** Whether a valid later record proves that replay stopped at damage, not at the end. */
  readonly damaged: boolean;
}

/** The records replay takes from a segment, in order: up to the first torn, corrupt or out-of-place one. */
export function* segmentRecords(bytes: Buffer, segmentNumber: number): Generator<{ record: JournalRecord; end: number }> {
  // After the segment header (format 3), or from byte 0 (format 2; the owner was checked before).
  let position = recordsStart(parseSegmentHeader(bytes));
  let index = 0;
  for (;;) {
    const parsed = parseRecord(bytes, position);
    if (parsed === null || parsed.record.segmentNumber !== segmentNumber || parsed.record.index !== index) return;
    yield { record: parsed.record, end: parsed.end };
    position = parsed.end;
    index += 1;
  }
}

export async function replaySegment(
  bytes: Buffer,
  segment: SegmentName,
  isLast: boolean,
  apply: (record: JournalRecord) => Promise<void>,
  log: Logger,
): Promise<SegmentReplay> {
  let position = recordsStart(parseSegmentHeader(bytes));
  let index = 0;
  let failures = 0;
  for (const { record, end } of segmentRecords(bytes, segment.number)) {
    // A record that could not be applied (an operating error: the caller reports it) is counted
    // and replay goes on, as the later records are still owed to the chunk files. A programmer
    // error stops the start.
    await apply(record).catch((error: unknown) => {
      if (!(error instanceof StorageError)) throw error;
      failures += 1;
    });
    position = end;
    index += 1;
  }
  const damaged = hasLaterRecord(bytes, position, segment.number, index);
  if (damaged) {
    log.error('journal damaged: replay stopped at a bad record; later records were not applied', {
      segment: segment.name, offset: position, index, isLast,
    });
  }
  return { records: index, failures, damaged };
}
