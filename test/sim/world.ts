// A simulated cluster for the recovery logic: chunk servers are maps of replicas (a version and a
// value per block), the MDS is the real state machine on in-memory tables, and the real replicator
// and planner act on it through SimReplicaIo. Everything is driven by one seeded random source,
// so a failing seed replays exactly.
//
// Faults: servers crash and return (their replicas kept, now possibly stale), requests fail when
// their server is down, a server may crash in the middle of a procedure (before any I/O call), and
// the MDS's view of which servers are up lags behind the truth.

import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { StorageError } from '../../src/errors.ts';
import { MemoryTables } from '../../src/mds/memory_tables.ts';
import type { ChunkRecord } from '../../src/mds/model.ts';
import type { MdsOp, MdsOpResult } from '../../src/mds/ops.ts';
import { chooseReplicas } from '../../src/mds/placement.ts';
import { planRecovery, type PlannerChunk, type PlannerServer, type RecoveryAction } from '../../src/mds/recovery.ts';
import type { ChunkIdentity, ReplicaIo } from '../../src/mds/replica_io.ts';
import type { ChunkListEntry, VolumeListEntry } from '../../src/protocol/cs_messages.ts';
import { Replicator } from '../../src/mds/replicator.ts';
import type { Logger } from '../../src/util/log.ts';

export const BLOCK = 4096;
export const BLOCKS_PER_CHUNK = 16;
export const CHUNK_BYTES = BLOCKS_PER_CHUNK * BLOCK;

export interface SimReplica {
  version: number;
  readonly blocks: Map<number, number>;
  changes: Set<number> | null;
}

export interface SimServer {
  readonly id: number;
  online: boolean;
  offlineSinceMs: number;
  readonly replicas: Map<number, SimReplica>;
}

const silent: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

function unavailable(csId: number): StorageError {
  return new StorageError('ERR_UNAVAILABLE', `sim server ${csId} is down`);
}

export class SimWorld {
  readonly random: () => number;
  readonly tables = new MemoryTables();
  readonly servers: SimServer[] = [];
  readonly replicator: Replicator;
  readonly volumeId: number;
  nowMs = 0;
  /** What the MDS believes is up: refreshed from the truth now and then (heartbeats lag). */
  private readonly mdsView = new Map<number, boolean>();
  /** Chance that an I/O call first crashes a random server (a crash mid-procedure). */
  crashDuringIoChance = 0;
  private nextChunkId = 1;

  /** `pace`: what the replicator awaits before each copy (default: nothing; a test may yield there to let writes in). */
  constructor(random: () => number, serverCount: number, options: { pace?: (bytes: number) => Promise<void> } = {}) {
    this.random = random;
    for (let id = 1; id <= serverCount; id += 1) {
      this.tables.submit({
        type: 'registerChunkServer', uuid: `00000000-0000-0000-0000-${String(id).padStart(12, '0')}`, host: '127.0.0.1',
        port: 1000 + id, metricsPort: 0, failureDomainHost: `h${id}`, rack: 'r', tier: 0, nowMs: 0,
      });
      this.servers.push({ id, online: true, offlineSinceMs: 0, replicas: new Map() });
      this.mdsView.set(id, true);
    }
    const volume = this.tables.submit({
      type: 'createVolume', name: 'sim', sizeBytes: 64 * CHUNK_BYTES, chunkSizeBytes: CHUNK_BYTES, replicasNormal: 3, replicasMin: 2, nowMs: 0,
    });
    if (volume.type !== 'volume') throw new Error('volume expected');
    this.volumeId = volume.record.id;
    this.tables.submit({ type: 'reserveChunkIds', count: 1_000_000 });
    const store = { tables: this.tables, submit: async (op: MdsOp): Promise<MdsOpResult> => this.tables.submit(op) };
    this.replicator = new Replicator({
      store, io: new SimReplicaIo(this), log: silent, isUsable: (csId) => this.mdsView.get(csId) === true,
      pace: options.pace ?? (async () => undefined), copyStepBytes: CHUNK_BYTES / 2,
    });
  }

  server(csId: number): SimServer {
    const server = this.servers[csId - 1];
    if (server === undefined) throw new Error(`no sim server ${csId}`);
    return server;
  }

  /**
   * For every member of chunk `chunkIndex` and every acknowledged write (block -> value), a line
   * `server S block B: holds X, acknowledged Y` where the member does not hold it.
   */
  missingAcknowledged(chunkIndex: number, acknowledged: ReadonlyMap<number, number>): string[] {
    const chunk = this.tables.getChunk(this.volumeId, chunkIndex);
    if (chunk === undefined) throw new Error(`sim chunk ${chunkIndex} was never allocated`);
    const missing: string[] = [];
    for (const csId of chunk.replicas) {
      const replica = this.server(csId).replicas.get(chunk.chunkId);
      for (const [block, value] of acknowledged) {
        const held = replica?.blocks.get(block) ?? 0;
        if (held !== value) missing.push(`server ${csId} block ${block}: holds ${held}, acknowledged ${value}`);
      }
    }
    return missing;
  }

  /** The MDS catches up with the truth (a heartbeat round). */
  refreshMdsView(): void {
    for (const server of this.servers) this.mdsView.set(server.id, server.online);
  }

  crash(csId: number): void {
    const server = this.server(csId);
    if (!server.online) return;
    server.online = false;
    server.offlineSinceMs = this.nowMs;
    for (const replica of server.replicas.values()) replica.changes = null; // memory is lost
  }

  /** Back up; it registers again, and the MDS puts its chunks in doubt (cluster.ts does the same). */
  revive(csId: number): void {
    const server = this.server(csId);
    if (server.online) return;
    server.online = true;
    this.tables.submit({ type: 'markServerChunksInDoubt', csId });
  }

  /** Called by SimReplicaIo before each request: maybe a crash, then the target must be up. */
  beforeIo(csId: number): SimServer {
    if (this.crashDuringIoChance > 0 && this.random() < this.crashDuringIoChance) {
      const up = this.servers.filter((s) => s.online);
      const victim = up[Math.floor(this.random() * up.length)];
      if (victim !== undefined && up.length > 1) this.crash(victim.id);
    }
    const server = this.server(csId);
    if (!server.online) throw unavailable(csId);
    return server;
  }

  /** Allocation as the MDS does it: place, create on each server, record (fewer if some fail). */
  async allocate(chunkIndex: number): Promise<ChunkRecord | null> {
    const existing = this.tables.getChunk(this.volumeId, chunkIndex);
    if (existing !== undefined) return existing;
    const candidates = this.servers
      .filter((s) => this.mdsView.get(s.id) === true && this.tables.getChunkServer(s.id)?.adminState === 'active')
      .map((s) => ({ csId: s.id, host: `h${s.id}`, rack: 'r', tier: 0, capacityBytes: 1 << 30, freeBytes: (1 << 30) - s.replicas.size * CHUNK_BYTES }));
    let chosen: number[];
    try {
      chosen = chooseReplicas(candidates, { count: 3, minimum: 2, chunkSizeBytes: CHUNK_BYTES, failureDomain: 'disk', exclude: [], tier: 0 }, this.random);
    } catch {
      return null;
    }
    const chunkId = this.nextChunkId;
    this.nextChunkId += 1;
    const io = new SimReplicaIo(this);
    const created: number[] = [];
    for (const csId of chosen) {
      try {
        await io.createChunk(csId, { chunkId, volumeId: this.volumeId, chunkIndex, sizeBytes: CHUNK_BYTES }, 1);
        created.push(csId);
      } catch {
        // left out, as the MDS does
      }
    }
    if (created.length < 2) return null;
    const result = this.tables.submit({ type: 'allocateChunk', volumeId: this.volumeId, chunkIndex, chunkId, replicas: created });
    return result.type === 'chunk' ? result.record : null;
  }

  /** The planner's picture, as the MDS builds it. */
  plan(replaceAfterMs: number): RecoveryAction[] {
    return this.planFull(replaceAfterMs).actions;
  }

  planFull(replaceAfterMs: number): ReturnType<typeof planRecovery> {
    const servers: PlannerServer[] = this.servers.map((s) => ({
      id: s.id,
      online: this.mdsView.get(s.id) === true,
      offlineForMs: this.mdsView.get(s.id) === true ? 0 : this.nowMs - s.offlineSinceMs,
      adminState: this.tables.getChunkServer(s.id)?.adminState ?? 'active',
      healthy: true,
      host: `h${s.id}`,
      rack: 'r',
      tier: 0,
      capacityBytes: 1 << 30,
      freeBytes: (1 << 30) - s.replicas.size * CHUNK_BYTES,
    }));
    const chunks: PlannerChunk[] = [];
    this.tables.forEachChunk((chunk) =>
      chunks.push({
        ...chunk, replicasNormal: 3, replicasMin: 2, chunkSizeBytes: CHUNK_BYTES, tier: 0, inDoubt: (chunk.inDoubt ?? []).length > 0,
        detached: this.tables.getPendingDelete(chunk.chunkId)?.csIds ?? [],
      }));
    return planRecovery({
      servers, chunks, busy: (chunkId) => this.replicator.isBusy(chunkId),
      config: { replaceAfterMs, replaceEndangeredAfterMs: replaceAfterMs / 2, replaceQuorumFraction: 0.5, failureDomain: 'disk', actionsMax: 64 },
      rebalance: { thresholdFraction: 0.5, move: true },
      random: this.random,
    });
  }
}

/** A copy pace that yields one to four turns of the loop before each step, so that writes land between them. */
export function yieldingPace(random: () => number): () => Promise<void> {
  return async () => {
    const turns = 1 + Math.floor(random() * 4);
    for (let turn = 0; turn < turns; turn += 1) await yieldToLoop();
  };
}

/** ReplicaIo on the simulated servers. */
export class SimReplicaIo implements ReplicaIo {
  private readonly world: SimWorld;

  constructor(world: SimWorld) {
    this.world = world;
  }

  private replica(csId: number, chunkId: number): SimReplica {
    const replica = this.world.beforeIo(csId).replicas.get(chunkId);
    if (replica === undefined) throw new StorageError('ERR_CHUNK_NOT_FOUND', `sim chunk ${chunkId} not on ${csId}`);
    return replica;
  }

  private member(csId: number, chunkId: number, version: number): SimReplica {
    const replica = this.replica(csId, chunkId);
    if (replica.version !== version) throw new StorageError('ERR_CHUNK_VERSION', `sim chunk ${chunkId} on ${csId} at ${replica.version}, not ${version}`);
    return replica;
  }

  async createChunk(csId: number, chunk: ChunkIdentity, version: number): Promise<void> {
    const server = this.world.beforeIo(csId);
    if (!server.replicas.has(chunk.chunkId)) server.replicas.set(chunk.chunkId, { version, blocks: new Map(), changes: null });
  }

  async deleteChunk(csId: number, chunkId: number): Promise<void> {
    if (!this.world.beforeIo(csId).replicas.delete(chunkId)) throw new StorageError('ERR_CHUNK_NOT_FOUND', 'gone');
  }

  async chunkVersion(csId: number, chunkId: number): Promise<number | null> {
    return this.world.beforeIo(csId).replicas.get(chunkId)?.version ?? null;
  }

  async setVersion(csId: number, chunkId: number, toVersion: number, expectedVersion?: number): Promise<void> {
    const replica = this.replica(csId, chunkId);
    if (replica.version === toVersion) return;
    if (expectedVersion !== undefined ? replica.version !== expectedVersion : replica.version > toVersion) {
      throw new StorageError('ERR_CHUNK_VERSION', `sim: cannot move ${replica.version} to ${toVersion}`);
    }
    replica.version = toVersion;
  }

  async trackChanges(csId: number, chunkId: number): Promise<void> {
    this.replica(csId, chunkId).changes = new Set();
  }

  async copyRange(sourceCsId: number, chunkId: number, version: number, offsetBytes: number, lengthBytes: number,
    changedOnly: boolean, targetCsId: number): Promise<number> {
    const source = this.member(sourceCsId, chunkId, version);
    if (changedOnly && source.changes === null) throw new StorageError('ERR_INVALID_ARGUMENT', 'sim: no change tracking');
    const target = this.replica(targetCsId, chunkId);
    let copied = 0;
    for (let block = offsetBytes / BLOCK; block < (offsetBytes + lengthBytes) / BLOCK; block += 1) {
      if (changedOnly && source.changes !== null) {
        if (!source.changes.has(block)) continue;
        source.changes.delete(block);
      }
      const value = source.blocks.get(block);
      if (value === undefined) target.blocks.delete(block);
      else target.blocks.set(block, value);
      target.changes?.add(block);
      copied += BLOCK;
    }
    return copied;
  }

  async read(csId: number, chunkId: number, version: number, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const replica = this.member(csId, chunkId, version);
    const bytes = Buffer.alloc((lengthBytes / BLOCK) * 4);
    for (let index = 0; index < lengthBytes / BLOCK; index += 1) bytes.writeUInt32BE(replica.blocks.get(offsetBytes / BLOCK + index) ?? 0, index * 4);
    return bytes;
  }

  /** A block's "sum" here is its value: equal values, equal blocks. */
  async blockSums(csId: number, chunkId: number, version: number, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const replica = this.member(csId, chunkId, version);
    const sums = Buffer.alloc((lengthBytes / BLOCK) * 4);
    for (let index = 0; index < lengthBytes / BLOCK; index += 1) sums.writeUInt32LE(replica.blocks.get(offsetBytes / BLOCK + index) ?? 0, index * 4);
    return sums;
  }

  async fill(csId: number, chunkId: number, offsetBytes: number, data: Buffer): Promise<void> {
    const replica = this.replica(csId, chunkId);
    for (let index = 0; index < data.length / 4; index += 1) {
      const value = data.readUInt32BE(index * 4);
      const block = offsetBytes / BLOCK + index;
      if (value === 0) replica.blocks.delete(block);
      else replica.blocks.set(block, value);
      replica.changes?.add(block);
    }
  }

  async repair(): Promise<number> {
    return 0;
  }

  async fence(csId: number): Promise<void> {
    this.world.beforeIo(csId);
  }

  async revoke(csId: number): Promise<void> {
    this.world.beforeIo(csId);
  }

  async listChunks(csId: number): Promise<ChunkListEntry[]> {
    return [...this.world.beforeIo(csId).replicas.entries()].map(([chunkId, replica]) => ({
      chunkId, version: replica.version, generation: 0, volumeId: this.world.volumeId, chunkIndex: 0, sizeBytes: CHUNK_BYTES,
    }));
  }

  async listVolumes(csId: number): Promise<VolumeListEntry[]> {
    this.world.beforeIo(csId);
    return [];
  }
}
