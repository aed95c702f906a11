// Read caches (src/cache/read_cache.ts) from outside, as the tests and benches drive them: the
// arguments that give an NBD server one, its counters from one scrape of /metrics, damage done to a
// slot file the way a failing SSD would (bytes overwritten under the running server, or while it is
// stopped), fio's zipf(1.1) random reads with the hit ratio meanwhile, and every 64 KiB block read
// back against a pattern.

import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { Test } from 'tap';
import { READ_CACHE_FILE } from '../../src/cache/read_cache.ts';
import { metricsText, sampleOf } from './metrics.ts';
import { run, runOk } from './run.ts';

export interface ReadCacheCounters {
  readonly hits: number;
  readonly misses: number;
  readonly admissions: number;
  readonly evictions: number;
  readonly invalidations: number;
  /** Blocks whose checksum failed (shoal_client_read_cache_corrupt_blocks_total). */
  readonly corrupt: number;
  /** Bytes of the cache holding blocks now. */
  readonly used: number;
}

/** `shoal run nbd` arguments for a read cache of `sizeBytes` in `dir`. */
export function readCacheArgs(dir: string, sizeBytes: number): string[] {
  return ['--cache-dir', dir, '--cache-size', String(sizeBytes)];
}

/** The cache's counters, from one scrape of the NBD server's /metrics. */
export async function readCacheCounters(metricsPort: number): Promise<ReadCacheCounters> {
  const text = await metricsText(metricsPort);
  const counter = (what: string): number => sampleOf(text, `shoal_client_read_cache_${what}_total`);
  return {
    hits: counter('hits'),
    misses: counter('misses'),
    admissions: counter('admissions'),
    evictions: counter('evictions'),
    invalidations: counter('invalidations'),
    corrupt: counter('corrupt_blocks'),
    used: sampleOf(text, 'shoal_client_read_cache_bytes', '{kind="used"}'),
  };
}

/** Overwrites ranges of the cache's slot file in `cacheDir` (each `data` at `offsetBytes`). */
export async function damageCacheFile(cacheDir: string, ranges: Iterable<{ readonly offsetBytes: number; readonly data: Buffer }>): Promise<void> {
  const file = await open(join(cacheDir, READ_CACHE_FILE), 'r+');
  try {
    for (const range of ranges) await file.write(range.data, 0, range.data.length, range.offsetBytes);
  } finally {
    await file.close();
  }
}

/** fio's arguments for 4 KiB zipf(1.1) random reads of the first `sizeBytes` of `uri` for `seconds`. */
export function zipfReadArgs(uri: string, sizeBytes: number, seconds: number): string[] {
  return [
    '--name=zipf', '--ioengine=nbd', `--uri=${uri}`, '--rw=randread', '--bs=4k', '--iodepth=8', `--size=${sizeBytes}`,
    '--random_distribution=zipf:1.1', '--norandommap', '--time_based', `--runtime=${seconds}`, '--output-format=json',
  ];
}

/** Runs zipfReadArgs's reads; the hit ratio of the caches `counters` sums meanwhile. */
export async function zipfHitRatio(
  t: Test, uri: string, sizeBytes: number, seconds: number, counters: () => Promise<{ hits: number; misses: number }>,
): Promise<number> {
  const before = await counters();
  const result = await run('fio', zipfReadArgs(uri, sizeBytes, seconds), { timeoutMs: (seconds + 60) * 1000 });
  t.equal(result.code, 0, `fio exits 0\n${result.stderr}`);
  const after = await counters();
  const lookups = after.hits + after.misses - before.hits - before.misses;
  t.ok(lookups > 1000, `${lookups} cache lookups`);
  return (after.hits - before.hits) / lookups;
}

/**
 * Reads every 64 KiB block of the first `sizeBytes` of `uri`, each checked against `pattern`:
 * block-sized reads are what a cache answers (a large read of blocks not all cached is read whole
 * from where they come from).
 */
export async function verifyBlocks(uri: string, sizeBytes: number, pattern: number): Promise<void> {
  const commands = Array.from({ length: sizeBytes / (64 * 1024) }, (_, i) => ['-c', `read -P 0x${pattern.toString(16)} ${i * 64 * 1024} 64k`]).flat();
  await runOk('qemu-io', ['-f', 'raw', ...commands, uri], { timeoutMs: 120_000 });
}
