// Deterministic simulation of the MDS's replication and recovery logic (the real replicator and
// planner on the real state machine, test/sim/world.ts) through many seeds of random failures,
// returns, writes and drains. After every step, safety: every member of a chunk holds it at the
// map's version, members agree byte for byte, no replica anywhere is ahead of the map, and every
// acknowledged write is what the members hold (or a later write in doubt). Writers also die
// mid-write, alone (the primary reports) or with their primary (nobody does: the members may
// differ at that version, and must agree from the next). At the end, liveness:
// with every server back, recovery brings every chunk to its normal replica count.
//
// Stale writers: a takeover fences the servers one by one while the old holder's write reaches a
// primary not yet fenced; members already fenced refuse it. The primary reports through the real
// reporter (src/cs/partial_writes.ts) and the MDS settles as Cluster.reportPartialWrite does: no
// member may be dropped for refusing, and the fenced value must not survive anywhere (it is never
// acknowledged), unless no member that refused it could be reached to copy from (counted apart).
//
// A failure prints the seed; replay one with SIM_SEED=<seed> (and SIM_STEPS=<n>).

import t from 'tap';
import { PartialWriteReporter } from '../src/cs/partial_writes.ts';
import type { PartialWriteBody } from '../src/protocol/api.ts';
import { seededRandom } from '../src/util/clock.ts';
import { BLOCK, BLOCKS_PER_CHUNK, SimWorld } from './sim/world.ts';

const SEEDS = Number(process.env['SIM_SEEDS'] ?? 400);
const STEPS = Number(process.env['SIM_STEPS'] ?? 150);
const SERVERS = 5;
const CHUNKS = 6;
const REPLACE_AFTER_MS = 10_000;
const silentLog = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

/** What a block may hold: the last acknowledged value, plus values written later but not acknowledged. */
type Allowed = Map<string, Set<number>>;

class Writer {
  private readonly world: SimWorld;
  readonly allowed: Allowed = new Map();
  private nextValue = 1;
  acked = 0;
  abandoned = 0;

  constructor(world: SimWorld) {
    this.world = world;
  }

  /** `chunkId:version:block` written on some members only, by a writer that died with its primary. */
  readonly unreported = new Set<string>();

  /**
   * A write whose writer dies part-way: some members apply it, the others not, and it is never
   * acknowledged. If the primary lives, it reports the members that failed (as a chunk server
   * does); if `primaryDies`, it crashes too and nobody reports anything.
   */
  async dieMidWrite(chunkIndex: number, block: number, primaryDies: boolean): Promise<void> {
    const { world } = this;
    const entry = world.tables.getChunk(world.volumeId, chunkIndex);
    if (entry === undefined || entry.replicas.length < 2) return;
    // The change goes through the primary: one that is down or behind takes it nowhere.
    const primary = entry.replicas[0] ?? 0;
    const primaryReplica = world.server(primary).replicas.get(entry.chunkId);
    if (!world.server(primary).online || primaryReplica?.version !== entry.version) return;
    const value = this.nextValue;
    this.nextValue += 1;
    const key = `${chunkIndex}:${block}`;
    this.allowed.set(key, new Set([...(this.allowed.get(key) ?? new Set([0])), value]));
    const failed: number[] = [];
    for (const csId of entry.replicas) {
      const server = world.server(csId);
      const replica = server.replicas.get(entry.chunkId);
      if (!server.online || replica === undefined || replica.version !== entry.version || world.random() < 0.5) {
        failed.push(csId);
        continue;
      }
      replica.blocks.set(block, value);
      replica.changes?.add(block);
    }
    if (primaryDies) {
      this.unreported.add(`${entry.chunkId}:${entry.version}:${block}`);
      world.crash(primary);
      return;
    }
    if (failed.length === 0) return;
    try {
      await world.replicator.drop(world.volumeId, chunkIndex, failed, {
        expectedVersion: entry.version, inDoubt: { offsetBytes: block * BLOCK, lengthBytes: BLOCK }, reason: 'sim primary report',
      });
    } catch {
      // no member reachable: recorded in doubt for the planner
    }
  }

  /** Lease epoch of the current holder, and each server's fence (what it refuses below). */
  epoch = 1;
  readonly fences = new Map<number, number>();
  staleWrites = 0;
  /** Stale writes refused by some member: the fenced value was applied somewhere and must go. */
  staleRefused = 0;
  /** ... but no member that refused it could be reached to settle from: the value may stay. */
  staleKeptNoCleanMember = 0;
  droppedForRefusing = 0;

  /**
   * A takeover (epoch + 1) fences the online servers in a random order; between two fences the old
   * holder's write reaches the chunk's primary. See the header.
   */
  async staleWrite(chunkIndex: number, block: number): Promise<void> {
    const { world } = this;
    const entry = world.tables.getChunk(world.volumeId, chunkIndex);
    const stale = this.epoch;
    this.epoch += 1;
    const order = world.servers.filter((server) => server.online).map((server) => server.id);
    for (let i = order.length - 1; i > 0; i -= 1) {
      const j = Math.floor(world.random() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    const fencedFirst = Math.floor(world.random() * (order.length + 1));
    for (const csId of order.slice(0, fencedFirst)) this.fences.set(csId, this.epoch);
    if (entry !== undefined && entry.replicas.length >= 2) await this.staleChange(entry.chunkId, chunkIndex, block, stale);
    for (const csId of order.slice(fencedFirst)) this.fences.set(csId, this.epoch);
  }

  private async staleChange(chunkId: number, chunkIndex: number, block: number, epoch: number): Promise<void> {
    const { world } = this;
    const entry = world.tables.getChunk(world.volumeId, chunkIndex);
    if (entry === undefined) return;
    const [primary, ...others] = entry.replicas;
    const refusal = (csId: number): string | null => {
      const server = world.server(csId);
      const replica = server.replicas.get(chunkId);
      if (!server.online) return 'ERR_UNAVAILABLE';
      if ((this.fences.get(csId) ?? 0) > epoch) return 'ERR_LEASE_FENCED';
      if (replica === undefined) return 'ERR_CHUNK_NOT_FOUND';
      if (replica.version !== entry.version) return 'ERR_CHUNK_VERSION';
      return null;
    };
    if (primary === undefined || refusal(primary) !== null) return; // refused before anything was applied
    this.staleWrites += 1;
    const value = this.nextValue;
    this.nextValue += 1;
    const apply = (csId: number): void => {
      const replica = world.server(csId).replicas.get(chunkId);
      replica?.blocks.set(block, value);
      replica?.changes?.add(block);
    };
    apply(primary);
    const peers = others.map((csId) => {
      const code = refusal(csId);
      if (code === null) apply(csId);
      return { csId, code };
    });
    const key = `${chunkIndex}:${block}`;
    const refused = peers.filter((peer) => peer.code === 'ERR_LEASE_FENCED').map((peer) => peer.csId);
    if (refused.length === 0) {
      // Nobody knew of the takeover yet: an ordinary write of the old holder, before it.
      const failed = peers.some((peer) => peer.code !== null);
      this.allowed.set(key, failed ? new Set([...(this.allowed.get(key) ?? new Set([0])), value]) : new Set([value]));
      if (!failed) this.acked += 1;
    } else {
      this.staleRefused += 1;
    }
    // The primary reports and waits for the MDS before its own fence is acknowledged.
    const reporter = new PartialWriteReporter({ send: (report) => this.settleReport(report), csId: () => primary, log: silentLog });
    await reporter.consider({
      volumeId: world.volumeId, chunkIndex, chunkId, version: entry.version, offsetBytes: block * BLOCK, lengthBytes: BLOCK, localCode: null, peers,
    });
    if (refused.length === 0) return;
    const after = world.tables.getChunk(world.volumeId, chunkIndex);
    this.droppedForRefusing += refused.filter((csId) => after !== undefined && !after.replicas.includes(csId) && world.server(csId).online).length;
    if (after === undefined || refused.every((csId) => !after.replicas.includes(csId) && !world.server(csId).online)) {
      // Every member that refused it went down before it could be sealed: nothing clean to copy from.
      this.staleKeptNoCleanMember += 1;
      this.allowed.set(key, new Set([...(this.allowed.get(key) ?? new Set([0])), value]));
    }
  }

  /** What Cluster.reportPartialWrite does with a primary's report. */
  private async settleReport(report: PartialWriteBody): Promise<void> {
    const chunk = this.world.tables.getChunk(report.volumeId, report.chunkIndex);
    if (chunk === undefined || chunk.version !== report.version) return;
    await this.world.replicator.drop(report.volumeId, report.chunkIndex, report.failedCsIds, {
      expectedVersion: report.version, inDoubt: { offsetBytes: report.offsetBytes, lengthBytes: report.lengthBytes },
      preferredSources: report.cleanCsIds ?? [], reason: 'sim primary report',
    });
  }

  /** One guest write, as the client library does it: send to every member, on failure report and retry. */
  async write(chunkIndex: number, block: number): Promise<void> {
    const { world } = this;
    const chunk = await world.allocate(chunkIndex);
    if (chunk === null) return; // no room to allocate now: the guest write waits (not modelled)
    const value = this.nextValue;
    this.nextValue += 1;
    const key = `${chunkIndex}:${block}`;
    const before = this.allowed.get(key) ?? new Set([0]);
    this.allowed.set(key, new Set([...before, value])); // in doubt until acknowledged
    for (let attempt = 0; attempt < 4; attempt += 1) {
      const entry = world.tables.getChunk(world.volumeId, chunkIndex);
      if (entry === undefined || entry.replicas.length < 2) break; // below min: the write waits
      const failed: number[] = [];
      for (const csId of entry.replicas) {
        const server = world.server(csId);
        const replica = server.replicas.get(entry.chunkId);
        if (!server.online || replica === undefined || replica.version !== entry.version) {
          failed.push(csId);
          continue;
        }
        replica.blocks.set(block, value);
        replica.changes?.add(block);
      }
      if (failed.length === 0) {
        this.allowed.set(key, new Set([value]));
        this.acked += 1;
        return;
      }
      try {
        await world.replicator.drop(world.volumeId, chunkIndex, failed, {
          expectedVersion: entry.version, inDoubt: { offsetBytes: block * BLOCK, lengthBytes: BLOCK }, reason: 'sim write failed',
        });
      } catch {
        // no member reachable: the write stays in doubt
      }
    }
    this.abandoned += 1;
  }
}

function checkSafety(world: SimWorld, writer: Writer): string | null {
  let problem: string | null = null;
  world.tables.forEachChunk((chunk) => {
    if (problem !== null) return;
    // Blocks recorded as in doubt may differ until the planner settles them; the rest may not.
    const doubtful = new Set<number>();
    for (const range of chunk.inDoubt ?? []) {
      for (let block = range.offsetBytes / BLOCK; block < (range.offsetBytes + range.lengthBytes) / BLOCK; block += 1) doubtful.add(block);
    }
    // A write that died with its primary may differ until the chunk's next version, not after.
    for (let block = 0; block < BLOCKS_PER_CHUNK; block += 1) {
      if (writer.unreported.has(`${chunk.chunkId}:${chunk.version}:${block}`)) doubtful.add(block);
    }
    const contents: string[] = [];
    for (const csId of chunk.replicas) {
      const replica = world.server(csId).replicas.get(chunk.chunkId);
      if (replica === undefined) return void (problem = `chunk ${chunk.chunkIndex}: member ${csId} has no replica`);
      if (replica.version !== chunk.version) return void (problem = `chunk ${chunk.chunkIndex}: member ${csId} at ${replica.version}, map at ${chunk.version}`);
      contents.push(JSON.stringify([...replica.blocks.entries()].filter(([block]) => !doubtful.has(block)).sort((a, b) => a[0] - b[0])));
    }
    if (new Set(contents).size > 1) return void (problem = `chunk ${chunk.chunkIndex} v${chunk.version}: members differ: ${contents.join(' | ')}`);
    for (const server of world.servers) {
      const replica = server.replicas.get(chunk.chunkId);
      if (replica !== undefined && replica.version > chunk.version) {
        return void (problem = `chunk ${chunk.chunkIndex}: server ${server.id} at version ${replica.version} above the map's ${chunk.version}`);
      }
    }
    const member = world.server(chunk.replicas[0] ?? 0).replicas.get(chunk.chunkId);
    for (let block = 0; block < BLOCKS_PER_CHUNK && member !== undefined; block += 1) {
      if (doubtful.has(block)) continue;
      const allowed = writer.allowed.get(`${chunk.chunkIndex}:${block}`) ?? new Set([0]);
      const held = member.blocks.get(block) ?? 0;
      if (!allowed.has(held)) return void (problem = `chunk ${chunk.chunkIndex} block ${block}: holds ${held}, acknowledged ${[...allowed].join('|')}`);
    }
  });
  return problem;
}

async function recover(world: SimWorld): Promise<number> {
  const actions = world.plan(REPLACE_AFTER_MS);
  await Promise.all(actions.map(async (action) => {
    try {
      if (action.kind === 'drop') await world.replicator.drop(action.chunk.volumeId, action.chunk.chunkIndex, action.csIds, { reason: action.reason });
      else if (action.kind === 'settle') await world.replicator.settle(action.chunk.volumeId, action.chunk.chunkIndex);
      else if (action.kind === 'promote') await world.replicator.promote(action.chunk.volumeId, action.chunk.chunkIndex, action.csId, action.reason);
      else {
        await world.replicator.add(action.chunk.volumeId, action.chunk.chunkIndex, action.target);
        if (action.thenDrop !== null) await world.replicator.drop(action.chunk.volumeId, action.chunk.chunkIndex, [action.thenDrop], { reason: action.reason });
      }
    } catch {
      // a failed action is planned again next round, as in the daemon
    }
  }));
  return actions.length;
}

interface SeedOutcome {
  readonly problem: string | null;
  readonly acked: number;
  readonly stale: { writes: number; refused: number; keptNoCleanMember: number; droppedForRefusing: number };
}

function outcome(problem: string | null, writer: Writer): SeedOutcome {
  return {
    problem, acked: writer.acked,
    stale: { writes: writer.staleWrites, refused: writer.staleRefused, keptNoCleanMember: writer.staleKeptNoCleanMember, droppedForRefusing: writer.droppedForRefusing },
  };
}

async function runSeed(seed: number, steps: number): Promise<SeedOutcome> {
  const random = seededRandom(seed);
  const world = new SimWorld(random, SERVERS);
  const writer = new Writer(world);
  world.crashDuringIoChance = random() < 0.5 ? 0.02 : 0;
  for (let step = 0; step < steps; step += 1) {
    const roll = random();
    const pick = (list: number[]): number | undefined => list[Math.floor(random() * list.length)];
    const online = world.servers.filter((s) => s.online).map((s) => s.id);
    const offline = world.servers.filter((s) => !s.online).map((s) => s.id);
    if (roll < 0.40) await writer.write(Math.floor(random() * CHUNKS), Math.floor(random() * BLOCKS_PER_CHUNK));
    else if (roll < 0.42) await writer.staleWrite(Math.floor(random() * CHUNKS), Math.floor(random() * BLOCKS_PER_CHUNK));
    else if (roll < 0.45) await writer.dieMidWrite(Math.floor(random() * CHUNKS), Math.floor(random() * BLOCKS_PER_CHUNK), random() < 0.5 && online.length > 2);
    else if (roll < 0.55 && online.length > 2) world.crash(pick(online) ?? 0);
    else if (roll < 0.65 && offline.length > 0) world.revive(pick(offline) ?? 0);
    else if (roll < 0.68) await drainOrActivate(world, pick(world.servers.map((s) => s.id)) ?? 1, random);
    else if (roll < 0.88) await recover(world);
    else world.nowMs += Math.floor(random() * REPLACE_AFTER_MS);
    if (random() < 0.5) world.refreshMdsView();
    const problem = checkSafety(world, writer);
    if (problem !== null) return outcome(`step ${step}: ${problem}`, writer);
  }
  return outcome(await checkLiveness(world, writer), writer);
}

async function drainOrActivate(world: SimWorld, csId: number, random: () => number): Promise<void> {
  const draining = world.tables.listChunkServers().filter((s) => s.adminState === 'draining').length;
  const adminState = random() < 0.5 && draining === 0 ? 'draining' : 'active';
  world.tables.submit({ type: 'setChunkServerState', csId, adminState });
}

/** Everything back and active: recovery must end with every chunk on three up-to-date members. */
async function checkLiveness(world: SimWorld, writer: Writer): Promise<string | null> {
  world.crashDuringIoChance = 0;
  for (const server of world.servers) {
    world.revive(server.id);
    world.tables.submit({ type: 'setChunkServerState', csId: server.id, adminState: 'active' });
  }
  world.refreshMdsView();
  for (let round = 0; round < 200; round += 1) {
    world.nowMs += 1_000;
    if ((await recover(world)) === 0) break;
    const problem = checkSafety(world, writer);
    if (problem !== null) return `recovery round ${round}: ${problem}`;
  }
  let problem: string | null = null;
  world.tables.forEachChunk((chunk) => {
    if (problem === null && chunk.replicas.length !== 3) problem = `chunk ${chunk.chunkIndex} ends with ${chunk.replicas.length} members`;
    if (problem === null && (chunk.inDoubt ?? []).length > 0) problem = `chunk ${chunk.chunkIndex} ends with ranges in doubt`;
  });
  return problem ?? checkSafety(world, writer);
}

t.test('replication and recovery stay safe and converge over many seeds', async (t) => {
  t.setTimeout(180_000);
  const only = process.env['SIM_SEED'];
  const seeds = only === undefined ? Array.from({ length: SEEDS }, (_, i) => i + 1) : [Number(only)];
  let acked = 0;
  const stale = { writes: 0, refused: 0, keptNoCleanMember: 0, droppedForRefusing: 0 };
  const failures: string[] = [];
  for (const seed of seeds) {
    const result = await runSeed(seed, STEPS);
    acked += result.acked;
    for (const key of Object.keys(stale) as Array<keyof typeof stale>) stale[key] += result.stale[key];
    if (result.problem !== null) {
      failures.push(`SEED=${seed}: ${result.problem}\n  replay: SIM_SEED=${seed} SIM_STEPS=${STEPS} npx tap build/test/sim_recovery.test.js`);
    }
  }
  t.same(failures.slice(0, 5), [], `${seeds.length} seeds, ${acked} acknowledged writes, ${failures.length} failing`);
  t.ok(acked > seeds.length * 10, 'the seeds did real work');
  t.comment(`stale writes: ${JSON.stringify(stale)}`);
  t.equal(stale.droppedForRefusing, 0, 'no member that refused a fenced write was dropped for it');
  t.ok(stale.refused > 0 || only !== undefined, `stale writes refused by some members happened (${stale.refused})`);
});

t.test('the checker catches a lost write (it is not vacuous)', async (t) => {
  const world = new SimWorld(seededRandom(1), SERVERS);
  const writer = new Writer(world);
  await writer.write(0, 3);
  t.equal(checkSafety(world, writer), null, 'consistent after a write');
  const chunk = world.tables.getChunk(world.volumeId, 0)!;
  for (const csId of chunk.replicas) world.server(csId).replicas.get(chunk.chunkId)!.blocks.delete(3);
  t.match(checkSafety(world, writer), /block 3: holds 0/, 'a write missing on every member is reported');
  await writer.write(0, 5);
  world.server(chunk.replicas[1]!).replicas.get(chunk.chunkId)!.blocks.set(5, 999);
  t.match(checkSafety(world, writer), /members differ/, 'members holding different bytes are reported');
});
