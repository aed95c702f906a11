// A rate from samples of a cumulative counter, over a sliding window (pure: time comes with each
// sample). Used by the CLI's progress displays and by the MDS's tasks for their rate and ETA.

/**
 * Bytes per second over the last `windowMs` of samples of a cumulative counter. A counter that
 * goes down (the process counting restarted) starts the window over.
 */
export class RateMeter {
  private readonly windowMs: number;
  private samples: Array<{ atMs: number; bytes: number }> = [];

  constructor(windowMs = 10_000) {
    this.windowMs = windowMs;
  }

  add(atMs: number, bytes: number): void {
    const last = this.samples.at(-1);
    if (last !== undefined && bytes < last.bytes) this.samples = [];
    this.samples.push({ atMs, bytes });
    // Keep one sample older than the window, so that the rate always spans the whole window.
    while (this.samples.length > 2 && (this.samples[1]?.atMs ?? atMs) <= atMs - this.windowMs) this.samples.shift();
  }

  /** null until two samples at least half a second apart. */
  bytesPerSecond(): number | null {
    const first = this.samples[0];
    const last = this.samples.at(-1);
    if (first === undefined || last === undefined || last.atMs - first.atMs < 500) return null;
    return ((last.bytes - first.bytes) * 1000) / (last.atMs - first.atMs);
  }
}
