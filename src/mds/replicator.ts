// Changing a chunk's replica set without losing or mixing data. Every change ends in one op,
// `setChunkReplicas`, under a higher version; before it, the members that stay are *sealed*: moved
// to the new version on their servers, which waits for their in-flight writes and rejects writes
// still carrying the old version. So a replica that leaves can never be read or written again at
// the current version, and the members that stay hold the same bytes:
//
// - drop: seal the members that stay, make them equal while sealed (a failed write may have left
//   blocks applied on some members, not others), commit.
// - add: the target is filled from a member while writes go on (the member records which blocks
//   change meanwhile); then seal, settle, copy the changed blocks, move the target to the new
//   version and commit. Writers wait only for that last step.
// - settle: seal every member and make them equal (used when an earlier procedure could read no
//   member and left ranges recorded on the chunk, and when a server returns: it may have died in
//   the middle of forwarding a write, with its writer).
//
// "Make equal" compares the members' per-block checksums over the whole chunk and copies only the
// blocks that differ from the first member that can be read (members a caller prefers as the
// source are tried first: those that refused a fenced writer's change hold the bytes as they were). Every version change goes through it,
// so members at one version never hold different bytes, whoever died mid-write and whatever was
// reported: an unacknowledged write ends up wholly on every member or on none.
// - repair: blocks that fail their checksum on one member are replaced with a good member's.
//
// Once members are sealed there is no way back: whatever fails afterwards, the new version is
// committed with the members that made it, and ranges that could not be settled stay recorded.
// Procedures on one chunk run one at a time (a per-chunk lock); the bulk copy of `add` runs
// outside it, so a failing write never waits for a long copy. Time and I/O come in through the
// options, so the simulation tests run exactly this code.

import { StorageError } from '../errors.ts';
import { BLOCK_BYTES, CS_PAYLOAD_BYTES_MAX } from '../limits.ts';
import { BLOCK_SUMS_BYTES_MAX } from '../protocol/cs_messages.ts';
import { assert } from '../util/assert.ts';
import type { Logger } from '../util/log.ts';
import { describeVolume, type ChunkRecord, type InDoubtRange, type MdsTables, type VolumeRecord } from './model.ts';
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

export type { InDoubtRange };

export class Replicator {
  private readonly options: ReplicatorOptions;
  private readonly locks = new Map<number, Promise<void>>();
  /**
   * The add in progress per chunk: adds of one chunk run one after the other. Each add asks its
   * source to track changes from the start of its bulk copy; a second add's request would reset
   * the source's change map under the first, whose final step would then miss writes made in
   * between and commit a member without them.
   */
  private readonly adding = new Map<number, Promise<unknown>>();
  /** `chunkId:csId` of replicas being filled by `add`: never deleted from under it. */
  private readonly filling = new Set<string>();
  /** Bytes sent by copies since start, for metrics and the closing figures. */
  copiedBytesTotal = 0;
  /** Bytes copied between sealed members because their checksums differed. */
  settledBytesTotal = 0;
  /** Set at shutdown: bulk copies stop between steps (never after a seal: that one commits). */
  private stopping = false;

  constructor(options: ReplicatorOptions) {
    this.options = options;
  }

  /** Stops bulk copies at their next step, so that a shutdown does not wait for whole chunks. */
  stop(): void {
    this.stopping = true;
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
   * Removes `drop` from the chunk's members under a new version. `expectedVersion`: if the chunk
   * has moved past the version the caller saw, the set is left alone (someone handled it) and only
   * the in-doubt range is made equal on the members there are now. `preferredSources`: members
   * to copy from first when making the others equal (members that refused a fenced change).
   */
  async drop(volumeId: number, chunkIndex: number, drop: readonly number[],
    options: {
      inDoubt?: InDoubtRange; expectedVersion?: number; preferredSources?: readonly number[]; reason: string;
      /** The drop completes a move for this rebalance task: counted in its commit. */
      countForTaskId?: number;
    }): Promise<ChunkRecord> {
    const chunkId = this.chunk(volumeId, chunkIndex).chunkId;
    const preferred = options.preferredSources ?? [];
    return this.withChunk(chunkId, async () => {
      const chunk = this.chunk(volumeId, chunkIndex);
      const leaving = chunk.replicas.filter((csId) => drop.includes(csId));
      // The version moved on: the seal that moved it made the members equal, this range included.
      if (options.expectedVersion !== undefined && chunk.version !== options.expectedVersion) return chunk;
      if (leaving.length === 0) {
        if (options.inDoubt === undefined) return chunk;
        return this.sealAndCommit(chunk, chunk.replicas, [options.inDoubt], options.reason, preferred);
      }
      const staying = chunk.replicas.filter((csId) => !drop.includes(csId));
      return this.sealAndCommit(chunk, staying, options.inDoubt === undefined ? [] : [options.inDoubt], options.reason, preferred, options.countForTaskId);
    });
  }

  /**
   * Makes member `csId` the chunk's primary (its writes' first hop), the others keeping their
   * order: the members are sealed at a new version and made equal, as for any change of the set.
   */
  async promote(volumeId: number, chunkIndex: number, csId: number, reason: string): Promise<ChunkRecord> {
    const chunkId = this.chunk(volumeId, chunkIndex).chunkId;
    return this.withChunk(chunkId, async () => {
      const chunk = this.chunk(volumeId, chunkIndex);
      if (chunk.replicas[0] === csId || !chunk.replicas.includes(csId)) return chunk;
      return this.sealAndCommit(chunk, [csId, ...chunk.replicas.filter((member) => member !== csId)], [], reason);
    });
  }

  /** Seals every member and settles the chunk's recorded in-doubt ranges. */
  async settle(volumeId: number, chunkIndex: number): Promise<ChunkRecord> {
    const chunkId = this.chunk(volumeId, chunkIndex).chunkId;
    return this.withChunk(chunkId, async () => {
      const chunk = this.chunk(volumeId, chunkIndex);
      if ((chunk.inDoubt ?? []).length === 0) return chunk;
      return this.sealAndCommit(chunk, chunk.replicas, [], 'settling ranges left in doubt by a failed write');
    });
  }

  /**
   * Seals `staying` at version + 1, makes the sealed members equal, and commits. Members that cannot
   * be sealed or made equal leave. When none can be sealed, the set stays as it is, `extra` (ranges
   * a failed write left in doubt) is recorded on the chunk, and ERR_UNAVAILABLE is thrown.
   */
  private async sealAndCommit(chunk: ChunkRecord, staying: readonly number[], extra: readonly InDoubtRange[],
    reason: string, preferredSources: readonly number[] = [], countForTaskId?: number): Promise<ChunkRecord> {
    const version = chunk.version + 1;
    const sealed = await this.seal(chunk, staying, version);
    if (sealed.length === 0) {
      if (extra.length > 0) {
        await this.options.store.submit({ type: 'markInDoubt', volumeId: chunk.volumeId, chunkIndex: chunk.chunkIndex, ranges: extra });
      }
      throw new StorageError('ERR_UNAVAILABLE', `chunk ${chunk.chunkId}: no member could be reached to continue at version ${version}`);
    }
    const { members, unsettled } = await this.makeEqual(chunk, version, sealed, preferredSources);
    return this.commit(chunk, members, version, unsettled, reason, countForTaskId);
  }

  /** Moves members to `version`; returns those that made it, in the order given. */
  private async seal(chunk: ChunkRecord, members: readonly number[], version: number): Promise<number[]> {
    // Every member is asked, whatever the MDS believes of its liveness: a writer may just have
    // reached one the MDS has not heard from, and only a seal fences it properly.
    const results = await Promise.allSettled(
      members.map((csId) => this.options.io.setVersion(csId, chunk.chunkId, version, chunk.version)),
    );
    const sealed: number[] = [];
    for (const [index, result] of results.entries()) {
      const csId = members[index];
      assert(csId !== undefined, 'seal result index');
      if (result.status === 'fulfilled') sealed.push(csId);
      else this.options.log.warn('member could not be sealed; it leaves the set', { chunkId: chunk.chunkId, csId, error: result.reason });
    }
    return sealed;
  }

  /**
   * Makes the sealed members equal over the whole chunk, copying from the first of
   * `preferredSources` that can be read, else from the first member that can. Members that
   * cannot be compared or written leave; if no member can be read, the whole chunk stays recorded
   * in doubt.
   */
  private async makeEqual(chunk: ChunkRecord, version: number, members: readonly number[],
    preferredSources: readonly number[] = []): Promise<{ members: number[]; unsettled: InDoubtRange[] }> {
    const whole: InDoubtRange = { offsetBytes: 0, lengthBytes: this.volume(chunk.volumeId).chunkSizeBytes };
    if (members.length < 2) return { members: [...members], unsettled: [] };
    const equal = await this.settleRange(chunk.chunkId, version, members, whole, preferredSources);
    return equal === null ? { members: [...members], unsettled: [whole] } : { members: equal, unsettled: [] };
  }

  /**
   * Makes `range` equal on `members` (sealed at `version`): compares block checksums with the first
   * member that can be read (members in `preferredSources` tried first) and copies it the blocks
   * that differ. Returns the members that hold the range equal now, in their given order (a member
   * that cannot be compared or written leaves), or null if no member could be read.
   */
  private async settleRange(chunkId: number, version: number, members: readonly number[], range: InDoubtRange,
    preferredSources: readonly number[] = []): Promise<number[] | null> {
    const { io, log } = this.options;
    const start = Math.floor(range.offsetBytes / BLOCK_BYTES) * BLOCK_BYTES;
    const end = Math.ceil((range.offsetBytes + range.lengthBytes) / BLOCK_BYTES) * BLOCK_BYTES;
    // The order of trying sources only: the member list committed keeps its order (the primary first).
    const sources = [...members.filter((csId) => preferredSources.includes(csId)), ...members.filter((csId) => !preferredSources.includes(csId))];
    for (const source of sources) {
      const left = new Set<number>();
      try {
        for (let offset = start; offset < end; offset += BLOCK_SUMS_BYTES_MAX) {
          const stepBytes = Math.min(BLOCK_SUMS_BYTES_MAX, end - offset);
          const sourceSums = await io.blockSums(source, chunkId, version, offset, stepBytes);
          for (const target of members) {
            if (target === source || left.has(target)) continue;
            let targetSums: Buffer;
            try {
              targetSums = await io.blockSums(target, chunkId, version, offset, stepBytes);
            } catch (error) {
              log.warn('member could not be compared; it leaves the set', { chunkId, target, error });
              left.add(target);
              continue;
            }
            for (const [runOffset, runBytes] of differingRuns(sourceSums, targetSums, offset)) {
              if (left.has(target)) break;
              for (let piece = runOffset; piece < runOffset + runBytes; piece += CS_PAYLOAD_BYTES_MAX) {
                const pieceBytes = Math.min(CS_PAYLOAD_BYTES_MAX, runOffset + runBytes - piece);
                // A failed read of the source goes to the outer catch: the next member becomes the source.
                const bytes = await io.read(source, chunkId, version, piece, pieceBytes);
                const filled = await io.fill(target, chunkId, piece, bytes).then(() => true, (error: unknown) => {
                  log.warn('differing blocks could not be written on a member; it leaves the set', { chunkId, target, error });
                  return false;
                });
                if (!filled) {
                  left.add(target);
                  break;
                }
                this.settledBytesTotal += pieceBytes;
              }
            }
          }
        }
      } catch (error) {
        log.warn('member could not be read to make the others equal; trying another', { chunkId, source, error });
        continue;
      }
      return members.filter((csId) => !left.has(csId));
    }
    return null;
  }

  private async commit(chunk: ChunkRecord, members: readonly number[], version: number, inDoubt: readonly InDoubtRange[],
    reason: string, countForTaskId?: number): Promise<ChunkRecord> {
    assert(members.length > 0, 'a commit keeps at least one member');
    const leaving = chunk.replicas.filter((csId) => !members.includes(csId));
    const result = await this.options.store.submit({
      type: 'setChunkReplicas', volumeId: chunk.volumeId, chunkIndex: chunk.chunkIndex, version, replicas: [...members],
      deleteFrom: leaving, inDoubt, ...(countForTaskId === undefined ? {} : { countForTaskId }),
    });
    assert(result.type === 'chunk', 'setChunkReplicas yields a chunk');
    const volume = this.options.store.tables.getVolume(chunk.volumeId);
    if (volume !== undefined && members.length < volume.replicasMin) {
      this.options.log.error('chunk below its minimum replica count: writes wait for recovery', {
        chunkId: chunk.chunkId, members, min: volume.replicasMin, reason,
      });
    }
    this.options.log.info('replica set changed', { chunkId: chunk.chunkId, version, members, leaving, inDoubt: inDoubt.length, reason });
    return result.record;
  }

  /**
   * Adds `target` as a member: bulk copy from a member (writes go on), then the sealed final step.
   * `onProgress` sees bytes copied so far.
   */
  async add(volumeId: number, chunkIndex: number, target: number, onProgress?: (bytes: number) => void): Promise<ChunkRecord> {
    const chunkId = this.chunk(volumeId, chunkIndex).chunkId;
    for (let held = this.adding.get(chunkId); held !== undefined; held = this.adding.get(chunkId)) {
      await held.catch(() => undefined); // that add's failure is its caller's to handle
    }
    const adding = this.addNow(volumeId, chunkIndex, target, onProgress);
    this.adding.set(chunkId, adding);
    try {
      return await adding;
    } finally {
      if (this.adding.get(chunkId) === adding) this.adding.delete(chunkId);
    }
  }

  private async addNow(volumeId: number, chunkIndex: number, target: number, onProgress: ((bytes: number) => void) | undefined): Promise<ChunkRecord> {
    const initial = this.chunk(volumeId, chunkIndex);
    if (initial.replicas.includes(target)) return initial;
    const key = `${initial.chunkId}:${target}`;
    assert(!this.filling.has(key), 'one fill of a replica at a time');
    this.filling.add(key);
    try {
      const source = await this.bulkCopy(volumeId, chunkIndex, target, initial, onProgress);
      return await this.withChunk(initial.chunkId, () => this.join(volumeId, chunkIndex, target, source));
    } finally {
      this.filling.delete(key);
    }
  }

  /**
   * Copies the chunk from a member to the target while writes go on; returns the source. A target
   * that still holds an older copy (it left the set, or was away) gets only the blocks whose
   * checksums differ from the source's: a server back from a restart catches up by what changed.
   */
  private async bulkCopy(volumeId: number, chunkIndex: number, target: number, initial: ChunkRecord,
    onProgress: ((bytes: number) => void) | undefined): Promise<number> {
    const { io } = this.options;
    const volume = this.volume(volumeId);
    const source = initial.replicas.find((csId) => csId !== target && this.options.isUsable(csId));
    if (source === undefined) throw new StorageError('ERR_UNAVAILABLE', `chunk ${initial.chunkId}: no reachable member to copy from`);
    let heldVersion = await io.chunkVersion(target, initial.chunkId);
    if (heldVersion !== null && heldVersion > initial.version) {
      // Never overwrite a copy newer than the map while it is quarantined: it may be the only one
      // of acknowledged data. Once an admin has let it go, it is replaced like any other.
      if (this.options.store.tables.getQuarantined(initial.chunkId, target) !== undefined) {
        throw new StorageError('ERR_CONFLICT', `chunk ${initial.chunkId}: server ${target} holds a quarantined copy at version ${heldVersion}, newer than the map's ${initial.version}`);
      }
      await io.deleteChunk(target, initial.chunkId);
      heldVersion = null;
    }
    if (heldVersion !== null && heldVersion < initial.version) {
      // Fence the older copy first: a write sent to it before it left (a forward that timed out at
      // the primary but still waits in its queue) is taken only at the version it names, and would
      // otherwise land after its block was compared here, bringing back bytes the members have
      // overwritten since. The seal takes the whole chunk's block lock, so nothing lands after it.
      await io.setVersion(target, initial.chunkId, initial.version, heldVersion);
      heldVersion = initial.version;
    }
    if (heldVersion === null) {
      await io.createChunk(target, { chunkId: initial.chunkId, volumeId, chunkIndex, sizeBytes: volume.chunkSizeBytes, volume: describeVolume(volume) }, 0);
    }
    await io.trackChanges(source, initial.chunkId);
    let copied = 0;
    for (let offset = 0; offset < volume.chunkSizeBytes; offset += this.options.copyStepBytes) {
      if (this.stopping) throw new StorageError('ERR_SHUTTING_DOWN', `chunk ${initial.chunkId}: copy stopped, the MDS is stopping`);
      const lengthBytes = Math.min(this.options.copyStepBytes, volume.chunkSizeBytes - offset);
      const current = this.chunk(volumeId, chunkIndex);
      if (!current.replicas.includes(source)) {
        throw new StorageError('ERR_UNAVAILABLE', `chunk ${initial.chunkId}: copy source ${source} left the set`);
      }
      const runs = heldVersion === null
        ? [[offset, lengthBytes] as [number, number]]
        : differingRuns(
          await io.blockSums(source, initial.chunkId, current.version, offset, lengthBytes),
          await io.blockSums(target, initial.chunkId, heldVersion, offset, lengthBytes),
          offset,
        );
      for (const [runOffset, runBytes] of runs) {
        await this.options.pace(runBytes);
        const sent = await io.copyRange(source, initial.chunkId, current.version, runOffset, runBytes, false, target);
        copied += sent;
        this.copiedBytesTotal += sent;
      }
      onProgress?.(offset + lengthBytes);
    }
    if (heldVersion !== null) this.options.log.info('older copy brought up to date', { chunkId: initial.chunkId, target, copiedBytes: copied });
    return source;
  }

  /** The final step of `add`, under the chunk lock: seal, settle, copy what changed, commit. */
  private async join(volumeId: number, chunkIndex: number, target: number, source: number): Promise<ChunkRecord> {
    const { io } = this.options;
    const chunk = this.chunk(volumeId, chunkIndex);
    if (chunk.replicas.includes(target)) return chunk;
    const version = chunk.version + 1;
    const sealed = await this.seal(chunk, chunk.replicas, version);
    if (sealed.length === 0) {
      throw new StorageError('ERR_UNAVAILABLE', `chunk ${chunk.chunkId}: no member could be sealed to add a replica`);
    }
    // The seal is the point of no return: from here on, the new version is committed.
    const { members, unsettled } = await this.makeEqual(chunk, version, sealed);
    if (!members.includes(source) || unsettled.length > 0) {
      return this.commit(chunk, members, version, unsettled, 'add aborted: copy source lost, or ranges still in doubt');
    }
    try {
      const volume = this.volume(volumeId);
      const changed = await io.copyRange(source, chunk.chunkId, version, 0, volume.chunkSizeBytes, true, target);
      this.copiedBytesTotal += changed;
      await io.setVersion(target, chunk.chunkId, version);
    } catch (error) {
      await this.commit(chunk, members, version, [], 'add aborted: final copy failed');
      throw error;
    }
    return this.commit(chunk, [...members, target], version, [], 'replica added');
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
      const versions = await Promise.all(chunk.replicas.map((csId) => this.options.io.chunkVersion(csId, chunkId).catch(() => null)));
      if (versions.every((version) => version === chunk.version)) return chunk;
      const version = Math.max(chunk.version, ...versions.map((v) => v ?? 0)) + 1;
      const sealed: number[] = [];
      for (const [index, csId] of chunk.replicas.entries()) {
        if (versions[index] === null) continue;
        try {
          await this.options.io.setVersion(csId, chunkId, version);
          sealed.push(csId);
        } catch (error) {
          this.options.log.warn('member could not be moved to the reconciled version', { chunkId, csId, error });
        }
      }
      if (sealed.length === 0) throw new StorageError('ERR_UNAVAILABLE', `chunk ${chunkId}: no member reachable to reconcile versions`);
      // The member that went furthest holds the newest acknowledged data: it is the one the others
      // are made equal to (makeEqual copies from the first member it can read).
      const versionOf = (csId: number): number => versions[chunk.replicas.indexOf(csId)] ?? 0;
      sealed.sort((a, b) => versionOf(b) - versionOf(a));
      const { members, unsettled } = await this.makeEqual(chunk, version, sealed);
      return this.commit(chunk, members, version, unsettled, `versions reconciled (members reported ${versions.join(', ')})`);
    });
  }
}

/** Runs of blocks, as [offsetBytes, lengthBytes], whose sums (u32 each, from `offsetBytes`) differ. */
function differingRuns(a: Buffer, b: Buffer, offsetBytes: number): Array<[number, number]> {
  assert(a.length === b.length && a.length % 4 === 0, 'block sums of one range have one length');
  const runs: Array<[number, number]> = [];
  for (let index = 0; index < a.length / 4; index += 1) {
    if (a.readUInt32LE(index * 4) === b.readUInt32LE(index * 4)) continue;
    const blockOffset = offsetBytes + index * BLOCK_BYTES;
    const previous = runs.at(-1);
    if (previous !== undefined && previous[0] + previous[1] === blockOffset) previous[1] += BLOCK_BYTES;
    else runs.push([blockOffset, BLOCK_BYTES]);
  }
  return runs;
}
