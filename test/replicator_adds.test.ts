// Two replicas of one chunk added at once (the planner may ask for both, e.g. after two servers
// failed) while a writer goes on: every member the adds commit must hold every acknowledged write.
// Each add has its source track the writes made during its bulk copy and copies them in its final
// step; run at the same time, the second add's tracking request reset the first's, whose final step
// then missed the writes made in between and committed a member without them.
//
// The real replicator on the simulated servers (test/sim/world.ts); the copy pace yields so that
// writes land between copy steps. A failure prints the seed.

import t from 'tap';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { seededRandom } from '../src/util/clock.ts';
import { BLOCKS_PER_CHUNK, SimWorld, yieldingPace } from './sim/world.ts';

const SEEDS = Number(process.env['SIM_SEEDS'] ?? 200);
const SERVERS = 5;

interface Outcome {
  acked: number;
  /** `csId block: held X, acknowledged Y` for every member block that misses an acknowledged write. */
  missing: string[];
  addsFailed: number;
}

async function runSeed(seed: number): Promise<Outcome> {
  const random = seededRandom(seed);
  const world = new SimWorld(random, SERVERS, { pace: yieldingPace(random) });
  const first = await world.allocate(0);
  if (first === null) throw new Error('allocation failed');
  const acknowledged = new Map<number, number>();
  let nextValue = 1;
  let adding = true;
  // The writer: a write is acknowledged when every member at the map's version applied it (as the
  // primary acknowledges only then); during a seal it is refused (not acknowledged) and retried.
  const writer = (async () => {
    while (adding) {
      await yieldToLoop();
      const entry = world.tables.getChunk(world.volumeId, 0);
      if (entry === undefined || world.replicator.isBusy(entry.chunkId)) continue;
      const replicas = entry.replicas.map((csId) => world.server(csId).replicas.get(entry.chunkId));
      if (replicas.some((replica) => replica?.version !== entry.version)) continue;
      const block = Math.floor(random() * BLOCKS_PER_CHUNK);
      const value = nextValue;
      nextValue += 1;
      for (const replica of replicas) {
        replica!.blocks.set(block, value);
        replica!.changes?.add(block);
      }
      acknowledged.set(block, value);
    }
  })();
  const targets = world.servers.map((server) => server.id).filter((csId) => !first.replicas.includes(csId));
  // An add may fail (the planner retries it later); what it commits must never miss a write.
  // The planner starts them whenever it gets to them: here a few turns of the loop apart.
  const adds = await Promise.allSettled(targets.map(async (target) => {
    const startTurns = Math.floor(random() * 12);
    for (let turn = 0; turn < startTurns; turn += 1) await yieldToLoop();
    return world.replicator.add(world.volumeId, 0, target);
  }));
  adding = false;
  await writer;
  const missing = world.missingAcknowledged(0, acknowledged);
  return { acked: acknowledged.size, missing, addsFailed: adds.filter((add) => add.status === 'rejected').length };
}

t.test('concurrent adds of one chunk under writes: every committed member holds every acknowledged write', async (t) => {
  let acked = 0;
  let addsFailed = 0;
  const failures: string[] = [];
  for (let seed = 1; seed <= SEEDS; seed += 1) {
    const outcome = await runSeed(seed);
    acked += outcome.acked;
    addsFailed += outcome.addsFailed;
    if (outcome.missing.length > 0) failures.push(`seed ${seed}: ${outcome.missing.slice(0, 3).join('; ')}`);
  }
  t.ok(acked > SEEDS * 4, `writes landed during the adds (${acked} blocks acknowledged over ${SEEDS} seeds)`);
  t.ok(addsFailed < SEEDS, `most adds committed (${addsFailed} of ${SEEDS * 2} failed)`);
  t.same(failures.slice(0, 5), [], `${failures.length} of ${SEEDS} seeds lost an acknowledged write`);
});
