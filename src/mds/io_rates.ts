// I/O rates from running totals (pure, explicit time): chunk servers send their totals with each
// heartbeat, NBD servers theirs per volume every few seconds; the rate of a source is the change
// between its last two reports over the time between them. Totals that went down mean the
// reporting process restarted: that interval counts from zero.
//
// Bounded: at most `sourcesMax` sources (the oldest-reported dropped first), and a source not
// heard from for `staleAfterMs` is forgotten, so a stopped NBD server's volumes leave `shoal top`.
// Nothing here is durable: rates are for watching, and a restarted MDS has them back within two
// reports.

import type { IoRates, IoTotals } from '../protocol/api.ts';

/** A source silent this long is forgotten. */
export const IO_SOURCE_STALE_MS = 15_000;
/** Sources kept: chunk servers plus (NBD server, volume) pairs. */
export const IO_SOURCES_MAX = 65_536;

const ZERO_RATES: IoRates = Object.freeze({ readIops: 0, writeIops: 0, readBytesPerSecond: 0, writeBytesPerSecond: 0, readLatencyMs: 0, writeLatencyMs: 0 });

interface Sample {
  readonly totals: IoTotals;
  readonly atMs: number;
}

interface Source<K> {
  readonly key: K;
  last: Sample;
  rates: IoRates;
}

export class IoRateTable<K> {
  private readonly sources = new Map<string, Source<K>>();
  private readonly staleAfterMs: number;
  private readonly sourcesMax: number;

  constructor(staleAfterMs = IO_SOURCE_STALE_MS, sourcesMax = IO_SOURCES_MAX) {
    this.staleAfterMs = staleAfterMs;
    this.sourcesMax = sourcesMax;
  }

  /** Records a source's totals; `id` tells sources apart, `key` is what they are reported as. */
  record(id: string, key: K, totals: IoTotals, nowMs: number): void {
    const source = this.sources.get(id);
    if (source === undefined) {
      if (this.sources.size >= this.sourcesMax) this.dropOldest();
      this.sources.set(id, { key, last: { totals, atMs: nowMs }, rates: ZERO_RATES });
      return;
    }
    const elapsedMs = nowMs - source.last.atMs;
    if (elapsedMs <= 0) return;
    source.rates = ratesBetween(source.last.totals, totals, elapsedMs);
    source.last = { totals, atMs: nowMs };
    // Re-inserted: the map stays in order of the last report, oldest first.
    this.sources.delete(id);
    this.sources.set(id, source);
  }

  /** Every source heard from lately, with its rates over its last interval. */
  current(nowMs: number): Array<{ key: K; rates: IoRates }> {
    const result: Array<{ key: K; rates: IoRates }> = [];
    for (const [id, source] of this.sources) {
      if (nowMs - source.last.atMs > this.staleAfterMs) this.sources.delete(id);
      else result.push({ key: source.key, rates: source.rates });
    }
    return result;
  }

  private dropOldest(): void {
    const oldest = this.sources.keys().next();
    if (oldest.done !== true) this.sources.delete(oldest.value);
  }
}

export function ratesBetween(before: IoTotals, after: IoTotals, elapsedMs: number): IoRates {
  // A restart of the reporter starts its totals over: count that interval from zero.
  const restarted = after.readOps < before.readOps || after.writeOps < before.writeOps ||
    after.readBytes < before.readBytes || after.writtenBytes < before.writtenBytes;
  const base = restarted ? { readOps: 0, writeOps: 0, readBytes: 0, writtenBytes: 0, readSeconds: 0, writeSeconds: 0 } : before;
  const seconds = elapsedMs / 1000;
  const readOps = after.readOps - base.readOps;
  const writeOps = after.writeOps - base.writeOps;
  return {
    readIops: readOps / seconds,
    writeIops: writeOps / seconds,
    readBytesPerSecond: (after.readBytes - base.readBytes) / seconds,
    writeBytesPerSecond: (after.writtenBytes - base.writtenBytes) / seconds,
    readLatencyMs: readOps > 0 ? (Math.max(0, after.readSeconds - base.readSeconds) / readOps) * 1000 : 0,
    writeLatencyMs: writeOps > 0 ? (Math.max(0, after.writeSeconds - base.writeSeconds) / writeOps) * 1000 : 0,
  };
}

/** Sums the rates of one volume served by several NBD servers; its latency is the requests' mean. */
export function sumRates(all: readonly IoRates[]): IoRates {
  let readIops = 0;
  let writeIops = 0;
  let readBytesPerSecond = 0;
  let writeBytesPerSecond = 0;
  let readMsTimesOps = 0;
  let writeMsTimesOps = 0;
  for (const rates of all) {
    readIops += rates.readIops;
    writeIops += rates.writeIops;
    readBytesPerSecond += rates.readBytesPerSecond;
    writeBytesPerSecond += rates.writeBytesPerSecond;
    readMsTimesOps += rates.readLatencyMs * rates.readIops;
    writeMsTimesOps += rates.writeLatencyMs * rates.writeIops;
  }
  return {
    readIops, writeIops, readBytesPerSecond, writeBytesPerSecond,
    readLatencyMs: readIops > 0 ? readMsTimesOps / readIops : 0,
    writeLatencyMs: writeIops > 0 ? writeMsTimesOps / writeIops : 0,
  };
}
