// Group commit: records appended during one event-loop turn (and while the previous batch is being
// written) go to the current segment with one durable writev (O_DSYNC; a writev and an fdatasync
// on a handle opened without it), and each append's promise
// resolves only after that sync. Random writes to many chunks thus cost one sequential append and
// one sync per batch, not a sync per file.
//
// A failed write or sync fails its batch and everything queued behind it, and cuts the segment
// back to the last good record, so nothing of the failed batch can be replayed. A full disk may
// have room again later: appends are taken again a while after the failure. A disk error (EIO), or
// a failure the segment could not be cut back after, keeps the journal failed until restart.

import { crc32c } from '@node-rs/crc32';
import { StorageError, fromSystemError } from '../../errors.ts';
import { assert } from '../../util/assert.ts';
import type { Clock } from '../../util/clock.ts';
import type { Logger } from '../../util/log.ts';
import type { DiskFile } from '../disk/disk.ts';
import { JOURNAL_RECORD_TYPE, encodeRecordHead, recordBytes, type RecordContent } from './record.ts';
import type { Segment } from './segments.ts';

/** After a full disk, how long the journal waits before it tries writes again. */
const NO_SPACE_RETRY_MS = 1_000;

export interface JournalStats {
  appendsTotal: number;
  commitsTotal: number;
  bytesTotal: number;
  checkpointsTotal: number;
  commitSecondsTotal: number;
}

interface PendingRecord extends RecordContent {
  /** Bytes in the segment; 0 for a barrier, which only waits for the records before it. */
  readonly bytes: number;
  /** When it was appended (process.hrtime), for the wait histogram. */
  readonly appendedNs: bigint;
  readonly resolve: () => void;
  readonly reject: (error: StorageError) => void;
}

export interface GroupCommitOptions {
  readonly clock: Clock;
  readonly log: Logger;
  /** Largest batch written with one writev + fdatasync. */
  readonly batchBytesMax: number;
  readonly stats: JournalStats;
  /** The segment the next batch goes to. */
  readonly segment: () => Segment;
  /** Why the journal takes no records for good (see Journal's `fatal`), or null. */
  readonly stopped: () => StorageError | null;
  readonly closed: () => boolean;
  /** Called after every batch, with the segment it went to (the journal checkpoints when it is full). */
  readonly afterCommit: (segment: Segment) => void;
  /** Told, for each record, the seconds from its append until its batch was durable. */
  readonly observeWait: (seconds: number) => void;
}

export class GroupCommit {
  private readonly options: GroupCommitOptions;
  private queue: PendingRecord[] = [];
  private readonly idleWaiters: Array<() => void> = [];
  private committing = false;
  private scheduled = false;
  private failureValue: StorageError | null = null;
  /** Bytes queued or being written, not yet in the segment's size. */
  private pendingBytesValue = 0;
  private failedAtMs = 0;
  private truncateFailed = false;

  constructor(options: GroupCommitOptions) {
    this.options = options;
  }

  /** Bytes of records queued or being written (not yet counted in the segment's size). */
  get pendingBytes(): number {
    return this.pendingBytesValue;
  }

  /** The write failure that stops appends for now, or null. */
  get failure(): StorageError | null {
    return this.failureValue;
  }

  /** Queues a record; resolves once it is durable. */
  enqueue(content: Omit<RecordContent, 'payloadCrc'>): Promise<void> {
    if (this.failureValue !== null && this.mayRetry()) {
      this.options.log.info('journal takes writes again (retrying after a full disk)');
      this.failureValue = null;
    }
    const stopped = this.options.stopped();
    if (stopped !== null) return Promise.reject(stopped);
    if (this.failureValue !== null) return Promise.reject(this.failureValue);
    if (this.options.closed()) return Promise.reject(new StorageError('ERR_SHUTTING_DOWN', 'journal closed'));
    const payloadCrc = content.payload === undefined ? 0 : crc32c(content.payload);
    const bytes = recordBytes(content.payload);
    this.pendingBytesValue += bytes;
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ ...content, payloadCrc, bytes, appendedNs: process.hrtime.bigint(), resolve, reject });
      this.options.stats.appendsTotal += 1;
      this.schedule();
    });
  }

  /** Resolves when everything queued before the call is durable. */
  barrier(): Promise<void> {
    if (this.queue.length === 0 && !this.committing) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.queue.push({
        type: JOURNAL_RECORD_TYPE.ZERO, chunkId: 0, offsetBytes: 0, lengthBytes: 0, payload: undefined, payloadCrc: 0, bytes: 0,
        appendedNs: 0n, resolve, reject,
      });
      this.schedule();
    });
  }

  /** Fails every queued record (not the batch being written) with `error`. */
  rejectQueued(error: StorageError): void {
    for (const record of this.queue.splice(0)) {
      this.pendingBytesValue -= record.bytes;
      record.reject(error);
    }
  }

  /** Resolves once no batch is being written (the segment may then be switched or closed). */
  async idle(): Promise<void> {
    while (this.committing) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  private mayRetry(): boolean {
    return this.failureValue?.code === 'ERR_NO_SPACE' && !this.truncateFailed &&
      this.options.clock.nowMs() - this.failedAtMs >= NO_SPACE_RETRY_MS;
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
    const segment = this.options.segment();
    const { stats } = this.options;
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
        // Segments are opened for durable writes (O_DSYNC): the writev was the sync.
        if (!segment.handle.durableWrites) await segment.handle.datasync();
        segment.sizeBytes += bytes;
      }
      stats.commitsTotal += 1;
      stats.bytesTotal += bytes;
      const durableNs = process.hrtime.bigint();
      stats.commitSecondsTotal += Number(durableNs - startedNs) / 1e9;
      for (const record of batch) {
        if (record.bytes > 0) this.options.observeWait(Number(durableNs - record.appendedNs) / 1e9);
        record.resolve();
      }
    } catch (error) {
      this.failureValue = fromSystemError(error, 'journal write failed');
      this.failedAtMs = this.options.clock.nowMs();
      this.options.log.error('journal write failed: the chunk server takes no writes for now', { error: this.failureValue });
      for (const record of batch) record.reject(this.failureValue);
      this.rejectQueued(this.failureValue);
      // Nothing of the failed batch may survive to be replayed: cut the segment back to the last
      // good record, and give its indexes to the next batch.
      segment.nextIndex = indexBefore;
      await segment.handle.truncate(segment.sizeBytes).catch((cause: unknown) => {
        this.options.log.error('could not cut the journal back after a failed write', { error: cause });
        this.truncateFailed = true;
      });
    } finally {
      this.pendingBytesValue -= bytes;
      this.committing = false;
      for (const wake of this.idleWaiters.splice(0)) wake();
    }
    this.options.afterCommit(segment);
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
