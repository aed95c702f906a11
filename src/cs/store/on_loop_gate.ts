// Whether small chunk-file I/O may be done on the event loop (a copy to or from the page cache:
// DiskFile.writeNow, DiskFile.readNow) or must go through the thread pool. One gate for applies,
// one for reads. Pure: the caller passes the time and what each call took.
//
// A copy into the page cache takes microseconds; when the kernel holds writers back (dirty pages
// over the limit and the data disk behind, a file system that is not local) it takes as long as
// the kernel wants, and the event loop with it: applies then go through the thread pool for
// `pauseMs`. A read takes microseconds when its blocks are in the page cache and a device's
// access time when not (a seek, on an HDD): reads that miss add up and close the reads' gate.
// But an isolated call of a few milliseconds is no such sign: on a busy machine the
// process was preempted in the middle of it, or the file's time update waited for the file
// system's journal to commit. A single one of those must not send every call through the
// thread pool, whose round trip costs more than the copy (profiled here at 4k QD32: handing a
// write to the pool took 117 µs of the event loop's time, plus the worker's write and the wake-up
// that reports it, against 72 µs for the write done at once; one 5.5 ms write had put every apply
// through the pool for 10 s, and a cluster's 4k QD32 rate rose from 1,281 to 1,785 IOPS without
// that). So a gate closes only for
// calls slow in sum: more than `slowBudgetMs` of event-loop time in slow calls within one
// `windowMs`, or one call that alone took `stallMs`.

import { assert } from '../../util/assert.ts';

export interface OnLoopGateLimits {
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

export const WRITE_NOW_GATE_LIMITS: OnLoopGateLimits = {
  slowMs: 5,
  slowBudgetMs: 50,
  windowMs: 1_000,
  stallMs: 50,
  pauseMs: 10_000,
};

/**
 * Reads: tighter, as a miss costs a device access while the loop waits. A read from the page
 * cache takes microseconds; 20 ms of reads over 1 ms in a second is a handful of HDD seeks.
 */
export const READ_NOW_GATE_LIMITS: OnLoopGateLimits = {
  slowMs: 1,
  slowBudgetMs: 20,
  windowMs: 1_000,
  stallMs: 20,
  pauseMs: 10_000,
};

export type OnLoopVerdict = 'ok' | 'closed';

export class OnLoopGate {
  private readonly limits: OnLoopGateLimits;
  private closedUntilMs = Number.NEGATIVE_INFINITY;
  private windowStartMs = Number.NEGATIVE_INFINITY;
  private slowInWindowMs = 0;

  constructor(limits: OnLoopGateLimits = WRITE_NOW_GATE_LIMITS) {
    assert(limits.slowMs > 0 && limits.slowBudgetMs >= limits.slowMs && limits.windowMs > 0 && limits.stallMs >= limits.slowMs,
      'write-now gate limits are consistent');
    this.limits = limits;
  }

  /** Whether a call may be made on the event loop at `nowMs`. */
  isOpen(nowMs: number): boolean {
    return nowMs >= this.closedUntilMs;
  }

  /** Records a call made on the event loop that ended at `nowMs` after `tookMs`; 'closed' if it closed the gate. */
  observe(nowMs: number, tookMs: number): OnLoopVerdict {
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
