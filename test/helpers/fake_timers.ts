// Timers for tests of logic that waits: time moves only when the test says (advance), and every
// timer due by then runs in time order, with the promises it starts let settle between timers.

import type { Timers } from '../../src/util/clock.ts';

/** Time moves only when told: `sleep` moves it at once; background timers run on `advance`. */
export class FakeTimers implements Timers {
  nowMs = 0;
  readonly sleeps: number[] = [];
  private timers: { atMs: number; run: () => void }[] = [];

  monotonicMs(): number {
    return this.nowMs;
  }

  sleep(delayMs: number): Promise<void> {
    this.sleeps.push(delayMs);
    this.nowMs += delayMs;
    return Promise.resolve();
  }

  background(delayMs: number, run: () => void): () => void {
    const timer = { atMs: this.nowMs + delayMs, run };
    this.timers.push(timer);
    return () => {
      this.timers = this.timers.filter((other) => other !== timer);
    };
  }

  get pending(): number {
    return this.timers.length;
  }

  /** Runs every timer due within `ms`, in time order, letting the promises each one starts settle. */
  async advance(ms: number): Promise<void> {
    const endMs = this.nowMs + ms;
    for (;;) {
      const next = this.timers.filter((timer) => timer.atMs <= endMs).sort((a, b) => a.atMs - b.atMs)[0];
      if (next === undefined) break;
      this.timers = this.timers.filter((timer) => timer !== next);
      this.nowMs = next.atMs;
      next.run();
      await new Promise((resolve) => setImmediate(resolve));
    }
    this.nowMs = endMs;
  }
}
