// Reading a journal segment at start-up, a piece at a time. Segments are preallocated (64 MiB by
// default) and usually hold far fewer bytes of records than that: reading whole files made a start
// after a crash read every segment in full three times (owner check, scan, replay), into one
// buffer each (about 10 s per chunk server on the power-cut disk of the tests, where a fresh start
// takes 3.5 s). Here a segment costs the bytes of its records, plus a bounded look past where they
// stop (see laterBatchPastStop), and memory holds one piece, or the largest record met.

import { assert } from '../../util/assert.ts';
import type { DiskFile } from '../disk/disk.ts';
import {
  JOURNAL_HEADER_BYTES, SEGMENT_HEADER_BYTES, isRecordOfLaterBatch, parseRecord, parseSegmentHeader, recordMagicAt, recordsStart,
  type JournalRecord, type SegmentHeader,
} from './record.ts';

/** Bytes read from the file at a time (more when a record is larger). */
export const SEGMENT_PIECE_BYTES = 1024 * 1024;

export class SegmentReader {
  readonly header: SegmentHeader;
  readonly fileBytes: number;
  private readonly file: DiskFile;
  private readonly pieceBytes: number;
  /** Bytes [start, start + valid) of the file, at buffer[0..valid). */
  private buffer: Buffer;
  private start = 0;
  private valid = 0;
  /** Where the records replay takes ended, and the index the next one would have had (see records). */
  private stop: { position: number; index: number } | null = null;

  private constructor(file: DiskFile, fileBytes: number, header: SegmentHeader, pieceBytes: number) {
    this.file = file;
    this.fileBytes = fileBytes;
    this.header = header;
    this.pieceBytes = pieceBytes;
    this.buffer = Buffer.allocUnsafe(pieceBytes);
  }

  /** Takes an open file (closed by `close`, or here if this fails); reads its header. */
  static async open(file: DiskFile, pieceBytes = SEGMENT_PIECE_BYTES): Promise<SegmentReader> {
    assert(pieceBytes >= SEGMENT_HEADER_BYTES && pieceBytes >= JOURNAL_HEADER_BYTES, 'a piece holds a header');
    try {
      const fileBytes = await file.sizeBytes();
      const head = Buffer.alloc(Math.min(SEGMENT_HEADER_BYTES, fileBytes));
      let headBytes = 0;
      while (headBytes < head.length) {
        const bytesRead = await file.read(head, headBytes, head.length - headBytes, headBytes);
        if (bytesRead === 0) break;
        headBytes += bytesRead;
      }
      return new SegmentReader(file, fileBytes, parseSegmentHeader(head.subarray(0, headBytes)), pieceBytes);
    } catch (error) {
      await file.close();
      throw error;
    }
  }

  /**
   * The records replay takes from the segment, in order: up to the first torn, corrupt or
   * out-of-place one (another segment's number, or not the next index). A record's payload is a
   * view of the reader's buffer, valid only until the next record is asked for.
   */
  async *records(segmentNumber: number): AsyncGenerator<JournalRecord> {
    let position = recordsStart(this.header);
    let index = 0;
    for (;;) {
      const parsed = await this.recordAt(position);
      if (parsed === null || parsed.record.segmentNumber !== segmentNumber || parsed.record.index !== index) break;
      yield parsed.record;
      position = parsed.end;
      index += 1;
    }
    this.stop = { position, index };
  }

  /**
   * Whether a valid record of this segment lies past where `records` stopped, of a batch that
   * began after the record it stopped at: that batch was written only once the one before it was
   * synced, so a synced record was lost (damage). Batches follow one another without a gap and a
   * batch holds at most `batchBytesMax` (or one unit of records larger than that), so the next
   * batch begins within `batchBytesMax` of the stop, or of the last record of the stopped batch
   * found intact past it: the look goes that far, not to the end of the file (a preallocated
   * segment's zeroes, or a recycled one's records of its earlier life).
   */
  async laterBatchPastStop(segmentNumber: number, batchBytesMax: number): Promise<boolean> {
    assert(this.stop !== null, 'records were read to their end first');
    const { position: stopPosition, index: stopIndex } = this.stop;
    // A batch of one record larger than batchBytesMax ends where that record's header says.
    const stoppedRecordBytes = await this.claimedRecordBytes(stopPosition);
    let limit = Math.min(this.fileBytes, stopPosition + Math.max(batchBytesMax, stoppedRecordBytes + 1));
    let at = stopPosition + 1;
    while (at < limit) {
      // Find the next magic in what is loaded (a magic may straddle two pieces: keep 3 bytes).
      await this.load(at, Math.min(this.pieceBytes, this.fileBytes - at));
      const loadedEnd = Math.min(this.start + this.valid, limit + 4);
      const found = recordMagicAt(this.buffer.subarray(0, loadedEnd - this.start), at - this.start);
      if (found < 0) {
        if (this.start + this.valid >= this.fileBytes) return false;
        at = Math.max(at + 1, loadedEnd - 3);
        continue;
      }
      const candidate = this.start + found;
      if (candidate >= limit) return false;
      const parsed = await this.recordAt(candidate);
      if (parsed !== null && parsed.record.segmentNumber === segmentNumber && parsed.record.index > stopIndex) {
        if (isRecordOfLaterBatch(parsed, stopIndex)) return true;
        // The rest of the stopped batch, intact past the damage: the next batch follows it.
        limit = Math.min(this.fileBytes, Math.max(limit, parsed.end + batchBytesMax));
      }
      at = candidate + 1;
    }
    return false;
  }

  /** The byte where `records` stopped (after the last record it took), for messages. */
  get stopPositionBytes(): number | undefined {
    return this.stop?.position;
  }

  close(): Promise<void> {
    return this.file.close();
  }

  /**
   * The size the header at `position` gives its record, when it has a record's magic and the size
   * fits in the file; else 0 (no header, or a torn or damaged one, which parseRecord refuses unread).
   */
  private async claimedRecordBytes(position: number): Promise<number> {
    if (position + JOURNAL_HEADER_BYTES > this.fileBytes) return 0;
    await this.load(position, JOURNAL_HEADER_BYTES);
    if (recordMagicAt(this.buffer.subarray(position - this.start, position - this.start + 4), 0) !== 0) return 0;
    const claimedBytes = this.buffer.readUInt32BE(position - this.start + 4);
    return claimedBytes >= JOURNAL_HEADER_BYTES && position + claimedBytes <= this.fileBytes ? claimedBytes : 0;
  }

  /** The record at `position` (parseRecord), read in as far as its header says it goes. */
  private async recordAt(position: number): Promise<ReturnType<typeof parseRecord>> {
    const claimedBytes = await this.claimedRecordBytes(position);
    if (claimedBytes === 0) return null;
    await this.load(position, claimedBytes);
    const parsed = parseRecord(this.buffer.subarray(0, this.valid), position - this.start);
    // parseRecord counts from the buffer's start; the file's offsets are what callers follow.
    return parsed === null ? null : { ...parsed, end: this.start + parsed.end };
  }

  /** Makes bytes [position, position + length) of the file readable in the buffer (fewer at its end). */
  private async load(position: number, length: number): Promise<void> {
    const wanted = Math.min(position + length, this.fileBytes);
    if (position >= this.start && wanted <= this.start + this.valid) return;
    // Keep what is loaded from `position` on; read the rest, a piece at least.
    const kept = position >= this.start && position < this.start + this.valid ? this.start + this.valid - position : 0;
    const size = Math.max(this.pieceBytes, wanted - position);
    if (size > this.buffer.length) {
      const grown = Buffer.allocUnsafe(size);
      if (kept > 0) this.buffer.copy(grown, 0, position - this.start, position - this.start + kept);
      this.buffer = grown;
    } else if (kept > 0) {
      this.buffer.copyWithin(0, position - this.start, position - this.start + kept);
    }
    this.start = position;
    this.valid = kept;
    const readEnd = Math.min(this.fileBytes, position + size);
    while (this.start + this.valid < readEnd) {
      const bytesRead = await this.file.read(this.buffer, this.valid, readEnd - this.start - this.valid, this.start + this.valid);
      if (bytesRead === 0) break; // the file shrank under us: what is there is what there is
      this.valid += bytesRead;
    }
  }
}
