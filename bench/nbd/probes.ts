// What the target processes did during one fio job, read from outside: CPU seconds per process
// (from /proc/PID/stat), peak and current resident memory per process (/proc/PID/status, with the
// peak reset before the job through /proc/PID/clear_refs) and, for shoal, deltas of the daemons'
// Prometheus counters and histograms (journal group commits, chunk-server and NBD request
// latency, the stages of a write). fio only sees end-to-end latency; these say where the time and
// the memory went, which matters on a small machine where fio, three chunk servers, the MDS and
// the NBD server share the same few cores.
//
// Invariants: a probe reads before and after a job and reports differences only, so earlier jobs
// and the prefill do not leak into a job's numbers (the memory peak is the one exception: it is
// reset before the job, and only the peak during the job is read). Probing is best effort: a
// process that is gone or a scrape that fails yields no numbers rather than an error, because it
// must not abort a run.
//
// Non-goals: a full Prometheus parser (only `name{labels} value` sample lines are read).

import { readFile, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import type { Target } from './targets.ts';

type Samples = Map<string, number>;

interface CpuTicks {
  readonly user: number;
  readonly system: number;
}

export interface ProbeSnapshot {
  readonly cpuTicksByProcess: ReadonlyMap<string, CpuTicks>;
  /** Busy ticks of the whole machine (all cores), from /proc/stat. */
  readonly machineBusyTicks: number | null;
  readonly samplesByDaemon: ReadonlyMap<string, Samples>;
  readonly timeMs: number;
}

export interface LatencySummary {
  readonly count: number;
  readonly meanUs: number;
  /** Upper bound of the histogram bucket holding the 50th / 99th percentile. */
  readonly p50UsMax: number;
  readonly p99UsMax: number;
}

export interface ProbeDelta {
  /** CPU use (user + system) of each target process during the job, in percent of one core. */
  readonly cpuPercentByProcess: Record<string, number>;
  /** The system (kernel) part of it. */
  readonly cpuSystemPercentByProcess: Record<string, number>;
  /**
   * CPU busy on the whole machine (all processes, all cores; 100 = one core), so that load from
   * anything else on a shared machine shows next to the numbers it disturbed.
   */
  readonly machineCpuPercent: number | null;
  readonly chunkServers: Record<string, ChunkServerDelta>;
  readonly nbd: Record<string, LatencySummary> | null;
  /**
   * Every histogram's delta per daemon (`cs0`, `nbd`, ...): series (the family and its labels
   * but `le`, e.g. `shoal_cs_write_stage_seconds{stage="primary_local"}`) -> count and sum.
   */
  readonly histograms: Record<string, Record<string, HistogramTotal>>;
}

export interface HistogramTotal {
  readonly count: number;
  readonly sumSeconds: number;
}

export interface ChunkServerDelta {
  readonly journalAppends: number;
  readonly journalCommits: number;
  /** Records per fdatasync: the group-commit batching factor. */
  readonly journalAppendsPerCommit: number;
  /** Mean time of one commit (write + fdatasync). */
  readonly journalCommitMeanUs: number;
  /** Checkpoints (segment switch plus a sync of every chunk file written since the last one). */
  readonly journalCheckpoints: number;
  /** Request latency per op (`write`, `read`, ...) with at least one request. */
  readonly requests: Record<string, LatencySummary>;
}

const CLOCK_TICKS_PER_SECOND = clockTicksPerSecond();

export async function snapshot(target: Target): Promise<ProbeSnapshot> {
  const timeMs = performance.now();
  const machineBusyTicks = await machineTicks();
  const cpuTicksByProcess = new Map<string, CpuTicks>();
  for (const [name, pid] of target.pids) {
    const ticks = await cpuTicks(pid);
    if (ticks !== null) cpuTicksByProcess.set(name, ticks);
  }
  const samplesByDaemon = new Map<string, Samples>();
  await Promise.all([...target.metricsUrls].map(async ([name, url]) => {
    const samples = await scrape(url);
    if (samples !== null) samplesByDaemon.set(name, samples);
  }));
  return { cpuTicksByProcess, machineBusyTicks, samplesByDaemon, timeMs };
}

export function difference(before: ProbeSnapshot, after: ProbeSnapshot): ProbeDelta {
  const seconds = (after.timeMs - before.timeMs) / 1000;
  const cpuPercentByProcess: Record<string, number> = {};
  const cpuSystemPercentByProcess: Record<string, number> = {};
  const percent = (ticks: number): number => (ticks / CLOCK_TICKS_PER_SECOND / seconds) * 100;
  for (const [name, ticksAfter] of after.cpuTicksByProcess) {
    const ticksBefore = before.cpuTicksByProcess.get(name);
    if (ticksBefore === undefined) continue;
    const system = ticksAfter.system - ticksBefore.system;
    cpuPercentByProcess[name] = percent(ticksAfter.user - ticksBefore.user + system);
    cpuSystemPercentByProcess[name] = percent(system);
  }
  const chunkServers: Record<string, ChunkServerDelta> = {};
  let nbd: Record<string, LatencySummary> | null = null;
  const histogramTotalsByDaemon: Record<string, Record<string, HistogramTotal>> = {};
  for (const [name, samplesAfter] of after.samplesByDaemon) {
    const samplesBefore = before.samplesByDaemon.get(name);
    if (samplesBefore === undefined) continue;
    const delta = subtract(samplesAfter, samplesBefore);
    histogramTotalsByDaemon[name] = histogramTotals(delta);
    if (name === 'nbd') nbd = histograms(delta, 'shoal_nbd_request_duration_seconds', 'command');
    else chunkServers[name] = chunkServerDelta(delta);
  }
  const machineCpuPercent = before.machineBusyTicks === null || after.machineBusyTicks === null
    ? null : percent(after.machineBusyTicks - before.machineBusyTicks);
  return { cpuPercentByProcess, cpuSystemPercentByProcess, machineCpuPercent, chunkServers, nbd,
    histograms: histogramTotalsByDaemon };
}

/**
 * Count and sum of the series of `family` whose labels include every one of `labels`, over the
 * daemons named (all daemons when `daemons` is null); null when no daemon exports the family (a
 * metric this build does not have yet), so the report can print `-` for it.
 */
export function histogramSum(delta: ProbeDelta, family: string, labels: Record<string, string>,
  daemons: readonly string[] | null = null): HistogramTotal | null {
  let found = false;
  let count = 0;
  let sumSeconds = 0;
  for (const [daemon, series] of Object.entries(delta.histograms)) {
    if (daemons !== null && !daemons.includes(daemon)) continue;
    for (const [key, total] of Object.entries(series)) {
      const match = /^([^{]+)(?:\{(.*)\})?$/.exec(key);
      if (match?.[1] !== family) continue;
      found = true;
      const have = parseLabels(match[2] ?? '');
      if (!Object.entries(labels).every(([label, value]) => have.get(label) === value)) continue;
      count += total.count;
      sumSeconds += total.sumSeconds;
    }
  }
  return found ? { count, sumSeconds } : null;
}

/** Every `X_sum`/`X_count` pair of a delta, by series: the family X and its labels (sorted). */
function histogramTotals(delta: Samples): Record<string, HistogramTotal> {
  const totals = new Map<string, { count: number; sumSeconds: number; parts: number }>();
  for (const [key, value] of delta) {
    const match = /^(\w+)_(sum|count)(?:\{(.*)\})?$/.exec(key);
    if (match === null) continue;
    const labels = [...parseLabels(match[3] ?? '')].sort(([a], [b]) => a.localeCompare(b));
    const labelText = labels.map(([label, text]) => `${label}="${text}"`).join(',');
    const series = labelText === '' ? match[1]! : `${match[1]!}{${labelText}}`;
    const entry = totals.get(series) ?? { count: 0, sumSeconds: 0, parts: 0 };
    if (match[2] === 'count') entry.count = value;
    else entry.sumSeconds = value;
    entry.parts += 1;
    totals.set(series, entry);
  }
  const result: Record<string, HistogramTotal> = {};
  // Only pairs: a counter that happens to end in _count (and has no _sum) is not a histogram.
  for (const [series, entry] of totals) {
    if (entry.parts === 2) result[series] = { count: entry.count, sumSeconds: entry.sumSeconds };
  }
  return result;
}

function chunkServerDelta(delta: Samples): ChunkServerDelta {
  const journalAppends = delta.get('shoal_cs_journal_appends_total') ?? 0;
  const journalCommits = delta.get('shoal_cs_journal_commits_total') ?? 0;
  const commitSeconds = delta.get('shoal_cs_journal_commit_seconds_total') ?? 0;
  return {
    journalAppends,
    journalCommits,
    journalAppendsPerCommit: journalCommits === 0 ? 0 : journalAppends / journalCommits,
    journalCommitMeanUs: journalCommits === 0 ? 0 : (commitSeconds / journalCommits) * 1e6,
    journalCheckpoints: delta.get('shoal_cs_journal_checkpoints_total') ?? 0,
    requests: histograms(delta, 'shoal_cs_request_duration_seconds', 'op'),
  };
}

interface HistogramDelta {
  count: number;
  sum: number;
  /** [upper bound in seconds, cumulative count] */
  buckets: Array<[number, number]>;
}

/** Summaries of one histogram family per value of `label`, from a delta of its samples. */
function histograms(delta: Samples, family: string, label: string): Record<string, LatencySummary> {
  const byValue = new Map<string, HistogramDelta>();
  const pattern = new RegExp(`^${family}_(bucket|sum|count)\\{(.*)\\}$`);
  for (const [key, value] of delta) {
    const match = pattern.exec(key);
    if (match === null) continue;
    const labels = parseLabels(match[2] ?? '');
    const labelValue = labels.get(label) ?? '';
    const entry = byValue.get(labelValue) ?? { count: 0, sum: 0, buckets: [] };
    if (match[1] === 'count') entry.count = value;
    else if (match[1] === 'sum') entry.sum = value;
    else entry.buckets.push([Number(labels.get('le')?.replace('+Inf', 'Infinity')), value]);
    byValue.set(labelValue, entry);
  }
  const result: Record<string, LatencySummary> = {};
  for (const [labelValue, entry] of byValue) {
    if (entry.count === 0) continue;
    entry.buckets.sort((a, b) => a[0] - b[0]);
    const quantileUs = (quantile: number): number => {
      const bucket = entry.buckets.find(([, cumulative]) => cumulative >= quantile * entry.count);
      return bucket === undefined ? Number.NaN : bucket[0] * 1e6;
    };
    result[labelValue] = {
      count: entry.count,
      meanUs: (entry.sum / entry.count) * 1e6,
      p50UsMax: quantileUs(0.5),
      p99UsMax: quantileUs(0.99),
    };
  }
  return result;
}

function subtract(after: Samples, before: Samples): Samples {
  const delta: Samples = new Map();
  for (const [key, value] of after) delta.set(key, value - (before.get(key) ?? 0));
  return delta;
}

function parseLabels(text: string): Map<string, string> {
  const labels = new Map<string, string>();
  for (const match of text.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
    labels.set(match[1] ?? '', match[2] ?? '');
  }
  return labels;
}

async function scrape(url: string): Promise<Samples | null> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(5_000) });
    if (!response.ok) return null;
    const samples: Samples = new Map();
    for (const line of (await response.text()).split('\n')) {
      if (line.startsWith('#') || line.length === 0) continue;
      const space = line.lastIndexOf(' ');
      samples.set(line.slice(0, space), Number(line.slice(space + 1)));
    }
    return samples;
  } catch {
    return null;
  }
}

export interface MemoryUse {
  /** VmHWM after the job: the peak resident set since the reset before the job. */
  readonly peakRssBytes: number;
  /** VmRSS after the job. */
  readonly rssBytes: number;
}

/**
 * Resets the peak resident set (VmHWM) of each process to its current size (`echo 5 >
 * /proc/PID/clear_refs`), so that the VmHWM read after a job is the peak during that job. Needs
 * the processes to be ours (or root); a failure leaves that process's peak covering its lifetime,
 * reported by returning its name.
 */
export async function resetPeakRss(pids: ReadonlyMap<string, number>): Promise<string[]> {
  const failed: string[] = [];
  for (const [name, pid] of pids) {
    await writeFile(`/proc/${pid}/clear_refs`, '5').catch(() => failed.push(name));
  }
  return failed;
}

/** VmHWM and VmRSS of each process still running. */
export async function readMemory(pids: ReadonlyMap<string, number>,
): Promise<Record<string, MemoryUse>> {
  const result: Record<string, MemoryUse> = {};
  for (const [name, pid] of pids) {
    const text = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => null);
    if (text === null) continue;
    const kib = (field: string): number =>
      Number(new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(text)?.[1] ?? Number.NaN);
    result[name] = { peakRssBytes: kib('VmHWM') * 1024, rssBytes: kib('VmRSS') * 1024 };
  }
  return result;
}

/** utime and stime of a process (all its threads), in clock ticks; null when it is gone. */
async function cpuTicks(pid: number): Promise<CpuTicks | null> {
  const text = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
  if (text === null) return null;
  // Fields after the command name (which may hold spaces) start at field 3; utime is field 14.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { user: Number(fields[11]), system: Number(fields[12]) };
}

/** user + nice + system + irq + softirq + steal of the `cpu` line: time not idle, not waiting. */
async function machineTicks(): Promise<number | null> {
  const text = await readFile('/proc/stat', 'utf8').catch(() => null);
  const fields = text?.split('\n')[0]?.trim().split(/\s+/).slice(1).map(Number) ?? [];
  if (fields.length < 8) return null;
  const [user, nice, system, , , irq, softirq, steal] = fields as [number, number, number,
    number, number, number, number, number];
  return user + nice + system + irq + softirq + steal;
}

function clockTicksPerSecond(): number {
  try {
    const ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isFinite(ticks) && ticks > 0 ? ticks : 100;
  } catch {
    return 100;
  }
}
