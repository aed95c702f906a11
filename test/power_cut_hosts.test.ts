// Power cuts of one host while the rest of the cluster runs, and a whole-cluster cut while a
// returning server is being brought up to date.
//   - One chunk server's host: its acknowledged data must be intact on it when it comes back.
//     With the writes stopped before the cut, nothing may be copied to it at all (the MDS compares
//     its replicas with the other members after its unclean stop: any byte copied is a byte it
//     lost); with writes going on, only what changed while it was away may be copied, never whole
//     chunks (counted where copies land: shoal_cs_replica_fill_bytes_total on that server). Its
//     replicas' files are then compared byte for byte with the other members'.
//   - The MDS's host, while writes go on and new chunks are being allocated: writes pause and
//     resume by themselves, and every acknowledged write (allocations included) survives.
//   - The whole cluster while a server that was away catches up (replica fill in progress).
// After each cut: every server online, every chunk healthy, the volume reads back as the model
// says, and no daemon logged a checksum mismatch or journal damage.
//
// MDS timeouts: FAST_MDS_ARGS (a silent server is offline after 2 s) but --replace-after-ms
// 120000, so that a host away for the seconds a power cut and restart take is waited for and
// brought up to date, not replaced (which would copy whole chunks elsewhere); re-replication at
// 1 MiB/s, so that a catch-up of a few MiB is still running when the cut comes.
// SHOAL_POWER_CUT_SEED=n runs every random-mode cut with seed n.

import t from 'tap';
import type { CutMode } from './helpers/power_cut.ts';
import { FAST_CS_ARGS, FAST_MDS_ARGS, FAST_NBD_ARGS, eventually } from './helpers/faults.ts';
import { MiB, PowerCutRun, cutSeeds, describeCuts, describeMode, waitFor } from './helpers/power_cut_run.ts';
import { seededRandom } from '../src/util/clock.ts';

const CHUNK_BYTES = 1 * MiB;
/** Chunks written in the first subtest; the rest stay new until the MDS's host is cut. */
const WRITTEN_CHUNKS = 32;
const FRESH_CHUNKS = 16;
const VOLUME_BYTES = (WRITTEN_CHUNKS + FRESH_CHUNKS) * CHUNK_BYTES;
const FILL_METRIC = 'shoal_cs_replica_fill_bytes_total';
const QUIET_SEEDS = cutSeeds([51]);
const MDS_SEEDS = cutSeeds([61]);

t.setTimeout(900_000);

const modes = (seeds: readonly number[]): CutMode[] => [{ mode: 'none' }, ...seeds.map((seed) => ({ mode: 'random' as const, seed }))];

t.test('power cuts of one host while the others run', async (t) => {
  const run = await PowerCutRun.start(t, {
    chunkServers: 4,
    volumeBytes: VOLUME_BYTES,
    chunkBytes: CHUNK_BYTES,
    mdsArgs: [...FAST_MDS_ARGS, '--replace-after-ms', '120000', '--recovery-bytes-per-second', String(1 * MiB)],
    csArgs: FAST_CS_ARGS,
    nbdArgs: FAST_NBD_ARGS,
  });
  const { cluster, model } = run;
  const writtenBlocks = WRITTEN_CHUNKS * run.chunkBlocks;

  /** Bytes copied into each server (their current incarnations) and between members (the MDS's count). */
  const copies = async (): Promise<{ fills: number[]; settled: number }> => ({
    fills: await Promise.all(cluster.chunkServers.map((_, index) => cluster.csMetric(index, FILL_METRIC))),
    settled: (await cluster.admin.stat()).recovery.settledBytes,
  });
  const replicasOn = async (index: number): Promise<number> => {
    const id = await cluster.chunkServerId(index);
    return (await cluster.admin.listChunkServers()).chunkServers.find((s) => s.id === id)?.mappedReplicaCount ?? 0;
  };

  await t.test('the volume is written once, acknowledged', async (t) => {
    run.model.phase = t.name;
    const writer = await run.startWriter(run.writerOptions(7, 0, writtenBlocks, { pattern: 'fresh', freshStrideBlocks: run.chunkBlocks, maxBlocks: 64 }));
    await writer.finish();
    t.equal(writer.failures.length, 0, `no write failed (${writer.failures.join('; ')})`);
    await run.checkRecovered(t, 'before any cut');
  });

  for (const mode of modes(QUIET_SEEDS)) {
    await t.test(`one chunk server's host, writes stopped before the cut: nothing is copied to it, ${describeMode(mode)}`, async (t) => {
      run.model.phase = t.name;
      t.setTimeout(240_000);
      const seed = mode.mode === 'random' ? mode.seed : 1;
      const writer = await run.startWriter(run.writerOptions(seed, 0, writtenBlocks));
      await writer.waitAcknowledged(150, 60_000);
      await writer.stop();
      t.equal(writer.failures.length, 0, `every write was acknowledged before the cut (${writer.acknowledgedWrites})`);
      const victim = Math.floor(seededRandom(seed)() * cluster.chunkServerCount);
      const held = await replicasOn(victim);
      const before = await copies();
      const cut = await cluster.cutChunkServer(victim, mode);
      await cluster.waitOnline();
      const back = await run.waitHealthy();
      t.ok(back.healthy, `the cluster came back healthy by itself within ${back.waitedMs} ms (${back.summary})`);
      const after = await copies();
      const othersCopied = after.fills.reduce((sum, fill, index) => sum + (index === victim ? 0 : fill - (before.fills[index] ?? 0)), 0);
      t.equal(after.fills[victim], 0,
        `cs${victim}'s host lost nothing it had acknowledged: no byte was copied to it after its cut (it holds ${held} replicas); ` +
        `${describeCuts([cut])}`);
      t.equal(othersCopied + after.settled - before.settled, 0, `and nothing was copied anywhere else (${othersCopied} filled, ${after.settled - before.settled} settled)`);
      await run.checkReplicasIdentical(t, `cs${victim} cut alone, ${describeMode(mode)}`);
      await run.checkRecovered(t, `cs${victim} cut alone, writes stopped, ${describeMode(mode)}`);
    });
  }

  await t.test("one chunk server's host under writes: only what changed while it was away is copied to it, mode 'none'", async (t) => {
    run.model.phase = t.name;
    t.setTimeout(240_000);
    const writer = await run.startWriter(run.writerOptions(2, 0, writtenBlocks, { concurrency: 4 }));
    await writer.waitAcknowledged(50, 60_000);
    const victim = 3;
    const held = await replicasOn(victim);
    const ackedBefore = writer.acknowledgedBytes;
    const inFlightAtCut = model.inFlightBytes;
    const cut = await cluster.cutChunkServer(victim, { mode: 'none' });
    await cluster.waitOnline();
    await writer.stop();
    t.equal(writer.failures.length, 0, `the writer saw no error while the host was away (${writer.failures.join('; ')})`);
    const changedBytes = writer.acknowledgedBytes - ackedBefore + inFlightAtCut;
    const back = await run.waitHealthy();
    t.ok(back.healthy, `the cluster came back healthy by itself within ${back.waitedMs} ms (${back.summary})`);
    const filled = await cluster.csMetric(victim, FILL_METRIC);
    t.ok(filled <= changedBytes,
      `cs${victim} got back ${filled} bytes, no more than was written while it was away (${changedBytes} bytes, in flight at the cut included); ` +
      `its ${held} replicas whole would be ${held * CHUNK_BYTES} bytes; ${describeCuts([cut])}`);
    await run.checkReplicasIdentical(t, `cs${victim} cut alone under writes`);
    await run.checkRecovered(t, `cs${victim} cut alone under writes, mode 'none'`);
  });

  for (const mode of modes(MDS_SEEDS)) {
    await t.test(`the MDS's host under writes and allocations of new chunks, ${describeMode(mode)}`, async (t) => {
      run.model.phase = t.name;
      t.setTimeout(240_000);
      const seed = mode.mode === 'random' ? mode.seed : 3;
      const steady = await run.startWriter(run.writerOptions(seed, 0, writtenBlocks, { concurrency: 4 }));
      await steady.waitAcknowledged(30, 60_000);
      const firstFresh = WRITTEN_CHUNKS + (mode.mode === 'none' ? 0 : FRESH_CHUNKS / 2);
      const fresh = await run.startWriter(run.writerOptions(seed + 1, firstFresh * run.chunkBlocks, (FRESH_CHUNKS / 2) * run.chunkBlocks,
        { pattern: 'fresh', freshStrideBlocks: run.chunkBlocks, concurrency: 2, maxBlocks: 8 }));
      await fresh.waitAcknowledged(1, 60_000);
      const ackedAtCut = steady.acknowledgedWrites + fresh.acknowledgedWrites;
      const freshAtCut = fresh.acknowledgedWrites;
      const cut = await cluster.cutMds(mode);
      const resumed = await eventually(async () => steady.acknowledgedWrites + fresh.acknowledgedWrites >= ackedAtCut + 30, 60_000);
      await Promise.all([steady.stop(), fresh.finish()]);
      t.ok(resumed, `writes resumed by themselves after the MDS came back (${ackedAtCut} acknowledged at the cut, ` +
        `${steady.acknowledgedWrites + fresh.acknowledgedWrites} in all); ${describeCuts([cut])}`);
      t.equal(fresh.acknowledgedWrites, FRESH_CHUNKS / 2,
        `every first write to a new chunk was acknowledged, ${FRESH_CHUNKS / 2 - freshAtCut} of them sent before the cut and allocated after it`);
      t.same([...steady.failures, ...fresh.failures], [], 'no write failed');
      await run.checkRecovered(t, `the MDS's host cut alone, ${describeMode(mode)}`);
    });
  }

  await t.test("the whole cluster while a returning server catches up, mode 'none'", async (t) => {
    run.model.phase = t.name;
    t.setTimeout(240_000);
    const writer = await run.startWriter(run.writerOptions(4, 0, writtenBlocks, { concurrency: 4 }));
    await writer.waitAcknowledged(20, 60_000);
    const away = 0;
    await cluster.killChunkServer(away);
    // A few MiB change while it is away: at 1 MiB/s its catch-up takes seconds.
    const ackedWhenKilled = writer.acknowledgedBytes;
    await waitFor('3 MiB written while the server is away', async () => writer.acknowledgedBytes - ackedWhenKilled >= 3 * MiB, 120_000, 50);
    await cluster.startChunkServer(away);
    let filled = 0;
    await waitFor('the returning server being filled', async () => {
      filled = await cluster.csMetric(away, FILL_METRIC);
      return filled > 0;
    }, 60_000, 25);
    const { recovery } = await cluster.admin.stat();
    const cuts = await cluster.cutAll({ mode: 'none' });
    await writer.stop();
    t.ok(recovery.running > 0,
      `the cut came while cs${away} was being brought up to date (${filled} bytes filled, ${recovery.running} changes running); ` +
      `${describeCuts(cuts)}; phases: ${cluster.lastCutPhases}`);
    await run.checkRecovered(t, "catch-up, mode 'none'");
    await run.checkReplicasIdentical(t, 'after the catch-up');
  });
});

