// Which blocks the read cache takes in (pure, no I/O): TinyLFU. Every access to a block counts in
// a small frequency sketch (count-min, four 4-bit-range counters per key, halved every
// `sampleSize` accesses so old popularity fades); a block that missed is taken in only when it
// was seen before and, with the cache full, it is seen more often than the block it would evict.
// A one-pass scan (a backup reading the whole volume) touches each block once: it never beats a
// hot block and flushes nothing. Reads that continue where the last read of their stream (a
// volume, a chunk) ended are a sequential stream once past `sequentialBytes`, and are not even
// counted (the incumbent's rule:
// 64 KiB blocks read more than 3 times, sequential reads skipped; this one also compares with
// what it would evict, so a slow scan that touches blocks twice does not flush the hot set).

import { assert } from '../util/assert.ts';

const COUNTER_MAX = 15;
const ROWS = 4;

/** Counts how often keys were seen, approximately (never under), in fixed memory. */
export class FrequencySketch {
  private readonly counters: Uint8Array;
  private readonly mask: number;
  private readonly sampleSize: number;
  private samples = 0;

  /** `width`: counters per row, rounded up to a power of two (a few times the keys to tell apart). */
  constructor(width: number, sampleSize: number) {
    assert(width >= 1 && sampleSize >= 1, 'a sketch has counters and a sample size');
    let size = 1;
    while (size < width) size *= 2;
    this.counters = new Uint8Array(size * ROWS);
    this.mask = size - 1;
    this.sampleSize = sampleSize;
  }

  increment(hash: number): void {
    for (let row = 0; row < ROWS; row += 1) {
      const index = this.indexOf(hash, row);
      const value = this.counters[index] ?? 0;
      if (value < COUNTER_MAX) this.counters[index] = value + 1;
    }
    this.samples += 1;
    if (this.samples >= this.sampleSize) this.age();
  }

  frequency(hash: number): number {
    let least = COUNTER_MAX;
    for (let row = 0; row < ROWS; row += 1) least = Math.min(least, this.counters[this.indexOf(hash, row)] ?? 0);
    return least;
  }

  /** Halves every counter: what was popular long ago fades. */
  private age(): void {
    for (let index = 0; index < this.counters.length; index += 1) this.counters[index] = (this.counters[index] ?? 0) >> 1;
    this.samples = Math.floor(this.samples / 2);
  }

  private indexOf(hash: number, row: number): number {
    // A different odd multiplier per row spreads one hash over independent-enough slots.
    const mixed = Math.imul(hash ^ (hash >>> 16), ROW_SEEDS[row] ?? 1) >>> 0;
    return row * (this.mask + 1) + ((mixed ^ (mixed >>> 13)) & this.mask);
  }
}

const ROW_SEEDS = [0x9e3779b1, 0x85ebca77, 0xc2b2ae3d, 0x27d4eb2f];

/** FNV-1a of a string key: the sketch's hash. */
export function hashKey(key: string): number {
  let hash = 0x811c9dc5;
  for (let index = 0; index < key.length; index += 1) hash = Math.imul(hash ^ key.charCodeAt(index), 0x01000193);
  return hash >>> 0;
}

/**
 * Tells a sequential stream (a scan) from random reads: per stream (a volume, a chunk), where its
 * reads have got to. A read starting near there (within `nearLengths` of its own length: a scan with
 * several requests in flight sends them slightly out of order) continues the run; a read alone
 * longer than `sequentialBytes` is a scan by itself. Random reads of a small hot region seldom
 * land that near the last end, so they never add up to a run.
 */
export class SequentialDetector {
  private readonly lastEnd = new Map<number, { endBytes: number; runBytes: number }>();
  private readonly sequentialBytes: number;
  private readonly streamsMax: number;

  private readonly nearLengths: number;

  constructor(sequentialBytes: number, nearLengths: number, streamsMax = 4096) {
    this.sequentialBytes = sequentialBytes;
    this.nearLengths = nearLengths;
    this.streamsMax = streamsMax;
  }

  /** Records a read; true when it is part of a run longer than `sequentialBytes`. */
  isSequential(streamId: number, offsetBytes: number, lengthBytes: number): boolean {
    const last = this.lastEnd.get(streamId);
    const continues = last !== undefined && Math.abs(offsetBytes - last.endBytes) <= this.nearLengths * lengthBytes;
    const runBytes = continues ? last.runBytes + lengthBytes : lengthBytes;
    const endBytes = continues ? Math.max(last.endBytes, offsetBytes + lengthBytes) : offsetBytes + lengthBytes;
    if (!this.lastEnd.has(streamId) && this.lastEnd.size >= this.streamsMax) {
      const oldest = this.lastEnd.keys().next();
      if (oldest.done !== true) this.lastEnd.delete(oldest.value);
    }
    this.lastEnd.set(streamId, { endBytes, runBytes });
    return runBytes > this.sequentialBytes;
  }
}
