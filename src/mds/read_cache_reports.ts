// What the hypervisors' read caches report (pure, explicit time): each NBD server with a cache
// sends its running totals with its I/O report every couple of seconds; the stat shows each
// cache's size, fill and hit ratio over its last interval. Bounded (CACHES_MAX hypervisors, the
// oldest forgotten first); a cache silent for IO_SOURCE_STALE_MS is dropped. Not durable.

import type { ReadCacheInfo, ReadCacheTotals } from '../protocol/api.ts';
import { IO_SOURCE_STALE_MS } from './io_rates.ts';

const CACHES_MAX = 4_096;

interface Report {
  readonly totals: ReadCacheTotals;
  readonly atMs: number;
  readonly previous: ReadCacheTotals | null;
}

export class ReadCacheReports {
  private readonly reports = new Map<string, Report>();

  record(hypervisor: string, totals: ReadCacheTotals, nowMs: number): void {
    const last = this.reports.get(hypervisor);
    // Totals that went down: the NBD server restarted; its interval counts from zero.
    const previous = last === undefined || totals.hits < last.totals.hits || totals.misses < last.totals.misses ? null : last.totals;
    this.reports.delete(hypervisor);
    if (this.reports.size >= CACHES_MAX) {
      const oldest = this.reports.keys().next();
      if (oldest.done !== true) this.reports.delete(oldest.value);
    }
    this.reports.set(hypervisor, { totals, atMs: nowMs, previous });
  }

  current(nowMs: number): ReadCacheInfo[] {
    const result: ReadCacheInfo[] = [];
    for (const [hypervisor, report] of this.reports) {
      if (nowMs - report.atMs > IO_SOURCE_STALE_MS) {
        this.reports.delete(hypervisor);
        continue;
      }
      const { totals, previous } = report;
      const hits = totals.hits - (previous?.hits ?? 0);
      const lookups = hits + totals.misses - (previous?.misses ?? 0);
      result.push({ hypervisor, ...totals, hitRatio: lookups === 0 ? null : hits / lookups });
    }
    return result.sort((a, b) => a.hypervisor.localeCompare(b.hypervisor));
  }
}
