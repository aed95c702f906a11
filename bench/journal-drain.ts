// `npm run bench:drain` — an SSD journal in front of a slow "HDD", measured. Two checks from the
// journal-throttle issue, each printed, never judged (a slow result does not fail the run):
// - sustained: chunk servers' data directories on one slow disk (test/helpers/slow_disk.ts), their
//   journals on the fast disk, a small journal; fio writes ten times the journal's size
//   sequentially in journalled blocks at iodepth 8; each second's acknowledged bytes (the NBD
//   server's /metrics, sampled every second) against the steady rate after the journal filled:
//   the issue wants every second at >= 80 % of it, no stall, no failed write;
// - latency: 4 KiB random writes at QD1 on that cluster and on a cluster all on the fast disk,
//   alternately; the issue wants the journal cluster's mean within 1.3x of the fast one.
//
// Goals: the same fio job line everywhere it is compared; every daemon, mount and folder gone on
// every exit path within a bounded time. Non-goals: judging, repeated statistics, several slow
// disks (one FUSE process, one platter for all three servers: one HDD per host, scaled down).
//
// Usage: node --enable-source-maps build/bench/journal-drain.js [--quick] [--json FILE]
//        [--check sustained|latency|both] [flags: see USAGE]

import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { parseSizeBytes } from '../src/util/size.ts';
import { SlowDisk, type SlowDiskStats } from '../test/helpers/slow_disk.ts';
import { runFio, stopFio, type FioJob, type FioResult } from './nbd/fio.ts';
import { difference, snapshot, type ProbeDelta, type ProbeSnapshot } from './nbd/probes.ts';
import { shellQuote, startShoal, type Target } from './nbd/targets.ts';
import { startJournalCluster, type JournalTarget } from './drain/clusters.ts';
import { MetricsSampler, counterSamples } from './drain/sampler.ts';
import {
  compareLatency, fioLogGaps, formatMBps, formatSeries, formatUs, intervalRates,
  parseFioBandwidthLog, summariseSustained, type FioBandwidthPoint, type IntervalRate,
  type LatencyComparison, type SustainedSummary,
} from './drain/report.ts';

const MiB = 2 ** 20;
const SAMPLE_PERIOD_MS = 1000;
/** Every cleanup action gets this long; what is still running after it is left, and named. */
const CLEANUP_ACTION_MS = 30_000;

const USAGE = `usage: journal-drain [options]
  --check WHAT              sustained, latency or both (default both)
  --quick                   smoke run: journal 16M of 4M segments, latency 5 s, one round
  --json FILE               also write every raw number to FILE
  --dir DIR                 parent of the run folder (default OS temp; the fast disk)
  --seek-ms N               slow disk: cost of a non-sequential transfer (default 8)
  --disk-mbps N             slow disk: sequential bandwidth in MB/s, 10^6 bytes (default 60)
  --dirty-limit BYTES       slow disk: dirty bytes before writers pay write-back (default 1G)
  --journal-size BYTES      each chunk server's journal (default 32M; quick 16M)
  --journal-segment-bytes B journal segment (default 8M; quick 4M)
  --in-place-write-bytes B  passed to the journal cluster's chunk servers (default: theirs, 64K;
                            0 journals every write)
  --bs BYTES                sustained: block size, journalled if below in-place (default 32k)
  --iodepth N               sustained: fio iodepth (default 8)
  --rw write|randwrite      sustained: sequential (default) or random writes over the region
  --write-factor N          sustained: bytes written = N x --journal-size (default 10)
  --max-seconds N           sustained: fio stops after this even if not done (default 600)
  --latency-runtime S       latency: seconds per run (default 15; quick 5)
  --latency-size BYTES      latency: region of the random writes (default 256M; quick 64M)
  --rounds N                latency: journal, fast, journal, fast... N times each (default 2;
                            quick 1)
  --settle S                pause after sync before each fio run (default 2; quick 0.5)
  --help`;

type Check = 'sustained' | 'latency' | 'both';

interface Parameters {
  readonly check: Check;
  readonly quick: boolean;
  readonly jsonPath: string | null;
  readonly parentDir: string;
  readonly seekMs: number;
  readonly diskBytesPerSecond: number;
  readonly dirtyLimitBytes: number;
  readonly journalBytes: number;
  readonly journalSegmentBytes: number;
  readonly inPlaceWriteBytes: string | null;
  readonly blockBytes: number;
  readonly iodepth: number;
  /** Sustained: random writes over the region instead of sequential ones (--rw randwrite). */
  readonly random: boolean;
  readonly writeFactor: number;
  readonly maxSeconds: number;
  readonly latencyRuntimeSeconds: number;
  readonly latencyRegionBytes: number;
  readonly rounds: number;
  readonly settleSeconds: number;
  readonly volumeBytes: number;
}

class UsageError extends Error {}

function parseParameters(argv: readonly string[]): Parameters | null {
  const text = { type: 'string' } as const;
  const flag = { type: 'boolean', default: false } as const;
  const { values } = parseArgs({
    args: [...argv], strict: true,
    options: {
      check: text, quick: flag, json: text, dir: text, 'seek-ms': text, 'disk-mbps': text,
      'dirty-limit': text, 'journal-size': text, 'journal-segment-bytes': text,
      'in-place-write-bytes': text, bs: text, iodepth: text, rw: text, 'write-factor': text,
      'max-seconds': text, 'latency-runtime': text, 'latency-size': text, rounds: text,
      settle: text, help: flag,
    },
  });
  if (values.help) return null;
  const quick = values.quick;
  const size = (value: string | undefined, fallback: string, what: string): number =>
    parseSizeBytes(value ?? fallback, what);
  const number = (value: string | undefined, fallback: number): number =>
    value === undefined ? fallback : Number(value);
  const check = (values.check ?? 'both') as Check;
  const journalBytes = size(values['journal-size'], quick ? '16M' : '32M', '--journal-size');
  const writeFactor = number(values['write-factor'], 10);
  const latencyRegionBytes = size(values['latency-size'], quick ? '64M' : '256M', '--latency-size');
  const parameters: Parameters = {
    check, quick, jsonPath: values.json === undefined ? null : resolve(values.json),
    parentDir: resolve(values.dir ?? tmpdir()),
    seekMs: number(values['seek-ms'], 8),
    diskBytesPerSecond: number(values['disk-mbps'], 60) * 1e6,
    dirtyLimitBytes: size(values['dirty-limit'], '1G', '--dirty-limit'),
    journalBytes,
    journalSegmentBytes: size(values['journal-segment-bytes'], quick ? '4M' : '8M',
      '--journal-segment-bytes'),
    inPlaceWriteBytes: values['in-place-write-bytes'] ?? null,
    blockBytes: size(values.bs, '32k', '--bs'),
    iodepth: number(values.iodepth, 8),
    random: parseRw(values.rw),
    writeFactor,
    maxSeconds: number(values['max-seconds'], 600),
    latencyRuntimeSeconds: number(values['latency-runtime'], quick ? 5 : 15),
    latencyRegionBytes,
    rounds: number(values.rounds, quick ? 1 : 2),
    settleSeconds: number(values.settle, quick ? 0.5 : 2),
    volumeBytes: Math.max(1024 * MiB, writeFactor * journalBytes, latencyRegionBytes),
  };
  checkParameters(parameters);
  return parameters;
}

function checkParameters(p: Parameters): void {
  const check = (ok: boolean, message: string): void => {
    if (!ok) throw new UsageError(message);
  };
  check(['sustained', 'latency', 'both'].includes(p.check), '--check: sustained, latency or both');
  check(p.seekMs >= 0 && p.diskBytesPerSecond > 0, '--seek-ms >= 0 and --disk-mbps > 0');
  check(p.journalSegmentBytes >= MiB && p.journalBytes >= 2 * p.journalSegmentBytes,
    '--journal-size: at least two --journal-segment-bytes segments of 1 MiB or more');
  check(p.blockBytes >= 4096 && p.blockBytes % 4096 === 0, '--bs: a multiple of 4 KiB');
  check(Number.isInteger(p.iodepth) && p.iodepth >= 1, '--iodepth: a whole number, 1+');
  check(Number.isInteger(p.writeFactor) && p.writeFactor >= 2, '--write-factor: 2+');
  check((p.writeFactor * p.journalBytes) % p.blockBytes === 0, 'the write is whole blocks');
  check(p.maxSeconds >= 10, '--max-seconds: 10+');
  check(Number.isInteger(p.latencyRuntimeSeconds) && p.latencyRuntimeSeconds >= 1,
    '--latency-runtime: whole seconds, 1+');
  check(p.latencyRegionBytes >= MiB && p.latencyRegionBytes % 4096 === 0,
    '--latency-size: 1 MiB or more, whole 4 KiB blocks');
  check(Number.isInteger(p.rounds) && p.rounds >= 1, '--rounds: 1+');
  check(p.settleSeconds >= 0, '--settle: seconds, 0 or more');
}

/**
 * Cleanup actions run once, newest first, each given at most CLEANUP_ACTION_MS, on the normal
 * end, on an error and on a signal: the run never hangs in its own cleanup.
 */
class Cleanup {
  private readonly actions: Array<{ name: string; action: () => Promise<unknown> }> = [];
  private done: Promise<void> | null = null;

  add(name: string, action: () => Promise<unknown>): void {
    this.actions.push({ name, action });
  }

  run(): Promise<void> {
    this.done ??= (async () => {
      await stopFio();
      for (const { name, action } of this.actions.reverse()) {
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<'late'>((done) => {
          timer = setTimeout(() => done('late'), CLEANUP_ACTION_MS);
        });
        const outcome = await Promise.race([action().catch(() => 'failed'), late]);
        clearTimeout(timer);
        if (outcome === 'late') log(`cleanup: ${name} still not done after 30 s: left`);
      }
    })();
    return this.done;
  }
}

function log(message: string): void {
  process.stderr.write(`[journal-drain ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

interface Run {
  readonly parameters: Parameters;
  readonly runDir: string;
  readonly disk: SlowDisk;
  readonly cleanup: Cleanup;
}

/** Chunk-server flags of the journal cluster, besides --journal-dir. */
function journalArgs(p: Parameters): string[] {
  const inPlace = p.inPlaceWriteBytes === null ? []
    : ['--in-place-write-bytes', p.inPlaceWriteBytes];
  return ['--journal-segment-bytes', String(p.journalSegmentBytes),
    '--journal-size', String(p.journalBytes), ...inPlace];
}

async function startJournal(run: Run): Promise<JournalTarget> {
  const target = await startJournalCluster({
    runDir: run.runDir, slowDir: run.disk.path, journalArgs: journalArgs(run.parameters),
    volumeBytes: run.parameters.volumeBytes,
  });
  run.cleanup.add('stop the journal cluster', target.stop);
  return target;
}

async function startFast(run: Run): Promise<Target> {
  const target = await startShoal({ runDir: run.runDir, volumeBytes: run.parameters.volumeBytes,
    chunkServers: 3, profileDir: null });
  run.cleanup.add('stop the fast cluster', target.stop);
  return target;
}

async function settle(run: Run): Promise<void> {
  execFileSync('sync', ['-f', run.runDir]);
  await new Promise((done) => setTimeout(done, run.parameters.settleSeconds * 1000));
}

/** Daemons of the target that are no longer running, with the end of their logs. */
function deadDaemons(target: Target): string | null {
  const dead = [...target.pids].filter(([, pid]) => {
    try {
      process.kill(pid, 0);
      return false;
    } catch {
      return true;
    }
  });
  if (dead.length === 0) return null;
  return `daemons gone: ${dead.map(([name]) => name).join(', ')}\n${target.logTail()}`;
}

/**
 * The slow disk's own sequential write rate through FUSE: 64 MiB in 1 MiB writes, then one
 * fdatasync (which pays for them), from open to the end of the sync.
 */
async function measureDisk(run: Run): Promise<number> {
  const path = join(run.disk.path, 'bandwidth-probe');
  const block = Buffer.alloc(MiB, 0x5a);
  const started = performance.now();
  const file = await open(path, 'w');
  try {
    for (let index = 0; index < 64; index += 1) await file.write(block, 0, MiB, index * MiB);
    await file.datasync();
  } finally {
    await file.close();
  }
  const seconds = (performance.now() - started) / 1000;
  await rm(path, { force: true });
  return (64 * MiB) / seconds;
}

interface PerServerJournal {
  readonly appends: number;
  readonly commits: number;
  readonly journalBytes: number;
  readonly checkpoints: number;
  /** Interval index of each interval in which this server's checkpoint count rose. */
  readonly checkpointSeconds: number[];
  /** Bytes written to chunk files (page cache; paid for at checkpoints) per interval. */
  readonly appliedBytesPerSecond: number[];
  /** Records that waited to go into the journal (paced or full), and their seconds waiting. */
  readonly pacedRecords: number;
  readonly pacedSeconds: number;
  /** Times the journal's space was full and the next record waited for a checkpoint. */
  readonly fullWaits: number;
  /** The drain rate the server paced writers to, at the end (null before its first measure). */
  readonly drainBytesPerSecond: number | null;
}

/** What the slow disk's head did over a span. */
interface DiskUse {
  readonly seconds: number;
  readonly busySeconds: number;
  /** busySeconds / seconds: near 1, the platter is what limits; well below, something else. */
  readonly busyShare: number;
  readonly seeks: number;
  readonly bytes: number;
}

/** Measures the slow disk's use while `action` runs (null if the FUSE process did not answer). */
async function withDiskUse<T>(run: Run, action: () => Promise<T>,
): Promise<{ result: T; disk: DiskUse | null }> {
  const before = await run.disk.stats();
  const startedMs = performance.now();
  const result = await action();
  const seconds = (performance.now() - startedMs) / 1000;
  const after = await run.disk.stats();
  const disk = before === null || after === null ? null : diskUse(before, after, seconds);
  return { result, disk };
}

function diskUse(before: SlowDiskStats, after: SlowDiskStats, seconds: number): DiskUse {
  const busySeconds = after.busySeconds - before.busySeconds;
  return { seconds, busySeconds, busyShare: busySeconds / seconds,
    seeks: after.seeks - before.seeks, bytes: after.bytes - before.bytes };
}

function formatDiskUse(disk: DiskUse | null): string {
  if (disk === null) return 'slow disk: no stats (the FUSE process did not answer)';
  return `slow disk busy ${disk.busySeconds.toFixed(1)} s of ${disk.seconds.toFixed(1)} s ` +
    `(${(disk.busyShare * 100).toFixed(0)} %), ${disk.seeks} seeks, ` +
    `${(disk.bytes / MiB).toFixed(0)} MiB transferred`;
}

interface SustainedOutcome {
  readonly totalBytes: number;
  readonly fio: FioResult | null;
  readonly fioError: string | null;
  readonly fioLog: FioBandwidthPoint[];
  readonly fioLogGaps: Array<[number, number]>;
  readonly rates: IntervalRate[];
  readonly summary: SustainedSummary;
  readonly writeErrors: number;
  readonly journals: Record<string, PerServerJournal>;
  readonly probe: ProbeDelta | null;
  readonly deadDaemons: string | null;
  readonly commandLines: string[];
  /** The slow disk over the fio run (sampler start to stop). */
  readonly disk: DiskUse | null;
  /** Warnings and errors the daemons logged. */
  readonly warnings: string[];
}

function parseRw(value: string | undefined): boolean {
  if (value === undefined || value === 'write') return false;
  if (value === 'randwrite') return true;
  throw new Error(`--rw ${value}: write or randwrite`);
}

function sustainedJob(p: Parameters): FioJob {
  const kib = p.blockBytes / 1024;
  return { name: `${p.random ? 'randwrite' : 'seqwrite'}-${kib}k-qd${p.iodepth}`, rw: p.random ? 'randwrite' : 'write', blockBytes: p.blockBytes,
    iodepth: p.iodepth };
}

async function sustained(run: Run): Promise<SustainedOutcome> {
  const p = run.parameters;
  const totalBytes = p.writeFactor * p.journalBytes;
  const target = await startJournal(run);
  const commandLines = await target.commandLines();
  await settle(run);
  const job = sustainedJob(p);
  const logPrefix = join(run.runDir, 'sustained');
  const options = {
    uris: target.uris, regionBytes: totalBytes, runtimeSeconds: null,
    outputPath: join(run.runDir, 'sustained.json'),
    extraArgs: [`--runtime=${p.maxSeconds}`, `--write_bw_log=${logPrefix}`,
      `--log_avg_msec=${SAMPLE_PERIOD_MS}`],
  };
  log(`sustained: ${totalBytes / MiB} MiB of ${p.blockBytes / 1024} KiB ${p.random ? 'random' : 'sequential'} writes, ` +
    `iodepth ${p.iodepth}, journal ${p.journalBytes / MiB} MiB per chunk server`);
  const sampler = new MetricsSampler(target, SAMPLE_PERIOD_MS);
  let fio: FioResult | null = null;
  let fioError: string | null = null;
  const { result: samples, disk } = await withDiskUse(run, async () => {
    await sampler.start();
    try {
      fio = await runFio(job, options);
    } catch (error) {
      fioError = `${(error as Error).message}\n${target.logTail()}`;
    }
    return sampler.stop();
  });
  const dead = deadDaemons(target);
  const warnings = target.warnings();
  const logPath = `${logPrefix}_bw.1.log`;
  const fioLog = existsSync(logPath) ? parseFioBandwidthLog(await readFile(logPath, 'utf8')) : [];
  await target.stop();
  const rates = intervalRates(counterSamples(samples, 'nbd', 'shoal_nbd_written_bytes_total'),
    SAMPLE_PERIOD_MS);
  const errors = counterSamples(samples, 'nbd', 'shoal_nbd_request_errors_total{command="write"}');
  return {
    totalBytes, fio, fioError, fioLog, fioLogGaps: fioLogGaps(fioLog, SAMPLE_PERIOD_MS), rates,
    summary: summariseSustained(rates, p.journalBytes),
    writeErrors: (errors.at(-1)?.value ?? 0) - (errors[0]?.value ?? 0),
    journals: journalsOf(samples),
    probe: samples.length >= 2 ? difference(samples[0]!, samples.at(-1)!) : null,
    deadDaemons: dead, commandLines, disk, warnings,
  };
}

function journalsOf(samples: readonly ProbeSnapshot[]): Record<string, PerServerJournal> {
  const result: Record<string, PerServerJournal> = {};
  for (const daemon of ['cs0', 'cs1', 'cs2']) {
    const series = (name: string) => counterSamples(samples, daemon, name);
    const total = (name: string): number => {
      const values = series(name);
      return (values.at(-1)?.value ?? 0) - (values[0]?.value ?? 0);
    };
    const checkpoints = intervalRates(series('shoal_cs_journal_checkpoints_total'),
      SAMPLE_PERIOD_MS);
    result[daemon] = {
      appends: total('shoal_cs_journal_appends_total'),
      commits: total('shoal_cs_journal_commits_total'),
      journalBytes: total('shoal_cs_journal_bytes_total'),
      checkpoints: total('shoal_cs_journal_checkpoints_total'),
      checkpointSeconds: checkpoints.flatMap((rate, index) => (rate.bytes > 0 ? [index] : [])),
      appliedBytesPerSecond: intervalRates(series('shoal_cs_written_bytes_total'),
        SAMPLE_PERIOD_MS).map((rate) => Math.round(rate.bytesPerSecond)),
      pacedRecords: total('shoal_cs_journal_paced_records_total'),
      pacedSeconds: total('shoal_cs_journal_paced_seconds_total'),
      fullWaits: total('shoal_cs_journal_full_waits_total'),
      drainBytesPerSecond: series('shoal_cs_journal_drain_bytes_per_second').at(-1)?.value ?? null,
    };
  }
  return result;
}

interface LatencyRunRecord {
  readonly side: 'journal' | 'fast';
  readonly round: number;
  readonly fio: FioResult | null;
  readonly error: string | null;
  /** Journal checkpoints during the run, summed over the chunk servers. */
  readonly checkpoints: number | null;
  /** The slow disk during the run (journal side only). */
  readonly disk: DiskUse | null;
  /** Warnings and errors the daemons logged (journal side only). */
  readonly warnings: string[];
}

interface LatencyOutcome {
  readonly runs: LatencyRunRecord[];
  readonly comparison: LatencyComparison | null;
  readonly commandLines: string[];
}

const QD1_JOB: FioJob = { name: 'randwrite-4k-qd1', rw: 'randwrite', blockBytes: 4096, iodepth: 1 };

async function latencyOnce(run: Run, side: 'journal' | 'fast', round: number,
  commandLines: string[]): Promise<LatencyRunRecord> {
  const p = run.parameters;
  const journal = side === 'journal' ? await startJournal(run) : null;
  const target: Target = journal ?? await startFast(run);
  const warningsOf = (): string[] => journal?.warnings() ?? [];
  if (round === 0) commandLines.push(`# ${target.label}`, ...(await target.commandLines()));
  await settle(run);
  log(`latency: ${QD1_JOB.name} on ${target.label}, round ${round + 1} ` +
    `(${p.latencyRuntimeSeconds} s over ${p.latencyRegionBytes / MiB} MiB)`);
  const before = await snapshot(target);
  const measured = await withDiskUse(run, () => runFio(QD1_JOB, {
    uris: target.uris, regionBytes: p.latencyRegionBytes,
    runtimeSeconds: p.latencyRuntimeSeconds, outputPath: join(run.runDir, 'latency.json'),
  }).catch((error: unknown) => error as Error));
  try {
    const delta = difference(before, await snapshot(target));
    const checkpoints = Object.values(delta.chunkServers)
      .reduce((sum, cs) => sum + cs.journalCheckpoints, 0);
    const disk = side === 'journal' ? measured.disk : null;
    const fio = measured.result;
    if (fio instanceof Error) {
      const error = `${fio.message}\n${target.logTail()}`;
      return { side, round, fio: null, error, checkpoints, disk, warnings: warningsOf() };
    }
    log(`  mean ${formatUs(fio.latencyMeanUs)}, p99 ${formatUs(fio.latencyP99Us)}, ` +
      `max ${formatUs(fio.latencyMaxUs)}, ${Math.round(fio.iops)} IOPS, ` +
      `${checkpoints} checkpoints`);
    const warnings = warningsOf();
    return { side, round, fio, error: deadDaemons(target), checkpoints, disk, warnings };
  } finally {
    await target.stop();
  }
}

async function latency(run: Run): Promise<LatencyOutcome> {
  const runs: LatencyRunRecord[] = [];
  const commandLines: string[] = [];
  for (let round = 0; round < run.parameters.rounds; round += 1) {
    for (const side of ['journal', 'fast'] as const) {
      runs.push(await latencyOnce(run, side, round, commandLines));
    }
  }
  const pick = (side: 'journal' | 'fast') => runs.filter((r) => r.side === side && r.fio !== null)
    .map((r) => ({ meanUs: r.fio!.latencyMeanUs, p99Us: r.fio!.latencyP99Us }));
  const journal = pick('journal');
  const fast = pick('fast');
  const comparison = journal.length > 0 && fast.length > 0 ? compareLatency(journal, fast) : null;
  return { runs, comparison, commandLines };
}

interface Outcome {
  readonly startedAt: Date;
  readonly command: string;
  readonly loadBefore: number[];
  readonly loadAfter: number[];
  readonly diskBytesPerSecondMeasured: number;
  readonly sustained: SustainedOutcome | null;
  readonly latency: LatencyOutcome | null;
}

function formatSustained(p: Parameters, s: SustainedOutcome): string[] {
  const m = s.summary;
  const ratio = m.minRatio === null ? '-' : `${(m.minRatio * 100).toFixed(0)} %`;
  const lines = [
    '## sustained: per-second acknowledged writes (NBD server, MB/s = 10^6 B/s)',
    `written ${(m.totalBytes / MiB).toFixed(0)} MiB of ${(s.totalBytes / MiB).toFixed(0)} MiB ` +
      `in ${(m.durationMs / 1000).toFixed(1)} s: mean ${formatMBps(m.meanBytesPerSecond)}; ` +
      `before the journal filled ${formatMBps(m.beforeFillBytesPerSecond)}`,
    `reference: slow disk bandwidth / 3 replicas = ${formatMBps(p.diskBytesPerSecond / 3)}`,
    `journal first filled in second ${m.filledIndex ?? '- (never)'}; steady (median of the ` +
      `${m.steadySeconds} whole seconds after) ${formatMBps(m.steadyBytesPerSecond)}`,
    `CHECK min second / steady = ${formatMBps(m.minBytesPerSecond)} / ` +
      `${formatMBps(m.steadyBytesPerSecond)} = ${ratio} (goal >= 80 %); seconds below 80 %: ` +
      `${m.secondsBelowThreshold} of ${m.steadySeconds}; stalls (whole seconds with 0 bytes ` +
      `after the first write, acknowledged at ${((m.firstWriteMs ?? 0) / 1000).toFixed(0)} s): ` +
      `${m.stallSeconds}`,
    `failed writes: NBD write errors ${s.writeErrors}; fio ` +
      `${s.fioError === null ? 'ok' : `FAILED: ${s.fioError.split('\n')[0]}`}`,
    'per second (| = first second after the journal filled, * = below 80 % of steady, ' +
      '(x) = last, partial):',
    ...formatSeries(s.rates, m),
    `fio's own bandwidth log (${s.fioLog.length} lines): gaps with no line ` +
      `${s.fioLogGaps.length === 0 ? 'none' : s.fioLogGaps.map(([a, b]) =>
        `${(a / 1000).toFixed(1)}-${(b / 1000).toFixed(1)} s`).join(', ')}`,
    'journals (deltas over the run; checkpoint seconds = seconds in which one happened):',
    ...Object.entries(s.journals).map(([name, j]) => `  ${name}: ${j.appends} appends, ` +
      `${j.commits} commits, ${(j.journalBytes / MiB).toFixed(0)} MiB journalled, ` +
      `${j.checkpoints} checkpoints at s ${j.checkpointSeconds.join(',') || '-'}; paced ${j.pacedRecords} records ` +
      `(${j.pacedSeconds.toFixed(1)} s waiting in all), ${j.fullWaits} waits for a full journal, drain rate at the end ` +
      `${j.drainBytesPerSecond === null ? '-' : `${(j.drainBytesPerSecond / 1e6).toFixed(1)} MB/s`}`),
  ];
  lines.push(formatDiskUse(s.disk));
  lines.push(...formatWarnings(s.warnings));
  if (s.probe !== null) lines.push(`CPU % over the run: ${cpuLine(s.probe)}`);
  if (s.deadDaemons !== null) lines.push(`DAEMONS DIED:\n${s.deadDaemons}`);
  if (s.fioError !== null) lines.push('fio error in full:', s.fioError);
  return lines;
}

/** The daemons' warnings, each cut to one screen line. */
function formatWarnings(warnings: readonly string[]): string[] {
  if (warnings.length === 0) return ['daemon warnings/errors: none'];
  return [`daemon warnings/errors (${warnings.length}, at most 40):`,
    ...warnings.map((line) => `  ${line.length > 300 ? `${line.slice(0, 300)}...` : line}`)];
}

function cpuLine(probe: ProbeDelta): string {
  const parts = Object.entries(probe.cpuPercentByProcess)
    .map(([name, percent]) => `${name} ${percent.toFixed(0)}`);
  const machine = probe.machineCpuPercent === null ? '-' : probe.machineCpuPercent.toFixed(0);
  return `${parts.join(', ')}; whole machine ${machine} (200 = both cores)`;
}

function formatLatency(l: LatencyOutcome): string[] {
  const lines = ['## latency: randwrite 4 KiB QD1 (fio clat)',
    '| round | cluster | IOPS | mean | p50 | p99 | p99.9 | max | checkpoints | slow disk busy |',
    '|------:|---------|-----:|-----:|----:|----:|------:|----:|------------:|---------------:|'];
  for (const r of l.runs) {
    const f = r.fio;
    const label = r.side === 'journal' ? 'ssd-journal+slow-disk' : 'fast-disk';
    const busy = r.disk === null ? '-' : `${(r.disk.busyShare * 100).toFixed(0)} %`;
    const tail = `${r.checkpoints ?? '-'} | ${busy} |`;
    lines.push(f === null ? `| ${r.round + 1} | ${label} | failed | | | | | | ${tail}`
      : `| ${r.round + 1} | ${label} | ${Math.round(f.iops)} | ${formatUs(f.latencyMeanUs)} | ` +
        `${formatUs(f.latencyP50Us)} | ${formatUs(f.latencyP99Us)} | ` +
        `${formatUs(f.latencyP999Us)} | ${formatUs(f.latencyMaxUs)} | ${tail}`);
  }
  const c = l.comparison;
  if (c === null) lines.push('CHECK: no ratio (a side has no successful run)');
  else {
    lines.push(`CHECK mean latency journal/fast = ${formatUs(c.journalMeanUs)} / ` +
      `${formatUs(c.fastMeanUs)} = ${c.meanRatio.toFixed(2)}x (goal <= 1.3x); p99 ` +
      `${formatUs(c.journalP99Us)} / ${formatUs(c.fastP99Us)} = ${c.p99Ratio.toFixed(2)}x`);
  }
  for (const r of l.runs.filter((run) => run.error !== null)) {
    lines.push(`round ${r.round + 1} ${r.side}: ${r.error}`);
  }
  for (const r of l.runs.filter((run) => run.warnings.length > 0)) {
    lines.push(`round ${r.round + 1} ${r.side}:`, ...formatWarnings(r.warnings));
  }
  return lines;
}

function formatReport(p: Parameters, o: Outcome): string {
  const load = (values: number[]): string => values.map((v) => v.toFixed(2)).join(' ');
  return [
    `# journal drain: SSD journal in front of a slow disk, ${o.startedAt.toISOString()}`,
    `command: ${o.command}`,
    `slow disk: seek ${p.seekMs} ms, ${formatMBps(p.diskBytesPerSecond)}, dirty limit ` +
      `${p.dirtyLimitBytes / MiB} MiB, one platter for all three chunk servers' data ` +
      `(measured: 64 MiB sequential + fdatasync at ${formatMBps(o.diskBytesPerSecondMeasured)})`,
    `journal cluster: ${journalArgs(p).join(' ')} (+ --journal-dir on the fast disk)`,
    `load average before ${load(o.loadBefore)}, after ${load(o.loadAfter)} (2 cores)`,
    '', ...(o.sustained === null ? [] : formatSustained(p, o.sustained)),
    '', ...(o.latency === null ? [] : formatLatency(o.latency)),
    '', '## Commands', '```',
    ...(o.sustained === null ? [] : ['# sustained', ...o.sustained.commandLines,
      `fio --name=${sustainedJob(p).name} --ioengine=nbd --uri=<URI> --rw=${sustainedJob(p).rw} ` +
        `--bs=${p.blockBytes} --iodepth=${p.iodepth} --numjobs=1 --offset=0 ` +
        `--size=${p.writeFactor * p.journalBytes} --runtime=${p.maxSeconds} ` +
        `--write_bw_log=<RUN>/sustained --log_avg_msec=${SAMPLE_PERIOD_MS} ` +
        '--output-format=json --output=<RUN>/sustained.json']),
    ...(o.latency === null ? [] : ['# latency', ...o.latency.commandLines,
      `fio --name=${QD1_JOB.name} --ioengine=nbd --uri=<URI> --rw=randwrite --bs=4096 ` +
        `--iodepth=1 --numjobs=1 --offset=0 --size=${p.latencyRegionBytes} --time_based ` +
        `--runtime=${p.latencyRuntimeSeconds} --randrepeat=0 --norandommap ` +
        '--output-format=json --output=<RUN>/latency.json']),
    '```', '',
  ].join('\n');
}

async function benchmark(run: Run): Promise<void> {
  const p = run.parameters;
  const startedAt = new Date();
  const loadBefore = loadavg();
  const command = ['node --enable-source-maps build/bench/journal-drain.js',
    ...process.argv.slice(2).map(shellQuote)].join(' ');
  const diskBytesPerSecondMeasured = await measureDisk(run);
  log(`slow disk: ${formatMBps(diskBytesPerSecondMeasured)} sequential, measured`);
  const sustainedOutcome = p.check === 'latency' ? null : await sustained(run);
  const latencyOutcome = p.check === 'sustained' ? null : await latency(run);
  const outcome: Outcome = {
    startedAt, command, loadBefore, loadAfter: loadavg(), diskBytesPerSecondMeasured,
    sustained: sustainedOutcome, latency: latencyOutcome,
  };
  process.stdout.write(formatReport(p, outcome));
  if (p.jsonPath !== null) {
    await writeFile(p.jsonPath, `${JSON.stringify({ parameters: p, ...outcome }, null, 2)}\n`);
    log(`raw numbers written to ${p.jsonPath}`);
  }
}

let interrupted = false;

async function main(): Promise<void> {
  const parameters = parseParameters(process.argv.slice(2));
  if (parameters === null) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  execFileSync('fio', ['--version'], { stdio: 'ignore' });
  const runDir = await mkdtemp(join(parameters.parentDir, 'shoal-drain-'));
  const cleanup = new Cleanup();
  cleanup.add(`remove ${runDir}`, () => rm(runDir, { recursive: true, force: true }));
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      interrupted = true;
      log(`${signal}: stopping fio and the clusters, unmounting, removing ${runDir}`);
      void cleanup.run().finally(() => process.exit(130));
    });
  }
  try {
    await mkdir(join(runDir, 'slow'));
    const disk = await SlowDisk.mount({
      backingDir: join(runDir, 'slow', 'backing'), mountDir: join(runDir, 'slow', 'mnt'),
      seekMs: parameters.seekMs, bandwidthBytesPerSecond: parameters.diskBytesPerSecond,
      dirtyLimitBytes: parameters.dirtyLimitBytes,
    });
    cleanup.add('unmount the slow disk', () => disk.unmount());
    await benchmark({ parameters, runDir, disk, cleanup });
  } finally {
    await cleanup.run();
  }
}

main().catch((error: unknown) => {
  if (interrupted) return;
  const usage = error instanceof UsageError ||
    (error instanceof Error && 'code' in error && String(error.code).startsWith('ERR_PARSE_ARGS'));
  const text = error instanceof Error ? (usage ? error.message : (error.stack ?? error.message))
    : String(error);
  process.stderr.write(`journal-drain: ${text}\n${usage ? `${USAGE}\n` : ''}`);
  process.exitCode = 1;
});
