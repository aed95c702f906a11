// Stale writers against one chunk server, seeded: the real request handlers (src/cs/handlers.ts)
// on the real ChunkStore over a simulated disk whose syncs are slow, so changes sit between the
// lease check and their landing (waiting for the block lock, the handle, the journal) while the
// lease changes hands. Each round, the holder of epoch e writes disjoint ranges while readers hold
// block locks; a takeover to e+1 comes mid-stream, either as the MDS's FENCE or as the new holder's
// first write (which raises the fence itself); the old holder keeps writing after it.
//
// What must hold (checked per round):
// - no change of the fenced holder is acknowledged after the takeover was: whatever was admitted
//   before the fence lands before the takeover is acknowledged, everything after is refused
//   (ERR_LEASE_FENCED);
// - the chunk then holds exactly the acknowledged changes (a refused one left no byte);
// - no change stays registered in flight once everything settled.
// The takeover's acknowledgement is observed one event-loop turn late, so microtask order between
// two replies resolving together does not count; a change landing later than that does.

import { PartialWriteReporter } from '../../src/cs/partial_writes.ts';
import { handleRequest } from '../../src/cs/handlers.ts';
import { CsMetrics } from '../../src/cs/metrics.ts';
import type { ChunkServerOptions } from '../../src/cs/server.ts';
import { CS_OP, type CsRequest } from '../../src/protocol/cs_messages.ts';
import { seededRandom } from '../../src/util/clock.ts';
import { BLOCK } from './block_model.ts';
import { between, errorCode, pick, turns } from './sim_env.ts';
import { StoreSim, type StoreSimConfig } from './store_sim.ts';
import type { ScenarioResult } from './store_scenarios.ts';

const VOLUME_ID = 7; // the volume StoreSim creates its chunks in

interface SimChunk {
  readonly chunkId: number;
  readonly content: Buffer;
}

interface Change {
  readonly label: string;
  readonly chunk: SimChunk;
  readonly offsetBytes: number;
  readonly data: Buffer;
  readonly epoch: number;
  outcome: 'pending' | 'acked' | 'fenced';
}

function fenceSimConfig(seed: number, random: () => number): StoreSimConfig {
  const syncTurnsMax = between(random, 2, 30);
  return {
    seed, faults: {}, faultsName: 'none', echo: process.env['SHOAL_SIM_ECHO'] === '1',
    openChunksMax: between(random, 1, 3), segmentBytesMax: pick(random, [128, 256]) * 1024,
    slowTurnsMax: (syscall) => (syscall === 'fsync' || syscall === 'fdatasync' ? syncTurnsMax : between(random, 0, 1)),
    chunkBytes: pick(random, [64, 128]) * 1024, initialChunks: 0, chunksMax: 0, epochs: 0, stepsPerEpoch: 0, inflightMax: 0,
    latencyStepsMax: between(random, 0, 3), writebackChance: random() < 0.5 ? 0 : 0.2,
    inPlaceWriteBytesMin: pick(seededRandom(seed ^ 0x1f3d5b79), [Number.POSITIVE_INFINITY, 16384]),
  };
}

class FenceSim {
  readonly sim: StoreSim;
  private readonly random: () => number;
  private readonly deps: ChunkServerOptions;
  private nextId = 1;
  readonly problems: string[] = [];
  readonly stats = { rounds: 0, acked: 0, fenced: 0, inFlightAtTakeover: 0, fenceTakeovers: 0, writeTakeovers: 0 };

  constructor(seed: number) {
    this.random = seededRandom(seed ^ 0x2f6b1d3);
    this.sim = new StoreSim(fenceSimConfig(seed, this.random));
    // Only what WRITE, ZERO, READ and FENCE use: the store, an MDS link that allows writes, and a
    // partial-write reporter (changes here are never forwarded, so it never reports).
    const sim = this.sim;
    const partialWrites = new PartialWriteReporter({ send: async () => undefined, csId: () => 1, log: sim.log });
    // The handlers time each write's stages: real metrics, on a registry of their own.
    const metrics = new CsMetrics(() => null, () => null);
    this.deps = { writeBlocker: () => null, partialWrites, metrics, get store() { return sim.store; } } as unknown as ChunkServerOptions;
  }

  /** One request through the handlers, as the server runs it; resolves with its error code or null. */
  private async request(request: CsRequest, payload: Buffer, role: 'client' | 'mds'): Promise<string | null> {
    try {
      // The store's fencing is what is simulated: writes come as a primary's forwards (a peer's,
      // which the epoch alone admits), fences as the MDS's.
      const caller = { role: role === 'client' ? 'peer' as const : role, capability: () => null, refusal: () => null };
      const { reply } = await handleRequest(this.deps, request, payload, caller);
      return reply.code ?? null;
    } catch (error) {
      return errorCode(error);
    }
  }

  private fail(message: string): void {
    if (this.problems.length < 4) this.problems.push(message);
    this.sim.log.note(`PROBLEM: ${message}`);
  }

  async run(): Promise<void> {
    await this.sim.install();
    await this.sim.open();
    const chunks: SimChunk[] = [];
    for (let i = between(this.random, 1, 2); i > 0; i -= 1) {
      const created = await this.sim.createChunk();
      chunks.push({ chunkId: created.chunkId, content: Buffer.alloc(this.sim.config.chunkBytes) });
    }
    let epoch = between(this.random, 1, 3);
    const rounds = between(this.random, 3, 6);
    for (let round = 0; round < rounds && this.problems.length === 0; round += 1) {
      await this.round(chunks, epoch, round);
      epoch += between(this.random, 1, 2);
    }
  }

  /** Disjoint byte ranges over the chunks (neighbours may share a block: they meet at its lock). */
  private slots(chunks: readonly SimChunk[], count: number): Array<{ chunk: SimChunk; offsetBytes: number; lengthBytes: number }> {
    const slots: Array<{ chunk: SimChunk; offsetBytes: number; lengthBytes: number }> = [];
    for (const chunk of chunks) {
      let offsetBytes = between(this.random, 0, 3) * 1000;
      while (offsetBytes < chunk.content.length - 1) {
        const lengthBytes = Math.min(chunk.content.length - offsetBytes, between(this.random, 1, 3 * BLOCK));
        slots.push({ chunk, offsetBytes, lengthBytes });
        offsetBytes += lengthBytes + (this.random() < 0.5 ? 0 : between(this.random, 1, BLOCK));
      }
    }
    for (let i = slots.length - 1; i > 0; i -= 1) {
      const j = Math.floor(this.random() * (i + 1));
      [slots[i], slots[j]] = [slots[j]!, slots[i]!];
    }
    return slots.slice(0, count);
  }

  private launch(change: Change, running: Set<Promise<void>>): void {
    const request: CsRequest = {
      op: CS_OP.WRITE, id: this.nextId++, chunkId: change.chunk.chunkId, version: 1, volumeId: VOLUME_ID, epoch: change.epoch,
      offsetBytes: change.offsetBytes, lengthBytes: change.data.length, forward: [],
    };
    const done: Promise<void> = this.request(request, change.data, 'client').then((code) => {
      if (code === null) {
        change.outcome = 'acked';
        change.data.copy(change.chunk.content, change.offsetBytes);
        this.stats.acked += 1;
      } else if (code === 'ERR_LEASE_FENCED') {
        change.outcome = 'fenced';
        this.stats.fenced += 1;
      } else {
        this.fail(`${change.label} failed with ${code}; only a fence may refuse it here`);
      }
    }).finally(() => running.delete(done));
    running.add(done);
  }

  /** A reader holding block locks for a while: changes queue behind it after their lease check. */
  private read(chunk: SimChunk, running: Set<Promise<void>>): void {
    const offsetBytes = between(this.random, 0, chunk.content.length / BLOCK - 1) * BLOCK;
    const lengthBytes = Math.min(chunk.content.length - offsetBytes, between(this.random, 1, 8) * BLOCK);
    const request: CsRequest = { op: CS_OP.READ, id: this.nextId++, chunkId: chunk.chunkId, version: 1, offsetBytes, lengthBytes };
    const done: Promise<void> = this.request(request, Buffer.alloc(0), 'client').then((code) => {
      if (code !== null) this.fail(`a read failed with ${code}`);
    }).finally(() => running.delete(done));
    running.add(done);
  }

  private async round(chunks: readonly SimChunk[], epoch: number, round: number): Promise<void> {
    this.stats.rounds += 1;
    const newEpoch = epoch + 1;
    const steps = between(this.random, 6, 30);
    const takeoverStep = between(this.random, 1, steps - 2);
    const byWrite = this.random() < 0.35;
    const slots = this.slots(chunks, steps + 1);
    const running = new Set<Promise<void>>();
    const stale: Change[] = [];
    let takeover: Promise<void> | null = null;
    const atTakeover: { pending: Change[] } = { pending: [] };
    let takeoverLabel = '';
    for (let step = 0; step < steps && slots.length > 0; step += 1) {
      if (step === takeoverStep) {
        this.stats.inFlightAtTakeover += stale.filter((change) => change.outcome === 'pending').length;
        const acknowledged = byWrite ? this.takeoverByWrite(slots.pop()!, newEpoch, running) : this.fence(newEpoch);
        takeoverLabel = byWrite ? `the first write of epoch ${newEpoch}` : `the FENCE to epoch ${newEpoch}`;
        takeover = acknowledged.then(async () => {
          await turns(1);
          atTakeover.pending = stale.filter((change) => change.outcome === 'pending');
        });
      }
      const slot = slots.pop();
      if (slot !== undefined && this.random() < 0.8) {
        const change: Change = {
          label: `round ${round} write ${stale.length} (epoch ${epoch}, chunk ${slot.chunk.chunkId} ${slot.offsetBytes}+${slot.lengthBytes})`,
          chunk: slot.chunk, offsetBytes: slot.offsetBytes, data: this.sim.pattern(slot.offsetBytes, slot.lengthBytes), epoch, outcome: 'pending',
        };
        stale.push(change);
        this.launch(change, running);
      }
      if (this.random() < 0.4) this.read(pick(this.random, chunks), running);
      await turns(between(this.random, 0, 4));
    }
    await takeover;
    while (running.size > 0) await Promise.all([...running]);
    for (const change of atTakeover.pending) {
      if (change.outcome === 'acked') this.fail(`${change.label} was acknowledged after ${takeoverLabel} was: it landed after the takeover`);
    }
    if (this.sim.store.admittedCount !== 0) this.fail(`${this.sim.store.admittedCount} changes still registered in flight after round ${round}`);
    for (const chunk of chunks) {
      const held = await this.sim.store.read(chunk.chunkId, 1, 0, chunk.content.length);
      const at = held.findIndex((byte, index) => byte !== chunk.content[index]);
      if (at >= 0) this.fail(`after round ${round}, chunk ${chunk.chunkId} byte ${at} holds ${held[at]}, the acknowledged changes say ${chunk.content[at]}`);
    }
  }

  private async fence(epoch: number): Promise<void> {
    this.stats.fenceTakeovers += 1;
    const code = await this.request({ op: CS_OP.FENCE, id: this.nextId++, volumeId: VOLUME_ID, epoch }, Buffer.alloc(0), 'mds');
    if (code !== null) this.fail(`the FENCE to epoch ${epoch} failed with ${code}`);
  }

  /** The new holder's first write raises the fence; it is acknowledged once older changes are done. */
  private async takeoverByWrite(slot: { chunk: SimChunk; offsetBytes: number; lengthBytes: number }, epoch: number,
    running: Set<Promise<void>>): Promise<void> {
    this.stats.writeTakeovers += 1;
    const change: Change = {
      label: `the takeover write of epoch ${epoch}`, chunk: slot.chunk, offsetBytes: slot.offsetBytes,
      data: this.sim.pattern(slot.offsetBytes, slot.lengthBytes), epoch, outcome: 'pending',
    };
    this.launch(change, running);
    while (change.outcome === 'pending' && this.problems.length === 0) await turns(1);
    if (change.outcome !== 'acked') this.fail(`${change.label} was not acknowledged (${change.outcome})`);
  }
}

/** One seed of stale writers; the problem found (null if none) and what the seed did. */
export async function staleWriters(seed: number): Promise<ScenarioResult> {
  const fenceSim = new FenceSim(seed);
  try {
    await fenceSim.run();
  } catch (error) {
    fenceSim.problems.push(`the seed threw: ${error instanceof Error ? error.stack ?? error.message : String(error)}`);
  }
  const problem = fenceSim.problems.length === 0 ? null : `${fenceSim.problems.join('\n  then: ')}\n  last log lines:\n    ${fenceSim.sim.log.tail().split('\n').slice(-15).join('\n    ')}`;
  return { problem, stats: { ...fenceSim.stats } };
}
