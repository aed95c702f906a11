// Hot chunks follow their writer (recovery.ts planFollow), pure: a member on the writer's host
// becomes the primary; with none there, a server there takes the primary's place (and becomes
// primary on a later round); nothing while the pace says wait, for a chunk already local, for a
// chunk missing members, for a server of another tier, or before repairs.

import t from 'tap';
import { planRecovery, type PlannerChunk, type PlannerServer } from '../src/mds/recovery.ts';

const MiB = 1024 * 1024;
const config = { replaceAfterMs: 60_000, replaceEndangeredAfterMs: 30_000, replaceQuorumFraction: 0.5, failureDomain: 'host' as const, actionsMax: 64 };

function server(id: number, overrides: Partial<PlannerServer> = {}): PlannerServer {
  return {
    id, online: true, offlineForMs: 0, adminState: 'active', healthy: true, host: `h${id}`, rack: '', tier: 0,
    capacityBytes: 1024 * MiB, freeBytes: 1024 * MiB, ...overrides,
  };
}

function chunk(replicas: number[], chunkIndex = 0, tier: number | null = null): PlannerChunk {
  return { volumeId: 1, chunkIndex, chunkId: chunkIndex + 1, replicas, replicasNormal: 3, replicasMin: 2, chunkSizeBytes: 8 * MiB, tier, inDoubt: false, detached: [] };
}

function plan(servers: PlannerServer[], chunks: PlannerChunk[], follow: PlannerChunk[], host: string, followAllowed = true) {
  return planRecovery({
    servers, chunks, busy: () => false, config, random: () => 0.5, rebalance: { thresholdFraction: 0.5, move: false },
    follow: follow.map((c) => ({ chunk: c, host })), followAllowed,
  });
}

const four = [server(1), server(2), server(3), server(4)];

t.test('a member on the writer\'s host becomes the primary; with none there, a server there takes the primary\'s place', async (t) => {
  const hot = chunk([1, 2, 3]);
  t.match(plan(four, [], [hot], 'h2').actions, [{ kind: 'promote', csId: 2, reason: 'following its writer to host h2' }]);
  t.match(plan(four, [], [hot], 'h4').actions, [{ kind: 'add', target: 4, thenDrop: 1, purpose: 'locality' }], 'server 4 replaces the primary');
  // The hottest chunk that needs it goes first; one already local is passed over.
  t.match(plan(four, [], [chunk([4, 1, 2], 0), chunk([1, 2, 4], 1)], 'h4').actions, [{ kind: 'promote', csId: 4, chunk: { chunkIndex: 1 } }]);
});

t.test('nothing to follow: the pace says wait, already local, members missing, another tier, repairs first', async (t) => {
  t.same(plan(four, [], [chunk([1, 2, 3])], 'h4', false).actions, [], 'not while the scheduler\'s pace says wait');
  t.same(plan(four, [], [chunk([2, 1, 3])], 'h2').actions, [], 'already primary on the writer\'s host');
  t.same(plan(four, [], [chunk([1, 2])], 'h4').actions, [], 'a chunk missing a member is recovery\'s first');
  t.same(plan([server(1), server(2), server(3), server(4, { tier: 1 })], [], [chunk([1, 2, 3], 0, 0)], 'h4').actions, [],
    'a server of another tier does not take a pinned chunk');
  t.same(plan([server(1), server(2), server(3), server(4, { ill: true })], [], [chunk([1, 2, 3])], 'h4').actions, [], 'nor an ill one');
  t.same(plan([...four, server(5, { host: 'h5' })], [], [chunk([1, 2, 3])], 'nowhere').actions, [], 'a host without servers');
  t.same(plan([server(1), server(2, { maintenance: true, maintenanceWindow: true }), server(3), server(4)], [], [chunk([1, 2, 3])], 'h2').actions, [],
    'not onto a server going down for maintenance, nor while a member is');
  const avoided = planRecovery({
    servers: four, chunks: [], busy: () => false, config, random: () => 0.5, rebalance: { thresholdFraction: 0.5, move: false },
    follow: [{ chunk: chunk([1, 2, 3]), host: 'h4' }], followAllowed: true, avoidTargets: () => [4],
  });
  t.same(avoided.actions, [], 'not onto a server a copy to which failed lately');
  // A chunk below its count elsewhere: repairs go first, and nothing follows meanwhile.
  const repairs = plan([server(1), server(2), server(3), server(4), server(5, { online: false, offlineForMs: 120_000 })],
    [chunk([1, 2, 5], 7)], [chunk([1, 2, 3])], 'h4');
  t.ok(repairs.actions.every((action) => action.kind !== 'promote' && !(action.kind === 'add' && action.purpose === 'locality')), 'repairs first');
});
