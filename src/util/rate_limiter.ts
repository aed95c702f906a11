// A byte-rate limit for background work (recovery copies, scrubbing): `take(bytes)` resolves when
// the bytes fit under the rate. Bursts are bounded to one second's worth, so a long idle time does
// not allow a flood afterwards.

import type { Clock } from './clock.ts';
import { TokenBucket } from './token_bucket.ts';

export class RateLimiter {
  private readonly clock: Clock;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly bucket: TokenBucket;

  /** 0 bytes per second: no limit. */
  constructor(bytesPerSecond: number, clock: Clock, sleep: (ms: number) => Promise<void>) {
    this.clock = clock;
    this.sleep = sleep;
    this.bucket = new TokenBucket(bytesPerSecond, bytesPerSecond, clock.nowMs());
  }

  get rate(): number {
    return this.bucket.rate;
  }

  setRate(bytesPerSecond: number): void {
    this.bucket.configure(bytesPerSecond, bytesPerSecond, this.clock.nowMs());
  }

  async take(bytes: number): Promise<void> {
    const waitMs = this.bucket.take(bytes, this.clock.nowMs());
    if (waitMs > 0) await this.sleep(Math.ceil(waitMs));
  }
}
