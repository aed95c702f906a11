// The journal's on-disk format: its one definition, written by segments.ts (segment headers) and
// group commit (records), and parsed by replay: each segment is a header, then records.
//
// Format version 3 (magic "SHJ3"): each segment begins with a 64-byte header naming the data
// directory the journal belongs to by the uuid of its cs.json (by identity, not by path: a journal
// directory may move with its device), so a journal is never replayed into another disk. Big-endian:
//
//   0 u32 magic "SHJ3" | 4 u32 crc32c of bytes [8, 64) | 8 u32 format version (3) |
//   12 u32 segment number | 16 16 bytes owner uuid | 32 zeroes to 64
//
// The header is written and synced when a file becomes a segment, before any record goes in, so a
// segment holding records always has one; a file without a valid header holds no record of this
// format. Records follow at byte SEGMENT_HEADER_BYTES.
//
// Format version 2 (magic "SHJ2", written by the previous version): no segment header, records
// from byte 0. Such segments name no owner: the reader accepts them only from the journal directory
// under the data directory itself (DATA/journal), where they can only be that disk's, and refuses
// them anywhere else (see decideJournalOwner in ./ownership.ts).
//
// A record, in both formats (its magic "SHJ2" names the record layout, which format 3 kept), is
// big-endian, a 40-byte header then the payload:
//
//   0 u32 magic | 4 u32 recordBytes | 8 u32 crc32c of payload then bytes [12, 40) | 12 u8 type |
//   13 u24 position in its batch | 16 u32 segment number | 20 u32 index in segment | 24 u32 chunkId high |
//   28 u32 chunkId low | 32 u32 offsetBytes | 36 u32 lengthBytes | 40 payload
//
// Types: WRITE (payload: the bytes written), ZERO (no payload), IN_PLACE (whole blocks written
// straight to the chunk file, not through the journal; payload: the u32 BE crc32c of each block,
// so the record is small and replay can tell which blocks hold the new bytes: see
// ../store/block_io.ts for what a crash leaves and ../store/replay.ts for how it is settled).
//
// A magic is a format: a header or record of another format is not one of this, so a change of
// layout takes a new magic (and a reader that knows the old one for as long as journals of the old
// format may be found on disk).
//
// Each record knows its position in its batch (the records written with one writev and synced with
// one fdatasync), so replay can tell the unsynced rest of a batch from damage (see
// isRecordOfLaterBatch and segment_reader.ts). Journals written before the position existed hold
// zeroes there: every record then counts as its batch's first.

import { crc32c } from '@node-rs/crc32';
import { BLOCK_BYTES, CHUNK_BYTES_MAX } from '../../limits.ts';
import { assert } from '../../util/assert.ts';

export const JOURNAL_RECORD_TYPE = { WRITE: 1, ZERO: 2, IN_PLACE: 3 } as const;
export type JournalRecordType = (typeof JOURNAL_RECORD_TYPE)[keyof typeof JOURNAL_RECORD_TYPE];

/** The journal format this code writes (segment header SEGMENT_MAGIC); it reads 2 as well. */
export const JOURNAL_FORMAT_VERSION = 3;
/** Format 2: segments without a header, records from byte 0. */
export const JOURNAL_FORMAT_VERSION_HEADERLESS = 2;
const MAGIC = 0x53484a32; // "SHJ2", a record
const SEGMENT_MAGIC = 0x53484a33; // "SHJ3", a format-3 segment header
export const SEGMENT_HEADER_BYTES = 64;
const UUID_BYTES = 16;
export const JOURNAL_HEADER_BYTES = 40;
/** Largest position of a record in its batch that the header's 24 bits hold. */
const BATCH_POSITION_MAX = 0xffffff;
const TWO_32 = 2 ** 32;

export interface JournalRecord {
  readonly type: JournalRecordType;
  readonly segmentNumber: number;
  readonly index: number;
  readonly chunkId: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly payload: Buffer;
}

/** What a record's header is made from before it has its place (segment, index) in the journal. */
export interface RecordContent {
  readonly type: JournalRecordType;
  readonly chunkId: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly payload: Buffer | undefined;
  /** crc32c of the payload (0 without one), computed once when appended; the header is folded in. */
  readonly payloadCrc: number;
}

/** Bytes a record takes in its segment. */
export function recordBytes(payload: Buffer | undefined): number {
  return JOURNAL_HEADER_BYTES + (payload?.length ?? 0);
}

export function encodeRecordHead(record: RecordContent, segmentNumber: number, index: number, positionInBatch: number): Buffer {
  assert(positionInBatch >= 0 && positionInBatch <= BATCH_POSITION_MAX, 'a batch holds at most 2^24 records');
  const head = Buffer.allocUnsafe(JOURNAL_HEADER_BYTES);
  head.writeUInt32BE(MAGIC, 0);
  head.writeUInt32BE(recordBytes(record.payload), 4);
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
  const size = bytes.readUInt32BE(position + 4);
  if (size < JOURNAL_HEADER_BYTES || size > JOURNAL_HEADER_BYTES + CHUNK_BYTES_MAX) return null;
  if (position + size > bytes.length) return null;
  const payload = bytes.subarray(position + JOURNAL_HEADER_BYTES, position + size);
  const expectedCrc = crc32c(bytes.subarray(position + 12, position + JOURNAL_HEADER_BYTES), payload.length === 0 ? 0 : crc32c(payload));
  if (expectedCrc !== bytes.readUInt32BE(position + 8)) return null;
  const type = bytes.readUInt8(position + 12);
  if (type !== JOURNAL_RECORD_TYPE.WRITE && type !== JOURNAL_RECORD_TYPE.ZERO && type !== JOURNAL_RECORD_TYPE.IN_PLACE) return null;
  const offsetBytes = bytes.readUInt32BE(position + 32);
  const lengthBytes = bytes.readUInt32BE(position + 36);
  if (!payloadFits(type, offsetBytes, lengthBytes, payload.length)) return null;
  return {
    record: {
      type,
      segmentNumber: bytes.readUInt32BE(position + 16),
      index: bytes.readUInt32BE(position + 20),
      chunkId: bytes.readUInt32BE(position + 24) * TWO_32 + bytes.readUInt32BE(position + 28),
      offsetBytes,
      lengthBytes,
      payload,
    },
    positionInBatch: bytes.readUIntBE(position + 13, 3),
    end: position + size,
  };
}

/** Bytes of the payload of an IN_PLACE record over `lengthBytes` (whole blocks): a crc32c per block. */
export function inPlaceSumsBytes(lengthBytes: number): number {
  return (lengthBytes / BLOCK_BYTES) * 4;
}

/** Whether a payload of `payloadBytes` is what a record of this type and range carries. */
export function payloadFits(type: JournalRecordType, offsetBytes: number, lengthBytes: number, payloadBytes: number): boolean {
  switch (type) {
    case JOURNAL_RECORD_TYPE.WRITE:
      return payloadBytes === lengthBytes;
    case JOURNAL_RECORD_TYPE.ZERO:
      return payloadBytes === 0;
    case JOURNAL_RECORD_TYPE.IN_PLACE:
      return offsetBytes % BLOCK_BYTES === 0 && lengthBytes > 0 && lengthBytes % BLOCK_BYTES === 0 &&
        payloadBytes === inPlaceSumsBytes(lengthBytes);
  }
}

const RECORD_MAGIC_BYTES = Buffer.alloc(4);
RECORD_MAGIC_BYTES.writeUInt32BE(MAGIC, 0);

/** Where the next record magic in `bytes` from `from` on begins, or -1 (a candidate for parseRecord). */
export function recordMagicAt(bytes: Buffer, from: number): number {
  return bytes.indexOf(RECORD_MAGIC_BYTES, from);
}

/**
 * Whether a record of the segment replay stopped in, past the record it stopped at (`stopIndex`),
 * belongs to a batch that began after that record: that batch was written only once the one
 * holding `stopIndex` had been synced, so the record at `stopIndex` was lost after it was durable.
 */
export function isRecordOfLaterBatch(parsed: { record: JournalRecord; positionInBatch: number }, stopIndex: number): boolean {
  return parsed.record.index - parsed.positionInBatch > stopIndex;
}

/** What a segment's first bytes say about it. */
export type SegmentHeader =
  /** Format 3: its owner and its number. */
  | { readonly format: 3; readonly ownerUuid: string; readonly segmentNumber: number }
  /** Format 2 (records from byte 0), or a file with no header and no record (zeroes, a torn header). */
  | { readonly format: 2 };

export function encodeSegmentHeader(ownerUuid: string, segmentNumber: number): Buffer {
  const head = Buffer.alloc(SEGMENT_HEADER_BYTES);
  head.writeUInt32BE(SEGMENT_MAGIC, 0);
  head.writeUInt32BE(JOURNAL_FORMAT_VERSION, 8);
  head.writeUInt32BE(segmentNumber, 12);
  uuidBytes(ownerUuid).copy(head, 16);
  head.writeUInt32BE(crc32c(head.subarray(8)), 4);
  return head;
}

/** The segment's header, or format 2 when there is no valid one (see the file's header). */
export function parseSegmentHeader(bytes: Buffer): SegmentHeader {
  if (bytes.length < SEGMENT_HEADER_BYTES || bytes.readUInt32BE(0) !== SEGMENT_MAGIC) return { format: 2 };
  if (crc32c(bytes.subarray(8, SEGMENT_HEADER_BYTES)) !== bytes.readUInt32BE(4)) return { format: 2 };
  if (bytes.readUInt32BE(8) !== JOURNAL_FORMAT_VERSION) return { format: 2 };
  return { format: 3, ownerUuid: uuidText(bytes.subarray(16, 16 + UUID_BYTES)), segmentNumber: bytes.readUInt32BE(12) };
}

/** Where the segment's records begin. */
export function recordsStart(header: SegmentHeader): number {
  return header.format === 3 ? SEGMENT_HEADER_BYTES : 0;
}

function uuidBytes(uuid: string): Buffer {
  const hex = uuid.replaceAll('-', '');
  assert(/^[0-9a-f]{32}$/.test(hex), 'an owner uuid is 16 bytes of hex');
  return Buffer.from(hex, 'hex');
}

function uuidText(bytes: Buffer): string {
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
