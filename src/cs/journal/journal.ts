// The chunk server's write journal: every data change is appended here and made durable by group
// commit (group_commit.ts) before it is acknowledged. Chunk files change only after their record
// is durable (write-ahead) and are synced at checkpoints. The record format is record.ts, the
// segment files segments.ts, the replay of a segment replay.ts; this module ties them together:
// which records are still owed to chunk files, checkpoints, and when the journal stops.
//
// Checkpoint: switch to the next segment, wait until every record of the older ones is applied,
// sync every chunk file written since the last checkpoint, then recycle the older segments.
//
// Space: the journal's files (segments, the current one's growth, spares) stay within
// `segmentsMax` segments' bytes. A record that does not fit waits for a checkpoint to free room,
// and before that, once the journal holds more than a segment, records are let in at the rate the
// data disk drains (drain_pacer.ts): writers slow down smoothly, they are never failed for want of
// journal space.
//
// Open: check that the segments are this data directory's (ownership.ts), replay every segment in order, sync the chunk files, recycle the replayed segments and
// start the next one. A record that could not be replayed, or chunk files that could not be
// synced, stop the journal for good (`fatal`): nothing is recycled, the next start replays it all.

import { StorageError, fromSystemError } from '../../errors.ts';
import { CHUNK_BYTES_MAX } from '../../limits.ts';
import { assert } from '../../util/assert.ts';
import { systemTimers, type Clock, type Timers } from '../../util/clock.ts';
import type { Logger } from '../../util/log.ts';
import type { Disk } from '../disk/disk.ts';
import { DrainPacer, type PaceState, type RunningSync } from './drain_pacer.ts';
import { GroupCommit, type JournalStats } from './group_commit.ts';
import { decideJournalOwner, type FoundSegment, type JournalOwnerFacts } from './ownership.ts';
import {
  JOURNAL_RECORD_TYPE, SEGMENT_HEADER_BYTES, parseSegmentHeader, payloadFits, recordBytes, type JournalRecord, type JournalRecordType, type RecordContent,
} from './record.ts';
import { replaySegment } from './replay.ts';
import { SegmentReader } from './segment_reader.ts';
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
  /** Waiting for pacing (drain_pacer.ts); default the system's. */
  readonly timers?: Timers;
}

/** How records fared against the journal's space and the data disk's drain rate (the metrics'). */
export interface JournalPaceStats {
  /** Records that waited before going in (pacing or a full journal). */
  pacedRecordsTotal: number;
  /** Seconds records spent waiting before going in, summed. */
  pacedSecondsTotal: number;
  /** Times the next record found the journal's space full and waited for a checkpoint. */
  fullWaitsTotal: number;
}

/** One record of a unit appended together (see appendAll). */
interface UnitRecord {
  readonly content: Omit<RecordContent, 'payloadCrc'>;
  /** The segment that counts it as unapplied, once it went into the group commit. */
  segmentNumber: number | null;
  applied: boolean;
}

/** Records appended together, waiting to go in (see admit). */
interface WaitingUnit {
  readonly entries: UnitRecord[];
  readonly bytes: number;
  readonly sinceMs: number;
  readonly settle: ReadonlyArray<{ readonly resolve: () => void; readonly reject: (error: unknown) => void }>;
}

/** A record to append: what the journal stores of a change (its checksum is computed when it goes in). */
export type JournalAppend = Omit<RecordContent, 'payloadCrc'>;

/** A segment switched away from and not yet recycled. */
interface OldSegment {
  readonly name: string;
  readonly recordBytes: number;
  /** What the file takes: its records, or its preallocated size if larger. */
  readonly fileBytes: number;
}

/** One appended record: wait for `durable`, change the chunk file, then call `applied`. */
export interface JournalTicket {
  readonly durable: Promise<void>;
  applied(): void;
}

export class Journal {
  readonly stats: JournalStats = { appendsTotal: 0, commitsTotal: 0, bytesTotal: 0, checkpointsTotal: 0, commitSecondsTotal: 0 };
  readonly paceStats: JournalPaceStats = { pacedRecordsTotal: 0, pacedSecondsTotal: 0, fullWaitsTotal: 0 };
  /** The journal's space: segments, spares and growth together stay within it. */
  readonly capacityBytes: number;
  private readonly options: JournalOptions;
  private readonly timers: Timers;
  private readonly files: SegmentFiles;
  private readonly commits: GroupCommit;
  private readonly pacer: DrainPacer;
  private segment: Segment | null = null;
  private readonly oldSegments: OldSegment[] = [];
  /** Units of records waiting to go in, in append order (see admit). */
  private readonly waiting: WaitingUnit[] = [];
  private pumpTimerSet = false;
  /** Woken when no record is waiting any more. */
  private readonly admittedWaiters: Array<() => void> = [];
  /** Bytes of records whose changes went to chunk files since the last chunk-file sync began. */
  private changedBytesSinceSync = 0;
  private runningSync: RunningSync | null = null;
  /** While closing: waiting records go in as fast as the space allows, unpaced. */
  private closing = false;
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

  private constructor(options: JournalOptions, files: SegmentFiles, segmentsMax: number) {
    this.options = options;
    this.files = files;
    this.timers = options.timers ?? systemTimers;
    this.capacityBytes = segmentsMax * options.segmentBytesMax;
    this.pacer = new DrainPacer({ segmentBytes: options.segmentBytesMax });
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
        this.pump();
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
    let journalRef: Journal | null = null;
    const files = await SegmentFiles.open({
      disk: options.disk, directory: options.directory, segmentBytesMax: options.segmentBytesMax, segmentsMax,
      ownerUuid: options.ownerUuid, log: options.log,
      mayAddSpare: () => journalRef === null || journalRef.footprintBytes() + options.segmentBytesMax <= journalRef.capacityBytes,
    });
    const journal = new Journal(options, files, segmentsMax);
    journalRef = journal;
    const { segments } = await files.list();
    await checkOwner(options, files, segments);
    await options.onOwnerChecked?.();
    if (scan !== undefined) {
      // A first pass, so that applying a record can take the later ones into account.
      for (const segment of segments) {
        await readSegment(files, segment.name, async (reader) => {
          for await (const record of reader.records(segment.number)) scan(record);
        });
      }
    }
    let replayed = 0;
    const replayedFileBytes = new Map<string, number>();
    for (const [index, segment] of segments.entries()) {
      const result = await readSegment(files, segment.name, (reader) => {
        replayedFileBytes.set(segment.name, reader.fileBytes);
        return replaySegment(reader, segment, index === segments.length - 1, options.batchBytesMax, apply, options.log);
      });
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
        await files.recycle(segments.map((s) => s.name), (name) => replayedFileBytes.get(name) ?? Number.POSITIVE_INFINITY);
        options.log.info('journal replayed', { segments: segments.length, records: replayed });
      }
    }
    if (journal.fatal !== null) {
      // Kept for the next start, and counted against the space (no record goes in meanwhile).
      for (const segment of segments) {
        const fileBytes = replayedFileBytes.get(segment.name) ?? 0;
        journal.oldSegments.push({ name: segment.name, recordBytes: fileBytes, fileBytes });
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
    const [ticket] = this.appendAll([{ type, chunkId, offsetBytes, lengthBytes, payload }]);
    assert(ticket !== undefined, 'one ticket per record');
    return ticket;
  }

  /**
   * Appends records that one change applies together (it applies none until all are durable):
   * they go into the journal as one unit, so that none of them waits for room that only a
   * checkpoint waiting for another of them to be applied could free.
   */
  appendAll(records: readonly JournalAppend[]): JournalTicket[] {
    let bytes = 0;
    const entries: UnitRecord[] = [];
    for (const content of records) {
      const { type, offsetBytes, lengthBytes, payload } = content;
      assert(payloadFits(type, offsetBytes, lengthBytes, payload?.length ?? 0), 'a record carries the payload of its type');
      assert(type !== JOURNAL_RECORD_TYPE.ZERO || payload === undefined, 'zero records carry no bytes');
      assert(offsetBytes + lengthBytes <= CHUNK_BYTES_MAX, 'journal record within a chunk');
      // In-place writes take little room here, but replay reads (and writes back) the blocks of
      // every IN_PLACE record since the last checkpoint: they count towards the next one too.
      if (type === JOURNAL_RECORD_TYPE.IN_PLACE) this.inPlaceBytes += lengthBytes;
      else if (payload !== undefined) this.changedBytesSinceSync += payload.length;
      bytes += recordBytes(payload);
      entries.push({ content, segmentNumber: null, applied: false });
    }
    const durables = this.admit(entries, bytes);
    return entries.map((entry, index) => {
      const durable = durables[index];
      assert(durable !== undefined, 'one durable promise per record');
      return { durable, applied: () => this.markApplied(entry) };
    });
  }

  /** A record's change is in its chunk file (or failed): its segment no longer waits for it. */
  private markApplied(entry: UnitRecord): void {
    assert(!entry.applied, 'a journal record is applied once');
    entry.applied = true;
    const segmentNumber = entry.segmentNumber;
    if (segmentNumber === null) return; // failed before it went in: no segment counts it
    const left = (this.unapplied.get(segmentNumber) ?? 0) - 1;
    assert(left >= 0, 'unapplied record count never negative');
    if (left === 0) this.unapplied.delete(segmentNumber);
    else this.unapplied.set(segmentNumber, left);
    if (left === 0) for (const wake of this.appliedWaiters.splice(0)) wake();
  }

  /**
   * Lets a unit of records in: at once when the journal has room and the pace allows (the usual
   * case), else after the units already waiting, when the pace and the space allow (see pump).
   */
  private admit(entries: UnitRecord[], bytes: number): Array<Promise<void>> {
    if (this.waiting.length === 0 && this.fatal === null && !this.closed && this.hasRoomFor(bytes) && this.paceAllows(bytes)) {
      return this.goIn(entries);
    }
    const settle: Array<{ resolve: () => void; reject: (error: unknown) => void }> = [];
    const durables = entries.map(() => new Promise<void>((resolve, reject) => settle.push({ resolve, reject })));
    this.waiting.push({ entries, bytes, sinceMs: this.timers.monotonicMs(), settle });
    this.paceStats.pacedRecordsTotal += entries.length;
    this.pump();
    return durables;
  }

  /**
   * Records go into the group commit, each counted as unapplied in the current segment (a
   * checkpoint switching away from it waits for them; one written to the next segment after a
   * switch is only waited for longer than needed).
   */
  private goIn(entries: UnitRecord[]): Array<Promise<void>> {
    const segmentNumber = this.segment?.number ?? 0;
    return entries.map((entry) => {
      entry.segmentNumber = segmentNumber;
      this.unapplied.set(segmentNumber, (this.unapplied.get(segmentNumber) ?? 0) + 1);
      return this.commits.enqueue(entry.content);
    });
  }

  /**
   * Moves waiting units into the group commit, in order, while the space and the pace allow.
   * Called again by its own timer (pace), after each commit, and after each checkpoint (space).
   */
  private pump(): void {
    this.pumpWaiting();
    if (this.waiting.length === 0) for (const wake of this.admittedWaiters.splice(0)) wake();
  }

  private pumpWaiting(): void {
    while (this.waiting.length > 0 && !this.pumpTimerSet) {
      // A commit failure (a full disk) is the group commit's to report or retry: only a journal
      // stopped for good, or closed, fails the waiting records here.
      const stop = this.fatal ?? (this.closed ? new StorageError('ERR_SHUTTING_DOWN', 'journal closed') : null);
      if (stop !== null) {
        for (const unit of this.waiting.splice(0)) for (const { reject } of unit.settle) reject(stop);
        return;
      }
      const head = this.waiting[0];
      assert(head !== undefined, 'a waiting unit');
      if (!this.hasRoomFor(head.bytes)) {
        this.makeRoom();
        return;
      }
      const waitMs = this.closing ? 0 : this.pacer.take(head.bytes, this.paceState());
      if (waitMs > 0) {
        this.pumpTimerSet = true;
        void this.timers.sleep(waitMs).then(() => {
          this.pumpTimerSet = false;
          this.pump();
        });
        return;
      }
      this.waiting.shift();
      this.paceStats.pacedSecondsTotal += (this.timers.monotonicMs() - head.sinceMs) / 1000;
      for (const [index, durable] of this.goIn(head.entries).entries()) {
        const settle = head.settle[index];
        assert(settle !== undefined, 'one settle per record');
        durable.then(settle.resolve, settle.reject);
      }
    }
  }

  /**
   * While writers are paced (the journal holds more than the data disk has taken), the next
   * checkpoint starts as soon as one ends with half a segment to drain: the data disk is kept
   * busy, which is the rate the writers are paced to, instead of idling until a segment fills.
   */
  private keepDraining(): void {
    const current = this.segment;
    if (this.checkpointing !== null || this.fatal !== null || this.closed || current === null) return;
    const paced = this.waiting.length > 0 || this.heldBytes() > this.options.segmentBytesMax / 2;
    if (paced && current.sizeBytes >= this.options.segmentBytesMax / 2 && this.commits.failure === null) {
      this.checkpoint().catch((error: unknown) => this.options.log.error('checkpoint failed', { error }));
    }
  }

  /**
   * A checkpoint failed: the units waiting for the room it was to free fail with its error (a
   * write fails for a disk error, never for want of journal space; the next one tries again).
   */
  private failWaitingForRoom(cause: unknown): void {
    const head = this.waiting[0];
    if (head === undefined || this.hasRoomFor(head.bytes)) return;
    const error = cause instanceof StorageError ? cause : fromSystemError(cause, 'journal checkpoint failed');
    for (const unit of this.waiting.splice(0)) for (const { reject } of unit.settle) reject(error);
  }

  /** The journal's space is full for the next record: a checkpoint frees it (pump runs after it). */
  private makeRoom(): void {
    this.paceStats.fullWaitsTotal += 1;
    if (this.checkpointing === null && this.segment !== null && this.segment.nextIndex > 0) {
      this.checkpoint().catch((error: unknown) => this.options.log.error('checkpoint failed', { error }));
    }
  }

  /** Bytes of records the journal holds: in segments not yet recycled, and queued. */
  private heldBytes(): number {
    let bytes = this.commits.pendingBytes + (this.segment?.sizeBytes ?? 0);
    for (const old of this.oldSegments) bytes += old.recordBytes;
    return bytes;
  }

  /** Bytes the journal's files take, counting queued records and `extraBytes` more in the current segment. */
  private footprintBytes(extraBytes = 0): number {
    const current = this.segment;
    let bytes = this.files.spareBytes;
    if (current !== null) bytes += Math.max(current.sizeBytes + this.commits.pendingBytes + extraBytes, current.allocatedBytes);
    for (const old of this.oldSegments) bytes += old.fileBytes;
    return bytes;
  }

  /** Whether a record of `bytes` fits the space; one always fits an otherwise empty journal. */
  private hasRoomFor(bytes: number): boolean {
    return this.footprintBytes(bytes) <= this.capacityBytes || this.heldBytes() <= SEGMENT_HEADER_BYTES;
  }

  /** Whether the pace lets `bytes` in now; up to a segment held it is not asked (no allocation on the usual path). */
  private paceAllows(bytes: number): boolean {
    if (this.closing || this.heldBytes() <= this.options.segmentBytesMax) return true;
    return this.pacer.take(bytes, this.paceState()) === 0;
  }

  private paceState(): PaceState {
    const heldBytes = this.heldBytes();
    return {
      heldBytes,
      limitBytes: heldBytes + Math.max(0, this.capacityBytes - this.footprintBytes()),
      runningSync: this.runningSync,
      nowMs: this.timers.monotonicMs(),
    };
  }

  /** What the journal holds and may hold, and the drain rate it paces writers to (for the metrics). */
  spaceFacts(): { heldBytes: number; filesBytes: number; capacityBytes: number; drainBytesPerSecond: number | null; waitingRecords: number } {
    return {
      heldBytes: this.heldBytes(),
      filesBytes: this.footprintBytes(),
      capacityBytes: this.capacityBytes,
      drainBytesPerSecond: this.pacer.drainBytesPerSecond,
      waitingRecords: this.waiting.length,
    };
  }

  /** Resolves when everything appended before the call is durable. */
  async barrier(): Promise<void> {
    while (this.waiting.length > 0) await new Promise<void>((resolve) => this.admittedWaiters.push(resolve));
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
      this.pump();
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
    let succeeded = false;
    const running = this.runCheckpoint().then(() => {
      succeeded = true;
    }, (error: unknown) => {
      this.failWaitingForRoom(error);
      throw error;
    }).finally(() => {
      if (this.checkpointing === running) this.checkpointing = null;
      this.pump();
      // Only after a checkpoint that worked: one that failed at once (a full disk) would be
      // followed by another, and another, without end.
      if (succeeded) this.keepDraining();
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
    if (old === null) {
      // Abandoned meanwhile (a crash, as tests stage one): nothing more happens to the files.
      await next.handle.close();
      throw new StorageError('ERR_SHUTTING_DOWN', 'the journal was abandoned during a checkpoint');
    }
    this.segment = next;
    this.oldSegments.push({ name: old.name, recordBytes: old.sizeBytes, fileBytes: Math.max(old.sizeBytes, old.allocatedBytes) });
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
    const fileBytes = new Map(this.oldSegments.map((segment) => [segment.name, segment.fileBytes]));
    await this.files.recycle(segments.filter((s) => s.number < next.number).map((s) => s.name), (name) => fileBytes.get(name) ?? Number.POSITIVE_INFINITY);
    this.oldSegments.splice(0, this.oldSegments.length);
    this.stats.checkpointsTotal += 1;
    if (!this.closed) this.files.prepareSpare();
    this.pump();
  }

  /**
   * Syncs the chunk files; a failure is fatal (see `fatal`) and is rethrown. Measures the data
   * disk's drain rate for the pacer.
   */
  private async syncChunkFiles(): Promise<void> {
    const sync: RunningSync = { bytes: this.changedBytesSinceSync, startedMs: this.timers.monotonicMs() };
    this.changedBytesSinceSync = 0;
    this.runningSync = sync;
    try {
      await this.options.syncChunkFiles();
    } catch (error) {
      throw this.failChunkSync(error);
    } finally {
      this.runningSync = null;
    }
    this.pacer.noteSync(sync.bytes, this.timers.monotonicMs() - sync.startedMs);
  }

  /** Commits what is queued and checkpoints, so a clean restart has nothing to replay. */
  async close(): Promise<void> {
    this.closing = true;
    this.pump();
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
    this.pump(); // fails the records still waiting to go in
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
    await readSegment(files, segment.name, async (reader) => {
      const hasRecords = (await reader.records(segment.number).next()).done !== true;
      found.push({ name: segment.name, header: reader.header, hasRecords });
    });
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

/** Runs `read` on a reader of the segment, closing the file after. */
async function readSegment<T>(files: SegmentFiles, name: string, read: (reader: SegmentReader) => Promise<T>): Promise<T> {
  const reader = await SegmentReader.open(await files.openRead(name));
  try {
    return await read(reader);
  } finally {
    await reader.close();
  }
}
