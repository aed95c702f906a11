// Turning measurements into what a person reads (markdown tables, ready to paste into
// bench/README.md) and what a program reads (the --json file), plus the facts about the machine
// that a number means nothing without: cores, kernel, file system and disk of the run folder, and
// the versions of fio, qemu-nbd and node.
//
// Invariants: ratios are always shoal / baseline of the same job's IOPS, so above 1 means shoal is
// faster; the primary ratio is against qemu-nbd --cache=directsync, the equally durable baseline;
// the ratio to three directsync servers at once is against the floor for three durable copies on
// the run folder's one disk.
//
// Non-goals: statistics over repeated runs (one run per job and target; rerun to see the spread).

import { execFileSync } from 'node:child_process';
import { readFileSync, realpathSync } from 'node:fs';
import { availableParallelism, cpus, release, totalmem } from 'node:os';
import { basename, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FioResult } from './fio.ts';
import { histogramSum, type HistogramTotal, type MemoryUse, type ProbeDelta } from './probes.ts';
import type { TargetId } from './targets.ts';

export interface Measurement {
  readonly job: string;
  readonly target: TargetId;
  /** Position of this target within the job's rotation (0 runs first). */
  readonly position: number;
  readonly fio: FioResult;
  readonly probe: ProbeDelta;
  /** Peak (since the reset before the job) and current resident memory of each process. */
  readonly memory: Record<string, MemoryUse>;
  /** When fio started and ended, in process.hrtime µs (the clock of node's CPU profiles). */
  readonly startedUs: number;
  readonly endedUs: number;
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
    'ratio shoal/directsync', 'qemu-nbd(directsync)x3 IOPS', 'p99', 'ratio shoal/x3',
    'qemu-nbd(writeback) IOPS', 'p99', 'ratio shoal/writeback'];
  const rows = jobs.map((job) => {
    const shoal = find(measurements, job, 'shoal')?.fio;
    const direct = find(measurements, job, 'qemu-directsync')?.fio;
    const three = find(measurements, job, 'qemu-directsync-x3')?.fio;
    const back = find(measurements, job, 'qemu-writeback')?.fio;
    return [job, formatIops(shoal), formatUs(shoal?.latencyP99Us),
      formatIops(direct), formatUs(direct?.latencyP99Us), formatRatio(shoal, direct),
      formatIops(three), formatUs(three?.latencyP99Us), formatRatio(shoal, three),
      formatIops(back), formatUs(back?.latencyP99Us), formatRatio(shoal, back)];
  });
  return markdownTable(header, rows, 1);
}

/** The processes of each target, in table order, with a short column name. */
const SHOAL_PROCESSES = ['mds', 'cs0', 'cs1', 'cs2', 'nbd'] as const;
const QEMU_COLUMNS: ReadonlyArray<{ target: TargetId; title: string }> = [
  { target: 'qemu-directsync', title: 'qemu directsync' },
  { target: 'qemu-directsync-x3', title: 'qemu x3' },
  { target: 'qemu-writeback', title: 'qemu writeback' },
];

/**
 * CPU time per I/O of each serving process, per job: µs of CPU (user + system) the process used
 * during the job divided by the I/Os fio completed, with the system (kernel) part in brackets.
 * For the three-server baseline the three qemu-nbd processes are summed (each served a third of
 * the I/Os); per-process numbers are in the --json file.
 */
export function formatCpuPerIoTable(jobs: readonly string[], measurements: Measurements): string {
  const header = ['job', ...SHOAL_PROCESSES, 'shoal total',
    ...QEMU_COLUMNS.map((column) => column.title)];
  const rows = jobs.map((job) => {
    const shoal = find(measurements, job, 'shoal');
    const cells = SHOAL_PROCESSES.map((name) => cpuPerIo(shoal, [name]));
    cells.push(cpuPerIo(shoal, SHOAL_PROCESSES));
    for (const column of QEMU_COLUMNS) {
      const m = find(measurements, job, column.target);
      cells.push(cpuPerIo(m, m === undefined ? [] : Object.keys(m.probe.cpuPercentByProcess)));
    }
    return [job, ...cells];
  });
  return markdownTable(header, rows, 1);
}

function cpuPerIo(m: Measurement | undefined, names: readonly string[]): string {
  if (m === undefined || m.fio.iops === 0) return '-';
  const present = names.filter((name) => m.probe.cpuPercentByProcess[name] !== undefined);
  if (present.length === 0) return '-';
  const sum = (record: Record<string, number>): number =>
    present.reduce((total, name) => total + (record[name] ?? 0), 0);
  const perIo = (percent: number): number => (percent / 100 / m.fio.iops) * 1e6;
  const total = perIo(sum(m.probe.cpuPercentByProcess));
  const system = perIo(sum(m.probe.cpuSystemPercentByProcess));
  return `${formatCpuUs(total)} (${formatCpuUs(system)})`;
}

/** µs of CPU with a precision that suits the size: 3.4, 45, 1,234. */
function formatCpuUs(us: number): string {
  if (!Number.isFinite(us)) return '-';
  if (us < 10) return us.toFixed(1);
  return Math.round(us).toLocaleString('en-US');
}

/**
 * Peak resident memory (VmHWM, reset before each job) of every serving process during each job,
 * in MiB. The three qemu-nbd processes of the three-server baseline are listed one after another.
 */
export function formatMemoryTable(jobs: readonly string[], measurements: Measurements): string {
  const header = ['job', ...SHOAL_PROCESSES, ...QEMU_COLUMNS.map((column) => column.title)];
  const rows = jobs.map((job) => {
    const shoal = find(measurements, job, 'shoal');
    const cells = SHOAL_PROCESSES.map((name) => formatMiB(shoal?.memory[name]?.peakRssBytes));
    for (const column of QEMU_COLUMNS) {
      const m = find(measurements, job, column.target);
      const peaks = Object.values(m?.memory ?? {}).map((use) => formatMiB(use.peakRssBytes));
      cells.push(peaks.length === 0 ? '-' : peaks.join(' / '));
    }
    return [job, ...cells];
  });
  return markdownTable(header, rows, 1);
}

/**
 * One line per process: its resident memory (VmRSS) after the first job it served and after the
 * last, so that growth over the run (caches, leaks, buffers kept) shows.
 */
export function formatRssGrowth(jobs: readonly string[], measurements: Measurements): string[] {
  const lines: string[] = [];
  const targets: TargetId[] = ['shoal', ...QEMU_COLUMNS.map((column) => column.target)];
  for (const target of targets) {
    const runs = jobs.map((job) => find(measurements, job, target))
      .filter((m): m is Measurement => m !== undefined);
    const first = runs[0];
    const last = runs.at(-1);
    if (first === undefined || last === undefined) continue;
    for (const name of Object.keys(first.memory)) {
      const from = first.memory[name]?.rssBytes;
      const to = last.memory[name]?.rssBytes;
      const growth = from === undefined || to === undefined ? Number.NaN : to - from;
      const sign = growth >= 0 ? '+' : '-';
      const label = target === 'shoal' ? name : `${name} (${target})`;
      lines.push(`- ${label}: ${formatMiB(from)} MiB after ${first.job} -> ${formatMiB(to)} MiB ` +
        `after ${last.job} (${sign}${formatMiB(Math.abs(growth))} MiB)`);
    }
  }
  return lines;
}

function formatMiB(bytes: number | undefined): string {
  if (bytes === undefined || !Number.isFinite(bytes)) return '-';
  return (bytes / 2 ** 20).toFixed(1);
}

/**
 * The stages of one write, per write job: the mean time of each (delta _sum / delta _count of
 * its histogram over the job), outermost first. The chunk-server stages are summed over the three
 * servers (a primary's stages come from whichever server was primary for each chunk). A stage
 * whose metric this build does not export, or that saw no writes, prints `-`.
 */
export function formatWriteBreakdown(jobs: readonly string[], measurements: Measurements): string {
  const header = ['job', 'NBD total', 'client→primary', 'primary total', 'primary local',
    'primary→replicas', 'replica total', 'journal wait', 'commit mean'];
  const rows: string[][] = [];
  for (const job of jobs) {
    const m = find(measurements, job, 'shoal');
    if (m === undefined || m.fio.direction !== 'write') continue;
    const mean = (total: HistogramTotal | null): string =>
      total === null || total.count === 0 ? '-' : formatUs((total.sumSeconds / total.count) * 1e6);
    const stage = (name: string): string =>
      mean(histogramSum(m.probe, 'shoal_cs_write_stage_seconds', { stage: name }));
    const servers = Object.values(m.probe.chunkServers);
    const commits = servers.reduce((sum, cs) => sum + cs.journalCommits, 0);
    const commitUs = servers.reduce((sum, cs) => sum + cs.journalCommitMeanUs * cs.journalCommits, 0);
    rows.push([job,
      mean(histogramSum(m.probe, 'shoal_nbd_request_duration_seconds', { command: 'write' })),
      mean(histogramSum(m.probe, 'shoal_client_request_duration_seconds', { op: 'write' })),
      stage('primary_total'), stage('primary_local'), stage('primary_forward'),
      stage('replica_total'),
      mean(histogramSum(m.probe, 'shoal_cs_journal_wait_seconds', {})),
      commits === 0 ? '-' : formatUs(commitUs / commits)]);
  }
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
