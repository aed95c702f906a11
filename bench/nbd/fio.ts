// fio as a measuring instrument: the benchmark's job list, the exact fio command line for one job
// against one NBD URI, running it, and reducing fio's JSON report to the numbers the harness
// prints (IOPS, bandwidth, completion-latency percentiles, fio's own CPU use).
//
// Invariants: every job is one fio process with one fio job (numjobs=1), on ioengine=nbd, over
// the same region [0, regionBytes) of the export, so two targets run byte-for-byte the same
// command apart from the URI. Time-based jobs use --randrepeat=0 and --norandommap: offsets are
// not repeated between runs and fio keeps no per-block map (which would bias long random runs).
// --direct is left out on purpose: the nbd engine has no page cache to bypass.
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
  readonly uri: string;
  readonly regionBytes: number;
  /** Time-based run length; null runs the job once over the region (the prefill). */
  readonly runtimeSeconds: number | null;
  /** Where fio writes its JSON report (fio's nbd engine prints chatter on stdout). */
  readonly outputPath: string;
}

export function fioArgs(job: FioJob, options: FioRunOptions): string[] {
  assert(options.regionBytes % job.blockBytes === 0, 'the region is a whole number of blocks');
  const args = [
    `--name=${job.name}`, '--ioengine=nbd', `--uri=${options.uri}`,
    `--rw=${job.rw}`, `--bs=${job.blockBytes}`, `--iodepth=${job.iodepth}`, '--numjobs=1',
    '--offset=0', `--size=${options.regionBytes}`,
  ];
  if (options.runtimeSeconds !== null) {
    const runtime = `--runtime=${options.runtimeSeconds}`;
    args.push('--time_based', runtime, '--randrepeat=0', '--norandommap');
  }
  args.push('--output-format=json', `--output=${options.outputPath}`);
  return args;
}

export interface FioResult {
  readonly job: string;
  readonly direction: FioDirection;
  readonly iops: number;
  readonly bandwidthBytesPerSecond: number;
  readonly ioBytes: number;
  readonly runtimeMs: number;
  readonly latencyMeanUs: number;
  readonly latencyP50Us: number;
  readonly latencyP99Us: number;
  readonly latencyP999Us: number;
  readonly latencyMaxUs: number;
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
  return parseFioReport(job, text);
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

export function parseFioReport(job: FioJob, text: string): FioResult {
  // fio may print warnings before the JSON document even with --output.
  const report = JSON.parse(text.slice(text.indexOf('{'))) as { jobs: FioJsonJob[] };
  assert(report.jobs.length === 1, `one fio job in the report, got ${report.jobs.length}`);
  const fioJob = report.jobs[0]!;
  if (fioJob.error !== 0) throw new Error(`fio ${job.name} reported error ${fioJob.error}`);
  const direction = jobDirection(job);
  const side = fioJob[direction];
  const percentiles = side.clat_ns.percentile ?? {};
  const percentileUs = (key: string): number => (percentiles[key] ?? Number.NaN) / 1000;
  return {
    job: job.name,
    direction,
    iops: side.iops,
    bandwidthBytesPerSecond: side.bw_bytes,
    ioBytes: side.io_bytes,
    runtimeMs: side.runtime,
    latencyMeanUs: side.clat_ns.mean / 1000,
    latencyP50Us: percentileUs('50.000000'),
    latencyP99Us: percentileUs('99.000000'),
    latencyP999Us: percentileUs('99.900000'),
    latencyMaxUs: side.clat_ns.max / 1000,
    fioCpuUserPercent: fioJob.usr_cpu,
    fioCpuSystemPercent: fioJob.sys_cpu,
  };
}
