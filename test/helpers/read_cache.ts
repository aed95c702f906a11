// The NBD server's read cache (src/client/read_cache.ts) from outside: the arguments that give a
// server one, its counters from one scrape of /metrics, and damage done to its slot file the way
// a failing SSD would (bytes overwritten under the running server, or while it is stopped).

import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { READ_CACHE_FILE } from '../../src/client/read_cache.ts';
import { metricsText, sampleOf } from './metrics.ts';

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
