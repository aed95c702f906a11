// The decisions around a rebalance task, driven by explicit time on a real MDS store and the real
// recovery planner over a made-up cluster: the MDS starts one by itself when the servers drift
// beyond its threshold; one that can move nothing (failure domains in the way) fails after
// STUCK_FAIL_AFTER_MS saying why; after a failure or a cancel the MDS starts none by itself for
// AUTO_REBALANCE_HOLDOFF_MS, while an admin still can; with the MDS's own rebalancing off, an
// admin must name a threshold.

import t from 'tap';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MdsStore } from '../src/mds/store.ts';
import { planRecovery, type PlannerChunk, type PlannerServer, type RebalanceJudgement } from '../src/mds/recovery.ts';
import { AUTO_REBALANCE_HOLDOFF_MS, STUCK_FAIL_AFTER_MS, Tasks, rebalanceModeOf } from '../src/mds/tasks.ts';
import type { Logger } from '../src/util/log.ts';

const MiB = 1024 * 1024;
const silent: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };
const AUTO_THRESHOLD = 0.1;

/**
 * Four servers with failure domain "host": 1, 2 and 3 on hosts a, b, c hold every chunk; 4 is
 * empty, on host a. Any chunk moved from the fullest server to 4 would put two of its copies on
 * host a: the planner can never move one.
 */
function stuckCluster(): { servers: PlannerServer[]; chunks: PlannerChunk[] } {
  const server = (id: number, host: string): PlannerServer => ({
    id, online: true, offlineForMs: 0, adminState: 'active', healthy: true, host, rack: '', tier: 0, capacityBytes: 100 * MiB, freeBytes: 100 * MiB,
  });
  const chunks = Array.from({ length: 10 }, (_, index): PlannerChunk => ({
    volumeId: 1, chunkIndex: index, chunkId: index + 1, replicas: [1, 2, 3], replicasNormal: 3, replicasMin: 2,
    chunkSizeBytes: 8 * MiB, tier: 0, inDoubt: false, detached: [],
  }));
  return { servers: [server(1, 'a'), server(2, 'b'), server(3, 'c'), server(4, 'a')], chunks };
}

t.test('rebalance tasks: started by the MDS, failing when stuck, held off after, always open to an admin', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'shoal-rebalance-'));
  const store = await MdsStore.open(join(dir, 'mds.db'));
  t.teardown(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  const clock = { now: 1_000_000, nowMs(): number { return this.now; } };
  const world = stuckCluster();
  let judgement: RebalanceJudgement | null = null;
  // The MDS's recovery tick: plan under whatever the store's tasks allow.
  const plan = (): number => {
    const { rebalance } = rebalanceModeOf(store.tables, AUTO_THRESHOLD);
    judgement = planRecovery({
      servers: world.servers, chunks: world.chunks, busy: () => false, rebalance, random: () => 0.5,
      config: { replaceAfterMs: 300_000, replaceEndangeredAfterMs: 60_000, replaceQuorumFraction: 0.5, failureDomain: 'host', actionsMax: 64 },
    }).rebalance;
    return 0;
  };
  const tasks = new Tasks({
    store, clock, log: silent, replan: plan, blockedChunks: () => 0, misplacedStuckChunks: () => 0, volumeName: () => null,
    rebalance: () => ({ judgement, movesInFlight: 0, averageReplicaBytes: 8 * MiB }), autoRebalanceThreshold: AUTO_THRESHOLD,
  });
  const tick = async (advanceMs: number): Promise<void> => {
    clock.now += advanceMs;
    plan();
    await tasks.tick();
  };
  const rebalances = () => tasks.list().filter((task) => task.kind === 'rebalance');

  clock.now += 1_000;
  plan();
  t.match(judgement, { outcome: 'wanted', mode: { move: false } }, 'no task yet: the planner only judges, and wants a rebalance');
  await tasks.tick();
  const started = rebalances();
  t.equal(started.length, 1, 'the MDS started one by itself');
  t.match(started[0], { startedBy: 'mds', thresholdPercent: 5, state: 'running' }, 'to half its threshold, so that it does not stop at the edge');
  t.ok((started[0]?.progress.bytesTotal ?? 0) > 0, `with an estimate of what is left: ${started[0]?.progress.bytesTotal} bytes`);

  await tick(1_000);
  t.match(judgement, { outcome: 'stuck', mode: { move: true } }, 'under the task, the planner finds no replica it may move');
  t.match(tasks.get(started[0]!.id), { state: 'running', note: /^no replica can move now: every replica on chunk server 3 \(the fullest\) that could move would put two copies/ },
    'not failed at once (a target may free up), and it says why it is stuck');
  await tick(STUCK_FAIL_AFTER_MS / 2);
  t.equal(tasks.get(started[0]!.id).state, 'running', 'still running half-way');
  await tick(STUCK_FAIL_AFTER_MS / 2 + 1_000);
  const failed = tasks.get(started[0]!.id);
  t.equal(failed.state, 'failed', `after ${STUCK_FAIL_AFTER_MS / 1000} s stuck it fails`);
  t.match(failed.error, /^cannot balance further: the servers are 80 points apart, the threshold is 5, and every replica on chunk server 3 \(the fullest\) .* in one host failure domain: add servers in other hosts or use a larger threshold$/);

  await tick(1_000);
  t.match(judgement, { outcome: 'wanted', mode: { move: false } });
  t.equal(rebalances().length, 1, 'after a failure the MDS does not start another by itself at once');
  await tick(AUTO_REBALANCE_HOLDOFF_MS - 5_000);
  t.equal(rebalances().length, 1, 'nor within the hold-off');
  const admin = await tasks.startRebalance(20, 'admin-key');
  t.match(admin, { created: true, task: { startedBy: 'admin', thresholdPercent: 20, state: 'running' } }, 'an admin still can');
  t.match(await tasks.startRebalance(20, 'admin-key'), { created: false, task: { id: admin.task.id } }, 'the same key returns it');
  await t.rejects(tasks.startRebalance(null, null), { code: 'ERR_TASK_CONFLICT', message: new RegExp(`already being rebalanced by task ${admin.task.id} `) },
    'a second is refused while it runs');
  const cancelled = await tasks.cancel(admin.task.id);
  t.match(cancelled, { state: 'cancelled', error: 'cancelled by an admin' });
  await tick(10_000);
  t.equal(rebalances().length, 2, 'the hold-off counts from the newest cancel or failure');
  await tick(AUTO_REBALANCE_HOLDOFF_MS);
  const again = rebalances();
  t.equal(again.length, 3, 'after the hold-off the MDS starts one again');
  t.match(again.at(-1), { startedBy: 'mds', state: 'running' });

  // A tighter task an admin asked for that fails does not hold off the MDS's own.
  const running = again.at(-1)!;
  await tasks.cancel(running.id);
  clock.now += AUTO_REBALANCE_HOLDOFF_MS + 1_000;
  const tight = await tasks.startRebalance(1, null);
  await tick(1_000);
  await tick(STUCK_FAIL_AFTER_MS + 1_000);
  t.equal(tasks.get(tight.task.id).state, 'failed', 'an admin\'s task to within 1 point fails, stuck');
  await tick(1_000);
  t.match(rebalances().at(-1), { startedBy: 'mds', state: 'running', thresholdPercent: 5 }, 'and the MDS starts its own, looser one right after');

  // With the MDS's own rebalancing off, an admin names the threshold.
  const off = new Tasks({
    store, clock, log: silent, replan: plan, blockedChunks: () => 0, misplacedStuckChunks: () => 0, volumeName: () => null,
    rebalance: () => ({ judgement, movesInFlight: 0, averageReplicaBytes: 8 * MiB }), autoRebalanceThreshold: 1,
  });
  await t.rejects(off.startRebalance(null, null), { code: 'ERR_INVALID_ARGUMENT', message: /--rebalance-threshold 100.*--threshold PCT/ });
});

t.test('the planner judges balance only with every active server counted, and one move at a time', async (t) => {
  const { servers, chunks } = stuckCluster();
  const config = { replaceAfterMs: 300_000, replaceEndangeredAfterMs: 60_000, replaceQuorumFraction: 0.5, failureDomain: 'disk' as const, actionsMax: 64 };
  const rebalance = { thresholdFraction: 0.1, move: true };
  const judge = (input: { servers: PlannerServer[]; rebalanceMoveInFlight?: boolean }) =>
    planRecovery({ ...input, chunks, busy: () => false, config, rebalance, random: () => 0.5 });
  const moving = judge({ servers });
  t.match(moving.rebalance, { outcome: 'moving' }, 'failure domain "disk": a move is planned');
  t.equal(moving.actions.length, 1, 'one move');
  t.match(moving.actions[0], { kind: 'add', target: 4, purpose: 'rebalance' });
  t.match(judge({ servers, rebalanceMoveInFlight: true }), { actions: [], rebalance: { outcome: 'moving' } }, 'none while one is under way');
  const unreported = servers.map((s) => (s.id === 2 ? { ...s, capacityBytes: 0, freeBytes: 0 } : s));
  t.match(judge({ servers: unreported }), { actions: [], rebalance: { outcome: 'deferred' } }, 'deferred while a server has not reported its capacity');
  const away = servers.map((s) => (s.id === 4 ? { ...s, online: false, offlineForMs: 10_000 } : s));
  t.match(judge({ servers: away }), { actions: [], rebalance: { outcome: 'deferred' } }, 'deferred while a server is away but expected back');
  const allAway = servers.map((s) => ({ ...s, online: false, offlineForMs: 1_000 }));
  t.match(judge({ servers: allAway }).rebalance, { outcome: 'deferred' }, 'not "balanced" with every server away (an MDS that just started)');
  const givenUp = servers.map((s) => (s.id === 4 ? { ...s, online: false, offlineForMs: 400_000 } : s));
  t.match(judge({ servers: givenUp }).rebalance, { outcome: 'balanced' }, 'a server given up no longer holds balance back');
});
