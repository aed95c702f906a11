// Per-volume I/O of one NBD server, for dashboards and `shoal top`: requests, bytes and the time
// requests took, per volume it serves, kept as running totals (plain numbers: the hot path adds to
// fields, never to prom-client objects) and exported at scrape time with a `volume` label.
//
// Bounded: a volume has an entry while a connection serves it (connections of one volume share
// it), and for `retainMs` after its last one closed, so that a scrape still sees the I/O of a
// short-lived client (qemu-img, a backup) and a guest that reconnects keeps its totals. Entries
// no connection holds are at most `idleEntriesMax`, the oldest dropped first; a volume that comes
// back after its entry went starts from zero, which rate() takes as a counter reset.

import { Counter, type Registry } from 'prom-client';
import { assert } from '../util/assert.ts';
import { systemMonotonicClock, type MonotonicClock } from '../util/clock.ts';

/** How long a volume's totals stay after its last connection closed: a few scrape intervals. */
export const VOLUME_STATS_RETAIN_MS = 5 * 60_000;
/** Entries kept for volumes no connection serves now. */
export const VOLUME_STATS_IDLE_ENTRIES_MAX = 1_024;

export interface VolumeIo {
  readonly volume: string;
  readOps: number;
  writeOps: number;
  /** FLUSH, TRIM, WRITE_ZEROES, BLOCK_STATUS. */
  otherOps: number;
  readBytes: number;
  writtenBytes: number;
  readSeconds: number;
  writeSeconds: number;
  /** Requests answered with an error. */
  errors: number;
  /** Connections serving the volume. */
  connections: number;
  /** When the last connection closed (monotonic ms), while none is open. */
  idleSinceMs: number;
}

export class VolumeIoStats {
  private readonly byVolume = new Map<string, VolumeIo>();
  private readonly clock: MonotonicClock;
  private readonly retainMs: number;
  private readonly idleEntriesMax: number;

  constructor(clock: MonotonicClock = systemMonotonicClock, retainMs = VOLUME_STATS_RETAIN_MS, idleEntriesMax = VOLUME_STATS_IDLE_ENTRIES_MAX) {
    this.clock = clock;
    this.retainMs = retainMs;
    this.idleEntriesMax = idleEntriesMax;
  }

  /** The entry of a volume a connection starts serving; give it back with `release`. */
  acquire(volume: string): VolumeIo {
    let entry = this.byVolume.get(volume);
    if (entry === undefined) {
      entry = {
        volume, readOps: 0, writeOps: 0, otherOps: 0, readBytes: 0, writtenBytes: 0, readSeconds: 0, writeSeconds: 0, errors: 0,
        connections: 0, idleSinceMs: 0,
      };
      this.byVolume.set(volume, entry);
    }
    entry.connections += 1;
    return entry;
  }

  release(entry: VolumeIo): void {
    assert(entry.connections > 0 && this.byVolume.get(entry.volume) === entry, 'a volume entry is released once per acquire');
    entry.connections -= 1;
    if (entry.connections > 0) return;
    entry.idleSinceMs = this.clock.monotonicMs();
    this.prune();
  }

  /** The volumes served now or lately. */
  entries(): VolumeIo[] {
    this.prune();
    return [...this.byVolume.values()];
  }

  /** Drops idle entries past their time, then the oldest idle ones over the bound. */
  private prune(): void {
    const nowMs = this.clock.monotonicMs();
    const idle: VolumeIo[] = [];
    for (const entry of this.byVolume.values()) {
      if (entry.connections > 0) continue;
      if (nowMs - entry.idleSinceMs >= this.retainMs) this.byVolume.delete(entry.volume);
      else idle.push(entry);
    }
    if (idle.length <= this.idleEntriesMax) return;
    idle.sort((a, b) => a.idleSinceMs - b.idleSinceMs);
    for (const entry of idle.slice(0, idle.length - this.idleEntriesMax)) this.byVolume.delete(entry.volume);
  }
}

const cache = new WeakMap<Registry, VolumeIoStats>();

/** The registry's per-volume statistics, with their series registered on first use. */
export function volumeIoStats(registry: Registry): VolumeIoStats {
  const known = cache.get(registry);
  if (known !== undefined) return known;
  const stats = new VolumeIoStats();
  cache.set(registry, stats);
  const registers = [registry];
  const fromEntries = (name: string, help: string, labelNames: string[], fill: (counter: Counter, entry: VolumeIo) => void): Counter =>
    new Counter({
      name, help, labelNames, registers,
      collect() {
        this.reset();
        for (const entry of stats.entries()) fill(this, entry);
      },
    });
  fromEntries('shoal_nbd_volume_requests_total', 'Requests per volume served here, by op (read, write, other: flush, trim, zero, block status)',
    ['volume', 'op'], (counter, entry) => {
      counter.inc({ volume: entry.volume, op: 'read' }, entry.readOps);
      counter.inc({ volume: entry.volume, op: 'write' }, entry.writeOps);
      counter.inc({ volume: entry.volume, op: 'other' }, entry.otherOps);
    });
  fromEntries('shoal_nbd_volume_bytes_total', 'Bytes read and written per volume served here', ['volume', 'direction'], (counter, entry) => {
    counter.inc({ volume: entry.volume, direction: 'read' }, entry.readBytes);
    counter.inc({ volume: entry.volume, direction: 'write' }, entry.writtenBytes);
  });
  fromEntries('shoal_nbd_volume_request_seconds_total',
    'Time reads and writes of each volume took, request to reply (divided by its requests: the mean latency)', ['volume', 'op'], (counter, entry) => {
      counter.inc({ volume: entry.volume, op: 'read' }, entry.readSeconds);
      counter.inc({ volume: entry.volume, op: 'write' }, entry.writeSeconds);
    });
  fromEntries('shoal_nbd_volume_errors_total', 'Requests per volume answered with an error', ['volume'], (counter, entry) => {
    counter.inc({ volume: entry.volume }, entry.errors);
  });
  return stats;
}
