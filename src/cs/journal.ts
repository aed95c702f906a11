// The chunk server's write journal: every data change is appended here and made durable with one
// fdatasync per batch (group commit) before it is acknowledged. Chunk files change only after
// their record is durable (write-ahead) and are synced at checkpoints, so random writes to many
// chunks cost one sequential append and one sync, not a sync per file.
//
// Layout: journal/<segment number>.log segments (16 digits), each a sequence of records
// (big-endian), and journal/spare-<n>.log files waiting to become segments:
//
//   0 u32 magic | 4 u32 recordBytes | 8 u32 crc32c of payload then bytes [12, 40) | 12 u8 type |
//   13 u24 position in its batch | 16 u32 segment number | 20 u32 index in segment | 24 u32 chunkId high |
//   28 u32 chunkId low | 32 u32 offsetBytes | 36 u32 lengthBytes | 40 payload (WRITE only)
//
// Segments are preallocated (zero-filled once, then recycled after checkpoints), so a commit
// overwrites blocks the file already has: its fdatasync flushes data only, never the file's size
// through the file system's own journal, which is what makes one sync cheap. A recycled file still
// holds records of its earlier life; they carry an older segment number, so replay, which accepts
// only the segment's own number with consecutive indexes, stops there as it stops at zeroes.
//
// Records are replayed in order after a crash; each one sets the bytes of its range, so replaying
// a record twice, or a record whose effect already reached the chunk file, is harmless. Replay
// stops at the first record that is torn, corrupt or not the next one (the tail a crash cut off).
// Each record knows its position in its batch (the records written with one writev and synced
// with one fdatasync): a valid record after the stop point whose batch began at or before it is
// the rest of a batch that was never synced (a power cut lets the disk keep any part of it), not
// damage. Only a record of a later batch proves that a synced record was lost. Journals written
// before the position existed hold zeroes there: every record then counts as its batch's first.
//
// Checkpoint: switch to the next segment, wait until every record of the older ones is applied,
// sync every chunk file written since the last checkpoint, then recycle the older segments.

import { crc32c } from '@node-rs/crc32';
import { dirname, join } from 'node:path';
import { StorageError, fromSystemError } from '../errors.ts';
import { CHUNK_BYTES_MAX } from '../limits.ts';
import { assert } from '../util/assert.ts';
import type { Clock } from '../util/clock.ts';
import type { Logger } from '../util/log.ts';
import type { Disk, DiskFile } from './disk/disk.ts';

export const JOURNAL_RECORD_TYPE = { WRITE: 1, ZERO: 2 } as const;
export type JournalRecordType = (typeof JOURNAL_RECORD_TYPE)[keyof typeof JOURNAL_RECORD_TYPE];

const MAGIC = 0x53484a32; // "SHJ2"
export const JOURNAL_HEADER_BYTES = 40;
/** Largest position of a record in its batch that the header's 24 bits hold. */
const BATCH_POSITION_MAX = 0xffffff;
const TWO_32 = 2 ** 32;
/** After a full disk, how long the journal waits before it tries writes again. */
const NO_SPACE_RETRY_MS = 1_000;
/** Recycled segments kept for reuse; more are deleted. */
const SPARES_MAX = 2;
const ZERO_FILL = Buffer.alloc(1024 * 1024);
const SEGMENT_NAME = /^(\d{16})\.log$/;
const SPARE_NAME = /^spare-(\d{16})\.log$/;

export interface JournalRecord {
  readonly type: JournalRecordType;
  readonly segmentNumber: number;
  readonly index: number;
  readonly chunkId: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly payload: Buffer;
}

export interface JournalOptions {
  readonly disk: Disk;
  readonly clock: Clock;
  readonly directory: string;
  /** Segment size: preallocated, and past it the journal checkpoints into the next segment. */
  readonly segmentBytesMax: number;
  /** Largest batch written with one writev + fdatasync. */
  readonly batchBytesMax: number;
  readonly log: Logger;
  /** Syncs every chunk file written since the previous call; the journal calls it at checkpoints. */
  readonly syncChunkFiles: () => Promise<void>;
}

interface PendingRecord {
  readonly type: JournalRecordType;
  readonly chunkId: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly payload: Buffer | undefined;
  /** crc32c of the payload, computed when appended; the header is folded in at commit. */
  readonly payloadCrc: number;
  readonly bytes: number;
  readonly resolve: () => void;
  readonly reject: (error: StorageError) => void;
}

/** One appended record: wait for `durable`, change the chunk file, then call `applied`. */
export interface JournalTicket {
  readonly durable: Promise<void>;
  applied(): void;
}

export interface JournalStats {
  appendsTotal: number;
  commitsTotal: number;
  bytesTotal: number;
  checkpointsTotal: number;
  commitSecondsTotal: number;
}

interface Segment {
  readonly handle: DiskFile;
  readonly number: number;
  readonly name: string;
  sizeBytes: number;
  nextIndex: number;
}

export class Journal {
  readonly stats: JournalStats = { appendsTotal: 0, commitsTotal: 0, bytesTotal: 0, checkpointsTotal: 0, commitSecondsTotal: 0 };
  private readonly options: JournalOptions;
  private segment: Segment | null = null;
  private queue: PendingRecord[] = [];
  private readonly idleWaiters: Array<() => void> = [];
  /** Segment number -> records appended while it was current and not yet applied to chunk files. */
  private readonly unapplied = new Map<number, number>();
  private readonly appliedWaiters: Array<() => void> = [];
  private committing = false;
  private scheduled = false;
  private checkpointing: Promise<void> | null = null;
  private preparingSpare: Promise<void> | null = null;
  private failure: StorageError | null = null;
  /**
   * Set when chunk files could not be synced: the kernel may already have dropped the data the
   * journal still holds, and a retried sync can "succeed" without it; or when start-up could not
   * replay a record into its chunk. From then on no record is taken and no segment is recycled,
   * so a restart replays everything.
   */
  private fatal: StorageError | null = null;
  private failedAtMs = 0;
  private truncateFailed = false;
  /** Highest segment number seen in the directory, spares included: new segments go above it. */
  private highestNumber = 0;
  /** Replay found damage (not just a torn tail) in this start-up's journal. */
  damagedRecordsTotal = 0;
  /** Records whose `apply` failed at this start-up (their segments are kept, see open). */
  replayFailuresTotal = 0;
  private closed = false;

  private constructor(options: JournalOptions) {
    this.options = options;
  }

  /**
   * Opens the journal: replays every record left by the previous run through `apply` (in order),
   * syncs the chunk files, recycles the old segments and starts the next one. If `apply` rejected
   * a record with a StorageError, or the chunk files could not be synced, nothing is recycled and
   * the journal takes no records (see `fatal`): the next start replays it all again.
   */
  static async open(options: JournalOptions, apply: (record: JournalRecord) => Promise<void>): Promise<Journal> {
    const { disk } = options;
    await disk.mkdir(options.directory);
    await disk.syncDirectory(dirname(options.directory));
    // A spare half zero-filled when the server stopped is of no use.
    for (const name of await disk.readdir(options.directory)) {
      if (name.endsWith('.tmp')) await disk.remove(join(options.directory, name));
    }
    const journal = new Journal(options);
    const { segments, spares } = await journal.listFiles();
    journal.highestNumber = Math.max(0, ...segments.map((s) => s.number), ...spares.map((s) => s.number));
    let replayed = 0;
    for (const [index, segment] of segments.entries()) {
      replayed += await journal.replaySegment(segment, index === segments.length - 1, apply);
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
        await journal.recycle(segments.map((s) => s.name));
        options.log.info('journal replayed', { segments: segments.length, records: replayed });
      }
    }
    journal.segment = await journal.nextSegment(true);
    journal.prepareSpare();
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
    assert(type !== JOURNAL_RECORD_TYPE.WRITE || payload?.length === lengthBytes, 'write records carry their bytes');
    assert(type !== JOURNAL_RECORD_TYPE.ZERO || payload === undefined, 'zero records carry no bytes');
    assert(offsetBytes + lengthBytes <= CHUNK_BYTES_MAX, 'journal record within a chunk');
    const segmentNumber = this.segment?.number ?? 0;
    this.unapplied.set(segmentNumber, (this.unapplied.get(segmentNumber) ?? 0) + 1);
    let applied = false;
    return {
      durable: this.enqueue(type, chunkId, offsetBytes, lengthBytes, payload),
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

  private enqueue(type: JournalRecordType, chunkId: number, offsetBytes: number, lengthBytes: number, payload?: Buffer): Promise<void> {
    if (this.failure !== null && this.mayRetry()) {
      this.options.log.info('journal takes writes again (retrying after a full disk)');
      this.failure = null;
    }
    if (this.fatal !== null) return Promise.reject(this.fatal);
    if (this.failure !== null) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new StorageError('ERR_SHUTTING_DOWN', 'journal closed'));
    const payloadCrc = payload === undefined ? 0 : crc32c(payload);
    const bytes = JOURNAL_HEADER_BYTES + (payload?.length ?? 0);
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ type, chunkId, offsetBytes, lengthBytes, payload, payloadCrc, bytes, resolve, reject });
      this.stats.appendsTotal += 1;
      this.schedule();
    });
  }

  /** Resolves when everything appended before the call is durable. */
  barrier(): Promise<void> {
    if (this.queue.length === 0 && !this.committing) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.queue.push({
        type: JOURNAL_RECORD_TYPE.ZERO, chunkId: 0, offsetBytes: 0, lengthBytes: 0, payload: undefined, payloadCrc: 0, bytes: 0,
        resolve, reject,
      });
      this.schedule();
    });
  }

  get healthError(): StorageError | null {
    return this.fatal ?? this.failure;
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
      for (const record of this.queue.splice(0)) record.reject(this.fatal);
    }
    return this.fatal;
  }

  /**
   * A full disk may have room again: writes are tried again a while after the failure. A disk
   * error (EIO), or a failure the journal could not clean up after, keeps it failed until restart.
   */
  private mayRetry(): boolean {
    return this.failure?.code === 'ERR_NO_SPACE' && !this.truncateFailed && this.options.clock.nowMs() - this.failedAtMs >= NO_SPACE_RETRY_MS;
  }

  private schedule(): void {
    if (this.committing || this.scheduled) return;
    this.scheduled = true;
    // Let every append issued in this event-loop turn join the batch.
    setImmediate(() => {
      this.scheduled = false;
      void this.commit();
    });
  }

  private async commit(): Promise<void> {
    if (this.committing || this.queue.length === 0) return;
    this.committing = true;
    const batch = this.takeBatch();
    const segment = this.segment;
    assert(segment !== null, 'journal has an open segment');
    // Records take their place (segment and index) only now, in the segment they are written to.
    const indexBefore = segment.nextIndex;
    const buffers: Buffer[] = [];
    let bytes = 0;
    for (const record of batch) {
      if (record.bytes === 0) continue;
      buffers.push(encodeRecordHead(record, segment.number, segment.nextIndex, segment.nextIndex - indexBefore));
      segment.nextIndex += 1;
      if (record.payload !== undefined) buffers.push(record.payload);
      bytes += record.bytes;
    }
    const startedNs = process.hrtime.bigint();
    try {
      if (bytes > 0) {
        await writevAll(segment.handle, buffers, segment.sizeBytes);
        await segment.handle.datasync();
        segment.sizeBytes += bytes;
      }
      this.stats.commitsTotal += 1;
      this.stats.bytesTotal += bytes;
      this.stats.commitSecondsTotal += Number(process.hrtime.bigint() - startedNs) / 1e9;
      for (const record of batch) record.resolve();
    } catch (error) {
      this.failure = fromSystemError(error, 'journal write failed');
      this.failedAtMs = this.options.clock.nowMs();
      this.options.log.error('journal write failed: the chunk server takes no writes for now', { error: this.failure });
      for (const record of batch) record.reject(this.failure);
      for (const record of this.queue.splice(0)) record.reject(this.failure);
      // Nothing of the failed batch may survive to be replayed: cut the segment back to the last
      // good record, and give its indexes to the next batch.
      segment.nextIndex = indexBefore;
      await segment.handle.truncate(segment.sizeBytes).catch((cause: unknown) => {
        this.options.log.error('could not cut the journal back after a failed write', { error: cause });
        this.truncateFailed = true;
      });
    } finally {
      this.committing = false;
      for (const wake of this.idleWaiters.splice(0)) wake();
    }
    if (segment.sizeBytes >= this.options.segmentBytesMax && this.checkpointing === null && this.failure === null && this.fatal === null) {
      this.checkpoint().catch((error: unknown) => this.options.log.error('checkpoint failed', { error }));
    }
    if (this.queue.length > 0) this.schedule();
  }

  private takeBatch(): PendingRecord[] {
    let bytes = 0;
    let count = 0;
    while (count < this.queue.length) {
      const record = this.queue[count];
      assert(record !== undefined, 'journal queue index');
      if (count > 0 && bytes + record.bytes > this.options.batchBytesMax) break;
      bytes += record.bytes;
      count += 1;
    }
    return this.queue.splice(0, count);
  }

  /** Starts the next segment, syncs chunk files, then recycles the segments before it. One at a time. */
  checkpoint(): Promise<void> {
    this.checkpointing ??= this.runCheckpoint().finally(() => {
      this.checkpointing = null;
    });
    return this.checkpointing;
  }

  private async runCheckpoint(): Promise<void> {
    if (this.fatal !== null) throw this.fatal;
    if (this.segment === null || this.segment.sizeBytes === 0) {
      await this.syncChunkFiles();
      return;
    }
    const next = await this.nextSegment(false);
    // Switch only while no batch is being written, so the old segment is complete when closed.
    while (this.committing) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    const old = this.segment;
    this.segment = next;
    // Records of the old segments must be in the chunk files before those are synced.
    while ([...this.unapplied.keys()].some((number) => number < next.number)) {
      await new Promise<void>((resolve) => this.appliedWaiters.push(resolve));
    }
    await this.syncChunkFiles();
    // A chunk sync that failed elsewhere while this one ran (an evicted handle's, which finished
    // before syncChunkFiles could wait for it) stopped the journal: its data may be only here.
    if (this.fatal !== null) throw this.fatal;
    await old.handle.close();
    const { segments } = await this.listFiles();
    await this.recycle(segments.filter((s) => s.number < next.number).map((s) => s.name));
    this.stats.checkpointsTotal += 1;
    this.prepareSpare();
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
    if (this.failure === null && this.fatal === null) await this.checkpoint();
    else await this.checkpointing?.catch(() => undefined);
    await this.preparingSpare;
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
    const failure = new StorageError('ERR_SHUTTING_DOWN', 'journal abandoned');
    for (const record of this.queue.splice(0)) record.reject(failure);
    while (this.committing) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    await this.preparingSpare;
    await this.segment?.handle.close();
    this.segment = null;
  }

  /**
   * Opens the next segment: a prepared spare renamed to the next number, or, when none is ready, a
   * new file (preallocated first if `preallocate`, else growing as it is written).
   */
  private async nextSegment(preallocate: boolean): Promise<Segment> {
    const number = this.highestNumber + 1;
    this.highestNumber = number;
    const name = segmentName(number);
    const path = join(this.options.directory, name);
    const { spares } = await this.listFiles();
    const spare = spares[0];
    if (spare !== undefined) {
      await this.options.disk.rename(join(this.options.directory, spare.name), path);
    } else if (preallocate) {
      await zeroFill(this.options.disk, path, this.options.segmentBytesMax);
    }
    const handle = await this.options.disk.open(path, spare !== undefined || preallocate ? 'readWrite' : 'createExclusive');
    // The segment's directory entry must survive a crash as surely as the records in it (and the
    // renames of recycled segments to spares go with it).
    await this.options.disk.syncDirectory(this.options.directory);
    return { handle, number, name, sizeBytes: 0, nextIndex: 0 };
  }

  /** Keeps up to SPARES_MAX old segments as spares for reuse; deletes the rest. */
  private async recycle(names: readonly string[]): Promise<void> {
    const { spares } = await this.listFiles();
    let kept = spares.length;
    for (const name of names) {
      const number = Number(SEGMENT_NAME.exec(name)?.[1] ?? 0);
      if (kept < SPARES_MAX) {
        await this.options.disk.rename(join(this.options.directory, name), join(this.options.directory, spareName(number)));
        kept += 1;
      } else {
        await this.options.disk.remove(join(this.options.directory, name));
      }
    }
  }

  /** Zero-fills a spare in the background when there is none, so the next checkpoint finds one. */
  private prepareSpare(): void {
    if (this.preparingSpare !== null || this.closed) return;
    this.preparingSpare = (async () => {
      const { spares } = await this.listFiles();
      if (spares.length > 0) return;
      this.highestNumber += 1;
      const temporary = join(this.options.directory, `preparing-${this.highestNumber}.tmp`);
      await zeroFill(this.options.disk, temporary, this.options.segmentBytesMax);
      await this.options.disk.rename(temporary, join(this.options.directory, spareName(this.highestNumber)));
    })()
      .catch((error: unknown) => this.options.log.warn('could not prepare a journal spare; segments will grow as written', { error }))
      .finally(() => {
        this.preparingSpare = null;
      });
  }

  private async listFiles(): Promise<{ segments: Array<{ name: string; number: number }>; spares: Array<{ name: string; number: number }> }> {
    const names = (await this.options.disk.readdir(this.options.directory)).sort();
    const pick = (pattern: RegExp) => names.flatMap((name) => {
      const match = pattern.exec(name);
      return match === null ? [] : [{ name, number: Number(match[1]) }];
    });
    return { segments: pick(SEGMENT_NAME), spares: pick(SPARE_NAME) };
  }

  private async replaySegment(segment: { name: string; number: number }, isLast: boolean,
    apply: (record: JournalRecord) => Promise<void>): Promise<number> {
    const bytes = await this.options.disk.readFile(join(this.options.directory, segment.name));
    let position = 0;
    let index = 0;
    for (;;) {
      const parsed = parseRecord(bytes, position);
      if (parsed === null || parsed.record.segmentNumber !== segment.number || parsed.record.index !== index) break;
      // A record that could not be applied (an operating error: the caller reports it) is counted
      // and replay goes on, as the later records are still owed to the chunk files. A programmer
      // error stops the start.
      await apply(parsed.record).catch((error: unknown) => {
        if (!(error instanceof StorageError)) throw error;
        this.replayFailuresTotal += 1;
      });
      position = parsed.end;
      index += 1;
    }
    // Where replay stops is normally the end: a torn tail after a crash, zeroes, or the records of
    // a recycled file's earlier life. Only a valid record of this very segment further on proves
    // that something in between was lost: damage, said loudly.
    if (hasLaterRecord(bytes, position, segment.number, index)) {
      this.damagedRecordsTotal += 1;
      this.options.log.error('journal damaged: replay stopped at a bad record; later records were not applied', {
        segment: segment.name, offset: position, index, isLast,
      });
    }
    return index;
  }
}

function segmentName(number: number): string {
  return `${String(number).padStart(16, '0')}.log`;
}

function spareName(number: number): string {
  return `spare-${String(number).padStart(16, '0')}.log`;
}

async function zeroFill(disk: Disk, path: string, sizeBytes: number): Promise<void> {
  const handle = await disk.open(path, 'create');
  try {
    for (let offset = 0; offset < sizeBytes; offset += ZERO_FILL.length) {
      await handle.write(ZERO_FILL, 0, Math.min(ZERO_FILL.length, sizeBytes - offset), offset);
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export function encodeRecordHead(
  record: Pick<PendingRecord, 'type' | 'chunkId' | 'offsetBytes' | 'lengthBytes' | 'payload' | 'payloadCrc'>,
  segmentNumber: number,
  index: number,
  positionInBatch: number,
): Buffer {
  assert(positionInBatch >= 0 && positionInBatch <= BATCH_POSITION_MAX, 'a batch holds at most 2^24 records');
  const head = Buffer.allocUnsafe(JOURNAL_HEADER_BYTES);
  head.writeUInt32BE(MAGIC, 0);
  head.writeUInt32BE(JOURNAL_HEADER_BYTES + (record.payload?.length ?? 0), 4);
  head.writeUInt8(record.type, 12);
  head.writeUIntBE(positionInBatch, 13, 3);
  head.writeUInt32BE(segmentNumber, 16);
  head.writeUInt32BE(index, 20);
  head.writeUInt32BE(Math.floor(record.chunkId / TWO_32), 24);
  head.writeUInt32BE(record.chunkId >>> 0, 28);
  head.writeUInt32BE(record.offsetBytes, 32);
  head.writeUInt32BE(record.lengthBytes, 36);
  head.writeUInt32BE(crc32c(head.subarray(12), record.payloadCrc), 8);
  return head;
}

/** Parses the record at `position`, or returns null if it is missing, torn or corrupt. */
export function parseRecord(bytes: Buffer, position: number): { record: JournalRecord; positionInBatch: number; end: number } | null {
  if (bytes.length - position < JOURNAL_HEADER_BYTES) return null;
  if (bytes.readUInt32BE(position) !== MAGIC) return null;
  const recordBytes = bytes.readUInt32BE(position + 4);
  if (recordBytes < JOURNAL_HEADER_BYTES || recordBytes > JOURNAL_HEADER_BYTES + CHUNK_BYTES_MAX) return null;
  if (position + recordBytes > bytes.length) return null;
  const payload = bytes.subarray(position + JOURNAL_HEADER_BYTES, position + recordBytes);
  const expectedCrc = crc32c(bytes.subarray(position + 12, position + JOURNAL_HEADER_BYTES), payload.length === 0 ? 0 : crc32c(payload));
  if (expectedCrc !== bytes.readUInt32BE(position + 8)) return null;
  const type = bytes.readUInt8(position + 12);
  if (type !== JOURNAL_RECORD_TYPE.WRITE && type !== JOURNAL_RECORD_TYPE.ZERO) return null;
  const lengthBytes = bytes.readUInt32BE(position + 36);
  if (type === JOURNAL_RECORD_TYPE.WRITE && payload.length !== lengthBytes) return null;
  if (type === JOURNAL_RECORD_TYPE.ZERO && payload.length !== 0) return null;
  return {
    record: {
      type,
      segmentNumber: bytes.readUInt32BE(position + 16),
      index: bytes.readUInt32BE(position + 20),
      chunkId: bytes.readUInt32BE(position + 24) * TWO_32 + bytes.readUInt32BE(position + 28),
      offsetBytes: bytes.readUInt32BE(position + 32),
      lengthBytes,
      payload,
    },
    positionInBatch: bytes.readUIntBE(position + 13, 3),
    end: position + recordBytes,
  };
}

/**
 * A valid record of this segment after `position`, of a batch that began after the record replay
 * stopped at (`index`): that batch was written only once the one holding `index` had been synced,
 * so the record at `index` was lost after it was durable: damage.
 */
function hasLaterRecord(bytes: Buffer, position: number, segmentNumber: number, index: number): boolean {
  const magic = Buffer.alloc(4);
  magic.writeUInt32BE(MAGIC, 0);
  for (let at = bytes.indexOf(magic, position + 1); at >= 0; at = bytes.indexOf(magic, at + 1)) {
    const parsed = parseRecord(bytes, at);
    if (parsed === null || parsed.record.segmentNumber !== segmentNumber || parsed.record.index <= index) continue;
    if (parsed.record.index - parsed.positionInBatch > index) return true;
  }
  return false;
}

async function writevAll(handle: DiskFile, buffers: Buffer[], position: number): Promise<void> {
  let offset = position;
  let remaining = buffers;
  while (remaining.length > 0) {
    const bytesWritten = await handle.writev(remaining, offset);
    offset += bytesWritten;
    remaining = dropWritten(remaining, bytesWritten);
  }
}

function dropWritten(buffers: Buffer[], written: number): Buffer[] {
  let left = written;
  let index = 0;
  while (index < buffers.length && left >= (buffers[index]?.length ?? 0)) {
    left -= buffers[index]?.length ?? 0;
    index += 1;
  }
  const rest = buffers.slice(index);
  const first = rest[0];
  if (first !== undefined && left > 0) rest[0] = first.subarray(left);
  return rest;
}
