// A token bucket for bytes: `take(bytes)` resolves when the bytes fit under the rate. Bursts are
// bounded to one second's worth, so a long idle time does not allow a flood afterwards.

import type { Clock } from './clock.ts';

export class RateLimiter {
  private readonly clock: Clock;
  private readonly sleep: (ms: number) => Promise<void>;
  private bytesPerSecond: number;
  private available: number;
  private updatedMs: number;

  constructor(bytesPerSecond: number, clock: Clock, sleep: (ms: number) => Promise<void>) {
    this.clock = clock;
    this.sleep = sleep;
    this.bytesPerSecond = bytesPerSecond;
    this.available = bytesPerSecond;
    this.updatedMs = clock.nowMs();
  }

  get rate(): number {
    return this.bytesPerSecond;
  }

  setRate(bytesPerSecond: number): void {
    this.refill();
    this.bytesPerSecond = bytesPerSecond;
    this.available = Math.min(this.available, bytesPerSecond);
  }

  async take(bytes: number): Promise<void> {
    if (this.bytesPerSecond <= 0) return; // 0 = unlimited
    this.refill();
    this.available -= bytes;
    if (this.available < 0) await this.sleep(Math.ceil((-this.available / this.bytesPerSecond) * 1000));
  }

  private refill(): void {
    const nowMs = this.clock.nowMs();
    this.available = Math.min(this.bytesPerSecond, this.available + ((nowMs - this.updatedMs) / 1000) * this.bytesPerSecond);
    this.updatedMs = nowMs;
  }
}
