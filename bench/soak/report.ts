// The soak's report (pure): the verdict, the summary tables and the progress line.

import type { Problem, ProbeTally, Tally } from './workload.ts';

export interface CacheFigures {
  hits: number;
  misses: number;
  admissions: number;
  evictions: number;
  invalidations: number;
  /** shoal_client_read_cache_corrupt_blocks_total, summed over the server's runs. */
  corrupt: number;
  /** Times the server was killed and started again. */
  restarts: number;
}

export interface EventRecord {
  readonly name: string;
  /** Reads checked when it began. */
  readonly atReads: number;
  /** Seconds into the workload when it began. */
  readonly atSeconds: number;
  readonly tookMs: number;
  readonly note: string;
}

export interface SoakReport {
  readonly settings: Readonly<Record<string, string | number>>;
  readonly readsWanted: number;
  readonly seconds: number;
  readonly timedOut: boolean;
  readonly total: Tally;
  readonly byServer: Readonly<Record<string, Tally>>;
  readonly probes: Readonly<Record<string, ProbeTally>>;
  readonly caches: Readonly<Record<string, CacheFigures>>;
  readonly events: readonly EventRecord[];
  /** Events the run ended before. */
  readonly skipped: readonly string[];
  readonly failuresByPhase: Readonly<Record<string, number>>;
  readonly unexpectedDisconnects: number;
  readonly problems: readonly Problem[];
}

/** 0: every read fresh and right and the run complete; 1: stale or wrong bytes, or a fenced write acknowledged; 2: incomplete. */
export function verdict(report: SoakReport): { code: 0 | 1 | 2; text: string } {
  const fencedAcknowledged = Object.values(report.probes).reduce((sum, probe) => sum + probe.fencedWritesAcknowledged, 0);
  const { total } = report;
  if (total.stale > 0 || total.wrong > 0 || fencedAcknowledged > 0) {
    return {
      code: 1,
      text: `FAIL: ${total.staleReads} stale reads (${total.stale} sectors), ${total.wrongReads} wrong reads (${total.wrong} sectors), ` +
        `${fencedAcknowledged} writes acknowledged by a fenced server`,
    };
  }
  if (report.timedOut || total.reads < report.readsWanted || report.skipped.length > 0) {
    return {
      code: 2,
      text: `INCOMPLETE: ${total.reads} of ${report.readsWanted} reads, ${report.skipped.length} events not reached${report.timedOut ? ' (time limit)' : ''}`,
    };
  }
  return { code: 0, text: `PASS: ${total.reads} reads (${total.sectors} sectors) checked, 0 stale, 0 wrong` };
}

export function hitRatio(cache: CacheFigures): number | null {
  const lookups = cache.hits + cache.misses;
  return lookups === 0 ? null : cache.hits / lookups;
}

/** Bad sectors listed in the report (the JSON has every one the workload kept). */
const PROBLEMS_SHOWN = 20;

const count = (value: number): string => value.toLocaleString('en-US');
const percent = (value: number | null): string => (value === null ? '-' : `${(value * 100).toFixed(1)} %`);

export function formatReport(report: SoakReport): string {
  const lines: string[] = [];
  const settings = Object.entries(report.settings).map(([key, value]) => `${key} ${value}`).join(', ');
  lines.push(`read-cache soak: ${count(report.total.reads)} reads checked in ${report.seconds.toFixed(0)} s ` +
    `(${count(Math.round(report.total.reads / Math.max(report.seconds, 1e-9)))} reads/s)`);
  lines.push(settings, '');

  const servers = Object.keys(report.byServer).sort();
  const probes = Object.keys(report.probes).sort();
  const header = ['', 'all', ...servers, ...probes.map((server) => `${server} fenced (probe)`)];
  const tallies: Array<Tally | ProbeTally> = [report.total, ...servers.map((server) => report.byServer[server] as Tally), ...probes.map((server) => report.probes[server] as ProbeTally)];
  const row = (label: string, cell: (tally: Tally | ProbeTally, column: number) => string): string =>
    `| ${label} | ${tallies.map((tally, column) => cell(tally, column)).join(' | ')} |`;
  const caches = (column: number): CacheFigures | undefined => (column >= 1 && column <= servers.length ? report.caches[servers[column - 1] ?? ''] : undefined);
  const cacheCell = (pick: (cache: CacheFigures) => string) => (_: Tally, column: number): string => {
    if (column === 0) {
      const all = Object.values(report.caches);
      if (all.length === 0) return '-';
      const summed: CacheFigures = { hits: 0, misses: 0, admissions: 0, evictions: 0, invalidations: 0, corrupt: 0, restarts: 0 };
      for (const cache of all) for (const key of Object.keys(summed) as Array<keyof CacheFigures>) summed[key] += cache[key];
      return pick(summed);
    }
    const cache = caches(column);
    return cache === undefined ? '-' : pick(cache);
  };
  lines.push(`| ${header.join(' | ')} |`, `|---|${header.slice(1).map(() => '---:').join('|')}|`);
  lines.push(row('reads checked', (tally) => count(tally.reads)));
  lines.push(row('4 KiB sectors checked', (tally) => count(tally.sectors)));
  lines.push(row('**stale** reads (sectors)', (tally) => `${count(tally.staleReads)} (${count(tally.stale)})`));
  lines.push(row('**wrong** reads (sectors)', (tally) => `${count(tally.wrongReads)} (${count(tally.wrong)})`));
  lines.push(row('sectors newer than committed at send (a write in flight)', (tally) => count(tally.ahead)));
  lines.push(row('failed reads', (tally) => count(tally.failedReads)));
  lines.push(row('writes acknowledged', (tally) => count(tally.writes)));
  lines.push(row('failed writes', (tally) => count(tally.failedWrites)));
  lines.push(row('fenced writes refused / **acknowledged**', (tally) =>
    ('fencedWritesRefused' in tally ? `${count(tally.fencedWritesRefused)} / ${count(tally.fencedWritesAcknowledged)}` : '-')));
  lines.push(row('cache hits (64 KiB blocks)', cacheCell((cache) => count(cache.hits))));
  lines.push(row('cache misses', cacheCell((cache) => count(cache.misses))));
  lines.push(row('hit ratio', cacheCell((cache) => percent(hitRatio(cache)))));
  lines.push(row('corrupt blocks detected', cacheCell((cache) => count(cache.corrupt))));
  lines.push(row('admissions / evictions', cacheCell((cache) => `${count(cache.admissions)} / ${count(cache.evictions)}`)));
  lines.push(row('invalidations', cacheCell((cache) => count(cache.invalidations))));
  lines.push(row('restarts (kill -9)', cacheCell((cache) => count(cache.restarts))));
  lines.push('');

  lines.push('| # | at read | at s | event | took | what happened |', '|---:|---:|---:|---|---:|---|');
  for (const [index, event] of report.events.entries()) {
    lines.push(`| ${index + 1} | ${count(event.atReads)} | ${event.atSeconds.toFixed(0)} | ${event.name} | ${(event.tookMs / 1000).toFixed(1)} s | ${event.note} |`);
  }
  for (const name of report.skipped) lines.push(`| - | - | - | ${name} | - | not reached |`);
  lines.push('');
  const failures = Object.entries(report.failuresByPhase);
  lines.push(`failed I/O by phase: ${failures.length === 0 ? 'none' : failures.map(([phase, n]) => `${phase}: ${count(n)}`).join('; ')}` +
    `; connections lost outside a fault: ${report.unexpectedDisconnects}`);
  if (report.problems.length > 0) {
    const shown = report.problems.slice(0, PROBLEMS_SHOWN);
    lines.push('', `first ${shown.length} bad sectors (of ${report.total.stale + report.total.wrong}; --json has ${report.problems.length}):`, '| at s | phase | server | read | sector | kind | found | committed at send | newest issued |', '|---:|---|---|---|---:|---|---:|---:|---:|');
    for (const problem of shown) {
      lines.push(`| ${(problem.atMs / 1000).toFixed(1)} | ${problem.phase} | ${problem.server} | ${problem.readOffsetBytes}+${problem.readLengthBytes} | ${problem.sector} | ` +
        `${problem.kind} | ${problem.found ?? '-'} | ${problem.floor} | ${problem.newest} |`);
    }
  }
  lines.push('', verdict(report).text);
  return `${lines.join('\n')}\n`;
}

/** One progress line. */
export function formatProgress(seconds: number, reads: number, readsWanted: number, readsPerSecond: number, server: string, total: Tally,
  caches: Readonly<Record<string, CacheFigures>>, phase: string): string {
  const cacheText = Object.entries(caches).map(([name, cache]) => `${name} ${percent(hitRatio(cache))} hits, ${cache.corrupt} corrupt`).join('; ');
  return `[${seconds.toFixed(0).padStart(5)} s] ${count(reads)}/${count(readsWanted)} reads (${count(Math.round(readsPerSecond))}/s) on ${server}` +
    ` | stale ${total.stale} wrong ${total.wrong} failed ${total.failedReads + total.failedWrites} | ${cacheText}${phase === 'steady' ? '' : ` | ${phase}`}`;
}
