// The metadata service, volume side: what the REST routes call for volumes and their clients. It
// turns requests into ops for the store, asks placement where new chunks go, creates replicas on
// chunk servers before recording them, tracks write leases, and handles failed writes reported by
// clients (through the replicator). Chunk servers, recovery and the cluster-wide view live in
// `cluster` (cluster.ts). Durable decisions go through `store.submit`; soft state (lease expiry)
// lives here and is rebuilt after a restart.

import { randomBytes, randomUUID } from 'node:crypto';
import { StorageError } from '../errors.ts';
import { CHUNK_MAP_PAGE_CHUNKS, UNLIMITED_QOS } from '../protocol/api.ts';
import type {
  IoRates,
  IoReportBody,
  IoStatsReply,
  IoTotals,
  UpdateVolumeBody,
  VolumeQos,
  CapabilityReply,
  ChunkFailureBody,
  ChunkMapEntry,
  ChunkMapReply,
  CreateVolumeBody,
  OpenVolumeBody,
  OpenVolumeReply,
  TaskInfo,
  VolumeInfo,
} from '../protocol/api.ts';
import { BLOCK_BYTES, isPowerOfTwo } from '../limits.ts';
import { assert } from '../util/assert.ts';
import type { Clock } from '../util/clock.ts';
import type { Logger } from '../util/log.ts';
import { Cluster, type ClusterDeps } from './cluster.ts';
import { chunkTicket, type CapabilityGrant } from '../protocol/capability.ts';
import { Hypervisors } from './hypervisors.ts';
import type { ChunkRecord, ChunkServerRecord, HypervisorRecord, LeaseRecord, VolumeRecord } from './model.ts';
import { CACHE_TRUST_RENEWALS } from '../client/lease.ts';
import type { MdsConfig } from './config.ts';
import { chooseReplicas, domainKey } from './placement.ts';
import { describeVolume, volumeQos, volumeTier } from './model.ts';
import { misplacedOfVolume } from './tiers.ts';
import { resolveQosChange } from './volume_qos.ts';
import { IoRateTable, sumRates } from './io_rates.ts';
import { Tasks } from './tasks.ts';
import type { MdsStore } from './store.ts';

/** Chunk ids are reserved durably in blocks, so a crash never hands out an id twice. */
const CHUNK_ID_BLOCK = 1024;
/** Longest a write open waits for the comparison of the servers' replicas with the map. */
const SCAN_WAIT_MS = 10_000;

export class MetadataService {
  readonly cluster: Cluster;
  readonly hypervisors: Hypervisors;
  readonly tasks: Tasks;
  private readonly capabilityKey: Buffer;
  private readonly store: MdsStore;
  private readonly config: MdsConfig;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly log: Logger;
  /** leaseId -> when it expires unless renewed. */
  private readonly leaseExpiryMs = new Map<string, number>();
  /**
   * volumeId -> until when a writer taken over with a live read cache may still answer its guest
   * from it (it stops within CACHE_TRUST_RENEWALS renewal intervals of its last confirmed one): a
   * new writer writes nothing before then, or that guest could read bytes already overwritten.
   */
  private readonly cachedReadsUntilMs = new Map<number, number>();
  /** Rates for watching (io_rates.ts): in memory only. */
  private readonly serverIo = new IoRateTable<number>();
  private readonly volumeIo = new IoRateTable<string>();
  /** One allocation at a time per chunk: concurrent writers of a new chunk share it. */
  private readonly allocations = new Map<string, Promise<ChunkMapEntry>>();
  private chunkIds = { next: 0, end: 0 };
  private chunkIdReservation: Promise<void> | null = null;

  constructor(deps: ClusterDeps) {
    this.store = deps.store;
    this.config = deps.config;
    this.clock = deps.clock;
    this.random = deps.random;
    this.log = deps.log;
    this.cluster = new Cluster(deps);
    this.tasks = new Tasks({
      store: deps.store, clock: deps.clock, log: deps.log,
      replan: () => this.cluster.recoveryTick(), blockedChunks: () => this.cluster.recovery.stats.blocked,
      misplacedStuckChunks: () => this.cluster.recovery.stats.misplacedStuck,
      volumeName: (volumeId) => this.store.tables.getVolume(volumeId)?.name ?? null,
      rebalance: () => this.cluster.rebalanceStatus(), autoRebalanceThreshold: deps.config.rebalanceThreshold,
    });
    this.capabilityKey = deps.capabilityKey ?? randomBytes(32);
    this.hypervisors = new Hypervisors({
      store: this.store,
      clock: this.clock,
      log: this.log,
      capabilityKey: this.capabilityKey,
      capabilityTtlMs: this.config.capabilityTtlMs,
      onlineServers: () => {
        const nowMs = this.clock.nowMs();
        return this.store.tables.listChunkServers()
          .filter((server) => server.adminState !== 'removed' && this.cluster.registry.isOnline(server.id, nowMs))
          .map((server) => server.id);
      },
      revokeOn: (csId, hypervisorId, issuedBeforeMs) => this.cluster.io.revoke(csId, hypervisorId, issuedBeforeMs),
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
    if (body.tier !== undefined) this.requireTierFits(body.tier, replicas.normal, `volume "${body.name}"`);
    const result = await this.store.submit({
      type: 'createVolume',
      name: body.name,
      sizeBytes: body.sizeBytes,
      chunkSizeBytes,
      replicasNormal: replicas.normal,
      replicasMin: replicas.min,
      nowMs: this.clock.nowMs(),
      ...(body.qos === undefined ? {} : { qos: resolveQosChange(UNLIMITED_QOS, body.qos) }),
      ...(body.tier === undefined ? {} : { tier: body.tier }),
    });
    assert(result.type === 'volume', 'createVolume yields a volume');
    this.log.info('volume created', {
      name: body.name, sizeBytes: body.sizeBytes, chunkSizeBytes, replicas, qos: volumeQos(result.record), tier: volumeTier(result.record),
    });
    return this.volumeInfo(result.record);
  }

  /**
   * Moves a volume to `tier` (a task: tasks.ts), once the tier can hold its copies at all: a tier
   * without enough servers would leave every chunk spilled, and the task running for ever.
   */
  async startVolumeTier(name: string, tier: number, idempotencyKey: string | null): Promise<{ task: TaskInfo; created: boolean }> {
    const volume = this.volumeByName(name);
    if (volumeTier(volume) !== tier) this.requireTierFits(tier, volume.replicasNormal, `volume "${name}"`);
    return this.tasks.startTier({ volumeId: volume.id }, tier, idempotencyKey);
  }

  /** Refuses a tier with fewer active chunk servers in distinct failure domains than `copies`. */
  private requireTierFits(tier: number, copies: number, what: string): void {
    const servers = this.store.tables.listChunkServers().filter((server) => server.adminState === 'active' && server.tier === tier);
    const domains = new Set(servers.map((server) => domainKey(
      { csId: server.id, host: server.failureDomainHost, rack: server.rack, tier, capacityBytes: 0, freeBytes: 0 }, this.config.failureDomain)));
    if (domains.size >= copies) return;
    throw new StorageError('ERR_NOT_ENOUGH_SERVERS',
      `tier ${tier} has ${servers.length} active chunk servers in ${domains.size} distinct ${this.config.failureDomain} failure domains, ` +
      `and ${what} keeps ${copies} copies: add servers to tier ${tier} first (shoal run cs --tier ${tier}, or shoal cs set-tier ID ${tier})`);
  }

  listVolumes(): VolumeInfo[] {
    const servers = this.store.tables.listChunkServers();
    return this.store.tables.listVolumes().map((volume) => this.volumeInfo(volume, servers));
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

  /**
   * Grows a volume and/or changes its limits. The limits reach the NBD server serving it within
   * one lease renewal (a quarter of the lease timeout), or QOS_REFRESH_MS for a read-only open.
   */
  async updateVolume(name: string, body: UpdateVolumeBody): Promise<VolumeInfo> {
    const before = this.volumeByName(name);
    const result = await this.store.submit({
      type: 'updateVolume', volumeId: before.id,
      ...(body.sizeBytes === undefined ? {} : { sizeBytes: body.sizeBytes }),
      ...(body.qos === undefined ? {} : { qos: body.qos }),
    });
    assert(result.type === 'volume', 'updateVolume yields a volume');
    const after = result.record;
    if (after.sizeBytes !== before.sizeBytes) this.log.info('volume resized', { name, fromBytes: before.sizeBytes, toBytes: after.sizeBytes });
    if (body.qos !== undefined) this.log.info('volume limits changed', { name, from: volumeQos(before), to: volumeQos(after) });
    return this.volumeInfo(after);
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

  private volumeInfo(volume: VolumeRecord, servers: readonly ChunkServerRecord[] = this.store.tables.listChunkServers()): VolumeInfo {
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
      qos: volumeQos(volume),
      tier: volumeTier(volume),
      misplacedReplicas: misplacedOfVolume(this.store.tables, volume, servers).replicaCount,
    };
  }

  // ---- clients: open, leases, chunk map ---------------------------------------------------------

  async openVolume(name: string, body: OpenVolumeBody, hypervisor: HypervisorRecord): Promise<OpenVolumeReply> {
    this.hypervisors.requireVolume(hypervisor, name);
    let volume = this.volumeByName(name);
    let lease: OpenVolumeReply['lease'] = null;
    if (body.mode === 'write') {
      // Epochs are final only once the servers' fences have been seen (see Cluster.awaitScans).
      await this.cluster.awaitScans(SCAN_WAIT_MS);
      volume = this.volumeByName(name);
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
        ...(body.cachedReads === true ? { cachedReads: true } : {}),
        ...(body.host === undefined ? {} : { host: body.host }),
        nowMs: this.clock.nowMs(),
      });
      assert(result.type === 'volume', 'acquireLease yields a volume');
      const previous = volume.lease;
      if (previous !== null) {
        this.leaseExpiryMs.delete(previous.leaseId);
        if (!expired) this.noteCachedHolderGone(volume.id, previous);
        this.log.warn('write lease taken over', { name, from: previous.holder, to: body.holder, expired, reclaimed });
      }
      volume = result.record;
      this.leaseExpiryMs.set(leaseId, this.clock.nowMs() + this.config.leaseTimeoutMs);
      // Every earlier writer is fenced before the new one writes: one whose lease is still on
      // record (expired, reclaimed or forced) may be alive, and one that released its lease may
      // still have requests on the way (a client's close does not wait for its requests, and a
      // network may hold them), which must not land under the new writer.
      try {
        await this.cluster.fenceVolume(volume);
      } catch (error) {
        await this.closeVolume(name, leaseId);
        throw error;
      }
      const holdWritesMs = Math.max(0, (this.cachedReadsUntilMs.get(volume.id) ?? 0) - this.clock.nowMs());
      if (holdWritesMs > 0) this.log.info('new writer holds its writes while the previous one\'s read cache may still answer', { name, holdWritesMs });
      lease = {
        leaseId,
        epoch: volume.epoch,
        renewIntervalMs: this.renewIntervalMs(),
        timeoutMs: this.config.leaseTimeoutMs,
        ...(holdWritesMs > 0 ? { holdWritesMs } : {}),
      };
    }
    const capability = this.hypervisors.issue(hypervisor, volume.id, lease === null ? 'read' : 'write', volume.epoch);
    // The chunk map is not part of the reply: the client loads it page by page (chunkMap).
    return { volume: this.volumeInfo(volume), lease, capability: capabilityReply(capability) };
  }

  /**
   * A fresh capability for a volume the hypervisor has open: for write with the lease it holds
   * (at the lease's epoch), else for read.
   */
  capabilityFor(name: string, hypervisor: HypervisorRecord, leaseId: string | undefined): CapabilityReply {
    this.hypervisors.requireVolume(hypervisor, name);
    const volume = this.volumeByName(name);
    if (leaseId === undefined) return capabilityReply(this.hypervisors.issue(hypervisor, volume.id, 'read', 0));
    this.requireLease(volume, leaseId);
    return capabilityReply(this.hypervisors.issue(hypervisor, volume.id, 'write', volume.epoch));
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
    if (volume.lease !== null) {
      if (!this.leaseExpired(volume.lease.leaseId)) this.noteCachedHolderGone(volume.id, volume.lease);
      this.leaseExpiryMs.delete(volume.lease.leaseId);
    }
    try {
      await this.cluster.fenceVolume(result.record);
    } finally {
      await this.store.submit({ type: 'releaseLease', volumeId: volume.id, leaseId });
    }
    this.log.warn('writer fenced by an admin', { name, previous: volume.lease?.holder ?? null, epoch: result.record.epoch });
    return this.getVolume(name);
  }

  private renewIntervalMs(): number {
    return Math.floor(this.config.leaseTimeoutMs / 4);
  }

  /** A live lease with a read cache was taken: its cache may answer for CACHE_TRUST_RENEWALS renewals more. */
  private noteCachedHolderGone(volumeId: number, previous: LeaseRecord): void {
    if (previous.cachedReads !== true) return;
    const untilMs = this.clock.nowMs() + Math.ceil(CACHE_TRUST_RENEWALS * this.renewIntervalMs());
    this.cachedReadsUntilMs.set(volumeId, Math.max(untilMs, this.cachedReadsUntilMs.get(volumeId) ?? 0));
    for (const [id, until] of this.cachedReadsUntilMs) if (until < this.clock.nowMs()) this.cachedReadsUntilMs.delete(id);
  }

  /** Extends the lease; answers with the volume's limits, which its writer applies (live changes). */
  renewLease(name: string, leaseId: string): VolumeQos {
    const volume = this.volumeByName(name);
    this.requireLease(volume, leaseId);
    this.leaseExpiryMs.set(leaseId, this.clock.nowMs() + this.config.leaseTimeoutMs);
    return volumeQos(volume);
  }

  // ---- I/O rates, for `shoal top` ---------------------------------------------------------------

  /** A chunk server's totals, from its heartbeat. */
  recordServerIo(csId: number, totals: IoTotals): void {
    const nowMs = this.clock.nowMs();
    this.serverIo.record(String(csId), csId, totals, nowMs);
    if (totals.journalCommits !== undefined && totals.journalCommitSeconds !== undefined) {
      this.cluster.sickDisks.record(csId, {
        commits: totals.journalCommits, commitSeconds: totals.journalCommitSeconds, reads: totals.readOps, readSeconds: totals.readSeconds,
        readBytes: totals.readBytes,
      }, nowMs);
    }
  }

  /** An NBD server's totals per volume; volumes it may not serve are left out (it reports what it was told to serve). */
  recordVolumeIo(hypervisor: HypervisorRecord, body: IoReportBody): void {
    const nowMs = this.clock.nowMs();
    for (const { name, hotChunks, ...totals } of body.volumes) {
      if (!this.hypervisors.mayServe(hypervisor, name)) continue;
      this.volumeIo.record(`${hypervisor.id}/${name}`, name, totals, nowMs);
      const id = this.store.tables.getVolumeIdByName(name);
      if (id !== undefined && hotChunks !== undefined && hotChunks.length > 0) this.cluster.hotChunks.record(id, hotChunks, nowMs);
    }
    if (body.readCache !== undefined) this.cluster.readCaches.record(hypervisor.name, body.readCache, nowMs);
  }

  /** Each volume's rates (all its NBD servers together) and each chunk server's, busiest first by IOPS. */
  ioStats(): IoStatsReply {
    const nowMs = this.clock.nowMs();
    const byVolume = new Map<string, IoRates[]>();
    for (const { key, rates } of this.volumeIo.current(nowMs)) byVolume.set(key, [...(byVolume.get(key) ?? []), rates]);
    const iops = (rates: IoRates): number => rates.readIops + rates.writeIops;
    const volumes = [...byVolume].map(([name, all]) => ({ name, servedBy: all.length, ...sumRates(all) }));
    const chunkServers = this.serverIo.current(nowMs).map(({ key, rates }) => ({ id: key, ...rates }));
    return { volumes: volumes.sort((a, b) => iops(b) - iops(a)), chunkServers: chunkServers.sort((a, b) => iops(b) - iops(a)) };
  }

  /** A volume's limits, for an NBD server that has it open read-only (no lease renewals to carry them). */
  volumeQosOf(name: string, hypervisor: HypervisorRecord): VolumeQos {
    this.hypervisors.requireVolume(hypervisor, name);
    return volumeQos(this.volumeByName(name));
  }

  async closeVolume(name: string, leaseId: string): Promise<void> {
    const volume = this.volumeByName(name);
    await this.store.submit({ type: 'releaseLease', volumeId: volume.id, leaseId });
    this.leaseExpiryMs.delete(leaseId);
  }

  /**
   * The allocated chunks with indexes in [fromIndex, endIndex), where endIndex is at most
   * fromIndex + count, at most CHUNK_MAP_PAGE_CHUNKS past fromIndex and at most the volume's end:
   * each reply is small and quick to build, whatever the volume's size.
   */
  chunkMap(name: string, fromIndex: number, count: number): ChunkMapReply {
    const volume = this.volumeByName(name);
    assert(Number.isSafeInteger(fromIndex) && fromIndex >= 0 && Number.isSafeInteger(count) && count >= 1, 'a checked query');
    const endIndex = Math.max(fromIndex, Math.min(fromIndex + Math.min(count, CHUNK_MAP_PAGE_CHUNKS), this.chunkCountMax(volume)));
    // At most one record per index: the listing reads no more records than the range holds.
    const records = endIndex === fromIndex ? [] : this.store.tables.listChunks(volume.id, fromIndex, endIndex - fromIndex);
    const chunks = records.filter((chunk) => chunk.chunkIndex < endIndex).map((chunk) => this.chunkMapEntry(chunk));
    assert(chunks.length <= CHUNK_MAP_PAGE_CHUNKS, 'a chunk-map reply is one page at most');
    return { chunks, endIndex };
  }

  /** Returns the chunk's map entry, allocating and placing it first if it was never written. */
  async allocateChunk(name: string, chunkIndex: number, leaseId: string, writerHost: string | null = null): Promise<ChunkMapEntry> {
    const volume = this.volumeByName(name);
    this.requireLease(volume, leaseId);
    if (chunkIndex >= this.chunkCountMax(volume)) {
      throw new StorageError('ERR_OUT_OF_RANGE', `chunk ${chunkIndex} is past the end of volume "${name}"`);
    }
    const existing = this.store.tables.getChunk(volume.id, chunkIndex);
    if (existing !== undefined) return this.chunkMapEntry(existing);
    if (this.cluster.quarantine.newerReplicaAt(volume.id, chunkIndex)) {
      // A new, empty chunk here would shadow data the map lost: it is being taken back first.
      throw new StorageError(
        'ERR_UNAVAILABLE',
        `chunk ${chunkIndex} of volume "${name}" has data on chunk servers that the map lacks (its database is older than the cluster); ` +
          'it is being taken back into the map (shoal mds rebuild): retry',
      );
    }
    const key = `${volume.id}:${chunkIndex}`;
    let allocation = this.allocations.get(key);
    if (allocation === undefined) {
      allocation = this.placeChunk(volume, chunkIndex, writerHost).finally(() => this.allocations.delete(key));
      this.allocations.set(key, allocation);
    }
    return allocation;
  }

  private async placeChunk(volume: VolumeRecord, chunkIndex: number, writerHost: string | null): Promise<ChunkMapEntry> {
    const chunkId = await this.takeChunkId();
    this.cluster.allocating.add(chunkId);
    try {
      return await this.placeChunkWithId(volume, chunkIndex, chunkId, writerHost);
    } finally {
      this.cluster.allocating.delete(chunkId);
    }
  }

  private async placeChunkWithId(volume: VolumeRecord, chunkIndex: number, chunkId: number, writerHost: string | null): Promise<ChunkMapEntry> {
    // The first replica is the primary, which takes the writer's changes: on the writer's own
    // host, a write's first hop never leaves it (placement.ts puts a local server first).
    const replicas = chooseReplicas(
      this.cluster.placementCandidates(),
      {
        count: volume.replicasNormal,
        minimum: volume.replicasMin,
        chunkSizeBytes: volume.chunkSizeBytes,
        failureDomain: this.config.failureDomain,
        exclude: [],
        tier: volumeTier(volume),
        ...(writerHost === null ? {} : { preferHost: writerHost }),
      },
      this.random,
    );
    const identity = { chunkId, volumeId: volume.id, chunkIndex, sizeBytes: volume.chunkSizeBytes, volume: describeVolume(volume) };
    const results = await Promise.allSettled(replicas.map((csId) => this.cluster.io.createChunk(csId, identity, 1)));
    // A server that fails now (frozen, just died) is left out; recovery adds a replica later. It is
    // passed over for new chunks for a while: as the writer's local server it would come first again.
    const created = replicas.filter((_, index) => results[index]?.status === 'fulfilled');
    for (const csId of replicas.filter((_, index) => results[index]?.status === 'rejected')) this.cluster.registry.markSuspect(csId, this.clock.nowMs());
    if (created.length < volume.replicasMin) {
      const reasons = results.flatMap((r) => (r.status === 'rejected' ? [(r.reason as Error).message] : []));
      throw new StorageError('ERR_UNAVAILABLE', `could not create chunk ${chunkIndex} of "${volume.name}" on enough servers: ${reasons.join('; ')}`);
    }
    const result = await this.store.submit({ type: 'allocateChunk', volumeId: volume.id, chunkIndex, chunkId, replicas: created });
    assert(result.type === 'chunk', 'allocateChunk yields a chunk');
    return this.chunkMapEntry(result.record);
  }

  private async takeChunkId(): Promise<number> {
    // Ids found on chunk servers since this block was reserved are never reused.
    this.chunkIds.next = Math.max(this.chunkIds.next, this.store.tables.getMeta('chunkIdFloor'));
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
    const replicas = chunk.replicas.map((csId) => {
      const server = this.store.tables.getChunkServer(csId);
      assert(server !== undefined, 'chunk replicas reference registered servers');
      return { csId, host: server.host, port: server.port, hostLabel: server.failureDomainHost };
    });
    const ticket = chunkTicket(this.capabilityKey, chunk.chunkId, chunk.version, chunk.volumeId, replicas).toString('hex');
    return {
      chunkIndex: chunk.chunkIndex, chunkId: chunk.chunkId, version: chunk.version, replicas, ticket,
      ...((chunk.inDoubt ?? []).length > 0 ? { inDoubt: true } : {}),
    };
  }

  // ---- failures, repairs, recovery ----------------------------------------------------------------

  /** One chunk's current map entry, after any replica-set change in progress on it has finished. */
  async getChunk(name: string, chunkIndex: number): Promise<ChunkMapEntry> {
    const volume = this.volumeByName(name);
    const chunk = this.store.tables.getChunk(volume.id, chunkIndex);
    if (chunk === undefined) throw new StorageError('ERR_NOT_FOUND', `chunk ${chunkIndex} of volume "${name}" was never written`);
    await this.cluster.replicator.idle(chunk.chunkId);
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
    const before = this.store.tables.getChunk(volume.id, chunkIndex);
    if (before === undefined) throw new StorageError('ERR_NOT_FOUND', `chunk ${chunkIndex} of volume "${name}" was never written`);
    // A change of the set in progress (its seal may be what the members refused) finishes first.
    await this.cluster.replicator.idle(before.chunkId);
    const chunk = this.store.tables.getChunk(volume.id, chunkIndex);
    assert(chunk !== undefined, 'an allocated chunk stays until its volume is deleted');
    let record: ChunkRecord;
    if (report.failedCsIds.length > 0 && report.version < chunk.version) {
      // The set changed under a newer version since the write was sent (a member moved: a drain,
      // a tier move, a primary following its writer): the members refused a stale write, which
      // says nothing of their health. The writer gets the current entry and tries again.
      record = chunk;
    } else if (report.failedCsIds.length === 0) {
      record = await this.cluster.replicator.reconcileVersion(volume.id, chunkIndex);
    } else {
      this.log.warn('write failed on replicas; they leave the set', {
        volume: name, chunkIndex, failed: report.failedCsIds, version: report.version, reason: report.reason,
      });
      for (const csId of report.failedCsIds) this.cluster.registry.markSuspect(csId, this.clock.nowMs());
      record = await this.cluster.replicator.drop(volume.id, chunkIndex, report.failedCsIds, {
        expectedVersion: report.version,
        inDoubt: { offsetBytes: report.offsetBytes, lengthBytes: report.lengthBytes },
        reason: 'write failed on these members',
      });
    }
    this.cluster.recovery.tick();
    return this.chunkMapEntry(record);
  }

  /** The volumes this hypervisor may serve. */
  exportNames(hypervisor: HypervisorRecord): string[] {
    return this.store.tables.listVolumes().map((v) => v.name).filter((name) => this.hypervisors.mayServe(hypervisor, name));
  }
}

function capabilityReply(grant: CapabilityGrant): CapabilityReply {
  return {
    capability: grant.encoded.toString('hex'),
    sessionKey: grant.sessionKey.toString('hex'),
    expiresAt: new Date(grant.capability.expiresAtMs).toISOString(),
  };
}
