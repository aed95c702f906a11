// An open volume: the client library's BlockDevice. It checks each request's range, orders
// overlapping changes, and hands the pieces to the parts that do the work:
//
// - ranges.ts: a byte range cut into pieces of one chunk and one frame each (pure);
// - lease.ts: the write lease and the capability chunk servers serve the volume on, renewed in the
//   background (a capability is presented on each connection before the first request for the
//   volume; each write carries its chunk's ticket, which lets the primary check the forward list);
// - chunk_locator.ts: the chunk map as I/O uses it (loaded page by page, refreshed, allocation);
// - replica_io.ts: reads that fail over among a chunk's members, changes sent to the primary;
// - retry.ts: the one retry loop (deadline, backoff, which codes are retryable where);
// - qos_gate.ts: the volume's I/O limits, which every read, write and zeroing passes first.
//
// Ordering: writes whose 4 KiB blocks overlap are never in flight at the same time; the later one
// waits. Replicas apply a chunk's writes in arrival order, so without this two overlapping writes
// could land in different orders on different replicas and leave them different.

import { hostname } from 'node:os';
import { StorageError } from '../errors.ts';
import { UNLIMITED_QOS, type LeaseGrant, type VolumeInfo } from '../protocol/api.ts';
import type { CapabilityGrant } from '../protocol/capability.ts';
import { CS_OP } from '../protocol/cs_messages.ts';
import type { CsConnectionPool } from '../protocol/cs_connection.ts';
import type { MdsClient } from '../protocol/mds_client.ts';
import { systemTimers } from '../util/clock.ts';
import type { Logger } from '../util/log.ts';
import { RangeLock } from '../util/range_lock.ts';
import { CACHE_BLOCK_BYTES, type ReadCache } from '../cache/read_cache.ts';
import type { BlockDevice, Extent } from './block_device.ts';
import { ChunkLocator } from './chunk_locator.ts';
import { LeaseKeeper, capabilityGrant } from './lease.ts';
import { QosGate } from './qos_gate.ts';
import { blockSpan, checkRange, firstPiece, splitRange, type Piece } from './ranges.ts';
import { ReplicaIo } from './replica_io.ts';
import { Retrier } from './retry.ts';

export interface VolumeOpenOptions {
  readonly mds: MdsClient;
  readonly pool: CsConnectionPool;
  readonly name: string;
  readonly readOnly: boolean;
  /** Shown to admins as the lease holder. */
  readonly holder?: string;
  readonly force?: boolean;
  readonly log: Logger;
  /** See IO_TIMEOUT_MS_DEFAULT. */
  readonly ioTimeoutMs?: number;
  /** Chunk-map pages kept in memory (see CHUNK_MAP_PAGES_MAX_DEFAULT). */
  readonly chunkMapPagesMax?: number;
  /**
   * This host, as chunk servers name theirs (--failure-domain-host): new chunks get their first
   * replica (the primary, which takes writes) on it, and reads go to replicas on it first.
   */
  readonly hostLabel?: string;
  /** Chunk servers whose disks are ill (the MDS says so; kept up to date by the caller): read last. */
  readonly avoidServers?: ReadonlySet<number>;
  /**
   * A local read cache shared by the process's volumes (../cache/read_cache.ts), a volume a group
   * of it (with generations). Used only by write opens
   * while their lease is held and confirmed lately: nobody else writes the volume then.
   */
  readonly readCache?: ReadCache;
}

/** Chunks whose accesses are counted between two I/O reports at most (the rest go uncounted). */
const CHUNK_ACCESSES_TRACKED_MAX = 4_096;

/** How long a read or write keeps trying (failover, waiting for recovery) before ERR_IO. */
export const IO_TIMEOUT_MS_DEFAULT = 60_000;

export class Volume implements BlockDevice {
  readonly name: string;
  readonly readOnly: boolean;
  private readonly info: VolumeInfo;
  private readonly lease: LeaseKeeper;
  private readonly chunks: ChunkLocator;
  private readonly replicas: ReplicaIo;
  private readonly writeOrder = new RangeLock();
  private readonly readCache: ReadCache | undefined;
  /** This open's generation in the read cache (ReadCache.openGroup). */
  private cacheGeneration = 0;
  /** No write before this (performance.now()): the previous writer's read cache may still answer (LeaseGrant.holdWritesMs). */
  private writesFromMs = 0;
  /** chunkIndex -> requests since the hot chunks were last taken (takeHotChunks); bounded. */
  private readonly chunkAccesses = new Map<number, number>();
  /** The volume's I/O limits, kept current by the lease keeper. */
  readonly qos: QosGate;
  private closed = false;

  private constructor(options: VolumeOpenOptions, info: VolumeInfo, lease: LeaseGrant | null, grant: CapabilityGrant, openedAtMs: number) {
    this.name = options.name;
    this.readOnly = options.readOnly;
    this.info = info;
    // Blocks must lie within chunks: chunk sizes are powers of two of at least 1 MiB (limits.ts).
    this.readCache = options.readOnly || info.chunkSizeBytes % CACHE_BLOCK_BYTES !== 0 ? undefined : options.readCache;
    const timers = systemTimers;
    const retrier = new Retrier({
      subject: `volume "${options.name}"`,
      timeoutMs: options.ioTimeoutMs ?? IO_TIMEOUT_MS_DEFAULT,
      timers,
      checkWanted: () => this.checkOpen(),
    });
    // An MDS older than volume limits sends none: no limit.
    this.qos = new QosGate(info.qos ?? UNLIMITED_QOS, timers);
    this.lease = new LeaseKeeper({
      volumeName: options.name, lease, grant, mds: options.mds, log: options.log, timers, openedAtMs,
      onQos: (qos) => this.qos.setLimits(qos),
    });
    this.chunks = new ChunkLocator({
      mds: options.mds,
      volumeName: options.name,
      chunkCount: Math.ceil(info.sizeBytes / info.chunkSizeBytes),
      replicasMin: info.replicas.min,
      chunkMapPagesMax: options.chunkMapPagesMax,
      retrier,
      lease: this.lease,
      hostLabel: options.hostLabel,
    });
    this.replicas = new ReplicaIo({
      hostLabel: options.hostLabel,
      avoidServers: options.avoidServers,
      volumeName: options.name,
      volumeId: info.id,
      pool: options.pool,
      mds: options.mds,
      chunks: this.chunks,
      lease: this.lease,
      retrier,
      log: options.log,
    });
  }

  static async open(options: VolumeOpenOptions): Promise<Volume> {
    const openedAtMs = performance.now();
    const opened = await options.mds.openVolume(options.name, {
      mode: options.readOnly ? 'read' : 'write',
      holder: options.holder ?? `${hostname()} pid ${process.pid}`,
      ...(options.force === true ? { force: true } : {}),
      ...(!options.readOnly && options.readCache !== undefined ? { cachedReads: true } : {}),
      ...(!options.readOnly && options.hostLabel !== undefined ? { host: options.hostLabel } : {}),
    });
    const volume = new Volume(options, opened.volume, opened.lease, capabilityGrant(opened.capability), openedAtMs);
    const holdWritesMs = opened.lease?.holdWritesMs ?? 0;
    if (holdWritesMs > 0) {
      volume.writesFromMs = performance.now() + holdWritesMs;
      options.log.info('writes held while the previous writer\'s read cache may still answer its guest', { volume: options.name, holdWritesMs });
    }
    if (volume.readCache !== undefined) volume.cacheGeneration = volume.readCache.openGroup(opened.volume.id, volume.lease.epoch);
    volume.lease.start();
    return volume;
  }

  get sizeBytes(): number {
    return this.info.sizeBytes;
  }

  get epoch(): number {
    return this.lease.epoch;
  }

  // ---- BlockDevice ------------------------------------------------------------------------------

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.checkRange(offsetBytes, lengthBytes);
    this.noteAccess(offsetBytes);
    const gate = this.qos.admit(lengthBytes);
    if (gate !== null) await gate;
    const scan = this.readCache?.noteRead(this.info.id, offsetBytes, lengthBytes).scan ?? true;
    const pieces = splitRange(offsetBytes, lengthBytes, this.info.chunkSizeBytes);
    if (pieces.length === 1 && pieces[0] !== undefined) return this.readPiece(pieces[0], scan);
    const result = Buffer.allocUnsafe(lengthBytes);
    await Promise.all(
      pieces.map(async (piece) => {
        const bytes = await this.readPiece(piece, scan);
        bytes.copy(result, piece.bufferOffset);
      }),
    );
    return result;
  }

  async write(offsetBytes: number, data: Buffer): Promise<void> {
    this.checkWritable();
    this.checkRange(offsetBytes, data.length);
    this.noteAccess(offsetBytes);
    await this.writesAllowed();
    const gate = this.qos.admit(data.length);
    if (gate !== null) await gate;
    await this.ordered(offsetBytes, data.length, () => this.changing(offsetBytes, data.length, () =>
      Promise.all(
        splitRange(offsetBytes, data.length, this.info.chunkSizeBytes).map((piece) =>
          this.replicas.change(piece, CS_OP.WRITE, data.subarray(piece.bufferOffset, piece.bufferOffset + piece.lengthBytes)),
        ),
      ),
    ));
  }

  async zero(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkWritable();
    this.checkRange(offsetBytes, lengthBytes);
    await this.writesAllowed();
    // A zeroing moves no data: it counts as a request, not as bytes.
    const gate = this.qos.admit(0);
    if (gate !== null) await gate;
    await this.ordered(offsetBytes, lengthBytes, () => this.changing(offsetBytes, lengthBytes, () =>
      Promise.all(
        // A zeroing carries no data: one request per chunk, whatever its length (TRIM of a whole disk).
        splitRange(offsetBytes, lengthBytes, this.info.chunkSizeBytes, this.info.chunkSizeBytes).map(async (piece) => {
          // A chunk never written reads as zeroes already.
          if ((await this.chunks.entryOf(piece.chunkIndex)) === undefined) return;
          await this.replicas.change(piece, CS_OP.ZERO, undefined);
        }),
      ),
    ));
  }

  trim(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.zero(offsetBytes, lengthBytes);
  }

  async flush(): Promise<void> {
    // Every acknowledged write is already on stable storage on every replica.
    this.checkOpen();
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    this.checkRange(offsetBytes, lengthBytes);
    // One chunk per call keeps the answer bounded; callers ask again for the rest.
    const piece = firstPiece(offsetBytes, lengthBytes, this.info.chunkSizeBytes);
    if ((await this.chunks.entryOf(piece.chunkIndex)) === undefined) return [{ lengthBytes: piece.lengthBytes, allocated: false }];
    return this.replicas.blockStatus(piece);
  }

  /** Releases the write lease; further calls fail. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.qos.releaseAll();
    // Released cleanly, what is cached may serve this host's next open (ReadCache.openGroup).
    this.readCache?.closeGroup(this.info.id, this.lease.epoch, this.lease.lost === null);
    await this.lease.stop();
  }

  // ---- helpers ----------------------------------------------------------------------------------

  private async readPiece(piece: Piece, scan: boolean): Promise<Buffer> {
    const entry = await this.chunks.entryOf(piece.chunkIndex);
    if (entry === undefined) return Buffer.alloc(piece.lengthBytes);
    const cache = this.readCache;
    // Only while nobody else can write the volume: the lease held, and confirmed lately.
    // A chunk in doubt may read differently from each member until the MDS settles it (under a new version).
    if (cache === undefined || entry.inDoubt === true || this.lease.lost !== null || !this.lease.confirmedLately()) return this.replicas.read(piece);
    const chunkStartBytes = piece.chunkIndex * this.info.chunkSizeBytes;
    const chunkFirstBlock = chunkStartBytes / CACHE_BLOCK_BYTES;
    const tag = `${this.cacheGeneration}/${entry.chunkId}/${entry.version}`;
    return cache.read({
      offsetBytes: piece.offsetInChunk,
      lengthBytes: piece.lengthBytes,
      endBytes: Math.min(this.info.chunkSizeBytes, this.info.sizeBytes - chunkStartBytes),
      scan,
      keyOf: (block) => ({ group: this.info.id, blockIndex: chunkFirstBlock + block, tag }),
      source: (offsetInChunk, lengthBytes) => this.replicas.read({ chunkIndex: piece.chunkIndex, offsetInChunk, lengthBytes, bufferOffset: 0 }),
    });
  }

  /**
   * Runs a change of bytes [offset, offset + length), dropping the cached blocks it touches before
   * and after: a block read from the chunk servers while the change was in flight is not kept.
   */
  private async changing<T>(offsetBytes: number, lengthBytes: number, change: () => Promise<T>): Promise<T> {
    const cache = this.readCache;
    if (cache === undefined) return change();
    const firstBlock = Math.floor(offsetBytes / CACHE_BLOCK_BYTES);
    const lastBlock = Math.floor((offsetBytes + lengthBytes - 1) / CACHE_BLOCK_BYTES);
    cache.invalidate(this.info.id, firstBlock, lastBlock);
    try {
      return await change();
    } finally {
      cache.invalidate(this.info.id, firstBlock, lastBlock);
    }
  }

  /**
   * The chunks read and written most since the last call, hottest first, at most `max` (the I/O
   * report carries them to the MDS, whose planner moves them to this host: recovery.ts).
   */
  takeHotChunks(max: number): number[] {
    // A writer whose lease was taken is not the one the chunks should follow.
    if (this.lease.lost !== null) {
      this.chunkAccesses.clear();
      return [];
    }
    const hottest = [...this.chunkAccesses].sort((a, b) => b[1] - a[1]).slice(0, max).map(([chunkIndex]) => chunkIndex);
    this.chunkAccesses.clear();
    return hottest;
  }

  private noteAccess(offsetBytes: number): void {
    const chunkIndex = Math.floor(offsetBytes / this.info.chunkSizeBytes);
    const count = this.chunkAccesses.get(chunkIndex);
    if (count !== undefined) this.chunkAccesses.set(chunkIndex, count + 1);
    else if (this.chunkAccesses.size < CHUNK_ACCESSES_TRACKED_MAX) this.chunkAccesses.set(chunkIndex, 1);
  }

  /** Waits out a hold on writes after the lease was taken from a holder with a read cache. */
  private async writesAllowed(): Promise<void> {
    const waitMs = this.writesFromMs - performance.now();
    if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, waitMs));
  }

  /** Runs a change once no in-flight change overlaps its blocks. */
  private async ordered<T>(offsetBytes: number, lengthBytes: number, change: () => Promise<T>): Promise<T> {
    const { firstBlock, lastBlock } = blockSpan(offsetBytes, lengthBytes);
    const release = await this.writeOrder.acquire(firstBlock, lastBlock, true);
    try {
      return await change();
    } finally {
      release();
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new StorageError('ERR_SHUTTING_DOWN', `volume "${this.name}" is closed`);
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.readOnly) throw new StorageError('ERR_READ_ONLY', `volume "${this.name}" is open read-only`);
    if (this.lease.lost !== null) throw this.lease.lost;
  }

  private checkRange(offsetBytes: number, lengthBytes: number): void {
    this.checkOpen();
    checkRange(this.name, this.info.sizeBytes, offsetBytes, lengthBytes);
  }
}
