// What the read caches report (pure, explicit time): each NBD server with a cache sends its
// running totals with its I/O report every couple of seconds, each chunk server with one in its
// heartbeats; the stat shows each cache's size, fill and hit ratio over its last interval.
// Bounded (CACHES_MAX sources, the oldest forgotten first); a cache silent for IO_SOURCE_STALE_MS
// is dropped. Not durable.

import type { ReadCacheTotals } from '../protocol/api.ts';
import { IO_SOURCE_STALE_MS } from './io_rates.ts';

const CACHES_MAX = 4_096;

interface Report {
  readonly totals: ReadCacheTotals;
  readonly atMs: number;
  readonly previous: ReadCacheTotals | null;
}

/** One cache as the stat shows it: its source (a hypervisor's name, a chunk server's id), totals and recent hit ratio. */
export interface ReadCacheReport<Source> {
  readonly source: Source;
  readonly totals: ReadCacheTotals;
  readonly hitRatio: number | null;
}

export class ReadCacheReports<Source extends string | number> {
  private readonly reports = new Map<Source, Report>();

  record(source: Source, totals: ReadCacheTotals, nowMs: number): void {
    const last = this.reports.get(source);
    // Totals that went down: the process restarted; its interval counts from zero.
    const previous = last === undefined || totals.hits < last.totals.hits || totals.misses < last.totals.misses ? null : last.totals;
    this.reports.delete(source);
    if (this.reports.size >= CACHES_MAX) {
      const oldest = this.reports.keys().next();
      if (oldest.done !== true) this.reports.delete(oldest.value);
    }
    this.reports.set(source, { totals, atMs: nowMs, previous });
  }

  /** The caches heard from lately, by source. */
  current(nowMs: number): Array<ReadCacheReport<Source>> {
    const result: Array<ReadCacheReport<Source>> = [];
    for (const [source, report] of this.reports) {
      if (nowMs - report.atMs > IO_SOURCE_STALE_MS) {
        this.reports.delete(source);
        continue;
      }
      const { totals, previous } = report;
      const hits = totals.hits - (previous?.hits ?? 0);
      const lookups = hits + totals.misses - (previous?.misses ?? 0);
      result.push({ source, totals, hitRatio: lookups === 0 ? null : hits / lookups });
    }
    return result.sort((a, b) => (a.source < b.source ? -1 : a.source > b.source ? 1 : 0));
  }
}
