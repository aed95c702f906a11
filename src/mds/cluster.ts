// The cluster as the MDS sees it: chunk servers (registration, heartbeats, liveness, space,
// admin state), the cluster-wide stat, and everything that moves replicas between servers:
// placement candidates, the replicator and the recovery scheduler, repairs of bad blocks,
// fencing of old writers on every server, and the background removal of replicas that left their
// sets. The volume side of the MDS (service.ts) uses it; the REST routes reach it as
// `service.cluster`.

import { StorageError } from '../errors.ts';
import type {
  BadBlocksBody,
  PartialWriteBody,
  ChunkHealthCounts,
  ChunkServerInfo,
  ClusterStat,
  HeartbeatBody,
  RegisterChunkServerBody,
  RegisterChunkServerReply,
} from '../protocol/api.ts';
import type { CsConnectionPool } from '../protocol/cs_connection.ts';
import { assert } from '../util/assert.ts';
import type { Clock } from '../util/clock.ts';
import type { Logger } from '../util/log.ts';
import { RateLimiter } from '../util/rate_limiter.ts';
import { ChunkServerRegistry } from './cs_registry.ts';
import type { ChunkServerAdminState, ChunkServerRecord, VolumeRecord } from './model.ts';
import type { PlacementCandidate } from './placement.ts';
import type { PlannerChunk, PlannerServer } from './recovery.ts';
import { RecoveryScheduler } from './recovery_scheduler.ts';
import { CsReplicaIo, type ReplicaIo } from './replica_io.ts';
import { Replicator } from './replicator.ts';
import type { MdsConfig } from './config.ts';
import type { MdsStore } from './store.ts';

const MiB = 1024 * 1024;
/** Bytes of one COPY_RANGE request during a bulk copy (paced by the rate limit). */
const COPY_STEP_BYTES = 8 * MiB;
const DELETE_BATCH_MAX = 256;

export interface ClusterDeps {
  readonly store: MdsStore;
  readonly config: MdsConfig;
  readonly clock: Clock;
  readonly random: () => number;
  readonly pool: CsConnectionPool;
  /** For copies: a long request timeout (see CsReplicaIo). */
  readonly bulkPool?: CsConnectionPool;
  readonly log: Logger;
  /** Replica I/O; the daemon's default talks to chunk servers through `pool`. */
  readonly io?: ReplicaIo;
  readonly clusterId: string;
}

export class Cluster {
  readonly registry: ChunkServerRegistry;
  readonly io: ReplicaIo;
  readonly replicator: Replicator;
  readonly recovery: RecoveryScheduler;
  readonly recoveryLimiter: RateLimiter;
  private readonly store: MdsStore;
  private readonly config: MdsConfig;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly clusterId: string;
  /** Chunk ids being allocated (created on servers, not yet in the map): not leftovers. */
  readonly allocating = new Set<number>();

  constructor(deps: ClusterDeps) {
    this.clusterId = deps.clusterId;
    this.store = deps.store;
    this.config = deps.config;
    this.clock = deps.clock;
    this.log = deps.log;
    this.registry = new ChunkServerRegistry(deps.config.heartbeatTimeoutMs, this.clock.nowMs());
    this.io = deps.io ?? new CsReplicaIo(deps.pool, deps.bulkPool ?? deps.pool, (csId) => this.serverAddress(csId));
    this.recoveryLimiter = new RateLimiter(deps.config.recoveryBytesPerSecond, this.clock, (ms) => new Promise((resolve) => setTimeout(resolve, ms)));
    this.replicator = new Replicator({
      store: this.store,
      io: this.io,
      log: this.log,
      isUsable: (csId) => this.isUsable(csId),
      pace: (bytes) => this.recoveryLimiter.take(bytes),
      copyStepBytes: COPY_STEP_BYTES,
    });
    this.recovery = new RecoveryScheduler({
      replicator: this.replicator,
      log: this.log,
      random: deps.random,
      concurrency: deps.config.recoveryConcurrency,
      planner: {
        replaceAfterMs: deps.config.replaceAfterMs,
        failureDomain: deps.config.failureDomain,
        rebalanceThreshold: deps.config.rebalanceThreshold,
        actionsMax: 256,
      },
      view: () => this.recoveryView(),
    });
  }

  // ---- chunk servers --------------------------------------------------------------------------

  async registerChunkServer(body: RegisterChunkServerBody): Promise<RegisterChunkServerReply> {
    // A directory that joined another cluster must not be taken in: its replicas would all look
    // like leftovers here, and be deleted.
    if (body.clusterId !== undefined && body.clusterId !== this.clusterId) {
      throw new StorageError(
        'ERR_CONFLICT',
        `chunk server ${body.uuid} belongs to cluster ${body.clusterId}; this MDS runs cluster ${this.clusterId}: not registering it`,
      );
    }
    const result = await this.store.submit({
      type: 'registerChunkServer',
      uuid: body.uuid,
      host: body.host,
      port: body.port,
      metricsPort: body.metricsPort,
      failureDomainHost: body.failureDomainHost,
      rack: body.rack,
      tier: body.tier,
      nowMs: this.clock.nowMs(),
    });
    assert(result.type === 'chunkServer', 'registerChunkServer yields a server');
    // A server registers when it starts and when it regains the MDS after a silence: either way it
    // may have died while forwarding a write whose writer died too. Its chunks are compared with
    // their other members (checksums only; differing blocks copied) before anything else.
    await this.store.submit({ type: 'markServerChunksInDoubt', csId: result.record.id });
    this.registry.heartbeat(result.record.id, body, this.clock.nowMs());
    this.log.info('chunk server registered', { csId: result.record.id, host: body.host, port: body.port });
    this.recovery.tick();
    // What the server holds is compared with the map in the background: leftovers get deleted.
    void this.reconcileHeld(result.record.id);
    return {
      clusterId: this.clusterId,
      csId: result.record.id,
      heartbeatIntervalMs: this.config.heartbeatIntervalMs,
      heartbeatTimeoutMs: this.config.heartbeatTimeoutMs,
      fences: this.store.tables.listVolumes().map((volume) => ({ volumeId: volume.id, epoch: volume.epoch })),
    };
  }

  heartbeat(body: HeartbeatBody): void {
    const server = this.store.tables.getChunkServer(body.csId);
    if (server === undefined || server.uuid !== body.uuid) {
      throw new StorageError('ERR_NOT_FOUND', `chunk server ${body.csId} (${body.uuid}) is not registered; register again`);
    }
    this.registry.heartbeat(body.csId, body, this.clock.nowMs());
  }

  placementCandidates(): PlacementCandidate[] {
    const nowMs = this.clock.nowMs();
    const candidates: PlacementCandidate[] = [];
    for (const server of this.store.tables.listChunkServers()) {
      const report = this.registry.report(server.id);
      if (server.adminState !== 'active' || report === undefined || !report.healthy) continue;
      if (!this.registry.isOnline(server.id, nowMs) || this.registry.isSuspect(server.id, nowMs)) continue;
      candidates.push({
        csId: server.id,
        host: server.failureDomainHost,
        rack: server.rack,
        capacityBytes: report.capacityBytes,
        freeBytes: report.freeBytes,
      });
    }
    return candidates;
  }

  private serverAddress(csId: number): { host: string; port: number } {
    const server = this.store.tables.getChunkServer(csId);
    if (server === undefined) throw new StorageError('ERR_NOT_FOUND', `chunk server ${csId} is not registered`);
    return { host: server.host, port: server.port };
  }

  /** Worth sending a request to: online and not removed. */
  isUsable(csId: number): boolean {
    const server = this.store.tables.getChunkServer(csId);
    return server !== undefined && server.adminState !== 'removed' && this.registry.isOnline(csId, this.clock.nowMs());
  }

  listChunkServers(): ChunkServerInfo[] {
    const mapped = new Map<number, number>();
    this.store.tables.forEachChunk((chunk) => {
      for (const csId of chunk.replicas) mapped.set(csId, (mapped.get(csId) ?? 0) + 1);
    });
    return this.store.tables.listChunkServers().map((server) => this.chunkServerInfo(server, mapped.get(server.id) ?? 0));
  }

  private chunkServerInfo(server: ChunkServerRecord, mappedReplicaCount: number): ChunkServerInfo {
    const nowMs = this.clock.nowMs();
    const report = this.registry.report(server.id);
    return {
      id: server.id,
      uuid: server.uuid,
      host: server.host,
      port: server.port,
      metricsPort: server.metricsPort,
      failureDomain: { host: server.failureDomainHost, rack: server.rack },
      tier: server.tier,
      state: this.registry.state(server.id, nowMs),
      adminState: server.adminState,
      healthy: report?.healthy ?? false,
      lastError: report?.lastError ?? '',
      capacityBytes: report?.capacityBytes ?? 0,
      usedBytes: report?.usedBytes ?? 0,
      freeBytes: report?.freeBytes ?? 0,
      chunkCount: report?.chunkCount ?? 0,
      mappedReplicaCount,
      lastHeartbeatAgeMs: this.registry.heartbeatAgeMs(server.id, nowMs),
      registeredAt: new Date(server.registeredAtMs).toISOString(),
    };
  }

  // ---- cluster-wide -------------------------------------------------------------------------------

  stat(): ClusterStat {
    const nowMs = this.clock.nowMs();
    // Removed servers are history: listed, but not counted in the cluster's totals.
    const listed = this.listChunkServers();
    const servers = listed.filter((s) => s.adminState !== 'removed');
    const online = servers.filter((s) => s.state === 'online');
    const byState: { -readonly [K in keyof ChunkHealthCounts]: number } = { healthy: 0, degraded: 0, endangered: 0, unavailable: 0 };
    let total = 0;
    const volumes = this.store.tables.listVolumes();
    const volumesById = new Map(volumes.map((v) => [v.id, v]));
    this.store.tables.forEachChunk((chunk) => {
      total += 1;
      const volume = volumesById.get(chunk.volumeId);
      const live = chunk.replicas.filter((csId) => this.registry.isOnline(csId, nowMs)).length;
      const normal = volume?.replicasNormal ?? chunk.replicas.length;
      const min = volume?.replicasMin ?? 1;
      if (live === 0) byState.unavailable += 1;
      else if (live < min) byState.endangered += 1;
      else if (live < normal) byState.degraded += 1;
      else byState.healthy += 1;
    });
    return {
      chunkServers: { total: servers.length, online: online.length, offline: servers.length - online.length },
      recovery: {
        running: this.recovery.stats.running,
        pending: this.recovery.stats.pending,
        blocked: this.recovery.stats.blocked,
        succeeded: this.recovery.stats.succeeded,
        failed: this.recovery.stats.failed,
        copiedBytes: this.replicator.copiedBytesTotal,
        settledBytes: this.replicator.settledBytesTotal,
        bytesPerSecondLimit: this.recoveryLimiter.rate,
      },
      space: {
        capacityBytes: sum(online.map((s) => s.capacityBytes)),
        usedBytes: sum(online.map((s) => s.usedBytes)),
        freeBytes: sum(online.map((s) => s.freeBytes)),
      },
      volumes: { count: volumes.length, sizeBytes: sum(volumes.map((v) => v.sizeBytes)) },
      chunks: { total, byState },
      servers: listed,
    };
  }

  // ---- background: replicas of deleted chunks ----------------------------------------------------

  /** Removes queued replicas of deleted chunks from online servers. Called periodically. */
  async sweepDeletedReplicas(): Promise<number> {
    const nowMs = this.clock.nowMs();
    let removed = 0;
    for (const pending of this.store.tables.listPendingDeletes(DELETE_BATCH_MAX)) {
      for (const csId of pending.csIds) {
        if (!this.registry.isOnline(csId, nowMs)) continue;
        if (this.replicator.isFilling(pending.chunkId, csId)) continue;
        try {
          await this.io.deleteChunk(csId, pending.chunkId);
        } catch (error) {
          if (!(error instanceof StorageError) || error.code !== 'ERR_CHUNK_NOT_FOUND') {
            // An unreachable server is retried quietly: it is about to be marked offline.
            const level = error instanceof StorageError && error.code === 'ERR_UNAVAILABLE' ? 'debug' : 'warn';
            this.log[level]('replica delete failed; will retry', { chunkId: pending.chunkId, csId, error });
            continue;
          }
        }
        await this.store.submit({ type: 'replicaDeleted', chunkId: pending.chunkId, csId });
        removed += 1;
      }
    }
    return removed;
  }

  /**
   * Compares the replicas a server holds with the map: a replica of a chunk the map does not know
   * (an allocation that crashed before it was recorded, a volume deleted while the server was
   * away) or of a chunk the server is no longer a member of is queued for deletion.
   */
  private async reconcileHeld(csId: number): Promise<void> {
    try {
      const held = await this.io.listChunks(csId);
      const byId = new Map<number, { volumeId: number; chunkIndex: number; replicas: readonly number[] }>();
      this.store.tables.forEachChunk((chunk) => byId.set(chunk.chunkId, chunk));
      const entries: Array<{ chunkId: number; csId: number; volumeId?: number; chunkIndex?: number }> = [];
      for (const { chunkId } of held) {
        if (this.allocating.has(chunkId) || this.replicator.isFilling(chunkId, csId)) continue;
        const chunk = byId.get(chunkId);
        if (chunk === undefined) entries.push({ chunkId, csId });
        else if (!chunk.replicas.includes(csId)) entries.push({ chunkId, csId, volumeId: chunk.volumeId, chunkIndex: chunk.chunkIndex });
      }
      if (entries.length === 0) return;
      await this.store.submit({ type: 'queueReplicaDeletes', entries });
      this.log.info('leftover replicas queued for deletion', { csId, count: entries.length });
    } catch (error) {
      this.log.warn('could not compare a chunk server\'s replicas with the map; next registration retries', { csId, error });
    }
  }

  // ---- repairs, admin states, recovery ----------------------------------------------------------

  /** A reader or the scrubber found blocks failing their checksum on one member: repair them. */
  async reportBadBlocks(report: BadBlocksBody): Promise<number> {
    const chunk = this.store.tables.getChunk(report.volumeId, report.chunkIndex);
    if (chunk === undefined || chunk.chunkId !== report.chunkId) return 0;
    const repaired = await this.replicator.repair(report.volumeId, report.chunkIndex, report.csId, report.offsetBytes, report.lengthBytes);
    this.log.warn('bad blocks reported', { ...report, repaired });
    return repaired;
  }

  /**
   * A primary could not complete a change on every member. Its writer reports the same unless it
   * died: the failed members leave under a new version and the rest are made equal, as for the
   * writer's report. Whichever report comes second finds the version moved on and does nothing.
   */
  async reportPartialWrite(report: PartialWriteBody): Promise<void> {
    const chunk = this.store.tables.getChunk(report.volumeId, report.chunkIndex);
    if (chunk === undefined || chunk.chunkId !== report.chunkId || chunk.version !== report.version) return;
    this.log.warn('a primary reports a change incomplete on members', { ...report });
    for (const csId of report.failedCsIds) {
      if (csId !== report.csId) this.registry.markSuspect(csId, this.clock.nowMs());
    }
    await this.replicator.drop(report.volumeId, report.chunkIndex, report.failedCsIds, {
      expectedVersion: report.version,
      inDoubt: { offsetBytes: report.offsetBytes, lengthBytes: report.lengthBytes },
      reason: `chunk server ${report.csId} could not complete a change on these members`,
    });
    this.recovery.tick();
  }

  /** Drain (move every replica off), return to service, or remove (only once empty). */
  async setChunkServerState(csId: number, adminState: ChunkServerAdminState): Promise<ChunkServerInfo> {
    const result = await this.store.submit({ type: 'setChunkServerState', csId, adminState });
    assert(result.type === 'chunkServer', 'setChunkServerState yields a server');
    this.log.info('chunk server state changed', { csId, adminState });
    this.recovery.tick();
    const info = this.listChunkServers().find((server) => server.id === csId);
    assert(info !== undefined, 'a server that changed state is listed');
    return info;
  }

  /** Plans recovery and starts what fits. Called periodically and after failures. */
  recoveryTick(): number {
    return this.recovery.tick();
  }

  private recoveryView(): { servers: PlannerServer[]; chunks: Iterable<PlannerChunk> } {
    const nowMs = this.clock.nowMs();
    const servers: PlannerServer[] = this.store.tables.listChunkServers().map((server) => {
      const report = this.registry.report(server.id);
      return {
        id: server.id,
        online: this.registry.isOnline(server.id, nowMs),
        // A server a client just failed to reach keeps counting as a live member until its
        // heartbeats stop, but it gets no new replicas meanwhile.
        healthy: (report?.healthy ?? false) && !this.registry.isSuspect(server.id, nowMs),
        offlineForMs: this.registry.offlineForMs(server.id, nowMs),
        adminState: server.adminState,
        host: server.failureDomainHost,
        rack: server.rack,
        capacityBytes: report?.capacityBytes ?? 0,
        freeBytes: report?.freeBytes ?? 0,
      };
    });
    const volumes = new Map(this.store.tables.listVolumes().map((volume) => [volume.id, volume]));
    const chunks: PlannerChunk[] = [];
    this.store.tables.forEachChunk((chunk) => {
      const volume = volumes.get(chunk.volumeId);
      if (volume === undefined) return;
      chunks.push({
        volumeId: chunk.volumeId,
        chunkIndex: chunk.chunkIndex,
        chunkId: chunk.chunkId,
        replicas: chunk.replicas,
        replicasNormal: volume.replicasNormal,
        replicasMin: volume.replicasMin,
        chunkSizeBytes: volume.chunkSizeBytes,
        inDoubt: (chunk.inDoubt ?? []).length > 0,
      });
    });
    return { servers, chunks };
  }

  /**
   * Tells every chunk server about a volume's new lease epoch before the new writer writes. A
   * server that cannot be told must be known to have stopped writing: chunk servers stop taking
   * writes once they have not heard from the MDS for a heartbeat timeout, so one offline for
   * longer than that (here: twice, for margin) is safe; one offline for less makes the open fail.
   */
  async fenceVolume(volume: VolumeRecord): Promise<void> {
    const nowMs = this.clock.nowMs();
    const servers = this.store.tables.listChunkServers().filter((s) => s.adminState !== 'removed');
    const unsure = servers.filter((s) => {
      const offlineForMs = this.registry.offlineForMs(s.id, nowMs);
      return offlineForMs > 0 && offlineForMs < 2 * this.config.heartbeatTimeoutMs;
    });
    if (unsure.length > 0) {
      throw new StorageError(
        'ERR_UNAVAILABLE',
        `chunk servers ${unsure.map((s) => s.id).join(', ')} went offline moments ago and may still take the previous ` +
          `writer's writes; try again in ${Math.ceil((2 * this.config.heartbeatTimeoutMs) / 1000)} s`,
      );
    }
    const online = servers.filter((s) => this.registry.isOnline(s.id, nowMs));
    const results = await Promise.allSettled(online.map((server) => this.io.fence(server.id, volume.id, volume.epoch)));
    const failed = online.filter((_, index) => results[index]?.status === 'rejected');
    if (failed.length > 0) {
      throw new StorageError(
        'ERR_UNAVAILABLE',
        `could not fence the previous writer of volume "${volume.name}" on chunk servers ${failed.map((s) => s.id).join(', ')}; try again`,
      );
    }
  }
}

function sum(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0);
}
