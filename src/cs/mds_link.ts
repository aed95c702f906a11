// The chunk server's link to the MDS: registers (retrying until the MDS answers), loads every
// volume's fence epoch from the registration, then sends a heartbeat with space and health every
// interval. The server keeps serving reads while the MDS is away, but it takes writes only while
// the link is fresh: a server cut off from the MDS longer than the heartbeat timeout may have
// missed a fence (a forced takeover of a volume), so it stops writing until it registers again.
//
// The fresh window starts when the request that the MDS answered was SENT, not when its reply
// came back: the MDS counted this server alive from the moment it received the request, and a
// reply delayed on the way (a congested link, a paused process) must not stretch the window past
// what the MDS believes, or a server the MDS already left out of a fence would take the fenced
// writer's writes. The window is measured on a monotonic clock, which a wall-clock step cannot
// stretch either.

import { StorageError, isStorageError } from '../errors.ts';
import type { IoTotals, ReadCacheTotals, RegisterChunkServerBody } from '../protocol/api.ts';
import type { MdsClient } from '../protocol/mds_client.ts';
import type { MonotonicClock } from '../util/clock.ts';
import type { Logger } from '../util/log.ts';
import type { ChunkStore } from './store/chunk_store.ts';
import type { DiskUsage } from './disk_usage.ts';
import type { SpaceReport } from './metrics.ts';

const RETRY_MS_MIN = 250;
const RETRY_MS_MAX = 2_000;

export interface MdsLinkOptions {
  readonly mds: MdsClient;
  readonly store: ChunkStore;
  readonly registration: Omit<RegisterChunkServerBody, 'capacityBytes' | 'freeBytes' | 'usedBytes' | 'chunkCount' | 'healthy' | 'lastError'>;
  readonly log: Logger;
  /** Measures the fresh window; monotonic, so that a wall-clock step cannot stretch it. */
  readonly clock: MonotonicClock;
  readonly usage: DiskUsage;
  /**
   * Checks the MDS's cluster id against the one this directory joined (recording it on the first
   * registration); throws ERR_CONFIG when they differ, so the server never joins another cluster,
   * which would take its replicas for orphans and delete them.
   */
  readonly adoptCluster: (clusterId: string) => Promise<void>;
  /** The cluster this directory joined, sent with each registration so the MDS can refuse. */
  readonly clusterId: () => string | undefined;
  /** Lost reports of writes a primary could not complete on every member (see partial_writes.ts). */
  readonly partialWrites: { takeLost(): boolean };
  /** Revocations the MDS made while this server was away: applied before writes are taken. */
  readonly revoke: (hypervisorId: number, issuedBeforeMs: number) => void;
  /** Requests served since start, sent with each heartbeat (the MDS makes rates of them). */
  readonly ioTotals?: () => IoTotals;
  /** The read cache's totals, if the server has one, sent with each heartbeat (`shoal stat`). */
  readonly readCacheTotals?: () => ReadCacheTotals;
}

export class MdsLink {
  private readonly options: MdsLinkOptions;
  private csId: number | null = null;
  private heartbeatIntervalMs = 1_000;
  private heartbeatTimeoutMs = 5_000;
  /**
   * When the last request the MDS answered was sent (monotonic): fences are known to be current
   * until this plus the heartbeat timeout.
   */
  private lastContactMs: number | null = null;
  private stopped = false;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> = Promise.resolve();
  private retryDelayMs = RETRY_MS_MIN;
  /**
   * The MDS must compare this server's chunks with their other members: set after an unclean stop
   * (a crash may have cut a forwarded write half-way) and after a lost partial-write report;
   * cleared once the MDS has acknowledged it.
   */
  private divergencePossible: boolean;
  lastSpace: SpaceReport | null = null;

  constructor(options: MdsLinkOptions) {
    this.options = options;
    this.divergencePossible = !options.store.previousStopClean;
  }

  get registeredId(): number | null {
    return this.csId;
  }

  /** Null while writes may be taken; otherwise why not (retryable: ERR_UNAVAILABLE). */
  writeBlocker(): StorageError | null {
    if (this.csId === null || this.lastContactMs === null) {
      return new StorageError('ERR_UNAVAILABLE', 'chunk server has not registered with the MDS yet: it takes no writes');
    }
    const silentMs = Math.round(this.options.clock.monotonicMs() - this.lastContactMs);
    if (silentMs > this.heartbeatTimeoutMs) {
      return new StorageError('ERR_UNAVAILABLE', `chunk server lost the MDS ${silentMs} ms ago: it takes no writes until it is back`);
    }
    return null;
  }

  start(): void {
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    await this.running;
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.beat().then((nextMs) => this.schedule(nextMs));
    }, delayMs);
  }

  /** One registration or heartbeat; returns the delay until the next. */
  private async beat(): Promise<number> {
    try {
      const report = await this.report();
      if (this.options.partialWrites.takeLost()) this.divergencePossible = true;
      const divergencePossible = this.divergencePossible;
      // Taken before the request leaves: the MDS cannot have counted us alive any earlier.
      const sentMs = this.options.clock.monotonicMs();
      // After losing contact, register again: that reloads fences set while we were away.
      if (this.csId === null || this.writeBlocker() !== null) await this.register(report, divergencePossible);
      else {
        const io = this.options.ioTotals?.();
        const readCache = this.options.readCacheTotals?.();
        await this.options.mds.heartbeat({
          csId: this.csId, uuid: this.options.registration.uuid, divergencePossible, ...report, ...(io === undefined ? {} : { io }),
          ...(readCache === undefined ? {} : { readCache }),
        });
      }
      if (divergencePossible) this.divergencePossible = false;
      // A reply that took longer than the timeout leaves the window closed: the next beat then
      // registers again and reloads the fences the MDS may have set meanwhile without us.
      this.lastContactMs = sentMs;
      this.retryDelayMs = RETRY_MS_MIN;
      return this.heartbeatIntervalMs;
    } catch (error) {
      if (this.stopped) return 0; // the call was ended by the stop; nothing to report or retry
      if (isStorageError(error, 'ERR_NOT_FOUND')) {
        this.csId = null; // the MDS forgot us (new cluster state): register again at once
        return 0;
      }
      const message = error instanceof StorageError ? error.message : String(error);
      if (isStorageError(error, 'ERR_CONFIG') || isStorageError(error, 'ERR_CONFLICT')) {
        this.options.log.error('not registering: this data directory belongs to another cluster', { message });
      } else {
        this.options.log.warn('MDS unreachable; retrying', { inMs: this.retryDelayMs, message });
      }
      const delay = this.retryDelayMs;
      this.retryDelayMs = Math.min(RETRY_MS_MAX, this.retryDelayMs * 2);
      return delay;
    }
  }

  private async register(report: Awaited<ReturnType<MdsLink['report']>>, divergencePossible: boolean): Promise<void> {
    const clusterId = this.options.clusterId();
    const reply = await this.options.mds.registerChunkServer({
      ...this.options.registration, ...report, divergencePossible, ...(clusterId === undefined ? {} : { clusterId }),
    });
    await this.options.adoptCluster(reply.clusterId);
    for (const fence of reply.fences) await this.options.store.raiseFence(fence.volumeId, fence.epoch);
    for (const revocation of reply.revocations) this.options.revoke(revocation.hypervisorId, revocation.issuedBeforeMs);

    this.csId = reply.csId;
    this.heartbeatIntervalMs = reply.heartbeatIntervalMs;
    this.heartbeatTimeoutMs = reply.heartbeatTimeoutMs;
    this.options.log.info('registered with the MDS', { csId: reply.csId, mds: this.options.mds.url, fences: reply.fences.length });
  }

  private async report(): Promise<SpaceReport & { chunkCount: number; healthy: boolean; lastError: string }> {
    const space = await this.options.usage.report();
    this.lastSpace = space;
    const problem = this.options.store.healthProblem;
    return {
      ...space,
      chunkCount: this.options.store.chunkCount,
      healthy: problem === null,
      lastError: (problem ?? '').slice(0, 1024),
    };
  }
}
