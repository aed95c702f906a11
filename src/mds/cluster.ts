// The cluster as the MDS sees it: chunk servers (registration, heartbeats, liveness, space,
// admin state), the cluster-wide stat, and everything that moves replicas between servers:
// placement candidates, the replicator and the recovery scheduler, repairs of bad blocks,
// fencing of old writers on every server, and the background removal of replicas that left their
// sets. At each server's registration (and its first heartbeat to a restarted MDS) what it holds
// is compared with the map: versions reconciled, older copies queued for deletion, the rest
// quarantined (quarantine.ts), epochs and generations caught up with what the servers saw, and
// what the map lost taken back (rebuild.ts). The volume side of the MDS (service.ts) uses it; the
// REST routes reach it as `service.cluster`.

import { tmpdir } from 'node:os';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { StorageError } from '../errors.ts';
import type {
  RebuildReply,
  BadBlocksBody,
  PartialWriteBody,
  ChunkServerInfo,
  ClusterStat,
  HeartbeatBody,
  RegisterChunkServerBody,
  RegisterChunkServerReply,
  TierStat,
} from '../protocol/api.ts';
import type { CsConnectionPool } from '../protocol/cs_connection.ts';
import type { ChunkListEntry } from '../protocol/cs_messages.ts';
import { assert } from '../util/assert.ts';
import type { Clock } from '../util/clock.ts';
import type { Logger } from '../util/log.ts';
import { RateLimiter } from '../util/rate_limiter.ts';
import { ChunkServerRegistry } from './cs_registry.ts';
import { lostRange, newerThanMapTest, proposedGeneration } from './generations.ts';
import { planRebuild, type ServerHoldings } from './rebuild.ts';
import { takeBackup, type TakenBackup } from './backup.ts';
import { Quarantine } from './quarantine.ts';
import { volumeTier, type ChunkServerAdminState, type ChunkServerRecord, type PendingDeleteRecord, type QuarantineRecord, type VolumeRecord } from './model.ts';
import type { PlacementCandidate } from './placement.ts';
import type { PlannerChunk, PlannerServer, RebalanceJudgement } from './recovery.ts';
import { RecoveryScheduler, type RecoveryView } from './recovery_scheduler.ts';
import { chunkHealth, chunksOnServer, plannerChunk, recoveryWindow, WINDOW_START, type ChunkHealth, type WindowCursor } from './map_scans.ts';
import { MARK_IN_DOUBT_SLICE_CHUNKS } from './ops.ts';
import { rebalanceModeOf, tierMovesHeld } from './tasks.ts';
import { isMisplaced, misplacedOnServer, misplacedPairs, tierReplicas } from './tiers.ts';
import { SICK_DISK_DEFAULTS, SickDisks } from './sick_disks.ts';
import { ReadCacheReports } from './read_cache_reports.ts';
import { HotChunks } from './hot_chunks.ts';
import { revocationsOf } from './hypervisors.ts';
import { CsReplicaIo, type ReplicaIo } from './replica_io.ts';
import { Replicator } from './replicator.ts';
import type { MdsConfig } from './config.ts';
import type { MdsStore } from './store.ts';

const MiB = 1024 * 1024;
/** Bytes of one COPY_RANGE request during a bulk copy (paced by the rate limit). */
const COPY_STEP_BYTES = 8 * MiB;
const DELETE_BATCH_MAX = 256;
/** Members are given up only while at least half the active servers are online (see recovery.ts). */
const REPLACE_QUORUM_FRACTION = 0.5;

/** After replicas newer than the map are found, the rebuild waits this long for other servers' scans. */
const AUTO_REBUILD_DELAY_MS = 3_000;
/**
 * Longest a fence waits for chunk servers it could not reach to be away long enough to have
 * stopped writing by themselves: above what that takes at the defaults (a heartbeat timeout plus
 * half of it, see awayInMs), so an open with a frozen server waits rather than fails.
 */
const FENCE_WAIT_MS_MAX = 10_000;
/** How often a waiting fence looks again (and tries the servers that are online again). */
const FENCE_RETRY_MS = 250;

/**
 * Chunks the planner looks at per tick at most (see map_scans.ts): reading and planning them
 * takes tens of milliseconds, so the MDS keeps answering while a server holding a million
 * replicas is away.
 */
const RECOVERY_WINDOW_CHUNKS_MAX = 4_096;
/** Hot chunks the planner considers for following their writer per tick at most. */
const FOLLOW_CHUNKS_MAX = 256;
/** Chunks of the fullest server looked at per tick for a rebalancing move at most. */
const REBALANCE_LOOK_CHUNKS_MAX = 4_096;
/** Records the stat's health count reads per event-loop turn. */
const HEALTH_SLICE_RECORDS = 2_048;
/** Replicas a registration compares with the map per event-loop turn. */
const RECONCILE_SLICE_REPLICAS = 2_048;


/** See Cluster.rebalanceStatus. */
export interface RebalanceStatus {
  /** Null until the planner has run once. */
  readonly judgement: RebalanceJudgement | null;
  /** Rebalancing moves under way (their commits count them for the task). */
  readonly movesInFlight: number;
  /** Mean bytes per replica the map places: turns bytes left to move into replicas. */
  readonly averageReplicaBytes: number;
}

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
  /** The MDS's data directory: backups are staged there (default: the system's temporary folder). */
  readonly dataDir?: string;
  /** capabilityKey(clusterKey): tags capabilities and chunk tickets (default: a random key, for simulations). */
  readonly capabilityKey?: Buffer;
}

export class Cluster {
  readonly registry: ChunkServerRegistry;
  readonly io: ReplicaIo;
  readonly replicator: Replicator;
  /** Replicas the map does not count on, kept aside (see quarantine.ts). */
  readonly quarantine: Quarantine;
  readonly recovery: RecoveryScheduler;
  readonly recoveryLimiter: RateLimiter;
  private readonly store: MdsStore;
  private readonly config: MdsConfig;
  private readonly clock: Clock;
  private readonly log: Logger;
  readonly clusterId: string;
  readonly dataDir: string;
  /** Chunk ids being allocated (created on servers, not yet in the map): not leftovers. */
  readonly allocating = new Set<number>();
  /** The latest comparison of each server's replicas with the map, since this MDS started. */
  private readonly scans = new Map<number, Promise<void>>();
  /** Chunks whose members' versions differ from the map's, waiting for their members (bounded by the map). */
  private readonly versionMismatches = new Map<string, { volumeId: number; chunkIndex: number }>();
  private reconciling = false;
  /** Where the next recovery window starts (see map_scans.ts). */
  private recoveryCursor: WindowCursor = WINDOW_START;
  /** The chunk health count in progress: concurrent stat requests share it. */
  private healthCount: Promise<ChunkHealth> | null = null;
  /** Per server, the marking of its chunks in doubt in progress (each pass waits for the one before). */
  private readonly markingInDoubt = new Map<number, Promise<void>>();
  /** Servers whose maintenance window ran out while away, warned about (once per window). */
  private readonly maintenanceWarned = new Set<number>();
  /** A rebuild scheduled after replicas newer than the map were found (debounced). */
  private autoRebuild: NodeJS.Timeout | null = null;
  /** Disks far slower than their peers' (sick_disks.ts): reads and new chunks avoid them. */
  readonly sickDisks: SickDisks;
  /** The hypervisors' read caches, as they report them. */
  readonly readCaches = new ReadCacheReports<string>();
  /** The chunk servers' read caches, from their heartbeats. */
  readonly chunkServerReadCaches = new ReadCacheReports<number>();
  /** Each volume's hot chunks, as its writer's NBD server reports them: they follow the writer's host. */
  readonly hotChunks = new HotChunks();

  constructor(deps: ClusterDeps) {
    this.clusterId = deps.clusterId;
    this.dataDir = deps.dataDir ?? tmpdir();
    this.store = deps.store;
    this.config = deps.config;
    this.clock = deps.clock;
    this.log = deps.log;
    this.registry = new ChunkServerRegistry(deps.config.heartbeatTimeoutMs, this.clock.nowMs());
    this.sickDisks = new SickDisks({ ...SICK_DISK_DEFAULTS, factor: deps.config.sickLatencyFactor, sickAfterMs: deps.config.sickAfterMs });
    this.io = deps.io ?? new CsReplicaIo(deps.pool, deps.bulkPool ?? deps.pool, (csId) => this.serverAddress(csId),
      () => proposedGeneration(this.store.tables));
    this.recoveryLimiter = new RateLimiter(deps.config.recoveryBytesPerSecond, this.clock, (ms) => new Promise((resolve) => setTimeout(resolve, ms)));
    this.replicator = new Replicator({
      store: this.store,
      io: this.io,
      log: this.log,
      isUsable: (csId) => this.isUsable(csId),
      pace: (bytes) => this.recoveryLimiter.take(bytes),
      copyStepBytes: COPY_STEP_BYTES,
    });
    this.quarantine = new Quarantine({ store: this.store, graceMs: deps.config.quarantineGraceMs, clock: this.clock, log: this.log });
    this.recovery = new RecoveryScheduler({
      replicator: this.replicator,
      log: this.log,
      random: deps.random,
      concurrency: deps.config.recoveryConcurrency,
      planner: {
        replaceAfterMs: deps.config.replaceAfterMs,
        replaceEndangeredAfterMs: deps.config.replaceEndangeredAfterMs,
        replaceQuorumFraction: REPLACE_QUORUM_FRACTION,
        failureDomain: deps.config.failureDomain,
        actionsMax: 256,
      },
      view: () => this.recoveryView(),
      nowMs: () => this.clock.nowMs(),
      localityBytesPerSecond: deps.config.localityBytesPerSecond,
      stillMisplaced: (volumeId, csId) => {
        const volume = this.store.tables.getVolume(volumeId);
        const server = this.store.tables.getChunkServer(csId);
        return volume !== undefined && server !== undefined && isMisplaced(volume, server.tier);
      },
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
    if (result.record.tier !== body.tier) {
      this.log.warn('chunk server started with another --tier than an admin set (shoal cs set-tier): it keeps the admin\'s', {
        csId: result.record.id, tier: result.record.tier, flagTier: body.tier,
      });
    }
    // A server that stopped uncleanly may have died while forwarding a write whose writer died too:
    // its chunks are compared with their other members (checksums only; differing blocks copied)
    // once they are all online. After a clean stop there is nothing to compare: a restart of the
    // whole cluster must not turn into a storm of comparisons and copies.
    if (body.divergencePossible !== false) await this.markServerChunksInDoubt(result.record.id);
    this.registry.heartbeat(result.record.id, body, this.clock.nowMs());
    this.log.info('chunk server registered', { csId: result.record.id, host: body.host, port: body.port });
    this.recovery.tick();
    // What the server holds is compared with the map in the background.
    this.startScan(result.record.id);
    return {
      clusterId: this.clusterId,
      csId: result.record.id,
      heartbeatIntervalMs: this.config.heartbeatIntervalMs,
      heartbeatTimeoutMs: this.config.heartbeatTimeoutMs,
      fences: this.store.tables.listVolumes().map((volume) => ({ volumeId: volume.id, epoch: volume.epoch })),
      revocations: revocationsOf(this.store.tables),
    };
  }

  async heartbeat(body: HeartbeatBody): Promise<void> {
    const server = this.store.tables.getChunkServer(body.csId);
    if (server === undefined || server.uuid !== body.uuid) {
      throw new StorageError('ERR_NOT_FOUND', `chunk server ${body.csId} (${body.uuid}) is not registered; register again`);
    }
    // A forwarded write it could not report: its members may differ, compare them (once).
    if (body.divergencePossible === true) await this.markServerChunksInDoubt(body.csId);
    this.registry.heartbeat(body.csId, body, this.clock.nowMs());
    if (body.readCache !== undefined) this.chunkServerReadCaches.record(body.csId, body.readCache, this.clock.nowMs());
    // A server this MDS has not heard from since it started (an MDS restart, perhaps onto an
    // older database) is compared with the map as on a registration.
    if (!this.scans.has(body.csId)) this.startScan(body.csId);
  }

  /**
   * Puts every chunk `csId` is a member of in doubt, in bounded ops (one commit each, the MDS
   * answering between them). Resolves once all are durable: the server is told only then, and
   * asks again after an MDS crash half-way. A pass asked for during another runs after it.
   */
  private markServerChunksInDoubt(csId: number): Promise<void> {
    const previous = this.markingInDoubt.get(csId) ?? Promise.resolve();
    const pass = previous.catch(() => undefined).then(async () => {
      let after: { volumeId: number; chunkIndex: number } | undefined;
      for (;;) {
        const result = await this.store.submit({
          type: 'markServerChunksInDoubt', csId, limit: MARK_IN_DOUBT_SLICE_CHUNKS, ...(after === undefined ? {} : { after }),
        });
        assert(result.type === 'cursor', 'markServerChunksInDoubt yields a cursor');
        if (result.next === null) return;
        after = result.next;
      }
    });
    this.markingInDoubt.set(csId, pass);
    const forget = (): void => {
      if (this.markingInDoubt.get(csId) === pass) this.markingInDoubt.delete(csId);
    };
    pass.then(forget, forget);
    return pass;
  }

  /**
   * Compares what a server holds with the map, in the background (see reconcileHeld). One per
   * server per registration; a write open waits for the scans of the online servers (awaitScans),
   * so that epochs the map lost are known before a new writer gets one.
   */
  private startScan(csId: number): void {
    const scan = this.reconcileHeld(csId);
    this.scans.set(csId, scan);
  }

  /**
   * Resolves once every online server has been compared with the map since this MDS started (or
   * after `timeoutMs`): a volume's epoch may lag the fences servers hold when the database is
   * older than the cluster, and a writer given a lagging epoch would be refused as a stale one.
   */
  async awaitScans(timeoutMs: number): Promise<void> {
    const nowMs = this.clock.nowMs();
    const pending = this.store.tables.listChunkServers()
      .filter((server) => this.registry.isOnline(server.id, nowMs))
      .map((server) => this.scans.get(server.id))
      .filter((scan): scan is Promise<void> => scan !== undefined);
    if (pending.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(pending),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
  }

  placementCandidates(): PlacementCandidate[] {
    const nowMs = this.clock.nowMs();
    const candidates: PlacementCandidate[] = [];
    for (const server of this.store.tables.listChunkServers()) {
      const report = this.registry.report(server.id);
      if (server.adminState !== 'active' || report === undefined || !report.healthy) continue;
      if (!this.registry.isOnline(server.id, nowMs) || this.registry.isSuspect(server.id, nowMs)) continue;
      // Going down for maintenance, or down: new chunks would start below their replica count.
      if ((server.maintenanceUntilMs ?? 0) > nowMs) continue;
      candidates.push({
        csId: server.id,
        host: server.failureDomainHost,
        rack: server.rack,
        tier: server.tier,
        capacityBytes: report.capacityBytes,
        freeBytes: report.freeBytes,
        // Ill: chosen only when no other server will do.
        avoid: this.sickDisks.illness(server.id) !== undefined,
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
    const tables = this.store.tables;
    const volumes = new Map(tables.listVolumes().map((volume) => [volume.id, volume]));
    // Counted with the records (store.ts): no walk of the map.
    return tables.listChunkServers().map((server) => this.chunkServerInfo(server, tables.serverMapped(server.id).replicaCount,
      misplacedOnServer(tables, server, volumes).replicaCount));
  }

  private chunkServerInfo(server: ChunkServerRecord, mappedReplicaCount: number, misplacedReplicas: number): ChunkServerInfo {
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
      misplacedReplicas,
      lastHeartbeatAgeMs: this.registry.heartbeatAgeMs(server.id, nowMs),
      registeredAt: new Date(server.registeredAtMs).toISOString(),
      maintenance: this.maintenanceInfo(server, nowMs),
      ill: this.illInfo(server.id),
    };
  }

  private illInfo(csId: number): ChunkServerInfo['ill'] {
    const illness = this.sickDisks.illness(csId);
    return illness === undefined ? null : { since: new Date(illness.sinceMs).toISOString(), reason: illness.reason };
  }

  /** Judges the servers' disks against their peers' (every tick), logging who falls ill or recovers. */
  private judgeDisks(nowMs: number): void {
    const records = this.store.tables.listChunkServers();
    for (const server of records) if (server.adminState === 'removed') this.sickDisks.forget(server.id);
    const servers = records.filter((server) => server.adminState !== 'removed')
      .map((server) => ({ csId: server.id, tier: server.tier, online: this.registry.isOnline(server.id, nowMs) }));
    for (const event of this.sickDisks.judge(servers, nowMs)) {
      if (event.kind === 'ill') {
        this.log.warn('chunk server marked ill: its disk is far slower than its peers\'; reads and new chunks avoid it (replace the disk?)', {
          csId: event.csId, reason: event.reason,
        });
      } else {
        this.log.info('chunk server recovered: its disk keeps pace with its peers\' again', { csId: event.csId });
      }
    }
  }

  /**
   * A maintenance window: 'window' until it ends, then 'grace' for --replace-after-ms (the
   * server's replicas are still not replaced, and the admin is warned), then null.
   */
  maintenancePhase(server: ChunkServerRecord, nowMs: number): 'window' | 'grace' | null {
    const untilMs = server.maintenanceUntilMs ?? null;
    if (untilMs === null || server.adminState === 'removed') return null;
    if (nowMs < untilMs) return 'window';
    return nowMs < untilMs + this.config.replaceAfterMs ? 'grace' : null;
  }

  private maintenanceInfo(server: ChunkServerRecord, nowMs: number): ChunkServerInfo['maintenance'] {
    const untilMs = server.maintenanceUntilMs ?? null;
    if (untilMs === null || server.adminState === 'removed') return null;
    return {
      until: new Date(untilMs).toISOString(),
      phase: this.maintenancePhase(server, nowMs) ?? 'over',
      replicasReplacedFrom: new Date(untilMs + this.config.replaceAfterMs).toISOString(),
    };
  }

  /**
   * Starts, extends or shortens a maintenance window of `forMs` from now, or ends it (null): while
   * it lasts the server may be away without its replicas being replaced (writes go on with the
   * other replicas; the server catches up on what changed when it returns), and it takes no new
   * chunks.
   */
  async setMaintenance(csId: number, forMs: number | null): Promise<ChunkServerInfo> {
    const nowMs = this.clock.nowMs();
    const untilMs = forMs === null ? null : nowMs + forMs;
    const result = await this.store.submit({ type: 'setMaintenance', csId, untilMs, nowMs });
    assert(result.type === 'chunkServer', 'setMaintenance yields a server');
    this.maintenanceWarned.delete(csId);
    this.log.info(untilMs === null ? 'maintenance ended' : 'maintenance window set', {
      csId, until: untilMs === null ? null : new Date(untilMs).toISOString(),
    });
    this.recovery.tick();
    return this.serverInfo(csId);
  }

  /** Warns once per window when one runs out with its server still away (called every tick). */
  private warnMaintenanceOverruns(nowMs: number): void {
    for (const server of this.store.tables.listChunkServers()) {
      if (this.maintenancePhase(server, nowMs) !== 'grace' || this.registry.isOnline(server.id, nowMs)) continue;
      if (this.maintenanceWarned.has(server.id)) continue;
      this.maintenanceWarned.add(server.id);
      const replaceAtMs = (server.maintenanceUntilMs ?? nowMs) + this.config.replaceAfterMs;
      this.log.warn('maintenance window ran out with the chunk server away: its replicas are replaced once the grace ends, ' +
        'unless it returns or the window is extended (shoal cs maintenance ID --for DURATION)', {
        csId: server.id, replaceAt: new Date(replaceAtMs).toISOString(), inSeconds: Math.ceil((replaceAtMs - nowMs) / 1000),
      });
    }
  }

  // ---- cluster-wide -------------------------------------------------------------------------------

  async stat(): Promise<ClusterStat> {
    // Removed servers are history: listed, but not counted in the cluster's totals.
    const listed = this.listChunkServers();
    const servers = listed.filter((s) => s.adminState !== 'removed');
    const online = servers.filter((s) => s.state === 'online');
    const volumes = this.store.tables.listVolumes();
    const { total, byState } = await this.chunkHealth();
    return {
      chunkServers: { total: servers.length, online: online.length, offline: servers.length - online.length },
      recovery: {
        running: this.recovery.stats.running,
        pending: this.recovery.stats.pending,
        blocked: this.recovery.stats.blocked,
        waiting: this.recovery.stats.waiting,
        misplacedStuck: this.recovery.stats.misplacedStuck,
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
      tiers: this.tierStats(servers, volumes),
      readCaches: this.readCaches.current(this.clock.nowMs()).map(({ source, totals, hitRatio }) => ({ hypervisor: source, ...totals, hitRatio })),
      chunkServerReadCaches: this.chunkServerReadCaches.current(this.clock.nowMs()).map(({ source, totals, hitRatio }) => ({ csId: source, ...totals, hitRatio })),
      volumes: { count: volumes.length, sizeBytes: sum(volumes.map((v) => v.sizeBytes)) },
      chunks: { total, byState },
      quarantine: this.quarantine.summary(),
      servers: listed,
    };
  }

  /** Space and replicas per tier (the tiers that have servers, volumes or replicas). */
  private tierStats(servers: readonly ChunkServerInfo[], volumes: readonly VolumeRecord[]): TierStat[] {
    const tables = this.store.tables;
    const replicas = tierReplicas(tables, tables.listChunkServers(), new Map(volumes.map((volume) => [volume.id, volume])));
    return replicas.map((counts) => {
      const inTier = servers.filter((server) => server.tier === counts.tier);
      const online = inTier.filter((server) => server.state === 'online');
      return {
        ...counts,
        servers: inTier.length,
        online: online.length,
        capacityBytes: sum(online.map((s) => s.capacityBytes)),
        usedBytes: sum(online.map((s) => s.usedBytes)),
        freeBytes: sum(online.map((s) => s.freeBytes)),
        volumes: volumes.filter((volume) => volumeTier(volume) === counts.tier).length,
      };
    }).filter((tier) => tier.servers > 0 || tier.volumes > 0 || tier.replicas > 0);
  }

  /**
   * Chunks by health, read in slices (map_scans.ts): only chunks in the attention set or on an
   * offline server can be anything but healthy. Concurrent callers share one count.
   */
  private chunkHealth(): Promise<ChunkHealth> {
    if (this.healthCount !== null) return this.healthCount;
    const nowMs = this.clock.nowMs();
    const isOnline = (csId: number): boolean => this.registry.isOnline(csId, nowMs);
    const offline = this.store.tables.listChunkServers().map((server) => server.id).filter((csId) => !isOnline(csId));
    const volumes = new Map(this.store.tables.listVolumes().map((volume) => [volume.id, volume]));
    const count = chunkHealth(this.store.tables, volumes, offline, isOnline, HEALTH_SLICE_RECORDS);
    this.healthCount = count;
    const forget = (): void => {
      this.healthCount = null;
    };
    count.then(forget, forget);
    return count;
  }

  // ---- backups ------------------------------------------------------------------------------------

  /** A consistent copy of the database, staged in the data directory (the caller streams and discards it). */
  backup(): Promise<TakenBackup> {
    return takeBackup(this.store, this.clusterId, this.dataDir, this.clock.nowMs());
  }

  // ---- rebuilding the map from the chunk servers -----------------------------------------------------

  /**
   * Takes back into the map what the online chunk servers hold and the map lacks (see
   * rebuild.ts): after the MDS's database was lost, or restored from a copy older than the
   * cluster. Servers that are offline are not asked: run it again once they are back.
   */
  async rebuild(): Promise<RebuildReply> {
    const nowMs = this.clock.nowMs();
    const servers = this.store.tables.listChunkServers().filter((server) => server.adminState !== 'removed');
    const online = servers.filter((server) => this.registry.isOnline(server.id, nowMs));
    const holdings: ServerHoldings[] = [];
    const unreachable: number[] = servers.filter((server) => !online.includes(server)).map((server) => server.id);
    for (const server of online) {
      try {
        holdings.push({ csId: server.id, chunks: await this.io.listChunks(server.id), volumes: await this.io.listVolumes(server.id) });
      } catch (error) {
        this.log.warn('rebuild could not list a chunk server\'s replicas', { csId: server.id, error });
        unreachable.push(server.id);
      }
    }
    const plan = planRebuild(this.store.tables, holdings, nowMs);
    for (const op of plan.ops) await this.store.submit(op);
    this.log.warn('chunk map rebuilt from the chunk servers', {
      volumes: plan.volumesAdopted, chunks: plan.chunksAdopted, conflicts: plan.conflicts, unreachable,
    });
    this.recovery.tick();
    return {
      serversAsked: holdings.length,
      serversUnreachable: unreachable.sort((a, b) => a - b),
      volumesAdopted: plan.volumesAdopted,
      chunksAdopted: plan.chunksAdopted,
      conflicts: plan.conflicts,
    };
  }

  // ---- background: replicas of deleted chunks ----------------------------------------------------

  /** Removes queued replicas of deleted chunks from online servers. Called periodically. */
  async sweepDeletedReplicas(): Promise<number> {
    await this.quarantine.expire();
    const nowMs = this.clock.nowMs();
    let removed = 0;
    for (const pending of this.store.tables.listPendingDeletes(DELETE_BATCH_MAX)) {
      const degraded = this.degradedChunk(pending);
      for (const csId of pending.csIds) {
        // The list was read before the deletes above were awaited: a copy that has become a member
        // again since (an older copy brought up to date) has left the queue, and is never deleted.
        if (this.store.tables.getPendingDelete(pending.chunkId)?.csIds.includes(csId) !== true) continue;
        if (!this.registry.isOnline(csId, nowMs)) continue;
        if (this.replicator.isFilling(pending.chunkId, csId)) continue;
        // An older copy of a chunk that lacks members is what makes bringing it back cheap.
        if (degraded && this.store.tables.getChunkServer(csId)?.adminState === 'active') continue;
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

  /** The chunk a left member's copy belongs to still exists and has fewer members than normal. */
  private degradedChunk(pending: PendingDeleteRecord): boolean {
    if (pending.volumeId === undefined || pending.chunkIndex === undefined) return false;
    const chunk = this.store.tables.getChunk(pending.volumeId, pending.chunkIndex);
    const volume = this.store.tables.getVolume(pending.volumeId);
    return chunk !== undefined && volume !== undefined && chunk.chunkId === pending.chunkId && chunk.replicas.length < volume.replicasNormal;
  }

  /**
   * Compares the replicas a server holds with the map, and never deletes on sight what the map
   * does not know, since the map itself may be the one that lost something (a database restored
   * from an old copy, or rebuilt):
   * - a member at another version than the map: versions are reconciled from the newest member;
   * - an older copy of a known chunk on a server that is not a member: queued for deletion (kept
   *   while the chunk lacks members: it is cheap to bring back);
   * - a copy of a known chunk ahead of the map's version, or a replica of a chunk the map does not
   *   know: quarantined (shown in stat; deleted on an admin's word, or after the grace period
   *   unless it was made by an MDS state newer than this map).
   * A server holding replicas above the map's generation shows that the map was rolled back: the
   * lost range is recorded first, so that every such replica counts as newer from then on.
   */
  private async reconcileHeld(csId: number): Promise<void> {
    try {
      await this.catchUpEpochs(csId);
      const held = await this.io.listChunks(csId);
      await this.noteLostGenerations(csId, held);
      // Chunk ids on the server beyond the map's counter (its database is older): never reused.
      const highestChunkId = held.reduce((max, replica) => Math.max(max, replica.chunkId), 0);
      if (highestChunkId >= this.store.tables.getMeta('nextChunkId')) {
        await this.store.submit({ type: 'reserveChunkIdsAbove', chunkId: highestChunkId });
      }
      const tables = this.store.tables;
      const olderCopies: Array<{ chunkId: number; csId: number; volumeId: number; chunkIndex: number }> = [];
      const quarantine: Array<Omit<QuarantineRecord, 'sinceMs'>> = [];
      const versionMismatches: Array<{ volumeId: number; chunkIndex: number }> = [];
      const isNewerThanMap = newerThanMapTest(tables);
      for (const [position, replica] of held.entries()) {
        // A server may hold a million replicas: the MDS answers between slices of them.
        if (position > 0 && position % RECONCILE_SLICE_REPLICAS === 0) await nextTurn();
        const { chunkId, version } = replica;
        if (this.allocating.has(chunkId) || this.replicator.isFilling(chunkId, csId)) continue;
        const chunk = tables.getChunkById(chunkId);
        const newerThanMap = isNewerThanMap(replica.generation);
        const aside = (reason: string, newer: boolean): void => {
          quarantine.push({ ...replica, csId, newerThanMap: newer, reason });
        };
        if (chunk === undefined) {
          // A deleted volume's replica whose removal is queued goes as planned.
          if (tables.getPendingDelete(chunkId)?.csIds.includes(csId) === true && !newerThanMap) continue;
          aside(newerThanMap ? 'made by an MDS state newer than this map' : 'not in the map (a crashed allocation, or a deleted volume)', newerThanMap);
        } else if (chunk.replicas.includes(csId)) {
          // The MDS died between a seal and its commit, or its database is older than the cluster.
          if (version !== chunk.version) versionMismatches.push({ volumeId: chunk.volumeId, chunkIndex: chunk.chunkIndex });
        } else if (version > chunk.version) {
          aside(`a copy at version ${version}, ahead of the map's ${chunk.version}`, true);
        } else {
          olderCopies.push({ chunkId, csId, volumeId: chunk.volumeId, chunkIndex: chunk.chunkIndex });
        }
      }
      this.reconcileVersions(versionMismatches);
      await this.quarantine.forgetVanished(csId, new Set(held.map((replica) => replica.chunkId)));
      if (olderCopies.length > 0) {
        await this.store.submit({ type: 'queueReplicaDeletes', entries: olderCopies });
        this.log.info('older copies of chunks queued for deletion', { csId, count: olderCopies.length });
      }
      await this.quarantine.add(quarantine);
      if (quarantine.some((entry) => entry.newerThanMap)) this.scheduleAutoRebuild();
      if (quarantine.length > 0) {
        const newer = quarantine.filter((entry) => entry.newerThanMap).length;
        this.log[newer > 0 ? 'error' : 'warn']('replicas the map does not count on are quarantined (kept, shown in stat)', {
          csId, count: quarantine.length, newerThanMap: newer,
        });
      }
    } catch (error) {
      this.log.warn('could not compare a chunk server\'s replicas with the map; next registration retries', { csId, error });
    }
  }

  /**
   * Fences a server holds above the map's epochs (the database is older than the cluster): the
   * epochs catch up, or every new writer of those volumes would be refused as a stale one.
   */
  private async catchUpEpochs(csId: number): Promise<void> {
    const volumes = await this.io.listVolumes(csId);
    const ahead = volumes
      .filter((volume) => volume.fenceEpoch > (this.store.tables.getVolume(volume.volumeId)?.epoch ?? Number.POSITIVE_INFINITY))
      .map((volume) => ({ volumeId: volume.volumeId, epoch: volume.fenceEpoch }));
    if (ahead.length === 0) return;
    await this.store.submit({ type: 'raiseEpochs', entries: ahead });
    this.log.warn('volume epochs raised to the fences a chunk server holds (the MDS database is older than the cluster)', { csId, volumes: ahead.length });
  }

  /**
   * Replicas newer than the map were found: once the servers have had a moment to be scanned, what
   * the map lacks is taken back by itself (the same as `shoal mds rebuild`), so that data the map
   * lost does not read as zeroes a moment longer than needed.
   */
  private scheduleAutoRebuild(): void {
    if (this.autoRebuild !== null) clearTimeout(this.autoRebuild);
    this.autoRebuild = setTimeout(() => {
      this.autoRebuild = null;
      this.rebuild().catch((error: unknown) => this.log.error('automatic rebuild of the chunk map failed; run shoal mds rebuild', { error }));
    }, AUTO_REBUILD_DELAY_MS);
    this.autoRebuild.unref();
  }

  /** Records the generations a server proves this map lacks (see generations.ts). */
  private async noteLostGenerations(csId: number, held: readonly ChunkListEntry[]): Promise<void> {
    const highest = held.reduce((max, replica) => Math.max(max, replica.generation), 0);
    const range = lostRange(this.store.tables, highest, this.clock.nowMs());
    if (range === null) return;
    await this.store.submit({ type: 'recordLostGenerations', ...range, nowMs: this.clock.nowMs() });
    const inFlight = range.highInclusive === range.lowExclusive + 1;
    this.log[inFlight ? 'warn' : 'error'](inFlight
      ? 'a chunk server holds a replica of a change the MDS made as it stopped; it is kept in quarantine'
      : 'this MDS\'s database is older than the cluster (restored from an old copy?): replicas it does not know are kept in quarantine; ' +
        'see `shoal mds rebuild` to take them back into the map', { csId, ...range });
  }

  /**
   * Chunks whose members hold another version than the map, to be reconciled once every member is
   * online (or given up): reconciling seals the members, and one that has not registered yet
   * would leave the set for it. Retried at every recovery tick.
   */
  private reconcileVersions(chunks: ReadonlyArray<{ volumeId: number; chunkIndex: number }>): void {
    for (const chunk of chunks) this.versionMismatches.set(`${chunk.volumeId}:${chunk.chunkIndex}`, chunk);
    void this.reconcileReady();
  }

  private async reconcileReady(): Promise<void> {
    if (this.reconciling) return;
    this.reconciling = true;
    try {
      const nowMs = this.clock.nowMs();
      for (const [key, { volumeId, chunkIndex }] of [...this.versionMismatches]) {
        const chunk = this.store.tables.getChunk(volumeId, chunkIndex);
        if (chunk === undefined) {
          this.versionMismatches.delete(key);
          continue;
        }
        const waiting = chunk.replicas.some((csId) => {
          const server = this.store.tables.getChunkServer(csId);
          const gone = server === undefined || server.adminState === 'removed' || this.registry.offlineForMs(csId, nowMs) >= this.config.replaceAfterMs;
          return !gone && !this.registry.isOnline(csId, nowMs);
        });
        if (waiting) continue;
        try {
          await this.replicator.reconcileVersion(volumeId, chunkIndex);
          this.versionMismatches.delete(key);
        } catch (error) {
          this.log.warn('could not reconcile a chunk\'s versions; retrying', { volumeId, chunkIndex, error });
        }
      }
    } finally {
      this.reconciling = false;
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
   *
   * A change some members refused as fenced (`cleanCsIds`) was a fenced writer's: nobody leaves,
   * and the members are made equal copying from a member that refused it, so its bytes leave the
   * members that took them. The primary waits for this answer before its FENCE is acknowledged.
   */
  async reportPartialWrite(report: PartialWriteBody): Promise<void> {
    const clean = report.cleanCsIds ?? [];
    if (report.failedCsIds.length === 0 && clean.length === 0) {
      throw new StorageError('ERR_INVALID_ARGUMENT', 'a partial-write report names no failed member and no member that refused the change as fenced');
    }
    // (Not waiting for a change of the set in progress here, as a writer's report does: the
    // primary may hold the chunk's blocks until this answer comes, and that change's seal waits
    // for them. A clean-clone run with the wait failed twice in fault_cs_kill.)
    const chunk = this.store.tables.getChunk(report.volumeId, report.chunkIndex);
    if (chunk === undefined || chunk.chunkId !== report.chunkId || chunk.version !== report.version) return;
    this.log.warn(clean.length > 0 ? 'a primary reports a fenced change applied on some members' : 'a primary reports a change incomplete on members',
      { ...report });
    for (const csId of report.failedCsIds) {
      if (csId !== report.csId) this.registry.markSuspect(csId, this.clock.nowMs());
    }
    await this.replicator.drop(report.volumeId, report.chunkIndex, report.failedCsIds, {
      expectedVersion: report.version,
      inDoubt: { offsetBytes: report.offsetBytes, lengthBytes: report.lengthBytes },
      preferredSources: clean,
      reason: clean.length > 0
        ? `chunk servers ${clean.join(', ')} refused a fenced writer's change that chunk server ${report.csId} applied`
        : `chunk server ${report.csId} could not complete a change on these members`,
    });
    this.recovery.tick();
  }

  /** Drain (move every replica off), return to service, or remove (only once empty). */
  async setChunkServerState(csId: number, adminState: ChunkServerAdminState): Promise<ChunkServerInfo> {
    const result = await this.store.submit({ type: 'setChunkServerState', csId, adminState, nowMs: this.clock.nowMs() });
    assert(result.type === 'chunkServer', 'setChunkServerState yields a server');
    this.log.info('chunk server state changed', { csId, adminState });
    this.recovery.tick();
    return this.serverInfo(csId);
  }

  /** One server as the API shows it. */
  serverInfo(csId: number): ChunkServerInfo {
    const info = this.listChunkServers().find((server) => server.id === csId);
    if (info === undefined) throw new StorageError('ERR_NOT_FOUND', `chunk server ${csId} does not exist`);
    return info;
  }

  /** Plans recovery and starts what fits. Called periodically and after failures. */
  recoveryTick(): number {
    this.warnMaintenanceOverruns(this.clock.nowMs());
    this.judgeDisks(this.clock.nowMs());
    if (this.versionMismatches.size > 0) void this.reconcileReady();
    return this.recovery.tick();
  }

  private recoveryView(): RecoveryView {
    const nowMs = this.clock.nowMs();
    const tables = this.store.tables;
    const records = tables.listChunkServers();
    const servers: PlannerServer[] = records.map((server) => {
      const report = this.registry.report(server.id);
      return {
        id: server.id,
        online: this.registry.isOnline(server.id, nowMs),
        // A server a client just failed to reach keeps counting as a live member until its
        // heartbeats stop, but it gets no new replicas meanwhile.
        healthy: (report?.healthy ?? false) && !this.registry.isSuspect(server.id, nowMs),
        offlineForMs: this.registry.offlineForMs(server.id, nowMs),
        maintenance: this.maintenancePhase(server, nowMs) !== null,
        maintenanceWindow: this.maintenancePhase(server, nowMs) === 'window',
        adminState: server.adminState,
        host: server.failureDomainHost,
        rack: server.rack,
        tier: server.tier,
        ill: this.sickDisks.illness(server.id) !== undefined,
        capacityBytes: report?.capacityBytes ?? 0,
        freeBytes: report?.freeBytes ?? 0,
      };
    });
    const volumes = new Map(tables.listVolumes().map((volume) => [volume.id, volume]));
    // Members on these servers, and members on the wrong tier, are what the planner may act on;
    // on the rest, nothing (map_scans.ts).
    const notServing = servers.filter((server) => !server.online || server.adminState !== 'active').map((server) => server.id);
    const held = tierMovesHeld(tables);
    const misplaced = misplacedPairs(tables, records, volumes, held);
    const window = recoveryWindow(tables, volumes, notServing, this.recoveryCursor, RECOVERY_WINDOW_CHUNKS_MAX, misplaced);
    this.recoveryCursor = window.next;
    const mappedBytes = new Map(records.map((server) => [server.id, tables.serverMapped(server.id).mappedBytes]));
    return {
      servers,
      chunks: window.chunks,
      follow: this.followers(volumes, nowMs),
      mappedBytes,
      chunksOn: (csId) => chunksOnServer(tables, volumes, csId, REBALANCE_LOOK_CHUNKS_MAX),
      tierMoveHeld: (chunk, csId) => held(csId, chunk.volumeId),
      ...rebalanceModeOf(tables, this.config.rebalanceThreshold),
    };
  }

  /**
   * Hot chunks of volumes whose writer named a host that has active chunk servers, and whose
   * primary is elsewhere, with that host (recovery.ts planFollow); at most FOLLOW_CHUNKS_MAX.
   */
  private followers(volumes: ReadonlyMap<number, VolumeRecord>, nowMs: number): Array<{ chunk: PlannerChunk; host: string }> {
    if (this.config.localityBytesPerSecond === 0) return [];
    const hostOf = new Map<number, string>();
    for (const server of this.store.tables.listChunkServers()) if (server.adminState === 'active') hostOf.set(server.id, server.failureDomainHost);
    const hosts = new Set(hostOf.values());
    const follow: Array<{ chunk: PlannerChunk; host: string }> = [];
    for (const { volumeId, chunkIndexes } of this.hotChunks.current(nowMs)) {
      const volume = volumes.get(volumeId);
      const host = volume?.lease?.host;
      if (volume === undefined || host === undefined || !hosts.has(host)) continue;
      for (const chunkIndex of chunkIndexes) {
        const record = this.store.tables.getChunk(volumeId, chunkIndex);
        const primary = record?.replicas[0];
        if (record === undefined || primary === undefined || hostOf.get(primary) === host) continue;
        follow.push({ chunk: plannerChunk(this.store.tables, record, volume), host });
        if (follow.length >= FOLLOW_CHUNKS_MAX) return follow;
      }
    }
    return follow;
  }

  /** The servers' balance as the planner last judged it. */
  rebalanceStatus(): RebalanceStatus {
    const tables = this.store.tables;
    let replicas = 0;
    let bytes = 0;
    for (const server of tables.listChunkServers()) {
      const mapped = tables.serverMapped(server.id);
      replicas += mapped.replicaCount;
      bytes += mapped.mappedBytes;
    }
    return {
      judgement: this.recovery.lastRebalance,
      movesInFlight: this.recovery.rebalanceMovesInFlight,
      averageReplicaBytes: replicas === 0 ? 0 : bytes / replicas,
    };
  }

  /**
   * Tells every chunk server about a volume's new lease epoch before the new writer writes; each
   * acknowledges once no change of an older writer can land there any more. A server that cannot
   * be told must be known to have stopped writing: chunk servers stop taking writes once they have
   * not heard from the MDS for a heartbeat timeout, so one offline for longer than that (here:
   * twice, for margin) is safe. So is one whose address refuses connections: no process of it
   * runs, the old writer's connections to it died with it, and one started later registers,
   * which loads the new epoch, before it takes a write. For a server that failed the fence
   * otherwise (frozen, cut off, or dead moments ago with its host) the fence waits until it is
   * far enough away, when that is near (FENCE_WAIT_MS_MAX), trying it again meanwhile; otherwise,
   * or if it keeps heartbeating, the fence fails (try again later).
   */
  async fenceVolume(volume: VolumeRecord): Promise<void> {
    const startedMs = this.clock.nowMs();
    let pending = this.store.tables.listChunkServers().filter((s) => s.adminState !== 'removed' && !this.awayLongEnough(s.id, startedMs));
    for (let round = 0; ; round += 1) {
      const results = await Promise.allSettled(pending.map((server) => this.io.fence(server.id, volume.id, volume.epoch)));
      const nowMs = this.clock.nowMs();
      pending = pending.filter((server, index) => {
        const result = results[index];
        return result?.status === 'rejected' && !refusedConnection(result.reason) && !this.awayLongEnough(server.id, nowMs);
      });
      if (pending.length === 0) return;
      const waitMs = Math.max(...pending.map((server) => this.awayInMs(server.id, nowMs)));
      if (nowMs + waitMs > startedMs + FENCE_WAIT_MS_MAX) {
        throw new StorageError(
          'ERR_UNAVAILABLE',
          `could not fence the previous writer of volume "${volume.name}" on chunk servers ${pending.map((s) => s.id).join(', ')}, ` +
            `which went offline moments ago or do not answer: they may still take its writes; try again in ${Math.ceil(waitMs / 1000)} s`,
        );
      }
      if (round === 0) this.log.warn('fence waits for chunk servers that could not be told', { volume: volume.name, servers: pending.map((s) => s.id), waitMs });
      await new Promise((resolve) => setTimeout(resolve, Math.min(waitMs, FENCE_RETRY_MS)));
    }
  }

  /** Offline long enough that the server has stopped taking writes by itself (with margin). */
  private awayLongEnough(csId: number, nowMs: number): boolean {
    return this.awayInMs(csId, nowMs) === 0;
  }

  /** How long until the server is away long enough, if it stays silent from now on. */
  private awayInMs(csId: number, nowMs: number): number {
    // The server stops writes by itself a heartbeat timeout after it *sent* its last heartbeat (on
    // its monotonic clock), which is before we received it: the margin covers clock-rate drift and
    // the time our own timer fires late, not the timeout again.
    const marginMs = Math.max(1_000, this.config.heartbeatTimeoutMs / 2);
    const offlineForMs = this.registry.offlineForMs(csId, nowMs);
    if (offlineForMs > 0) return Math.max(0, marginMs - offlineForMs);
    const silentMs = this.registry.heartbeatAgeMs(csId, nowMs) ?? 0;
    return Math.max(0, this.config.heartbeatTimeoutMs - silentMs) + marginMs;
  }
}

/**
 * The chunk server's address refused the connection: nothing listens there. Read from the
 * message, which carries the system's error code; a message without it counts as not refused,
 * which only makes a fence wait longer.
 */
function refusedConnection(error: unknown): boolean {
  return error instanceof StorageError && error.code === 'ERR_UNAVAILABLE' && /\bECONNREFUSED\b/.test(error.message);
}

function sum(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0);
}
