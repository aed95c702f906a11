// A volume's I/O at the chunk servers: reads that fail over among a chunk's members (replicas on this
// host first, then a rotation so reads spread over the members), and changes (writes, zeroings) sent
// to the chunk's primary, which forwards them to the other members; members that fail a change are
// reported to the MDS, which settles the chunk under a new version, and the change is sent again.
// Every request goes through the connection pool under the volume's current capability.

import { networkInterfaces } from 'node:os';
import { StorageError, isStorageError } from '../errors.ts';
import type { ChunkMapEntry } from '../protocol/api.ts';
import { CS_OP, decodeExtents, type CsReply, type MutationFields, type ReplicaAddress } from '../protocol/cs_messages.ts';
import type { CsConnectionPool, CsRequestBody, CsResponse } from '../protocol/cs_connection.ts';
import type { MdsClient } from '../protocol/mds_client.ts';
import { assert } from '../util/assert.ts';
import type { Logger } from '../util/log.ts';
import type { Extent } from './block_device.ts';
import type { ChunkLocator } from './chunk_locator.ts';
import type { LeaseKeeper } from './lease.ts';
import type { Piece } from './ranges.ts';
import { changeRefusal, isRetryable, losesLease, retryLater, type Retrier } from './retry.ts';

export type ReplicaLocation = ChunkMapEntry['replicas'][number];

/** Addresses of this host: replicas listening on them are read first. */
export const LOCAL_HOSTS: ReadonlySet<string> = new Set<string>([
  'localhost',
  ...Object.values(networkInterfaces()).flatMap((addresses) => (addresses ?? []).map((address) => address.address)),
]);

/**
 * The order in which to try a chunk's members for a read: replicas on this host first (no
 * network hop), and among equals the members rotated by `rotation`, so successive reads spread
 * over the members instead of all landing on the primary. On this host means: named as this
 * host (`hostLabel`, the admin's word), then listening on one of this host's addresses. Replicas
 * on servers whose disks are ill (`avoid`) come last, wherever they are: they are read only when
 * no other member answers.
 */
export function readOrder<R extends { readonly csId: number; readonly host: string; readonly hostLabel?: string | undefined }>(
  replicas: readonly R[], rotation: number, localHosts: ReadonlySet<string>, hostLabel?: string, avoid?: ReadonlySet<number>): R[] {
  const rotated = replicas.map((_, index) => replicas[(rotation + index) % replicas.length]!);
  // Named as this host first; then listening on an address of this host (names that do not match,
  // say a full and a short host name, must not lose the locality the addresses show).
  const rank = (r: R): number => (avoid?.has(r.csId) === true ? 3 : hostLabel !== undefined && r.hostLabel === hostLabel ? 0 : localHosts.has(r.host) ? 1 : 2);
  return [0, 1, 2, 3].flatMap((wanted) => rotated.filter((r) => rank(r) === wanted));
}

export type ChangeOutcome =
  | { readonly kind: 'done' }
  /** These members failed the change (the primary itself when it could not be reached). */
  | { readonly kind: 'failed'; readonly failedCsIds: readonly number[]; readonly error: StorageError }
  /** The primary holds another version than ours: refresh, and if the map agrees with us, report. */
  | { readonly kind: 'stale'; readonly error: StorageError }
  | { readonly kind: 'fatal'; readonly error: StorageError };

/** Sorts a primary's reply to a change: done, retry after what, or give up. */
export function changeOutcome(primaryCsId: number, reply: Pick<CsReply, 'code' | 'message' | 'failedReplicas'>): ChangeOutcome {
  if (reply.code === undefined) return { kind: 'done' };
  const error = StorageError.fromWire(reply.code, `chunk server ${primaryCsId}: ${reply.message ?? ''}`);
  // A member that refused the change as fenced did not fail: this client's lease is gone.
  const fenced = reply.failedReplicas?.find((failure) => failure.code === 'ERR_LEASE_FENCED');
  if (fenced !== undefined) return { kind: 'fatal', error: new StorageError('ERR_LEASE_FENCED', `chunk server ${fenced.csId}: ${fenced.message}`) };
  if (reply.failedReplicas !== undefined && reply.failedReplicas.length > 0) {
    const detail = reply.failedReplicas.map((f) => `${f.csId}: ${f.code} ${f.message}`).join('; ');
    return { kind: 'failed', failedCsIds: reply.failedReplicas.map((failure) => failure.csId),
      error: new StorageError(error.code, `${error.message} [${detail}]`) };
  }
  const kind = changeRefusal(reply.code);
  return kind === 'failed' ? { kind, failedCsIds: [primaryCsId], error } : { kind, error };
}

/** A change's request header, as the wire carries it (its id is the connection's to add). */
export type ChangeFields = Omit<MutationFields, 'id'> & { readonly op: typeof CS_OP.WRITE | typeof CS_OP.ZERO };

/**
 * Per entry (entries are replaced, never changed): the ticket as bytes and the members after the
 * primary as forward targets. The map's members carry more (`hostLabel`) than a forward target
 * does; a header with those extra fields would not fit the binary layout and would go by msgpack,
 * encoded on the client and decoded on the primary for every write.
 */
const changeParts = new WeakMap<ChunkMapEntry, { readonly ticket: Buffer; readonly forward: readonly ReplicaAddress[] }>();

/** The header of a change to `entry`'s chunk, to be sent to its primary (the first member). */
export function changeFields(entry: ChunkMapEntry, op: ChangeFields['op'], volumeId: number, epoch: number, piece: Piece): ChangeFields {
  let parts = changeParts.get(entry);
  if (parts === undefined) {
    parts = {
      ticket: Buffer.from(entry.ticket, 'hex'),
      forward: entry.replicas.slice(1).map(({ csId, host, port }) => ({ csId, host, port })),
    };
    changeParts.set(entry, parts);
  }
  return {
    op, chunkId: entry.chunkId, version: entry.version, volumeId, epoch,
    offsetBytes: piece.offsetInChunk, lengthBytes: piece.lengthBytes, forward: parts.forward, ticket: parts.ticket,
  };
}

interface Target {
  readonly entry: ChunkMapEntry;
  readonly replica: ReplicaLocation;
}

export interface ReplicaIoOptions {
  readonly volumeName: string;
  readonly volumeId: number;
  readonly pool: CsConnectionPool;
  readonly mds: Pick<MdsClient, 'reportChunkFailure' | 'reportVolumeBadBlocks'>;
  readonly chunks: ChunkLocator;
  readonly lease: Pick<LeaseKeeper, 'grant' | 'epoch' | 'leaseId' | 'lose' | 'noteFenced'>;
  readonly retrier: Retrier;
  readonly log: Logger;
  /** This host, as chunk servers name theirs (--failure-domain-host): their replicas are read first. */
  readonly hostLabel?: string | undefined;
  /** Chunk servers whose disks are ill: read last, whatever their host. */
  readonly avoidServers?: ReadonlySet<number> | undefined;
}

export class ReplicaIo {
  private readonly options: ReplicaIoOptions;
  private readRotation = 0;

  constructor(options: ReplicaIoOptions) {
    this.options = options;
  }

  /** Reads a piece of an allocated chunk from one of its members. */
  async read(piece: Piece): Promise<Buffer> {
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

  /** Allocation of a piece of an allocated chunk, as one of its members knows it. */
  async blockStatus(piece: Piece): Promise<Extent[]> {
    const { payload } = await this.onReplica(piece.chunkIndex, (target) =>
      this.send(target, {
        op: CS_OP.BLOCK_STATUS,
        chunkId: target.entry.chunkId,
        version: target.entry.version,
        offsetBytes: piece.offsetInChunk,
        lengthBytes: piece.lengthBytes,
      }),
    );
    return decodeExtents(payload);
  }

  /**
   * Sends a change to the chunk's primary, which forwards it to the other members. When members
   * fail, they are reported to the MDS, which takes them out of the set under a new version and
   * makes the changed range equal on the members that stay; the change is then sent again. While
   * the chunk has fewer members than the volume's minimum, the change waits for recovery, up to
   * the I/O timeout, and then fails with ERR_IO: it is never acknowledged on fewer copies.
   */
  async change(piece: Piece, op: typeof CS_OP.WRITE | typeof CS_OP.ZERO, data: Buffer | undefined): Promise<void> {
    if (op === CS_OP.WRITE) await this.options.chunks.ensure(piece.chunkIndex);
    const { chunks, lease, retrier } = this.options;
    const deadline = retrier.deadline();
    await retrier.run(`${op === CS_OP.WRITE ? 'write to' : 'zeroing of'} chunk ${piece.chunkIndex}`, deadline, async () => {
      const entry = await chunks.writableEntry(piece.chunkIndex, deadline);
      const primary = entry.replicas[0];
      assert(primary !== undefined, 'a writable chunk has a primary replica');
      const outcome = await this.sendChange(primary, changeFields(entry, op, this.options.volumeId, lease.epoch, piece), data);
      if (outcome.kind === 'done') return undefined;
      if (outcome.kind === 'fatal') throw lease.noteFenced(outcome.error);
      let problem = outcome.error.message;
      const failedCsIds = outcome.kind === 'failed' ? [...outcome.failedCsIds] : [];
      if (outcome.kind === 'stale') {
        const before = entry.version;
        // An MDS that cannot be reached (restarting) is waited out like any other failure.
        try {
          await chunks.refresh(piece.chunkIndex);
        } catch (error) {
          return retryLater(error instanceof Error ? error.message : String(error));
        }
        if (((await chunks.entryOf(piece.chunkIndex))?.version ?? before) !== before) return retryLater(problem);
      }
      // Members failed, or a member disagrees with the map about the version: the MDS settles it.
      const updated = await this.options.mds.reportChunkFailure(this.options.volumeName, piece.chunkIndex, {
        leaseId: lease.leaseId(),
        version: entry.version,
        failedCsIds,
        offsetBytes: piece.offsetInChunk,
        lengthBytes: piece.lengthBytes,
        reason: outcome.error.message.slice(0, 2048),
      }).catch((error: unknown) => {
        if (losesLease('change', error)) throw lease.lose(error);
        problem = error instanceof Error ? error.message : String(error);
        return null;
      });
      if (updated !== null) chunks.set(updated);
      return retryLater(problem);
    });
  }

  /** Sends one change to the primary; a primary that cannot be reached is the member that failed. */
  private async sendChange(primary: ReplicaLocation, body: CsRequestBody, data: Buffer | undefined): Promise<ChangeOutcome> {
    let response: CsResponse;
    try {
      response = await this.options.pool.request(primary.host, primary.port, body, data, this.options.lease.grant);
    } catch (error) {
      const failure = error instanceof StorageError ? error : new StorageError('ERR_UNAVAILABLE', String(error));
      return { kind: 'failed', failedCsIds: [primary.csId], error: failure };
    }
    return changeOutcome(primary.csId, response.reply);
  }

  private async send(target: Target, body: CsRequestBody, payload?: Buffer): Promise<CsResponse> {
    const response = await this.options.pool.request(target.replica.host, target.replica.port, body, payload, this.options.lease.grant);
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
  private onReplica(
    chunkIndex: number,
    attempt: (target: Target) => Promise<CsResponse>,
    range?: { offsetBytes: number; lengthBytes: number },
  ): Promise<CsResponse> {
    const { chunks, retrier } = this.options;
    const deadline = retrier.deadline();
    return retrier.run(`read of chunk ${chunkIndex}`, deadline, async (round) => {
      if (round > 0) await chunks.refresh(chunkIndex).catch(() => undefined);
      const entry = await chunks.entryOf(chunkIndex, deadline);
      assert(entry !== undefined, 'reads of unallocated chunks never reach chunk servers');
      let problem = 'no member answered';
      for (const replica of readOrder(entry.replicas, this.nextRotation(), LOCAL_HOSTS, this.options.hostLabel, this.options.avoidServers)) {
        try {
          return await attempt({ entry, replica });
        } catch (error) {
          if (!isRetryable('replicaRead', error)) throw error;
          problem = error.message;
          if (isStorageError(error, 'ERR_CHECKSUM') && range !== undefined) this.reportBadBlocks(entry, replica.csId, range);
        }
      }
      return retryLater(problem);
    });
  }

  private nextRotation(): number {
    const rotation = this.readRotation;
    this.readRotation = (this.readRotation + 1) % 0x40000000;
    return rotation;
  }

  private reportBadBlocks(entry: ChunkMapEntry, csId: number, range: { offsetBytes: number; lengthBytes: number }): void {
    const { mds, volumeName, volumeId, log } = this.options;
    mds
      .reportVolumeBadBlocks(volumeName, { csId, volumeId, chunkIndex: entry.chunkIndex, chunkId: entry.chunkId, ...range })
      .catch((error: unknown) => log.warn('could not report bad blocks', { chunkId: entry.chunkId, csId, error }));
  }
}
