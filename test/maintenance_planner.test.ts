// The recovery planner's rules for chunk servers in maintenance, on made-up clusters: a server in
// its window takes back its own older copies but no new replicas; a chunk below its minimum is
// not held back by a maintenance server that looks online; servers away for maintenance do not
// count against the quorum that lets the planner give up a server that really failed.

import t from 'tap';
import { planRecovery, type PlannerChunk, type PlannerServer } from '../src/mds/recovery.ts';

const MiB = 1024 * 1024;
const config = { replaceAfterMs: 60_000, replaceEndangeredAfterMs: 30_000, replaceQuorumFraction: 0.5, failureDomain: 'disk' as const, actionsMax: 64 };
const rebalance = { thresholdFraction: 0.1, move: false };

function server(id: number, overrides: Partial<PlannerServer> = {}): PlannerServer {
  return {
    id, online: true, offlineForMs: 0, adminState: 'active', healthy: true, host: `h${id}`, rack: '', tier: 0, capacityBytes: 1024 * MiB, freeBytes: 1024 * MiB,
    ...overrides,
  };
}

function chunk(replicas: number[], detached: number[] = [], min = 2): PlannerChunk {
  return { volumeId: 1, chunkIndex: 0, chunkId: 1, replicas, replicasNormal: 3, replicasMin: min, chunkSizeBytes: 8 * MiB, tier: 0, inDoubt: false, detached };
}

const plan = (servers: PlannerServer[], chunks: PlannerChunk[]) => planRecovery({ servers, chunks, busy: () => false, config, rebalance, random: () => 0.5 });

t.test('a server in its maintenance window takes back its own copies only', async (t) => {
  const window = server(4, { maintenanceWindow: true, maintenance: true });
  const repair = plan([server(1), server(2), server(3, { online: false, offlineForMs: 120_000 }), window], [chunk([1, 2, 3])]);
  t.match(repair.actions, [{ kind: 'drop', csIds: [3] }], 'the failed server is given up');
  const after = plan([server(1), server(2), server(3, { online: false, offlineForMs: 120_000, adminState: 'removed' }), window], [chunk([1, 2])]);
  t.same(after.actions, [], 'no new replica goes to the server in its window');
  t.equal(after.blocked, 1, 'the chunk waits for another server instead');
  const back = plan([server(1), server(2), window], [chunk([1, 2], [4])]);
  t.match(back.actions, [{ kind: 'add', target: 4 }], 'but it takes back the chunk it held an older copy of (it copies what changed)');
});

t.test('a chunk below its minimum is not held back by a maintenance server that looks online', async (t) => {
  // Server 3 is in maintenance, its write just failed (suspect: unhealthy, still online); server 2 is gone.
  const servers = [server(1), server(2, { online: false, offlineForMs: 10_000 }), server(3, { maintenance: true, maintenanceWindow: true, healthy: false }), server(4)];
  const below = plan(servers, [chunk([1], [3], 2)]);
  t.match(below.actions, [{ kind: 'add', target: 4 }], 'one live copy below a minimum of two: a copy is made at once');
  const atMin = plan(servers, [chunk([1, 4], [3], 2)]);
  t.same(atMin.actions, [], 'at its minimum, the chunk waits for the maintenance server');
  t.equal(atMin.waiting, 1);
});

t.test('servers away for maintenance do not count against the quorum', async (t) => {
  const failed = server(3, { online: false, offlineForMs: 120_000 });
  const inMaintenance = [server(4, { online: false, offlineForMs: 120_000, maintenance: true }), server(5, { online: false, offlineForMs: 120_000, maintenance: true })];
  const result = plan([server(1), server(2), failed, ...inMaintenance], [chunk([1, 2, 3])]);
  t.match(result.actions, [{ kind: 'drop', csIds: [3] }], 'two online of three counted: the failed server is given up');
  const unplanned = plan([server(1), server(2), failed, server(4, { online: false, offlineForMs: 120_000 }), server(5, { online: false, offlineForMs: 120_000 })],
    [chunk([1, 2, 3])]);
  t.same(unplanned.actions, [], 'with the same two servers simply offline, two of five online is no quorum: nothing is given up');
});
