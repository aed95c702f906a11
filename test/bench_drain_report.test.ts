// The journal-drain benchmark's pure parts (bench/drain/report.ts): per-second rates from a
// sampled counter, fio's averaged bandwidth log and its gaps, the sustained summary (the journal's
// fill, steady = median after it, the worst second, stalls after the first write) and the QD1
// latency ratio. No cluster, no fio, no slow disk: the harness is checked by running it with
// --quick (bench/README.md).

import t from 'tap';
import {
  compareLatency, fioLogGaps, formatSeries, intervalRates, median, parseFioBandwidthLog,
  summariseSustained, type CounterSample,
} from '../bench/drain/report.ts';

const MB = 1e6;

/** A counter read every `periodMs` that rises by each of `perSecond` in turn. */
function samplesOf(perSecond: readonly number[], periodMs = 1000): CounterSample[] {
  const samples: CounterSample[] = [{ timeMs: 5_000, value: 100 }];
  for (const bytes of perSecond) {
    const last = samples.at(-1)!;
    samples.push({ timeMs: last.timeMs + periodMs, value: last.value + bytes });
  }
  return samples;
}

t.test('rates per interval, with the short last interval not a whole second', async (t) => {
  const samples = [...samplesOf([2 * MB, 4 * MB]), { timeMs: 7_500, value: 100 + 7 * MB }];
  const rates = intervalRates(samples, 1000);
  t.equal(rates.length, 3);
  t.same(rates.map((rate) => rate.bytesPerSecond), [2 * MB, 4 * MB, 2 * MB]);
  t.same(rates.map((rate) => rate.full), [true, true, false], '500 ms of a 1 s period is partial');
  t.same(rates.map((rate) => rate.startMs), [0, 1000, 2000], 'times from the first sample');
  t.equal(rates[2]!.cumulativeBytes, 7 * MB);
  t.same(intervalRates([], 1000), [], 'no samples, no rates');
  t.throws(() => intervalRates([{ timeMs: 2, value: 0 }, { timeMs: 1, value: 0 }], 1000));
});

t.test("fio's averaged bandwidth log: writes in bytes per second, and its gaps", async (t) => {
  // As fio 3.33 wrote it for a job that stalled between 2 s and 5 s (no line for the stall).
  const text = '1001, 20491, 1, 0, 0\n2001, 11488, 1, 0, 0\n2500, 10, 0, 0, 0\n' +
    '5000, 32000, 1, 0, 0\n7001, 32032, 1, 0, 0, 0\n';
  const points = parseFioBandwidthLog(text);
  t.same(points.map((point) => point.timeMs), [1001, 2001, 5000, 7001], 'reads are left out');
  t.equal(points[0]!.bytesPerSecond, 20491 * 1024, 'KiB/s to bytes per second');
  t.same(fioLogGaps(points, 1000), [[2001, 5000], [5000, 7001]], 'stretches over 1.5 periods');
  t.same(fioLogGaps([{ timeMs: 3000, bytesPerSecond: 1 }], 1000), [[0, 3000]],
    'a late first line is a gap from the start');
  t.throws(() => parseFioBandwidthLog('1000, x, 1\n'), /cannot read line/);
});

t.test('sustained: steady is the median after the journal filled; the worst second against it',
  async (t) => {
    // Two seconds of start-up, a fast fill of a 10 MB journal, then drain-rate seconds with one
    // slow second and one stall.
    const perSecond = [0, 0, 6, 6, 3, 3, 3, 1, 0, 3, 3, 3].map((mb) => mb * MB);
    const rates = intervalRates(samplesOf(perSecond), 1000);
    const summary = summariseSustained(rates, 10 * MB);
    t.equal(summary.filledIndex, 3, 'the journal filled in second 3 (12 MB written by its end)');
    t.equal(summary.steadySeconds, 8);
    t.equal(summary.steadyBytesPerSecond, 3 * MB, 'median of 3 3 3 1 0 3 3 3');
    t.equal(summary.minBytesPerSecond, 0);
    t.equal(summary.minRatio, 0);
    t.equal(summary.secondsBelowThreshold, 2, 'the 1 MB and the 0 MB seconds');
    t.equal(summary.stallSeconds, 1, 'start-up zeros are not stalls');
    t.equal(summary.firstWriteMs, 2000);
    t.equal(summary.beforeFillBytesPerSecond, 6 * MB, 'from the first write to the fill');
    t.equal(summary.totalBytes, 31 * MB);
    const series = formatSeries(rates, summary, 6);
    t.same(series, ['    0s: 0.0 0.0 6.0 6.0 | 3.0 3.0', '    6s: 3.0 1.0* 0.0* 3.0 3.0 3.0']);

    const ratesOf = (mbPerSecond: number[]) =>
      intervalRates(samplesOf(mbPerSecond.map((mb) => mb * MB)), 1000);
    const smooth = summariseSustained(ratesOf([9, 9, 4, 4, 5, 4]), 10 * MB);
    t.equal(smooth.minRatio, 1, 'every second at steady');
    t.equal(smooth.secondsBelowThreshold, 0);
    const never = summariseSustained(ratesOf([1, 1]), 10 * MB);
    t.equal(never.filledIndex, null, 'a run shorter than the journal never fills it');
    t.equal(never.steadyBytesPerSecond, null);
    t.equal(never.minRatio, null);
  });

t.test('median and the latency ratio over rounds', async (t) => {
  t.equal(median([3, 1, 2]), 2);
  t.equal(median([4, 1, 3, 2]), 2.5);
  t.throws(() => median([]));
  const comparison = compareLatency(
    [{ meanUs: 3000, p99Us: 9000 }, { meanUs: 5000, p99Us: 11000 }],
    [{ meanUs: 2000, p99Us: 5000 }, { meanUs: 2000, p99Us: 5000 }]);
  t.equal(comparison.journalMeanUs, 4000);
  t.equal(comparison.meanRatio, 2, 'mean of the journal runs over mean of the fast runs');
  t.equal(comparison.p99Ratio, 2);
  t.throws(() => compareLatency([], [{ meanUs: 1, p99Us: 1 }]));
});
