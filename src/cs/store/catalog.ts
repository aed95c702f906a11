// What a chunk server knows about its replicas apart from their bytes: one record per chunk
// replica (volume, index, size, version), each volume's fence epoch, and a few words of server
// state (was the last stop clean). Behind an interface so the chunk store runs on LMDB in the
// daemon and on a simulated catalog in seeded power-cut tests.
//
// Every put resolves only once it is on stable storage (lmdb-js resolves a write after the
// commit's fdatasync, which the power-loss tests check), so a record the store relied on survives
// a power cut; a put that had not resolved may or may not survive.

import { open as openLmdb, type Database, type RootDatabase } from 'lmdb';
import { dirname } from 'node:path';
import { PRIVATE_FILE_MODE, mkdirDurable, syncDirectory } from '../../util/fs.ts';
import type { VolumeDescription } from '../../protocol/cs_messages.ts';

/** lmdb's option for the mode of the files it creates (missing from its type declarations). */
const LMDB_FILE_MODE = { permissionsMode: PRIVATE_FILE_MODE };

export interface ChunkMeta {
  readonly chunkId: number;
  readonly volumeId: number;
  readonly chunkIndex: number;
  readonly sizeBytes: number;
  readonly version: number;
  /**
   * The highest MDS generation the replica was created or changed under: a replica the MDS does
   * not know, with a generation above the MDS's own, was made by a newer MDS state than the one
   * now running (a database restored from an old copy): it is kept, never deleted on sight.
   */
  readonly generation: number;
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
  /** Every volume id with a fence epoch or a description here. */
  listVolumeIds(): number[];
  getVolume(volumeId: number): VolumeDescription | undefined;
  putVolume(volumeId: number, description: VolumeDescription): Promise<void>;
  getState(key: CatalogStateKey): number | undefined;
  putState(key: CatalogStateKey, value: number): Promise<void>;
  close(): Promise<void>;
}

export class LmdbCatalog implements Catalog {
  private readonly root: RootDatabase;
  private readonly metas: Database<ChunkMeta, number>;
  private readonly fences: Database<number, number>;
  private readonly state: Database<number, string>;
  private readonly volumes: Database<VolumeDescription, number>;

  /**
   * Opens (or creates) the catalog at `path`: LMDB keeps it as a directory holding data.mdb and
   * lock.mdb. LMDB syncs its data file on every commit but never the directory entries that name
   * it, so both the catalog's directory and its parent are synced here: without that, a power cut
   * soon after the first start takes the whole catalog (every replica's record) away.
   */
  static async open(path: string): Promise<LmdbCatalog> {
    // Made here, 0700, rather than by lmdb (which would use the umask).
    await mkdirDurable(path);
    const catalog = new LmdbCatalog(path);
    await syncDirectory(path);
    await syncDirectory(dirname(path));
    return catalog;
  }

  private constructor(path: string) {
    // data.mdb and lock.mdb are created 0600 (lmdb's default is 0664 less the umask).
    this.root = openLmdb({ path, compression: false, maxDbs: 8, ...LMDB_FILE_MODE });
    this.metas = this.root.openDB<ChunkMeta, number>({ name: 'chunks', encoding: 'msgpack', keyEncoding: 'ordered-binary' });
    this.fences = this.root.openDB<number, number>({ name: 'fences', encoding: 'msgpack', keyEncoding: 'ordered-binary' });
    this.state = this.root.openDB<number, string>({ name: 'state', encoding: 'msgpack', keyEncoding: 'ordered-binary' });
    this.volumes = this.root.openDB<VolumeDescription, number>({ name: 'volumes', encoding: 'msgpack', keyEncoding: 'ordered-binary' });
  }

  getChunk(chunkId: number): ChunkMeta | undefined {
    const meta = this.metas.get(chunkId);
    // Records written before generations existed count as generation 0: older than any MDS state.
    return meta === undefined ? undefined : { ...meta, generation: meta.generation ?? 0 };
  }

  async putChunk(meta: ChunkMeta): Promise<void> {
    await this.metas.put(meta.chunkId, meta);
  }

  async removeChunk(chunkId: number): Promise<void> {
    await this.metas.remove(chunkId);
  }

  listChunks(fromChunkId: number, limit: number): ChunkMeta[] {
    return [...this.metas.getRange({ start: fromChunkId, limit }).map(({ value }) => ({ ...value, generation: value.generation ?? 0 }))];
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

  listVolumeIds(): number[] {
    const ids = new Set<number>();
    for (const { key } of this.fences.getRange({})) ids.add(key);
    for (const { key } of this.volumes.getRange({})) ids.add(key);
    return [...ids].sort((a, b) => a - b);
  }

  getVolume(volumeId: number): VolumeDescription | undefined {
    return this.volumes.get(volumeId);
  }

  async putVolume(volumeId: number, description: VolumeDescription): Promise<void> {
    await this.volumes.put(volumeId, description);
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
