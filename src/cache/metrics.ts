// A read cache's counters and size (read_cache.ts) for Prometheus, read at scrape time: the NBD
// server's as shoal_client_read_cache_*, a chunk server's as shoal_cs_read_cache_*.

import { Gauge, type Registry } from 'prom-client';
import { counterFromTotal } from '../util/metrics.ts';
import type { ReadCache, ReadCacheStats } from './read_cache.ts';

export interface ReadCacheMetricNames {
  /** `shoal_client` or `shoal_cs`: the series are <prefix>_read_cache_*. */
  readonly prefix: string;
  /** Where a miss is read from, for the help texts: "the chunk servers", "the disk". */
  readonly source: string;
  /** Which changes drop cached blocks, for the help text. */
  readonly changes: string;
}

export function registerReadCacheMetrics(registry: Registry, cache: ReadCache, names: ReadCacheMetricNames): void {
  const registers = [registry];
  const { prefix, source } = names;
  const totals: Array<[string, string, (stats: ReadCacheStats) => number]> = [
    ['hits_total', 'Blocks read from the local read cache (checksum checked)', (s) => s.hits],
    ['misses_total', `Blocks looked up in the read cache and read from ${source} instead`, (s) => s.misses],
    ['admissions_total', 'Blocks taken into the read cache', (s) => s.admissions],
    ['evictions_total', 'Blocks evicted from the full read cache for others', (s) => s.evictions],
    ['invalidations_total', `Cached blocks dropped by ${names.changes}`, (s) => s.invalidations],
    ['corrupt_blocks_total', `Cached blocks that failed their checksum (dropped, read from ${source})`, (s) => s.corrupt],
  ];
  for (const [name, help, read] of totals) counterFromTotal(registers, `${prefix}_read_cache_${name}`, help, () => read(cache.stats));
  new Gauge({
    name: `${prefix}_read_cache_bytes`,
    help: 'The read cache\'s size and what it holds',
    labelNames: ['kind'] as const,
    registers,
    collect() {
      this.set({ kind: 'capacity' }, cache.capacityBytes);
      this.set({ kind: 'used' }, cache.usedBytes);
    },
  });
}
