// Change tracking for chunks being copied: per chunk, a bitmap of the blocks changed since
// TRACK_CHANGES, so a copy can send again only what changed while it ran. In memory only: a
// restart loses it, and the copy starts over.

import { BLOCK_BYTES } from '../../limits.ts';

export class ChangeTracker {
  /** Chunk id -> bitmap of blocks changed since track() (only chunks being copied). */
  private readonly changes = new Map<number, Uint8Array>();

  /** Starts (or restarts) recording which blocks of a chunk of `sizeBytes` change. */
  track(chunkId: number, sizeBytes: number): void {
    this.changes.set(chunkId, new Uint8Array(Math.ceil(sizeBytes / BLOCK_BYTES / 8)));
  }

  isTracked(chunkId: number): boolean {
    return this.changes.has(chunkId);
  }

  forget(chunkId: number): void {
    this.changes.delete(chunkId);
  }

  /** Marks blocks first..last of a tracked chunk changed (nothing for an untracked one). */
  mark(chunkId: number, first: number, last: number): void {
    const changed = this.changes.get(chunkId);
    if (changed === undefined) return;
    for (let block = first; block <= last; block += 1) setBit(changed, block);
  }

  /** Whether a block changed since the last take of it; its mark is cleared. */
  take(chunkId: number, block: number): boolean {
    const changed = this.changes.get(chunkId);
    if (changed === undefined || !testBit(changed, block)) return false;
    clearBit(changed, block);
    return true;
  }
}

function testBit(bits: Uint8Array, index: number): boolean {
  return ((bits[index >> 3] ?? 0) & (1 << (index & 7))) !== 0;
}

function setBit(bits: Uint8Array, index: number): void {
  bits[index >> 3] = (bits[index >> 3] ?? 0) | (1 << (index & 7));
}

function clearBit(bits: Uint8Array, index: number): void {
  bits[index >> 3] = (bits[index >> 3] ?? 0) & ~(1 << (index & 7));
}
