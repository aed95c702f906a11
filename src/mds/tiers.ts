// Storage tiers: where a volume's replicas belong, which replicas sit on another tier
// (misplaced: spilled while their tier was full, or left behind by a change of tier), and the
// order in which other tiers stand in for a full one. Everything here reads the per-server,
// per-volume replica counts the tables keep with the records (model.ts serverVolumeReplicas):
// no walk of the map, so the stat, the tasks and the planner can ask every second.

import { assert } from '../util/assert.ts';
import { TIER_MAX, volumeTier, type ChunkServerRecord, type MdsTables, type ServerMapped, type VolumeRecord } from './model.ts';

/**
 * The tiers to place on, best first: the wanted one, then the nearest others; of two equally
 * near, the higher (faster, by convention: 0 = HDD .. 2 = SSD) first, so that spilling a full
 * tier never makes a volume slower than it has to.
 */
export function tierOrder(wanted: number): number[] {
  assert(Number.isInteger(wanted) && wanted >= 0 && wanted <= TIER_MAX, 'a tier is within 0..TIER_MAX');
  const order = [wanted];
  for (let distance = 1; distance <= TIER_MAX; distance += 1) {
    if (wanted + distance <= TIER_MAX) order.push(wanted + distance);
    if (wanted - distance >= 0) order.push(wanted - distance);
  }
  return order;
}

/** 0 for the wanted tier, then 1, 2, ... in tierOrder's order; 0 for every tier when any will do (null). */
export function tierRank(wanted: number | null, actual: number): number {
  if (wanted === null) return 0;
  const rank = tierOrder(wanted).indexOf(actual);
  assert(rank >= 0, 'a server\'s tier is within 0..TIER_MAX');
  return rank;
}

/** A server that holds a volume's replicas while belonging to another tier. */
export interface MisplacedPair {
  readonly csId: number;
  readonly volumeId: number;
  readonly replicas: number;
}

/** Whether a replica of `volume` on a server of `serverTier` is on the wrong tier. */
export function isMisplaced(volume: VolumeRecord, serverTier: number): boolean {
  const tier = volumeTier(volume);
  return tier !== null && tier !== serverTier;
}

/**
 * Every (server, volume) whose replicas there are misplaced, by server then volume: where the
 * planner looks. `held`: pairs a paused tier task holds where they are (left out).
 */
export function misplacedPairs(tables: MdsTables, servers: readonly ChunkServerRecord[], volumes: ReadonlyMap<number, VolumeRecord>,
  held: (csId: number, volumeId: number) => boolean = () => false): MisplacedPair[] {
  const pairs: MisplacedPair[] = [];
  for (const server of [...servers].sort((a, b) => a.id - b.id)) {
    if (server.adminState === 'removed') continue;
    const onServer = [...tables.serverVolumeReplicas(server.id)].sort((a, b) => a[0] - b[0]);
    for (const [volumeId, replicas] of onServer) {
      const volume = volumes.get(volumeId);
      if (volume !== undefined && isMisplaced(volume, server.tier) && !held(server.id, volumeId)) pairs.push({ csId: server.id, volumeId, replicas });
    }
  }
  return pairs;
}

/** The replicas on `server` of volumes that belong on other tiers (what a change of its tier moves). */
export function misplacedOnServer(tables: MdsTables, server: ChunkServerRecord, volumes: ReadonlyMap<number, VolumeRecord>): ServerMapped {
  let replicaCount = 0;
  let mappedBytes = 0;
  for (const [volumeId, replicas] of tables.serverVolumeReplicas(server.id)) {
    const volume = volumes.get(volumeId);
    if (volume === undefined || !isMisplaced(volume, server.tier)) continue;
    replicaCount += replicas;
    mappedBytes += replicas * volume.chunkSizeBytes;
  }
  return { replicaCount, mappedBytes };
}

/** The replicas of `volume` on servers of other tiers (what a change of its tier moves). */
export function misplacedOfVolume(tables: MdsTables, volume: VolumeRecord, servers: readonly ChunkServerRecord[]): ServerMapped {
  let replicaCount = 0;
  for (const server of servers) {
    if (server.adminState === 'removed' || !isMisplaced(volume, server.tier)) continue;
    replicaCount += tables.serverVolumeReplicaCount(server.id, volume.id);
  }
  return { replicaCount, mappedBytes: replicaCount * volume.chunkSizeBytes };
}

/** One tier's replicas, as the stat and the metrics show them. */
export interface TierReplicas {
  readonly tier: number;
  /** Replicas on this tier's servers. */
  readonly replicas: number;
  /** Of those, replicas of volumes of other tiers. */
  readonly misplacedReplicas: number;
  /** Replicas of this tier's volumes held on other tiers. */
  readonly elsewhereReplicas: number;
}

/** Replicas per tier 0..TIER_MAX, with what sits on the wrong one. */
export function tierReplicas(tables: MdsTables, servers: readonly ChunkServerRecord[], volumes: ReadonlyMap<number, VolumeRecord>): TierReplicas[] {
  const counts = Array.from({ length: TIER_MAX + 1 }, (_, tier) => ({ tier, replicas: 0, misplacedReplicas: 0, elsewhereReplicas: 0 }));
  for (const server of servers) {
    if (server.adminState === 'removed') continue;
    for (const [volumeId, replicas] of tables.serverVolumeReplicas(server.id)) {
      const here = counts[server.tier];
      assert(here !== undefined, 'a server\'s tier is within 0..TIER_MAX');
      here.replicas += replicas;
      const volume = volumes.get(volumeId);
      const tier = volume === undefined ? null : volumeTier(volume);
      if (tier === null || tier === server.tier) continue;
      here.misplacedReplicas += replicas;
      const home = counts[tier];
      assert(home !== undefined, 'a volume\'s tier is within 0..TIER_MAX');
      home.elsewhereReplicas += replicas;
    }
  }
  return counts;
}
