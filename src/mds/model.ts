// The MDS's durable records and the table interface the state machine is written against. Two
// implementations exist: LMDB (store.ts) for the daemon and plain maps (memory_tables.ts) for
// simulation tests, so the same apply code runs in both.

import { UNLIMITED_QOS, type VolumeQos } from '../protocol/api.ts';
import type { VolumeDescription } from '../protocol/cs_messages.ts';

export interface LeaseRecord {
  readonly holder: string;
  readonly leaseId: string;
  readonly acquiredAtMs: number;
  /** The holder answers reads from a local cache while its lease is confirmed (see service.ts openVolume). */
  readonly cachedReads?: boolean;
  /** The host the holder runs on, as chunk servers name theirs: the volume's hot chunks follow it (recovery.ts). */
  readonly host?: string;
}

export interface VolumeRecord {
  readonly id: number;
  readonly name: string;
  readonly sizeBytes: number;
  readonly chunkSizeBytes: number;
  readonly replicasNormal: number;
  readonly replicasMin: number;
  readonly createdAtMs: number;
  /** Grows with every write open; chunk servers reject writes carrying an older epoch. */
  readonly epoch: number;
  readonly lease: LeaseRecord | null;
  /** I/O limits; absent (records written before limits existed, or never set): none. */
  readonly qos?: VolumeQos;
  /**
   * The storage tier its chunks belong on (tiers.ts); absent: any tier (volumes created without
   * one, and every volume written before tiers: an upgrade moves nothing).
   */
  readonly tier?: number;
}

export function volumeQos(volume: VolumeRecord): VolumeQos {
  return volume.qos ?? UNLIMITED_QOS;
}

/** Storage tiers are 0..TIER_MAX (e.g. 0 = HDD, 1 = HDD with an SSD journal, 2 = SSD). */
export const TIER_MAX = 3;

/** The volume's tier, or null: any tier will do. */
export function volumeTier(volume: VolumeRecord): number | null {
  return volume.tier ?? null;
}

/** What chunk servers keep of a volume with each of its replicas (for rebuilding a lost map). */
export function describeVolume(volume: VolumeRecord): VolumeDescription {
  return { name: volume.name, sizeBytes: volume.sizeBytes, replicasNormal: volume.replicasNormal, replicasMin: volume.replicasMin };
}

/** A byte range within a chunk that a failed write may have changed on some members only. */
export interface InDoubtRange {
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

export interface ChunkRecord {
  readonly volumeId: number;
  readonly chunkIndex: number;
  readonly chunkId: number;
  /** Grows whenever the replica set loses a member, so a returning stale replica is never read. */
  readonly version: number;
  /** Chunk-server ids; replicas[0] is the primary that forwards writes to the others. */
  readonly replicas: readonly number[];
  /**
   * Ranges a failed write may have left different on the members, recorded when no member could
   * be reached to settle them at once; the next change of the set makes them equal and clears them.
   */
  readonly inDoubt?: readonly InDoubtRange[];
}

/** What the admin wants of a chunk server: serve, be emptied, or be gone (never placed on again). */
export const CHUNK_SERVER_STATES = ['active', 'draining', 'removed'] as const;
export type ChunkServerAdminState = (typeof CHUNK_SERVER_STATES)[number];

export interface ChunkServerRecord {
  readonly id: number;
  readonly uuid: string;
  readonly host: string;
  readonly port: number;
  readonly metricsPort: number;
  readonly failureDomainHost: string;
  readonly rack: string;
  readonly tier: number;
  readonly registeredAtMs: number;
  readonly adminState: ChunkServerAdminState;
  /**
   * An admin's maintenance window (`shoal cs maintenance`): until then, and for the MDS's
   * --replace-after-ms of grace after it, the server's replicas are not replaced while it is
   * away, and it gets no new chunks until then. Absent in records written before it existed.
   */
  readonly maintenanceUntilMs?: number | null;
  /**
   * The tier was set by an admin (`shoal cs set-tier`): a restart with another --tier keeps it.
   * Absent in records written before it existed: the flag's tier.
   */
  readonly tierSetByAdmin?: boolean;
}

/** The longest maintenance window one request sets (extend it with another). */
export const MAINTENANCE_WINDOW_MAX_MS = 7 * 24 * 3_600_000;

/**
 * Replicas outside a chunk's set still to be removed from their chunk servers: of a deleted chunk,
 * or of members that left (then `volumeId`/`chunkIndex` name the chunk, whose older copies are
 * kept while it is below its normal replica count: bringing one back copies only what changed).
 */
export interface PendingDeleteRecord {
  readonly chunkId: number;
  readonly csIds: readonly number[];
  readonly volumeId?: number;
  readonly chunkIndex?: number;
}

/**
 * A replica a chunk server holds that the map does not count on: kept, shown, and deleted only
 * when an admin confirms or, unless it is newer than the map, after a grace period.
 */
export interface QuarantineRecord {
  readonly chunkId: number;
  readonly csId: number;
  readonly volumeId: number;
  readonly chunkIndex: number;
  readonly version: number;
  readonly generation: number;
  readonly sizeBytes: number;
  /** Made by an MDS state this map does not include (a restored or lost database): never deleted automatically. */
  readonly newerThanMap: boolean;
  readonly reason: string;
  readonly sinceMs: number;
}

/** Generations (lowExclusive, highInclusive] that an MDS state this map does not include handed out. */
export interface LostGenerations {
  readonly lowExclusive: number;
  readonly highInclusive: number;
  readonly foundAtMs: number;
}

/**
 * A hypervisor allowed to serve volumes: its credential's secret is kept only as a digest. It
 * serves every volume, or the volumes named (by name, so that a volume recreated under the same
 * name stays attached), until revoked.
 */
export interface HypervisorRecord {
  readonly id: number;
  readonly name: string;
  readonly secretDigest: string;
  readonly allVolumes: boolean;
  readonly volumes: readonly string[];
  readonly createdAtMs: number;
  /** Set once revoked: the credential is refused from then on, and capabilities issued before are void. */
  readonly revokedAtMs: number | null;
}

/** What kinds of long operation run as durable tasks; each names its target. */
export const TASK_KINDS = ['drain', 'rebalance', 'tier'] as const;
export type TaskKind = (typeof TASK_KINDS)[number];

export const TASK_STATES = ['queued', 'running', 'paused', 'done', 'failed', 'cancelled'] as const;
export type TaskState = (typeof TASK_STATES)[number];

/** Who started a task: an admin (API or CLI), or the MDS itself (rebalancing once servers drift apart). */
export type TaskStarter = 'admin' | 'mds';

/** States a task does not leave. */
export function isFinalTaskState(state: TaskState): boolean {
  return state === 'done' || state === 'failed' || state === 'cancelled';
}

interface TaskRecordBase {
  readonly id: number;
  readonly state: TaskState;
  /** The caller's key: the same key again gets this task back instead of a second one. */
  readonly idempotencyKey: string | null;
  readonly itemsDone: number;
  readonly itemsTotal: number;
  readonly bytesDone: number;
  readonly bytesTotal: number;
  /** Why it failed or was cancelled. */
  readonly error: string | null;
  readonly createdAtMs: number;
  readonly updatedAtMs: number;
  readonly finishedAtMs: number | null;
}

/** Every replica of one chunk server moves off. Items: replicas. */
export interface DrainTaskRecord extends TaskRecordBase {
  readonly kind: 'drain';
  readonly chunkServerId: number;
}

/**
 * Replicas move from the fullest servers to the emptiest until their used fractions differ by at
 * most `thresholdFraction`. Items: replicas moved; the totals are done plus an estimate of what
 * is left (recovery.ts rebalanceJudgement), so they may move as the cluster changes.
 */
export interface RebalanceTaskRecord extends TaskRecordBase {
  readonly kind: 'rebalance';
  /** 0.1: the servers' shares of their capacity end at most ten points apart. */
  readonly thresholdFraction: number;
  readonly startedBy: TaskStarter;
}

/**
 * A volume's tier, or a chunk server's, changed from `fromTier` to `toTier` (in the same commit
 * that started the task): the replicas that now sit on the wrong tier (the volume's wherever they
 * are, or the other volumes' on the server) move. Items: those replicas. Cancelling puts the
 * tier back (what moved moves back).
 */
export interface TierTaskRecord extends TaskRecordBase {
  readonly kind: 'tier';
  readonly target: TierTarget;
  /** Null: a volume of any tier. */
  readonly fromTier: number | null;
  readonly toTier: number;
  /** A server's: whether its tier before was an admin's (kept across restarts) or its --tier flag's; a cancel restores it. */
  readonly fromTierSetByAdmin?: boolean;
}

/** What changes tier: one chunk server, or one volume. */
export type TierTarget = { readonly chunkServerId: number } | { readonly volumeId: number };

/**
 * A long operation the MDS carries out in the background (tasks.ts): it survives an MDS restart
 * and the caller that started it going away. Progress is saved every few seconds, so after a
 * restart it shows at most that much less than was done.
 */
export type TaskRecord = DrainTaskRecord | RebalanceTaskRecord | TierTaskRecord;

/** A task's progress numbers. */
export interface TaskProgress {
  readonly itemsDone: number;
  readonly itemsTotal: number;
  readonly bytesDone: number;
  readonly bytesTotal: number;
}

/**
 * A drain's or a tier move's progress now, from what is still to move (what the map places on
 * the drained server; the replicas on the wrong tier): done never goes back, and replicas that
 * joined what is to move meanwhile (placed on the server while the drain was paused) join the
 * total.
 */
export function progressFromLeft(task: TaskProgress, left: ServerMapped): TaskProgress {
  const itemsDone = Math.max(task.itemsDone, task.itemsTotal - left.replicaCount);
  const bytesDone = Math.max(task.bytesDone, task.bytesTotal - left.mappedBytes);
  return { itemsDone, itemsTotal: itemsDone + left.replicaCount, bytesDone, bytesTotal: bytesDone + left.mappedBytes };
}

/** Finished tasks kept for `shoal task list`; older ones are dropped as new ones start. */
export const FINISHED_TASKS_KEPT = 1_000;

/** A hypervisor may name at most this many volumes one by one (beyond, use allVolumes). */
export const HYPERVISOR_VOLUMES_MAX = 4096;

/**
 * Counters of the state. `chunkIdFloor`: chunk ids below it may exist on chunk servers unknown to
 * this map (seen there after a restore or rebuild): never handed out, even from a block reserved
 * before it was raised.
 */
export const META_KEYS = ['nextVolumeId', 'nextChunkId', 'nextCsId', 'opSeq', 'generation', 'chunkIdFloor', 'nextHypervisorId', 'nextTaskId'] as const;
export type MetaKey = (typeof META_KEYS)[number];

/** Names one chunk of one volume (the chunk map's key). */
export interface ChunkKey {
  readonly volumeId: number;
  readonly chunkIndex: number;
}

/** What the map places on one chunk server. */
export interface ServerMapped {
  readonly replicaCount: number;
  /** The replicas' chunk sizes summed (their volumes' chunkSizeBytes). */
  readonly mappedBytes: number;
}

/**
 * Whether a chunk record alone makes the chunk one the recovery planner must look at. Volumes'
 * replicasNormal never changes today; an op that changes it must re-evaluate its chunks.
 */
export function needsAttention(record: ChunkRecord, volume: VolumeRecord | undefined): boolean {
  if ((record.inDoubt ?? []).length > 0) return true;
  return volume !== undefined && record.replicas.length !== volume.replicasNormal;
}

/** Everything the state machine reads and writes; each call is part of the current transaction. */
export interface MdsTables {
  getMeta(key: MetaKey): number;
  putMeta(key: MetaKey, value: number): void;

  getVolume(id: number): VolumeRecord | undefined;
  getVolumeIdByName(name: string): number | undefined;
  putVolume(record: VolumeRecord): void;
  deleteVolume(record: VolumeRecord): void;
  listVolumes(): VolumeRecord[];

  getChunk(volumeId: number, chunkIndex: number): ChunkRecord | undefined;
  putChunk(record: ChunkRecord): void;
  deleteChunk(volumeId: number, chunkIndex: number): void;
  listChunks(volumeId: number, fromIndex: number, count: number): ChunkRecord[];
  countChunks(volumeId: number): number;
  /** Every record: a walk of the whole map, for offline tools and tests, never per request. */
  forEachChunk(visit: (record: ChunkRecord) => void): void;
  getChunkById(chunkId: number): ChunkRecord | undefined;
  /** Kept with the records: no walk. */
  serverMapped(csId: number): ServerMapped;
  /** The chunks `csId` is a member of, in (volumeId, chunkIndex) order after `after`, at most `limit`. */
  listServerChunks(csId: number, after: ChunkKey | undefined, limit: number): ChunkKey[];
  /** The chunks of one volume `csId` is a member of, by index after `afterChunkIndex` (-1: from the first), at most `limit`. */
  listServerVolumeChunks(csId: number, volumeId: number, afterChunkIndex: number, limit: number): ChunkKey[];
  /** Kept with the records: volumeId -> the replicas of its chunks on `csId` (volumes with none are absent). */
  serverVolumeReplicas(csId: number): ReadonlyMap<number, number>;
  /** Kept with the records: the replicas of one volume's chunks on `csId`. */
  serverVolumeReplicaCount(csId: number, volumeId: number): number;
  /**
   * The chunks whose record alone needs the recovery planner (in doubt, or a replica count other
   * than their volume's normal), in key order after `after`, at most `limit`.
   */
  listAttentionChunks(after: ChunkKey | undefined, limit: number): ChunkKey[];
  isAttentionChunk(volumeId: number, chunkIndex: number): boolean;

  getChunkServer(id: number): ChunkServerRecord | undefined;
  getChunkServerIdByUuid(uuid: string): number | undefined;
  putChunkServer(record: ChunkServerRecord): void;
  listChunkServers(): ChunkServerRecord[];

  getPendingDelete(chunkId: number): PendingDeleteRecord | undefined;
  putPendingDelete(record: PendingDeleteRecord): void;
  deletePendingDelete(chunkId: number): void;
  listPendingDeletes(limit: number): PendingDeleteRecord[];

  getQuarantined(chunkId: number, csId: number): QuarantineRecord | undefined;
  putQuarantined(record: QuarantineRecord): void;
  deleteQuarantined(chunkId: number, csId: number): void;
  /** In (chunkId, csId) order, from `after` (exclusive) if given. */
  listQuarantined(limit: number, after?: { chunkId: number; csId: number }): QuarantineRecord[];

  listLostGenerations(): LostGenerations[];
  putLostGenerations(range: LostGenerations): void;

  getHypervisor(id: number): HypervisorRecord | undefined;
  getHypervisorIdByName(name: string): number | undefined;
  putHypervisor(record: HypervisorRecord): void;
  listHypervisors(): HypervisorRecord[];

  getTask(id: number): TaskRecord | undefined;
  putTask(record: TaskRecord): void;
  deleteTask(id: number): void;
  /** Every task kept (at most FINISHED_TASKS_KEPT finished ones plus those still going), by id. */
  listTasks(): TaskRecord[];
}
