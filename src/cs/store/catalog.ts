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

/**
 * Replica records and fence epochs kept decoded in memory. Every write looks its chunk's record up
 * two or three times and its volume's fence twice; an LMDB get plus msgpack decoding costs several
 * µs each time, on the event loop. 65,536 records are 4 TiB of 64 MiB chunks, a few MiB of memory.
 */
const CACHED_CHUNKS_MAX = 65_536;
const CACHED_FENCES_MAX = 4_096;

/**
 * A read-through cache of committed values: it keeps what a get read from LMDB while no put or
 * remove of that key was in flight, and forgets a key when a change of it starts. It thus never
 * holds a value other than the one LMDB reads would return, at any moment (reads see commits, not
 * puts still in flight, which is the store's contract), and a get during a change reads LMDB
 * itself. Bounded: the oldest entry leaves for a new one.
 */
class CommittedCache<K, V> {
  private readonly entries = new Map<K, V | null>();
  private readonly changing = new Map<K, number>();
  private readonly entriesMax: number;

  constructor(entriesMax: number) {
    this.entriesMax = entriesMax;
  }

  get(key: K, read: () => V | undefined): V | undefined {
    const cached = this.entries.get(key);
    if (cached !== undefined) return cached ?? undefined;
    const value = read();
    if (!this.changing.has(key)) {
      if (this.entries.size >= this.entriesMax) {
        const oldest = this.entries.keys().next();
        if (oldest.done !== true) this.entries.delete(oldest.value);
      }
      this.entries.set(key, value ?? null);
    }
    return value;
  }

  async change(key: K, write: () => Promise<unknown>): Promise<void> {
    this.entries.delete(key);
    this.changing.set(key, (this.changing.get(key) ?? 0) + 1);
    try {
      await write();
    } finally {
      const left = (this.changing.get(key) ?? 1) - 1;
      if (left === 0) this.changing.delete(key);
      else this.changing.set(key, left);
    }
  }
}

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
  private readonly cachedChunks = new CommittedCache<number, ChunkMeta>(CACHED_CHUNKS_MAX);
  private readonly cachedFences = new CommittedCache<number, number>(CACHED_FENCES_MAX);

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
    return this.cachedChunks.get(chunkId, () => {
      const meta = this.metas.get(chunkId);
      // Records written before generations existed count as generation 0: older than any MDS state.
      return meta === undefined ? undefined : Object.freeze({ ...meta, generation: meta.generation ?? 0 });
    });
  }

  putChunk(meta: ChunkMeta): Promise<void> {
    return this.cachedChunks.change(meta.chunkId, () => this.metas.put(meta.chunkId, meta));
  }

  removeChunk(chunkId: number): Promise<void> {
    return this.cachedChunks.change(chunkId, () => this.metas.remove(chunkId));
  }

  listChunks(fromChunkId: number, limit: number): ChunkMeta[] {
    return [...this.metas.getRange({ start: fromChunkId, limit }).map(({ value }) => ({ ...value, generation: value.generation ?? 0 }))];
  }

  chunkCount(): number {
    return this.metas.getCount();
  }

  getFence(volumeId: number): number {
    return this.cachedFences.get(volumeId, () => this.fences.get(volumeId)) ?? 0;
  }

  putFence(volumeId: number, epoch: number): Promise<void> {
    return this.cachedFences.change(volumeId, () => this.fences.put(volumeId, epoch));
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
