// An open volume: the client library's BlockDevice. It maps byte ranges to chunks, asks the MDS to
// allocate a chunk on its first write, talks to chunk servers directly (the primary forwards
// writes to the other replicas), and holds the volume's write lease, renewing it in the background.
// Chunk servers serve it on the capability the MDS issued with the open (presented on each
// connection before the first request for the volume), which it renews well before it expires;
// each write carries its chunk's ticket, which lets the primary check the forward list.
//
// Ordering: writes whose 4 KiB blocks overlap are never in flight at the same time; the later one
// waits. Replicas apply a chunk's writes in arrival order, so without this two overlapping writes
// could land in different orders on different replicas and leave them different.

import { hostname, networkInterfaces } from 'node:os';
import { StorageError, isStorageError } from '../errors.ts';
import { BLOCK_BYTES, CS_PAYLOAD_BYTES_MAX } from '../limits.ts';
import type { CapabilityReply, ChunkMapEntry, LeaseGrant, VolumeInfo } from '../protocol/api.ts';
import { decodeCapability, type CapabilityGrant } from '../protocol/capability.ts';
import { CS_OP, decodeExtents } from '../protocol/cs_messages.ts';
import type { CsConnectionPool, CsRequestBody, CsResponse } from '../protocol/cs_connection.ts';
import type { MdsClient } from '../protocol/mds_client.ts';
import { assert } from '../util/assert.ts';
import type { Logger } from '../util/log.ts';
import { RangeLock } from '../util/range_lock.ts';
import type { BlockDevice, Extent } from './block_device.ts';
import { ChunkMap } from './chunk_map.ts';

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
}

/** A piece of a request that lies within one chunk and fits one frame. */
interface Piece {
  readonly chunkIndex: number;
  readonly offsetInChunk: number;
  readonly lengthBytes: number;
  /** Offset of the piece within the caller's buffer. */
  readonly bufferOffset: number;
}

type ReplicaLocation = ChunkMapEntry['replicas'][number];

type AttemptOutcome =
  | { readonly kind: 'done' }
  /** These members failed the change (the primary itself when it could not be reached). */
  | { readonly kind: 'failed'; readonly failedCsIds: readonly number[]; readonly error: StorageError }
  /** The primary holds another version than ours: refresh, and if the map agrees with us, report. */
  | { readonly kind: 'stale'; readonly error: StorageError }
  | { readonly kind: 'fatal'; readonly error: StorageError };

/** Addresses of this host: replicas listening on them are read first. */
const LOCAL_HOSTS = new Set<string>([
  'localhost',
  ...Object.values(networkInterfaces()).flatMap((addresses) => (addresses ?? []).map((address) => address.address)),
]);

/** How long a read or write keeps trying (failover, waiting for recovery) before ERR_IO. */
export const IO_TIMEOUT_MS_DEFAULT = 60_000;

/** A capability is renewed once this share of its lifetime has passed. */
const CAPABILITY_RENEW_AT = 1 / 3;
const CAPABILITY_RETRY_MS = 1_000;

function capabilityGrant(reply: CapabilityReply): CapabilityGrant {
  const encoded = Buffer.from(reply.capability, 'hex');
  return { capability: decodeCapability(encoded), encoded, sessionKey: Buffer.from(reply.sessionKey, 'hex') };
}

/** Each entry's ticket as bytes, decoded once per entry (entries are replaced, never changed). */
const tickets = new WeakMap<ChunkMapEntry, Buffer>();
function ticketOf(entry: ChunkMapEntry): Buffer {
  let ticket = tickets.get(entry);
  if (ticket === undefined) {
    ticket = Buffer.from(entry.ticket, 'hex');
    tickets.set(entry, ticket);
  }
  return ticket;
}

export class Volume implements BlockDevice {
  readonly name: string;
  readonly readOnly: boolean;
  private info: VolumeInfo;
  private readonly lease: LeaseGrant | null;
  private leaseLost: StorageError | null = null;
  /** A bounded cache of the MDS's map, loaded page by page as chunks are touched. */
  private readonly chunks: ChunkMap;
  private readonly allocating = new Map<number, Promise<ChunkMapEntry>>();
  private readonly writeOrder = new RangeLock();
  private readonly options: VolumeOpenOptions;
  private renewTimer: NodeJS.Timeout | null = null;
  private capabilityTimer: NodeJS.Timeout | null = null;
  /** What chunk servers serve this volume on; replaced before it expires. */
  private grant: CapabilityGrant;
  private closed = false;
  private readonly ioTimeoutMs: number;
  private readRotation = 0;

  private constructor(options: VolumeOpenOptions, info: VolumeInfo, lease: LeaseGrant | null, grant: CapabilityGrant) {
    this.options = options;
    this.grant = grant;
    this.name = options.name;
    this.readOnly = options.readOnly;
    this.info = info;
    this.lease = lease;
    this.ioTimeoutMs = options.ioTimeoutMs ?? IO_TIMEOUT_MS_DEFAULT;
    this.chunks = new ChunkMap({
      source: options.mds,
      volumeName: options.name,
      chunkCount: Math.ceil(info.sizeBytes / info.chunkSizeBytes),
      ...(options.chunkMapPagesMax === undefined ? {} : { pagesMax: options.chunkMapPagesMax }),
    });
  }

  static async open(options: VolumeOpenOptions): Promise<Volume> {
    const opened = await options.mds.openVolume(options.name, {
      mode: options.readOnly ? 'read' : 'write',
      holder: options.holder ?? `${hostname()} pid ${process.pid}`,
      ...(options.force === true ? { force: true } : {}),
    });
    const volume = new Volume(options, opened.volume, opened.lease, capabilityGrant(opened.capability));
    volume.startRenewing();
    volume.scheduleCapabilityRenewal();
    return volume;
  }

  get sizeBytes(): number {
    return this.info.sizeBytes;
  }

  get epoch(): number {
    return this.lease?.epoch ?? 0;
  }

  // ---- BlockDevice ------------------------------------------------------------------------------

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.checkRange(offsetBytes, lengthBytes);
    const pieces = this.split(offsetBytes, lengthBytes);
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
    await this.ordered(offsetBytes, data.length, () =>
      Promise.all(
        this.split(offsetBytes, data.length).map((piece) =>
          this.mutatePiece(piece, CS_OP.WRITE, data.subarray(piece.bufferOffset, piece.bufferOffset + piece.lengthBytes)),
        ),
      ),
    );
  }

  async zero(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkWritable();
    this.checkRange(offsetBytes, lengthBytes);
    await this.ordered(offsetBytes, lengthBytes, () =>
      Promise.all(
        // A zeroing carries no data: one request per chunk, whatever its length (TRIM of a whole disk).
        this.split(offsetBytes, lengthBytes, this.info.chunkSizeBytes).map(async (piece) => {
          // A chunk never written reads as zeroes already.
          if ((await this.entryOf(piece.chunkIndex)) === undefined) return;
          await this.mutatePiece(piece, CS_OP.ZERO, undefined);
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
    const chunkSizeBytes = this.info.chunkSizeBytes;
    const chunkIndex = Math.floor(offsetBytes / chunkSizeBytes);
    const offsetInChunk = offsetBytes - chunkIndex * chunkSizeBytes;
    const inChunkBytes = Math.min(lengthBytes, chunkSizeBytes - offsetInChunk);
    const entry = await this.entryOf(chunkIndex);
    // One chunk per call keeps the answer bounded; callers ask again for the rest.
    if (entry === undefined) return [{ lengthBytes: inChunkBytes, allocated: false }];
    const { payload } = await this.onReplica(chunkIndex, (target) =>
      this.send(target, {
        op: CS_OP.BLOCK_STATUS,
        chunkId: target.entry.chunkId,
        version: target.entry.version,
        offsetBytes: offsetInChunk,
        lengthBytes: inChunkBytes,
      }),
    );
    return decodeExtents(payload);
  }

  /** Releases the write lease; further calls fail. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.renewTimer !== null) clearInterval(this.renewTimer);
    if (this.capabilityTimer !== null) clearTimeout(this.capabilityTimer);
    if (this.lease !== null && this.leaseLost === null) {
      await this.options.mds.closeVolume(this.name, this.lease.leaseId).catch((error: unknown) => {
        this.options.log.warn('could not release the lease; it will expire', { volume: this.name, error });
      });
    }
  }

  // ---- pieces -----------------------------------------------------------------------------------

  private split(offsetBytes: number, lengthBytes: number, pieceBytesMax: number = CS_PAYLOAD_BYTES_MAX): Piece[] {
    const chunkSizeBytes = this.info.chunkSizeBytes;
    const pieces: Piece[] = [];
    let position = offsetBytes;
    const endBytes = offsetBytes + lengthBytes;
    while (position < endBytes) {
      const chunkIndex = Math.floor(position / chunkSizeBytes);
      const offsetInChunk = position - chunkIndex * chunkSizeBytes;
      const pieceBytes = Math.min(endBytes - position, chunkSizeBytes - offsetInChunk, pieceBytesMax);
      pieces.push({ chunkIndex, offsetInChunk, lengthBytes: pieceBytes, bufferOffset: position - offsetBytes });
      position += pieceBytes;
    }
    return pieces;
  }

  private async readPiece(piece: Piece): Promise<Buffer> {
    if ((await this.entryOf(piece.chunkIndex)) === undefined) return Buffer.alloc(piece.lengthBytes);
    const { payload } = await this.onReplica(
      piece.chunkIndex,
      (target) =>
        this.send(target, {
          op: CS_OP.READ,
          chunkId: target.entry.chunkId,
          version: target.entry.version,
          offsetBytes: piece.offsetInChunk,
          lengthBytes: piece.lengthBytes,
        }),
      { offsetBytes: piece.offsetInChunk, lengthBytes: piece.lengthBytes },
    );
    if (payload.length !== piece.lengthBytes) {
      throw new StorageError('ERR_PROTOCOL', `chunk server returned ${payload.length} bytes for a ${piece.lengthBytes}-byte read`);
    }
    return payload;
  }

  /**
   * Sends a change to the chunk's primary, which forwards it to the other members. When members
   * fail, they are reported to the MDS, which takes them out of the set under a new version and
   * makes the changed range equal on the members that stay; the change is then sent again. While
   * the chunk has fewer members than the volume's minimum, the change waits for recovery, up to
   * the I/O timeout, and then fails with ERR_IO: it is never acknowledged on fewer copies.
   */
  private async mutatePiece(piece: Piece, op: typeof CS_OP.WRITE | typeof CS_OP.ZERO, data: Buffer | undefined): Promise<void> {
    if (op === CS_OP.WRITE) await this.ensureChunk(piece.chunkIndex);
    const deadlineMs = Date.now() + this.ioTimeoutMs;
    let lastProblem = 'no attempt made';
    for (let attempt = 0; ; attempt += 1) {
      if (attempt > 0) await this.backoff(attempt, deadlineMs, `${lastProblem} (write to chunk ${piece.chunkIndex})`);
      const entry = await this.writableEntry(piece.chunkIndex, deadlineMs);
      const [primary, ...others] = entry.replicas;
      assert(primary !== undefined, 'a writable chunk has a primary replica');
      const body = {
        op,
        chunkId: entry.chunkId,
        version: entry.version,
        volumeId: this.info.id,
        epoch: this.epoch,
        offsetBytes: piece.offsetInChunk,
        lengthBytes: piece.lengthBytes,
        forward: others,
        ticket: ticketOf(entry),
      };
      const outcome = await this.attempt(primary, body, data);
      if (outcome.kind === 'done') return;
      if (outcome.kind === 'fatal') throw this.noteFenced(outcome.error);
      lastProblem = outcome.error.message;
      const failedCsIds = outcome.kind === 'failed' ? [...outcome.failedCsIds] : [];
      if (outcome.kind === 'stale') {
        const before = entry.version;
        // An MDS that cannot be reached (restarting) is waited out like any other failure.
        const refreshed = await this.refreshChunk(piece.chunkIndex).then(() => true, (error: unknown) => {
          lastProblem = error instanceof Error ? error.message : String(error);
          return false;
        });
        if (!refreshed) continue;
        if (((await this.entryOf(piece.chunkIndex))?.version ?? before) !== before) continue;
      }
      // Members failed, or a member disagrees with the map about the version: the MDS settles it.
      const updated = await this.options.mds.reportChunkFailure(this.name, piece.chunkIndex, {
        leaseId: this.leaseId(),
        version: entry.version,
        failedCsIds,
        offsetBytes: piece.offsetInChunk,
        lengthBytes: piece.lengthBytes,
        reason: outcome.error.message.slice(0, 2048),
      }).catch((error: unknown) => {
        if (isStorageError(error, 'ERR_LEASE_EXPIRED')) throw this.loseLease(error);
        lastProblem = error instanceof Error ? error.message : String(error);
        return null;
      });
      if (updated !== null) this.chunks.set(updated);
    }
  }

  /** Sends one change to the primary and sorts the outcome: done, retry after what, or give up. */
  private async attempt(primary: ReplicaLocation, body: CsRequestBody, data: Buffer | undefined): Promise<AttemptOutcome> {
    let response: CsResponse;
    try {
      response = await this.options.pool.request(primary.host, primary.port, body, data, this.grant);
    } catch (error) {
      // The primary cannot be reached: it is the member that failed.
      const failure = error instanceof StorageError ? error : new StorageError('ERR_UNAVAILABLE', String(error));
      return { kind: 'failed', failedCsIds: [primary.csId], error: failure };
    }
    const { reply } = response;
    if (reply.code === undefined) return { kind: 'done' };
    const error = StorageError.fromWire(reply.code, `chunk server ${primary.csId}: ${reply.message ?? ''}`);
    // A member that refused the change as fenced did not fail: this client's lease is gone.
    const fenced = reply.failedReplicas?.find((failure) => failure.code === 'ERR_LEASE_FENCED');
    if (fenced !== undefined) return { kind: 'fatal', error: new StorageError('ERR_LEASE_FENCED', `chunk server ${fenced.csId}: ${fenced.message}`) };
    if (reply.failedReplicas !== undefined && reply.failedReplicas.length > 0) {
      const detail = reply.failedReplicas.map((f) => `${f.csId}: ${f.code} ${f.message}`).join('; ');
      return { kind: 'failed', failedCsIds: reply.failedReplicas.map((failure) => failure.csId),
        error: new StorageError(error.code, `${error.message} [${detail}]`) };
    }
    switch (reply.code) {
      case 'ERR_CHUNK_VERSION':
        return { kind: 'stale', error };
      case 'ERR_LEASE_FENCED':
      case 'ERR_OUT_OF_RANGE':
      case 'ERR_INVALID_ARGUMENT':
      case 'ERR_PROTOCOL':
      case 'ERR_TOO_LARGE':
      case 'ERR_UNAUTHORIZED':
        return { kind: 'fatal', error };
      default:
        // The primary's own copy failed (disk error, full disk, lost its MDS, no such chunk).
        return { kind: 'failed', failedCsIds: [primary.csId], error };
    }
  }

  /** The chunk's entry once it has at least the volume's minimum of members. */
  private async writableEntry(chunkIndex: number, deadlineMs: number): Promise<ChunkMapEntry> {
    for (let attempt = 0; ; attempt += 1) {
      const entry = await this.entryOf(chunkIndex, deadlineMs);
      assert(entry !== undefined, 'changes reach allocated chunks only');
      if (entry.replicas.length >= this.info.replicas.min) return entry;
      await this.backoff(attempt + 1, deadlineMs,
        `chunk ${chunkIndex} has ${entry.replicas.length} replicas, fewer than the minimum of ${this.info.replicas.min}`);
      await this.refreshChunk(chunkIndex).catch(() => undefined);
    }
  }

  /** Waits before another attempt; past the deadline, gives up with ERR_IO naming the problem. */
  private async backoff(attempt: number, deadlineMs: number, problem: string): Promise<void> {
    this.checkOpen();
    const remainingMs = deadlineMs - Date.now();
    if (remainingMs <= 0) {
      throw new StorageError('ERR_IO', `volume "${this.name}": gave up after ${this.ioTimeoutMs} ms: ${problem}`);
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(remainingMs, 25 * 2 ** Math.min(attempt, 6))));
  }

  /** Runs a change once no in-flight change overlaps its blocks. */
  private async ordered<T>(offsetBytes: number, lengthBytes: number, change: () => Promise<T>): Promise<T> {
    const first = Math.floor(offsetBytes / BLOCK_BYTES);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / BLOCK_BYTES);
    const release = await this.writeOrder.acquire(first, last, true);
    try {
      return await change();
    } finally {
      release();
    }
  }

  // ---- talking to chunk servers -------------------------------------------------------------------

  private async send(
    target: { entry: ChunkMapEntry; replica: ChunkMapEntry['replicas'][number] },
    body: CsRequestBody,
    payload?: Buffer,
  ): Promise<CsResponse> {
    const response = await this.options.pool.request(target.replica.host, target.replica.port, body, payload, this.grant);
    if (response.reply.code !== undefined) {
      throw StorageError.fromWire(
        response.reply.code,
        `chunk ${target.entry.chunkId} on chunk server ${target.replica.csId}: ${response.reply.message ?? ''}`,
      );
    }
    return response;
  }

  /**
   * Reads from the chunk's members in order, moving on when one fails; a member whose blocks fail
   * their checksum is reported for repair. When every member fails, the map is refreshed and the
   * members tried again, up to the I/O timeout.
   */
  private async onReplica(
    chunkIndex: number,
    attempt: (target: { entry: ChunkMapEntry; replica: ReplicaLocation }) => Promise<CsResponse>,
    range?: { offsetBytes: number; lengthBytes: number },
  ): Promise<CsResponse> {
    const deadlineMs = Date.now() + this.ioTimeoutMs;
    let lastProblem = 'no member answered';
    for (let round = 0; ; round += 1) {
      if (round > 0) {
        await this.backoff(round, deadlineMs, `read of chunk ${chunkIndex}: ${lastProblem}`);
        await this.refreshChunk(chunkIndex).catch(() => undefined);
      }
      const entry = await this.entryOf(chunkIndex, deadlineMs);
      assert(entry !== undefined, 'reads of unallocated chunks never reach chunk servers');
      for (const replica of this.readOrder(entry)) {
        try {
          return await attempt({ entry, replica });
        } catch (error) {
          if (!isRetryable(error)) throw error;
          lastProblem = (error as Error).message;
          if (isStorageError(error, 'ERR_CHECKSUM') && range !== undefined) this.reportBadBlocks(entry, replica.csId, range);
        }
      }
    }
  }

  /**
   * The order in which to try a chunk's members for a read: replicas on this host first (no
   * network hop), and among equals a rotation, so reads spread over the members instead of all
   * landing on the primary.
   */
  private readOrder(entry: ChunkMapEntry): ReplicaLocation[] {
    const start = this.readRotation;
    this.readRotation = (this.readRotation + 1) % 0x40000000;
    const rotated = entry.replicas.map((_, index) => entry.replicas[(start + index) % entry.replicas.length]!);
    return [...rotated.filter((r) => LOCAL_HOSTS.has(r.host)), ...rotated.filter((r) => !LOCAL_HOSTS.has(r.host))];
  }

  private reportBadBlocks(entry: ChunkMapEntry, csId: number, range: { offsetBytes: number; lengthBytes: number }): void {
    this.options.mds
      .reportVolumeBadBlocks(this.name, { csId, volumeId: this.info.id, chunkIndex: entry.chunkIndex, chunkId: entry.chunkId, ...range })
      .catch((error: unknown) => this.options.log.warn('could not report bad blocks', { chunkId: entry.chunkId, csId, error }));
  }

  private noteFenced(error: StorageError): StorageError {
    if (error.code === 'ERR_LEASE_FENCED') return this.loseLease(error);
    return error;
  }

  private loseLease(error: StorageError): StorageError {
    if (this.leaseLost === null) {
      this.leaseLost = error;
      this.options.log.error('write lease lost (taken over, or this hypervisor was revoked): writes fail', { volume: this.name, message: error.message });
    }
    return error;
  }

  private leaseId(): string {
    assert(this.lease !== null, 'writes happen under a lease');
    return this.lease.leaseId;
  }

  private async refreshChunk(chunkIndex: number): Promise<void> {
    this.chunks.set(await this.options.mds.getChunk(this.name, chunkIndex));
  }

  /**
   * The chunk's map entry, or undefined when it was never written, loading its page from the MDS
   * when it is not held. An MDS that cannot be reached is waited out until `deadlineMs`.
   */
  private async entryOf(chunkIndex: number, deadlineMs = Date.now() + this.ioTimeoutMs): Promise<ChunkMapEntry | undefined> {
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await this.chunks.lookup(chunkIndex);
      } catch (error) {
        if (!isStorageError(error, 'ERR_UNAVAILABLE') && !isStorageError(error, 'ERR_TIMEOUT')) throw error;
        await this.backoff(attempt + 1, deadlineMs, `loading the map of chunk ${chunkIndex}: ${(error as Error).message}`);
      }
    }
  }

  /** The chunk's entry, asking the MDS to place it first if it was never written. */
  private async ensureChunk(chunkIndex: number): Promise<ChunkMapEntry> {
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
  private async allocate(chunkIndex: number): Promise<ChunkMapEntry> {
    const deadlineMs = Date.now() + this.ioTimeoutMs;
    for (let attempt = 0; ; attempt += 1) {
      try {
        const entry = await this.options.mds.allocateChunk(this.name, chunkIndex, this.leaseId());
        this.chunks.set(entry);
        return entry;
      } catch (error) {
        if (isStorageError(error, 'ERR_LEASE_EXPIRED')) throw this.loseLease(error);
        const waitable = isStorageError(error, 'ERR_UNAVAILABLE') || isStorageError(error, 'ERR_TIMEOUT') ||
          isStorageError(error, 'ERR_NOT_ENOUGH_SERVERS');
        if (!waitable) throw error;
        await this.backoff(attempt + 1, deadlineMs, `allocating chunk ${chunkIndex}: ${(error as Error).message}`);
      }
    }
  }


  // ---- checks and the lease -----------------------------------------------------------------------

  private checkOpen(): void {
    if (this.closed) throw new StorageError('ERR_SHUTTING_DOWN', `volume "${this.name}" is closed`);
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.readOnly) throw new StorageError('ERR_READ_ONLY', `volume "${this.name}" is open read-only`);
    if (this.leaseLost !== null) throw this.leaseLost;
  }

  private checkRange(offsetBytes: number, lengthBytes: number): void {
    this.checkOpen();
    if (!Number.isSafeInteger(offsetBytes) || !Number.isSafeInteger(lengthBytes) || offsetBytes < 0 || lengthBytes <= 0) {
      throw new StorageError('ERR_INVALID_ARGUMENT', `invalid range ${offsetBytes}+${lengthBytes}`);
    }
    if (offsetBytes + lengthBytes > this.info.sizeBytes) {
      throw new StorageError(
        'ERR_OUT_OF_RANGE',
        `range ${offsetBytes}+${lengthBytes} ends past the end of volume "${this.name}" (${this.info.sizeBytes} bytes)`,
      );
    }
  }

  /**
   * Renews the capability a third of the way through its life, so that an MDS away for a while
   * (restarting) does not stop I/O; a lost lease ends it (writes fail, as they must).
   */
  private scheduleCapabilityRenewal(delayMs?: number): void {
    if (this.closed) return;
    const { issuedAtMs, expiresAtMs } = this.grant.capability;
    const waitMs = delayMs ?? Math.max(CAPABILITY_RETRY_MS, Math.floor((expiresAtMs - issuedAtMs) * CAPABILITY_RENEW_AT));
    this.capabilityTimer = setTimeout(() => {
      const leaseId = this.lease === null ? undefined : this.lease.leaseId;
      this.options.mds.capability(this.name, leaseId).then((reply) => {
        this.grant = capabilityGrant(reply);
        this.scheduleCapabilityRenewal();
      }, (error: unknown) => {
        if (isStorageError(error, 'ERR_LEASE_EXPIRED') || isStorageError(error, 'ERR_UNAUTHORIZED')) {
          // The lease was taken, or this hypervisor's credential was revoked: nothing to renew.
          this.loseLease(error as StorageError);
          return;
        }
        this.options.log.warn('capability renewal failed; retrying', { volume: this.name, error });
        this.scheduleCapabilityRenewal(CAPABILITY_RETRY_MS);
      });
    }, waitMs);
    this.capabilityTimer.unref();
  }

  private startRenewing(): void {
    if (this.lease === null) return;
    const { leaseId, renewIntervalMs } = this.lease;
    this.renewTimer = setInterval(() => {
      this.options.mds.renewLease(this.name, leaseId).catch((error: unknown) => {
        if (isStorageError(error, 'ERR_LEASE_EXPIRED') || isStorageError(error, 'ERR_NOT_FOUND') || isStorageError(error, 'ERR_UNAUTHORIZED')) {
          this.leaseLost ??= error;
          this.options.log.error('write lease lost; writes will fail', { volume: this.name, message: error.message });
          if (this.renewTimer !== null) clearInterval(this.renewTimer);
        } else {
          this.options.log.warn('lease renewal failed; retrying', { volume: this.name, error });
        }
      });
    }, renewIntervalMs);
    this.renewTimer.unref();
  }
}

function isRetryable(error: unknown): boolean {
  return (
    error instanceof StorageError &&
    (error.code === 'ERR_UNAVAILABLE' ||
      error.code === 'ERR_TIMEOUT' ||
      error.code === 'ERR_CHECKSUM' ||
      error.code === 'ERR_IO' ||
      error.code === 'ERR_CHUNK_VERSION' ||
      error.code === 'ERR_CHUNK_NOT_FOUND' ||
      error.code === 'ERR_SHUTTING_DOWN')
  );
}
