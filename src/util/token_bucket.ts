// A token bucket driven by explicit time (pure): tokens accrue at `ratePerSecond` up to
// `capacity`. A take never fails: the taker waits until the bucket holds its cost (or is full,
// for a cost above the capacity), and its cost is taken at once, which may leave the bucket in
// debt for the takers after it. So a quiet bucket lets even a large take go at once, takers
// served in order get waits that only grow, and the long-run rate is the rate whatever the sizes.
// A rate of 0 is no limit.

import { assert } from './assert.ts';

export class TokenBucket {
  private ratePerSecond: number;
  private capacity: number;
  private tokens: number;
  private updatedMs: number;

  /** Starts full: a quiet start may burst. */
  constructor(ratePerSecond: number, capacity: number, nowMs: number) {
    TokenBucket.check(ratePerSecond, capacity);
    this.ratePerSecond = ratePerSecond;
    this.capacity = capacity;
    this.tokens = capacity;
    this.updatedMs = nowMs;
  }

  get rate(): number {
    return this.ratePerSecond;
  }

  get limited(): boolean {
    return this.ratePerSecond > 0;
  }

  /**
   * New rate and capacity from now on; tokens (or debt) carry over, capped at the new capacity. A
   * bucket that had no limit starts full, as a new one does.
   */
  configure(ratePerSecond: number, capacity: number, nowMs: number): void {
    TokenBucket.check(ratePerSecond, capacity);
    this.refill(nowMs);
    const wasUnlimited = this.ratePerSecond === 0;
    this.ratePerSecond = ratePerSecond;
    this.capacity = capacity;
    this.tokens = ratePerSecond === 0 || wasUnlimited ? capacity : Math.min(this.tokens, capacity);
  }

  /** Takes `cost` tokens; returns how long the taker waits before going (0: at once). */
  take(cost: number, nowMs: number): number {
    if (this.ratePerSecond === 0) return 0;
    this.refill(nowMs);
    const needed = Math.min(cost, this.capacity);
    const waitMs = this.tokens >= needed ? 0 : ((needed - this.tokens) / this.ratePerSecond) * 1000;
    this.tokens -= cost;
    return waitMs;
  }

  /** Returns what a taker that has not gone yet took (it will take again, under new limits). */
  giveBack(cost: number): void {
    if (this.ratePerSecond === 0) return;
    this.tokens = Math.min(this.capacity, this.tokens + cost);
  }

  private refill(nowMs: number): void {
    const elapsedMs = Math.max(0, nowMs - this.updatedMs);
    this.updatedMs = Math.max(this.updatedMs, nowMs);
    if (this.ratePerSecond > 0) this.tokens = Math.min(this.capacity, this.tokens + (elapsedMs / 1000) * this.ratePerSecond);
  }

  private static check(ratePerSecond: number, capacity: number): void {
    assert(Number.isFinite(ratePerSecond) && ratePerSecond >= 0, 'a bucket\'s rate is finite and not negative');
    assert(ratePerSecond === 0 || (Number.isFinite(capacity) && capacity > 0), 'a limited bucket holds something');
  }
}
