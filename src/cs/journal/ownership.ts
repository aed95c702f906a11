// Whether a journal directory is this data directory's journal, and what a start does when it is
// not: pure decisions over what the segments' headers say (record.ts) and what the data directory
// says of itself (its uuid; whether its last stop left records that may be only in the journal).
//
// - A segment naming another data directory: refused (a swapped or mistyped --journal-dir), whatever
//   the last stop was: replaying it would write another disk's changes into this one's chunks.
// - Format-2 segments (no owner) holding records: accepted only from DATA/journal, the one place
//   where the previous version kept them, where they can only be this disk's.
// - No segment of this journal (the directory gone or empty) while the last stop may have left
//   unapplied records: refused. Acknowledged writes may be only in the lost journal; serving the
//   chunk files as they are would serve stale or half-applied data. The server must be taken out
//   and its disk wiped (its replicas are copied afresh from the other servers).
// - No segment after a clean stop (everything applied and checkpointed): the journal is recreated,
//   with a warning.

import { StorageError } from '../../errors.ts';
import type { SegmentHeader } from './record.ts';

/** One segment file of the journal directory, as start-up found it. */
export interface FoundSegment {
  readonly name: string;
  readonly header: SegmentHeader;
  /** Whether replay would take at least one record from it. */
  readonly hasRecords: boolean;
}

export interface JournalOwnerFacts {
  readonly dataDir: string;
  readonly dataDirUuid: string;
  readonly journalDir: string;
  /** Whether the journal directory is DATA/journal (where format-2 segments are accepted). */
  readonly isDataDirJournal: boolean;
  readonly segments: readonly FoundSegment[];
  /**
   * The owners named by the spares' headers (recycled segments keep theirs; zero-filled spares
   * have none). Spares of this journal and no segment: a start crashed after replay had recycled
   * every segment (their records applied and synced) and before it made the next one.
   */
  readonly spareOwners: readonly string[];
  /** The data directory's last stop was not a clean one after a checkpoint, and it holds replicas. */
  readonly mayHoldUnapplied: boolean;
  /** Whether this data directory ever had a journal (it holds replicas, or cs.json names one). */
  readonly hadJournal: boolean;
}

export type JournalOwnerDecision =
  | { readonly kind: 'open' }
  /** Nothing of this journal is there, and nothing is owed by it: start a new one, and say so. */
  | { readonly kind: 'recreate'; readonly warning: string }
  | { readonly kind: 'refuse'; readonly error: StorageError };

export function decideJournalOwner(facts: JournalOwnerFacts): JournalOwnerDecision {
  const { dataDir, dataDirUuid, journalDir } = facts;
  const self = `data directory ${dataDir} (uuid ${dataDirUuid})`;
  for (const segment of facts.segments) {
    if (segment.header.format === 3 && segment.header.ownerUuid !== dataDirUuid) {
      return refuse('ERR_JOURNAL_OWNER',
        `journal directory ${journalDir} holds the journal of another data directory (uuid ${segment.header.ownerUuid}, ` +
        `segment ${segment.name}), not the journal of ${self}: nothing was replayed. Give this chunk server its own ` +
        'journal with --journal-dir (journals swapped between two servers go back each to its own).');
    }
    if (segment.header.format === 2 && segment.hasRecords && !facts.isDataDirJournal) {
      return refuse('ERR_JOURNAL_OWNER',
        `journal directory ${journalDir} holds format-2 journal segments (${segment.name}, written by an older version), ` +
        `which do not say which disk they belong to; they are replayed only from the data directory's own journal ` +
        `directory (${dataDir}/journal). Start ${self} once with its journal there, stop it cleanly, then move the journal.`);
    }
  }
  const own = facts.segments.some((segment) => segment.header.format === 3 || facts.isDataDirJournal) ||
    (facts.segments.length === 0 && facts.spareOwners.includes(dataDirUuid));
  if (own) return { kind: 'open' };
  if (facts.mayHoldUnapplied) {
    return refuse('ERR_JOURNAL_LOST',
      `the journal of ${self} is lost: ${journalDir} is missing or holds no journal segment, and the last stop of this ` +
      'chunk server was not a clean one, so writes it acknowledged may have been only in that journal. Serving its ' +
      'chunk files as they are could return stale data, so it does not start. If the journal device was moved, pass ' +
      'its new path with --journal-dir. Otherwise take this chunk server out: leave it stopped (the MDS re-replicates ' +
      'its replicas from the other copies), drain and remove it (shoal cs drain ID --wait; shoal cs rm ID), and wipe ' +
      'the data directory before using the disk again.');
  }
  if (!facts.hadJournal) return { kind: 'open' };
  return {
    kind: 'recreate',
    warning: `the journal of ${self} at ${journalDir} is missing or empty; the last stop was clean (everything applied ` +
      'and checkpointed), so nothing is lost: a new journal is started there',
  };
}

function refuse(code: 'ERR_JOURNAL_OWNER' | 'ERR_JOURNAL_LOST', message: string): JournalOwnerDecision {
  return { kind: 'refuse', error: new StorageError(code, message) };
}
