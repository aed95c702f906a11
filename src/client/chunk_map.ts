// The client's view of one volume's chunk map: which chunk servers hold each chunk, at which
// version. The MDS is the source of truth; this is a bounded cache of it, loaded on demand.
//
// The map is cut into pages of CHUNK_MAP_PAGE_CHUNKS consecutive chunk indexes. A page is loaded
// whole (one or a few GET .../chunks requests), so a chunk index absent from a loaded page is a
// chunk never written: it reads as zeroes without asking anyone. At most `pagesMax` pages are
// kept; the least recently used one is dropped to make room, entries and all, and loaded again
// from the MDS when needed. Entries the client learns one at a time (an allocation, a refresh
// after a version change, a failure report) replace the page's, or wait in `overlay` for a page
// that is loading; for a page not held at all they are dropped, since the MDS recorded them
// before answering and will list them when the page is loaded.
//
// Invariants: at most one load per page is in flight (every lookup of that page waits for it);
// `pages.size <= pagesMax`; a held page lists every allocated chunk of its index range.
// Non-goals: retrying an unreachable MDS (the caller decides how long to wait), prefetching.

import { StorageError } from '../errors.ts';
import { CHUNK_MAP_PAGE_CHUNKS, type ChunkMapEntry, type ChunkMapReply } from '../protocol/api.ts';
import { assert } from '../util/assert.ts';

/** Where pages come from: the MDS client. */
export interface ChunkMapSource {
  chunkMap(name: string, fromIndex: number, count: number): Promise<ChunkMapReply>;
}

/**
 * Pages kept by default: 64 pages of 1,024 entries map 4 TiB of a volume of 64 MiB chunks, in
 * about 15 MB at most (entries of three replicas take some 200 bytes each).
 */
export const CHUNK_MAP_PAGES_MAX_DEFAULT = 64;

export interface ChunkMapOptions {
  readonly source: ChunkMapSource;
  readonly volumeName: string;
  /** Chunk indexes of the volume: 0 .. chunkCount - 1. */
  readonly chunkCount: number;
  readonly pagesMax?: number;
  /** Chunk indexes per page; at most what the MDS sends in one reply is most efficient. */
  readonly pageChunks?: number;
}

/** What `held` answers for a chunk whose page is not in memory. */
export const PAGE_NOT_HELD: unique symbol = Symbol('page not held');

type Page = Map<number, ChunkMapEntry>;

interface Loading {
  readonly promise: Promise<Page>;
  /** Entries learnt while the page was loading: applied over it when it arrives. */
  readonly overlay: Map<number, ChunkMapEntry>;
}

export class ChunkMap {
  /** pageIndex -> entries by chunk index; Map order is least recently used first. */
  private readonly pages = new Map<number, Page>();
  /** The last key of `pages` (eviction takes the first, never the last), or -1. */
  private newestPageIndex = -1;
  private readonly loading = new Map<number, Loading>();
  private readonly options: ChunkMapOptions;
  private readonly pagesMax: number;
  private readonly pageChunks: number;
  /** Counters for tests and diagnostics. */
  readonly stats = { pageLoads: 0, pageRequests: 0, evictions: 0 };

  constructor(options: ChunkMapOptions) {
    this.options = options;
    this.pagesMax = options.pagesMax ?? CHUNK_MAP_PAGES_MAX_DEFAULT;
    this.pageChunks = options.pageChunks ?? CHUNK_MAP_PAGE_CHUNKS;
    assert(Number.isSafeInteger(options.chunkCount) && options.chunkCount >= 0, 'a volume has a whole number of chunks');
    assert(Number.isSafeInteger(this.pagesMax) && this.pagesMax >= 1, 'the map keeps at least one page');
    assert(Number.isSafeInteger(this.pageChunks) && this.pageChunks >= 1, 'a page holds at least one chunk index');
  }

  /** Pages held now (at most pagesMax). */
  get pageCount(): number {
    return this.pages.size;
  }

  /**
   * The chunk's entry, or undefined when it was never written. Loads its page first when it is
   * not held; a load of it already in flight is waited for, never doubled.
   */
  async lookup(chunkIndex: number): Promise<ChunkMapEntry | undefined> {
    const held = this.held(chunkIndex);
    if (held !== PAGE_NOT_HELD) return held;
    return (await this.load(Math.floor(chunkIndex / this.pageChunks))).get(chunkIndex);
  }

  /**
   * What `lookup` answers when the chunk's page is held, without waiting (the hot path of every
   * read and write); PAGE_NOT_HELD when it would have to be loaded.
   */
  held(chunkIndex: number): ChunkMapEntry | undefined | typeof PAGE_NOT_HELD {
    this.checkIndex(chunkIndex);
    const pageIndex = Math.floor(chunkIndex / this.pageChunks);
    const page = this.pages.get(pageIndex);
    if (page === undefined) return PAGE_NOT_HELD;
    // Most recently used goes last (a Map delete and set per request cost a quarter of the client's
    // CPU per read; most requests touch the page the last one did).
    if (pageIndex !== this.newestPageIndex) {
      this.pages.delete(pageIndex);
      this.pages.set(pageIndex, page);
      this.newestPageIndex = pageIndex;
    }
    return page.get(chunkIndex);
  }

  /** Records an entry the MDS just gave for one chunk (allocated, refreshed, changed). */
  set(entry: ChunkMapEntry): void {
    this.checkIndex(entry.chunkIndex);
    const pageIndex = Math.floor(entry.chunkIndex / this.pageChunks);
    const page = this.pages.get(pageIndex);
    if (page !== undefined) {
      page.set(entry.chunkIndex, entry);
      return;
    }
    // A page not held at all will come from the MDS, which already has this entry.
    this.loading.get(pageIndex)?.overlay.set(entry.chunkIndex, entry);
  }

  private load(pageIndex: number): Promise<Page> {
    const inFlight = this.loading.get(pageIndex);
    if (inFlight !== undefined) return inFlight.promise;
    const overlay = new Map<number, ChunkMapEntry>();
    const promise = this.fetch(pageIndex)
      .then((page) => {
        // An entry learnt during the load may be newer than the page's (which the MDS may have
        // read before that change): the higher version wins, and on a tie the entry learnt alone.
        for (const [chunkIndex, entry] of overlay) {
          const fetched = page.get(chunkIndex);
          if (fetched === undefined || fetched.version <= entry.version) page.set(chunkIndex, entry);
        }
        this.insert(pageIndex, page);
        return page;
      })
      .finally(() => this.loading.delete(pageIndex));
    this.loading.set(pageIndex, { promise, overlay });
    return promise;
  }

  /** Asks the MDS for the page's index range until the replies cover it (normally one reply). */
  private async fetch(pageIndex: number): Promise<Page> {
    this.stats.pageLoads += 1;
    const page: Page = new Map();
    const endIndex = Math.min((pageIndex + 1) * this.pageChunks, this.options.chunkCount);
    let fromIndex = pageIndex * this.pageChunks;
    while (fromIndex < endIndex) {
      this.stats.pageRequests += 1;
      const reply = await this.options.source.chunkMap(this.options.volumeName, fromIndex, endIndex - fromIndex);
      // A reply that covers nothing would loop forever; one past the range would be misread.
      if (!Number.isSafeInteger(reply.endIndex) || reply.endIndex <= fromIndex) {
        throw new StorageError('ERR_PROTOCOL', `the MDS listed no chunks of "${this.options.volumeName}" from index ${fromIndex}`);
      }
      const coveredIndex = Math.min(reply.endIndex, endIndex);
      for (const entry of reply.chunks) {
        if (entry.chunkIndex < fromIndex || entry.chunkIndex >= coveredIndex) {
          throw new StorageError('ERR_PROTOCOL',
            `the MDS listed chunk ${entry.chunkIndex} of "${this.options.volumeName}" outside [${fromIndex}, ${coveredIndex})`);
        }
        page.set(entry.chunkIndex, entry);
      }
      fromIndex = coveredIndex;
    }
    return page;
  }

  private insert(pageIndex: number, page: Page): void {
    this.pages.delete(pageIndex);
    this.pages.set(pageIndex, page);
    this.newestPageIndex = pageIndex;
    for (const oldest of this.pages.keys()) {
      if (this.pages.size <= this.pagesMax) break;
      this.pages.delete(oldest);
      this.stats.evictions += 1;
    }
    assert(this.pages.size <= this.pagesMax, 'the chunk map keeps at most pagesMax pages');
  }

  private checkIndex(chunkIndex: number): void {
    // Callers split requests at the volume's end; the message is built only when that broke.
    if (Number.isSafeInteger(chunkIndex) && chunkIndex >= 0 && chunkIndex < this.options.chunkCount) return;
    assert(false, `chunk index ${chunkIndex} lies within the volume's ${this.options.chunkCount} chunks`);
  }
}
