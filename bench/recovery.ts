// Recovery benchmark: how long a dead chunk server leaves the cluster short of full redundancy,
// how fast re-replication copies, and what a guest feels meanwhile. It fills a volume on a local
// four-server cluster, measures 4 KiB qd1 read and write latency through NBD, kills one chunk
// server with SIGKILL, and keeps measuring latency while the MDS re-replicates, until every chunk
// is back to three replicas. Nothing here is asserted: it prints figures.
//
// Usage: node build/bench/recovery.js [--data 1G] [--rate 64M] [--replace-after-ms 3000]
//        [--probe-seconds 5] [--dir DIR] [--json FILE]

import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { LocalCluster } from '../src/local/cluster.ts';
import { formatBytes, parseSizeBytes } from '../src/util/size.ts';
import { PREFILL_JOB, runFio, stopFio, type FioJob, type FioResult } from './nbd/fio.ts';

const MiB = 1024 * 1024;
const PROBES: readonly FioJob[] = [
  { name: 'randread-4k-qd1', rw: 'randread', blockBytes: 4096, iodepth: 1 },
  { name: 'randwrite-4k-qd1', rw: 'randwrite', blockBytes: 4096, iodepth: 1 },
];

interface Timeline {
  killedAtMs: number;
  offlineAtMs: number | null;
  copyStartedAtMs: number | null;
  healthyAtMs: number | null;
  degradedChunks: number;
  copiedBytes: number;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      data: { type: 'string', default: '1G' },
      rate: { type: 'string', default: '64M' },
      'replace-after-ms': { type: 'string', default: '3000' },
      'probe-seconds': { type: 'string', default: '5' },
      dir: { type: 'string', default: tmpdir() },
      json: { type: 'string' },
    },
  });
  const dataBytes = parseSizeBytes(values.data, '--data');
  const rateBytes = parseSizeBytes(values.rate, '--rate');
  const probeSeconds = Number(values['probe-seconds']);
  const runDir = await mkdtemp(join(values.dir, 'shoal-recovery-'));
  const cluster = await LocalCluster.start({
    parentDir: runDir,
    chunkServers: 4,
    mdsArgs: ['--heartbeat-interval-ms', '250', '--heartbeat-timeout-ms', '2000', '--cs-timeout-ms', '2000',
      '--replace-after-ms', values['replace-after-ms'], '--recovery-bytes-per-second', String(rateBytes)],
    csArgs: ['--peer-timeout-ms', '1500'],
    nbdArgs: ['--cs-timeout-ms', '2500'],
  });
  const stop = async (): Promise<void> => {
    await stopFio();
    await cluster.destroy();
    await rm(runDir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => void stop().then(() => process.exit(130)));
  try {
    await cluster.admin.createVolume({ name: 'bench', sizeBytes: dataBytes + 256 * MiB });
    const uri = cluster.nbdUnixUri('bench');
    const output = join(runDir, 'fio.json');
    process.stderr.write(`filling ${formatBytes(dataBytes)}...\n`);
    await runFio(PREFILL_JOB, { uris: [uri], regionBytes: dataBytes, runtimeSeconds: null, outputPath: output });
    const before = await probeRound(uri, dataBytes, probeSeconds, output);
    const timeline = await killAndWatch(cluster);
    const during: FioResult[][] = [];
    while (timeline.healthyAtMs === null) during.push(await probeRound(uri, dataBytes, probeSeconds, output));
    report({ dataBytes, rateBytes, replaceAfterMs: Number(values['replace-after-ms']), timeline, before, during }, values.json);
  } finally {
    await stop();
  }
}

async function probeRound(uri: string, regionBytes: number, seconds: number, outputPath: string): Promise<FioResult[]> {
  const results: FioResult[] = [];
  for (const job of PROBES) results.push(await runFio(job, { uris: [uri], regionBytes, runtimeSeconds: seconds, outputPath }));
  return results;
}

/** Kills chunk server 1 and follows the MDS until every chunk is healthy again (in the background). */
async function killAndWatch(cluster: LocalCluster): Promise<Timeline> {
  const copiedBefore = (await cluster.admin.stat()).recovery.copiedBytes;
  const timeline: Timeline = { killedAtMs: Date.now(), offlineAtMs: null, copyStartedAtMs: null, healthyAtMs: null, degradedChunks: 0, copiedBytes: 0 };
  cluster.chunkServers[1]?.kill('SIGKILL');
  const poll = async (): Promise<void> => {
    for (;;) {
      const stat = await cluster.admin.stat();
      const nowMs = Date.now();
      const notHealthy = stat.chunks.total - stat.chunks.byState.healthy;
      if (timeline.offlineAtMs === null && stat.chunkServers.offline > 0) timeline.offlineAtMs = nowMs;
      timeline.degradedChunks = Math.max(timeline.degradedChunks, notHealthy);
      timeline.copiedBytes = stat.recovery.copiedBytes - copiedBefore;
      if (timeline.copyStartedAtMs === null && timeline.copiedBytes > 0) timeline.copyStartedAtMs = nowMs;
      if (timeline.offlineAtMs !== null && notHealthy === 0 && stat.recovery.running === 0 && stat.recovery.pending === 0) {
        timeline.healthyAtMs = nowMs;
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  };
  void poll();
  return timeline;
}

interface Report {
  dataBytes: number;
  rateBytes: number;
  replaceAfterMs: number;
  timeline: Timeline;
  before: FioResult[];
  during: FioResult[][];
}

function report(result: Report, jsonPath: string | undefined): void {
  const { timeline } = result;
  const since = (at: number | null): string => (at === null ? 'n/a' : `${((at - timeline.killedAtMs) / 1000).toFixed(1)} s`);
  const copySeconds = timeline.healthyAtMs !== null && timeline.copyStartedAtMs !== null
    ? (timeline.healthyAtMs - timeline.copyStartedAtMs) / 1000 : Number.NaN;
  const lines = [
    `data ${formatBytes(result.dataBytes)} on 4 chunk servers, 3 replicas; recovery rate limit ${formatBytes(result.rateBytes)}/s; ` +
      `replace after ${result.replaceAfterMs} ms`,
    '',
    '| event | after the kill |',
    '|---|--:|',
    `| chunk server marked offline | ${since(timeline.offlineAtMs)} |`,
    `| first replica copy | ${since(timeline.copyStartedAtMs)} |`,
    `| every chunk healthy again | ${since(timeline.healthyAtMs)} |`,
    '',
    `chunks degraded: ${timeline.degradedChunks}; copied ${formatBytes(timeline.copiedBytes)} in ${copySeconds.toFixed(1)} s ` +
      `= ${formatBytes(timeline.copiedBytes / copySeconds)}/s`,
    '',
    '| probe | before p50 | before p99 | during p50 | during p99 | during / before (p99) |',
    '|---|--:|--:|--:|--:|--:|',
  ];
  for (const [index, probe] of PROBES.entries()) {
    const base = result.before[index];
    const samples = result.during.map((round) => round[index]).filter((r): r is FioResult => r !== undefined);
    const p50 = median(samples.map((r) => r.latencyP50Us));
    const p99 = Math.max(...samples.map((r) => r.latencyP99Us));
    lines.push(`| ${probe.name} | ${us(base?.latencyP50Us)} | ${us(base?.latencyP99Us)} | ${us(p50)} | ${us(p99)} | ` +
      `${base === undefined ? 'n/a' : (p99 / base.latencyP99Us).toFixed(2)}x |`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  if (jsonPath !== undefined) void writeFile(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
}

function us(value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return 'n/a';
  return value >= 1000 ? `${(value / 1000).toFixed(2)} ms` : `${value.toFixed(0)} µs`;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;
}

main().catch((error: unknown) => {
  process.stderr.write(`recovery bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
