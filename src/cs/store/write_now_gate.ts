// Whether a small apply may be done on the event loop (Disk.writeNow, a copy into the page cache)
// or must go through the thread pool. Pure: the caller passes the time and what each write took.
//
// A copy into the page cache takes microseconds; when the kernel holds writers back (dirty pages
// over the limit and the data disk behind, a file system that is not local) it takes as long as
// the kernel wants, and the event loop with it: applies then go through the thread pool for
// `pauseMs`. But an isolated write of a few milliseconds is no such sign: on a busy machine the
// process was preempted in the middle of it, or the file's time update waited for the file
// system's journal to commit. A single one of those must not send every apply through the
// thread pool, whose round trip costs more than the copy (profiled here at 4k QD32: handing a
// write to the pool took 117 µs of the event loop's time, plus the worker's write and the wake-up
// that reports it, against 72 µs for the write done at once; one 5.5 ms write had put every apply
// through the pool for 10 s, and a cluster's 4k QD32 rate rose from 1,281 to 1,785 IOPS without
// that). So the gate closes only for
// writes slow in sum: more than `slowBudgetMs` of event-loop time in slow writes within one
// `windowMs`, or one write that alone took `stallMs`.

import { assert } from '../../util/assert.ts';

export interface WriteNowGateLimits {
  /** A write taking longer than this counts as slow. */
  readonly slowMs: number;
  /** Slow writes adding up to more than this within one window close the gate. */
  readonly slowBudgetMs: number;
  readonly windowMs: number;
  /** One write this slow closes the gate at once. */
  readonly stallMs: number;
  /** How long the gate stays closed. */
  readonly pauseMs: number;
}

export const WRITE_NOW_GATE_LIMITS: WriteNowGateLimits = {
  slowMs: 5,
  slowBudgetMs: 50,
  windowMs: 1_000,
  stallMs: 50,
  pauseMs: 10_000,
};

export type WriteNowVerdict = 'ok' | 'closed';

export class WriteNowGate {
  private readonly limits: WriteNowGateLimits;
  private closedUntilMs = Number.NEGATIVE_INFINITY;
  private windowStartMs = Number.NEGATIVE_INFINITY;
  private slowInWindowMs = 0;

  constructor(limits: WriteNowGateLimits = WRITE_NOW_GATE_LIMITS) {
    assert(limits.slowMs > 0 && limits.slowBudgetMs >= limits.slowMs && limits.windowMs > 0 && limits.stallMs >= limits.slowMs,
      'write-now gate limits are consistent');
    this.limits = limits;
  }

  /** Whether an apply may be written on the event loop at `nowMs`. */
  isOpen(nowMs: number): boolean {
    return nowMs >= this.closedUntilMs;
  }

  /** Records a write done on the event loop that ended at `nowMs` after `tookMs`; 'closed' if it closed the gate. */
  observe(nowMs: number, tookMs: number): WriteNowVerdict {
    if (tookMs <= this.limits.slowMs) return 'ok';
    if (nowMs - this.windowStartMs >= this.limits.windowMs) {
      this.windowStartMs = nowMs;
      this.slowInWindowMs = 0;
    }
    this.slowInWindowMs += tookMs;
    if (tookMs < this.limits.stallMs && this.slowInWindowMs <= this.limits.slowBudgetMs) return 'ok';
    this.closedUntilMs = nowMs + this.limits.pauseMs;
    this.slowInWindowMs = 0;
    return 'closed';
  }
}
