// What a chunk server knows about its replicas apart from their bytes: one record per chunk
// replica (volume, index, size, version), each volume's fence epoch, and a few words of server
// state (was the last stop clean). Behind an interface so the chunk store runs on LMDB in the
// daemon and on a simulated catalog in seeded power-cut tests.
//
// Every put resolves only once it is on stable storage (lmdb-js resolves a write after the
// commit's fdatasync, which the power-loss tests check), so a record the store relied on survives
// a power cut; a put that had not resolved may or may not survive.

import { open as openLmdb, type Database, type RootDatabase } from 'lmdb';

export interface ChunkMeta {
  readonly chunkId: number;
  readonly volumeId: number;
  readonly chunkIndex: number;
  readonly sizeBytes: number;
  readonly version: number;
}

/** Server state words kept in the catalog. */
export type CatalogStateKey = 'cleanStop';

export interface Catalog {
  getChunk(chunkId: number): ChunkMeta | undefined;
  putChunk(meta: ChunkMeta): Promise<void>;
  removeChunk(chunkId: number): Promise<void>;
  /** Replicas by ascending chunk id, from `fromChunkId`, at most `limit`. */
  listChunks(fromChunkId: number, limit: number): ChunkMeta[];
  chunkCount(): number;
  getFence(volumeId: number): number;
  putFence(volumeId: number, epoch: number): Promise<void>;
  getState(key: CatalogStateKey): number | undefined;
  putState(key: CatalogStateKey, value: number): Promise<void>;
  close(): Promise<void>;
}

export class LmdbCatalog implements Catalog {
  private readonly root: RootDatabase;
  private readonly metas: Database<ChunkMeta, number>;
  private readonly fences: Database<number, number>;
  private readonly state: Database<number, string>;

  constructor(path: string) {
    this.root = openLmdb({ path, compression: false, maxDbs: 4 });
    this.metas = this.root.openDB<ChunkMeta, number>({ name: 'chunks', encoding: 'msgpack', keyEncoding: 'ordered-binary' });
    this.fences = this.root.openDB<number, number>({ name: 'fences', encoding: 'msgpack', keyEncoding: 'ordered-binary' });
    this.state = this.root.openDB<number, string>({ name: 'state', encoding: 'msgpack', keyEncoding: 'ordered-binary' });
  }

  getChunk(chunkId: number): ChunkMeta | undefined {
    return this.metas.get(chunkId);
  }

  async putChunk(meta: ChunkMeta): Promise<void> {
    await this.metas.put(meta.chunkId, meta);
  }

  async removeChunk(chunkId: number): Promise<void> {
    await this.metas.remove(chunkId);
  }

  listChunks(fromChunkId: number, limit: number): ChunkMeta[] {
    return [...this.metas.getRange({ start: fromChunkId, limit }).map(({ value }) => value)];
  }

  chunkCount(): number {
    return this.metas.getCount();
  }

  getFence(volumeId: number): number {
    return this.fences.get(volumeId) ?? 0;
  }

  async putFence(volumeId: number, epoch: number): Promise<void> {
    await this.fences.put(volumeId, epoch);
  }

  getState(key: CatalogStateKey): number | undefined {
    return this.state.get(key);
  }

  async putState(key: CatalogStateKey, value: number): Promise<void> {
    await this.state.put(key, value);
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}
