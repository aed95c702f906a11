// The MDS's durable state in LMDB. `submit(op)` runs `applyOp` inside one LMDB child transaction
// (so an operating error rolls the whole op back) and appends the op to the operation log in the
// same transaction. Concurrent submits issued in one event-loop turn share one commit and one
// fsync (lmdb's batching), which is how the MDS stays fast under many small ops.
//
// Reads outside a submit see committed state only.

import { open, type Database, type RootDatabase } from 'lmdb';
import { dirname } from 'node:path';
import { PRIVATE_FILE_MODE, mkdirDurable, syncDirectory } from '../util/fs.ts';
import { assert } from '../util/assert.ts';
import type {
  ChunkRecord,
  ChunkServerRecord,
  HypervisorRecord,
  LostGenerations,
  MdsTables,
  MetaKey,
  PendingDeleteRecord,
  QuarantineRecord,
  VolumeRecord,
} from './model.ts';
import { applyOp, type MdsOp, type MdsOpResult } from './ops.ts';

/** The database file in an MDS's data directory (LMDB adds `<name>-lock` beside it). */
export const MDS_DB_FILE = 'mds.lmdb';
/** lmdb's option for the mode of the files it creates (missing from its type declarations). */
const LMDB_FILE_MODE = { permissionsMode: PRIVATE_FILE_MODE };

/** Operation-log entries kept for inspection and, later, replication catch-up. */
const OPLOG_ENTRIES_KEPT = 100_000;

/** Key in chunk-counts that says the counts cover every chunk record. */
const CHUNK_COUNTS_COMPLETE = 'complete';

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
  /**
   * volumeId -> its chunk records, kept by putChunk/deleteChunk in the same transaction, so that
   * counting a volume's chunks (every open, get and list of volumes) does not walk a million keys.
   * Derived from `chunks` alone: built at open when missing (see ensureChunkCounts).
   */
  readonly chunkCounts: Database<number, number | string>;

  constructor(root: RootDatabase) {
    const db = <V, K extends string | number | [number, number]>(name: string, keyEncoding: 'uint32' | 'ordered-binary') =>
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
    this.chunkCounts = db('chunk-counts', 'ordered-binary');
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

  private addChunkCount(volumeId: number, delta: 1 | -1): void {
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
    if (this.chunks.get([record.volumeId, record.chunkIndex]) === undefined) this.addChunkCount(record.volumeId, 1);
    void this.chunks.put([record.volumeId, record.chunkIndex], record);
  }
  deleteChunk(volumeId: number, chunkIndex: number): void {
    if (this.chunks.get([volumeId, chunkIndex]) !== undefined) this.addChunkCount(volumeId, -1);
    void this.chunks.remove([volumeId, chunkIndex]);
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
    const root = open({ path, compression: false, maxDbs: 16, mapSize: 4 * 1024 * 1024 * 1024, ...LMDB_FILE_MODE });
    // LMDB syncs its data files, never the directory entries that name them: without this, a
    // power cut soon after the first start could take the whole database away.
    await syncDirectory(dirname(path));
    const store = new MdsStore(root);
    store.lmdb.ensureChunkCounts();
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
    const root = open({ path, compression: false, maxDbs: 16, readOnly: true });
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
