// `npm run bench:tier-cache` — an "HDD" tier with a cold and a warm hypervisor read cache, against
// an "SSD" tier, in one run (the tiers-and-caches issue: warm-cache random reads within 1.2x of the
// SSD tier). One cluster: three chunk servers of tier 0 whose data directories sit on the slow
// disk (test/helpers/slow_disk.ts: a seek per random transfer; journals on the fast disk, an HDD
// behind an SSD journal) and three of tier 2 on the fast disk; a volume pinned to each tier, its
// hot range written; the kernel's page cache dropped before each read job, so "HDD" reads reach
// the platter. The same fio job (4 KiB zipf(1.1) random reads, QD8) runs, over a hot range half
// the cache's size (it fits) and then twice it (it does not), on:
//   1. the SSD volume, through an NBD server without a cache (the baseline);
//   2. the HDD volume, through an NBD server with --cache-size CACHE, from empty (cold);
//   3. the same again, right after (warm).
// Printed, never judged: IOPS, mean latency, the cache's hit ratio, and each run's ratio to 1.
//
// Usage: node --enable-source-maps build/bench/tier-cache.js [--runtime S] [--cache-size BYTES] [--seek-ms N] [--json FILE]

import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { LocalCluster } from '../src/local/cluster.ts';
import { parseSizeBytes } from '../src/util/size.ts';
import { SlowDisk } from '../test/helpers/slow_disk.ts';
import { readCacheArgs, readCacheCounters } from '../test/helpers/read_cache.ts';
import { run, runOk } from '../test/helpers/run.ts';

const MiB = 2 ** 20;

interface RunResult {
  readonly label: string;
  readonly iops: number;
  readonly meanLatencyUs: number;
  readonly hitRatio: number | null;
}

function dropPageCache(): void {
  try {
    execFileSync('sync');
    execFileSync('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
  } catch {
    process.stderr.write('could not drop the page cache (not root?): "HDD" reads may be served from memory\n');
  }
}

async function fioZipf(cluster: LocalCluster, volume: string, hotBytes: number, runtimeSeconds: number, label: string): Promise<RunResult> {
  const port = Number(cluster.nbd?.ready['metricsPort']);
  const counters = () => readCacheCounters(port);
  dropPageCache();
  const before = await counters();
  const result = await run('fio', [
    '--name=zipf', '--ioengine=nbd', `--uri=${cluster.nbdUnixUri(volume)}`, '--rw=randread', '--bs=4k', '--iodepth=8', `--size=${hotBytes}`,
    '--random_distribution=zipf:1.1', '--norandommap', '--time_based', `--runtime=${runtimeSeconds}`, '--output-format=json',
  ], { timeoutMs: (runtimeSeconds + 120) * 1000 });
  if (result.code !== 0) throw new Error(`fio failed: ${result.stderr}`);
  const after = await counters();
  const job = (JSON.parse(result.stdout.slice(result.stdout.indexOf('{'))) as { jobs: Array<{ read: { iops: number; lat_ns: { mean: number } } }> }).jobs[0];
  const lookups = after.hits + after.misses - before.hits - before.misses;
  return {
    label,
    iops: job?.read.iops ?? 0,
    meanLatencyUs: (job?.read.lat_ns.mean ?? 0) / 1000,
    hitRatio: lookups > 0 ? (after.hits - before.hits) / lookups : null,
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      runtime: { type: 'string', default: '20' },
      'cache-size': { type: 'string', default: '64M' },
      'seek-ms': { type: 'string', default: '8' },
      json: { type: 'string' },
    },
  });
  const runtimeSeconds = Number(values.runtime);
  const cacheBytes = parseSizeBytes(values['cache-size'], '--cache-size');
  const hotRanges = [cacheBytes / 2, 2 * cacheBytes];
  const volumeBytes = 4 * cacheBytes;
  const root = await mkdtemp(join(tmpdir(), 'shoal-tier-cache-'));
  const disk = await SlowDisk.mount({ backingDir: join(root, 'hdd-backing'), mountDir: join(root, 'hdd'), seekMs: Number(values['seek-ms']) });
  let cluster: LocalCluster | null = null;
  try {
    cluster = await LocalCluster.start({
      parentDir: root, chunkServers: 6,
      mdsArgs: ['--failure-domain', 'disk'],
      csArgs: ['--journal-segment-bytes', '8M'],
      csArgsFor: (index) => (index < 3
        ? ['--tier', '0', '--data', join(disk.path, `cs${index}`), '--journal-dir', join(root, `cs${index}-journal`)]
        : ['--tier', '2']),
    });
    const started = cluster;
    await started.admin.createVolume({ name: 'hdd', sizeBytes: volumeBytes, chunkSizeBytes: 8 * MiB, tier: 0 });
    await started.admin.createVolume({ name: 'ssd', sizeBytes: volumeBytes, chunkSizeBytes: 8 * MiB, tier: 2 });
    for (const volume of ['hdd', 'ssd']) {
      await runOk('fio', ['--name=fill', '--ioengine=nbd', `--uri=${started.nbdUnixUri(volume)}`, '--rw=write', '--bs=1M', '--iodepth=4',
        `--size=${2 * cacheBytes}`], { timeoutMs: 600_000 });
    }
    const results: Array<RunResult & { hotBytes: number; ratio: number }> = [];
    for (const hotBytes of hotRanges) {
      // A fresh NBD server each time: the SSD run without a cache, then a cache from empty.
      await started.nbd?.stop('SIGTERM');
      await started.startNbd();
      const baseline = await fioZipf(started, 'ssd', hotBytes, runtimeSeconds, 'SSD tier, no cache');
      await started.nbd?.stop('SIGTERM');
      await started.startNbd(readCacheArgs(join(root, 'nbd-cache'), cacheBytes));
      const cold = await fioZipf(started, 'hdd', hotBytes, runtimeSeconds, `HDD tier, cache ${values['cache-size']} cold`);
      const warm = await fioZipf(started, 'hdd', hotBytes, runtimeSeconds, `HDD tier, cache ${values['cache-size']} warm`);
      for (const result of [baseline, cold, warm]) results.push({ ...result, hotBytes, ratio: result.iops / baseline.iops });
    }
    process.stdout.write(`\n4 KiB zipf(1.1) random reads, QD8, ${runtimeSeconds} s each; cache ${values['cache-size']}; ` +
      `"HDD": slow disk, ${values['seek-ms']} ms a seek, page cache dropped before each run\n\n`);
    process.stdout.write('| hot range | run | IOPS | mean latency | cache hits | IOPS / SSD tier |\n|---|---|---:|---:|---:|---:|\n');
    for (const result of results) {
      process.stdout.write(`| ${result.hotBytes / MiB} MiB | ${result.label} | ${result.iops.toFixed(0)} | ${result.meanLatencyUs.toFixed(0)} µs | ` +
        `${result.hitRatio === null ? '-' : `${(result.hitRatio * 100).toFixed(1)} %`} | ${result.ratio.toFixed(2)}x |\n`);
    }
    if (values.json !== undefined) await writeFile(values.json, `${JSON.stringify(results, null, 2)}\n`);
  } finally {
    await cluster?.destroy().catch(() => undefined);
    await disk.unmount().catch(() => undefined);
    await rm(root, { recursive: true, force: true }).catch(() => undefined);
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`tier-cache: ${String(error instanceof Error ? error.stack : error)}\n`);
  process.exit(1);
});
