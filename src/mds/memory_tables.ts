// MdsTables over plain maps: the same state machine as the daemon's LMDB tables, for simulation
// tests that apply thousands of ops per second and for checking `applyOp` without a disk.
// `snapshot`/`restore` give transactions: an op that throws leaves no trace, as in LMDB.
// The chunk indexes the LMDB tables keep are computed here by walking the map: simple and
// obviously right, the reference the LMDB indexes are tested against.

import {
  needsAttention,
  type ChunkKey, type ChunkRecord, type ChunkServerRecord, type HypervisorRecord, type LostGenerations, type MdsTables, type MetaKey,
  type PendingDeleteRecord, type QuarantineRecord, type ServerMapped, type TaskRecord, type VolumeRecord,
} from './model.ts';
import { applyOp, type MdsOp, type MdsOpResult } from './ops.ts';

interface State {
  meta: Map<MetaKey, number>;
  volumes: Map<number, VolumeRecord>;
  volumeNames: Map<string, number>;
  chunks: Map<string, ChunkRecord>;
  chunkServers: Map<number, ChunkServerRecord>;
  csUuids: Map<string, number>;
  pendingDeletes: Map<number, PendingDeleteRecord>;
  quarantine: Map<string, QuarantineRecord>;
  lostGenerations: LostGenerations[];
  hypervisors: Map<number, HypervisorRecord>;
  tasks: Map<number, TaskRecord>;
}

const chunkKey = (volumeId: number, chunkIndex: number): string => `${volumeId}:${chunkIndex}`;

export class MemoryTables implements MdsTables {
  private state: State = {
    meta: new Map(),
    volumes: new Map(),
    volumeNames: new Map(),
    chunks: new Map(),
    chunkServers: new Map(),
    csUuids: new Map(),
    pendingDeletes: new Map(),
    quarantine: new Map(),
    lostGenerations: [],
    hypervisors: new Map(),
    tasks: new Map(),
  };

  /** Applies an op atomically: on an error the tables are as they were. */
  submit(op: MdsOp): MdsOpResult {
    const saved = this.copy();
    try {
      return applyOp(this, op);
    } catch (error) {
      this.state = saved;
      throw error;
    }
  }

  private copy(): State {
    return {
      meta: new Map(this.state.meta),
      volumes: new Map(this.state.volumes),
      volumeNames: new Map(this.state.volumeNames),
      chunks: new Map(this.state.chunks),
      chunkServers: new Map(this.state.chunkServers),
      csUuids: new Map(this.state.csUuids),
      pendingDeletes: new Map(this.state.pendingDeletes),
      quarantine: new Map(this.state.quarantine),
      lostGenerations: [...this.state.lostGenerations],
      hypervisors: new Map(this.state.hypervisors),
      tasks: new Map(this.state.tasks),
    };
  }

  getMeta(key: MetaKey): number {
    return this.state.meta.get(key) ?? 0;
  }

  getHypervisor(id: number): HypervisorRecord | undefined {
    return this.state.hypervisors.get(id);
  }
  getHypervisorIdByName(name: string): number | undefined {
    for (const record of this.state.hypervisors.values()) if (record.name === name) return record.id;
    return undefined;
  }
  putHypervisor(record: HypervisorRecord): void {
    this.state.hypervisors.set(record.id, record);
  }
  listHypervisors(): HypervisorRecord[] {
    return [...this.state.hypervisors.values()].sort((a, b) => a.id - b.id);
  }

  getTask(id: number): TaskRecord | undefined {
    return this.state.tasks.get(id);
  }
  putTask(record: TaskRecord): void {
    this.state.tasks.set(record.id, record);
  }
  deleteTask(id: number): void {
    this.state.tasks.delete(id);
  }
  listTasks(): TaskRecord[] {
    return [...this.state.tasks.values()].sort((a, b) => a.id - b.id);
  }
  putMeta(key: MetaKey, value: number): void {
    this.state.meta.set(key, value);
  }

  getVolume(id: number): VolumeRecord | undefined {
    return this.state.volumes.get(id);
  }
  getVolumeIdByName(name: string): number | undefined {
    return this.state.volumeNames.get(name);
  }
  putVolume(record: VolumeRecord): void {
    this.state.volumes.set(record.id, record);
    this.state.volumeNames.set(record.name, record.id);
  }
  deleteVolume(record: VolumeRecord): void {
    this.state.volumes.delete(record.id);
    this.state.volumeNames.delete(record.name);
  }
  listVolumes(): VolumeRecord[] {
    return [...this.state.volumes.values()].sort((a, b) => a.id - b.id);
  }

  getChunk(volumeId: number, chunkIndex: number): ChunkRecord | undefined {
    return this.state.chunks.get(chunkKey(volumeId, chunkIndex));
  }
  putChunk(record: ChunkRecord): void {
    this.state.chunks.set(chunkKey(record.volumeId, record.chunkIndex), record);
  }
  deleteChunk(volumeId: number, chunkIndex: number): void {
    this.state.chunks.delete(chunkKey(volumeId, chunkIndex));
  }
  listChunks(volumeId: number, fromIndex: number, count: number): ChunkRecord[] {
    return [...this.state.chunks.values()]
      .filter((chunk) => chunk.volumeId === volumeId && chunk.chunkIndex >= fromIndex)
      .sort((a, b) => a.chunkIndex - b.chunkIndex)
      .slice(0, count);
  }
  countChunks(volumeId: number): number {
    let count = 0;
    for (const chunk of this.state.chunks.values()) if (chunk.volumeId === volumeId) count += 1;
    return count;
  }
  forEachChunk(visit: (record: ChunkRecord) => void): void {
    for (const chunk of this.state.chunks.values()) visit(chunk);
  }
  getChunkById(chunkId: number): ChunkRecord | undefined {
    return [...this.state.chunks.values()].find((chunk) => chunk.chunkId === chunkId);
  }
  serverMapped(csId: number): ServerMapped {
    let replicaCount = 0;
    let mappedBytes = 0;
    for (const chunk of this.state.chunks.values()) {
      if (!chunk.replicas.includes(csId)) continue;
      replicaCount += 1;
      mappedBytes += this.state.volumes.get(chunk.volumeId)?.chunkSizeBytes ?? 0;
    }
    return { replicaCount, mappedBytes };
  }
  listServerChunks(csId: number, after: ChunkKey | undefined, limit: number): ChunkKey[] {
    return this.keysAfter((chunk) => chunk.replicas.includes(csId), after, limit);
  }
  listServerVolumeChunks(csId: number, volumeId: number, afterChunkIndex: number, limit: number): ChunkKey[] {
    return this.keysAfter((chunk) => chunk.volumeId === volumeId && chunk.replicas.includes(csId), { volumeId, chunkIndex: afterChunkIndex }, limit);
  }
  serverVolumeReplicaCount(csId: number, volumeId: number): number {
    return this.serverVolumeReplicas(csId).get(volumeId) ?? 0;
  }
  serverVolumeReplicas(csId: number): ReadonlyMap<number, number> {
    const counts = new Map<number, number>();
    for (const chunk of this.state.chunks.values()) {
      if (chunk.replicas.includes(csId)) counts.set(chunk.volumeId, (counts.get(chunk.volumeId) ?? 0) + 1);
    }
    return counts;
  }
  listAttentionChunks(after: ChunkKey | undefined, limit: number): ChunkKey[] {
    return this.keysAfter((chunk) => needsAttention(chunk, this.state.volumes.get(chunk.volumeId)), after, limit);
  }
  isAttentionChunk(volumeId: number, chunkIndex: number): boolean {
    const chunk = this.getChunk(volumeId, chunkIndex);
    return chunk !== undefined && needsAttention(chunk, this.state.volumes.get(volumeId));
  }
  private keysAfter(keep: (chunk: ChunkRecord) => boolean, after: ChunkKey | undefined, limit: number): ChunkKey[] {
    return [...this.state.chunks.values()]
      .filter((chunk) => keep(chunk) && (after === undefined || chunk.volumeId > after.volumeId ||
        (chunk.volumeId === after.volumeId && chunk.chunkIndex > after.chunkIndex)))
      .sort((a, b) => a.volumeId - b.volumeId || a.chunkIndex - b.chunkIndex)
      .slice(0, limit)
      .map(({ volumeId, chunkIndex }) => ({ volumeId, chunkIndex }));
  }

  getChunkServer(id: number): ChunkServerRecord | undefined {
    return this.state.chunkServers.get(id);
  }
  getChunkServerIdByUuid(uuid: string): number | undefined {
    return this.state.csUuids.get(uuid);
  }
  putChunkServer(record: ChunkServerRecord): void {
    this.state.chunkServers.set(record.id, record);
    this.state.csUuids.set(record.uuid, record.id);
  }
  listChunkServers(): ChunkServerRecord[] {
    return [...this.state.chunkServers.values()].sort((a, b) => a.id - b.id);
  }

  getPendingDelete(chunkId: number): PendingDeleteRecord | undefined {
    return this.state.pendingDeletes.get(chunkId);
  }
  putPendingDelete(record: PendingDeleteRecord): void {
    this.state.pendingDeletes.set(record.chunkId, record);
  }
  deletePendingDelete(chunkId: number): void {
    this.state.pendingDeletes.delete(chunkId);
  }
  listPendingDeletes(limit: number): PendingDeleteRecord[] {
    return [...this.state.pendingDeletes.values()].slice(0, limit);
  }

  getQuarantined(chunkId: number, csId: number): QuarantineRecord | undefined {
    return this.state.quarantine.get(`${chunkId}:${csId}`);
  }
  putQuarantined(record: QuarantineRecord): void {
    this.state.quarantine.set(`${record.chunkId}:${record.csId}`, record);
  }
  deleteQuarantined(chunkId: number, csId: number): void {
    this.state.quarantine.delete(`${chunkId}:${csId}`);
  }
  listQuarantined(limit: number, after?: { chunkId: number; csId: number }): QuarantineRecord[] {
    return [...this.state.quarantine.values()]
      .sort((a, b) => a.chunkId - b.chunkId || a.csId - b.csId)
      .filter((r) => after === undefined || r.chunkId > after.chunkId || (r.chunkId === after.chunkId && r.csId > after.csId))
      .slice(0, limit);
  }

  listLostGenerations(): LostGenerations[] {
    return [...this.state.lostGenerations];
  }
  putLostGenerations(range: LostGenerations): void {
    this.state.lostGenerations.push(range);
  }
}
