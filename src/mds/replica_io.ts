// What the MDS asks of chunk servers to change replica sets: one interface, two implementations.
// The daemon's talks the chunk-server protocol (CsReplicaIo, here); the simulation's changes
// in-memory replicas (test/sim). The replication procedures (replicator.ts) see only this.

import { StorageError } from '../errors.ts';
import { CS_OP, decodeChunkList, decodeVolumeList, type ChunkListEntry, type VolumeDescription, type VolumeListEntry } from '../protocol/cs_messages.ts';
import type { CsConnectionPool, CsRequestBody, CsResponse } from '../protocol/cs_connection.ts';

export interface ChunkIdentity {
  readonly chunkId: number;
  readonly volumeId: number;
  readonly chunkIndex: number;
  readonly sizeBytes: number;
  /** Kept by the chunk server, for rebuilding the map from the servers if the MDS's is lost. */
  readonly volume?: VolumeDescription;
}

export interface ReplicaIo {
  /** Creates an empty, incomplete replica (version 0) unless the server has one already. */
  createChunk(csId: number, chunk: ChunkIdentity, version: number): Promise<void>;
  deleteChunk(csId: number, chunkId: number): Promise<void>;
  /** The replica's version, or null if the server has no such replica. */
  chunkVersion(csId: number, chunkId: number): Promise<number | null>;
  setVersion(csId: number, chunkId: number, toVersion: number, expectedVersion?: number): Promise<void>;
  trackChanges(csId: number, chunkId: number): Promise<void>;
  /** Source (a member at `version`) sends a range to the target; resolves with bytes sent. */
  copyRange(sourceCsId: number, chunkId: number, version: number, offsetBytes: number, lengthBytes: number,
    changedOnly: boolean, targetCsId: number): Promise<number>;
  read(csId: number, chunkId: number, version: number, offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  /** crc32c of each block of the range (u32 LE each; a hole sums as zeroes), at `version`. */
  blockSums(csId: number, chunkId: number, version: number, offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  /** Writes bytes into a replica regardless of version (in-doubt reconciliation while sealed). */
  fill(csId: number, chunkId: number, offsetBytes: number, data: Buffer): Promise<void>;
  /** Replaces whole blocks that fail their checksum; resolves with blocks replaced. */
  repair(csId: number, chunkId: number, version: number, offsetBytes: number, blocks: Buffer): Promise<number>;
  fence(csId: number, volumeId: number, epoch: number): Promise<void>;
  /** Voids a hypervisor's capabilities issued before the time on the server. */
  revoke(csId: number, hypervisorId: number, issuedBeforeMs: number): Promise<void>;
  listChunks(csId: number): Promise<ChunkListEntry[]>;
  listVolumes(csId: number): Promise<VolumeListEntry[]>;
}

/**
 * ReplicaIo over the chunk-server protocol; `address` resolves a server id to where it listens.
 * Control requests (seal, fence, create) go through `pool`, whose short timeout is how a frozen
 * server is detected; copies move megabytes and go through `bulkPool`, with a long one.
 */
export class CsReplicaIo implements ReplicaIo {
  private readonly pool: CsConnectionPool;
  private readonly bulkPool: CsConnectionPool;
  private readonly address: (csId: number) => { host: string; port: number };
  /** The generation commands carry: the one the op that follows them will commit. */
  private readonly generation: () => number;

  constructor(pool: CsConnectionPool, bulkPool: CsConnectionPool, address: (csId: number) => { host: string; port: number },
    generation: () => number) {
    this.pool = pool;
    this.bulkPool = bulkPool;
    this.address = address;
    this.generation = generation;
  }

  private async call(csId: number, body: CsRequestBody, payload?: Buffer, bulk = false): Promise<CsResponse> {
    const { host, port } = this.address(csId);
    const response = await (bulk ? this.bulkPool : this.pool).request(host, port, body, payload);
    if (response.reply.code !== undefined) {
      throw StorageError.fromWire(response.reply.code, `chunk server ${csId} (${host}:${port}): ${response.reply.message ?? ''}`);
    }
    return response;
  }

  async createChunk(csId: number, chunk: ChunkIdentity, version: number): Promise<void> {
    await this.call(csId, { op: CS_OP.CREATE_CHUNK, ...chunk, version, generation: this.generation() });
  }

  async deleteChunk(csId: number, chunkId: number): Promise<void> {
    await this.call(csId, { op: CS_OP.DELETE_CHUNK, chunkId });
  }

  async chunkVersion(csId: number, chunkId: number): Promise<number | null> {
    try {
      const { reply } = await this.call(csId, { op: CS_OP.CHUNK_INFO, chunkId });
      return reply.version ?? null;
    } catch (error) {
      if (error instanceof StorageError && error.code === 'ERR_CHUNK_NOT_FOUND') return null;
      throw error;
    }
  }

  async setVersion(csId: number, chunkId: number, toVersion: number, expectedVersion?: number): Promise<void> {
    await this.call(csId, {
      op: CS_OP.SET_VERSION, chunkId, toVersion, generation: this.generation(), ...(expectedVersion === undefined ? {} : { expectedVersion }),
    });
  }

  async trackChanges(csId: number, chunkId: number): Promise<void> {
    await this.call(csId, { op: CS_OP.TRACK_CHANGES, chunkId });
  }

  async copyRange(sourceCsId: number, chunkId: number, version: number, offsetBytes: number, lengthBytes: number,
    changedOnly: boolean, targetCsId: number): Promise<number> {
    const target = { csId: targetCsId, ...this.address(targetCsId) };
    const { reply } = await this.call(sourceCsId, { op: CS_OP.COPY_RANGE, chunkId, version, offsetBytes, lengthBytes, changedOnly, target }, undefined, true);
    return reply.doneBytes ?? 0;
  }

  async read(csId: number, chunkId: number, version: number, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const { payload } = await this.call(csId, { op: CS_OP.READ, chunkId, version, offsetBytes, lengthBytes }, undefined, true);
    return payload;
  }

  async blockSums(csId: number, chunkId: number, version: number, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const { payload } = await this.call(csId, { op: CS_OP.BLOCK_SUMS, chunkId, version, offsetBytes, lengthBytes }, undefined, true);
    return payload;
  }

  async fill(csId: number, chunkId: number, offsetBytes: number, data: Buffer): Promise<void> {
    await this.call(csId, { op: CS_OP.REPLICA_WRITE, chunkId, offsetBytes, lengthBytes: data.length }, data, true);
  }

  async repair(csId: number, chunkId: number, version: number, offsetBytes: number, blocks: Buffer): Promise<number> {
    const { reply } = await this.call(csId, { op: CS_OP.REPAIR, chunkId, version, offsetBytes, lengthBytes: blocks.length }, blocks, true);
    return Math.floor((reply.doneBytes ?? 0) / 4096);
  }

  async fence(csId: number, volumeId: number, epoch: number): Promise<void> {
    await this.call(csId, { op: CS_OP.FENCE, volumeId, epoch });
  }

  async revoke(csId: number, hypervisorId: number, issuedBeforeMs: number): Promise<void> {
    await this.call(csId, { op: CS_OP.REVOKE, hypervisorId, issuedBeforeMs });
  }

  async listVolumes(csId: number): Promise<VolumeListEntry[]> {
    const { payload } = await this.call(csId, { op: CS_OP.LIST_VOLUMES });
    return decodeVolumeList(payload);
  }

  async listChunks(csId: number): Promise<ChunkListEntry[]> {
    const all: ChunkListEntry[] = [];
    let fromChunkId: number | undefined = 0;
    while (fromChunkId !== undefined) {
      const response: CsResponse = await this.call(csId, { op: CS_OP.LIST_CHUNKS, fromChunkId, limit: 16384 });
      all.push(...decodeChunkList(response.payload));
      fromChunkId = response.reply.nextChunkId;
    }
    return all;
  }
}
