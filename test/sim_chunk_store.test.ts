// Seeded power-cut and disk-fault tests of the real chunk store and journal, on a simulated disk
// (src/cs/disk/sim_disk.ts) and catalog (src/cs/store/sim_catalog.ts). What the random runs check is in
// test/sim/store_sim.ts and test/sim/journal_sim.ts; the targeted scenarios (a failed chunk sync
// during a checkpoint, an eviction racing a checkpoint, zeroing without hole punching, a journal
// that cannot be replayed for lack of space or for a failed sync, a cut inside an unsynced journal
// batch) are in test/sim/store_scenarios.ts and test/sim/journal_sim.ts. The simulated disk itself
// is checked first, and the checker is shown to catch a lost write and a rotten block. Seeds run in
// worker threads (test/sim/seed_worker.ts).
//
// A cut that tears a batch that was never synced, while a later record of it landed, is not
// damage: each record knows its position in its batch (see src/cs/journal/record.ts), and these groups check
// that replay tells it from a record lost after it was durable.
//
// Stale writers (test/sim/fence_sim.ts): the request handlers on the store, a lease taken over
// while the old holder's changes wait for locks and syncs; none may land after the takeover.
//
// A failing seed prints SEED=<n> and the command that reruns just that seed (in every group):
//   SHOAL_SIM_SEED=<n> npx tap build/test/sim_chunk_store.test.js
// More seeds than the suite runs (e.g. overnight), from a given first seed:
//   SHOAL_SIM_SEEDS=20000 SHOAL_SIM_FIRST_SEED=1 npx tap build/test/sim_chunk_store.test.js
// SHOAL_SIM_ECHO=1 (with SHOAL_SIM_SEED) prints the store's log and every disk call as they come.

import t, { type Test } from 'tap';
import { SimDisk, type SimDiskOptions } from '../src/cs/disk/sim_disk.ts';
import { SimCatalog } from '../src/cs/store/sim_catalog.ts';
import { SeedPool, type SeedResult, type SimGroup } from './sim/seed_worker.ts';
import { runStoreSeed, storeSimConfig, StoreSim } from './sim/store_sim.ts';
import { SEGMENT_HEADER_BYTES } from '../src/cs/journal/record.ts';

const ONLY = process.env['SHOAL_SIM_SEED'];
const ECHO = process.env['SHOAL_SIM_ECHO'] === '1';
/** Seeds per group in the suite: about 20 s of CPU in all, on two threads. */
const STORE_SEEDS = 400;
const JOURNAL_SEEDS = 1000;
const SCENARIO_SEEDS = 150;
const STALE_WRITER_SEEDS = 60;
/** SHOAL_SIM_SEEDS scales every group: the random store run gets that many, the others in proportion. */
const SCALE = Number(process.env['SHOAL_SIM_SEEDS'] ?? STORE_SEEDS) / STORE_SEEDS;
const FIRST_SEED = Number(process.env['SHOAL_SIM_FIRST_SEED'] ?? 1);
const FAILURES_SHOWN = 5;
/** Two threads: the machine's two cores (the runner's own thread mostly waits). */
const pool = new SeedPool(2);
t.teardown(() => pool.close());

function seedList(suiteCount: number): number[] {
  if (ONLY !== undefined) return [Number(ONLY)];
  return Array.from({ length: Math.max(1, Math.round(suiteCount * SCALE)) }, (_, i) => FIRST_SEED + i);
}

function rerun(seed: number): string {
  return `rerun: SHOAL_SIM_SEED=${seed} npx tap build/test/sim_chunk_store.test.js`;
}

function failureLine(result: SeedResult, shown: number): string {
  const faults = result.faults === null ? '' : `(faults: ${result.faults}) `;
  const tail = result.log !== null && shown === 0 ? `\n  last log lines:\n    ${result.log.split('\n').join('\n    ')}` : '';
  return `SEED=${result.seed}: ${faults}${result.problem ?? ''}\n  ${rerun(result.seed)}${tail}`;
}

/**
 * Runs a group's seeds (in worker threads); every seed must pass. Returns the results, and says
 * how fast it went and what the seeds did in total.
 */
async function group(t: Test, name: string, simGroup: SimGroup, suiteCount: number): Promise<SeedResult[]> {
  const seeds = seedList(suiteCount);
  const startedMs = performance.now();
  const results = await pool.run(simGroup, seeds, ECHO);
  const seconds = (performance.now() - startedMs) / 1000;
  const failures: string[] = [];
  const totals: Record<string, number> = {};
  for (const result of results) {
    if (result.problem !== null) failures.push(failureLine(result, failures.length));
    for (const [key, value] of Object.entries(result.stats)) totals[key] = (totals[key] ?? 0) + value;
  }
  t.comment(`${name}: ${seeds.length} seeds in ${seconds.toFixed(1)} s (${(seeds.length / seconds).toFixed(0)} seeds/s), ${failures.length} failing`);
  if (Object.keys(totals).length > 0) t.comment(`${name} totals: ${JSON.stringify(totals)}`);
  for (const failure of failures.slice(0, FAILURES_SHOWN)) t.comment(failure);
  const failing = results.filter((result) => result.problem !== null).map((result) => result.seed);
  t.equal(failing.length, 0, `${name}: ${failing.length} of ${seeds.length} seeds failed${failing.length > 0 ? ` (seeds ${failing.slice(0, 20).join(', ')})` : ''}`);
  return results;
}

function seedsWith(results: readonly SeedResult[], stat: string): number[] {
  return results.filter((result) => (result.stats[stat] ?? 0) > 0).map((result) => result.seed);
}

// ---- the simulated disk itself --------------------------------------------------------------------

const never = (): number => 0.99; // random() < 0.5 never holds: nothing lands, no fault by chance

function simDisk(options: Partial<SimDiskOptions> = {}): SimDisk {
  return new SimDisk({ random: never, ...options });
}

async function writeFile(disk: SimDisk, path: string, bytes: Buffer, position = 0): Promise<void> {
  const handle = await disk.open(path, 'create');
  await handle.write(bytes, 0, bytes.length, position);
  await handle.close();
}

t.test('the simulated disk keeps Linux\'s durability rules', async (t) => {
  t.test('writes are volatile until datasync; a cut drops what was never synced', async (t) => {
    const disk = simDisk();
    await disk.mkdir('/d');
    await disk.syncDirectory('/');
    const handle = await disk.open('/d/f', 'create');
    await disk.syncDirectory('/d');
    await handle.write(Buffer.alloc(5000, 1), 0, 5000, 0);
    await handle.datasync();
    await handle.write(Buffer.alloc(100, 2), 0, 100, 8192);
    t.same((await disk.readFile('/d/f')).subarray(8192), Buffer.alloc(100, 2), 'reads see the page cache');
    const { disk: after, report } = disk.powerCut({ mode: 'dropUnsynced' });
    t.same(await after.readFile('/d/f'), Buffer.alloc(5000, 1), 'the synced part survives, the unsynced write and size do not');
    t.equal(report.droppedPages, 1);
    await t.rejects(handle.read(Buffer.alloc(1), 0, 1, 0), { code: 'EIO' }, 'handles of the dead disk fail');
    await t.rejects(disk.readdir('/d'), { code: 'EIO' }, 'so does the dead disk');
    await handle.close();
  });

  t.test('a handle opened for durable writes (O_DSYNC) syncs each write before it returns', async (t) => {
    const disk = simDisk();
    const handle = await disk.open('/j', 'create', { durableWrites: true });
    await disk.syncDirectory('/');
    t.ok(handle.durableWrites);
    await handle.writev([Buffer.alloc(100, 3), Buffer.alloc(5000, 4)], 0);
    await handle.write(Buffer.alloc(10, 5), 0, 10, 5100);
    const plain = await disk.open('/p', 'create');
    await disk.syncDirectory('/');
    t.notOk(plain.durableWrites);
    await plain.write(Buffer.alloc(10, 6), 0, 10, 0);
    const { disk: after } = disk.powerCut({ mode: 'dropUnsynced' });
    t.same(await after.readFile('/j'), Buffer.concat([Buffer.alloc(100, 3), Buffer.alloc(5000, 4), Buffer.alloc(10, 5)]), 'both writes survive without a datasync');
    t.same(await after.readFile('/p'), Buffer.alloc(0), 'a plain handle\'s write does not');
  });

  t.test('a file whose directory entry was never synced is gone after a cut', async (t) => {
    const disk = simDisk();
    const handle = await disk.open('/kept', 'create');
    await handle.write(Buffer.alloc(10, 1), 0, 10, 0);
    await handle.sync();
    await disk.syncDirectory('/');
    await writeFile(disk, '/lost', Buffer.alloc(10, 1));
    await disk.rename('/kept', '/renamed');
    const { disk: after } = disk.powerCut({ mode: 'dropUnsynced' });
    t.same((await after.readdir('/')).sort(), ['kept'], 'the unsynced create and rename are undone');
  });

  t.test('a failed datasync leaves pages readable but never durable; the next one "succeeds"', async (t) => {
    const disk = simDisk();
    disk.inject({ kind: 'syncEio', path: (path) => path === '/f' });
    const handle = await disk.open('/f', 'create');
    await disk.syncDirectory('/');
    await handle.write(Buffer.alloc(4096, 7), 0, 4096, 0);
    await t.rejects(handle.datasync(), { code: 'EIO' });
    t.same(await disk.readFile('/f'), Buffer.alloc(4096, 7), 'still in the page cache');
    await handle.datasync();
    t.same(disk.faults.map((fault) => fault.kind), ['syncEio']);
    const { disk: after } = disk.powerCut({ mode: 'random' });
    t.same(await after.readFile('/f'), Buffer.alloc(4096, 0), 'the page never reached the disk; only the size did');
  });

  t.test('a torn multi-page write: a cut lands some dirty pages and not others', async (t) => {
    const disk = simDisk();
    await writeFile(disk, '/f', Buffer.alloc(8192, 1));
    const handle = await disk.open('/f', 'readWrite');
    await handle.sync();
    await disk.syncDirectory('/');
    await handle.write(Buffer.alloc(8192, 2), 0, 8192, 0);
    const { disk: after } = disk.powerCut({ mode: 'random', landPage: (_path, page) => page === 1 });
    const bytes = await after.readFile('/f');
    t.ok(bytes.subarray(0, 4096).every((b) => b === 1) && bytes.subarray(4096).every((b) => b === 2), 'old first page, new second');
  });

  t.test('a full disk gives a short write, then ENOSPC; hole punching frees space or is unsupported', async (t) => {
    const disk = simDisk({ faults: { capacityPages: 2 } });
    const handle = await disk.open('/f', 'create');
    t.equal(await handle.write(Buffer.alloc(3 * 4096, 1), 0, 3 * 4096, 0), 2 * 4096, 'short write');
    await t.rejects(handle.write(Buffer.alloc(4096, 1), 0, 4096, 2 * 4096), { code: 'ENOSPC' });
    await handle.punchHole(0, 4096);
    t.equal(await handle.write(Buffer.alloc(4096, 1), 0, 4096, 2 * 4096), 4096, 'room again');
    const noPunch = simDisk({ faults: { punchHole: false } });
    const other = await noPunch.open('/g', 'create');
    await t.rejects(other.punchHole(0, 4096), { code: 'ENOTSUP' });
  });

  t.test('errors carry node:fs codes', async (t) => {
    const disk = simDisk();
    await writeFile(disk, '/f', Buffer.alloc(1));
    await t.rejects(disk.open('/missing', 'readWrite'), { code: 'ENOENT' });
    await t.rejects(disk.open('/f', 'createExclusive'), { code: 'EEXIST' });
    await t.rejects(disk.open('/f/x', 'create'), { code: 'ENOTDIR' });
    await t.rejects(disk.readdir('/nope'), { code: 'ENOENT' });
  });

  t.test('a catalog put is durable once it resolves; a reopened catalog has only those', async (t) => {
    const catalog = new SimCatalog({ latency: () => new Promise<void>((resolve) => setImmediate(resolve)) });
    await catalog.putChunk({ chunkId: 1, volumeId: 1, chunkIndex: 0, sizeBytes: 65536, version: 1, generation: 1 });
    const inFlight = catalog.putChunk({ chunkId: 2, volumeId: 1, chunkIndex: 1, sizeBytes: 65536, version: 1, generation: 1 });
    const after = catalog.powerCut();
    await t.rejects(inFlight, { code: 'EIO' });
    t.same(after.listChunks(0, 10).map((meta) => meta.chunkId), [1]);
  });
});

// ---- the chunk store -------------------------------------------------------------------------------

t.test('random workloads, faults and power cuts: nothing acknowledged is lost', async (t) => {
  t.setTimeout(600_000);
  const results = await group(t, 'store', 'store', STORE_SEEDS);
  const stats = (key: string): number => results.reduce((sum, result) => sum + (result.stats[key] ?? 0), 0);
  if (ONLY === undefined) t.ok(stats('acked') > results.length * 10 && stats('powerCuts') > results.length, 'the seeds did real work');
  const falseDamage = seedsWith(results, 'falseJournalDamage');
  t.equal(falseDamage.length, 0, `the journal reports no damage after benign cuts (seeds ${falseDamage.slice(0, 10).join(', ')})`);
});

t.test('(A) a chunk sync that fails during a checkpoint stops writes and keeps the journal', async (t) => {
  await group(t, 'chunk sync failure', 'chunkSyncFailure', SCENARIO_SEEDS);
});

t.test('(B) an eviction racing a checkpoint: the checkpoint waits for its sync', async (t) => {
  await group(t, 'eviction racing a checkpoint', 'evictionRacingCheckpoint', SCENARIO_SEEDS);
});

t.test('zeroing without hole punching (ENOTSUP) writes zeroes instead', async (t) => {
  await group(t, 'zero without hole punching', 'zeroWithoutHolePunching', SCENARIO_SEEDS);
});

t.test('a journal that cannot be replayed for lack of space is kept until it can be', async (t) => {
  const results = await group(t, 'replay on a full disk', 'replayOnFullDisk', SCENARIO_SEEDS);
  const full = seedsWith(results, 'fullRestarts').length;
  t.ok(full >= results.length * 0.7 || ONLY !== undefined, `${full} of ${results.length} seeds ran out of space at the restart`);
});

t.test('a chunk sync that fails while the journal replays keeps the journal', async (t) => {
  const results = await group(t, 'sync fails during replay', 'syncFailsDuringReplay', SCENARIO_SEEDS);
  const fired = seedsWith(results, 'injectedFaultFired').length;
  t.ok(fired >= results.length * 0.9 || ONLY !== undefined, `the injected fault fired in ${fired} of ${results.length} seeds`);
});

t.test('in-place writes over journalled ones: replay keeps the newer bytes and gives no block a sum it does not match', async (t) => {
  const results = await group(t, 'in place over journalled', 'inPlaceOverJournalled', SCENARIO_SEEDS);
  const inFlight = seedsWith(results, 'inFlight').length;
  t.ok(inFlight >= results.length * 0.1 || ONLY !== undefined, `${inFlight} of ${results.length} seeds cut power with the in-place write in flight`);
});

t.test('stale writers: no change of a fenced holder lands after the takeover was acknowledged', async (t) => {
  const results = await group(t, 'stale writers', 'staleWriters', STALE_WRITER_SEEDS);
  const raced = seedsWith(results, 'inFlightAtTakeover').length;
  // The race must really happen: changes of the old holder still in flight when the takeover came.
  t.ok(raced >= results.length * 0.5 || ONLY !== undefined, `${raced} of ${results.length} seeds had changes of the old holder in flight at the takeover`);
});

t.test('the same seed runs the same way', async (t) => {
  const seed = ONLY === undefined ? 7 : Number(ONLY);
  const first = await runStoreSeed(storeSimConfig(seed));
  const second = await runStoreSeed(storeSimConfig(seed));
  t.same(second.stats, first.stats);
  t.equal(second.log, first.log, 'the same log, line for line');
});

/**
 * The journal's records are gone (each segment keeps only its header, so the store still takes the
 * journal for its own): acknowledged writes since the last checkpoint cannot come back.
 */
async function removeJournal(disk: SimDisk): Promise<void> {
  for (const name of await disk.readdir('/srv/cs/journal')) {
    if (!/^\d{16}\.log$/.test(name)) continue;
    const file = await disk.open(`/srv/cs/journal/${name}`, 'readWrite');
    await file.truncate(SEGMENT_HEADER_BYTES);
    await file.close();
  }
}

/** The journal's segments are gone (as when its device is lost). */
async function removeSegments(disk: SimDisk): Promise<void> {
  for (const name of await disk.readdir('/srv/cs/journal')) {
    if (/^\d{16}\.log$/.test(name)) await disk.remove(`/srv/cs/journal/${name}`);
  }
}

t.test('the checker is not vacuous', async (t) => {
  const lost = await meddled(removeJournal);
  t.match(lost, /holds .*possible/, 'a lost acknowledged write is reported');
  t.match(await meddled(removeSegments), /did not open after the restart: the journal of data directory .* is lost/,
    'a journal whose segments are gone after an unclean stop is refused');
  const rotten = await meddled(async (disk) => {
    // A byte of a synced chunk file flips behind the store's back (and no replay rewrites it: the
    // recycling of the checkpointed segment was not durable yet, so it would come back).
    await removeJournal(disk);
    const chunkDir = (await disk.readdir('/srv/cs/chunks')).sort()[0];
    const name = (await disk.readdir(`/srv/cs/chunks/${chunkDir}`)).find((file) => file.endsWith('.data'));
    const file = await disk.open(`/srv/cs/chunks/${chunkDir}/${name}`, 'readWrite');
    const byte = Buffer.alloc(1);
    await file.read(byte, 0, 1, 100);
    byte[0] = (byte[0] ?? 0) ^ 0xff;
    await file.write(byte, 0, 1, 100);
    await file.close();
  }, true);
  t.match(rotten, /checksum/, 'a block that no longer matches its checksum is reported');
});

/** Acknowledged writes (checkpointed if `checkpoint`), a cut, `meddle`, a restart: the problem found. */
async function meddled(meddle: (disk: SimDisk) => Promise<void>, checkpoint = false): Promise<string | null> {
  const sim = new StoreSim({ ...storeSimConfig(1), faults: {}, openChunksMax: 4 });
  await sim.install();
  await sim.open();
  const chunk = await sim.createChunk();
  await sim.write(chunk, 0, sim.pattern(0, 3 * 4096), null);
  if (checkpoint) await sim.checkpoint();
  await sim.powerCut('dropUnsynced', false, meddle);
  return sim.problem;
}

// ---- the journal alone ------------------------------------------------------------------------------

t.test('journal: random appends, faults and power cuts replay every acknowledged record in order', async (t) => {
  t.setTimeout(600_000);
  const results = await group(t, 'journal', 'journal', JOURNAL_SEEDS);
  const damage = seedsWith(results, 'benignDamageReports');
  t.equal(damage.length, 0, `no damage reported after benign cuts (reported in ${damage.length} seeds: ${damage.slice(0, 10).join(', ')})`);
});

t.test('journal: a cut inside an unsynced batch skips nothing acknowledged', async (t) => {
  const results = await group(t, 'torn batch', 'tornBatch', SCENARIO_SEEDS);
  const damage = seedsWith(results, 'damageReported');
  t.equal(damage.length, 0, `the torn batch is not reported as damage (reported in ${damage.length} of ${results.length}: seeds ${damage.slice(0, 5).join(', ')})`);
});
