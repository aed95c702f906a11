// The MDS's durable records and the table interface the state machine is written against. Two
// implementations exist: LMDB (store.ts) for the daemon and plain maps (memory_tables.ts) for
// simulation tests, so the same apply code runs in both.

export interface LeaseRecord {
  readonly holder: string;
  readonly leaseId: string;
  readonly acquiredAtMs: number;
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
}

/** Replicas of a deleted chunk still to be removed from their chunk servers. */
export interface PendingDeleteRecord {
  readonly chunkId: number;
  readonly csIds: readonly number[];
}

export const META_KEYS = ['nextVolumeId', 'nextChunkId', 'nextCsId', 'opSeq'] as const;
export type MetaKey = (typeof META_KEYS)[number];

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
  forEachChunk(visit: (record: ChunkRecord) => void): void;

  getChunkServer(id: number): ChunkServerRecord | undefined;
  getChunkServerIdByUuid(uuid: string): number | undefined;
  putChunkServer(record: ChunkServerRecord): void;
  listChunkServers(): ChunkServerRecord[];

  getPendingDelete(chunkId: number): PendingDeleteRecord | undefined;
  putPendingDelete(record: PendingDeleteRecord): void;
  deletePendingDelete(chunkId: number): void;
  listPendingDeletes(limit: number): PendingDeleteRecord[];
}
