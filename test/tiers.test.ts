// Storage tiers on a real cluster: four chunk servers of tier 0 and three small ones of tier 1.
// Volumes' chunks land only on their tier (a volume created without one may use any); a full tier spills to the nearest one, counted as
// misplaced, and the spilled replicas move back once space returns; `shoal volume set --tier`
// and `shoal cs set-tier` move live data, each followed by the CLI to the end of its task, while
// fio writes and verifies the volume being moved (zero errors); a server's tier set by an admin
// outlives a restart with its old --tier flag.

import t, { type Test } from 'tap';
import { cliRunner } from './helpers/cli.ts';
import { startCluster, type LocalCluster } from './helpers/cluster.ts';
import { eventually } from './helpers/eventually.ts';
import { postAdmin } from './helpers/admin_api.ts';
import { run, runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
const CHUNK_BYTES = 4 * MiB;
/** An empty test chunk server uses about 17 MB (journal, catalog): room for about 11 chunks of 4 MiB. */
const TIER1_CAPACITY = '64M';

/** Where each of a volume's replicas sits: tier by chunk server id. */
async function tiersOf(cluster: LocalCluster, volume: string): Promise<number[]> {
  const tierById = new Map((await cluster.admin.listChunkServers()).chunkServers.map((s) => [s.id, s.tier]));
  const { chunks } = await cluster.internal.chunkMap(volume, 0, 1024);
  return chunks.flatMap((chunk) => chunk.replicas.map((replica) => tierById.get(replica.csId) ?? -1));
}

async function misplaced(cluster: LocalCluster, volume: string): Promise<number> {
  return (await cluster.admin.getVolume(volume)).misplacedReplicas;
}

/** fio writing and verifying 4 KiB blocks of `volume` for `seconds`, at iodepth 8. */
function fioVerify(cluster: LocalCluster, volume: string, seconds: number) {
  return run('fio', [
    '--name=verify', '--ioengine=nbd', `--uri=${cluster.nbdUnixUri(volume)}`, '--rw=randrw', '--bs=4k', '--iodepth=8', '--size=16M',
    '--time_based', `--runtime=${seconds}`, '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0', '--output-format=json',
  ], { timeoutMs: (seconds + 60) * 1000 });
}

function fioClean(t: Test, result: { code: number | null; stdout: string; stderr: string }, what: string): void {
  t.equal(result.code, 0, `${what}: fio exits 0\n${result.stderr}`);
  const report = JSON.parse(result.stdout.slice(result.stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { total_ios: number }; read: { total_ios: number } }> };
  const job = report.jobs[0];
  t.equal(job?.error, 0, `${what}: no I/O or verify error (${job?.write.total_ios} writes, ${job?.read.total_ios} verified reads)`);
  t.notMatch(result.stderr, /verify|bad magic|crc32c/i, `${what}: no verify complaint`);
}

t.test('tiers: chunks land on their tier, a full tier spills and comes back, volumes and servers change tier live', async (t) => {
  t.setTimeout(240_000);
  const cluster = await startCluster(t, {
    chunkServers: 7,
    mdsArgs: ['--heartbeat-interval-ms', '200', '--heartbeat-timeout-ms', '1500', '--recovery-bytes-per-second', String(32 * MiB),
      '--rebalance-threshold', '100'],
    csArgsFor: (index) => (index < 4 ? ['--tier', '0'] : ['--tier', '1', '--capacity-bytes', TIER1_CAPACITY]),
  });
  const cli = await cliRunner(t);
  const env = { SHOAL_MDS: cluster.mdsUrl, SHOAL_TOKEN: cluster.adminToken };
  const shoal = (...args: string[]) => cli.shoal(args, env, 120_000);

  // ---- chunks land only on their tier
  await shoal('volume', 'create', 'cold', '--size', '64M', '--chunk-size', '4M', '--tier', '0');
  const created = await shoal('volume', 'create', 'hot', '--size', '64M', '--chunk-size', '4M', '--tier', '1');
  t.match(created.stdout, /created volume "hot"/);
  await shoal('volume', 'create', 'anywhere', '--size', '64M', '--chunk-size', '4M');
  const listed = await shoal('volume', 'list');
  t.match(listed.stdout, /\nanywhere .* any /, 'a volume created without a tier may use any');
  t.match(listed.stdout, /\nhot .* 1 /);
  const noRoom = await cli.shoal(['volume', 'create', 'nowhere', '--size', '64M', '--tier', '3'], env, 60_000);
  t.equal(noRoom.code, 1, 'a tier without servers is refused');
  t.match(noRoom.stderr, /tier 3 has 0 active chunk servers in 0 distinct disk failure domains, and volume "nowhere" keeps 3 copies: add servers to tier 3 first/);
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0xc0 0 16M', cluster.nbdUnixUri('cold')], { timeoutMs: 60_000 });
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x40 0 16M', cluster.nbdUnixUri('hot')], { timeoutMs: 60_000 });
  t.same([...new Set(await tiersOf(cluster, 'cold'))], [0], 'every replica of the tier-0 volume is on tier 0');
  t.same([...new Set(await tiersOf(cluster, 'hot'))], [1], 'every replica of the tier-1 volume is on tier 1');
  t.equal((await tiersOf(cluster, 'hot')).length, 12, '4 chunks, 3 replicas each');

  // ---- a full tier spills to the nearest one, and comes back when space returns
  await cluster.admin.createVolume({ name: 'filler', sizeBytes: 64 * MiB, chunkSizeBytes: CHUNK_BYTES, tier: 1 });
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0xf1 0 48M', cluster.nbdUnixUri('filler')], { timeoutMs: 60_000 });
  await eventually('every tier-1 server to report no room for a chunk', 30_000, async () => {
    const tier1 = (await cluster.admin.listChunkServers()).chunkServers.filter((s) => s.tier === 1);
    // (placement.ts: room is a chunk plus a reserve of 2 % of capacity)
    return tier1.every((s) => s.freeBytes < CHUNK_BYTES + s.capacityBytes * 0.02) ? true : null;
  });
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x41 16M 16M', cluster.nbdUnixUri('hot')], { timeoutMs: 60_000 });
  const spilled = await misplaced(cluster, 'hot');
  t.ok(spilled >= 3, `new chunks of the full tier spilled to tier 0: ${spilled} replicas elsewhere`);
  // The filler's last chunks may have spilled too, when tier 1's free space was reported late.
  const spilledOfTier1 = spilled + await misplaced(cluster, 'filler');
  const stat = await cluster.admin.stat();
  t.match(stat.tiers.find((tier) => tier.tier === 0), { misplacedReplicas: spilledOfTier1 }, `the stat counts them on tier 0 (${spilledOfTier1} with the filler's)`);
  t.match(stat.tiers.find((tier) => tier.tier === 1), { elsewhereReplicas: spilledOfTier1 }, 'and as tier 1\'s, elsewhere');
  const shown = await shoal('stat');
  t.match(shown.stdout, /tier 1: .*of its volumes' on other tiers/, 'shoal stat shows the tiers');

  await shoal('volume', 'delete', 'filler');
  await eventually('the spilled replicas to move back to tier 1', 60_000, async () => ((await misplaced(cluster, 'hot')) === 0 ? true : null));
  t.same([...new Set(await tiersOf(cluster, 'hot'))], [1], 'with space back, every replica of "hot" is on tier 1');
  await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x40 0 16M', '-c', 'read -P 0x41 16M 16M', cluster.nbdUnixUri('hot')], { timeoutMs: 60_000 });

  // ---- volume set --tier, live, while fio writes and verifies the volume
  const fioDuringVolumeMove = fioVerify(cluster, 'hot', 12);
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  const volumeMove = await shoal('volume', 'set', 'hot', '--tier', '0');
  t.match(volumeMove.stdout, /task \d+: volume "hot" is in tier 0 now \(was 1\); \d+ replicas on the wrong tier to move/);
  t.match(volumeMove.stdout, /volume "hot" is on tier 0: \d+ replicas moved in/, 'the CLI followed the task to its end');
  fioClean(t, await fioDuringVolumeMove, 'volume moving tier');
  t.same([...new Set(await tiersOf(cluster, 'hot'))], [0], 'every replica of "hot" is on tier 0 now');
  const again = await shoal('volume', 'set', 'hot', '--tier', '0');
  t.match(again.stdout, /in tier 0 already; nothing changed/);
  const tier0 = (await cluster.admin.listChunkServers()).chunkServers.find((s) => s.tier === 0);
  const sameServerTier = await shoal('cs', 'set-tier', String(tier0?.id ?? 0), '0');
  t.match(sameServerTier.stdout, /is in tier 0 already; nothing changed/);
  // Bodies that mix up the kinds, or name no target or tier, are refused naming what is wrong.
  const refusals = await Promise.all([
    { kind: 'tier', tier: 1 }, { kind: 'tier', volume: 'hot', chunkServerId: 1, tier: 1 }, { kind: 'tier', volume: 'hot' },
    { kind: 'tier', volume: 'hot', tier: 4 }, { kind: 'drain', chunkServerId: 1, tier: 1 }, { kind: 'tier', volume: 'nope', tier: 1 },
    { kind: 'tier', volume: 'hot', tier: 0 }, { kind: 'tier', volume: 'hot', tier: 2 },
  ].map((body) => postAdmin(cluster, '/v1/tasks', body)));
  t.same(refusals.map(({ status, message }) => [status, message]), [
    [400, 'a tier move names either the chunk server (chunkServerId) or the volume (volume) whose tier changes'],
    [400, 'a tier move names either the chunk server (chunkServerId) or the volume (volume) whose tier changes'],
    [400, 'a tier move names the new tier (0-3): tier'],
    [400, 'body.tier must be <= 3'],
    [400, 'tier is for a tier move (kind "tier"), not a drain'],
    [404, 'volume "nope" does not exist'],
    [400, 'volume "hot" is in tier 0 already'],
    [503, 'tier 2 has 0 active chunk servers in 0 distinct disk failure domains, and volume "hot" keeps 3 copies: add servers to tier 2 first (shoal run cs --tier 2, or shoal cs set-tier ID 2)'],
  ]);

  // ---- cs set-tier, live: a tier-0 server joins tier 1, and the tier-0 replicas on it move off
  const servers = (await cluster.admin.listChunkServers()).chunkServers;
  const mover = servers.filter((s) => s.tier === 0).sort((a, b) => b.mappedReplicaCount - a.mappedReplicaCount)[0];
  if (mover === undefined) throw new Error('no tier-0 server');
  t.ok(mover.mappedReplicaCount > 0, `chunk server ${mover.id} holds ${mover.mappedReplicaCount} replicas of tier-0 volumes`);
  const fioDuringServerMove = fioVerify(cluster, 'hot', 12);
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  const serverMove = await shoal('cs', 'set-tier', String(mover.id), '1');
  t.match(serverMove.stdout, new RegExp(`task \\d+: chunk server ${mover.id} .* is in tier 1 now \\(was 0\\)`));
  t.match(serverMove.stdout, /is on tier 1: \d+ replicas moved in/, 'the CLI followed the task to its end');
  fioClean(t, await fioDuringServerMove, 'server changing tier');
  const after = (await cluster.admin.listChunkServers()).chunkServers.find((s) => s.id === mover.id);
  t.match(after, { tier: 1, misplacedReplicas: 0, mappedReplicaCount: 0 }, 'its tier-0 replicas moved off; it holds none of another tier');
  t.same([...new Set([...await tiersOf(cluster, 'hot'), ...await tiersOf(cluster, 'cold')])], [0], 'tier-0 volumes are on tier 0 alone');
  const tasks = (await cluster.admin.listTasks()).tasks.filter((task) => task.kind === 'tier');
  t.match(tasks.map((task) => ({ state: task.state, target: task.target, tier: task.tier })), [
    { state: 'done', target: { volume: 'hot' }, tier: { from: 1, to: 0 } },
    { state: 'done', target: { chunkServerId: mover.id }, tier: { from: 0, to: 1 } },
  ], 'both moves are tasks, done');

  // Its old --tier 0 flag on a restart does not undo the admin's tier.
  const index = await cluster.chunkServerIndex(mover.id);
  await cluster.chunkServers[index]?.stop('SIGTERM');
  await cluster.startChunkServer(index);
  await cluster.waitOnline(7);
  t.equal((await cluster.admin.listChunkServers()).chunkServers.find((s) => s.id === mover.id)?.tier, 1, 'the admin\'s tier outlives a restart');
  await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0xc0 0 16M', cluster.nbdUnixUri('cold')], { timeoutMs: 60_000 });
});
