// The MDS's durable state in LMDB. `submit(op)` runs `applyOp` inside one LMDB child transaction
// (so an operating error rolls the whole op back) and appends the op to the operation log in the
// same transaction. Concurrent submits issued in one event-loop turn share one commit and one
// fsync (lmdb's batching), which is how the MDS stays fast under many small ops.
//
// Reads outside a submit see committed state only.
//
// Besides the records, the tables keep indexes derived from the chunk records alone, written by
// putChunk/deleteChunk in the same transaction as the record (so they can never disagree with
// it, before or after a restart): chunk id -> chunk, server -> its chunks, per-server replica and
// byte counts, per-server replica counts of each volume, and the chunks whose record alone says they need the planner (in doubt, or a
// replica count other than the volume's normal). They let the MDS answer and plan without
// walking a map of millions of records. A database written before they existed gets them built
// once at open (ensureIndexes).

import { open, type Database, type RootDatabase } from 'lmdb';
import { dirname } from 'node:path';
import { PRIVATE_FILE_MODE, mkdirDurable, syncDirectory } from '../util/fs.ts';
import { assert } from '../util/assert.ts';
import type {
  ChunkRecord,
  ChunkServerRecord,
  HypervisorRecord,
  ChunkKey,
  LostGenerations,
  MdsTables,
  MetaKey,
  PendingDeleteRecord,
  QuarantineRecord,
  ServerMapped,
  TaskRecord,
  VolumeRecord,
} from './model.ts';
import { needsAttention } from './model.ts';
import { applyOp, type MdsOp, type MdsOpResult } from './ops.ts';

export { MDS_DB_FILE } from './db_file.ts';

/** Named databases the MDS's LMDB may hold (it uses 19): whoever opens it passes this. */
export const MDS_DB_TABLES_MAX = 32;
/** lmdb's option for the mode of the files it creates (missing from its type declarations). */
const LMDB_FILE_MODE = { permissionsMode: PRIVATE_FILE_MODE };

/** Operation-log entries kept for inspection and, later, replication catch-up. */
const OPLOG_ENTRIES_KEPT = 100_000;

/** Key in chunk-counts that says the counts cover every chunk record. */
const CHUNK_COUNTS_COMPLETE = 'complete';
/**
 * Key in chunk-counts that says the chunk indexes (see the header) cover every chunk record. v2
 * added the per-server, per-volume replica counts: a database with only v1's is reindexed once.
 */
const CHUNK_INDEXES_COMPLETE = 'indexes-v2';
/** Records per write transaction when building the indexes of an older database. */
const INDEX_BUILD_RECORDS_PER_TRANSACTION = 65_536;

interface OplogEntry {
  readonly seq: number;
  readonly op: MdsOp;
}

/**
 * The tables over one LMDB environment. Exported for code that fills a stopped MDS's database
 * directly (tests that need a map of a million chunks); the daemon goes through MdsStore.
 */
export class LmdbTables implements MdsTables {
  readonly meta: Database<number, string>;
  readonly volumes: Database<VolumeRecord, number>;
  readonly volumeNames: Database<number, string>;
  readonly chunks: Database<ChunkRecord, [number, number]>;
  readonly chunkServers: Database<ChunkServerRecord, number>;
  readonly csUuids: Database<number, string>;
  readonly pendingDeletes: Database<PendingDeleteRecord, number>;
  readonly oplog: Database<OplogEntry, number>;
  readonly quarantine: Database<QuarantineRecord, [number, number]>;
  readonly lostGenerations: Database<LostGenerations, number>;
  readonly hypervisors: Database<HypervisorRecord, number>;
  readonly hypervisorNames: Database<number, string>;
  readonly tasks: Database<TaskRecord, number>;
  /**
   * volumeId -> its chunk records, kept by putChunk/deleteChunk in the same transaction, so that
   * counting a volume's chunks (every open, get and list of volumes) does not walk a million keys.
   * Derived from `chunks` alone: built at open when missing (see ensureChunkCounts).
   */
  readonly chunkCounts: Database<number, number | string>;
  /** chunkId -> [volumeId, chunkIndex] of its record (see the header). */
  readonly chunkIds: Database<[number, number], number>;
  /** [csId, volumeId, chunkIndex] -> chunkId, one entry per member of every chunk. */
  readonly serverChunks: Database<number, [number, number, number]>;
  /** csId -> [replicas the map places on it, their bytes]. */
  readonly serverCounts: Database<[number, number], number>;
  /** [volumeId, chunkIndex] -> 1 for every chunk that needsAttention. */
  readonly attention: Database<number, [number, number]>;
  /** [csId, volumeId] -> replicas of the volume's chunks on the server (tiers.ts finds misplaced ones with it). */
  readonly serverVolumeCounts: Database<number, [number, number]>;

  constructor(root: RootDatabase) {
    const db = <V, K extends string | number | [number, number] | [number, number, number]>(name: string, keyEncoding: 'uint32' | 'ordered-binary') =>
      root.openDB<V, K>({ name, encoding: 'msgpack', keyEncoding });
    this.meta = db('meta', 'ordered-binary');
    this.volumes = db('volumes', 'uint32');
    this.volumeNames = db('volume-names', 'ordered-binary');
    this.chunks = db('chunks', 'ordered-binary');
    this.chunkServers = db('chunk-servers', 'uint32');
    this.csUuids = db('cs-uuids', 'ordered-binary');
    this.pendingDeletes = db('pending-deletes', 'ordered-binary');
    this.oplog = db('oplog', 'ordered-binary');
    this.quarantine = db('quarantine', 'ordered-binary');
    this.lostGenerations = db('lost-generations', 'ordered-binary');
    this.hypervisors = db('hypervisors', 'uint32');
    this.hypervisorNames = db('hypervisor-names', 'ordered-binary');
    this.tasks = db('tasks', 'uint32');
    this.chunkCounts = db('chunk-counts', 'ordered-binary');
    this.chunkIds = db('chunk-ids', 'ordered-binary');
    this.serverChunks = db('server-chunks', 'ordered-binary');
    this.serverCounts = db('server-counts', 'ordered-binary');
    this.attention = db('attention', 'ordered-binary');
    this.serverVolumeCounts = db('server-volume-counts', 'ordered-binary');
  }

  /**
   * Builds the chunk indexes of a database written before they were kept (once). Runs before the
   * MDS serves; a million records take some tens of seconds, in bounded write transactions.
   */
  ensureIndexes(): void {
    if (this.chunkCounts.get(CHUNK_INDEXES_COMPLETE) !== undefined) return;
    this.chunkCounts.transactionSync(() => {
      for (const table of [this.chunkIds, this.serverChunks, this.serverCounts, this.attention, this.serverVolumeCounts] as Database[]) {
        for (const key of table.getKeys({})) void table.remove(key);
      }
    });
    let after: [number, number] | undefined;
    for (;;) {
      const range = after === undefined ? this.chunks.getRange({ limit: INDEX_BUILD_RECORDS_PER_TRANSACTION })
        : this.chunks.getRange({ start: after, exclusiveStart: true, limit: INDEX_BUILD_RECORDS_PER_TRANSACTION });
      const records = [...range.map(({ value }) => value)];
      if (records.length === 0) break;
      this.chunkCounts.transactionSync(() => this.indexChunks(records));
      const last = records.at(-1);
      assert(last !== undefined, 'a slice that is not empty has a last record');
      after = [last.volumeId, last.chunkIndex];
    }
    void this.chunkCounts.putSync(CHUNK_INDEXES_COMPLETE, 1);
  }

  /**
   * Adds many new chunk records' index entries in the current write transaction, summing the
   * per-server counts in memory (one write per server rather than one per replica). The records
   * themselves must be written by the caller (or be there already).
   */
  indexChunks(records: readonly ChunkRecord[]): void {
    const volumes = new Map<number, VolumeRecord | undefined>();
    const deltas = new Map<number, [number, number]>();
    const volumeDeltas = new Map<string, { csId: number; volumeId: number; replicas: number }>();
    for (const record of records) {
      if (!volumes.has(record.volumeId)) volumes.set(record.volumeId, this.volumes.get(record.volumeId));
      const volume = volumes.get(record.volumeId);
      void this.chunkIds.put(record.chunkId, [record.volumeId, record.chunkIndex]);
      if (needsAttention(record, volume)) void this.attention.put([record.volumeId, record.chunkIndex], 1);
      for (const csId of record.replicas) {
        void this.serverChunks.put([csId, record.volumeId, record.chunkIndex], record.chunkId);
        const delta = deltas.get(csId) ?? [0, 0];
        delta[0] += 1;
        delta[1] += volume?.chunkSizeBytes ?? 0;
        deltas.set(csId, delta);
        const key = `${csId}:${record.volumeId}`;
        const volumeDelta = volumeDeltas.get(key) ?? { csId, volumeId: record.volumeId, replicas: 0 };
        volumeDelta.replicas += 1;
        volumeDeltas.set(key, volumeDelta);
      }
    }
    for (const [csId, [replicas, bytes]] of deltas) this.addServerCount(csId, replicas, bytes);
    for (const { csId, volumeId, replicas } of volumeDeltas.values()) this.addServerVolumeCount(csId, volumeId, replicas);
  }

  /**
   * Writes many new chunk records with their index entries and counts in the current write
   * transaction: what putChunk does, with the counters summed once per call (filling a map).
   */
  putNewChunks(records: readonly ChunkRecord[]): void {
    const perVolume = new Map<number, number>();
    for (const record of records) {
      assert(this.chunks.get([record.volumeId, record.chunkIndex]) === undefined, 'putNewChunks writes new records only');
      void this.chunks.put([record.volumeId, record.chunkIndex], record);
      perVolume.set(record.volumeId, (perVolume.get(record.volumeId) ?? 0) + 1);
    }
    for (const [volumeId, count] of perVolume) this.addChunkCount(volumeId, count);
    this.indexChunks(records);
  }

  private addServerCount(csId: number, replicas: number, bytes: number): void {
    const [replicasBefore, bytesBefore] = this.serverCounts.get(csId) ?? [0, 0];
    const counts: [number, number] = [replicasBefore + replicas, bytesBefore + bytes];
    assert(counts[0] >= 0 && counts[1] >= 0, 'a server never holds fewer than no replicas');
    if (counts[0] === 0) void this.serverCounts.remove(csId);
    else void this.serverCounts.put(csId, counts);
  }

  private addServerVolumeCount(csId: number, volumeId: number, replicas: number): void {
    const count = (this.serverVolumeCounts.get([csId, volumeId]) ?? 0) + replicas;
    assert(count >= 0, 'a server never holds fewer than no replicas of a volume');
    if (count === 0) void this.serverVolumeCounts.remove([csId, volumeId]);
    else void this.serverVolumeCounts.put([csId, volumeId], count);
  }

  /** Keeps the indexes of one chunk as its record goes from `before` to `after` (either may be absent). */
  private reindexChunk(before: ChunkRecord | undefined, after: ChunkRecord | undefined): void {
    const some = after ?? before;
    assert(some !== undefined, 'a chunk is indexed from at least one record');
    assert(before === undefined || after === undefined || before.chunkId === after.chunkId, 'a chunk keeps its id');
    const key: [number, number] = [some.volumeId, some.chunkIndex];
    const volume = this.volumes.get(some.volumeId);
    const chunkSizeBytes = volume?.chunkSizeBytes ?? 0;
    const membersBefore = before?.replicas ?? [];
    const membersAfter = after?.replicas ?? [];
    for (const csId of membersBefore) {
      if (membersAfter.includes(csId)) continue;
      void this.serverChunks.remove([csId, ...key]);
      this.addServerCount(csId, -1, -chunkSizeBytes);
      this.addServerVolumeCount(csId, some.volumeId, -1);
    }
    for (const csId of membersAfter) {
      if (membersBefore.includes(csId)) continue;
      void this.serverChunks.put([csId, ...key], some.chunkId);
      this.addServerCount(csId, 1, chunkSizeBytes);
      this.addServerVolumeCount(csId, some.volumeId, 1);
    }
    if (before === undefined) void this.chunkIds.put(some.chunkId, key);
    if (after === undefined) void this.chunkIds.remove(some.chunkId);
    const attentionBefore = before !== undefined && needsAttention(before, volume);
    const attentionAfter = after !== undefined && needsAttention(after, volume);
    if (attentionAfter && !attentionBefore) void this.attention.put(key, 1);
    if (attentionBefore && !attentionAfter) void this.attention.remove(key);
  }

  /** Builds the per-volume chunk counts of a database written before they were kept (once). */
  ensureChunkCounts(): void {
    if (this.chunkCounts.get(CHUNK_COUNTS_COMPLETE) !== undefined) return;
    const counts = new Map<number, number>();
    this.forEachChunk((chunk) => counts.set(chunk.volumeId, (counts.get(chunk.volumeId) ?? 0) + 1));
    this.chunkCounts.transactionSync(() => {
      for (const { key } of this.chunkCounts.getRange({})) void this.chunkCounts.remove(key);
      for (const [volumeId, count] of counts) void this.chunkCounts.put(volumeId, count);
      void this.chunkCounts.put(CHUNK_COUNTS_COMPLETE, 1);
    });
  }

  private addChunkCount(volumeId: number, delta: number): void {
    const count = (this.chunkCounts.get(volumeId) ?? 0) + delta;
    assert(count >= 0, 'a volume never has fewer than no chunks');
    if (count === 0) void this.chunkCounts.remove(volumeId);
    else void this.chunkCounts.put(volumeId, count);
  }

  getMeta(key: MetaKey): number {
    return this.meta.get(key) ?? 0;
  }
  putMeta(key: MetaKey, value: number): void {
    void this.meta.put(key, value);
  }

  getVolume(id: number): VolumeRecord | undefined {
    return this.volumes.get(id);
  }
  getVolumeIdByName(name: string): number | undefined {
    return this.volumeNames.get(name);
  }
  putVolume(record: VolumeRecord): void {
    void this.volumes.put(record.id, record);
    void this.volumeNames.put(record.name, record.id);
  }
  deleteVolume(record: VolumeRecord): void {
    void this.volumes.remove(record.id);
    void this.volumeNames.remove(record.name);
  }
  listVolumes(): VolumeRecord[] {
    return [...this.volumes.getRange({}).map(({ value }) => value)];
  }

  getChunk(volumeId: number, chunkIndex: number): ChunkRecord | undefined {
    return this.chunks.get([volumeId, chunkIndex]);
  }
  putChunk(record: ChunkRecord): void {
    const before = this.chunks.get([record.volumeId, record.chunkIndex]);
    if (before === undefined) this.addChunkCount(record.volumeId, 1);
    this.reindexChunk(before, record);
    void this.chunks.put([record.volumeId, record.chunkIndex], record);
  }
  deleteChunk(volumeId: number, chunkIndex: number): void {
    const before = this.chunks.get([volumeId, chunkIndex]);
    if (before === undefined) return;
    this.addChunkCount(volumeId, -1);
    this.reindexChunk(before, undefined);
    void this.chunks.remove([volumeId, chunkIndex]);
  }
  getChunkById(chunkId: number): ChunkRecord | undefined {
    const key = this.chunkIds.get(chunkId);
    if (key === undefined) return undefined;
    const record = this.chunks.get(key);
    assert(record !== undefined && record.chunkId === chunkId, 'the chunk-id index names the chunk\'s record');
    return record;
  }
  serverMapped(csId: number): ServerMapped {
    const [replicaCount, mappedBytes] = this.serverCounts.get(csId) ?? [0, 0];
    return { replicaCount, mappedBytes };
  }
  listServerChunks(csId: number, after: ChunkKey | undefined, limit: number): ChunkKey[] {
    const start = after === undefined ? [csId] : [csId, after.volumeId, after.chunkIndex];
    const keys = this.serverChunks.getKeys({ start, end: [csId + 1], exclusiveStart: after !== undefined, limit });
    return [...keys.map(([, volumeId, chunkIndex]) => ({ volumeId, chunkIndex }))];
  }
  listServerVolumeChunks(csId: number, volumeId: number, afterChunkIndex: number, limit: number): ChunkKey[] {
    const keys = this.serverChunks.getKeys({ start: [csId, volumeId, afterChunkIndex], end: [csId, volumeId + 1], exclusiveStart: true, limit });
    return [...keys.map(([, , chunkIndex]) => ({ volumeId, chunkIndex }))];
  }
  serverVolumeReplicaCount(csId: number, volumeId: number): number {
    return this.serverVolumeCounts.get([csId, volumeId]) ?? 0;
  }
  serverVolumeReplicas(csId: number): ReadonlyMap<number, number> {
    return new Map([...this.serverVolumeCounts.getRange({ start: [csId], end: [csId + 1] }).map(({ key, value }) => [key[1], value] as const)]);
  }
  listAttentionChunks(after: ChunkKey | undefined, limit: number): ChunkKey[] {
    const keys = after === undefined ? this.attention.getKeys({ limit })
      : this.attention.getKeys({ start: [after.volumeId, after.chunkIndex], exclusiveStart: true, limit });
    return [...keys.map(([volumeId, chunkIndex]) => ({ volumeId, chunkIndex }))];
  }
  isAttentionChunk(volumeId: number, chunkIndex: number): boolean {
    return this.attention.get([volumeId, chunkIndex]) !== undefined;
  }
  listChunks(volumeId: number, fromIndex: number, count: number): ChunkRecord[] {
    const range = this.chunks.getRange({ start: [volumeId, fromIndex], end: [volumeId + 1, 0], limit: count });
    return [...range.map(({ value }) => value)];
  }
  countChunks(volumeId: number): number {
    const count = this.chunkCounts.get(volumeId) ?? 0;
    assert(typeof count === 'number', 'chunk counts are numbers');
    return count;
  }
  forEachChunk(visit: (record: ChunkRecord) => void): void {
    for (const { value } of this.chunks.getRange({})) visit(value);
  }

  getChunkServer(id: number): ChunkServerRecord | undefined {
    const record = this.chunkServers.get(id);
    // Records written before admin states existed are active servers.
    return record === undefined ? undefined : { ...record, adminState: record.adminState ?? 'active' };
  }
  getChunkServerIdByUuid(uuid: string): number | undefined {
    return this.csUuids.get(uuid);
  }
  putChunkServer(record: ChunkServerRecord): void {
    void this.chunkServers.put(record.id, record);
    void this.csUuids.put(record.uuid, record.id);
  }
  listChunkServers(): ChunkServerRecord[] {
    return [...this.chunkServers.getRange({}).map(({ value }) => ({ ...value, adminState: value.adminState ?? 'active' }))];
  }

  getPendingDelete(chunkId: number): PendingDeleteRecord | undefined {
    return this.pendingDeletes.get(chunkId);
  }
  putPendingDelete(record: PendingDeleteRecord): void {
    void this.pendingDeletes.put(record.chunkId, record);
  }
  deletePendingDelete(chunkId: number): void {
    void this.pendingDeletes.remove(chunkId);
  }
  listPendingDeletes(limit: number): PendingDeleteRecord[] {
    return [...this.pendingDeletes.getRange({ limit }).map(({ value }) => value)];
  }

  getQuarantined(chunkId: number, csId: number): QuarantineRecord | undefined {
    return this.quarantine.get([chunkId, csId]);
  }
  putQuarantined(record: QuarantineRecord): void {
    void this.quarantine.put([record.chunkId, record.csId], record);
  }
  deleteQuarantined(chunkId: number, csId: number): void {
    void this.quarantine.remove([chunkId, csId]);
  }
  listQuarantined(limit: number, after?: { chunkId: number; csId: number }): QuarantineRecord[] {
    const range = after === undefined
      ? this.quarantine.getRange({ limit })
      : this.quarantine.getRange({ start: [after.chunkId, after.csId + 1], limit });
    return [...range.map(({ value }) => value)];
  }

  listLostGenerations(): LostGenerations[] {
    return [...this.lostGenerations.getRange({}).map(({ value }) => value)];
  }
  putLostGenerations(range: LostGenerations): void {
    void this.lostGenerations.put(range.lowExclusive, range);
  }

  getHypervisor(id: number): HypervisorRecord | undefined {
    return this.hypervisors.get(id);
  }
  getHypervisorIdByName(name: string): number | undefined {
    return this.hypervisorNames.get(name);
  }
  putHypervisor(record: HypervisorRecord): void {
    void this.hypervisors.put(record.id, record);
    void this.hypervisorNames.put(record.name, record.id);
  }
  listHypervisors(): HypervisorRecord[] {
    return [...this.hypervisors.getRange({}).map(({ value }) => value)];
  }

  getTask(id: number): TaskRecord | undefined {
    return this.tasks.get(id);
  }
  putTask(record: TaskRecord): void {
    void this.tasks.put(record.id, record);
  }
  deleteTask(id: number): void {
    void this.tasks.remove(id);
  }
  listTasks(): TaskRecord[] {
    return [...this.tasks.getRange({}).map(({ value }) => value)];
  }

  appendOplog(op: MdsOp): void {
    const seq = this.getMeta('opSeq') + 1;
    this.putMeta('opSeq', seq);
    void this.oplog.put(seq, { seq, op });
    if (seq > OPLOG_ENTRIES_KEPT) void this.oplog.remove(seq - OPLOG_ENTRIES_KEPT);
  }
}

export class MdsStore {
  private readonly root: RootDatabase;
  private readonly lmdb: LmdbTables;
  /** Committed-state reads; never write through this outside `submit`. */
  readonly tables: MdsTables;
  /** Called after each committed op (metrics). */
  onApplied: (type: MdsOp['type']) => void = () => undefined;

  private constructor(root: RootDatabase) {
    this.root = root;
    this.lmdb = new LmdbTables(root);
    this.tables = this.lmdb;
  }

  static async open(path: string): Promise<MdsStore> {
    await mkdirDurable(dirname(path));
    // No compression: records are small; no caching: childTransaction needs it off.
    // The database file and its lock file are created 0600 (lmdb's default is 0664 less the umask).
    const root = open({ path, compression: false, maxDbs: MDS_DB_TABLES_MAX, mapSize: 4 * 1024 * 1024 * 1024, ...LMDB_FILE_MODE });
    // LMDB syncs its data files, never the directory entries that name them: without this, a
    // power cut soon after the first start could take the whole database away.
    await syncDirectory(dirname(path));
    const store = new MdsStore(root);
    store.lmdb.ensureChunkCounts();
    store.lmdb.ensureIndexes();
    return store;
  }

  /** Applies one op durably; resolves after the commit is on disk. */
  async submit(op: MdsOp): Promise<MdsOpResult> {
    const result = await this.root.childTransaction(() => {
      const applied = applyOp(this.lmdb, op);
      this.lmdb.appendOplog(op);
      return applied;
    });
    assert(typeof result === 'object' && result !== null, 'applyOp returns a result');
    this.onApplied(op.type);
    return result as MdsOpResult;
  }

  get opSeq(): number {
    return this.lmdb.getMeta('opSeq');
  }

  /** A consistent, compacted copy of the database (one read transaction) written to `path`. */
  async copyTo(path: string): Promise<void> {
    await this.root.backup(path, true);
  }

  /** What a copy made by copyTo holds: its generation, op sequence, volume and chunk counts. */
  async describeCopy(path: string): Promise<{ generation: number; opSeq: number; volumes: number; chunks: number }> {
    const root = open({ path, compression: false, maxDbs: MDS_DB_TABLES_MAX, readOnly: true });
    try {
      const tables = new LmdbTables(root);
      let chunks = 0;
      tables.forEachChunk(() => {
        chunks += 1;
      });
      return { generation: tables.getMeta('generation'), opSeq: tables.getMeta('opSeq'), volumes: tables.listVolumes().length, chunks };
    } finally {
      await root.close();
    }
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}
