// Sends the MDS this NBD server's per-volume totals (volume_stats.ts) every few seconds, so that
// the MDS can show each volume's rates across all its NBD servers (`shoal top`, GET /v1/io). A
// report that fails is not retried: the next one carries the newer totals. Failures are logged
// when they start and when they end, not on every tick.

import { HOT_CHUNKS_REPORTED_MAX, type IoReportBody } from '../protocol/api.ts';
import type { ReadCache } from '../cache/read_cache.ts';
import type { MdsClient } from '../protocol/mds_client.ts';
import { IO_REPORT_VOLUMES_MAX } from '../limits.ts';
import type { Timers } from '../util/clock.ts';
import type { Logger } from '../util/log.ts';
import type { VolumeIoStats } from './volume_stats.ts';

/** How often the totals go to the MDS: rates in `shoal top` are over this interval. */
export const IO_REPORT_INTERVAL_MS = 2_000;

function hot(chunks: readonly number[]): { hotChunks?: number[] } {
  return chunks.length === 0 ? {} : { hotChunks: chunks.slice(0, HOT_CHUNKS_REPORTED_MAX) };
}

export class IoReporter {
  private readonly stats: VolumeIoStats;
  private readonly mds: Pick<MdsClient, 'ioReport'>;
  private readonly log: Logger;
  private readonly timers: Timers;
  private readonly intervalMs: number;
  private cancel: (() => void) | null = null;
  private failing = false;
  private stopped = false;

  private readonly onAvoid: (csIds: readonly number[]) => void;
  private readonly readCache: ReadCache | undefined;
  private readonly hotChunks: (volume: string) => number[];

  constructor(options: {
    stats: VolumeIoStats; mds: Pick<MdsClient, 'ioReport'>; log: Logger; timers: Timers; intervalMs?: number;
    /** The MDS's answer: chunk servers with ill disks, to read from last (see sick_disks.ts). */
    onAvoid?: (csIds: readonly number[]) => void;
    /** Its totals go with each report (the stat shows them). */
    readCache?: ReadCache;
    /** A volume's hottest chunks since the last report (Volume.takeHotChunks), or none when it is not open for write here. */
    hotChunks?: (volume: string) => number[];
  }) {
    this.hotChunks = options.hotChunks ?? (() => []);
    this.readCache = options.readCache;
    this.onAvoid = options.onAvoid ?? (() => undefined);
    this.stats = options.stats;
    this.mds = options.mds;
    this.log = options.log;
    this.timers = options.timers;
    this.intervalMs = options.intervalMs ?? IO_REPORT_INTERVAL_MS;
  }

  start(): void {
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    this.cancel?.();
  }

  /** The report as sent: every volume served now or lately, at most IO_REPORT_VOLUMES_MAX. */
  body(): IoReportBody {
    const volumes = this.stats.entries().slice(0, IO_REPORT_VOLUMES_MAX).map((entry) => ({
      name: entry.volume,
      readOps: entry.readOps,
      writeOps: entry.writeOps,
      readBytes: entry.readBytes,
      writtenBytes: entry.writtenBytes,
      readSeconds: entry.readSeconds,
      writeSeconds: entry.writeSeconds,
      ...hot(this.hotChunks(entry.volume)),
    }));
    const cache = this.readCache;
    return cache === undefined ? { volumes } : { volumes, readCache: cache.totals() };
  }

  private schedule(): void {
    if (this.stopped) return;
    this.cancel = this.timers.background(this.intervalMs, () => {
      const body = this.body();
      const sent = body.volumes.length === 0 && body.readCache === undefined ? Promise.resolve() : this.mds.ioReport(body).then((reply) => this.onAvoid(reply.avoidCsIds ?? []));
      sent.then(() => {
        if (this.failing) this.log.info('I/O reports reach the MDS again');
        this.failing = false;
      }, (error: unknown) => {
        if (!this.failing) this.log.warn('could not send I/O statistics to the MDS; retrying every interval', { error });
        this.failing = true;
      }).finally(() => this.schedule());
    });
  }
}
