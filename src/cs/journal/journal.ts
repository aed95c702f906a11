// The chunk server's write journal: every data change is appended here and made durable by group
// commit (group_commit.ts) before it is acknowledged. Chunk files change only after their record
// is durable (write-ahead) and are synced at checkpoints. The record format is record.ts, the
// segment files segments.ts, the replay of a segment replay.ts; this module ties them together:
// which records are still owed to chunk files, checkpoints, and when the journal stops.
//
// Checkpoint: switch to the next segment, wait until every record of the older ones is applied,
// sync every chunk file written since the last checkpoint, then recycle the older segments.
//
// Open: check that the segments are this data directory's (ownership.ts), replay every segment in order, sync the chunk files, recycle the replayed segments and
// start the next one. A record that could not be replayed, or chunk files that could not be
// synced, stop the journal for good (`fatal`): nothing is recycled, the next start replays it all.

import { StorageError } from '../../errors.ts';
import { CHUNK_BYTES_MAX } from '../../limits.ts';
import { assert } from '../../util/assert.ts';
import type { Clock } from '../../util/clock.ts';
import type { Logger } from '../../util/log.ts';
import type { Disk } from '../disk/disk.ts';
import { GroupCommit, type JournalStats } from './group_commit.ts';
import { decideJournalOwner, type FoundSegment, type JournalOwnerFacts } from './ownership.ts';
import { JOURNAL_RECORD_TYPE, SEGMENT_HEADER_BYTES, parseSegmentHeader, payloadFits, type JournalRecord, type JournalRecordType } from './record.ts';
import { replaySegment, segmentRecords } from './replay.ts';
import { SegmentFiles, type Segment } from './segments.ts';

export type { JournalStats } from './group_commit.ts';

/** Segment files of a journal by default: the current segment and two spares. */
export const JOURNAL_SEGMENTS_DEFAULT = 3;
/** The fewest segment files a journal works with: the current segment and a spare to switch to. */
export const JOURNAL_SEGMENTS_MIN = 2;

/** A checkpoint once this many segments' worth of bytes were written in place since the last one. */
const IN_PLACE_SEGMENTS_PER_CHECKPOINT = 4;

export interface JournalOptions {
  readonly disk: Disk;
  readonly clock: Clock;
  readonly directory: string;
  /** Segment size: preallocated, and past it the journal checkpoints into the next segment. */
  readonly segmentBytesMax: number;
  /** Segment files (segments and spares) the journal's space holds, at least 2; default JOURNAL_SEGMENTS_DEFAULT. */
  readonly segmentsMax?: number;
  /** The uuid of the data directory this journal belongs to (in every segment's header). */
  readonly ownerUuid: string;
  /**
   * What the data directory says of itself, to decide whether the segments found are its journal
   * (ownership.ts); without it only segments naming another owner are refused.
   */
  readonly ownerFacts?: Omit<JournalOwnerFacts, 'segments' | 'spareOwners' | 'journalDir' | 'dataDirUuid'>;
  /** Called once the segments are known to be this data directory's, before replay changes anything. */
  readonly onOwnerChecked?: () => Promise<void>;
  /** Largest batch written with one writev + fdatasync. */
  readonly batchBytesMax: number;
  readonly log: Logger;
  /** Syncs every chunk file written since the previous call; the journal calls it at checkpoints. */
  readonly syncChunkFiles: () => Promise<void>;
}

/** One appended record: wait for `durable`, change the chunk file, then call `applied`. */
export interface JournalTicket {
  readonly durable: Promise<void>;
  applied(): void;
}

export class Journal {
  readonly stats: JournalStats = { appendsTotal: 0, commitsTotal: 0, bytesTotal: 0, checkpointsTotal: 0, commitSecondsTotal: 0 };
  private readonly options: JournalOptions;
  private readonly files: SegmentFiles;
  private readonly commits: GroupCommit;
  private segment: Segment | null = null;
  /** Segment number -> records appended while it was current and not yet applied to chunk files. */
  private readonly unapplied = new Map<number, number>();
  private readonly appliedWaiters: Array<() => void> = [];
  private checkpointing: Promise<void> | null = null;
  /** The checkpoint to run once the current one ends (see checkpoint()). */
  private nextCheckpoint: Promise<void> | null = null;
  /**
   * Set when chunk files could not be synced: the kernel may already have dropped the data the
   * journal still holds, and a retried sync can "succeed" without it; or when start-up could not
   * replay a record into its chunk. From then on no record is taken and no segment is recycled,
   * so a restart replays everything.
   */
  private fatal: StorageError | null = null;
  /** Replay found damage (not just a torn tail) in this start-up's journal. */
  damagedRecordsTotal = 0;
  /** Records whose `apply` failed at this start-up (their segments are kept, see open). */
  replayFailuresTotal = 0;
  private closed = false;
  /** Bytes written in place (IN_PLACE records) since the last checkpoint began (see append). */
  private inPlaceBytes = 0;
  /** Told, for each record, the seconds from its append until its batch was durable (the metrics' histogram). */
  observeWait: (seconds: number) => void = () => undefined;

  private constructor(options: JournalOptions, files: SegmentFiles) {
    this.options = options;
    this.files = files;
    this.commits = new GroupCommit({
      clock: options.clock,
      log: options.log,
      batchBytesMax: options.batchBytesMax,
      stats: this.stats,
      segment: () => {
        assert(this.segment !== null, 'journal has an open segment');
        return this.segment;
      },
      stopped: () => this.fatal,
      closed: () => this.closed,
      observeWait: (seconds) => this.observeWait(seconds),
      afterCommit: (segment) => {
        const full = segment.sizeBytes >= options.segmentBytesMax || this.inPlaceBytes >= IN_PLACE_SEGMENTS_PER_CHECKPOINT * options.segmentBytesMax;
        if (full && this.checkpointing === null && this.healthError === null) {
          this.checkpoint().catch((error: unknown) => options.log.error('checkpoint failed', { error }));
        }
      },
    });
  }

  /**
   * Opens the journal: replays every record left by the previous run through `apply` (in order,
   * after showing them all to `scan` first when given),
   * syncs the chunk files, recycles the old segments and starts the next one. If `apply` rejected
   * a record with a StorageError, or the chunk files could not be synced, nothing is recycled and
   * the journal takes no records (see `fatal`): the next start replays it all again.
   */
  static async open(
    options: JournalOptions,
    apply: (record: JournalRecord) => Promise<void>,
    scan?: (record: JournalRecord) => void,
  ): Promise<Journal> {
    const segmentsMax = options.segmentsMax ?? JOURNAL_SEGMENTS_DEFAULT;
    assert(segmentsMax >= JOURNAL_SEGMENTS_MIN, 'a journal holds a segment and a spare');
    const files = await SegmentFiles.open({
      disk: options.disk, directory: options.directory, segmentBytesMax: options.segmentBytesMax, segmentsMax,
      ownerUuid: options.ownerUuid, log: options.log,
    });
    const journal = new Journal(options, files);
    const { segments } = await files.list();
    await checkOwner(options, files, segments);
    await options.onOwnerChecked?.();
    if (scan !== undefined) {
      // A first pass, so that applying a record can take the later ones into account.
      for (const segment of segments) {
        for (const { record } of segmentRecords(await files.read(segment.name), segment.number)) scan(record);
      }
    }
    let replayed = 0;
    for (const [index, segment] of segments.entries()) {
      const result = await replaySegment(await files.read(segment.name), segment, index === segments.length - 1, apply, options.log);
      replayed += result.records;
      journal.replayFailuresTotal += result.failures;
      if (result.damaged) journal.damagedRecordsTotal += 1;
    }
    if (journal.replayFailuresTotal > 0) {
      // Records whose change could not be made (a full disk, a disk error) are still owed to the
      // chunk files: keep every segment for the next start, and take no records meanwhile.
      journal.fatal = new StorageError(
        'ERR_IO',
        `${journal.replayFailuresTotal} journal records could not be replayed: this disk takes no more writes; its journal is kept and replayed at the next start`,
      );
      options.log.error('journal replay failed: no more writes on this disk, journal kept for the next start', { records: replayed, failed: journal.replayFailuresTotal });
    } else if (segments.length > 0) {
      // The replayed changes must be in the chunk files before their records go. If a chunk file
      // cannot be synced, the journal stops as it would later on (see failChunkSync): the server
      // starts, to serve what it has, and the next start replays it all again.
      await options.syncChunkFiles().catch((error: unknown) => void journal.failChunkSync(error));
      if (journal.fatal === null) {
        // A crash from here until the next segment is made leaves only spares, recycled segments
        // that keep their headers: the next start takes them for this journal (ownership.ts).
        await files.recycle(segments.map((s) => s.name));
        options.log.info('journal replayed', { segments: segments.length, records: replayed });
      }
    }
    journal.segment = await files.next(true);
    journal.files.prepareSpare();
    return journal;
  }

  /**
   * Appends a record. Write-ahead: the caller changes the chunk file only after `durable` resolves,
   * and calls `applied()` once the change is in the file (or failed), so that a checkpoint never
   * drops a record whose change has not reached the file. The caller holds the lock on the range
   * from before the append until after applying, so the journal order of overlapping changes is
   * the order in which they reach the file.
   */
  append(type: JournalRecordType, chunkId: number, offsetBytes: number, lengthBytes: number, payload?: Buffer): JournalTicket {
    assert(payloadFits(type, offsetBytes, lengthBytes, payload?.length ?? 0), 'a record carries the payload of its type');
    assert(type !== JOURNAL_RECORD_TYPE.ZERO || payload === undefined, 'zero records carry no bytes');
    assert(offsetBytes + lengthBytes <= CHUNK_BYTES_MAX, 'journal record within a chunk');
    // In-place writes take little room here, but replay reads (and writes back) the blocks of
    // every IN_PLACE record since the last checkpoint: they count towards the next one too.
    if (type === JOURNAL_RECORD_TYPE.IN_PLACE) this.inPlaceBytes += lengthBytes;
    const segmentNumber = this.segment?.number ?? 0;
    this.unapplied.set(segmentNumber, (this.unapplied.get(segmentNumber) ?? 0) + 1);
    let applied = false;
    return {
      durable: this.commits.enqueue({ type, chunkId, offsetBytes, lengthBytes, payload }),
      applied: () => {
        assert(!applied, 'a journal record is applied once');
        applied = true;
        const left = (this.unapplied.get(segmentNumber) ?? 0) - 1;
        assert(left >= 0, 'unapplied record count never negative');
        if (left === 0) this.unapplied.delete(segmentNumber);
        else this.unapplied.set(segmentNumber, left);
        if (left === 0) for (const wake of this.appliedWaiters.splice(0)) wake();
      },
    };
  }

  /** Resolves when everything appended before the call is durable. */
  barrier(): Promise<void> {
    return this.commits.barrier();
  }

  get healthError(): StorageError | null {
    return this.fatal ?? this.commits.failure;
  }

  /**
   * Chunk files this journal's records went to could not be made durable: stop for good (see
   * `fatal`). Queued appends fail; what is in the segments stays for the replay at restart.
   */
  failChunkSync(cause: unknown): StorageError {
    if (this.fatal === null) {
      const detail = cause instanceof Error ? cause.message : String(cause);
      this.fatal = new StorageError(
        'ERR_IO',
        `chunk files could not be synced (${detail}): this disk takes no more writes; its journal is kept and replayed at the next start`,
        { cause },
      );
      this.options.log.error('chunk file sync failed: no more writes on this disk, journal kept for replay', { error: this.fatal });
      this.commits.rejectQueued(this.fatal);
    }
    return this.fatal;
  }

  /** Starts the next segment, syncs chunk files, then recycles the segments before it. One at a time. */
  /**
   * Checkpoints every record appended before the call. A checkpoint already running may have
   * switched segments before those records came: another one runs after it, shared by every
   * caller that arrives meanwhile (one that starts later began after their records, so it serves).
   */
  checkpoint(): Promise<void> {
    if (this.checkpointing === null) return this.startCheckpoint();
    this.nextCheckpoint ??= this.checkpointing.catch(() => undefined).then(() => {
      this.nextCheckpoint = null;
      return this.checkpointing ?? this.startCheckpoint();
    });
    return this.nextCheckpoint;
  }

  private startCheckpoint(): Promise<void> {
    const running = this.runCheckpoint().finally(() => {
      if (this.checkpointing === running) this.checkpointing = null;
    });
    this.checkpointing = running;
    return running;
  }

  private async runCheckpoint(): Promise<void> {
    if (this.fatal !== null) throw this.fatal;
    if (this.segment === null || this.segment.nextIndex === 0) {
      await this.syncChunkFiles();
      return;
    }
    const next = await this.files.next(false);
    // Switch only while no batch is being written, so the old segment is complete when closed.
    await this.commits.idle();
    const old = this.segment;
    this.segment = next;
    this.inPlaceBytes = 0;
    // Records of the old segments must be in the chunk files before those are synced.
    while ([...this.unapplied.keys()].some((number) => number < next.number)) {
      await new Promise<void>((resolve) => this.appliedWaiters.push(resolve));
    }
    await this.syncChunkFiles();
    // A chunk sync that failed elsewhere while this one ran (an evicted handle's, which finished
    // before syncChunkFiles could wait for it) stopped the journal: its data may be only here.
    if (this.fatal !== null) throw this.fatal;
    await old.handle.close();
    const { segments } = await this.files.list();
    await this.files.recycle(segments.filter((s) => s.number < next.number).map((s) => s.name));
    this.stats.checkpointsTotal += 1;
    if (!this.closed) this.files.prepareSpare();
  }

  /** Syncs the chunk files; a failure is fatal (see `fatal`) and is rethrown. */
  private async syncChunkFiles(): Promise<void> {
    try {
      await this.options.syncChunkFiles();
    } catch (error) {
      throw this.failChunkSync(error);
    }
  }

  /** Commits what is queued and checkpoints, so a clean restart has nothing to replay. */
  async close(): Promise<void> {
    await this.barrier().catch(() => undefined); // a failed commit is already reported and recorded
    if (this.healthError === null) await this.checkpoint();
    else await this.checkpointing?.catch(() => undefined);
    await this.files.settled();
    this.closed = true;
    await this.segment?.handle.close();
    this.segment = null;
  }

  /**
   * Closes at once, as a crash would leave the journal: no commit of what is queued (those appends
   * fail), no checkpoint. For shutting down after a disk failure, and for crash tests.
   */
  async abandon(): Promise<void> {
    this.closed = true;
    this.commits.rejectQueued(new StorageError('ERR_SHUTTING_DOWN', 'journal abandoned'));
    await this.commits.idle();
    await this.files.settled();
    await this.segment?.handle.close();
    this.segment = null;
  }
}

/** Refuses to open another data directory's journal, or none after an unclean stop (ownership.ts). */
async function checkOwner(options: JournalOptions, files: SegmentFiles, segments: ReadonlyArray<{ name: string; number: number }>): Promise<void> {
  const found: FoundSegment[] = [];
  for (const segment of segments) {
    const bytes = await files.read(segment.name);
    const hasRecords = !segmentRecords(bytes, segment.number).next().done;
    found.push({ name: segment.name, header: parseSegmentHeader(bytes), hasRecords });
  }
  const spareHeaders = [];
  for (const spare of (await files.list()).spares) spareHeaders.push(parseSegmentHeader(await files.readHead(spare.name, SEGMENT_HEADER_BYTES)));
  const facts: JournalOwnerFacts = {
    dataDir: options.ownerFacts?.dataDir ?? '(unnamed)',
    dataDirUuid: options.ownerUuid,
    journalDir: options.directory,
    isDataDirJournal: options.ownerFacts?.isDataDirJournal ?? true,
    segments: found,
    spareOwners: spareHeaders.flatMap((header) => (header.format === 3 ? [header.ownerUuid] : [])),
    mayHoldUnapplied: options.ownerFacts?.mayHoldUnapplied ?? false,
    hadJournal: options.ownerFacts?.hadJournal ?? false,
  };
  const decision = decideJournalOwner(facts);
  if (decision.kind === 'refuse') {
    options.log.error('journal refused', { error: decision.error });
    throw decision.error;
  }
  if (decision.kind === 'recreate') options.log.warn(decision.warning, { journalDir: options.directory });
}
