// An in-memory Catalog for seeded power-cut tests of the chunk store, with lmdb-js's contract: a
// put takes effect at its commit, and its promise resolves only after the commit is durable, so a
// resolved put survives any later power cut; a put still in flight at the cut may or may not.
//
// A commit happens after a seeded latency and the promise resolves after another one, so a cut can
// fall before the commit (lost) or after it but before the caller heard (kept, in doubt to the
// caller). Reads see committed state only, as lmdb-js reads do without its write cache.
//
// powerCut() and reopen() give a new SimCatalog on a copy of the committed state; this one dies
// (its in-flight and later puts reject), so work left over from before the cut cannot change what
// survived. Not modelled: catalog I/O errors, a full disk under the catalog, torn commits (LMDB's
// copy-on-write commits are atomic).

import { assert } from '../../util/assert.ts';
import type { VolumeDescription } from '../../protocol/cs_messages.ts';
import type { Catalog, CatalogStateKey, ChunkMeta } from './catalog.ts';

export interface SimCatalogOptions {
  /** How long a commit takes (e.g. the sim disk's latency); none by default. */
  readonly latency?: () => Promise<void>;
}

interface CatalogContents {
  readonly chunks: Map<number, ChunkMeta>;
  readonly fences: Map<number, number>;
  readonly state: Map<CatalogStateKey, number>;
  readonly volumes: Map<number, VolumeDescription>;
}

export class SimCatalog implements Catalog {
  private readonly options: SimCatalogOptions;
  private readonly contents: CatalogContents;
  private dead = false;
  private closed = false;
  /** Puts that committed, in this catalog's life (tests check it). */
  commitsTotal = 0;

  constructor(options: SimCatalogOptions = {}, contents?: CatalogContents) {
    this.options = options;
    this.contents = contents ?? { chunks: new Map(), fences: new Map(), state: new Map(), volumes: new Map() };
  }

  getChunk(chunkId: number): ChunkMeta | undefined {
    return this.contents.chunks.get(chunkId);
  }

  putChunk(meta: ChunkMeta): Promise<void> {
    const record = Object.freeze({ ...meta });
    return this.commit(() => this.contents.chunks.set(meta.chunkId, record));
  }

  removeChunk(chunkId: number): Promise<void> {
    return this.commit(() => this.contents.chunks.delete(chunkId));
  }

  listChunks(fromChunkId: number, limit: number): ChunkMeta[] {
    return [...this.contents.chunks.values()]
      .filter((meta) => meta.chunkId >= fromChunkId)
      .sort((a, b) => a.chunkId - b.chunkId)
      .slice(0, limit);
  }

  chunkCount(): number {
    return this.contents.chunks.size;
  }

  getFence(volumeId: number): number {
    return this.contents.fences.get(volumeId) ?? 0;
  }

  putFence(volumeId: number, epoch: number): Promise<void> {
    return this.commit(() => this.contents.fences.set(volumeId, epoch));
  }

  listVolumeIds(): number[] {
    return [...new Set([...this.contents.fences.keys(), ...this.contents.volumes.keys()])].sort((a, b) => a - b);
  }

  getVolume(volumeId: number): VolumeDescription | undefined {
    return this.contents.volumes.get(volumeId);
  }

  putVolume(volumeId: number, description: VolumeDescription): Promise<void> {
    const record = Object.freeze({ ...description });
    return this.commit(() => this.contents.volumes.set(volumeId, record));
  }

  getState(key: CatalogStateKey): number | undefined {
    return this.contents.state.get(key);
  }

  putState(key: CatalogStateKey, value: number): Promise<void> {
    return this.commit(() => this.contents.state.set(key, value));
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** Power is cut: this catalog dies; the returned one holds every committed put. */
  powerCut(): SimCatalog {
    this.dead = true;
    return new SimCatalog(this.options, copyContents(this.contents));
  }

  /** Opens the catalog again after close() (a clean restart). */
  reopen(): SimCatalog {
    assert(this.closed, 'reopen a closed catalog');
    this.dead = true;
    return new SimCatalog(this.options, copyContents(this.contents));
  }

  private async commit(change: () => void): Promise<void> {
    await this.options.latency?.();
    this.checkOpen();
    change();
    this.commitsTotal += 1;
    await this.options.latency?.();
    // Committed and durable, but the caller may never hear of it.
    if (this.dead) throw powerCutError();
  }

  private checkOpen(): void {
    if (this.dead) throw powerCutError();
    if (this.closed) throw new Error('catalog closed');
  }
}

function powerCutError(): Error {
  return Object.assign(new Error('EIO: the catalog is gone (power cut)'), { code: 'EIO' });
}

function copyContents(contents: CatalogContents): CatalogContents {
  return {
    chunks: new Map(contents.chunks), fences: new Map(contents.fences), state: new Map(contents.state), volumes: new Map(contents.volumes),
  };
}
