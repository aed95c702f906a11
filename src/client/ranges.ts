// Byte ranges of a volume in the terms the chunk servers speak: a range cut into pieces that each lie
// within one chunk and fit one frame, the 4 KiB blocks a range touches (overlapping writes are
// ordered by them), and the check of a caller's range against the volume. Pure: no I/O, no state.

import { StorageError } from '../errors.ts';
import { BLOCK_BYTES, CS_PAYLOAD_BYTES_MAX } from '../limits.ts';
import { assert } from '../util/assert.ts';

/** A piece of a request that lies within one chunk and fits one frame. */
export interface Piece {
  readonly chunkIndex: number;
  readonly offsetInChunk: number;
  readonly lengthBytes: number;
  /** Offset of the piece within the caller's buffer. */
  readonly bufferOffset: number;
}

/**
 * Cuts `lengthBytes` from `offsetBytes` into pieces in order: each ends at a chunk boundary, the
 * range's end, or after `pieceBytesMax` bytes, whichever comes first.
 */
export function splitRange(
  offsetBytes: number,
  lengthBytes: number,
  chunkSizeBytes: number,
  pieceBytesMax: number = CS_PAYLOAD_BYTES_MAX,
): Piece[] {
  const pieces: Piece[] = [];
  const endBytes = offsetBytes + lengthBytes;
  for (let positionBytes = offsetBytes; positionBytes < endBytes;) {
    const piece = pieceFrom(offsetBytes, positionBytes, endBytes, chunkSizeBytes, pieceBytesMax);
    pieces.push(piece);
    positionBytes += piece.lengthBytes;
  }
  return pieces;
}

/** The range's first piece: the part of it that lies in its first chunk, up to `pieceBytesMax` bytes. */
export function firstPiece(
  offsetBytes: number,
  lengthBytes: number,
  chunkSizeBytes: number,
  pieceBytesMax: number = Number.MAX_SAFE_INTEGER,
): Piece {
  assert(lengthBytes > 0, 'a range has a first piece only when it is not empty');
  return pieceFrom(offsetBytes, offsetBytes, offsetBytes + lengthBytes, chunkSizeBytes, pieceBytesMax);
}

function pieceFrom(rangeOffsetBytes: number, positionBytes: number, endBytes: number, chunkSizeBytes: number, pieceBytesMax: number): Piece {
  assert(Number.isSafeInteger(chunkSizeBytes) && chunkSizeBytes > 0, 'a chunk has a positive whole size');
  assert(pieceBytesMax >= 1, 'a piece holds at least one byte');
  const chunkIndex = Math.floor(positionBytes / chunkSizeBytes);
  const offsetInChunk = positionBytes - chunkIndex * chunkSizeBytes;
  const lengthBytes = Math.min(endBytes - positionBytes, chunkSizeBytes - offsetInChunk, pieceBytesMax);
  return { chunkIndex, offsetInChunk, lengthBytes, bufferOffset: positionBytes - rangeOffsetBytes };
}

/** The first and last 4 KiB block a non-empty range touches. */
export function blockSpan(offsetBytes: number, lengthBytes: number): { readonly firstBlock: number; readonly lastBlock: number } {
  assert(lengthBytes > 0, 'an empty range touches no block');
  return { firstBlock: Math.floor(offsetBytes / BLOCK_BYTES), lastBlock: Math.floor((offsetBytes + lengthBytes - 1) / BLOCK_BYTES) };
}

/** Rejects a caller's range that is not whole, is empty or negative, or ends past the volume. */
export function checkRange(volumeName: string, volumeSizeBytes: number, offsetBytes: number, lengthBytes: number): void {
  if (!Number.isSafeInteger(offsetBytes) || !Number.isSafeInteger(lengthBytes) || offsetBytes < 0 || lengthBytes <= 0) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `invalid range ${offsetBytes}+${lengthBytes}`);
  }
  if (offsetBytes + lengthBytes > volumeSizeBytes) {
    throw new StorageError(
      'ERR_OUT_OF_RANGE',
      `range ${offsetBytes}+${lengthBytes} ends past the end of volume "${volumeName}" (${volumeSizeBytes} bytes)`,
    );
  }
}
