// Rebuilding the chunk map from what the chunk servers hold, for the day the MDS's database is gone
// with no backup, or was restored from a copy older than the cluster. Every replica carries its
// volume, index, version and the MDS generation it was made under, and every server keeps a
// description of each volume it holds replicas of (name, size, replica counts) and its fence
// epochs. From that, this module decides which volumes and chunks the map lacks and how to take
// them back; cluster.ts gathers the servers' lists and submits the ops.
//
// Rules:
// - a volume the map does not have comes back under its id, with the name its servers knew (a
//   name taken meanwhile gets a "-recovered-<id>" suffix), its replica counts, a size covering
//   its described size and every chunk found, and an epoch above every fence the servers hold;
// - a chunk index the map lacks comes back with the replicas of the newest copy (highest
//   generation, then highest version) as members; holders of older versions stay outside the set
//   (they are brought up to date cheaply by recovery); the chunk is put in doubt, so its members
//   are compared before anything else, since a write may have died half-done on them;
// - a chunk index the map has, under another chunk id, is a conflict: the map wins, and the
//   servers' copies stay quarantined for an admin to look at.
//
// Pure: the inputs are plain lists and the current tables; nothing here does I/O.

import { CHUNK_BYTES_MAX, REPLICAS_MAX, VOLUME_BYTES_MAX } from '../limits.ts';
import type { ChunkListEntry, VolumeListEntry } from '../protocol/cs_messages.ts';
import type { MdsTables } from './model.ts';
import type { MdsOp } from './ops.ts';

export interface ServerHoldings {
  readonly csId: number;
  readonly chunks: readonly ChunkListEntry[];
  readonly volumes: readonly VolumeListEntry[];
}

export interface RebuildPlan {
  readonly ops: MdsOp[];
  readonly volumesAdopted: number;
  readonly chunksAdopted: number;
  /** Chunk indexes the map has under another chunk id: the map's is kept. */
  readonly conflicts: number;
}

const DEFAULT_REPLICAS = { normal: 3, min: 2 };

export function planRebuild(tables: MdsTables, holdings: readonly ServerHoldings[], nowMs: number): RebuildPlan {
  const ops: MdsOp[] = [];
  const volumesAdopted = planVolumes(tables, holdings, nowMs, ops);
  let chunksAdopted = 0;
  let conflicts = 0;
  let highestChunkId = 0;
  for (const group of chunkGroups(holdings).values()) {
    const best = newestCopy(group);
    highestChunkId = Math.max(highestChunkId, ...group.map((entry) => entry.replica.chunkId));
    const mapped = tables.getChunk(best.replica.volumeId, best.replica.chunkIndex);
    if (mapped !== undefined) {
      if (mapped.chunkId !== best.replica.chunkId) conflicts += 1;
      continue;
    }
    const sameChunk = group.filter((entry) => entry.replica.chunkId === best.replica.chunkId);
    const members = [...new Set(sameChunk.filter((entry) => entry.replica.version === best.replica.version).map((entry) => entry.csId))]
      .slice(0, REPLICAS_MAX);
    const older = [...new Set(sameChunk.filter((entry) => entry.replica.version !== best.replica.version).map((entry) => entry.csId))];
    ops.push({
      type: 'adoptChunk',
      volumeId: best.replica.volumeId,
      chunkIndex: best.replica.chunkIndex,
      chunkId: best.replica.chunkId,
      version: best.replica.version,
      replicas: members,
      olderCopies: older.filter((csId) => !members.includes(csId)),
    });
    chunksAdopted += 1;
  }
  if (highestChunkId > 0) ops.push({ type: 'reserveChunkIdsAbove', chunkId: highestChunkId });
  return { ops, volumesAdopted, chunksAdopted, conflicts };
}

interface Held {
  readonly csId: number;
  readonly replica: ChunkListEntry;
}

/** Replicas by volume and chunk index. */
function chunkGroups(holdings: readonly ServerHoldings[]): Map<string, Held[]> {
  const groups = new Map<string, Held[]>();
  for (const { csId, chunks } of holdings) {
    for (const replica of chunks) {
      const key = `${replica.volumeId}:${replica.chunkIndex}`;
      const group = groups.get(key) ?? [];
      group.push({ csId, replica });
      groups.set(key, group);
    }
  }
  return groups;
}

/** The copy made by the latest MDS state, then the one that went furthest. */
function newestCopy(group: readonly Held[]): Held {
  let best = group[0];
  for (const entry of group) {
    if (best === undefined || entry.replica.generation > best.replica.generation ||
      (entry.replica.generation === best.replica.generation && entry.replica.version > best.replica.version)) best = entry;
  }
  if (best === undefined) throw new Error('a chunk group is never empty');
  return best;
}

/** Adds an adoptVolume op for each volume with replicas that the map does not have; returns how many. */
function planVolumes(tables: MdsTables, holdings: readonly ServerHoldings[], nowMs: number, ops: MdsOp[]): number {
  interface Seen {
    chunkSizeBytes: number;
    highestIndex: number;
    description: VolumeListEntry['description'];
    epoch: number;
  }
  const seen = new Map<number, Seen>();
  for (const { chunks, volumes } of holdings) {
    for (const replica of chunks) {
      const entry = seen.get(replica.volumeId) ?? { chunkSizeBytes: replica.sizeBytes, highestIndex: 0, description: null, epoch: 0 };
      entry.highestIndex = Math.max(entry.highestIndex, replica.chunkIndex);
      entry.chunkSizeBytes = Math.max(entry.chunkSizeBytes, replica.sizeBytes);
      seen.set(replica.volumeId, entry);
    }
    for (const volume of volumes) {
      const entry = seen.get(volume.volumeId);
      if (entry === undefined) continue; // fences of volumes without replicas: nothing to take back
      entry.epoch = Math.max(entry.epoch, volume.fenceEpoch);
      if (volume.description !== null && (entry.description === null || volume.description.sizeBytes > entry.description.sizeBytes)) {
        entry.description = volume.description;
      }
    }
  }
  let adopted = 0;
  const takenNames = new Set(tables.listVolumes().map((volume) => volume.name));
  for (const [volumeId, entry] of [...seen.entries()].sort((a, b) => a[0] - b[0])) {
    if (tables.getVolume(volumeId) !== undefined) continue;
    const chunkSizeBytes = Math.min(entry.chunkSizeBytes, CHUNK_BYTES_MAX);
    const fallbackName = `recovered-${volumeId}`;
    let name = entry.description?.name ?? fallbackName;
    if (takenNames.has(name)) name = `${name}-recovered-${volumeId}`.slice(0, 128);
    takenNames.add(name);
    const coveredBytes = (entry.highestIndex + 1) * chunkSizeBytes;
    ops.push({
      type: 'adoptVolume',
      volumeId,
      name,
      sizeBytes: Math.min(VOLUME_BYTES_MAX, Math.max(entry.description?.sizeBytes ?? 0, coveredBytes)),
      chunkSizeBytes,
      replicasNormal: entry.description?.replicasNormal ?? DEFAULT_REPLICAS.normal,
      replicasMin: entry.description?.replicasMin ?? DEFAULT_REPLICAS.min,
      // Above every fence the servers hold, so the first writer after the rebuild is not refused.
      epoch: entry.epoch,
      nowMs,
    });
    adopted += 1;
  }
  return adopted;
}
