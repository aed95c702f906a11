// The metadata service: what the REST routes call. It turns requests into ops for the store,
// asks placement where new chunks go, creates replicas on chunk servers before recording them,
// tracks leases and chunk-server liveness, and removes replicas of deleted volumes in the
// background. Durable decisions go through `store.submit`; soft state (liveness, lease expiry)
// lives here and is rebuilt after a restart.

import { randomUUID } from 'node:crypto';
import { StorageError } from '../errors.ts';
import type {
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
import { CS_OP } from '../protocol/cs_messages.ts';
import type { CsConnectionPool } from '../protocol/cs_connection.ts';
import { CHUNK_BYTES_DEFAULT, BLOCK_BYTES, isPowerOfTwo } from '../limits.ts';
import { assert } from '../util/assert.ts';
import type { Clock } from '../util/clock.ts';
import type { Logger } from '../util/log.ts';
import { ChunkServerRegistry } from './cs_registry.ts';
import type { ChunkRecord, ChunkServerRecord, VolumeRecord } from './model.ts';
import { chooseReplicas, type FailureDomain, type PlacementCandidate } from './placement.ts';
import type { MdsStore } from './store.ts';

export interface MdsConfig {
  readonly failureDomain: FailureDomain;
  readonly heartbeatIntervalMs: number;
  readonly heartbeatTimeoutMs: number;
  readonly leaseTimeoutMs: number;
  readonly replicasNormalDefault: number;
  readonly replicasMinDefault: number;
  readonly chunkSizeBytesDefault: number;
}

export const MDS_CONFIG_DEFAULTS: MdsConfig = {
  failureDomain: 'host',
  heartbeatIntervalMs: 1_000,
  heartbeatTimeoutMs: 5_000,
  leaseTimeoutMs: 20_000,
  replicasNormalDefault: 3,
  replicasMinDefault: 2,
  chunkSizeBytesDefault: CHUNK_BYTES_DEFAULT,
};

/** Chunk ids are reserved durably in blocks, so a crash never hands out an id twice. */
const CHUNK_ID_BLOCK = 1024;
const DELETE_BATCH_MAX = 256;

export class MetadataService {
  readonly registry: ChunkServerRegistry;
  private readonly store: MdsStore;
  private readonly config: MdsConfig;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly pool: CsConnectionPool;
  private readonly log: Logger;
  /** leaseId -> when it expires unless renewed. */
  private readonly leaseExpiryMs = new Map<string, number>();
  /** One allocation at a time per chunk: concurrent writers of a new chunk share it. */
  private readonly allocations = new Map<string, Promise<ChunkMapEntry>>();
  private chunkIds = { next: 0, end: 0 };
  private chunkIdReservation: Promise<void> | null = null;

  constructor(deps: {
    store: MdsStore;
    config: MdsConfig;
    clock: Clock;
    random: () => number;
    pool: CsConnectionPool;
    log: Logger;
  }) {
    this.store = deps.store;
    this.config = deps.config;
    this.clock = deps.clock;
    this.random = deps.random;
    this.pool = deps.pool;
    this.log = deps.log;
    this.registry = new ChunkServerRegistry(deps.config.heartbeatTimeoutMs);
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
    if (volume.lease !== null && !force) {
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
      if (volume.lease !== null) {
        this.leaseExpiryMs.delete(volume.lease.leaseId);
        this.log.warn('write lease taken over', { name, from: volume.lease.holder, to: body.holder, expired, reclaimed });
      }
      volume = result.record;
      this.leaseExpiryMs.set(leaseId, this.clock.nowMs() + this.config.leaseTimeoutMs);
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
    await Promise.all(
      replicas.map((csId) =>
        this.commandChunkServer(csId, {
          op: CS_OP.CREATE_CHUNK,
          chunkId,
          volumeId: volume.id,
          chunkIndex,
          sizeBytes: volume.chunkSizeBytes,
          version: 1,
        }),
      ),
    );
    const result = await this.store.submit({ type: 'allocateChunk', volumeId: volume.id, chunkIndex, chunkId, replicas });
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

  /** Releases leases whose holders stopped renewing them. Called periodically. */
  async expireLeases(): Promise<void> {
    for (const volume of this.store.tables.listVolumes()) {
      if (volume.lease === null || !this.leaseExpired(volume.lease.leaseId)) continue;
      this.log.warn('write lease expired', { volume: volume.name, holder: volume.lease.holder });
      this.leaseExpiryMs.delete(volume.lease.leaseId);
      await this.store.submit({ type: 'releaseLease', volumeId: volume.id, leaseId: volume.lease.leaseId });
    }
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
      if (report === undefined || !report.healthy || !this.registry.isOnline(server.id, nowMs)) continue;
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

  private async commandChunkServer(csId: number, body: Parameters<CsConnectionPool['request']>[2]): Promise<void> {
    const server = this.store.tables.getChunkServer(csId);
    assert(server !== undefined, 'commands go to registered servers');
    const { reply } = await this.pool.request(server.host, server.port, body);
    if (reply.code !== undefined) {
      throw StorageError.fromWire(reply.code, `chunk server ${csId} (${server.host}:${server.port}): ${reply.message ?? ''}`);
    }
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
    const servers = this.listChunkServers();
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
      space: {
        capacityBytes: sum(online.map((s) => s.capacityBytes)),
        usedBytes: sum(online.map((s) => s.usedBytes)),
        freeBytes: sum(online.map((s) => s.freeBytes)),
      },
      volumes: { count: volumes.length, sizeBytes: sum(volumes.map((v) => v.sizeBytes)) },
      chunks: { total, byState },
      servers,
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
        try {
          await this.commandChunkServer(csId, { op: CS_OP.DELETE_CHUNK, chunkId: pending.chunkId });
        } catch (error) {
          if (!(error instanceof StorageError) || error.code !== 'ERR_CHUNK_NOT_FOUND') {
            this.log.warn('replica delete failed; will retry', { chunkId: pending.chunkId, csId, error });
            continue;
          }
        }
        await this.store.submit({ type: 'replicaDeleted', chunkId: pending.chunkId, csId });
        removed += 1;
      }
    }
    return removed;
  }

  exportNames(): string[] {
    return this.store.tables.listVolumes().map((v) => v.name);
  }
}

function sum(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0);
}
