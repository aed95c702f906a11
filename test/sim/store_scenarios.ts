// Scripted, seeded scenarios for the defects the chunk store must never have again. Each returns
// the first problem found (null when the store behaved), and each is run over many seeds (sizes,
// data, latencies and what a power cut lands vary with the seed):
// - chunkSyncFailure: a chunk file's sync fails during a checkpoint (its .data or .sums fdatasync,
//   or the .sums write, with EIO), the checkpoint's own or an eviction's beside it. The store must
//   stop taking writes, keep its journal through later checkpoints and restarts, and after a power
//   cut every acknowledged write reads back.
// - evictionRacingCheckpoint: with one open chunk at a time, opening the next chunk evicts the one
//   just written, whose sync runs in the background while a checkpoint runs; power is cut the
//   moment the checkpoint resolves, dropping everything unsynced. The checkpoint must have waited
//   for the eviction's sync; a chunk reopened at once must see its checksums.
// - zeroWithoutHolePunching: zeroing on a file system that cannot punch holes (ENOTSUP) writes
//   zeroes instead, and works: acknowledged, reads zeroes, survives a power cut, store healthy.
// - replayOnFullDisk: the journal cannot be replayed for lack of space at a restart; it must be
//   kept until a restart with room replays it.
// - syncFailsDuringReplay: a chunk file's sync fails while the journal replays (in an eviction, or
//   in the sync that ends the replay); the journal must be kept for the next start.

import { BLOCK } from './block_model.ts';
import { between, pick, turns } from './sim_env.ts';
import { StoreSim, type StoreSimConfig } from './store_sim.ts';
import type { SimFaultPlan } from '../../src/cs/disk/sim_disk.ts';
import { seededRandom } from '../../src/util/clock.ts';

type Chunk = ReturnType<StoreSim['chunk']>;

/** The first problem (and its consequences), or null; and what the seed did. */
export interface ScenarioResult {
  readonly problem: string | null;
  readonly stats: Readonly<Record<string, number>>;
}

function scenarioConfig(seed: number, random: () => number, faults: Partial<SimFaultPlan>, openChunksMax: number,
  segmentBytesMax = pick(random, [64, 128, 256]) * 1024, slowTurnsMax: (syscall: string, path: string) => number = () => 0): StoreSimConfig {
  return {
    seed, faults, openChunksMax, segmentBytesMax, slowTurnsMax, faultsName: 'scripted', echo: process.env['SHOAL_SIM_ECHO'] === '1',
    chunkBytes: pick(random, [64, 128]) * 1024, initialChunks: 0, chunksMax: 0, epochs: 0, stepsPerEpoch: 0, inflightMax: 0,
    latencyStepsMax: between(random, 1, 3), writebackChance: random() < 0.5 ? 0 : 0.2,
    // The scripted cases target the journalled path; in-place writes have their own (in-place cases).
    inPlaceWriteBytesMin: Number.POSITIVE_INFINITY,
  };
}

async function started(sim: StoreSim, chunks: number): Promise<Chunk[]> {
  await sim.install();
  await sim.open();
  const created: Chunk[] = [];
  for (let i = 0; i < chunks; i += 1) created.push(await sim.createChunk());
  return created;
}

/** A write of random size and alignment; true if acknowledged (checked against the model). */
function randomWrite(sim: StoreSim, random: () => number, chunk: Chunk): Promise<boolean> {
  const size = chunk.model.sizeBytes;
  const aligned = random() < 0.5;
  const offsetBytes = aligned ? between(random, 0, size / BLOCK - 1) * BLOCK : between(random, 0, size - 1);
  const room = size - offsetBytes;
  const lengthBytes = aligned ? BLOCK * between(random, 1, Math.min(8, room / BLOCK)) : between(random, 1, Math.min(room, 20_000));
  return sim.write(chunk, offsetBytes, sim.pattern(offsetBytes, lengthBytes), null);
}

/**
 * Writes, three at a time, that must all be acknowledged (no fault is armed). (More overlapping
 * writes in flight at once would make the model's possible states explode: every order counts.)
 */
async function acknowledgedWrites(sim: StoreSim, random: () => number, chunks: readonly Chunk[], count: number): Promise<void> {
  for (let done = 0; done < count; done += 3) {
    const results = await Promise.all(Array.from({ length: Math.min(3, count - done) }, () => randomWrite(sim, random, pick(random, chunks))));
    if (results.includes(false)) sim.fail('a write failed with no fault armed');
  }
}

async function readAll(sim: StoreSim, chunks: readonly Chunk[]): Promise<void> {
  for (const chunk of chunks) await sim.read(chunk, 0, chunk.model.sizeBytes);
}

export async function chunkSyncFailure(seed: number): Promise<ScenarioResult> {
  const random = seededRandom(seed ^ 0x0a0a0a0a);
  // The failing sync is a checkpoint's own, or (one chunk open at a time) that of an eviction
  // running beside the checkpoint. Segments are large enough that no checkpoint starts by itself:
  // checkpoint() joins a running one, which may predate the target's last write.
  const byEviction = random() < 0.5;
  // In the eviction case, the eviction starts when the checkpoint syncs the journal directory to
  // switch segments, which is slow (a busy disk): it fails before the checkpoint syncs the chunk
  // files, and is no longer there for the checkpoint to wait for.
  let evict: (() => void) | null = null;
  const dirSyncTurns = between(random, 10, 40);
  const isJournalDirSync = (syscall: string, path: string): boolean => syscall === 'fsync' && path.endsWith('/journal');
  const sim = new StoreSim({
    ...scenarioConfig(seed, random, {}, byEviction ? 1 : 8, 1024 * 1024, (syscall, path) => (isJournalDirSync(syscall, path) ? dirSyncTurns : 0)),
    onDiskCall: (syscall, path) => {
      if (evict === null || !isJournalDirSync(syscall, path)) return;
      evict();
      evict = null;
    },
  });
  const chunks = await started(sim, 3);
  await acknowledgedWrites(sim, random, chunks, between(random, 3, 12));
  const target = pick(random, chunks);
  // The target is dirty when the checkpoint (or its eviction) syncs it.
  if (!(await randomWrite(sim, random, target))) sim.fail('the write before the checkpoint failed');
  const file = `/${target.chunkId}.${random() < 0.5 ? 'data' : 'sums'}`;
  const kind = file.endsWith('.sums') && random() < 0.5 ? 'writeEio' : 'syncEio';
  sim.disk.inject({ kind, path: (path) => path.endsWith(file) });
  // Writes in flight while the sync fails: acknowledged or not, nothing acknowledged is lost. (Not
  // with one chunk open at a time: they would evict the target before the checkpoint starts.)
  for (let i = byEviction ? 0 : between(random, 0, 4); i > 0; i -= 1) sim.start(() => randomWrite(sim, random, pick(random, chunks)));
  if (byEviction) {
    // Opening another chunk evicts the target.
    const other = pick(random, chunks.filter((chunk) => chunk !== target));
    evict = () => sim.start(() => sim.read(other, 0, BLOCK));
  }
  const checkpointed = await sim.checkpoint();
  const fired = (): boolean => sim.disk.faults.some((fault) => fault.path.endsWith(file));
  // An eviction's sync that failed before the checkpoint ended must fail it (its data may be in
  // the segments the checkpoint would recycle). Without an eviction, the checkpoint syncs the target.
  if (checkpointed && (fired() || !byEviction)) sim.fail(`the checkpoint succeeded though ${kind} hit ${file}${byEviction ? ' in an eviction' : ''}`);
  await sim.settleAll();
  if (!fired()) sim.fail(`the injected ${kind} on ${file} never fired`);
  await sim.checkpoint();
  if (sim.store.journal.healthError === null || sim.store.healthProblem === null) sim.fail('after the failed chunk sync the store reports no problem');
  await afterFailedSync(sim, random, chunks);
  // A restart without a power cut (the page cache keeps everything, and the restart syncs the
  // journal's directory), then a power cut: what the journal gave up is gone for good by then.
  if (random() < 0.5) await sim.processCrash();
  await sim.powerCut(random() < 0.5 ? 'random' : 'dropUnsynced', false);
  return { problem: sim.report(), stats: { ...sim.stats, faults: sim.disk.faults.length } };
}

/**
 * Writes and checkpoints go on, as in the daemon (twice: a second checkpoint's directory sync
 * would make what a first one recycled durable). None may succeed; reads still work.
 */
async function afterFailedSync(sim: StoreSim, random: () => number, chunks: readonly Chunk[]): Promise<void> {
  let acknowledged = 0;
  let checkpointed = 0;
  for (let round = 0; round < 2; round += 1) {
    for (let i = between(random, 1, 3); i > 0; i -= 1) if (await randomWrite(sim, random, pick(random, chunks))) acknowledged += 1;
    if (await sim.checkpoint()) checkpointed += 1;
  }
  if (acknowledged > 0) sim.fail(`${acknowledged} writes were acknowledged after the failed chunk sync`);
  if (checkpointed > 0) sim.fail(`${checkpointed} later checkpoints succeeded after the failed chunk sync`);
  await readAll(sim, chunks);
}

export async function evictionRacingCheckpoint(seed: number): Promise<ScenarioResult> {
  const random = seededRandom(seed ^ 0x0b0b0b0b);
  // One chunk (the "busy" one) is slow to write and sync, as a file with much to flush is: its
  // eviction's sync outlasts a checkpoint or two. Other calls take their usual time.
  let busy = '';
  const slowTurns = between(random, 20, 60);
  const slow = (syscall: string, path: string): number =>
    busy !== '' && path.includes(busy) && (syscall === 'write' || syscall === 'fdatasync') ? slowTurns : 0;
  const config = scenarioConfig(seed, random, {}, 1, pick(random, [64, 128, 256]) * 1024, slow);
  const sim = new StoreSim(config);
  const chunks = await started(sim, between(random, 2, 4));
  const rounds = between(random, 1, 4);
  for (let round = 0; round < rounds && sim.problem === null; round += 1) {
    const written = chunks[round % chunks.length];
    const next = chunks[(round + 1) % chunks.length];
    if (written === undefined || next === undefined) throw new Error('scenario chunks');
    busy = `/${written.chunkId}.`;
    await acknowledgedWrites(sim, random, [written], between(random, 1, 4));
    // Opening the next chunk evicts the one just written: its sync runs in the background...
    sim.start(() => sim.read(next, 0, BLOCK));
    await turns(between(random, 0, 3));
    // (sometimes reopened at once: it must not read its checksums before the eviction wrote them)
    if (random() < 0.3) sim.start(() => sim.read(written, 0, written.model.sizeBytes));
    // ...while this checkpoint syncs and recycles the journal.
    if (!(await sim.checkpoint())) sim.fail('a checkpoint failed with no fault armed');
    if (round < rounds - 1) continue;
    // A write elsewhere and a second checkpoint, whose journal directory sync makes the first one's
    // recycling durable; then power goes at once.
    busy = '';
    await acknowledgedWrites(sim, random, [next], 1);
    if (!(await sim.checkpoint())) sim.fail('a checkpoint failed with no fault armed');
  }
  // What the checkpoints recycled must be in the chunk files: nothing unsynced survives this cut.
  await sim.powerCut('dropUnsynced', false);
  return { problem: sim.report(), stats: { ...sim.stats, faults: sim.disk.faults.length } };
}

export async function zeroWithoutHolePunching(seed: number): Promise<ScenarioResult> {
  const random = seededRandom(seed ^ 0x0c0c0c0c);
  const sim = new StoreSim(scenarioConfig(seed, random, { punchHole: false }, between(random, 1, 3)));
  const chunks = await started(sim, between(random, 1, 3));
  for (const chunk of chunks) {
    if (!(await sim.write(chunk, 0, sim.pattern(0, chunk.model.sizeBytes), null))) sim.fail('filling a chunk failed');
  }
  for (let i = between(random, 2, 6); i > 0; i -= 1) {
    const chunk = pick(random, chunks);
    const size = chunk.model.sizeBytes;
    // Whole blocks (the ones hole punching would deallocate), sometimes with partial edges.
    const first = between(random, 0, size / BLOCK - 2);
    const offsetBytes = first * BLOCK + (random() < 0.5 ? 0 : between(random, 1, BLOCK - 1));
    const lengthBytes = Math.min(size - offsetBytes, between(random, 2, 6) * BLOCK + (random() < 0.5 ? 0 : between(random, 1, BLOCK - 1)));
    if (!(await sim.zero(chunk, offsetBytes, lengthBytes, null))) sim.fail(`zeroing ${offsetBytes}+${lengthBytes} failed without hole punching`);
  }
  await readAll(sim, chunks);
  if (!(await sim.checkpoint())) sim.fail('the checkpoint failed');
  if (!sim.disk.faults.some((fault) => fault.kind === 'noPunch')) sim.fail('hole punching was never tried');
  if (sim.store.healthProblem !== null) sim.fail(`the store reports a problem after falling back to writing zeroes: ${sim.store.healthProblem}`);
  await sim.powerCut(random() < 0.5 ? 'random' : 'dropUnsynced', false);
  return { problem: sim.report(), stats: { ...sim.stats, faults: sim.disk.faults.length } };
}

/**
 * The disk is full when the server restarts after a power cut, so replaying the journal into the
 * chunk files (whose unsynced pages the cut dropped) fails with ENOSPC. The journal must keep its
 * segments: once room is made and the server restarts again, every acknowledged write is back.
 */
export async function replayOnFullDisk(seed: number): Promise<ScenarioResult> {
  const random = seededRandom(seed ^ 0x0e0e0e0e);
  const capacityPages = 700;
  // No checkpoint starts by itself; an eviction may sync a chunk before the cut (then its replay
  // needs no new pages: not every seed runs out of space, the test counts those that do).
  const sim = new StoreSim(scenarioConfig(seed, random, { capacityPages }, between(random, 1, 4), 256 * 1024));
  const chunks = await started(sim, between(random, 1, 3));
  if (random() < 0.5) await sim.checkpoint();
  await acknowledgedWrites(sim, random, chunks, between(random, 2, 10));
  await sim.powerCut('dropUnsynced', false, async (disk) => {
    // Something else fills the disk while the server is down: a few pages stay free, not enough.
    const free = capacityPages - disk.pagesAllocated - between(random, 0, 3);
    const filler = await disk.open('/srv/filler', 'create');
    if (free > 0) await filler.write(Buffer.alloc(free * BLOCK), 0, free * BLOCK, 0);
    await filler.close();
  });
  return { problem: sim.report(), stats: { ...sim.stats, faults: sim.disk.faults.length } };
}

/**
 * A chunk file's sync fails while the journal replays at a restart (one chunk open at a time, so
 * the replay evicts, and an eviction's sync fails; or the sync that ends the replay fails). The
 * journal must be kept: the server starts without taking writes, and after one more power cut
 * and restart every acknowledged write is back.
 */
export async function syncFailsDuringReplay(seed: number): Promise<ScenarioResult> {
  const random = seededRandom(seed ^ 0x0f0f0f0f);
  const sim = new StoreSim(scenarioConfig(seed, random, {}, 1, 1024 * 1024));
  const chunks = await started(sim, between(random, 2, 4));
  await acknowledgedWrites(sim, random, chunks, between(random, 3, 12));
  // The target has a record to replay (a write EIO on its .data fails that record's replay).
  const target = pick(random, chunks);
  await acknowledgedWrites(sim, random, [target], 1);
  const file = `/${target.chunkId}.${random() < 0.5 ? 'data' : 'sums'}`;
  const kind = random() < 0.5 ? 'syncEio' : 'writeEio';
  await sim.powerCut(random() < 0.5 ? 'random' : 'dropUnsynced', false, async (disk) => {
    disk.inject({ kind, path: (path) => path.endsWith(file) });
  });
  const fired = sim.disk.faults.some((fault) => fault.path.endsWith(file));
  if (fired && sim.store.journal.healthError === null) sim.fail(`${kind} on ${file} during the replay, yet the journal takes writes`);
  await sim.powerCut('dropUnsynced', false);
  return { problem: sim.report(), stats: { ...sim.stats, faults: sim.disk.faults.length, injectedFaultFired: fired ? 1 : 0 } };
}

/**
 * In-place writes (src/cs/store/block_io.ts) over blocks whose older journalled writes are still
 * in the journal: a few small (journalled) writes to a region, an in-place write over it, maybe a
 * small write after, all acknowledged or the last ones in flight at a power cut (or a kill) before
 * any checkpoint. Replay must not put the older journalled bytes back over the newer in-place
 * ones, must give no block a sum its bytes do not match (old bytes never take the in-place
 * write's sums), and must keep every acknowledged write; the restart's checks read every block.
 */
export async function inPlaceOverJournalled(seed: number): Promise<ScenarioResult> {
  const random = seededRandom(seed ^ 0x1b2c3d4e);
  const inPlaceBytes = pick(random, [8, 16]) * 1024;
  const sim = new StoreSim({ ...scenarioConfig(seed, random, {}, between(random, 1, 3), 1024 * 1024), inPlaceWriteBytesMin: inPlaceBytes });
  const chunks = await started(sim, 2);
  const chunk = pick(random, chunks);
  const size = chunk.model.sizeBytes;
  const regionBytes = inPlaceBytes + between(random, 0, 2) * BLOCK;
  const regionStart = between(random, 0, (size - regionBytes) / BLOCK) * BLOCK;
  const smallWrite = (): Promise<boolean> => {
    const offsetBytes = regionStart + between(random, 0, regionBytes - 1);
    const lengthBytes = between(random, 1, Math.min(regionStart + regionBytes - offsetBytes, inPlaceBytes - 1));
    return sim.write(chunk, offsetBytes, sim.pattern(offsetBytes, lengthBytes), null);
  };
  for (let i = between(random, 1, 4); i > 0; i -= 1) {
    if (!(await smallWrite())) sim.fail('a journalled write failed with no fault armed');
  }
  // The in-place write: aligned or not, covering the region; awaited, or in flight at the cut.
  const shift = random() < 0.5 ? 0 : between(random, 1, BLOCK - 1);
  const bigStart = Math.max(0, regionStart - shift);
  const bigBytes = Math.min(size - bigStart, regionBytes + shift);
  const inFlight = random() < 0.3;
  if (inFlight) sim.start(() => sim.write(chunk, bigStart, sim.pattern(bigStart, bigBytes), null));
  else if (!(await sim.write(chunk, bigStart, sim.pattern(bigStart, bigBytes), null))) sim.fail('the in-place write failed with no fault armed');
  if (!inFlight && random() < 0.5 && !(await smallWrite())) sim.fail('a journalled write after the in-place one failed');
  if (inFlight) await turns(between(random, 0, 40));
  if (random() < 0.3) await sim.processCrash();
  await sim.powerCut(random() < 0.5 ? 'random' : 'dropUnsynced', false);
  await readAll(sim, chunks);
  return { problem: sim.report(), stats: { ...sim.stats, inFlight: inFlight ? 1 : 0 } };
}
