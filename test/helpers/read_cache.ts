// What the read-cache tests drive through an NBD export: fio's zipf(1.1) random reads with the
// cache's hit ratio meanwhile, and every 64 KiB block read back against a pattern.

import type { Test } from 'tap';
import { run, runOk } from './run.ts';

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
