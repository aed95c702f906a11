// A volume's I/O limits where it is served: every read, write, zeroing and trim of an open volume
// passes this gate first (the NBD server's connections to one volume share its open Volume, so
// they share one gate: a guest cannot escape its limit by opening more connections).
//
// Two token buckets (util/token_bucket.ts), requests and bytes; a request takes one request token
// and its bytes, and waits until both buckets are out of debt. Waits only grow in arrival order,
// so waiters form a FIFO released by one timer. A change of limits (live, from the MDS) gives the
// waiters' tokens back and takes them again under the new limits, in order: lifting a limit
// releases everyone at once, lowering one holds the queue back at once.
//
// The queue needs no bound of its own: each NBD connection has at most inflightRequestsMax
// requests outstanding, and connections are capped per listener.

import type { VolumeQos } from '../protocol/api.ts';
import { assert } from '../util/assert.ts';
import type { Timers } from '../util/clock.ts';
import { TokenBucket } from '../util/token_bucket.ts';

interface Waiter {
  readonly bytes: number;
  readonly enqueuedMs: number;
  readyAtMs: number;
  readonly resolve: () => void;
}

/** What the gate has done, as running totals (exported as metrics by the process that serves). */
export interface QosGateStats {
  /** Requests that had to wait. */
  delayedRequests: number;
  /** Their waits, summed. */
  delayedSeconds: number;
}

export class QosGate {
  private limits_: VolumeQos;
  private readonly timers: Timers;
  private readonly requests: TokenBucket;
  private readonly bytes: TokenBucket;
  private waiters: Waiter[] = [];
  private head = 0;
  private cancelTimer: (() => void) | null = null;
  private timerAtMs = Infinity;
  readonly stats: QosGateStats = { delayedRequests: 0, delayedSeconds: 0 };

  constructor(limits: VolumeQos, timers: Timers) {
    this.limits_ = limits;
    this.timers = timers;
    const nowMs = timers.monotonicMs();
    this.requests = new TokenBucket(limits.iopsLimit, limits.iopsBurst, nowMs);
    this.bytes = new TokenBucket(limits.bandwidthLimitBytesPerSecond, limits.bandwidthBurstBytes, nowMs);
  }

  get limits(): VolumeQos {
    return this.limits_;
  }

  /** Requests waiting now. */
  get waiting(): number {
    return this.waiters.length - this.head;
  }

  /**
   * Lets a request of `bytes` through: null when it may go at once (no promise is made on the
   * fast path), else a promise that resolves when it may.
   */
  admit(bytes: number): Promise<void> | null {
    if (!this.requests.limited && !this.bytes.limited) return null;
    const nowMs = this.timers.monotonicMs();
    const waitMs = this.take(bytes, nowMs);
    if (waitMs === 0 && this.waiting === 0) return null;
    return new Promise((resolve) => {
      this.waiters.push({ bytes, enqueuedMs: nowMs, readyAtMs: this.notBeforeLast(nowMs + waitMs), resolve });
      this.stats.delayedRequests += 1;
      this.schedule(nowMs);
    });
  }

  /** Applies new limits at once, to the requests waiting too. */
  setLimits(limits: VolumeQos): void {
    const same = limits.iopsLimit === this.limits_.iopsLimit && limits.iopsBurst === this.limits_.iopsBurst &&
      limits.bandwidthLimitBytesPerSecond === this.limits_.bandwidthLimitBytesPerSecond &&
      limits.bandwidthBurstBytes === this.limits_.bandwidthBurstBytes;
    if (same) return;
    this.limits_ = limits;
    const nowMs = this.timers.monotonicMs();
    const queued = this.waiters.slice(this.head);
    for (const waiter of queued) {
      this.requests.giveBack(1);
      this.bytes.giveBack(waiter.bytes);
    }
    this.requests.configure(limits.iopsLimit, limits.iopsBurst, nowMs);
    this.bytes.configure(limits.bandwidthLimitBytesPerSecond, limits.bandwidthBurstBytes, nowMs);
    let previousMs = -Infinity;
    for (const waiter of queued) {
      waiter.readyAtMs = Math.max(previousMs, nowMs + this.take(waiter.bytes, nowMs));
      previousMs = waiter.readyAtMs;
    }
    this.release(nowMs);
  }

  /** Lets every waiter go (the volume closes: their requests then fail on the closed volume). */
  releaseAll(): void {
    this.cancelTimer?.();
    this.cancelTimer = null;
    this.timerAtMs = Infinity;
    const nowMs = this.timers.monotonicMs();
    for (const waiter of this.waiters.slice(this.head)) waiter.readyAtMs = nowMs;
    this.release(nowMs);
  }

  /**
   * Waits grow in arrival order in exact arithmetic; in floating point two waiters due at the same
   * moment (a zeroing behind a write, say) may come out a rounding step apart. The later one never
   * goes before the one ahead of it.
   */
  private notBeforeLast(readyAtMs: number): number {
    const last = this.waiters.at(-1);
    return this.head < this.waiters.length && last !== undefined ? Math.max(readyAtMs, last.readyAtMs) : readyAtMs;
  }

  private take(bytes: number, nowMs: number): number {
    return Math.max(this.requests.take(1, nowMs), this.bytes.take(bytes, nowMs));
  }

  /** Releases the waiters whose time has come, in order, and arms the timer for the next. */
  private release(nowMs: number): void {
    let previousReadyMs = -Infinity;
    while (this.head < this.waiters.length) {
      const waiter = this.waiters[this.head];
      assert(waiter !== undefined, 'the queue holds its waiters');
      assert(waiter.readyAtMs >= previousReadyMs, 'waits grow in arrival order');
      previousReadyMs = waiter.readyAtMs;
      // Sub-millisecond rounding of timers must not cost another round.
      if (waiter.readyAtMs > nowMs + 0.5) break;
      this.head += 1;
      this.stats.delayedSeconds += (nowMs - waiter.enqueuedMs) / 1000;
      waiter.resolve();
    }
    if (this.head === this.waiters.length) {
      this.waiters = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.waiters.length) {
      this.waiters = this.waiters.slice(this.head);
      this.head = 0;
    }
    this.schedule(nowMs);
  }

  private schedule(nowMs: number): void {
    const next = this.waiters[this.head];
    if (next === undefined) {
      this.cancelTimer?.();
      this.cancelTimer = null;
      this.timerAtMs = Infinity;
      return;
    }
    if (this.cancelTimer !== null && this.timerAtMs <= next.readyAtMs) return;
    this.cancelTimer?.();
    this.timerAtMs = next.readyAtMs;
    this.cancelTimer = this.timers.background(Math.max(0, Math.ceil(next.readyAtMs - nowMs)), () => {
      this.cancelTimer = null;
      this.timerAtMs = Infinity;
      this.release(this.timers.monotonicMs());
    });
  }
}
