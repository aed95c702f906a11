// The per-block checksums of a chunk, as kept in chunks/<hh>/<chunkId>.sums and, while the chunk
// is open, in memory in the same layout: 8 bytes per 4 KiB block, a u32 LE crc32c of the block
// then a u32 LE of flags (bit 0: written). Flags 0 is a hole: it reads as zeroes and is never
// checked. Only the layout lives here; when the file is read and written is the handle cache's
// business (handle_cache.ts), what a change does to the sums the chunk store's.

import { crc32c } from '@node-rs/crc32';
import { BLOCK_BYTES } from '../../limits.ts';

export const SUM_BYTES = 8;
export const FLAG_WRITTEN = 1;
/** What a hole's block sums to: it reads as zeroes, so it equals a written block of zeroes. */
export const ZERO_BLOCK_SUM = crc32c(Buffer.alloc(BLOCK_BYTES));

/** Size of the checksums of a chunk of `chunkBytes`. */
export function sumsBytes(chunkBytes: number): number {
  return (chunkBytes / BLOCK_BYTES) * SUM_BYTES;
}

/** Blocks the checksums cover. */
export function blockCount(sums: Buffer): number {
  return sums.length / SUM_BYTES;
}

export function isWritten(sums: Buffer, block: number): boolean {
  return (sums.readUInt32LE(block * SUM_BYTES + 4) & FLAG_WRITTEN) !== 0;
}

/** The crc32c recorded for a block (meaningful only for a written one). */
export function storedSum(sums: Buffer, block: number): number {
  return sums.readUInt32LE(block * SUM_BYTES);
}

export function setSum(sums: Buffer, block: number, crc: number, flags: number): void {
  sums.writeUInt32LE(crc, block * SUM_BYTES);
  sums.writeUInt32LE(flags, block * SUM_BYTES + 4);
}

/** Makes blocks first..last holes. */
export function clearSums(sums: Buffer, first: number, last: number): void {
  sums.fill(0, first * SUM_BYTES, (last + 1) * SUM_BYTES);
}

/** Whether a checksum file's contents mark any block as written (flag bit 0 of each entry's second word). */
export function holdsWrittenBlocks(sums: Buffer): boolean {
  for (let offset = 4; offset + 4 <= sums.length; offset += SUM_BYTES) {
    if ((sums.readUInt32LE(offset) & FLAG_WRITTEN) !== 0) return true;
  }
  return false;
}

/** The crc32c of each whole block of `blocks`. */
export function blockSums(blocks: Buffer): number[] {
  const sums: number[] = [];
  for (let start = 0; start < blocks.length; start += BLOCK_BYTES) sums.push(crc32c(blocks.subarray(start, start + BLOCK_BYTES)));
  return sums;
}
