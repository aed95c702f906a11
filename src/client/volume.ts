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
}

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
  /** The volume's I/O limits, kept current by the lease keeper. */
  readonly qos: QosGate;
  private closed = false;

  private constructor(options: VolumeOpenOptions, info: VolumeInfo, lease: LeaseGrant | null, grant: CapabilityGrant) {
    this.name = options.name;
    this.readOnly = options.readOnly;
    this.info = info;
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
      volumeName: options.name, lease, grant, mds: options.mds, log: options.log, timers,
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
    const opened = await options.mds.openVolume(options.name, {
      mode: options.readOnly ? 'read' : 'write',
      holder: options.holder ?? `${hostname()} pid ${process.pid}`,
      ...(options.force === true ? { force: true } : {}),
    });
    const volume = new Volume(options, opened.volume, opened.lease, capabilityGrant(opened.capability));
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
    const gate = this.qos.admit(lengthBytes);
    if (gate !== null) await gate;
    const pieces = splitRange(offsetBytes, lengthBytes, this.info.chunkSizeBytes);
    if (pieces.length === 1 && pieces[0] !== undefined) return this.readPiece(pieces[0]);
    const result = Buffer.allocUnsafe(lengthBytes);
    await Promise.all(
      pieces.map(async (piece) => {
        const bytes = await this.readPiece(piece);
        bytes.copy(result, piece.bufferOffset);
      }),
    );
    return result;
  }

  async write(offsetBytes: number, data: Buffer): Promise<void> {
    this.checkWritable();
    this.checkRange(offsetBytes, data.length);
    const gate = this.qos.admit(data.length);
    if (gate !== null) await gate;
    await this.ordered(offsetBytes, data.length, () =>
      Promise.all(
        splitRange(offsetBytes, data.length, this.info.chunkSizeBytes).map((piece) =>
          this.replicas.change(piece, CS_OP.WRITE, data.subarray(piece.bufferOffset, piece.bufferOffset + piece.lengthBytes)),
        ),
      ),
    );
  }

  async zero(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkWritable();
    this.checkRange(offsetBytes, lengthBytes);
    // A zeroing moves no data: it counts as a request, not as bytes.
    const gate = this.qos.admit(0);
    if (gate !== null) await gate;
    await this.ordered(offsetBytes, lengthBytes, () =>
      Promise.all(
        // A zeroing carries no data: one request per chunk, whatever its length (TRIM of a whole disk).
        splitRange(offsetBytes, lengthBytes, this.info.chunkSizeBytes, this.info.chunkSizeBytes).map(async (piece) => {
          // A chunk never written reads as zeroes already.
          if ((await this.chunks.entryOf(piece.chunkIndex)) === undefined) return;
          await this.replicas.change(piece, CS_OP.ZERO, undefined);
        }),
      ),
    );
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
    await this.lease.stop();
  }

  // ---- helpers ----------------------------------------------------------------------------------

  private async readPiece(piece: Piece): Promise<Buffer> {
    if ((await this.chunks.entryOf(piece.chunkIndex)) === undefined) return Buffer.alloc(piece.lengthBytes);
    return this.replicas.read(piece);
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
