// fio as a measuring instrument: the benchmark's job list, the exact fio command line for one job
// against one NBD URI, running it, and reducing fio's JSON report to the numbers the harness
// prints (IOPS, bandwidth, completion-latency percentiles, fio's own CPU use).
//
// Invariants: every job is one fio process, on ioengine=nbd, over the same region [0, regionBytes)
// of each export, so two targets run byte-for-byte the same command apart from the URI. A target
// of one server gets one fio job (numjobs=1); a target of several servers (the three-copy
// baseline) gets one fio job section per server, each on its own export, with the job's iodepth
// divided among them (rounded up) and --group_reporting, so fio reports the group as one job.
// Time-based jobs use --randrepeat=0 and --norandommap: offsets are not repeated between runs and
// fio keeps no per-block map (which would bias long random runs). --direct is left out on
// purpose: the nbd engine has no page cache to bypass.
//
// Non-goals: verification (test/fio_verify.test.ts does that), mixed read/write jobs, several fio
// processes at once.

import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { assert } from '../../src/util/assert.ts';

export type FioDirection = 'read' | 'write';

export interface FioJob {
  /** Short stable name used in tables and the JSON report, e.g. `randread-4k-qd1`. */
  readonly name: string;
  /** fio's rw= value. */
  readonly rw: 'randread' | 'randwrite' | 'read' | 'write';
  readonly blockBytes: number;
  readonly iodepth: number;
}

/** The six measured jobs, in the order they run (reads first, over the prefilled region). */
export const FIO_JOBS: readonly FioJob[] = [
  { name: 'randread-4k-qd1', rw: 'randread', blockBytes: 4096, iodepth: 1 },
  { name: 'randread-4k-qd32', rw: 'randread', blockBytes: 4096, iodepth: 32 },
  { name: 'seqread-1m-qd4', rw: 'read', blockBytes: 1024 * 1024, iodepth: 4 },
  { name: 'randwrite-4k-qd1', rw: 'randwrite', blockBytes: 4096, iodepth: 1 },
  { name: 'randwrite-4k-qd32', rw: 'randwrite', blockBytes: 4096, iodepth: 32 },
  { name: 'seqwrite-1m-qd4', rw: 'write', blockBytes: 1024 * 1024, iodepth: 4 },
];

/** Writes the whole region once, so that read jobs read written data and not holes. */
export const PREFILL_JOB: FioJob = {
  name: 'prefill-1m-qd4', rw: 'write', blockBytes: 1024 * 1024, iodepth: 4,
};

export function jobDirection(job: FioJob): FioDirection {
  return job.rw === 'randread' || job.rw === 'read' ? 'read' : 'write';
}

export interface FioRunOptions {
  /** One NBD URI per server; more than one runs one fio job section per server, as a group. */
  readonly uris: readonly string[];
  readonly regionBytes: number;
  /** Time-based run length; null runs the job once over the region (the prefill). */
  readonly runtimeSeconds: number | null;
  /** Where fio writes its JSON report (fio's nbd engine prints chatter on stdout). */
  readonly outputPath: string;
  /** More fio options, after the job's own (e.g. bandwidth logs); one server only. */
  readonly extraArgs?: readonly string[];
}

/**
 * The iodepth of each of `servers` fio job sections: the job's iodepth divided among them,
 * rounded up, at least 1, so that the group keeps about the job's total queue depth (qd1 on three
 * servers is still 1 each: 3 in flight).
 */
export function iodepthPerServer(job: FioJob, servers: number): number {
  assert(servers >= 1, 'at least one server');
  return Math.max(1, Math.ceil(job.iodepth / servers));
}

export function fioArgs(job: FioJob, options: FioRunOptions): string[] {
  assert(options.regionBytes % job.blockBytes === 0, 'the region is a whole number of blocks');
  assert(options.uris.length >= 1, 'at least one NBD URI');
  const timeBased = options.runtimeSeconds === null ? [] : ['--time_based',
    `--runtime=${options.runtimeSeconds}`, '--randrepeat=0', '--norandommap'];
  const output = ['--output-format=json', `--output=${options.outputPath}`];
  const extra = options.extraArgs ?? [];
  assert(extra.length === 0 || options.uris.length === 1, 'extra fio options for one server only');
  if (options.uris.length === 1) {
    return [
      `--name=${job.name}`, '--ioengine=nbd', `--uri=${options.uris[0]}`,
      `--rw=${job.rw}`, `--bs=${job.blockBytes}`, `--iodepth=${job.iodepth}`, '--numjobs=1',
      '--offset=0', `--size=${options.regionBytes}`, ...timeBased, ...extra, ...output,
    ];
  }
  // Options before the first --name are global; each --name starts a job section on its server.
  const global = [
    '--ioengine=nbd', `--rw=${job.rw}`, `--bs=${job.blockBytes}`,
    `--iodepth=${iodepthPerServer(job, options.uris.length)}`, '--numjobs=1', '--offset=0',
    `--size=${options.regionBytes}`, ...timeBased, '--group_reporting', ...output,
  ];
  const sections = options.uris.flatMap((uri, index) => [`--name=${job.name}-${index}`,
    `--uri=${uri}`]);
  return [...global, ...sections];
}

export interface FioResult {
  readonly job: string;
  readonly direction: FioDirection;
  /** fio job sections, one per server (1, or 3 for the three-copy baseline). */
  readonly servers: number;
  /** The iodepth of each section; the total in flight is servers × this. */
  readonly iodepthPerServer: number;
  readonly iops: number;
  readonly bandwidthBytesPerSecond: number;
  readonly ioBytes: number;
  readonly runtimeMs: number;
  readonly latencyMeanUs: number;
  readonly latencyP50Us: number;
  readonly latencyP99Us: number;
  readonly latencyP999Us: number;
  readonly latencyMaxUs: number;
  /** fio's own CPU over all its job processes, in percent of one core. */
  readonly fioCpuUserPercent: number;
  readonly fioCpuSystemPercent: number;
}

/** The fio process currently running, so an interrupt can stop it. */
let current: { child: ChildProcess; exited: Promise<unknown> } | null = null;
/** Set by stopFio: no fio starts after an interrupt (it would write into a removed folder). */
let stopped = false;

/** Kills the running fio, if any, waits for it to exit, and refuses to start another one. */
export async function stopFio(): Promise<void> {
  stopped = true;
  if (current === null) return;
  current.child.kill('SIGKILL');
  await current.exited;
}

/** Runs one job; rejects with fio's stderr when fio fails or reports a job error. */
export async function runFio(job: FioJob, options: FioRunOptions): Promise<FioResult> {
  if (stopped) throw new Error(`fio ${job.name} not started: the run was interrupted`);
  const args = fioArgs(job, options);
  // Generous: a stuck target should end the run, a slow one should not.
  const timeoutMs = options.runtimeSeconds === null
    ? 30 * 60_000 : (options.runtimeSeconds + 120) * 1000;
  const { code, stderr } = await spawnFio(args, timeoutMs);
  if (code !== 0) throw new Error(`fio ${job.name} exited with ${code}\n${stderr}`);
  const text = await readFile(options.outputPath, 'utf8');
  await rm(options.outputPath, { force: true });
  return parseFioReport(job, text, options.uris.length);
}

interface FioExit {
  readonly code: number | null;
  readonly stderr: string;
}

function spawnFio(args: readonly string[], timeoutMs: number): Promise<FioExit> {
  assert(current === null, 'one fio at a time');
  const child = spawn('fio', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise((resolve) => child.once('close', resolve));
  current = { child, exited };
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (text: string) => {
    stderr = (stderr + text).slice(-16 * 1024);
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve, reject) => {
    child.once('error', (error) => {
      clearTimeout(timer);
      current = null;
      reject(error);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      current = null;
      resolve({ code: code ?? (signal === null ? null : -1), stderr });
    });
  });
}

interface FioJsonSide {
  readonly iops: number;
  readonly bw_bytes: number;
  readonly io_bytes: number;
  readonly runtime: number;
  readonly clat_ns: { mean: number; max: number; percentile?: Record<string, number> };
}

interface FioJsonJob {
  readonly error: number;
  readonly read: FioJsonSide;
  readonly write: FioJsonSide;
  readonly usr_cpu: number;
  readonly sys_cpu: number;
}

export function parseFioReport(job: FioJob, text: string, servers = 1): FioResult {
  // fio may print warnings before the JSON document even with --output.
  const report = JSON.parse(text.slice(text.indexOf('{'))) as { jobs: FioJsonJob[] };
  assert(report.jobs.length === 1, `one fio job in the report, got ${report.jobs.length}`);
  const fioJob = report.jobs[0]!;
  if (fioJob.error !== 0) throw new Error(`fio ${job.name} reported error ${fioJob.error}`);
  const direction = jobDirection(job);
  const side = fioJob[direction];
  const percentiles = side.clat_ns.percentile ?? {};
  const percentileUs = (key: string): number => (percentiles[key] ?? Number.NaN) / 1000;
  // A group's usr_cpu/sys_cpu is CPU time over the summed runtime of its jobs: the mean of one
  // job process. Times the number of jobs, it is the group's CPU in percent of one core.
  return {
    job: job.name,
    direction,
    servers,
    iodepthPerServer: iodepthPerServer(job, servers),
    iops: side.iops,
    bandwidthBytesPerSecond: side.bw_bytes,
    ioBytes: side.io_bytes,
    runtimeMs: side.runtime,
    latencyMeanUs: side.clat_ns.mean / 1000,
    latencyP50Us: percentileUs('50.000000'),
    latencyP99Us: percentileUs('99.000000'),
    latencyP999Us: percentileUs('99.900000'),
    latencyMaxUs: side.clat_ns.max / 1000,
    fioCpuUserPercent: fioJob.usr_cpu * servers,
    fioCpuSystemPercent: fioJob.sys_cpu * servers,
  };
}
