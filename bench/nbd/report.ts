// Turning measurements into what a person reads (markdown tables, ready to paste into
// bench/README.md) and what a program reads (the --json file), plus the facts about the machine
// that a number means nothing without: cores, kernel, file system and disk of the run folder, and
// the versions of fio, qemu-nbd and node.
//
// Invariants: ratios are always shoal / baseline of the same job's IOPS, so above 1 means shoal is
// faster; the primary ratio is against qemu-nbd --cache=directsync, the equally durable baseline.
//
// Non-goals: statistics over repeated runs (one run per job and target; rerun to see the spread).

import { execFileSync } from 'node:child_process';
import { readFileSync, realpathSync } from 'node:fs';
import { availableParallelism, cpus, release, totalmem } from 'node:os';
import { basename, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FioResult } from './fio.ts';
import type { ProbeDelta } from './probes.ts';
import type { TargetId } from './targets.ts';

export interface Measurement {
  readonly job: string;
  readonly target: TargetId;
  /** Position of this target within the job's rotation (0 runs first). */
  readonly position: number;
  readonly fio: FioResult;
  readonly probe: ProbeDelta;
}

export interface MachineFacts {
  readonly cores: number;
  readonly cpuModel: string;
  readonly memoryBytes: number;
  readonly kernel: string;
  readonly runDir: string;
  readonly fileSystem: string;
  readonly blockDevice: string;
  readonly fioVersion: string;
  readonly qemuNbdVersion: string;
  readonly nodeVersion: string;
  readonly gitCommit: string;
}

/** The checkout this file was built from (build/bench/nbd/report.js is three levels down). */
const REPO_DIR = fileURLToPath(new URL('../../..', import.meta.url));

export function machineFacts(runDir: string): MachineFacts {
  const mount = tryRun('findmnt', ['-n', '-o', 'FSTYPE,SOURCE,OPTIONS', '--target', runDir])
    .split(/\s+/).join(' ');
  const source = mount.split(/\s+/)[1] ?? '';
  return {
    cores: availableParallelism(),
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryBytes: totalmem(),
    kernel: release(),
    runDir,
    fileSystem: mount === '' ? tryRun('stat', ['-f', '-c', '%T', runDir]) : mount,
    blockDevice: blockDeviceFacts(source),
    fioVersion: tryRun('fio', ['--version']),
    qemuNbdVersion: tryRun('qemu-nbd', ['--version']).split('\n')[0] ?? '',
    nodeVersion: process.version,
    gitCommit: tryRun('git', ['-C', REPO_DIR, 'rev-parse', '--short', 'HEAD']),
  };
}

/** Rotational flag and write-cache mode of the device under the run folder, when sysfs says. */
function blockDeviceFacts(source: string): string {
  if (!source.startsWith('/dev/')) return source === '' ? 'unknown' : source;
  try {
    let sysPath = realpathSync(`/sys/class/block/${basename(source)}`);
    // A partition has no queue folder of its own; its disk is the parent folder.
    if (tryRead(`${sysPath}/queue/rotational`) === '') sysPath = dirname(sysPath);
    const spinning = tryRead(`${sysPath}/queue/rotational`) === '1';
    const rotational = spinning ? 'rotational' : 'non-rotational';
    const cache = tryRead(`${sysPath}/queue/write_cache`);
    return `${source} (${basename(sysPath)}: ${rotational}, write cache: ${cache || 'unknown'})`;
  } catch {
    return source;
  }
}

function tryRead(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return '';
  }
}

function tryRun(command: string, args: readonly string[]): string {
  try {
    const stdio: ['ignore', 'pipe', 'ignore'] = ['ignore', 'pipe', 'ignore'];
    return execFileSync(command, args, { encoding: 'utf8', stdio }).trim();
  } catch {
    return '';
  }
}

export function formatMachine(facts: MachineFacts): string {
  const memoryGiB = (facts.memoryBytes / 2 ** 30).toFixed(1);
  return [
    `- cores (nproc): ${facts.cores} × ${facts.cpuModel}; memory ${memoryGiB} GiB`,
    `- kernel: ${facts.kernel}`,
    `- run folder: ${facts.runDir}`,
    `- file system: ${facts.fileSystem}`,
    `- block device: ${facts.blockDevice}`,
    `- ${facts.fioVersion}; ${facts.qemuNbdVersion}; node ${facts.nodeVersion}; ` +
      `checkout HEAD ${facts.gitCommit || 'unknown'} (plus any uncommitted changes)`,
  ].join('\n');
}

type Measurements = readonly Measurement[];

function find(measurements: Measurements, job: string, target: TargetId): Measurement | undefined {
  return measurements.find((m) => m.job === job && m.target === target);
}

/** The main table: IOPS and p99 latency per target, and shoal's ratio to each baseline. */
export function formatMainTable(jobs: readonly string[], measurements: Measurements): string {
  const header = ['job', 'shoal IOPS', 'shoal p99', 'qemu-nbd(directsync) IOPS', 'p99',
    'ratio shoal/directsync', 'qemu-nbd(writeback) IOPS', 'p99', 'ratio shoal/writeback'];
  const rows = jobs.map((job) => {
    const shoal = find(measurements, job, 'shoal')?.fio;
    const direct = find(measurements, job, 'qemu-directsync')?.fio;
    const back = find(measurements, job, 'qemu-writeback')?.fio;
    return [job, formatIops(shoal), formatUs(shoal?.latencyP99Us),
      formatIops(direct), formatUs(direct?.latencyP99Us), formatRatio(shoal, direct),
      formatIops(back), formatUs(back?.latencyP99Us), formatRatio(shoal, back)];
  });
  return markdownTable(header, rows, 1);
}

/**
 * Every target's bandwidth and latency distribution, one row per job and target, with the CPU the
 * serving processes used (percent of one core, summed) and that CPU per I/O: on a machine with
 * few cores, CPU per I/O is what limits IOPS once the disk is not the bottleneck. `other CPU` is
 * what the rest of the machine used meanwhile (whole machine minus fio and the servers): a large
 * value means someone else's load disturbed that row.
 */
export function formatDetailTable(jobs: readonly string[], measurements: Measurements): string {
  const header = ['job', 'target', 'ran', 'IOPS', 'MiB/s', 'mean', 'p50', 'p99', 'p99.9', 'max',
    'fio CPU', 'server CPU', 'server CPU/IO', 'other CPU'];
  const rows: string[][] = [];
  for (const job of jobs) {
    for (const m of measurements.filter((each) => each.job === job)) {
      const f = m.fio;
      const cpuPercents = Object.values(m.probe.cpuPercentByProcess);
      const serverPercent = cpuPercents.reduce((sum, value) => sum + value, 0);
      const serverUsPerIo = f.iops === 0 ? Number.NaN : (serverPercent / 100 / f.iops) * 1e6;
      const fioPercent = f.fioCpuUserPercent + f.fioCpuSystemPercent;
      const machine = m.probe.machineCpuPercent;
      const otherPercent = machine === null ? Number.NaN : machine - serverPercent - fioPercent;
      rows.push([job, m.target, `${m.position + 1}.`, formatIops(f),
        (f.bandwidthBytesPerSecond / 2 ** 20).toFixed(1), formatUs(f.latencyMeanUs),
        formatUs(f.latencyP50Us), formatUs(f.latencyP99Us), formatUs(f.latencyP999Us),
        formatUs(f.latencyMaxUs), `${fioPercent.toFixed(0)}%`, `${serverPercent.toFixed(0)}%`,
        formatUs(serverUsPerIo), `${Math.max(0, otherPercent).toFixed(0)}%`]);
    }
  }
  return markdownTable(header, rows, 2);
}

/**
 * Where shoal's time went during each job: the NBD server's request latency, the chunk servers'
 * (a write's primary includes forwarding to the other replicas; all replicas are averaged), journal
 * group commit (records per fdatasync and the mean commit time) and CPU per process.
 */
export function formatShoalTable(jobs: readonly string[], measurements: Measurements): string {
  const header = ['job', 'NBD server mean / p99≤', 'CS op mean / p99≤',
    'journal appends/commit', 'commit mean', 'checkpoints', 'CPU % cs0 cs1 cs2 nbd mds (sys)'];
  const rows: string[][] = [];
  for (const job of jobs) {
    const m = find(measurements, job, 'shoal');
    if (m !== undefined) rows.push([job, ...shoalCells(m)]);
  }
  return markdownTable(header, rows, 1);
}

function shoalCells(m: Measurement): string[] {
  const op = m.fio.direction;
  const nbd = m.probe.nbd?.[op];
  const servers = Object.values(m.probe.chunkServers);
  const sum = (values: readonly number[]): number => values.reduce((all, each) => all + each, 0);
  const requests = servers.map((cs) => cs.requests[op] ?? { count: 0, meanUs: 0, p99UsMax: 0 });
  const opCount = sum(requests.map((summary) => summary.count));
  const opMeanUs = sum(requests.map((summary) => summary.meanUs * summary.count)) / opCount;
  const opP99Us = Math.max(...requests.map((summary) => summary.p99UsMax));
  const appends = sum(servers.map((cs) => cs.journalAppends));
  const commits = sum(servers.map((cs) => cs.journalCommits));
  const commitUs = sum(servers.map((cs) => cs.journalCommitMeanUs * cs.journalCommits));
  const commitMeanUs = commitUs / commits;
  const cpu = ['cs0', 'cs1', 'cs2', 'nbd', 'mds'].map((name) => {
    const total = (m.probe.cpuPercentByProcess[name] ?? Number.NaN).toFixed(0);
    return `${total} (${(m.probe.cpuSystemPercentByProcess[name] ?? Number.NaN).toFixed(0)})`;
  });
  return [
    nbd === undefined ? '-' : `${formatUs(nbd.meanUs)} / ${formatUs(nbd.p99UsMax)}`,
    opCount === 0 ? '-' : `${formatUs(opMeanUs)} / ${formatUs(opP99Us)}`,
    commits === 0 ? '-' : `${(appends / commits).toFixed(2)} (${appends}/${commits})`,
    commits === 0 ? '-' : formatUs(commitMeanUs),
    String(sum(servers.map((cs) => cs.journalCheckpoints))),
    cpu.join(' '),
  ];
}

function formatIops(result: FioResult | undefined): string {
  if (result === undefined) return '-';
  if (result.iops < 100) return result.iops.toFixed(1);
  return Math.round(result.iops).toLocaleString('en-US');
}

function formatRatio(shoal: FioResult | undefined, baseline: FioResult | undefined): string {
  if (shoal === undefined || baseline === undefined || baseline.iops === 0) return '-';
  return `${(shoal.iops / baseline.iops).toFixed(2)}×`;
}

export function formatUs(us: number | undefined): string {
  if (us === undefined || !Number.isFinite(us)) return '-';
  if (us < 1000) return `${us.toFixed(0)} µs`;
  if (us < 1_000_000) return `${(us / 1000).toFixed(us < 10_000 ? 2 : 1)} ms`;
  return `${(us / 1_000_000).toFixed(2)} s`;
}

/** A markdown table: the first `textColumns` columns left-aligned, the others right-aligned. */
function markdownTable(header: string[], rows: readonly string[][], textColumns: number): string {
  const widths = header.map((cell, column) =>
    Math.max(cell.length, ...rows.map((row) => (row[column] ?? '').length)));
  const pad = (cell: string, column: number): string =>
    column < textColumns ? cell.padEnd(widths[column] ?? 0) : cell.padStart(widths[column] ?? 0);
  const line = (cells: readonly string[]): string => `| ${cells.map(pad).join(' | ')} |`;
  const rule = widths.map((width, at) => '-'.repeat(width + 1) + (at < textColumns ? '-' : ':'));
  return [line(header), `|${rule.join('|')}|`, ...rows.map(line)].join('\n');
}
