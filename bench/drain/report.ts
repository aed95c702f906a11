// The pure parts of the journal-drain benchmark: per-second throughput from a counter sampled
// about once a second (the NBD server's acknowledged write bytes), fio's averaged bandwidth log,
// the sustained-write summary (steady throughput, the worst second against it, stalls) and the
// QD1 latency comparison, and their compact text forms.
//
// Definitions (bench/README.md repeats them):
// - An interval is the time between two consecutive samples; its rate is the counter's increase
//   divided by its length. Intervals shorter than FULL_INTERVAL_FRACTION of the sampling period
//   (the last one, cut short by the end of the run) count toward totals but not as seconds.
// - The journal "first filled" in the first interval at whose end the client had written at least
//   the journal's size: every chunk server holds a replica of every chunk (three servers, three
//   replicas), so by then each journal has taken that many payload bytes. Steady throughput is the
//   median rate of the full intervals after that one; the check is the lowest of those against it.
//
// Non-goals: statistics across runs, judging a result (the harness prints, it never fails).

import { assert } from '../../src/util/assert.ts';

/** One reading of a monotonic counter. */
export interface CounterSample {
  readonly timeMs: number;
  readonly value: number;
}

/** One interval between two samples. */
export interface IntervalRate {
  /** Start of the interval, from the first sample. */
  readonly startMs: number;
  readonly lengthMs: number;
  readonly bytes: number;
  readonly bytesPerSecond: number;
  /** Counter increase from the first sample to the end of this interval. */
  readonly cumulativeBytes: number;
  /** False for an interval cut short (the last one). */
  readonly full: boolean;
}

/** An interval shorter than this share of the period is not a whole second. */
export const FULL_INTERVAL_FRACTION = 0.75;

export function intervalRates(samples: readonly CounterSample[], periodMs: number,
): IntervalRate[] {
  assert(periodMs > 0, 'a positive sampling period');
  const rates: IntervalRate[] = [];
  const first = samples[0];
  if (first === undefined) return rates;
  for (let index = 1; index < samples.length; index += 1) {
    const before = samples[index - 1]!;
    const after = samples[index]!;
    const lengthMs = after.timeMs - before.timeMs;
    assert(lengthMs > 0, 'samples in time order');
    const bytes = after.value - before.value;
    rates.push({
      startMs: before.timeMs - first.timeMs, lengthMs, bytes,
      bytesPerSecond: (bytes * 1000) / lengthMs,
      cumulativeBytes: after.value - first.value,
      full: lengthMs >= periodMs * FULL_INTERVAL_FRACTION,
    });
  }
  return rates;
}

/** One line of fio's bandwidth log with --log_avg_msec: the end of a window and its mean rate. */
export interface FioBandwidthPoint {
  readonly timeMs: number;
  readonly bytesPerSecond: number;
}

/**
 * fio's `PREFIX_bw.N.log` (fio 3.33: `time_ms, KiB/s, direction, block size, offset` and, in
 * later versions, a priority column), the lines of `direction` (0 read, 1 write, 2 trim).
 */
export function parseFioBandwidthLog(text: string, direction = 1): FioBandwidthPoint[] {
  const points: FioBandwidthPoint[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const fields = line.split(',').map((field) => Number(field.trim()));
    const [timeMs, kibPerSecond, lineDirection] = fields;
    if (fields.length < 3 || fields.some((field) => !Number.isFinite(field))) {
      throw new Error(`fio bandwidth log: cannot read line "${line}"`);
    }
    if (lineDirection === direction) {
      points.push({ timeMs: timeMs!, bytesPerSecond: kibPerSecond! * 1024 });
    }
  }
  return points;
}

/**
 * Spans with no line in fio's averaged log: fio writes a window's line only when an I/O
 * completes, so a stall shows as a missing stretch (and the line after it may overstate the
 * rate). [fromMs, toMs] of every gap longer than 1.5 periods, the start of the run included.
 */
export function fioLogGaps(points: readonly FioBandwidthPoint[], periodMs: number,
): Array<[number, number]> {
  const gaps: Array<[number, number]> = [];
  let previousMs = 0;
  for (const point of points) {
    if (point.timeMs - previousMs > periodMs * 1.5) gaps.push([previousMs, point.timeMs]);
    previousMs = point.timeMs;
  }
  return gaps;
}

export interface SustainedSummary {
  readonly totalBytes: number;
  readonly durationMs: number;
  readonly meanBytesPerSecond: number;
  /** Index (in the rates) of the interval in which the journal first filled; null: never. */
  readonly filledIndex: number | null;
  /** Full intervals after the fill: the steady window. */
  readonly steadySeconds: number;
  /** Median rate over the steady window; null with fewer than three seconds in it. */
  readonly steadyBytesPerSecond: number | null;
  readonly minBytesPerSecond: number | null;
  /** Lowest second of the steady window / steady; the check is >= the threshold. */
  readonly minRatio: number | null;
  /** Seconds of the steady window below threshold × steady. */
  readonly secondsBelowThreshold: number;
  /**
   * Full intervals in which no write was acknowledged, from the first acknowledged write on (the
   * seconds before it are fio and the first chunk allocations starting, not a stall).
   */
  readonly stallSeconds: number;
  /** Start of the first interval with an acknowledged write; null: none. */
  readonly firstWriteMs: number | null;
  /**
   * Mean rate from the first acknowledged write until the journal filled (the journal absorbing
   * writes at the fast disk's speed).
   */
  readonly beforeFillBytesPerSecond: number | null;
  readonly threshold: number;
}

export function summariseSustained(rates: readonly IntervalRate[], journalBytes: number,
  threshold = 0.8): SustainedSummary {
  assert(journalBytes > 0 && threshold > 0 && threshold <= 1, 'a journal size and a share');
  const totalBytes = rates.at(-1)?.cumulativeBytes ?? 0;
  const durationMs = rates.reduce((sum, rate) => sum + rate.lengthMs, 0);
  const filled = rates.findIndex((rate) => rate.cumulativeBytes >= journalBytes);
  const filledIndex = filled < 0 ? null : filled;
  const window = filledIndex === null ? [] : rates.slice(filledIndex + 1).filter((r) => r.full);
  const steady = window.length >= 3 ? median(window.map((rate) => rate.bytesPerSecond)) : null;
  const min = window.length === 0 ? null : Math.min(...window.map((rate) => rate.bytesPerSecond));
  const firstWrite = rates.findIndex((rate) => rate.bytes > 0);
  const before = rates.slice(Math.max(firstWrite, 0), filledIndex ?? rates.length);
  const beforeMs = before.reduce((sum, rate) => sum + rate.lengthMs, 0);
  return {
    totalBytes, durationMs,
    meanBytesPerSecond: durationMs === 0 ? 0 : (totalBytes * 1000) / durationMs,
    filledIndex,
    steadySeconds: window.length,
    steadyBytesPerSecond: steady,
    minBytesPerSecond: min,
    minRatio: steady === null || min === null || steady === 0 ? null : min / steady,
    secondsBelowThreshold: steady === null ? 0
      : window.filter((rate) => rate.bytesPerSecond < threshold * steady).length,
    stallSeconds: firstWrite < 0 ? 0
      : rates.slice(firstWrite).filter((rate) => rate.full && rate.bytes === 0).length,
    firstWriteMs: firstWrite < 0 ? null : rates[firstWrite]!.startMs,
    beforeFillBytesPerSecond: beforeMs === 0 ? null
      : (before.reduce((sum, rate) => sum + rate.bytes, 0) * 1000) / beforeMs,
    threshold,
  };
}

export function median(values: readonly number[]): number {
  assert(values.length > 0, 'a median of something');
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

const MB = 1e6;

/**
 * The per-second series in MB/s, `valuesPerLine` to a line, with `|` before the first second
 * after the journal filled and `*` after a second below the threshold of steady.
 */
export function formatSeries(rates: readonly IntervalRate[], summary: SustainedSummary,
  valuesPerLine = 20): string[] {
  const lines: string[] = [];
  let words: string[] = [];
  for (const [index, rate] of rates.entries()) {
    const value = rate.bytesPerSecond / MB;
    let word = value >= 10 ? value.toFixed(0) : value.toFixed(1);
    if (!rate.full) word = `(${word})`;
    const steady = summary.steadyBytesPerSecond;
    const inWindow = summary.filledIndex !== null && index > summary.filledIndex && rate.full;
    const below = steady !== null && rate.bytesPerSecond < summary.threshold * steady;
    if (inWindow && below) word += '*';
    if (summary.filledIndex !== null && index === summary.filledIndex + 1) word = `| ${word}`;
    words.push(word);
    if (words.length === valuesPerLine) {
      lines.push(`  ${String(index + 1 - valuesPerLine).padStart(3)}s: ${words.join(' ')}`);
      words = [];
    }
  }
  if (words.length > 0) {
    lines.push(`  ${String(rates.length - words.length).padStart(3)}s: ${words.join(' ')}`);
  }
  return lines;
}

/** One QD1 run: fio's mean and p99 completion latency. */
export interface LatencyRun {
  readonly meanUs: number;
  readonly p99Us: number;
}

export interface LatencyComparison {
  /** Mean over the runs of each side's mean and p99. */
  readonly journalMeanUs: number;
  readonly journalP99Us: number;
  readonly fastMeanUs: number;
  readonly fastP99Us: number;
  /** journal / fast; the goal is <= 1.3 for the mean. */
  readonly meanRatio: number;
  readonly p99Ratio: number;
}

export function compareLatency(journal: readonly LatencyRun[], fast: readonly LatencyRun[],
): LatencyComparison {
  assert(journal.length > 0 && fast.length > 0, 'at least one run on each side');
  const mean = (runs: readonly LatencyRun[], pick: (run: LatencyRun) => number): number =>
    runs.reduce((sum, run) => sum + pick(run), 0) / runs.length;
  const journalMeanUs = mean(journal, (run) => run.meanUs);
  const journalP99Us = mean(journal, (run) => run.p99Us);
  const fastMeanUs = mean(fast, (run) => run.meanUs);
  const fastP99Us = mean(fast, (run) => run.p99Us);
  return {
    journalMeanUs, journalP99Us, fastMeanUs, fastP99Us,
    meanRatio: journalMeanUs / fastMeanUs,
    p99Ratio: journalP99Us / fastP99Us,
  };
}

export function formatMBps(bytesPerSecond: number | null): string {
  return bytesPerSecond === null ? '-' : `${(bytesPerSecond / MB).toFixed(1)} MB/s`;
}

export function formatUs(us: number): string {
  return us >= 1000 ? `${(us / 1000).toFixed(2)} ms` : `${us.toFixed(0)} µs`;
}
