// Where a volume's chunks are, as its I/O asks: entries looked up in the bounded cache of the MDS's
// map (chunk_map.ts) with an MDS that cannot be reached waited out, refreshed one chunk at a time
// after a failure, a chunk never written placed by the MDS on its first write (one allocation per
// chunk in flight), and a change held back while its chunk has fewer members than the volume's
// minimum: it is never acknowledged on fewer copies.

import type { ChunkMapEntry } from '../protocol/api.ts';
import type { MdsClient } from '../protocol/mds_client.ts';
import { assert } from '../util/assert.ts';
import { ChunkMap, PAGE_NOT_HELD } from './chunk_map.ts';
import type { LeaseKeeper } from './lease.ts';
import { isRetryable, losesLease, retryLater, type Deadline, type Retrier } from './retry.ts';

export interface ChunkLocatorOptions {
  readonly mds: Pick<MdsClient, 'chunkMap' | 'getChunk' | 'allocateChunk'>;
  readonly volumeName: string;
  /** Chunk indexes of the volume: 0 .. chunkCount - 1. */
  readonly chunkCount: number;
  /** The volume's minimum of replicas: a change waits until its chunk has as many members. */
  readonly replicasMin: number;
  /** Chunk-map pages kept in memory (see CHUNK_MAP_PAGES_MAX_DEFAULT). */
  readonly chunkMapPagesMax?: number | undefined;
  readonly retrier: Retrier;
  readonly lease: Pick<LeaseKeeper, 'leaseId' | 'lose'>;
  /** This host, as chunk servers name theirs: a new chunk's first replica goes there when it can. */
  readonly hostLabel?: string | undefined;
}

export class ChunkLocator {
  private readonly options: ChunkLocatorOptions;
  /** A bounded cache of the MDS's map, loaded page by page as chunks are touched. */
  private readonly map: ChunkMap;
  private readonly allocating = new Map<number, Promise<ChunkMapEntry>>();

  constructor(options: ChunkLocatorOptions) {
    this.options = options;
    this.map = new ChunkMap({
      source: options.mds,
      volumeName: options.volumeName,
      chunkCount: options.chunkCount,
      ...(options.chunkMapPagesMax === undefined ? {} : { pagesMax: options.chunkMapPagesMax }),
    });
  }

  /**
   * The chunk's map entry, or undefined when it was never written, loading its page from the MDS
   * when it is not held. An MDS that cannot be reached is waited out until the deadline.
   */
  async entryOf(chunkIndex: number, deadline?: Deadline): Promise<ChunkMapEntry | undefined> {
    const held = this.map.held(chunkIndex);
    if (held !== PAGE_NOT_HELD) return held;
    const { retrier } = this.options;
    return retrier.run(`loading the map of chunk ${chunkIndex}`, deadline ?? retrier.deadline(), () =>
      this.map.lookup(chunkIndex).catch((error: unknown) => {
        if (!isRetryable('mapLoad', error)) throw error;
        return retryLater(error.message);
      }),
    );
  }

  /** Records an entry the MDS just gave for one chunk (after a failure report). */
  set(entry: ChunkMapEntry): void {
    this.map.set(entry);
  }

  /** Asks the MDS for the chunk's entry now (its members or version changed). */
  async refresh(chunkIndex: number): Promise<void> {
    this.map.set(await this.options.mds.getChunk(this.options.volumeName, chunkIndex));
  }

  /** The chunk's entry once it has at least the volume's minimum of members. */
  writableEntry(chunkIndex: number, deadline: Deadline): Promise<ChunkMapEntry> {
    return this.options.retrier.run(`a change to chunk ${chunkIndex}`, deadline, async (attemptIndex) => {
      if (attemptIndex > 0) await this.refresh(chunkIndex).catch(() => undefined);
      const entry = await this.entryOf(chunkIndex, deadline);
      assert(entry !== undefined, 'changes reach allocated chunks only');
      if (entry.replicas.length >= this.options.replicasMin) return entry;
      return retryLater(`chunk ${chunkIndex} has ${entry.replicas.length} replicas, fewer than the minimum of ${this.options.replicasMin}`);
    });
  }

  /** The chunk's entry, asking the MDS to place it first if it was never written. */
  async ensure(chunkIndex: number): Promise<ChunkMapEntry> {
    const existing = await this.entryOf(chunkIndex);
    if (existing !== undefined) return existing;
    let pending = this.allocating.get(chunkIndex);
    if (pending === undefined) {
      pending = this.allocate(chunkIndex).finally(() => this.allocating.delete(chunkIndex));
      this.allocating.set(chunkIndex, pending);
    }
    return pending;
  }

  /** Allocation waits out an MDS restart or too few servers, up to the I/O timeout. */
  private allocate(chunkIndex: number): Promise<ChunkMapEntry> {
    return this.options.retrier.run(`allocating chunk ${chunkIndex}`, this.options.retrier.deadline(), async () => {
      try {
        const entry = await this.options.mds.allocateChunk(this.options.volumeName, chunkIndex, this.options.lease.leaseId(), this.options.hostLabel);
        this.map.set(entry);
        return entry;
      } catch (error) {
        if (losesLease('change', error)) throw this.options.lease.lose(error);
        if (!isRetryable('allocation', error)) throw error;
        return retryLater(error.message);
      }
    });
  }
}
