// The metadata service: what the REST routes call. It turns requests into ops for the store,
// asks placement where new chunks go, creates replicas on chunk servers before recording them,
// tracks leases and chunk-server liveness, handles failed writes reported by clients (through the
// replicator), drives recovery (through the scheduler), and removes replicas that left their sets
// in the background. Durable decisions go through `store.submit`; soft state (liveness, lease
// expiry) lives here and is rebuilt after a restart.

import { randomUUID } from 'node:crypto';
import { StorageError } from '../errors.ts';
import type {
  BadBlocksBody,
  ChunkFailureBody,
  ChunkHealthCounts,
  ChunkMapEntry,
  ChunkServerInfo,
  ClusterStat,
  CreateVolumeBody,
  HeartbeatBody,
  OpenVolumeBody,
  OpenVolumeReply,
  RegisterChunkServerBody,
  RegisterChunkServerReply,
  VolumeInfo,
} from '../protocol/api.ts';
import type { CsConnectionPool } from '../protocol/cs_connection.ts';
import { CHUNK_BYTES_DEFAULT, BLOCK_BYTES, isPowerOfTwo } from '../limits.ts';
import { assert } from '../util/assert.ts';
import type { Clock } from '../util/clock.ts';
import type { Logger } from '../util/log.ts';
import { RateLimiter } from '../util/rate_limiter.ts';
import { ChunkServerRegistry } from './cs_registry.ts';
import type { ChunkRecord, ChunkServerAdminState, ChunkServerRecord, VolumeRecord } from './model.ts';
import { chooseReplicas, type FailureDomain, type PlacementCandidate } from './placement.ts';
import type { PlannerChunk, PlannerServer } from './recovery.ts';
import { RecoveryScheduler } from './recovery_scheduler.ts';
import { CsReplicaIo, type ReplicaIo } from './replica_io.ts';
import { Replicator } from './replicator.ts';
import type { MdsStore } from './store.ts';

export interface MdsConfig {
  readonly failureDomain: FailureDomain;
  readonly heartbeatIntervalMs: number;
  readonly heartbeatTimeoutMs: number;
  readonly leaseTimeoutMs: number;
  readonly replicasNormalDefault: number;
  readonly replicasMinDefault: number;
  readonly chunkSizeBytesDefault: number;
  /** A server offline this long has its replicas replaced for good. */
  readonly replaceAfterMs: number;
  /** Copy rate of re-replication and rebalancing together (0 = unlimited). */
  readonly recoveryBytesPerSecond: number;
  readonly recoveryConcurrency: number;
  readonly rebalanceThreshold: number;
}

const MiB = 1024 * 1024;

export const MDS_CONFIG_DEFAULTS: MdsConfig = {
  failureDomain: 'host',
  heartbeatIntervalMs: 1_000,
  heartbeatTimeoutMs: 5_000,
  leaseTimeoutMs: 20_000,
  replicasNormalDefault: 3,
  replicasMinDefault: 2,
  chunkSizeBytesDefault: CHUNK_BYTES_DEFAULT,
  replaceAfterMs: 5 * 60_000,
  recoveryBytesPerSecond: 64 * MiB,
  recoveryConcurrency: 4,
  rebalanceThreshold: 0.1,
};

/** Bytes of one COPY_RANGE request during a bulk copy (paced by the rate limit). */
const COPY_STEP_BYTES = 8 * MiB;

/** Chunk ids are reserved durably in blocks, so a crash never hands out an id twice. */
const CHUNK_ID_BLOCK = 1024;
const DELETE_BATCH_MAX = 256;

export class MetadataService {
  readonly registry: ChunkServerRegistry;
  private readonly store: MdsStore;
  private readonly config: MdsConfig;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly log: Logger;
  /** leaseId -> when it expires unless renewed. */
  private readonly leaseExpiryMs = new Map<string, number>();
  /** One allocation at a time per chunk: concurrent writers of a new chunk share it. */
  private readonly allocations = new Map<string, Promise<ChunkMapEntry>>();
  private chunkIds = { next: 0, end: 0 };
  private chunkIdReservation: Promise<void> | null = null;
  readonly io: ReplicaIo;
  readonly replicator: Replicator;
  readonly recovery: RecoveryScheduler;
  readonly recoveryLimiter: RateLimiter;

  constructor(deps: {
    store: MdsStore;
    config: MdsConfig;
    clock: Clock;
    random: () => number;
    pool: CsConnectionPool;
    /** For copies: a long request timeout (see CsReplicaIo). */
    bulkPool?: CsConnectionPool;
    log: Logger;
    /** Replica I/O; the daemon's default talks to chunk servers through `pool`. */
    io?: ReplicaIo;
  }) {
    this.store = deps.store;
    this.config = deps.config;
    this.clock = deps.clock;
    this.random = deps.random;
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
      random: this.random,
      concurrency: deps.config.recoveryConcurrency,
      planner: {
        replaceAfterMs: deps.config.replaceAfterMs,
        failureDomain: deps.config.failureDomain,
        rebalanceThreshold: deps.config.rebalanceThreshold,
        actionsMax: 256,
      },
      view: () => this.recoveryView(),
    });
    // Leases survive a restart with a full timeout of grace: their holders may still be writing.
    const nowMs = this.clock.nowMs();
    for (const volume of this.store.tables.listVolumes()) {
      if (volume.lease !== null) this.leaseExpiryMs.set(volume.lease.leaseId, nowMs + this.config.leaseTimeoutMs);
    }
  }

  // ---- volumes --------------------------------------------------------------------------------

  async createVolume(body: CreateVolumeBody): Promise<VolumeInfo> {
    const chunkSizeBytes = body.chunkSizeBytes ?? this.config.chunkSizeBytesDefault;
    if (!isPowerOfTwo(chunkSizeBytes) || chunkSizeBytes % BLOCK_BYTES !== 0) {
      throw new StorageError('ERR_INVALID_ARGUMENT', `chunk size ${chunkSizeBytes} must be a power of two, at least ${BLOCK_BYTES}`);
    }
    const replicas = body.replicas ?? { normal: this.config.replicasNormalDefault, min: this.config.replicasMinDefault };
    if (replicas.min > replicas.normal) {
      throw new StorageError('ERR_INVALID_ARGUMENT', `replicas min (${replicas.min}) must not exceed normal (${replicas.normal})`);
    }
    const result = await this.store.submit({
      type: 'createVolume',
      name: body.name,
      sizeBytes: body.sizeBytes,
      chunkSizeBytes,
      replicasNormal: replicas.normal,
      replicasMin: replicas.min,
      nowMs: this.clock.nowMs(),
    });
    assert(result.type === 'volume', 'createVolume yields a volume');
    this.log.info('volume created', { name: body.name, sizeBytes: body.sizeBytes, chunkSizeBytes, replicas });
    return this.volumeInfo(result.record);
  }

  listVolumes(): VolumeInfo[] {
    return this.store.tables.listVolumes().map((volume) => this.volumeInfo(volume));
  }

  volumeByName(name: string): VolumeRecord {
    const id = this.store.tables.getVolumeIdByName(name);
    const volume = id === undefined ? undefined : this.store.tables.getVolume(id);
    if (volume === undefined) throw new StorageError('ERR_NOT_FOUND', `volume "${name}" does not exist`);
    return volume;
  }

  getVolume(name: string): VolumeInfo {
    return this.volumeInfo(this.volumeByName(name));
  }

  async resizeVolume(name: string, sizeBytes: number): Promise<VolumeInfo> {
    const volume = this.volumeByName(name);
    const result = await this.store.submit({ type: 'resizeVolume', volumeId: volume.id, sizeBytes });
    assert(result.type === 'volume', 'resizeVolume yields a volume');
    this.log.info('volume resized', { name, fromBytes: volume.sizeBytes, toBytes: sizeBytes });
    return this.volumeInfo(result.record);
  }

  async deleteVolume(name: string, force: boolean): Promise<void> {
    const volume = this.volumeByName(name);
    if (volume.lease !== null && !this.leaseExpired(volume.lease.leaseId) && !force) {
      throw new StorageError(
        'ERR_VOLUME_LEASED',
        `volume "${name}" is open for write by ${volume.lease.holder}; close it first or delete with force`,
      );
    }
    await this.store.submit({ type: 'deleteVolume', volumeId: volume.id });
    if (volume.lease !== null) this.leaseExpiryMs.delete(volume.lease.leaseId);
    this.log.info('volume deleted', { name });
  }

  private volumeInfo(volume: VolumeRecord): VolumeInfo {
    const chunkCount = this.store.tables.countChunks(volume.id);
    return {
      id: volume.id,
      name: volume.name,
      sizeBytes: volume.sizeBytes,
      chunkSizeBytes: volume.chunkSizeBytes,
      replicas: { normal: volume.replicasNormal, min: volume.replicasMin },
      createdAt: new Date(volume.createdAtMs).toISOString(),
      chunkCount,
      allocatedBytes: chunkCount * volume.chunkSizeBytes,
      epoch: volume.epoch,
      lease:
        volume.lease === null
          ? null
          : { holder: volume.lease.holder, epoch: volume.epoch, acquiredAt: new Date(volume.lease.acquiredAtMs).toISOString() },
    };
  }

  // ---- clients: open, leases, chunk map ---------------------------------------------------------

  async openVolume(name: string, body: OpenVolumeBody): Promise<OpenVolumeReply> {
    let volume = this.volumeByName(name);
    let lease: OpenVolumeReply['lease'] = null;
    if (body.mode === 'write') {
      const leaseId = randomUUID();
      const expired = volume.lease !== null && this.leaseExpired(volume.lease.leaseId);
      // The same holder opening again is that client restarted (its old process crashed): it
      // takes the lease back at once, and the epoch bump fences whatever the old process sends.
      const reclaimed = volume.lease !== null && volume.lease.holder === body.holder;
      const result = await this.store.submit({
        type: 'acquireLease',
        volumeId: volume.id,
        holder: body.holder,
        leaseId,
        force: body.force === true || expired || reclaimed,
        nowMs: this.clock.nowMs(),
      });
      assert(result.type === 'volume', 'acquireLease yields a volume');
      const previous = volume.lease;
      if (previous !== null) {
        this.leaseExpiryMs.delete(previous.leaseId);
        this.log.warn('write lease taken over', { name, from: previous.holder, to: body.holder, expired, reclaimed });
      }
      volume = result.record;
      this.leaseExpiryMs.set(leaseId, this.clock.nowMs() + this.config.leaseTimeoutMs);
      // A lease still on record (expired, reclaimed or forced) may have a live writer behind it:
      // every chunk server rejects its writes before the new writer writes. A lease released by
      // its holder's close has no writer left.
      if (previous !== null) {
        try {
          await this.fenceVolume(volume);
        } catch (error) {
          await this.closeVolume(name, leaseId);
          throw error;
        }
      }
      lease = {
        leaseId,
        epoch: volume.epoch,
        renewIntervalMs: Math.floor(this.config.leaseTimeoutMs / 4),
        timeoutMs: this.config.leaseTimeoutMs,
      };
    }
    const chunks = this.store.tables
      .listChunks(volume.id, 0, this.chunkCountMax(volume))
      .map((chunk) => this.chunkMapEntry(chunk));
    return { volume: this.volumeInfo(volume), lease, chunks };
  }

  /**
   * Takes the write lease away from its holder (an admin's forced unlock): the epoch grows, every
   * chunk server learns it, and the next open for write succeeds. The old holder's writes fail.
   */
  async fenceWriter(name: string): Promise<VolumeInfo> {
    const volume = this.volumeByName(name);
    const leaseId = randomUUID();
    const result = await this.store.submit({
      type: 'acquireLease', volumeId: volume.id, holder: 'admin fence', leaseId, force: true, nowMs: this.clock.nowMs(),
    });
    assert(result.type === 'volume', 'acquireLease yields a volume');
    if (volume.lease !== null) this.leaseExpiryMs.delete(volume.lease.leaseId);
    try {
      await this.fenceVolume(result.record);
    } finally {
      await this.store.submit({ type: 'releaseLease', volumeId: volume.id, leaseId });
    }
    this.log.warn('writer fenced by an admin', { name, previous: volume.lease?.holder ?? null, epoch: result.record.epoch });
    return this.getVolume(name);
  }

  renewLease(name: string, leaseId: string): void {
    this.requireLease(this.volumeByName(name), leaseId);
    this.leaseExpiryMs.set(leaseId, this.clock.nowMs() + this.config.leaseTimeoutMs);
  }

  async closeVolume(name: string, leaseId: string): Promise<void> {
    const volume = this.volumeByName(name);
    await this.store.submit({ type: 'releaseLease', volumeId: volume.id, leaseId });
    this.leaseExpiryMs.delete(leaseId);
  }

  chunkMap(name: string, fromIndex: number, count: number): ChunkMapEntry[] {
    const volume = this.volumeByName(name);
    return this.store.tables.listChunks(volume.id, fromIndex, count).map((chunk) => this.chunkMapEntry(chunk));
  }

  /** Returns the chunk's map entry, allocating and placing it first if it was never written. */
  async allocateChunk(name: string, chunkIndex: number, leaseId: string): Promise<ChunkMapEntry> {
    const volume = this.volumeByName(name);
    this.requireLease(volume, leaseId);
    if (chunkIndex >= this.chunkCountMax(volume)) {
      throw new StorageError('ERR_OUT_OF_RANGE', `chunk ${chunkIndex} is past the end of volume "${name}"`);
    }
    const existing = this.store.tables.getChunk(volume.id, chunkIndex);
    if (existing !== undefined) return this.chunkMapEntry(existing);
    const key = `${volume.id}:${chunkIndex}`;
    let allocation = this.allocations.get(key);
    if (allocation === undefined) {
      allocation = this.placeChunk(volume, chunkIndex).finally(() => this.allocations.delete(key));
      this.allocations.set(key, allocation);
    }
    return allocation;
  }

  private async placeChunk(volume: VolumeRecord, chunkIndex: number): Promise<ChunkMapEntry> {
    const chunkId = await this.takeChunkId();
    const replicas = chooseReplicas(
      this.placementCandidates(),
      {
        count: volume.replicasNormal,
        minimum: volume.replicasMin,
        chunkSizeBytes: volume.chunkSizeBytes,
        failureDomain: this.config.failureDomain,
        exclude: [],
      },
      this.random,
    );
    const identity = { chunkId, volumeId: volume.id, chunkIndex, sizeBytes: volume.chunkSizeBytes };
    const results = await Promise.allSettled(replicas.map((csId) => this.io.createChunk(csId, identity, 1)));
    // A server that fails now (frozen, just died) is left out; recovery adds a replica later.
    const created = replicas.filter((_, index) => results[index]?.status === 'fulfilled');
    if (created.length < volume.replicasMin) {
      const reasons = results.flatMap((r) => (r.status === 'rejected' ? [(r.reason as Error).message] : []));
      throw new StorageError('ERR_UNAVAILABLE', `could not create chunk ${chunkIndex} of "${volume.name}" on enough servers: ${reasons.join('; ')}`);
    }
    const result = await this.store.submit({ type: 'allocateChunk', volumeId: volume.id, chunkIndex, chunkId, replicas: created });
    assert(result.type === 'chunk', 'allocateChunk yields a chunk');
    return this.chunkMapEntry(result.record);
  }

  private async takeChunkId(): Promise<number> {
    while (this.chunkIds.next >= this.chunkIds.end) {
      this.chunkIdReservation ??= this.store
        .submit({ type: 'reserveChunkIds', count: CHUNK_ID_BLOCK })
        .then((result) => {
          assert(result.type === 'chunkIdRange', 'reserveChunkIds yields a range');
          this.chunkIds = { next: result.firstChunkId, end: result.firstChunkId + result.count };
        })
        .finally(() => {
          this.chunkIdReservation = null;
        });
      await this.chunkIdReservation;
    }
    const chunkId = this.chunkIds.next;
    this.chunkIds.next += 1;
    return chunkId;
  }

  private requireLease(volume: VolumeRecord, leaseId: string): void {
    if (volume.lease === null || volume.lease.leaseId !== leaseId) {
      throw new StorageError(
        'ERR_LEASE_EXPIRED',
        `the write lease on volume "${volume.name}" is no longer held by this client` +
          (volume.lease === null ? '' : ` (now held by ${volume.lease.holder})`),
      );
    }
  }

  private leaseExpired(leaseId: string): boolean {
    const expiresAtMs = this.leaseExpiryMs.get(leaseId);
    return expiresAtMs === undefined || expiresAtMs <= this.clock.nowMs();
  }

  private chunkCountMax(volume: VolumeRecord): number {
    return Math.ceil(volume.sizeBytes / volume.chunkSizeBytes);
  }

  private chunkMapEntry(chunk: ChunkRecord): ChunkMapEntry {
    return {
      chunkIndex: chunk.chunkIndex,
      chunkId: chunk.chunkId,
      version: chunk.version,
      replicas: chunk.replicas.map((csId) => {
        const server = this.store.tables.getChunkServer(csId);
        assert(server !== undefined, 'chunk replicas reference registered servers');
        return { csId, host: server.host, port: server.port };
      }),
    };
  }

  // ---- chunk servers --------------------------------------------------------------------------

  async registerChunkServer(body: RegisterChunkServerBody): Promise<RegisterChunkServerReply> {
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
    this.registry.heartbeat(result.record.id, body, this.clock.nowMs());
    this.log.info('chunk server registered', { csId: result.record.id, host: body.host, port: body.port });
    return {
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

  private placementCandidates(): PlacementCandidate[] {
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
  private isUsable(csId: number): boolean {
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

  // ---- failures, repairs, recovery ----------------------------------------------------------------

  /** One chunk's current map entry, after any replica-set change in progress on it has finished. */
  async getChunk(name: string, chunkIndex: number): Promise<ChunkMapEntry> {
    const volume = this.volumeByName(name);
    const chunk = this.store.tables.getChunk(volume.id, chunkIndex);
    if (chunk === undefined) throw new StorageError('ERR_NOT_FOUND', `chunk ${chunkIndex} of volume "${name}" was never written`);
    await this.replicator.idle(chunk.chunkId);
    const current = this.store.tables.getChunk(volume.id, chunkIndex);
    assert(current !== undefined, 'an allocated chunk stays until its volume is deleted');
    return this.chunkMapEntry(current);
  }

  /**
   * A writer could not complete a change on some members (or found a member at another version
   * than the map says). The failed members leave the set under a new version, the range of the
   * failed change is made the same on the members that stay, and the writer gets the new entry.
   */
  async reportChunkFailure(name: string, chunkIndex: number, report: ChunkFailureBody): Promise<ChunkMapEntry> {
    const volume = this.volumeByName(name);
    this.requireLease(volume, report.leaseId);
    const chunk = this.store.tables.getChunk(volume.id, chunkIndex);
    if (chunk === undefined) throw new StorageError('ERR_NOT_FOUND', `chunk ${chunkIndex} of volume "${name}" was never written`);
    let record: ChunkRecord;
    if (report.failedCsIds.length === 0) {
      record = await this.replicator.reconcileVersion(volume.id, chunkIndex);
    } else {
      this.log.warn('write failed on replicas; they leave the set', {
        volume: name, chunkIndex, failed: report.failedCsIds, version: report.version, reason: report.reason,
      });
      for (const csId of report.failedCsIds) this.registry.markSuspect(csId, this.clock.nowMs());
      record = await this.replicator.drop(volume.id, chunkIndex, report.failedCsIds, {
        expectedVersion: report.version,
        inDoubt: { offsetBytes: report.offsetBytes, lengthBytes: report.lengthBytes },
        reason: 'write failed on these members',
      });
    }
    this.recovery.tick();
    return this.chunkMapEntry(record);
  }

  /** A reader or the scrubber found blocks failing their checksum on one member: repair them. */
  async reportBadBlocks(report: BadBlocksBody): Promise<number> {
    const chunk = this.store.tables.getChunk(report.volumeId, report.chunkIndex);
    if (chunk === undefined || chunk.chunkId !== report.chunkId) return 0;
    const repaired = await this.replicator.repair(report.volumeId, report.chunkIndex, report.csId, report.offsetBytes, report.lengthBytes);
    this.log.warn('bad blocks reported', { ...report, repaired });
    return repaired;
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
  private async fenceVolume(volume: VolumeRecord): Promise<void> {
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

  exportNames(): string[] {
    return this.store.tables.listVolumes().map((v) => v.name);
  }
}

function sum(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0);
}
