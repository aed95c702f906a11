// The chunk server's write journal: every data change is appended here and made durable with one
// fdatasync per batch (group commit) before it is acknowledged. Chunk files are written in place
// at the same time through the page cache and synced only at checkpoints, so random writes to many
// chunks cost one sequential append and one sync, not a sync per file.
//
// Layout: journal/<segment number>.log segments, each a sequence of records (big-endian):
//
//   0 u32 magic | 4 u32 recordBytes | 8 u32 crc32c of bytes [12, recordBytes) | 12 u8 type |
//   13 3 zero bytes | 16 u32 seq high | 20 u32 seq low | 24 u32 chunkId high | 28 u32 chunkId low |
//   32 u32 offsetBytes | 36 u32 lengthBytes | 40 payload (WRITE only, lengthBytes)
//
// Records are replayed in order after a crash; each one sets the bytes of its range, so replaying
// a record twice, or a record whose effect already reached the chunk file, is harmless. Replay
// stops at the first record that is torn or fails its checksum (the tail a crash cut off).
//
// Checkpoint: switch to a new segment, sync every chunk file written since the last checkpoint,
// then delete the older segments.

import { crc32c } from '@node-rs/crc32';
import { open, readdir, readFile, rm, mkdir, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { StorageError, fromSystemError } from '../errors.ts';
import { CHUNK_BYTES_MAX } from '../limits.ts';
import { assert } from '../util/assert.ts';
import { syncDirectory } from '../util/fs.ts';
import type { Logger } from '../util/log.ts';

export const JOURNAL_RECORD_TYPE = { WRITE: 1, ZERO: 2 } as const;
export type JournalRecordType = (typeof JOURNAL_RECORD_TYPE)[keyof typeof JOURNAL_RECORD_TYPE];

const MAGIC = 0x53484a31; // "SHJ1"
export const JOURNAL_HEADER_BYTES = 40;
const TWO_32 = 2 ** 32;

export interface JournalRecord {
  readonly type: JournalRecordType;
  readonly seq: number;
  readonly chunkId: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly payload: Buffer;
}

export interface JournalOptions {
  readonly directory: string;
  /** Start a new segment (and a checkpoint) past this size. */
  readonly segmentBytesMax: number;
  /** Largest batch written with one writev + fdatasync. */
  readonly batchBytesMax: number;
  readonly log: Logger;
  /** Syncs every chunk file written since the previous call; the journal calls it at checkpoints. */
  readonly syncChunkFiles: () => Promise<void>;
}

interface PendingRecord {
  readonly head: Buffer;
  readonly payload: Buffer | undefined;
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

export class Journal {
  readonly stats: JournalStats = { appendsTotal: 0, commitsTotal: 0, bytesTotal: 0, checkpointsTotal: 0, commitSecondsTotal: 0 };
  private readonly options: JournalOptions;
  private segment: { handle: FileHandle; name: string; sizeBytes: number } | null = null;
  private nextSeq = 1;
  private queue: PendingRecord[] = [];
  private segmentNumber = 0;
  private readonly idleWaiters: Array<() => void> = [];
  /** Segment number -> records appended while it was current and not yet applied to chunk files. */
  private readonly unapplied = new Map<number, number>();
  private readonly appliedWaiters: Array<() => void> = [];
  private committing = false;
  private scheduled = false;
  private checkpointing: Promise<void> | null = null;
  private failure: StorageError | null = null;
  /** Replay found damage (not just a torn tail) in this start-up's journal. */
  damagedRecordsTotal = 0;
  private closed = false;

  private constructor(options: JournalOptions) {
    this.options = options;
  }

  /**
   * Opens the journal: replays every record left by the previous run through `apply` (in order),
   * syncs the chunk files, deletes the old segments and starts a fresh one.
   */
  static async open(options: JournalOptions, apply: (record: JournalRecord) => Promise<void>): Promise<Journal> {
    await mkdir(options.directory, { recursive: true });
    const journal = new Journal(options);
    const segments = await journal.listSegments();
    let replayed = 0;
    for (const [index, name] of segments.entries()) {
      const isLast = index === segments.length - 1;
      replayed += await journal.replaySegment(name, isLast, apply);
    }
    if (segments.length > 0) {
      await options.syncChunkFiles();
      for (const name of segments) await rm(join(options.directory, name), { force: true });
      options.log.info('journal replayed', { segments: segments.length, records: replayed });
    }
    await journal.startSegment();
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
    const segmentNumber = this.segmentNumber;
    this.unapplied.set(segmentNumber, (this.unapplied.get(segmentNumber) ?? 0) + 1);
    let applied = false;
    const ticket: JournalTicket = {
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
    return ticket;
  }

  private enqueue(type: JournalRecordType, chunkId: number, offsetBytes: number, lengthBytes: number, payload?: Buffer): Promise<void> {
    if (this.failure !== null) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new StorageError('ERR_SHUTTING_DOWN', 'journal closed'));
    const seq = this.nextSeq;
    this.nextSeq += 1;
    const head = encodeRecordHead(type, seq, chunkId, offsetBytes, lengthBytes, payload);
    const bytes = head.length + (payload?.length ?? 0);
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ head, payload, bytes, resolve, reject });
      this.stats.appendsTotal += 1;
      this.schedule();
    });
  }

  /** Resolves when everything appended before the call is durable. */
  barrier(): Promise<void> {
    if (this.queue.length === 0 && !this.committing) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.queue.push({ head: Buffer.alloc(0), payload: undefined, bytes: 0, resolve, reject });
      this.schedule();
    });
  }

  get healthError(): StorageError | null {
    return this.failure;
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
    const buffers: Buffer[] = [];
    let bytes = 0;
    for (const record of batch) {
      if (record.bytes === 0) continue;
      buffers.push(record.head);
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
      this.options.log.error('journal write failed: the chunk server stops accepting writes', { error: this.failure });
      for (const record of batch) record.reject(this.failure);
      for (const record of this.queue.splice(0)) record.reject(this.failure);
    } finally {
      this.committing = false;
      for (const wake of this.idleWaiters.splice(0)) wake();
    }
    if (segment.sizeBytes >= this.options.segmentBytesMax && this.checkpointing === null && this.failure === null) {
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

  /** Starts a new segment, syncs chunk files, then drops the segments before it. One at a time. */
  checkpoint(): Promise<void> {
    this.checkpointing ??= this.runCheckpoint().finally(() => {
      this.checkpointing = null;
    });
    return this.checkpointing;
  }

  private async runCheckpoint(): Promise<void> {
    if (this.segment === null || this.segment.sizeBytes === 0) {
      await this.options.syncChunkFiles();
      return;
    }
    const next = await this.openSegment(this.segmentNumber + 1);
    // Switch only while no batch is being written, so the old segment is complete when closed.
    while (this.committing) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    const old = this.segment;
    this.segment = next;
    this.segmentNumber += 1;
    // Records of the old segments must be in the chunk files before those are synced.
    while ([...this.unapplied.keys()].some((number) => number < this.segmentNumber)) {
      await new Promise<void>((resolve) => this.appliedWaiters.push(resolve));
    }
    await this.options.syncChunkFiles();
    await old.handle.close();
    for (const name of await this.listSegments()) {
      if (name < next.name) await rm(join(this.options.directory, name), { force: true });
    }
    this.stats.checkpointsTotal += 1;
  }

  /** Commits what is queued and checkpoints, so a clean restart has nothing to replay. */
  async close(): Promise<void> {
    await this.barrier();
    if (this.failure === null) await this.checkpoint();
    else await this.checkpointing;
    this.closed = true;
    await this.segment?.handle.close();
    this.segment = null;
  }

  private async startSegment(): Promise<void> {
    const existing = await this.listSegments();
    const last = existing.at(-1);
    this.segmentNumber = last === undefined ? 1 : Number(last.slice(0, 16)) + 1;
    this.segment = await this.openSegment(this.segmentNumber);
  }

  private async openSegment(segmentNumber: number): Promise<{ handle: FileHandle; name: string; sizeBytes: number }> {
    const name = `${String(segmentNumber).padStart(16, '0')}.log`;
    const handle = await open(join(this.options.directory, name), 'wx');
    // The segment's directory entry must survive a crash as surely as the records in it.
    await syncDirectory(this.options.directory);
    return { handle, name, sizeBytes: 0 };
  }

  private async listSegments(): Promise<string[]> {
    const names = await readdir(this.options.directory);
    return names.filter((name) => /^\d{16}\.log$/.test(name)).sort();
  }

  private async replaySegment(name: string, isLast: boolean, apply: (record: JournalRecord) => Promise<void>): Promise<number> {
    const bytes = await readFile(join(this.options.directory, name));
    let position = 0;
    let count = 0;
    for (;;) {
      const parsed = parseRecord(bytes, position);
      if (parsed === null) break;
      await apply(parsed.record);
      this.nextSeq = Math.max(this.nextSeq, parsed.record.seq + 1);
      position = parsed.end;
      count += 1;
    }
    if (position < bytes.length) {
      const detail = { segment: name, offset: position, bytes: bytes.length - position };
      // A torn tail of the newest segment is the expected trace of a crash. Valid records after a
      // bad one, or a bad one in an older segment, mean damage: say so loudly.
      if (isLast && !hasValidRecordAfter(bytes, position)) {
        this.options.log.warn('journal tail ignored (incomplete record)', detail);
      } else {
        this.damagedRecordsTotal += 1;
        this.options.log.error('journal damaged: replay stopped at a bad record; later records were not applied', detail);
      }
    }
    return count;
  }
}

export function encodeRecordHead(
  type: JournalRecordType,
  seq: number,
  chunkId: number,
  offsetBytes: number,
  lengthBytes: number,
  payload: Buffer | undefined,
): Buffer {
  const head = Buffer.allocUnsafe(JOURNAL_HEADER_BYTES);
  head.writeUInt32BE(MAGIC, 0);
  head.writeUInt32BE(JOURNAL_HEADER_BYTES + (payload?.length ?? 0), 4);
  head.writeUInt8(type, 12);
  head.fill(0, 13, 16);
  head.writeUInt32BE(Math.floor(seq / TWO_32), 16);
  head.writeUInt32BE(seq >>> 0, 20);
  head.writeUInt32BE(Math.floor(chunkId / TWO_32), 24);
  head.writeUInt32BE(chunkId >>> 0, 28);
  head.writeUInt32BE(offsetBytes, 32);
  head.writeUInt32BE(lengthBytes, 36);
  const headCrc = crc32c(head.subarray(12));
  head.writeUInt32BE(payload === undefined ? headCrc : crc32c(payload, headCrc), 8);
  return head;
}

/** Parses the record at `position`, or returns null if it is missing, torn or corrupt. */
export function parseRecord(bytes: Buffer, position: number): { record: JournalRecord; end: number } | null {
  if (bytes.length - position < JOURNAL_HEADER_BYTES) return null;
  if (bytes.readUInt32BE(position) !== MAGIC) return null;
  const recordBytes = bytes.readUInt32BE(position + 4);
  if (recordBytes < JOURNAL_HEADER_BYTES || recordBytes > JOURNAL_HEADER_BYTES + CHUNK_BYTES_MAX) return null;
  if (position + recordBytes > bytes.length) return null;
  if (crc32c(bytes.subarray(position + 12, position + recordBytes)) !== bytes.readUInt32BE(position + 8)) return null;
  const type = bytes.readUInt8(position + 12);
  if (type !== JOURNAL_RECORD_TYPE.WRITE && type !== JOURNAL_RECORD_TYPE.ZERO) return null;
  const seq = bytes.readUInt32BE(position + 16) * TWO_32 + bytes.readUInt32BE(position + 20);
  const chunkId = bytes.readUInt32BE(position + 24) * TWO_32 + bytes.readUInt32BE(position + 28);
  const offsetBytes = bytes.readUInt32BE(position + 32);
  const lengthBytes = bytes.readUInt32BE(position + 36);
  const payload = bytes.subarray(position + JOURNAL_HEADER_BYTES, position + recordBytes);
  if (type === JOURNAL_RECORD_TYPE.WRITE && payload.length !== lengthBytes) return null;
  if (type === JOURNAL_RECORD_TYPE.ZERO && payload.length !== 0) return null;
  return { record: { type, seq, chunkId, offsetBytes, lengthBytes, payload }, end: position + recordBytes };
}

function hasValidRecordAfter(bytes: Buffer, position: number): boolean {
  const magic = Buffer.alloc(4);
  magic.writeUInt32BE(MAGIC, 0);
  for (let at = bytes.indexOf(magic, position + 1); at >= 0; at = bytes.indexOf(magic, at + 1)) {
    if (parseRecord(bytes, at) !== null) return true;
  }
  return false;
}

async function writevAll(handle: FileHandle, buffers: Buffer[], position: number): Promise<void> {
  let offset = position;
  let remaining = buffers;
  while (remaining.length > 0) {
    const { bytesWritten } = await handle.writev(remaining, offset);
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
