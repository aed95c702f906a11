// Changing a chunk's replica set without losing or mixing data. Every change ends in one op,
// `setChunkReplicas`, under a higher version; before it, the surviving members are *sealed*: moved
// to the new version on their servers, which waits for their in-flight writes and rejects writes
// still carrying the old version. So a replica that leaves can never be read or written again at
// the current version, and no two members hold different bytes at the same version:
//
// - drop: seal the survivors; if a failed write left a range in doubt (applied on some members,
//   not others), copy that range from one survivor to the rest while sealed; commit.
// - add: the target is filled from a member while writes go on (the member records which blocks
//   change meanwhile); then seal, copy the changed blocks, move the target to the new version and
//   commit. Writers wait only for that last step.
// - repair: blocks that fail their checksum on one member are replaced with a good member's.
//
// Procedures on one chunk run one at a time (a per-chunk lock); the bulk copy of `add` runs
// outside it, so a failing write never waits for a long copy. Time and I/O come in through the
// options, so the simulation tests run exactly this code.

import { StorageError } from '../errors.ts';
import { BLOCK_BYTES, CS_PAYLOAD_BYTES_MAX } from '../limits.ts';
import { assert } from '../util/assert.ts';
import type { Logger } from '../util/log.ts';
import type { ChunkRecord, MdsTables, VolumeRecord } from './model.ts';
import type { MdsOp, MdsOpResult } from './ops.ts';
import type { ReplicaIo } from './replica_io.ts';

/** The store as the replicator needs it: committed reads and durable ops. */
export interface StateStore {
  readonly tables: MdsTables;
  submit(op: MdsOp): Promise<MdsOpResult>;
}

export interface ReplicatorOptions {
  readonly store: StateStore;
  readonly io: ReplicaIo;
  readonly log: Logger;
  /** Online and not removed: worth asking. */
  readonly isUsable: (csId: number) => boolean;
  /** Waits until `bytes` more may be copied (the recovery rate limit). */
  readonly pace: (bytes: number) => Promise<void>;
  readonly copyStepBytes: number;
}

export interface InDoubtRange {
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

export class Replicator {
  private readonly options: ReplicatorOptions;
  private readonly locks = new Map<number, Promise<void>>();
  /** `chunkId:csId` of replicas being filled by `add`: never deleted from under it. */
  private readonly filling = new Set<string>();
  /** Bytes sent by copies since start, for metrics and the closing figures. */
  copiedBytesTotal = 0;

  constructor(options: ReplicatorOptions) {
    this.options = options;
  }

  isBusy(chunkId: number): boolean {
    return this.locks.has(chunkId);
  }

  isFilling(chunkId: number, csId: number): boolean {
    return this.filling.has(`${chunkId}:${csId}`);
  }

  /** Runs `work` once no other procedure holds the chunk. */
  async withChunk<T>(chunkId: number, work: () => Promise<T>): Promise<T> {
    for (let held = this.locks.get(chunkId); held !== undefined; held = this.locks.get(chunkId)) await held;
    let release!: () => void;
    this.locks.set(chunkId, new Promise<void>((resolve) => (release = resolve)));
    try {
      return await work();
    } finally {
      this.locks.delete(chunkId);
      release();
    }
  }

  /** Resolves once the chunk is not in the middle of a procedure (map reads wait for this). */
  async idle(chunkId: number): Promise<void> {
    for (let held = this.locks.get(chunkId); held !== undefined; held = this.locks.get(chunkId)) await held;
  }

  private chunk(volumeId: number, chunkIndex: number): ChunkRecord {
    const chunk = this.options.store.tables.getChunk(volumeId, chunkIndex);
    if (chunk === undefined) throw new StorageError('ERR_NOT_FOUND', `chunk ${chunkIndex} of volume ${volumeId} does not exist`);
    return chunk;
  }

  private volume(volumeId: number): VolumeRecord {
    const volume = this.options.store.tables.getVolume(volumeId);
    if (volume === undefined) throw new StorageError('ERR_NOT_FOUND', `volume ${volumeId} does not exist`);
    return volume;
  }

  /**
   * Removes `drop` from the chunk's members under a new version. `expectedVersion`: do nothing if
   * the chunk has moved past the version the caller saw (someone handled it already).
   */
  async drop(volumeId: number, chunkIndex: number, drop: readonly number[],
    options: { inDoubt?: InDoubtRange; expectedVersion?: number; reason: string }): Promise<ChunkRecord> {
    const chunkId = this.chunk(volumeId, chunkIndex).chunkId;
    return this.withChunk(chunkId, async () => {
      const chunk = this.chunk(volumeId, chunkIndex);
      const leaving = chunk.replicas.filter((csId) => drop.includes(csId));
      if ((options.expectedVersion !== undefined && chunk.version !== options.expectedVersion) || leaving.length === 0) {
        // Handled already (the set moved on). The failed change may still have landed on some
        // members and not others: make its range equal on the members there are now.
        if (options.inDoubt !== undefined) await this.reconcileMembers(chunk, options.inDoubt);
        return chunk;
      }
      const staying = chunk.replicas.filter((csId) => !drop.includes(csId));
      return this.sealAndCommit(chunk, staying, { ...options, leaving });
    });
  }

  /**
   * Seals `staying` at version + 1, reconciles the in-doubt range among them, commits. Members
   * that cannot be sealed leave too. With no member left reachable nothing changes and the
   * chunk is unavailable until one returns.
   */
  private async sealAndCommit(chunk: ChunkRecord, staying: readonly number[],
    options: { inDoubt?: InDoubtRange; leaving: readonly number[]; reason: string; joining?: number }): Promise<ChunkRecord> {
    const { log } = this.options;
    const version = chunk.version + 1;
    const sealed = await this.seal(chunk, staying, version);
    if (sealed.length === 0) {
      throw new StorageError('ERR_UNAVAILABLE', `chunk ${chunk.chunkId}: no member could be reached to continue at version ${version}`);
    }
    if (options.inDoubt !== undefined && sealed.length > 1) {
      const [source, ...others] = sealed;
      assert(source !== undefined, 'a sealed member to copy from');
      const unreconciled = await this.reconcile(chunk.chunkId, version, source, others, options.inDoubt);
      for (const csId of unreconciled) sealed.splice(sealed.indexOf(csId), 1);
    }
    const members = options.joining === undefined ? sealed : [...sealed, options.joining];
    const leaving = chunk.replicas.filter((csId) => !members.includes(csId));
    const result = await this.options.store.submit({
      type: 'setChunkReplicas', volumeId: chunk.volumeId, chunkIndex: chunk.chunkIndex, version, replicas: members,
      deleteFrom: leaving,
    });
    assert(result.type === 'chunk', 'setChunkReplicas yields a chunk');
    const volume = this.options.store.tables.getVolume(chunk.volumeId);
    if (volume !== undefined && members.length < volume.replicasMin) {
      log.error('chunk below its minimum replica count: writes wait for recovery', {
        chunkId: chunk.chunkId, members, min: volume.replicasMin, reason: options.reason,
      });
    }
    log.info('replica set changed', { chunkId: chunk.chunkId, version, members, leaving, reason: options.reason });
    return result.record;
  }

  /** Moves members to `version`; returns those that made it, in the order given. */
  private async seal(chunk: ChunkRecord, members: readonly number[], version: number): Promise<number[]> {
    const usable = members.filter((csId) => this.options.isUsable(csId));
    const results = await Promise.allSettled(
      usable.map((csId) => this.options.io.setVersion(csId, chunk.chunkId, version, chunk.version)),
    );
    const sealed: number[] = [];
    for (const [index, result] of results.entries()) {
      const csId = usable[index];
      assert(csId !== undefined, 'seal result index');
      if (result.status === 'fulfilled') sealed.push(csId);
      else this.options.log.warn('member could not be sealed; it leaves the set', { chunkId: chunk.chunkId, csId, error: result.reason });
    }
    return sealed;
  }

  /** Makes a range equal on a chunk's reachable members (copied from the first of them). */
  private async reconcileMembers(chunk: ChunkRecord, range: InDoubtRange): Promise<void> {
    const [source, ...others] = chunk.replicas.filter((csId) => this.options.isUsable(csId));
    if (source === undefined || others.length === 0) return;
    const failed = await this.reconcile(chunk.chunkId, chunk.version, source, others, range);
    if (failed.length > 0) this.options.log.warn('in-doubt range not reconciled on some members', { chunkId: chunk.chunkId, failed });
  }

  /** Copies an in-doubt range from `source` to `targets`; returns the targets that failed. */
  private async reconcile(chunkId: number, version: number, source: number, targets: readonly number[], range: InDoubtRange): Promise<number[]> {
    const failed: number[] = [];
    for (let offset = range.offsetBytes; offset < range.offsetBytes + range.lengthBytes; offset += CS_PAYLOAD_BYTES_MAX) {
      const lengthBytes = Math.min(CS_PAYLOAD_BYTES_MAX, range.offsetBytes + range.lengthBytes - offset);
      const bytes = await this.options.io.read(source, chunkId, version, offset, lengthBytes);
      for (const target of targets) {
        if (failed.includes(target)) continue;
        try {
          await this.options.io.fill(target, chunkId, offset, bytes);
        } catch (error) {
          this.options.log.warn('in-doubt range could not be reconciled; member leaves', { chunkId, target, error });
          failed.push(target);
        }
      }
    }
    return failed;
  }

  /**
   * Adds `target` as a member: bulk copy from a member (writes go on), then the sealed final step.
   * `onProgress` sees bytes copied so far.
   */
  async add(volumeId: number, chunkIndex: number, target: number, onProgress?: (bytes: number) => void): Promise<ChunkRecord> {
    const initial = this.chunk(volumeId, chunkIndex);
    if (initial.replicas.includes(target)) return initial;
    const key = `${initial.chunkId}:${target}`;
    assert(!this.filling.has(key), 'one fill of a replica at a time');
    this.filling.add(key);
    try {
      return await this.fill(volumeId, chunkIndex, target, initial, onProgress);
    } finally {
      this.filling.delete(key);
    }
  }

  private async fill(volumeId: number, chunkIndex: number, target: number, initial: ChunkRecord,
    onProgress: ((bytes: number) => void) | undefined): Promise<ChunkRecord> {
    const { io } = this.options;
    const volume = this.volume(volumeId);
    const source = this.sourceFor(initial, target);
    const identity = { chunkId: initial.chunkId, volumeId, chunkIndex, sizeBytes: volume.chunkSizeBytes };
    await io.createChunk(target, identity, 0);
    await io.trackChanges(source, initial.chunkId);
    let copied = 0;
    for (let offset = 0; offset < volume.chunkSizeBytes; offset += this.options.copyStepBytes) {
      const lengthBytes = Math.min(this.options.copyStepBytes, volume.chunkSizeBytes - offset);
      await this.options.pace(lengthBytes);
      const current = this.chunk(volumeId, chunkIndex);
      if (!current.replicas.includes(source)) {
        throw new StorageError('ERR_UNAVAILABLE', `chunk ${initial.chunkId}: copy source ${source} left the set`);
      }
      copied += await io.copyRange(source, initial.chunkId, current.version, offset, lengthBytes, false, target);
      this.copiedBytesTotal += lengthBytes;
      onProgress?.(copied);
    }
    return this.withChunk(initial.chunkId, async () => {
      const chunk = this.chunk(volumeId, chunkIndex);
      if (chunk.replicas.includes(target)) return chunk;
      const version = chunk.version + 1;
      const sealed = await this.seal(chunk, chunk.replicas, version);
      if (!sealed.includes(source) || sealed.length === 0) {
        // The seal is the point of no return: commit it even though the target cannot join.
        return this.commitSealed(chunk, sealed, version, 'add aborted: copy source lost while sealing');
      }
      try {
        const changed = await io.copyRange(source, chunk.chunkId, version, 0, volume.chunkSizeBytes, true, target);
        this.copiedBytesTotal += changed;
        await io.setVersion(target, chunk.chunkId, version);
      } catch (error) {
        await this.commitSealed(chunk, sealed, version, 'add aborted: final copy failed');
        throw error;
      }
      return this.commitSealed(chunk, [...sealed, target], version, 'replica added');
    });
  }

  private async commitSealed(chunk: ChunkRecord, members: readonly number[], version: number, reason: string): Promise<ChunkRecord> {
    if (members.length === 0) throw new StorageError('ERR_UNAVAILABLE', `chunk ${chunk.chunkId}: ${reason}; no member reachable`);
    const leaving = chunk.replicas.filter((csId) => !members.includes(csId));
    const result = await this.options.store.submit({
      type: 'setChunkReplicas', volumeId: chunk.volumeId, chunkIndex: chunk.chunkIndex, version, replicas: [...members],
      deleteFrom: leaving,
    });
    assert(result.type === 'chunk', 'setChunkReplicas yields a chunk');
    this.options.log.info('replica set changed', { chunkId: chunk.chunkId, version, members, leaving, reason });
    return result.record;
  }

  private sourceFor(chunk: ChunkRecord, target: number): number {
    const source = chunk.replicas.find((csId) => csId !== target && this.options.isUsable(csId));
    if (source === undefined) throw new StorageError('ERR_UNAVAILABLE', `chunk ${chunk.chunkId}: no reachable member to copy from`);
    return source;
  }

  /**
   * Replaces the blocks of a range that fail their checksum on `bad` with a good member's bytes.
   * Resolves with the number of blocks replaced.
   */
  async repair(volumeId: number, chunkIndex: number, bad: number, offsetBytes: number, lengthBytes: number): Promise<number> {
    const chunkId = this.chunk(volumeId, chunkIndex).chunkId;
    return this.withChunk(chunkId, async () => {
      const chunk = this.chunk(volumeId, chunkIndex);
      if (!chunk.replicas.includes(bad)) return 0;
      const start = Math.floor(offsetBytes / BLOCK_BYTES) * BLOCK_BYTES;
      const end = Math.ceil((offsetBytes + lengthBytes) / BLOCK_BYTES) * BLOCK_BYTES;
      let repaired = 0;
      for (let offset = start; offset < end; offset += CS_PAYLOAD_BYTES_MAX) {
        const pieceBytes = Math.min(CS_PAYLOAD_BYTES_MAX, end - offset);
        const good = await this.readFromGoodMember(chunk, bad, offset, pieceBytes);
        repaired += await this.options.io.repair(bad, chunk.chunkId, chunk.version, offset, good);
      }
      return repaired;
    });
  }

  private async readFromGoodMember(chunk: ChunkRecord, bad: number, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    let lastError: unknown = new StorageError('ERR_UNAVAILABLE', `chunk ${chunk.chunkId}: no other member to repair from`);
    for (const csId of chunk.replicas) {
      if (csId === bad || !this.options.isUsable(csId)) continue;
      try {
        return await this.options.io.read(csId, chunk.chunkId, chunk.version, offsetBytes, lengthBytes);
      } catch (error) {
        lastError = error;
      }
    }
    throw lastError;
  }

  /**
   * Brings the map and the members' versions back in line after an MDS crash between a seal and
   * its commit: if any member reports another version than the map, all reachable members move to
   * a version above every one seen, and that is committed.
   */
  async reconcileVersion(volumeId: number, chunkIndex: number): Promise<ChunkRecord> {
    const chunkId = this.chunk(volumeId, chunkIndex).chunkId;
    return this.withChunk(chunkId, async () => {
      const chunk = this.chunk(volumeId, chunkIndex);
      const usable = chunk.replicas.filter((csId) => this.options.isUsable(csId));
      const versions = await Promise.all(usable.map((csId) => this.options.io.chunkVersion(csId, chunkId).catch(() => null)));
      if (versions.every((version) => version === chunk.version)) return chunk;
      const highest = Math.max(chunk.version, ...versions.map((v) => v ?? 0));
      const version = highest + 1;
      const sealed: number[] = [];
      for (const [index, csId] of usable.entries()) {
        if (versions[index] === null) continue;
        try {
          await this.options.io.setVersion(csId, chunkId, version);
          sealed.push(csId);
        } catch (error) {
          this.options.log.warn('member could not be moved to the reconciled version', { chunkId, csId, error });
        }
      }
      return this.commitSealed(chunk, sealed, version, `versions reconciled (members reported ${versions.join(', ')})`);
    });
  }
}
