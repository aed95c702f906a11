// Drain pacing: how fast the journal takes records when the data disk behind it is slower.
//
// The journal frees space only when a checkpoint has synced the chunk files (the "drain"). On an
// SSD journal in front of an HDD, writers can fill the journal many times faster than the HDD
// drains it; without pacing they would run at the SSD's speed until the journal is full and then
// stop dead for a whole checkpoint (seconds on an HDD). Instead, once the journal holds more than
// one segment, records are let in at the rate the data disk was last seen to drain, and more
// slowly as the journal nears full, so writers settle at the drain rate without ever stopping.
//
// The drain rate is measured at each checkpoint: bytes the chunk files took since the previous
// sync began, over the time their sync took. While a sync runs longer than that estimate
// predicts, the rate is bounded by what it has shown so far (bytes / elapsed), so a disk that
// falls from fast to almost nothing is followed within that one sync, not one sync later.
//
// Pure: time comes in as arguments (monotonic milliseconds), so tests and the simulation drive it.

import { assert } from '../../util/assert.ts';

/** Weight of the newest checkpoint's drain rate in the estimate. */
const DRAIN_ESTIMATE_WEIGHT = 0.5;
/** A sync shorter than this says little about the disk (the data was mostly written back already). */
const SYNC_MEASURABLE_MS = 2;
/** Burst the token bucket allows: this much time's worth of the rate. */
const BURST_MS = 20;
/** The slowest pace near a full journal, as a share of the drain rate (never zero: no dead stop). */
const NEAR_FULL_RATE_FLOOR = 0.05;

export interface DrainPacerOptions {
  /** Bytes one segment holds: up to one segment's worth the journal takes records unpaced. */
  readonly segmentBytes: number;
}

/** A chunk-file sync under way: the bytes it flushes and when it began. */
export interface RunningSync {
  readonly bytes: number;
  readonly startedMs: number;
}

export interface PaceState {
  /** Bytes of records the journal holds (written or queued, not yet freed by a checkpoint). */
  readonly heldBytes: number;
  /** What it could hold now at most: the held bytes plus the room its space has left. */
  readonly limitBytes: number;
  readonly runningSync: RunningSync | null;
  readonly nowMs: number;
}

export class DrainPacer {
  readonly segmentBytes: number;
  /** Bytes per second the chunk files were last seen to drain at; null until a sync was measured. */
  private drainEstimate: number | null = null;
  /** Token bucket: bytes that may go now (may be negative after a record larger than the burst). */
  private tokens = 0;
  private tokensAtMs = 0;

  constructor(options: DrainPacerOptions) {
    assert(options.segmentBytes > 0, 'a journal segment holds bytes');
    this.segmentBytes = options.segmentBytes;
  }

  /** The drain rate estimate in bytes per second (null before the first measured sync). */
  get drainBytesPerSecond(): number | null {
    return this.drainEstimate;
  }

  /** A checkpoint synced `bytes` of chunk-file changes in `durationMs`. */
  noteSync(bytes: number, durationMs: number): void {
    assert(bytes >= 0 && durationMs >= 0, 'a sync has a size and a duration');
    if (bytes === 0 || durationMs < SYNC_MEASURABLE_MS) return;
    const rate = (bytes * 1000) / durationMs;
    this.drainEstimate = this.drainEstimate === null ? rate : this.drainEstimate + DRAIN_ESTIMATE_WEIGHT * (rate - this.drainEstimate);
  }

  /**
   * Bytes per second records may go in at (Infinity: unpaced). Up to one segment held: unpaced.
   * Beyond it: the drain rate, bounded by a sync running longer than expected; over the last half
   * segment before the limit, falling linearly to a small floor.
   */
  rateBytesPerSecond(state: PaceState): number {
    if (state.heldBytes <= this.segmentBytes) return Number.POSITIVE_INFINITY;
    let rate = this.drainEstimate ?? Number.POSITIVE_INFINITY;
    const sync = state.runningSync;
    if (sync !== null && sync.bytes > 0) {
      const elapsedMs = state.nowMs - sync.startedMs;
      if (elapsedMs > 0) rate = Math.min(rate, (sync.bytes * 1000) / elapsedMs);
    }
    if (rate === Number.POSITIVE_INFINITY) return rate;
    const slowFromBytes = state.limitBytes - Math.max(0, Math.min(this.segmentBytes / 2, state.limitBytes - this.segmentBytes));
    if (state.heldBytes > slowFromBytes) {
      const left = Math.max(0, state.limitBytes - state.heldBytes) / Math.max(1, state.limitBytes - slowFromBytes);
      rate *= Math.max(NEAR_FULL_RATE_FLOOR, left);
    }
    return rate;
  }

  /**
   * Whether a record of `bytes` may go in now: 0 if so (its bytes are taken from the bucket), else
   * the milliseconds to wait before asking again. The journal's hard limit is the caller's.
   */
  take(bytes: number, state: PaceState): number {
    const rate = this.rateBytesPerSecond(state);
    if (rate === Number.POSITIVE_INFINITY) {
      this.tokens = 0;
      this.tokensAtMs = state.nowMs;
      return 0;
    }
    const burstBytes = (rate * BURST_MS) / 1000;
    this.tokens = Math.min(burstBytes, this.tokens + (Math.max(0, state.nowMs - this.tokensAtMs) * rate) / 1000);
    this.tokensAtMs = state.nowMs;
    if (this.tokens >= 0) {
      this.tokens -= bytes;
      return 0;
    }
    return Math.max(1, Math.ceil((-this.tokens * 1000) / rate));
  }
}
