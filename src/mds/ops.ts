// The MDS state machine: every change to the MDS's durable state is one typed operation, applied
// by `applyOp` inside one transaction and recorded in the operation log in order. Nothing else
// writes the tables. Later, several MDS replicas will replicate exactly this log, so `applyOp` is
// deterministic: it reads only the tables and the op (time comes in the op as `nowMs`).
//
// Operating errors (a name taken, a lease held) throw StorageError and abort the transaction;
// broken invariants (a version going down, duplicate replicas) are assertion failures.

import { StorageError } from '../errors.ts';
import { assert, assertNever } from '../util/assert.ts';
import { formatBytes } from '../util/size.ts';
import type { VolumeQos, VolumeQosChange } from '../protocol/api.ts';
import { resolveQosChange } from './volume_qos.ts';
import type {
  ChunkKey, ChunkRecord, ChunkServerAdminState, ChunkServerRecord, HypervisorRecord, InDoubtRange, MdsTables, QuarantineRecord, VolumeRecord,
} from './model.ts';
import {
  FINISHED_TASKS_KEPT, HYPERVISOR_VOLUMES_MAX, MAINTENANCE_WINDOW_MAX_MS, TIER_MAX, progressFromLeft, isFinalTaskState, volumeQos, volumeTier,
  type DrainTaskRecord, type ServerMapped, type TaskProgress, type TaskRecord, type TaskStarter, type TaskState, type TierTarget, type TierTaskRecord,
} from './model.ts';
import { misplacedOfVolume, misplacedOnServer } from './tiers.ts';

export type MdsOp =
  | { readonly type: 'reserveChunkIds'; readonly count: number }
  | {
      /** A hypervisor gets a credential (only the digest of its secret is kept). */
      readonly type: 'addHypervisor';
      readonly name: string;
      readonly secretDigest: string;
      readonly allVolumes: boolean;
      readonly volumes: readonly string[];
      readonly nowMs: number;
    }
  | {
      /** The volumes a hypervisor may serve change. */
      readonly type: 'setHypervisorVolumes';
      readonly hypervisorId: number;
      readonly allVolumes: boolean;
      readonly volumes: readonly string[];
    }
  | { readonly type: 'revokeHypervisor'; readonly hypervisorId: number; readonly nowMs: number }
  | ({ readonly type: 'registerChunkServer'; readonly nowMs: number } & Omit<ChunkServerRecord, 'id' | 'registeredAtMs' | 'adminState'>)
  | {
      readonly type: 'createVolume';
      readonly name: string;
      readonly sizeBytes: number;
      readonly chunkSizeBytes: number;
      readonly replicasNormal: number;
      readonly replicasMin: number;
      readonly nowMs: number;
      /** Absent in ops logged before volumes had limits: none. */
      readonly qos?: VolumeQos;
      /** Absent in ops logged before tiers: 0. */
      readonly tier?: number;
    }
  | { readonly type: 'resizeVolume'; readonly volumeId: number; readonly sizeBytes: number }
  | {
      /**
       * A volume grows and/or its I/O limits change, all or nothing. The limits are resolved
       * against the record inside the op (volume_qos.ts), so two changes at once never undo each
       * other.
       */
      readonly type: 'updateVolume';
      readonly volumeId: number;
      readonly sizeBytes?: number;
      readonly qos?: VolumeQosChange;
    }
  | { readonly type: 'deleteVolume'; readonly volumeId: number }
  | {
      readonly type: 'allocateChunk';
      readonly volumeId: number;
      readonly chunkIndex: number;
      readonly chunkId: number;
      readonly replicas: readonly number[];
    }
  | {
      readonly type: 'acquireLease';
      readonly volumeId: number;
      readonly holder: string;
      readonly leaseId: string;
      readonly force: boolean;
      /** Absent in ops logged before read caches: false. */
      readonly cachedReads?: boolean;
      /** Absent in ops logged before locality: unknown. */
      readonly host?: string;
      readonly nowMs: number;
    }
  | { readonly type: 'releaseLease'; readonly volumeId: number; readonly leaseId: string }
  | { readonly type: 'replicaDeleted'; readonly chunkId: number; readonly csId: number }
  | {
      /** A chunk's replica set changes: members leave or join, always under a new, higher version. */
      readonly type: 'setChunkReplicas';
      readonly volumeId: number;
      readonly chunkIndex: number;
      readonly version: number;
      readonly replicas: readonly number[];
      /** Members that leave and whose replica should be deleted from their server. */
      readonly deleteFrom: readonly number[];
      /** In-doubt ranges still not settled among the new members (usually none). */
      readonly inDoubt: readonly InDoubtRange[];
      /** The change completes a move made for this rebalance task: it counts it, in the same commit. */
      readonly countForTaskId?: number;
    }
  | { readonly type: 'markInDoubt'; readonly volumeId: number; readonly chunkIndex: number; readonly ranges: readonly InDoubtRange[] }
  | {
      /**
       * A server came back (restarted, or reachable again): it may have died while forwarding a
       * write whose writer died too, leaving members different with nobody to report it. Every
       * chunk it is a member of is put in doubt as a whole, so the planner makes the members equal.
       */
      readonly type: 'markServerChunksInDoubt';
      readonly csId: number;
      /**
       * One op covers at most `limit` of the server's chunks after `after` (its result names
       * where the next one starts): a server holding a million replicas is marked in bounded
       * transactions, and the MDS answers between them. Absent in ops logged before slicing.
       */
      readonly after?: ChunkKey;
      readonly limit?: number;
    }
  | {
      readonly type: 'setChunkServerState';
      readonly csId: number;
      readonly adminState: ChunkServerAdminState;
      /** When; absent in ops logged before tasks. */
      readonly nowMs?: number;
    }
  | {
      /** A maintenance window starts, is extended or shortened (`untilMs`), or ends (null). */
      readonly type: 'setMaintenance';
      readonly csId: number;
      readonly untilMs: number | null;
      readonly nowMs: number;
    }
  | {
      /** Older copies of known chunks found on servers that are not members: to be deleted. */
      readonly type: 'queueReplicaDeletes';
      readonly entries: ReadonlyArray<{ chunkId: number; csId: number; volumeId?: number; chunkIndex?: number }>;
    }
  | {
      /** A chunk server holds replicas of an MDS state this map does not include: record the gap. */
      readonly type: 'recordLostGenerations';
      readonly lowExclusive: number;
      readonly highInclusive: number;
      readonly nowMs: number;
    }
  | {
      /** Replicas the map does not count on, kept aside (see QuarantineRecord). */
      readonly type: 'quarantineReplicas';
      readonly entries: ReadonlyArray<Omit<QuarantineRecord, 'sinceMs'>>;
      readonly nowMs: number;
    }
  | {
      /**
       * Chunk servers hold fences above these volumes' epochs (the map was restored from an old
       * copy): the epochs catch up, or every new writer would be rejected as stale.
       */
      readonly type: 'raiseEpochs';
      readonly entries: ReadonlyArray<{ volumeId: number; epoch: number }>;
    }
  | {
      /** Rebuild: a volume the chunk servers hold replicas of, taken back into the map under its id. */
      readonly type: 'adoptVolume';
      readonly volumeId: number;
      readonly name: string;
      readonly sizeBytes: number;
      readonly chunkSizeBytes: number;
      readonly replicasNormal: number;
      readonly replicasMin: number;
      readonly epoch: number;
      readonly nowMs: number;
    }
  | {
      /** Rebuild: a chunk taken back into the map, its newest copies as members (compared first). */
      readonly type: 'adoptChunk';
      readonly volumeId: number;
      readonly chunkIndex: number;
      readonly chunkId: number;
      readonly version: number;
      readonly replicas: readonly number[];
      /** Servers holding older versions: outside the set, kept while the chunk lacks members. */
      readonly olderCopies: readonly number[];
    }
  | {
      /** Chunk servers hold this chunk id (unknown to the map, or adopted): it is never handed out again. */
      readonly type: 'reserveChunkIdsAbove';
      readonly chunkId: number;
    }
  | {
      /** Quarantined replicas an admin confirmed, or whose grace ran out: queued for deletion. */
      readonly type: 'releaseQuarantined';
      readonly entries: ReadonlyArray<{ chunkId: number; csId: number }>;
    }
  | {
      /** A drain starts as a task (tasks.ts): the server takes no new replicas and its replicas move off. */
      readonly type: 'startDrainTask';
      readonly csId: number;
      readonly idempotencyKey: string | null;
      /** The older drain route: a drain already going on the server is returned (resumed if paused), not refused. */
      readonly joinRunning: boolean;
      readonly nowMs: number;
    }
  | {
      /**
       * A rebalance starts as a task (tasks.ts): from then on the recovery planner moves replicas
       * from the fullest servers to the emptiest until they are within the threshold.
       */
      readonly type: 'startRebalanceTask';
      readonly thresholdFraction: number;
      readonly startedBy: TaskStarter;
      readonly idempotencyKey: string | null;
      /** What is left to move now, estimated by the caller (it knows the servers' capacities). */
      readonly estimate: { readonly items: number; readonly bytes: number };
      readonly nowMs: number;
    }
  | {
      /**
       * A volume's or a chunk server's tier changes, and a task starts that follows the moves of
       * the replicas now on the wrong tier (the planner moves them: recovery.ts).
       */
      readonly type: 'startTierTask';
      readonly target: TierTarget;
      readonly tier: number;
      readonly idempotencyKey: string | null;
      readonly nowMs: number;
    }
  | {
      /** A task moves on: paused, resumed (running), or ended. A drain's server follows (see setTaskState). */
      readonly type: 'setTaskState';
      readonly taskId: number;
      readonly state: Exclude<TaskState, 'queued'>;
      readonly error: string | null;
      readonly nowMs: number;
    }
  | {
      /** A task's progress, saved every few seconds while it runs. */
      readonly type: 'recordTaskProgress';
      readonly taskId: number;
      readonly itemsDone: number;
      readonly itemsTotal: number;
      readonly bytesDone: number;
      readonly bytesTotal: number;
      readonly nowMs: number;
    };

export type MdsOpType = MdsOp['type'];

/** What an op produced, for the caller that submitted it. */
export type MdsOpResult =
  | { readonly type: 'none' }
  | { readonly type: 'hypervisor'; readonly record: HypervisorRecord }
  | { readonly type: 'chunkIdRange'; readonly firstChunkId: number; readonly count: number }
  | { readonly type: 'chunkServer'; readonly record: ChunkServerRecord }
  | { readonly type: 'volume'; readonly record: VolumeRecord }
  | { readonly type: 'chunk'; readonly record: ChunkRecord }
  /** `created`: a new task, rather than the one an earlier request with the same key started. */
  | { readonly type: 'task'; readonly record: TaskRecord; readonly created?: boolean }
  /** A sliced op's progress: where the next slice starts, or null once the last one is done. */
  | { readonly type: 'cursor'; readonly next: ChunkKey | null };

const NONE: MdsOpResult = { type: 'none' };

export function applyOp(tables: MdsTables, op: MdsOp): MdsOpResult {
  switch (op.type) {
    case 'addHypervisor':
      return addHypervisor(tables, op);
    case 'setHypervisorVolumes':
      return setHypervisorVolumes(tables, op);
    case 'revokeHypervisor':
      return revokeHypervisor(tables, op.hypervisorId, op.nowMs);
    case 'reserveChunkIds':
      return reserveChunkIds(tables, op.count);
    case 'registerChunkServer':
      return registerChunkServer(tables, op);
    case 'createVolume':
      return createVolume(tables, op);
    case 'resizeVolume':
      return resizeVolume(tables, op.volumeId, op.sizeBytes);
    case 'updateVolume':
      return updateVolume(tables, op);
    case 'deleteVolume':
      return deleteVolume(tables, op.volumeId);
    case 'allocateChunk':
      return allocateChunk(tables, op);
    case 'acquireLease':
      return acquireLease(tables, op);
    case 'releaseLease':
      return releaseLease(tables, op.volumeId, op.leaseId);
    case 'replicaDeleted':
      return replicaDeleted(tables, op.chunkId, op.csId);
    case 'setChunkReplicas':
      return setChunkReplicas(tables, op);
    case 'setChunkServerState':
      return setChunkServerState(tables, op.csId, op.adminState, op.nowMs);
    case 'setMaintenance':
      return setMaintenance(tables, op);
    case 'startDrainTask':
      return startDrainTask(tables, op);
    case 'startRebalanceTask':
      return startRebalanceTask(tables, op);
    case 'startTierTask':
      return startTierTask(tables, op);
    case 'setTaskState':
      return setTaskState(tables, op);
    case 'recordTaskProgress':
      return recordTaskProgress(tables, op);
    case 'markInDoubt':
      return markInDoubt(tables, op);
    case 'markServerChunksInDoubt':
      return markServerChunksInDoubt(tables, op);
    case 'queueReplicaDeletes':
      return queueReplicaDeletes(tables, op.entries);
    case 'recordLostGenerations':
      return recordLostGenerations(tables, op);
    case 'quarantineReplicas':
      return quarantineReplicas(tables, op);
    case 'releaseQuarantined':
      return releaseQuarantined(tables, op.entries);
    case 'raiseEpochs':
      return raiseEpochs(tables, op.entries);
    case 'adoptVolume':
      return adoptVolume(tables, op);
    case 'adoptChunk':
      return adoptChunk(tables, op);
    case 'reserveChunkIdsAbove':
      tables.putMeta('nextChunkId', Math.max(tables.getMeta('nextChunkId'), op.chunkId + 1));
      tables.putMeta('chunkIdFloor', Math.max(tables.getMeta('chunkIdFloor'), op.chunkId + 1));
      return NONE;
    default:
      return assertNever(op, 'op type');
  }
}

function checkHypervisorVolumes(volumes: readonly string[]): void {
  if (volumes.length > HYPERVISOR_VOLUMES_MAX) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `a hypervisor names at most ${HYPERVISOR_VOLUMES_MAX} volumes; give it every volume instead`);
  }
}

function addHypervisor(tables: MdsTables, op: Extract<MdsOp, { type: 'addHypervisor' }>): MdsOpResult {
  if (tables.getHypervisorIdByName(op.name) !== undefined) {
    throw new StorageError('ERR_CONFLICT', `hypervisor "${op.name}" exists already; revoke it and add it under another name for a new credential`);
  }
  checkHypervisorVolumes(op.volumes);
  const id = Math.max(1, tables.getMeta('nextHypervisorId'));
  tables.putMeta('nextHypervisorId', id + 1);
  const record: HypervisorRecord = {
    id, name: op.name, secretDigest: op.secretDigest, allVolumes: op.allVolumes, volumes: [...new Set(op.volumes)].sort(),
    createdAtMs: op.nowMs, revokedAtMs: null,
  };
  tables.putHypervisor(record);
  return { type: 'hypervisor', record };
}

function requireHypervisor(tables: MdsTables, id: number): HypervisorRecord {
  const record = tables.getHypervisor(id);
  if (record === undefined) throw new StorageError('ERR_NOT_FOUND', `hypervisor ${id} does not exist`);
  return record;
}

function setHypervisorVolumes(tables: MdsTables, op: Extract<MdsOp, { type: 'setHypervisorVolumes' }>): MdsOpResult {
  const existing = requireHypervisor(tables, op.hypervisorId);
  if (existing.revokedAtMs !== null) throw new StorageError('ERR_CONFLICT', `hypervisor "${existing.name}" was revoked`);
  checkHypervisorVolumes(op.volumes);
  const record: HypervisorRecord = { ...existing, allVolumes: op.allVolumes, volumes: [...new Set(op.volumes)].sort() };
  tables.putHypervisor(record);
  return { type: 'hypervisor', record };
}

function revokeHypervisor(tables: MdsTables, id: number, nowMs: number): MdsOpResult {
  const existing = requireHypervisor(tables, id);
  // Revoking twice keeps the first time: capabilities issued before it are void either way.
  const record: HypervisorRecord = existing.revokedAtMs !== null ? existing : { ...existing, revokedAtMs: nowMs };
  tables.putHypervisor(record);
  return { type: 'hypervisor', record };
}

function reserveChunkIds(tables: MdsTables, count: number): MdsOpResult {
  assert(Number.isSafeInteger(count) && count > 0, 'reserve a positive number of chunk ids');
  const firstChunkId = Math.max(1, tables.getMeta('nextChunkId'));
  tables.putMeta('nextChunkId', firstChunkId + count);
  return { type: 'chunkIdRange', firstChunkId, count };
}

function registerChunkServer(tables: MdsTables, op: Extract<MdsOp, { type: 'registerChunkServer' }>): MdsOpResult {
  const existingId = tables.getChunkServerIdByUuid(op.uuid);
  const existing = existingId === undefined ? undefined : tables.getChunkServer(existingId);
  const id = existing?.id ?? Math.max(1, tables.getMeta('nextCsId'));
  if (existing === undefined) tables.putMeta('nextCsId', id + 1);
  if (existing?.adminState === 'removed') {
    throw new StorageError(
      'ERR_INVALID_ARGUMENT',
      `chunk server ${id} (${op.uuid}) was removed from the cluster; wipe its data directory to add the disk again`,
    );
  }
  const record: ChunkServerRecord = {
    id,
    adminState: existing?.adminState ?? 'active',
    uuid: op.uuid,
    host: op.host,
    port: op.port,
    metricsPort: op.metricsPort,
    failureDomainHost: op.failureDomainHost,
    rack: op.rack,
    // An admin's `cs set-tier` outlives the --tier of later starts.
    tier: existing?.tierSetByAdmin === true ? existing.tier : op.tier,
    registeredAtMs: existing?.registeredAtMs ?? op.nowMs,
    maintenanceUntilMs: existing?.maintenanceUntilMs ?? null,
    ...(existing?.tierSetByAdmin === true ? { tierSetByAdmin: true } : {}),
  };
  assert(Number.isInteger(record.tier) && record.tier >= 0 && record.tier <= TIER_MAX, 'a chunk server\'s tier is within 0..TIER_MAX');
  tables.putChunkServer(record);
  return { type: 'chunkServer', record };
}

function setMaintenance(tables: MdsTables, op: Extract<MdsOp, { type: 'setMaintenance' }>): MdsOpResult {
  const server = tables.getChunkServer(op.csId);
  if (server === undefined) throw new StorageError('ERR_NOT_FOUND', `chunk server ${op.csId} does not exist`);
  if (server.adminState === 'removed') throw new StorageError('ERR_CONFLICT', `chunk server ${op.csId} was removed`);
  if (op.untilMs !== null) {
    assert(op.untilMs > op.nowMs && op.untilMs <= op.nowMs + MAINTENANCE_WINDOW_MAX_MS, 'a maintenance window ends in the future, within the maximum');
  }
  const record: ChunkServerRecord = { ...server, maintenanceUntilMs: op.untilMs };
  tables.putChunkServer(record);
  return { type: 'chunkServer', record };
}

function createVolume(tables: MdsTables, op: Extract<MdsOp, { type: 'createVolume' }>): MdsOpResult {
  if (tables.getVolumeIdByName(op.name) !== undefined) {
    throw new StorageError('ERR_VOLUME_EXISTS', `volume "${op.name}" already exists`);
  }
  assert(op.replicasMin >= 1 && op.replicasMin <= op.replicasNormal, 'replicas min within 1..normal');
  assert(op.sizeBytes > 0 && op.chunkSizeBytes > 0, 'volume and chunk sizes are positive');
  if (op.qos !== undefined) assertQos(op.qos);
  assert(op.tier === undefined || (Number.isInteger(op.tier) && op.tier >= 0 && op.tier <= TIER_MAX), 'a volume\'s tier is within 0..TIER_MAX');
  const id = Math.max(1, tables.getMeta('nextVolumeId'));
  tables.putMeta('nextVolumeId', id + 1);
  const record: VolumeRecord = {
    id,
    name: op.name,
    sizeBytes: op.sizeBytes,
    chunkSizeBytes: op.chunkSizeBytes,
    replicasNormal: op.replicasNormal,
    replicasMin: op.replicasMin,
    createdAtMs: op.nowMs,
    epoch: 0,
    lease: null,
    ...(op.qos === undefined ? {} : { qos: op.qos }),
    ...(op.tier === undefined ? {} : { tier: op.tier }),
  };
  tables.putVolume(record);
  return { type: 'volume', record };
}

/** Limits as stored: a limit has a burst, no limit has none (volume_qos.ts resolves requests to this). */
function assertQos(qos: VolumeQos): void {
  assert((qos.iopsLimit === 0) === (qos.iopsBurst === 0), 'an IOPS limit comes with its burst, and only with one');
  assert((qos.bandwidthLimitBytesPerSecond === 0) === (qos.bandwidthBurstBytes === 0), 'a bandwidth limit comes with its burst, and only with one');
}

function updateVolume(tables: MdsTables, op: Extract<MdsOp, { type: 'updateVolume' }>): MdsOpResult {
  if (op.sizeBytes !== undefined) resizeVolume(tables, op.volumeId, op.sizeBytes);
  const volume = requireVolume(tables, op.volumeId);
  if (op.qos === undefined) return { type: 'volume', record: volume };
  const qos = resolveQosChange(volumeQos(volume), op.qos);
  assertQos(qos);
  const record: VolumeRecord = { ...volume, qos };
  tables.putVolume(record);
  return { type: 'volume', record };
}

function requireVolume(tables: MdsTables, volumeId: number): VolumeRecord {
  const volume = tables.getVolume(volumeId);
  if (volume === undefined) throw new StorageError('ERR_NOT_FOUND', `volume ${volumeId} does not exist`);
  return volume;
}

function resizeVolume(tables: MdsTables, volumeId: number, sizeBytes: number): MdsOpResult {
  const volume = requireVolume(tables, volumeId);
  if (sizeBytes < volume.sizeBytes) {
    throw new StorageError(
      'ERR_SHRINK_REFUSED',
      `volume "${volume.name}" is ${formatBytes(volume.sizeBytes)} (${volume.sizeBytes} bytes); ` +
        `shrinking it to ${formatBytes(sizeBytes)} would cut off data: volumes only grow`,
    );
  }
  const record: VolumeRecord = { ...volume, sizeBytes };
  tables.putVolume(record);
  return { type: 'volume', record };
}

function deleteVolume(tables: MdsTables, volumeId: number): MdsOpResult {
  const volume = requireVolume(tables, volumeId);
  const chunkCount = tables.countChunks(volumeId);
  for (const chunk of tables.listChunks(volumeId, 0, Math.max(1, chunkCount))) {
    tables.putPendingDelete({ chunkId: chunk.chunkId, csIds: chunk.replicas });
    tables.deleteChunk(volumeId, chunk.chunkIndex);
  }
  assert(tables.countChunks(volumeId) === 0, 'every chunk of a deleted volume is queued for removal');
  tables.deleteVolume(volume);
  return { type: 'volume', record: volume };
}

function allocateChunk(tables: MdsTables, op: Extract<MdsOp, { type: 'allocateChunk' }>): MdsOpResult {
  const volume = requireVolume(tables, op.volumeId);
  const chunkCountMax = Math.ceil(volume.sizeBytes / volume.chunkSizeBytes);
  if (op.chunkIndex >= chunkCountMax) {
    throw new StorageError('ERR_OUT_OF_RANGE', `chunk ${op.chunkIndex} is past the end of volume "${volume.name}"`);
  }
  assert(tables.getChunk(op.volumeId, op.chunkIndex) === undefined, 'a chunk is allocated once');
  assert(op.chunkId > 0 && op.chunkId < tables.getMeta('nextChunkId'), 'chunk ids come from a reserved range');
  assert(new Set(op.replicas).size === op.replicas.length, 'replicas sit on distinct chunk servers');
  assert(op.replicas.length >= volume.replicasMin, 'a chunk starts with at least min replicas');
  for (const csId of op.replicas) assert(tables.getChunkServer(csId) !== undefined, 'replicas sit on known servers');
  const record: ChunkRecord = {
    volumeId: op.volumeId,
    chunkIndex: op.chunkIndex,
    chunkId: op.chunkId,
    version: 1,
    replicas: [...op.replicas],
  };
  tables.putChunk(record);
  bumpGeneration(tables);
  return { type: 'chunk', record };
}

function acquireLease(tables: MdsTables, op: Extract<MdsOp, { type: 'acquireLease' }>): MdsOpResult {
  const volume = requireVolume(tables, op.volumeId);
  if (volume.lease !== null && !op.force) {
    throw new StorageError(
      'ERR_VOLUME_LEASED',
      `volume "${volume.name}" is open for write by ${volume.lease.holder} (epoch ${volume.epoch}); ` +
        'close it there, wait for its lease to expire, or force the open to fence it',
    );
  }
  const record: VolumeRecord = {
    ...volume,
    epoch: volume.epoch + 1,
    lease: {
      holder: op.holder, leaseId: op.leaseId, acquiredAtMs: op.nowMs,
      ...(op.cachedReads === true ? { cachedReads: true } : {}), ...(op.host === undefined ? {} : { host: op.host }),
    },
  };
  assert(record.epoch > volume.epoch, 'lease epochs only grow');
  tables.putVolume(record);
  return { type: 'volume', record };
}

function releaseLease(tables: MdsTables, volumeId: number, leaseId: string): MdsOpResult {
  const volume = tables.getVolume(volumeId);
  // Releasing a lease that was already taken over or expired is not an error: nothing to undo.
  if (volume === undefined || volume.lease === null || volume.lease.leaseId !== leaseId) return NONE;
  const record: VolumeRecord = { ...volume, lease: null };
  tables.putVolume(record);
  return { type: 'volume', record };
}

function replicaDeleted(tables: MdsTables, chunkId: number, csId: number): MdsOpResult {
  const pending = tables.getPendingDelete(chunkId);
  if (pending === undefined) return NONE;
  const csIds = pending.csIds.filter((id) => id !== csId);
  if (csIds.length === 0) tables.deletePendingDelete(chunkId);
  else tables.putPendingDelete({ ...pending, csIds });
  return NONE;
}

function setChunkReplicas(tables: MdsTables, op: Extract<MdsOp, { type: 'setChunkReplicas' }>): MdsOpResult {
  const chunk = tables.getChunk(op.volumeId, op.chunkIndex);
  if (chunk === undefined) {
    throw new StorageError('ERR_NOT_FOUND', `chunk ${op.chunkIndex} of volume ${op.volumeId} does not exist (deleted meanwhile)`);
  }
  assert(op.version > chunk.version, 'a replica set changes only under a higher version');
  assert(op.replicas.length >= 1, 'a chunk keeps at least one replica');
  assert(new Set(op.replicas).size === op.replicas.length, 'replicas sit on distinct chunk servers');
  for (const csId of op.replicas) assert(tables.getChunkServer(csId) !== undefined, 'replicas sit on known servers');
  for (const csId of op.deleteFrom) assert(!op.replicas.includes(csId), 'a replica deleted from its server is not a member');
  const record: ChunkRecord = { ...chunk, version: op.version, replicas: [...op.replicas], inDoubt: [...op.inDoubt] };
  tables.putChunk(record);
  bumpGeneration(tables);
  // Members (new ones included) are never deleted; servers that left are, once reachable.
  const pending = (tables.getPendingDelete(chunk.chunkId)?.csIds ?? []).filter((csId) => !op.replicas.includes(csId));
  const csIds = [...new Set([...pending, ...op.deleteFrom])];
  if (csIds.length > 0) tables.putPendingDelete({ chunkId: chunk.chunkId, csIds, volumeId: chunk.volumeId, chunkIndex: chunk.chunkIndex });
  else tables.deletePendingDelete(chunk.chunkId);
  if (op.countForTaskId !== undefined) countMove(tables, op.countForTaskId, tables.getVolume(chunk.volumeId)?.chunkSizeBytes ?? 0);
  return { type: 'chunk', record };
}

/** One more replica moved for a rebalance task; a task that ended meanwhile keeps what it recorded. */
function countMove(tables: MdsTables, taskId: number, bytes: number): void {
  const task = tables.getTask(taskId);
  // Ended while the move went on (a cancel; or, with a thousand tasks finished since, dropped).
  if (task === undefined || isFinalTaskState(task.state)) return;
  assert(task.kind === 'rebalance', 'only a rebalance task counts moves');
  const itemsDone = task.itemsDone + 1;
  const bytesDone = task.bytesDone + bytes;
  tables.putTask({ ...task, itemsDone, bytesDone, itemsTotal: Math.max(task.itemsTotal, itemsDone), bytesTotal: Math.max(task.bytesTotal, bytesDone) });
}

function setChunkServerState(tables: MdsTables, csId: number, adminState: ChunkServerAdminState, nowMs: number | undefined): MdsOpResult {
  const server = tables.getChunkServer(csId);
  if (server === undefined) throw new StorageError('ERR_NOT_FOUND', `chunk server ${csId} does not exist`);
  if (server.adminState === 'removed') throw new StorageError('ERR_CONFLICT', `chunk server ${csId} was removed already`);
  if (adminState === 'removed') {
    const held = tables.serverMapped(csId).replicaCount;
    if (held > 0) {
      throw new StorageError('ERR_CONFLICT', `chunk server ${csId} still holds ${held} replicas: drain it first (shoal cs drain ${csId})`);
    }
  }
  const record: ChunkServerRecord = { ...server, adminState };
  tables.putChunkServer(record);
  // A drain going on ends when the admin makes the server something else (cs activate, cs rm): done
  // if nothing is left on it (rm is allowed only then, possibly before the task saw it), else cancelled.
  const drain = adminState === 'draining' ? undefined : activeTaskOn(tables, csId);
  if (drain !== undefined) {
    const left = tables.serverMapped(csId);
    const progress = progressFromLeft(drain, left);
    const atMs = nowMs ?? drain.updatedAtMs;
    const ended = left.replicaCount === 0
      ? { state: 'done' as const, error: null }
      : { state: 'cancelled' as const, error: `cancelled: chunk server ${csId} was made ${adminState} (shoal cs ${adminState === 'active' ? 'activate' : 'rm'})` };
    tables.putTask({ ...drain, ...progress, ...ended, updatedAtMs: atMs, finishedAtMs: atMs });
  }
  return { type: 'chunkServer', record };
}

// ---- tasks ---------------------------------------------------------------------------------------

/** The drain still going (not finished) of a chunk server, if any: at most one at a time. */
function activeTaskOn(tables: MdsTables, csId: number): DrainTaskRecord | undefined {
  return tables.listTasks().find((task): task is DrainTaskRecord =>
    task.kind === 'drain' && task.chunkServerId === csId && !isFinalTaskState(task.state));
}

/** The rebalance still going (not finished), if any: at most one at a time. */
export function activeRebalance(tables: MdsTables): TaskRecord | undefined {
  return tables.listTasks().find((task) => task.kind === 'rebalance' && !isFinalTaskState(task.state));
}

function describeTask(task: TaskRecord): string {
  const what = task.kind === 'drain'
    ? `drain of chunk server ${task.chunkServerId}`
    : task.kind === 'tier'
      ? `move of ${'chunkServerId' in task.target ? `chunk server ${task.target.chunkServerId}` : `volume ${task.target.volumeId}`} ` +
        `from ${task.fromTier === null ? 'any tier' : `tier ${task.fromTier}`} to tier ${task.toTier}`
      : `rebalance to within ${Math.round(task.thresholdFraction * 100)} points, started by ${task.startedBy === 'mds' ? 'the MDS' : 'an admin'}`;
  return `task ${task.id} (${what}, ${task.state}, ${task.itemsDone} of ${task.itemsTotal} replicas moved)`;
}

/** What to do about a task that is in the way. */
function taskHelp(task: TaskRecord): string {
  const resume = task.state === 'paused' ? `resume it with shoal task resume ${task.id}, ` : '';
  return `follow it with shoal task wait ${task.id}, ${resume}or cancel it with shoal task cancel ${task.id}`;
}

/** The task an earlier request with the same key started, if `sameRequest` says it is that request; a different one is refused. */
function taskOfKey(tables: MdsTables, key: string | null, sameRequest: (task: TaskRecord) => boolean): TaskRecord | undefined {
  if (key === null) return undefined;
  const same = tables.listTasks().find((task) => task.idempotencyKey === key);
  if (same === undefined || sameRequest(same)) return same;
  throw new StorageError('ERR_CONFLICT', `idempotency key "${key}" belongs to ${describeTask(same)}: a different request needs a new key`);
}

function newTaskId(tables: MdsTables): number {
  const id = Math.max(1, tables.getMeta('nextTaskId'));
  tables.putMeta('nextTaskId', id + 1);
  return id;
}

function startDrainTask(tables: MdsTables, op: Extract<MdsOp, { type: 'startDrainTask' }>): MdsOpResult {
  const same = taskOfKey(tables, op.idempotencyKey, (task) => task.kind === 'drain' && task.chunkServerId === op.csId);
  if (same !== undefined) return { type: 'task', record: same };
  const server = tables.getChunkServer(op.csId);
  if (server === undefined) throw new StorageError('ERR_NOT_FOUND', `chunk server ${op.csId} does not exist`);
  if (server.adminState === 'removed') throw new StorageError('ERR_CONFLICT', `chunk server ${op.csId} was removed already`);
  const going = activeTaskOn(tables, op.csId);
  if (going !== undefined) {
    if (!op.joinRunning) {
      throw new StorageError('ERR_TASK_CONFLICT',
        `chunk server ${op.csId} is already being drained by ${describeTask(going)}: ${taskHelp(going)}`);
    }
    if (going.state !== 'paused') return { type: 'task', record: going };
    return setTaskState(tables, { type: 'setTaskState', taskId: going.id, state: 'running', error: null, nowMs: op.nowMs });
  }
  tables.putChunkServer({ ...server, adminState: 'draining' });
  const mapped = tables.serverMapped(op.csId);
  const empty = mapped.replicaCount === 0;
  const record: TaskRecord = {
    id: newTaskId(tables), kind: 'drain', chunkServerId: op.csId, state: empty ? 'done' : 'running', idempotencyKey: op.idempotencyKey,
    itemsDone: 0, itemsTotal: mapped.replicaCount, bytesDone: 0, bytesTotal: mapped.mappedBytes, error: null,
    createdAtMs: op.nowMs, updatedAtMs: op.nowMs, finishedAtMs: empty ? op.nowMs : null,
  };
  tables.putTask(record);
  pruneFinishedTasks(tables);
  return { type: 'task', record, created: true };
}

function startRebalanceTask(tables: MdsTables, op: Extract<MdsOp, { type: 'startRebalanceTask' }>): MdsOpResult {
  assert(op.thresholdFraction > 0 && op.thresholdFraction < 1, 'a rebalance threshold is between 0 and 100 points');
  assert(Number.isSafeInteger(op.estimate.items) && op.estimate.items >= 0 && Number.isSafeInteger(op.estimate.bytes) && op.estimate.bytes >= 0,
    'a rebalance estimate counts replicas and bytes');
  const same = taskOfKey(tables, op.idempotencyKey, (task) => task.kind === 'rebalance' && task.thresholdFraction === op.thresholdFraction);
  if (same !== undefined) return { type: 'task', record: same };
  const going = activeRebalance(tables);
  if (going !== undefined) {
    throw new StorageError('ERR_TASK_CONFLICT', `the chunk servers are already being rebalanced by ${describeTask(going)}: ${taskHelp(going)}`);
  }
  const record: TaskRecord = {
    id: newTaskId(tables), kind: 'rebalance', thresholdFraction: op.thresholdFraction, startedBy: op.startedBy, state: 'running',
    idempotencyKey: op.idempotencyKey, itemsDone: 0, itemsTotal: op.estimate.items, bytesDone: 0, bytesTotal: op.estimate.bytes,
    error: null, createdAtMs: op.nowMs, updatedAtMs: op.nowMs, finishedAtMs: null,
  };
  tables.putTask(record);
  pruneFinishedTasks(tables);
  return { type: 'task', record, created: true };
}

/** The tier task still going (not finished) of a server or volume, if any: at most one at a time. */
export function activeTierTask(tables: MdsTables, target: TierTarget): TierTaskRecord | undefined {
  return tables.listTasks().find((task): task is TierTaskRecord => task.kind === 'tier' && !isFinalTaskState(task.state) && sameTierTarget(task.target, target));
}

function sameTierTarget(a: TierTarget, b: TierTarget): boolean {
  return 'chunkServerId' in a ? 'chunkServerId' in b && a.chunkServerId === b.chunkServerId : 'volumeId' in b && a.volumeId === b.volumeId;
}

/** The replicas a tier task's target still has on the wrong tier (see tiers.ts). */
export function tierTaskLeft(tables: MdsTables, target: TierTarget): ServerMapped {
  if ('chunkServerId' in target) {
    const server = tables.getChunkServer(target.chunkServerId);
    assert(server !== undefined, 'a tier task names a registered server');
    return misplacedOnServer(tables, server, new Map(tables.listVolumes().map((volume) => [volume.id, volume])));
  }
  const volume = tables.getVolume(target.volumeId);
  // Deleted since: nothing of it is left to move.
  return volume === undefined ? { replicaCount: 0, mappedBytes: 0 } : misplacedOfVolume(tables, volume, tables.listChunkServers());
}

/**
 * Sets the target's tier: a volume's (null: any tier), or a server's, as set by an admin (kept
 * across restarts) unless `setByAdmin` says otherwise (a cancel restoring a flag's tier). Returns
 * the tier it had, and for a server whether an admin had set it.
 */
function putTier(tables: MdsTables, target: TierTarget, tier: number | null, setByAdmin = true): { tier: number | null; setByAdmin: boolean } {
  assert(tier === null || (Number.isInteger(tier) && tier >= 0 && tier <= TIER_MAX), 'a tier is within 0..TIER_MAX');
  if ('chunkServerId' in target) {
    assert(tier !== null, 'a chunk server has a tier');
    const server = tables.getChunkServer(target.chunkServerId);
    if (server === undefined) throw new StorageError('ERR_NOT_FOUND', `chunk server ${target.chunkServerId} does not exist`);
    if (server.adminState === 'removed') throw new StorageError('ERR_CONFLICT', `chunk server ${target.chunkServerId} was removed`);
    const { tierSetByAdmin: _before, ...rest } = server;
    tables.putChunkServer({ ...rest, tier, ...(setByAdmin ? { tierSetByAdmin: true } : {}) });
    return { tier: server.tier, setByAdmin: server.tierSetByAdmin === true };
  }
  const volume = requireVolume(tables, target.volumeId);
  const { tier: _previous, ...rest } = volume;
  tables.putVolume(tier === null ? rest : { ...rest, tier });
  return { tier: volumeTier(volume), setByAdmin: false };
}

function startTierTask(tables: MdsTables, op: Extract<MdsOp, { type: 'startTierTask' }>): MdsOpResult {
  const same = taskOfKey(tables, op.idempotencyKey, (task) => task.kind === 'tier' && sameTierTarget(task.target, op.target) && task.toTier === op.tier);
  if (same !== undefined) return { type: 'task', record: same };
  const going = activeTierTask(tables, op.target);
  const name = 'chunkServerId' in op.target ? `chunk server ${op.target.chunkServerId}`
    : `volume "${tables.getVolume(op.target.volumeId)?.name ?? op.target.volumeId}"`;
  if (going !== undefined) {
    throw new StorageError('ERR_TASK_CONFLICT', `${name} is already moving by ${describeTask(going)}: ${taskHelp(going)} (a cancel puts its tier back)`);
  }
  const before = putTier(tables, op.target, op.tier);
  if (before.tier === op.tier) throw new StorageError('ERR_INVALID_ARGUMENT', `${name} is in tier ${op.tier} already`);
  const left = tierTaskLeft(tables, op.target);
  const empty = left.replicaCount === 0;
  const record: TaskRecord = {
    id: newTaskId(tables), kind: 'tier', target: op.target, fromTier: before.tier, toTier: op.tier, state: empty ? 'done' : 'running',
    ...('chunkServerId' in op.target ? { fromTierSetByAdmin: before.setByAdmin } : {}),
    idempotencyKey: op.idempotencyKey, itemsDone: 0, itemsTotal: left.replicaCount, bytesDone: 0, bytesTotal: left.mappedBytes, error: null,
    createdAtMs: op.nowMs, updatedAtMs: op.nowMs, finishedAtMs: empty ? op.nowMs : null,
  };
  tables.putTask(record);
  pruneFinishedTasks(tables);
  return { type: 'task', record, created: true };
}

/** Where a task may go from each state. */
const TASK_MOVES: Readonly<Record<TaskState, readonly TaskState[]>> = {
  queued: ['running', 'cancelled'],
  running: ['paused', 'done', 'failed', 'cancelled'],
  paused: ['running', 'cancelled'],
  done: [],
  failed: [],
  cancelled: [],
};

function setTaskState(tables: MdsTables, op: Extract<MdsOp, { type: 'setTaskState' }>): MdsOpResult {
  const task = tables.getTask(op.taskId);
  if (task === undefined) throw new StorageError('ERR_NOT_FOUND', `task ${op.taskId} does not exist`);
  if (!TASK_MOVES[task.state].includes(op.state)) {
    throw new StorageError('ERR_CONFLICT', `${describeTask(task)} cannot become ${op.state}`);
  }
  // A rebalance's progress is counted by the MDS as moves finish (tasks.ts) and saved before its
  // state changes; it has no server of its own to follow.
  if (task.kind === 'rebalance') {
    // Done means nothing is left: the estimate of what was left goes.
    const progress = op.state === 'done' ? { ...task, itemsTotal: task.itemsDone, bytesTotal: task.bytesDone } : task;
    return putTaskState(tables, task, progress, op);
  }
  if (task.kind === 'tier') {
    const left = tierTaskLeft(tables, task.target);
    if (op.state === 'done' && left.replicaCount > 0) {
      throw new StorageError('ERR_CONFLICT', `${describeTask(task)} is not done: ${left.replicaCount} replicas are still on the wrong tier`);
    }
    const progress = task.state === 'running' ? progressFromLeft(task, left) : task;
    // A cancel puts the tier back: what moved is then on the wrong tier, and moves back.
    // (Not when the server was removed or the volume deleted since: there is nothing to put back.)
    const exists = 'chunkServerId' in task.target
      ? tables.getChunkServer(task.target.chunkServerId)?.adminState !== 'removed'
      : tables.getVolume(task.target.volumeId) !== undefined;
    if (op.state === 'cancelled' && exists) putTier(tables, task.target, task.fromTier, task.fromTierSetByAdmin ?? true);
    return putTaskState(tables, task, progress, op);
  }
  const server = tables.getChunkServer(task.chunkServerId);
  assert(server !== undefined, 'a drain task names a registered server');
  if (op.state === 'done' && tables.serverMapped(task.chunkServerId).replicaCount > 0) {
    throw new StorageError('ERR_CONFLICT', `${describeTask(task)} is not done: chunk server ${task.chunkServerId} still holds replicas`);
  }
  // Paused or cancelled, the server serves again and nothing more moves; resumed, it drains again.
  // Each replica moved so far stayed moved: a move is one change of a chunk's set, never half made.
  if (server.adminState !== 'removed') {
    if (op.state === 'paused' || op.state === 'cancelled' || op.state === 'failed') tables.putChunkServer({ ...server, adminState: 'active' });
    if (op.state === 'running') tables.putChunkServer({ ...server, adminState: 'draining' });
  } else if (op.state === 'running') {
    throw new StorageError('ERR_CONFLICT', `chunk server ${task.chunkServerId} was removed: ${describeTask(task)} cannot resume`);
  }
  // Progress as of this change (the last save may be seconds old): a pause or cancel says what was done.
  const progress = task.state === 'running' ? progressFromLeft(task, tables.serverMapped(task.chunkServerId)) : task;
  return putTaskState(tables, task, progress, op);
}

function putTaskState(tables: MdsTables, task: TaskRecord, progress: TaskProgress, op: Extract<MdsOp, { type: 'setTaskState' }>): MdsOpResult {
  const final = isFinalTaskState(op.state);
  const { itemsDone, itemsTotal, bytesDone, bytesTotal } = progress;
  const record: TaskRecord = {
    ...task, itemsDone, itemsTotal, bytesDone, bytesTotal, state: op.state, error: op.error, updatedAtMs: op.nowMs, finishedAtMs: final ? op.nowMs : null,
  };
  tables.putTask(record);
  return { type: 'task', record };
}

function recordTaskProgress(tables: MdsTables, op: Extract<MdsOp, { type: 'recordTaskProgress' }>): MdsOpResult {
  const task = tables.getTask(op.taskId);
  // Paused or ended since the progress was measured: its own change recorded the progress then.
  if (task === undefined || task.state !== 'running') return NONE;
  assert(op.itemsDone <= op.itemsTotal && op.bytesDone <= op.bytesTotal, 'progress is within its total');
  if (task.kind === 'rebalance') {
    // Its moves are counted as they commit (countMove), maybe since the caller read the record:
    // those counts stand, and the caller's estimate of what is left is added to them.
    assert(op.itemsDone <= task.itemsDone && op.bytesDone <= task.bytesDone, 'a rebalance\'s counts come from its record');
    const { itemsDone, bytesDone } = task;
    const left = { itemsTotal: itemsDone + op.itemsTotal - op.itemsDone, bytesTotal: bytesDone + op.bytesTotal - op.bytesDone };
    const record: TaskRecord = { ...task, itemsDone, bytesDone, ...left, updatedAtMs: op.nowMs };
    tables.putTask(record);
    return { type: 'task', record };
  }
  assert(op.itemsDone >= task.itemsDone, 'a task\'s items done only grow');
  const record: TaskRecord = { ...task, ...{ itemsDone: op.itemsDone, itemsTotal: op.itemsTotal, bytesDone: op.bytesDone, bytesTotal: op.bytesTotal }, updatedAtMs: op.nowMs };
  tables.putTask(record);
  return { type: 'task', record };
}

/** Keeps the newest FINISHED_TASKS_KEPT finished tasks. */
function pruneFinishedTasks(tables: MdsTables): void {
  const finished = tables.listTasks().filter((task) => isFinalTaskState(task.state));
  for (const task of finished.slice(0, Math.max(0, finished.length - FINISHED_TASKS_KEPT))) tables.deleteTask(task.id);
}

/** At most this many separate ranges are kept; more become one range over the whole chunk. */
const IN_DOUBT_RANGES_MAX = 16;

function markInDoubt(tables: MdsTables, op: Extract<MdsOp, { type: 'markInDoubt' }>): MdsOpResult {
  const chunk = tables.getChunk(op.volumeId, op.chunkIndex);
  if (chunk === undefined) return NONE;
  let ranges = [...(chunk.inDoubt ?? []), ...op.ranges];
  if (ranges.length > IN_DOUBT_RANGES_MAX) {
    const volume = tables.getVolume(op.volumeId);
    ranges = [{ offsetBytes: 0, lengthBytes: volume?.chunkSizeBytes ?? Math.max(...ranges.map((r) => r.offsetBytes + r.lengthBytes)) }];
  }
  const record: ChunkRecord = { ...chunk, inDoubt: ranges };
  tables.putChunk(record);
  return { type: 'chunk', record };
}

/** Chunks one markServerChunksInDoubt op covers at most (one bounded write transaction). */
export const MARK_IN_DOUBT_SLICE_CHUNKS = 2_048;

function markServerChunksInDoubt(tables: MdsTables, op: Extract<MdsOp, { type: 'markServerChunksInDoubt' }>): MdsOpResult {
  const limit = op.limit ?? MARK_IN_DOUBT_SLICE_CHUNKS;
  assert(Number.isSafeInteger(limit) && limit > 0 && limit <= MARK_IN_DOUBT_SLICE_CHUNKS, 'a slice is bounded');
  const keys = tables.listServerChunks(op.csId, op.after, limit);
  for (const { volumeId, chunkIndex } of keys) {
    const chunk = tables.getChunk(volumeId, chunkIndex);
    assert(chunk !== undefined && chunk.replicas.includes(op.csId), 'the server index names chunks the server is a member of');
    const volume = tables.getVolume(volumeId);
    if (chunk.replicas.length < 2 || volume === undefined) continue;
    const whole: InDoubtRange = { offsetBytes: 0, lengthBytes: volume.chunkSizeBytes };
    // Already in doubt as a whole (an earlier pass): nothing to write.
    if (chunk.inDoubt?.length === 1 && chunk.inDoubt[0]?.offsetBytes === 0 && chunk.inDoubt[0].lengthBytes === whole.lengthBytes) continue;
    tables.putChunk({ ...chunk, inDoubt: [whole] });
  }
  const last = keys.at(-1);
  return { type: 'cursor', next: keys.length < limit || last === undefined ? null : last };
}

function queueReplicaDeletes(tables: MdsTables, entries: Extract<MdsOp, { type: 'queueReplicaDeletes' }>['entries']): MdsOpResult {
  for (const entry of entries) {
    // A replica that became a member since it was listed is kept: members are never deleted.
    if (entry.volumeId !== undefined && entry.chunkIndex !== undefined) {
      const chunk = tables.getChunk(entry.volumeId, entry.chunkIndex);
      if (chunk !== undefined && chunk.replicas.includes(entry.csId)) continue;
    }
    const existing = tables.getPendingDelete(entry.chunkId);
    const pending = existing?.csIds ?? [];
    if (pending.includes(entry.csId)) continue;
    const where = entry.volumeId !== undefined && entry.chunkIndex !== undefined ? { volumeId: entry.volumeId, chunkIndex: entry.chunkIndex } : {};
    tables.putPendingDelete({ ...existing, ...where, chunkId: entry.chunkId, csIds: [...pending, entry.csId] });
  }
  return NONE;
}

/** Ops that give chunk servers new replica state move the generation on (see generations.ts). */
function bumpGeneration(tables: MdsTables): void {
  tables.putMeta('generation', tables.getMeta('generation') + 1);
}

function recordLostGenerations(tables: MdsTables, op: Extract<MdsOp, { type: 'recordLostGenerations' }>): MdsOpResult {
  const current = tables.getMeta('generation');
  // Another server may have revealed (part of) the gap first: record only what is still above.
  if (op.highInclusive <= current) return NONE;
  assert(op.lowExclusive <= current, 'a lost range starts at or below the current generation');
  tables.putLostGenerations({ lowExclusive: Math.max(op.lowExclusive, 0), highInclusive: op.highInclusive, foundAtMs: op.nowMs });
  // New commands must never reuse a generation of the lost range.
  tables.putMeta('generation', op.highInclusive);
  return NONE;
}

function quarantineReplicas(tables: MdsTables, op: Extract<MdsOp, { type: 'quarantineReplicas' }>): MdsOpResult {
  for (const entry of op.entries) {
    // A replica that became a member meanwhile is not quarantined: members are never set aside.
    const chunk = tables.getChunk(entry.volumeId, entry.chunkIndex);
    if (chunk !== undefined && chunk.chunkId === entry.chunkId && chunk.replicas.includes(entry.csId)) continue;
    const existing = tables.getQuarantined(entry.chunkId, entry.csId);
    tables.putQuarantined({
      ...entry,
      // Once newer, always newer: a later look at it must not downgrade it to deletable.
      newerThanMap: entry.newerThanMap || (existing?.newerThanMap ?? false),
      sinceMs: existing?.sinceMs ?? op.nowMs,
    });
  }
  return NONE;
}

function releaseQuarantined(tables: MdsTables, entries: Extract<MdsOp, { type: 'releaseQuarantined' }>['entries']): MdsOpResult {
  for (const { chunkId, csId } of entries) {
    if (tables.getQuarantined(chunkId, csId) === undefined) continue;
    tables.deleteQuarantined(chunkId, csId);
    const pending = tables.getPendingDelete(chunkId);
    if (pending?.csIds.includes(csId) === true) continue;
    tables.putPendingDelete({ ...pending, chunkId, csIds: [...(pending?.csIds ?? []), csId] });
  }
  return NONE;
}

function raiseEpochs(tables: MdsTables, entries: Extract<MdsOp, { type: 'raiseEpochs' }>['entries']): MdsOpResult {
  for (const { volumeId, epoch } of entries) {
    const volume = tables.getVolume(volumeId);
    if (volume === undefined || epoch <= volume.epoch) continue;
    tables.putVolume({ ...volume, epoch });
  }
  return NONE;
}

function adoptVolume(tables: MdsTables, op: Extract<MdsOp, { type: 'adoptVolume' }>): MdsOpResult {
  if (tables.getVolume(op.volumeId) !== undefined) return NONE;
  if (tables.getVolumeIdByName(op.name) !== undefined) {
    throw new StorageError('ERR_VOLUME_EXISTS', `volume "${op.name}" already exists; cannot take volume ${op.volumeId} back under that name`);
  }
  assert(op.replicasMin >= 1 && op.replicasMin <= op.replicasNormal, 'replicas min within 1..normal');
  const record: VolumeRecord = {
    id: op.volumeId,
    name: op.name,
    sizeBytes: op.sizeBytes,
    chunkSizeBytes: op.chunkSizeBytes,
    replicasNormal: op.replicasNormal,
    replicasMin: op.replicasMin,
    createdAtMs: op.nowMs,
    epoch: op.epoch,
    lease: null,
  };
  tables.putVolume(record);
  tables.putMeta('nextVolumeId', Math.max(tables.getMeta('nextVolumeId'), op.volumeId + 1));
  return { type: 'volume', record };
}

function adoptChunk(tables: MdsTables, op: Extract<MdsOp, { type: 'adoptChunk' }>): MdsOpResult {
  const volume = requireVolume(tables, op.volumeId);
  if (tables.getChunk(op.volumeId, op.chunkIndex) !== undefined) return NONE;
  assert(op.replicas.length >= 1 && new Set(op.replicas).size === op.replicas.length, 'an adopted chunk has distinct members');
  for (const csId of [...op.replicas, ...op.olderCopies]) assert(tables.getChunkServer(csId) !== undefined, 'adopted replicas sit on known servers');
  const record: ChunkRecord = {
    volumeId: op.volumeId,
    chunkIndex: op.chunkIndex,
    chunkId: op.chunkId,
    version: op.version,
    replicas: [...op.replicas],
    // A write may have died half-done on these members: they are compared before anything else.
    ...(op.replicas.length > 1 ? { inDoubt: [{ offsetBytes: 0, lengthBytes: volume.chunkSizeBytes }] } : {}),
  };
  tables.putChunk(record);
  for (const csId of [...op.replicas, ...op.olderCopies]) tables.deleteQuarantined(op.chunkId, csId);
  if (op.olderCopies.length > 0) {
    tables.putPendingDelete({ chunkId: op.chunkId, csIds: [...op.olderCopies], volumeId: op.volumeId, chunkIndex: op.chunkIndex });
  }
  tables.putMeta('nextChunkId', Math.max(tables.getMeta('nextChunkId'), op.chunkId + 1));
  return { type: 'chunk', record };
}
