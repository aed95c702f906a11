// Reads a target's daemons' /metrics (and its processes' CPU) about once a second while a fio job
// runs, so that the harness sees each second: bytes the NBD server acknowledged, journal bytes,
// commits and checkpoints per chunk server. A second with no acknowledged write is a stall.
//
// Invariants: samples are taken on a fixed schedule (start + k × period, a late one is not made
// up for), each stamped with performance.now() before its scrapes; scraping is best effort (a
// daemon that does not answer is missing from that sample, see probes.ts).
// Non-goals: sub-second resolution (a scrape of four daemons takes milliseconds to tens of them).

import { snapshot, type ProbeSnapshot } from '../nbd/probes.ts';
import type { Target } from '../nbd/targets.ts';
import type { CounterSample } from './report.ts';

export class MetricsSampler {
  private readonly target: Target;
  private readonly periodMs: number;
  private readonly samples: ProbeSnapshot[] = [];
  private running = false;
  private loop: Promise<void> | null = null;
  /** Ends the wait for the next tick at once (stop() does not wait out a period). */
  private wake: (() => void) | null = null;

  constructor(target: Target, periodMs: number) {
    this.target = target;
    this.periodMs = periodMs;
  }

  /** Takes the first sample and keeps sampling until stop(). */
  async start(): Promise<void> {
    this.samples.push(await snapshot(this.target));
    this.running = true;
    this.loop = this.run(this.samples[0]!.timeMs);
  }

  /**
   * Ends the schedule and takes a last sample at once, so the last interval ends with the job
   * (a short one, not a whole second); returns every sample in time order.
   */
  async stop(): Promise<ProbeSnapshot[]> {
    this.running = false;
    this.wake?.();
    await this.loop;
    this.samples.push(await snapshot(this.target));
    return this.samples;
  }

  private async run(startMs: number): Promise<void> {
    for (let tick = 1; this.running; tick += 1) {
      const waitMs = startMs + tick * this.periodMs - performance.now();
      if (waitMs > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, waitMs);
          this.wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.wake = null;
      }
      if (!this.running) return;
      this.samples.push(await snapshot(this.target));
    }
  }
}

/**
 * The readings of one series (`name` or `name{label="value"}`, as /metrics prints it) of one
 * daemon; a sample without it (the scrape failed) is left out.
 */
export function counterSamples(samples: readonly ProbeSnapshot[], daemon: string, series: string,
): CounterSample[] {
  const result: CounterSample[] = [];
  for (const sample of samples) {
    const value = sample.samplesByDaemon.get(daemon)?.get(series);
    if (value !== undefined) result.push({ timeMs: sample.timeMs, value });
  }
  return result;
}
