// `npm run bench` — fio (ioengine=nbd) against a real local shoal cluster's NBD export and, in the
// same run on the same file system, against qemu-nbd serving a raw file: once with
// --cache=directsync (every acknowledged write durable, as in shoal: the fair baseline and the
// primary ratio), as three directsync servers on three files driven at once by one fio (the floor
// for three durable copies on this disk), and once with --cache=writeback (qemu-nbd's default, not
// durable). Prints IOPS, bandwidth, completion-latency percentiles and shoal/baseline ratios for
// 4 KiB random read and write at iodepth 1 and 32 and 1 MiB sequential read and write at iodepth
// 4, plus the commands used, the machine, and where shoal's time, CPU and memory went (its
// daemons' /metrics, /proc per process, and with --profile node's CPU profiles per job).
//
// Goals: the same fio command for every target, one job at a time, the order of targets rotated
// from job to job so that a noisy shared machine hurts all of them alike; everything (cluster,
// raw files, sockets) under one temporary folder that is removed on every exit path.
// Non-goals: asserting performance (this is a tool, not a test), tuning shoal, repeated runs.
//
// Usage: node --enable-source-maps build/bench/nbd-fio.js [--quick] [--runtime S] [--size BYTES]
//        [--dir DIR] [--json FILE] [--jobs a,b] [--settle S] [--warmup S] [--profile DIR]

import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { parseSizeBytes } from '../src/util/size.ts';
import { FIO_JOBS, PREFILL_JOB, fioArgs, runFio, stopFio } from './nbd/fio.ts';
import type { FioJob, FioResult, FioRunOptions } from './nbd/fio.ts';
import { MANIFEST_NAME, findProfiles, formatSummary, manifest, readProfile, summarise,
  type ProfileSummary, type ProfileWindow } from './nbd/profile.ts';
import { difference, readMemory, resetPeakRss, snapshot } from './nbd/probes.ts';
import { formatCpuPerIoTable, formatDetailTable, formatMachine, formatMainTable,
  formatMemoryTable, formatRssGrowth, formatWriteBreakdown } from './nbd/report.ts';
import { formatShoalTable, machineFacts, type Measurement } from './nbd/report.ts';
import { shellQuote, startQemuNbd, startShoal, type Target } from './nbd/targets.ts';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

const USAGE = `usage: nbd-fio [options]
  --runtime S        seconds per measured job and target (default 15; --quick: 3)
  --size BYTES       region every job works on, e.g. 1G (default 1G; --quick: 256M)
  --volume-size B    shoal volume and raw file size (default the larger of 2G and --size)
  --dir DIR          parent of the run folder holding cluster and raw files (default OS temp)
  --json FILE        also write every raw number to FILE
  --jobs a,b         run only these jobs (${FIO_JOBS.map((job) => job.name).join(', ')})
  --settle S         pause after syncing the file system before each job (default 2; --quick: 0.5)
  --warmup S         run each job on each target this long, unmeasured, before its measured run
                     (default 3; --quick: 1; 0: none)
  --quick            smoke test of the harness: --runtime 3 --size 256M
  --profile DIR      run shoal's daemons under node --cpu-prof, profiles in DIR (new or without
                     .cpuprofile files), and summarise each daemon per job
  --help`;

interface Parameters {
  readonly runtimeSeconds: number;
  readonly regionBytes: number;
  readonly volumeBytes: number;
  readonly parentDir: string;
  readonly jsonPath: string | null;
  readonly jobs: readonly FioJob[];
  readonly settleSeconds: number;
  /** Seconds each job runs on each target, unmeasured, before its measured run. */
  readonly warmupSeconds: number;
  readonly quick: boolean;
  readonly profileDir: string | null;
}

/** One run: its parameters and its temporary folder. */
interface Run {
  readonly parameters: Parameters;
  readonly runDir: string;
}

/** A mistake on the command line: printed with the usage, without a stack. */
class UsageError extends Error {}

function parseParameters(argv: readonly string[]): Parameters | null {
  const text = { type: 'string' } as const;
  const flag = { type: 'boolean', default: false } as const;
  const { values } = parseArgs({
    args: [...argv],
    options: {
      runtime: text, size: text, 'volume-size': text, dir: text, json: text, jobs: text,
      settle: text, warmup: text, profile: text, quick: flag, help: flag,
    },
    strict: true,
  });
  if (values.help) return null;
  const quick = values.quick;
  const runtimeSeconds = Number(values.runtime ?? (quick ? 3 : 15));
  const regionBytes = parseSizeBytes(values.size ?? (quick ? '256M' : '1G'), '--size');
  const volumeBytes = values['volume-size'] === undefined
    ? Math.max(2 * GiB, regionBytes) : parseSizeBytes(values['volume-size'], '--volume-size');
  const settleSeconds = Number(values.settle ?? (quick ? 0.5 : 2));
  const warmupSeconds = Number(values.warmup ?? (quick ? 1 : 3));
  const allNames = FIO_JOBS.map((job) => job.name);
  const names = values.jobs?.split(',').map((name) => name.trim()) ?? allNames;
  const unknown = names.filter((name) => !allNames.includes(name));
  const check = (ok: boolean, message: string): void => {
    if (!ok) throw new UsageError(message);
  };
  check(Number.isInteger(runtimeSeconds) && runtimeSeconds >= 1, '--runtime: whole seconds, 1+');
  check(regionBytes >= MiB && regionBytes % MiB === 0, '--size: a multiple of 1 MiB');
  check(volumeBytes >= regionBytes, '--volume-size: at least --size');
  check(settleSeconds >= 0, '--settle: seconds, 0 or more');
  check(Number.isInteger(warmupSeconds) && warmupSeconds >= 0, '--warmup: whole seconds, 0 or more');
  check(unknown.length === 0, `--jobs: unknown job ${unknown.join(', ')}`);
  const profileDir = values.profile === undefined ? null : resolve(values.profile);
  // SHOAL_NODE_ARGS is split on spaces.
  check(profileDir === null || !/\s/.test(profileDir), '--profile: a path without spaces');
  return {
    runtimeSeconds, regionBytes, volumeBytes, settleSeconds, warmupSeconds, quick, profileDir,
    jobs: FIO_JOBS.filter((job) => names.includes(job.name)),
    parentDir: resolve(values.dir ?? tmpdir()),
    jsonPath: values.json === undefined ? null : resolve(values.json),
  };
}

/** Cleanup actions run once, newest first, on the normal end, on an error and on a signal. */
class Cleanup {
  private readonly actions: Array<() => Promise<void>> = [];
  private done: Promise<void> | null = null;

  add(action: () => Promise<void>): void {
    this.actions.push(action);
  }

  run(): Promise<void> {
    this.done ??= (async () => {
      await stopFio();
      for (const action of this.actions.reverse()) await action().catch(() => undefined);
    })();
    return this.done;
  }
}

function log(message: string): void {
  process.stderr.write(`[nbd-fio ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

function requireTools(): void {
  for (const tool of ['fio', 'qemu-nbd']) {
    try {
      execFileSync(tool, ['--version'], { stdio: 'ignore' });
    } catch {
      throw new UsageError(`${tool} is not installed (Debian: apt-get install fio qemu-utils)`);
    }
  }
}

async function startTargets(run: Run, cleanup: Cleanup): Promise<Target[]> {
  log('starting shoal (MDS, 3 chunk servers, NBD server) and five qemu-nbd servers ' +
    '(directsync, three directsync, writeback)');
  const common = { runDir: run.runDir, volumeBytes: run.parameters.volumeBytes };
  const { profileDir } = run.parameters;
  const targets: Target[] = [];
  for (const start of [
    () => startShoal({ ...common, chunkServers: 3, profileDir }),
    () => startQemuNbd({ ...common, cache: 'directsync', servers: 1 }),
    () => startQemuNbd({ ...common, cache: 'directsync', servers: 3 }),
    () => startQemuNbd({ ...common, cache: 'writeback', servers: 1 }),
  ]) {
    const target = await start();
    cleanup.add(target.stop);
    targets.push(target);
  }
  return targets;
}

function fioOptions(run: Run, uris: readonly string[], runtimeSeconds: number | null,
): FioRunOptions {
  const outputPath = join(run.runDir, 'fio.json');
  return { uris, regionBytes: run.parameters.regionBytes, runtimeSeconds, outputPath };
}

/**
 * Flushes dirty pages of the run folder's file system (the writeback baseline leaves up to
 * gigabytes behind) and pauses, so that one target's leftovers do not slow the next.
 */
async function settle(run: Run): Promise<void> {
  execFileSync('sync', ['-f', run.runDir]);
  await new Promise((resolve) => setTimeout(resolve, run.parameters.settleSeconds * 1000));
}

/** runFio, adding the target's logs to the error when the job fails. */
async function runFioOn(target: Target, job: FioJob, options: FioRunOptions): Promise<FioResult> {
  try {
    return await runFio(job, options);
  } catch (error) {
    if (!(error instanceof Error)) throw error;
    throw new Error(`${error.message}\n${target.logTail()}`, { cause: error });
  }
}

async function prefill(run: Run, targets: readonly Target[]): Promise<Record<string, FioResult>> {
  const results: Record<string, FioResult> = {};
  for (const target of targets) {
    log(`prefill ${target.label}: ${run.parameters.regionBytes / MiB} MiB of 1 MiB writes`);
    results[target.id] = await runFioOn(target, PREFILL_JOB, fioOptions(run, target.uris, null));
  }
  return results;
}

async function measure(run: Run, targets: readonly Target[]): Promise<Measurement[]> {
  const { jobs, runtimeSeconds, warmupSeconds } = run.parameters;
  const measurements: Measurement[] = [];
  for (const [jobIndex, job] of jobs.entries()) {
    // Rotate the order: over the jobs each target runs first, second and third equally often.
    const order = targets.map((_, index) => targets[(index + jobIndex) % targets.length]!);
    for (const [position, target] of order.entries()) {
      // A daemon that has not yet run this job's code paths at this rate spends part of a short
      // run compiling them (node's optimizing compiler: 18 % of a chunk server's CPU in the first
      // seconds of a 4k QD1 write run, perf): measured is the service as it runs for days.
      // Every target gets the same warm-up, as fio's ramp_time would give it.
      if (warmupSeconds > 0) await runFioOn(target, job, fioOptions(run, target.uris, warmupSeconds));
      await settle(run);
      log(`${job.name} on ${target.label} (${runtimeSeconds} s)`);
      const notReset = await resetPeakRss(target.pids);
      if (notReset.length > 0) log(`  peak RSS not reset for ${notReset.join(', ')}: lifetime peak`);
      const before = await snapshot(target);
      const startedUs = hrtimeUs();
      const fio = await runFioOn(target, job, fioOptions(run, target.uris, runtimeSeconds));
      const endedUs = hrtimeUs();
      const probe = difference(before, await snapshot(target));
      const memory = await readMemory(target.pids);
      measurements.push({ job: job.name, target: target.id, position, fio, probe, memory,
        startedUs, endedUs });
      log(`  ${Math.round(fio.iops)} IOPS, p99 ${Math.round(fio.latencyP99Us)} µs`);
    }
  }
  return measurements;
}

/** Microseconds of process.hrtime: CLOCK_MONOTONIC, the clock of node's CPU profiles. */
function hrtimeUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

async function commandsUsed(run: Run, targets: readonly Target[]): Promise<string[]> {
  const lines: string[] = [];
  for (const target of targets) lines.push(`# ${target.label}`, ...(await target.commandLines()));
  // One set of fio lines per number of servers (1: shoal and the single baselines; 3: the group).
  const serverCounts = [...new Set(targets.map((target) => target.uris.length))];
  for (const servers of serverCounts) {
    const placeholders = servers === 1 ? ['<URI>']
      : Array.from({ length: servers }, (_, index) => `<URI${index}>`);
    const users = targets.filter((target) => target.uris.length === servers);
    lines.push(`# fio: the prefill, then each job, on ${users.map((t) => t.label).join(', ')}`);
    const fioLine = (job: FioJob, runtimeSeconds: number | null): string => {
      const options = { ...fioOptions(run, placeholders, runtimeSeconds), outputPath: 'out.json' };
      return ['fio', ...fioArgs(job, options)].map(shellQuote).join(' ');
    };
    lines.push(fioLine(PREFILL_JOB, null));
    for (const job of run.parameters.jobs) lines.push(fioLine(job, run.parameters.runtimeSeconds));
  }
  for (const target of targets) {
    for (const [index, uri] of target.uris.entries()) {
      const placeholder = target.uris.length === 1 ? '<URI>' : `<URI${index}>`;
      lines.push(`# ${placeholder} for ${target.label}: ${uri}`);
    }
  }
  return lines;
}

interface Outcome {
  readonly startedAt: Date;
  readonly command: string;
  readonly targets: readonly Target[];
  readonly commands: readonly string[];
  readonly prefill: Record<string, FioResult>;
  readonly measurements: readonly Measurement[];
  /** With --profile: per job on shoal, a summary per daemon. */
  readonly profiles: ReadonlyArray<{ job: string; daemons: ProfileSummary[] }> | null;
}

function formatReport(run: Run, outcome: Outcome): string {
  const { parameters } = run;
  const jobNames = parameters.jobs.map((job) => job.name);
  const prefillLines = outcome.targets.map((target) => {
    const result = outcome.prefill[target.id];
    if (result === undefined) return `- ${target.label}: -`;
    return `- ${target.label}: ${(result.bandwidthBytesPerSecond / MiB).toFixed(1)} MiB/s`;
  });
  return [
    `# shoal vs qemu-nbd over NBD (fio ioengine=nbd), ${outcome.startedAt.toISOString()}`,
    '', `command: ${outcome.command}`,
    `runtime ${parameters.runtimeSeconds} s per job and target, after a warm-up of ${parameters.warmupSeconds} s; ` +
      `region ${parameters.regionBytes / MiB} MiB; volume ${parameters.volumeBytes / MiB} MiB; ` +
      'target order rotates from job to job',
    '', '## Machine', formatMachine(machineFacts(run.runDir)),
    '', '## Results (ratio = shoal IOPS / baseline IOPS; primary: directsync, equally durable)',
    formatMainTable(jobNames, outcome.measurements),
    '', '## Every target', formatDetailTable(jobNames, outcome.measurements),
    '', '## Inside shoal during each job (/metrics and /proc; p99≤ is a histogram bucket bound)',
    formatShoalTable(jobNames, outcome.measurements),
    '', '## One write, stage by stage (mean per job from /metrics; - = metric not exported)',
    formatWriteBreakdown(jobNames, outcome.measurements),
    '', '## CPU per I/O per process (µs of CPU per completed I/O, kernel part in brackets)',
    formatCpuPerIoTable(jobNames, outcome.measurements),
    '', '## Peak resident memory per process during each job (VmHWM reset before the job, MiB)',
    formatMemoryTable(jobNames, outcome.measurements),
    '', 'Resident memory (VmRSS) after the first job and after the last:',
    ...formatRssGrowth(jobNames, outcome.measurements),
    '', '## Prefill (1 MiB sequential writes over the region, once, not time-based)',
    ...prefillLines,
    ...(outcome.profiles === null ? [] : ['', formatProfiles(run, outcome.profiles)]),
    '', '## Commands', '```', ...outcome.commands, '```', '',
  ].join('\n');
}

function formatProfiles(run: Run,
  profiles: NonNullable<Outcome['profiles']>): string {
  const sections = [`## CPU profiles of shoal's daemons (node --cpu-prof, in ` +
    `${run.parameters.profileDir}), each job's run on shoal only`];
  if (profiles.length === 0) sections.push('no profiles were written');
  for (const { job, daemons } of profiles) {
    sections.push(`### ${job}`, ...daemons.map((summary) =>
      formatSummary(summary).replace(/^### /, '#### ')));
  }
  sections.push(`Again, or another job: node build/bench/profile-summary.js ` +
    `${run.parameters.profileDir} [--job NAME] [--whole]`);
  return sections.join('\n\n');
}

/**
 * With --profile: makes the folder (it must hold no profiles yet, so that each daemon's file is
 * found by its pid without guessing), before the daemons start.
 */
async function prepareProfileDir(profileDir: string): Promise<void> {
  await mkdir(profileDir, { recursive: true });
  const old = (await readdir(profileDir)).filter((name) => name.endsWith('.cpuprofile'));
  if (old.length > 0) {
    throw new UsageError(`--profile: ${profileDir} already holds ${old.length} .cpuprofile ` +
      'files; use a new or empty folder');
  }
}

/**
 * With --profile: stops shoal (its daemons write their profiles as they exit), writes the
 * manifest (pid -> daemon, job windows) beside them and summarises each job's window per daemon.
 */
async function collectProfiles(run: Run, shoal: Target,
  measurements: readonly Measurement[]): Promise<Outcome['profiles']> {
  const profileDir = run.parameters.profileDir;
  if (profileDir === null) return null;
  log(`stopping shoal so that its daemons write their CPU profiles to ${profileDir}`);
  await shoal.stop();
  const windows: ProfileWindow[] = measurements.filter((m) => m.target === 'shoal')
    .map((m) => ({ job: m.job, startUs: m.startedUs, endUs: m.endedUs }));
  await writeFile(join(profileDir, MANIFEST_NAME),
    `${JSON.stringify(manifest(shoal.pids, windows), null, 2)}\n`);
  const { files } = findProfiles(profileDir);
  const missing = [...shoal.pids].filter(([, pid]) => !files.some((file) => file.pid === pid));
  if (missing.length > 0) log(`no profile from ${missing.map(([name]) => name).join(', ')}`);
  const profiles = files.map((file) => ({ file, profile: readProfile(file.path) }));
  return windows.map((window) => ({
    job: window.job,
    daemons: profiles.map(({ file, profile }) => summarise(profile, file, window, 15)),
  }));
}

async function benchmark(run: Run, cleanup: Cleanup): Promise<void> {
  const startedAt = new Date();
  const argv = process.argv.slice(2).map(shellQuote);
  const command = ['node --enable-source-maps build/bench/nbd-fio.js', ...argv].join(' ');
  if (run.parameters.profileDir !== null) await prepareProfileDir(run.parameters.profileDir);
  const targets = await startTargets(run, cleanup);
  const commands = await commandsUsed(run, targets);
  const prefillResults = await prefill(run, targets);
  const measurements = await measure(run, targets);
  const shoal = targets.find((target) => target.id === 'shoal')!;
  const profiles = await collectProfiles(run, shoal, measurements);
  const outcome = { startedAt, command, targets, commands, prefill: prefillResults, measurements,
    profiles };
  process.stdout.write(formatReport(run, outcome));
  if (run.parameters.jsonPath !== null) {
    const { parameters } = run;
    const report = { startedAt, command, parameters, machine: machineFacts(run.runDir), commands,
      prefill: prefillResults, measurements, profiles };
    await writeFile(parameters.jsonPath!, `${JSON.stringify(report, null, 2)}\n`);
    log(`raw numbers written to ${parameters.jsonPath}`);
  }
}

/** Set on SIGINT or SIGTERM: the errors that follow (fio killed) are expected, not reported. */
let interrupted = false;

async function main(): Promise<void> {
  const parameters = parseParameters(process.argv.slice(2));
  if (parameters === null) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  requireTools();
  const runDir = await mkdtemp(join(parameters.parentDir, 'shoal-bench-'));
  const cleanup = new Cleanup();
  cleanup.add(() => rm(runDir, { recursive: true, force: true }));
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      interrupted = true;
      log(`${signal}: stopping fio and every target, removing ${runDir}`);
      void cleanup.run().finally(() => process.exit(130));
    });
  }
  try {
    await benchmark({ parameters, runDir }, cleanup);
  } finally {
    await cleanup.run();
  }
}

/** Command-line mistakes: ours, parseArgs' (ERR_PARSE_ARGS_*) and parseSizeBytes'. */
function isUsageError(error: unknown): error is Error {
  if (error instanceof UsageError) return true;
  const code = error instanceof Error && 'code' in error ? String(error.code) : '';
  return code.startsWith('ERR_PARSE_ARGS') || code === 'ERR_INVALID_ARGUMENT';
}

main().catch((error: unknown) => {
  if (interrupted) return;
  if (isUsageError(error)) {
    process.stderr.write(`nbd-fio: ${error.message}\n${USAGE}\n`);
  } else {
    const text = error instanceof Error ? (error.stack ?? error.message) : String(error);
    process.stderr.write(`nbd-fio: ${text}\n`);
  }
  process.exitCode = 1;
});
