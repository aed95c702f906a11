// The replica store's interface: what the chunk server's handlers, its server loop, the scrubber,
// the MDS link and the metrics ask of the chunk replicas on one disk. One implementation
// (chunk_store.ts) runs on a Disk and a Catalog, so seeded tests run it on a simulated disk.

import type { VolumeDescription, VolumeListEntry } from '../../protocol/cs_messages.ts';
import type { Journal } from '../journal/journal.ts';
import type { ChunkMeta } from './catalog.ts';

export type { ChunkMeta } from './catalog.ts';

export interface ChunkStoreStats {
  checksumErrorsTotal: number;
  readBytesTotal: number;
  writtenBytesTotal: number;
  zeroedBytesTotal: number;
  repairedBlocksTotal: number;
  /** Data bytes written into replicas that are not members yet or are being settled (version null): copies. */
  filledBytesTotal: number;
}

export interface ReadOptions {
  /** Not through the read cache: a copy to another server reads each block once, in order. */
  readonly uncached?: boolean;
}

export interface ReplicaStore {
  readonly stats: ChunkStoreStats;
  readonly journal: Journal;
  readonly chunkCount: number;
  /** Whether the previous run stopped cleanly (else members may differ: the MDS compares them). */
  readonly previousStopClean: boolean;
  /** Data start-up could not restore, or null. */
  readonly damage: string | null;
  /** Why this server should not get new replicas now, or null. */
  readonly healthProblem: string | null;
  /** Client changes admitted and not finished, all volumes. */
  readonly admittedCount: number;

  getMeta(chunkId: number): ChunkMeta | undefined;
  listChunks(fromChunkId: number, limit: number): ChunkMeta[];
  listVolumes(limit: number): VolumeListEntry[];
  createChunk(meta: ChunkMeta, volume?: VolumeDescription): Promise<ChunkMeta>;
  deleteChunk(chunkId: number): Promise<void>;
  setVersion(chunkId: number, toVersion: number, expectedVersion: number | undefined, generation: number): Promise<ChunkMeta>;

  fenceEpoch(volumeId: number): number;
  raiseFence(volumeId: number, epoch: number): Promise<void>;
  admitChange<T>(volumeId: number, epoch: number, change: () => Promise<T>): Promise<T>;

  write(chunkId: number, version: number | null, offsetBytes: number, data: Buffer): Promise<void>;
  zero(chunkId: number, version: number | null, offsetBytes: number, lengthBytes: number): Promise<void>;
  read(chunkId: number, version: number | null, offsetBytes: number, lengthBytes: number, options?: ReadOptions): Promise<Buffer>;
  blockSums(chunkId: number, version: number, offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  blockStatus(chunkId: number, offsetBytes: number, lengthBytes: number): Promise<number[]>;
  repair(chunkId: number, version: number, offsetBytes: number, blocks: Buffer): Promise<number>;
  findBadBlocks(chunkId: number, offsetBytes: number, lengthBytes: number): Promise<number[]>;

  trackChanges(chunkId: number): void;
  copyRuns(chunkId: number, offsetBytes: number, lengthBytes: number, changedOnly: boolean): Promise<Array<[number, number, boolean]>>;

  syncDirty(): Promise<void>;
  close(): Promise<void>;
  abandon(): Promise<void>;
}
