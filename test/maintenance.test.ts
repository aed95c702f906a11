// Maintenance mode on a real cluster of four chunk servers (so that replicas could be replaced):
// a server put in maintenance is stopped, writes go on, and long past --replace-after-ms nothing
// is copied elsewhere; when it returns it catches up by copying only the blocks that changed. A
// window that runs out with the server away is shown (cs list, metric) and its replicas wait for
// the grace before they are replaced.

import t from 'tap';
import { cliRunner } from './helpers/cli.ts';
import { startCluster, type LocalCluster } from './helpers/cluster.ts';
import { eventually } from './helpers/eventually.ts';
import { metricValue } from './helpers/metrics.ts';
import { runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
const CHUNK_BYTES = 4 * MiB;
const CHUNKS = 8;
// Long enough that the grace after an overrun outlasts the CLI calls that look at it on a loaded machine.
const REPLACE_AFTER_MS = 8_000;

async function members(cluster: LocalCluster): Promise<number[][]> {
  const { chunks } = await cluster.internal.chunkMap('data', 0, 64);
  return chunks.map((chunk) => chunk.replicas.map((r) => r.csId).sort((a, b) => a - b));
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

t.test('a chunk server in maintenance is waited for, then catches up on what changed', async (t) => {
  t.setTimeout(180_000);
  const cluster = await startCluster(t, {
    chunkServers: 4,
    mdsArgs: ['--heartbeat-interval-ms', '200', '--heartbeat-timeout-ms', '1500', '--replace-after-ms', String(REPLACE_AFTER_MS),
      '--replace-endangered-after-ms', String(REPLACE_AFTER_MS)],
  });
  const cli = await cliRunner(t);
  const env = { SHOAL_MDS: cluster.mdsUrl, SHOAL_TOKEN: cluster.adminToken };
  const shoal = (...args: string[]) => cli.shoal(args, env, 60_000);
  await cluster.admin.createVolume({ name: 'data', sizeBytes: 64 * MiB, chunkSizeBytes: CHUNK_BYTES });
  const image = cluster.nbdUnixUri('data');
  await runOk('qemu-io', ['-f', 'raw', '-c', `write -P 0x11 0 ${CHUNKS * CHUNK_BYTES}`, image], { timeoutMs: 60_000 });
  const servers = (await cluster.admin.listChunkServers()).chunkServers;
  const victim = [...servers].sort((a, b) => b.mappedReplicaCount - a.mappedReplicaCount)[0]!;
  const victimIndex = await cluster.chunkServerIndex(victim.id);
  const before = await members(cluster);
  const copied = async (): Promise<number> => (await cluster.admin.stat()).recovery.copiedBytes;
  const copiedBefore = await copied();

  const started = await shoal('cs', 'maintenance', String(victim.id), '--for', '10m');
  t.equal(started.code, 0, started.stderr);
  t.match(started.stdout, new RegExp(`chunk server ${victim.id} .* is in maintenance until .*its chunks wait for it`));
  const listed = await shoal('cs', 'list');
  t.match(listed.stdout, /online\/maintenance/, 'cs list shows the window');
  const mdsMetrics = Number(cluster.mds.ready['port']); // the MDS serves /metrics on its API port
  t.equal(await metricValue(mdsMetrics, 'shoal_mds_chunk_servers_maintenance', '{phase="window"}'), 1, 'and the MDS metric counts it');

  await cluster.chunkServers[victimIndex]?.stop('SIGTERM');
  // Writes go on: one 64 KiB block in each chunk.
  for (let chunk = 0; chunk < CHUNKS; chunk += 1) {
    await runOk('qemu-io', ['-f', 'raw', '-c', `write -P 0x22 ${chunk * CHUNK_BYTES} 64k`, image], { timeoutMs: 60_000 });
  }
  await sleep(REPLACE_AFTER_MS * 2);
  t.equal(await copied(), copiedBefore, `nothing copied to other servers ${REPLACE_AFTER_MS * 2 / 1000} s later (twice --replace-after-ms)`);
  const during = await members(cluster);
  t.ok(during.every((set, index) => set.every((csId) => before[index]?.includes(csId))), 'no chunk gained a member elsewhere');

  await cluster.startChunkServer(victimIndex);
  const healed = await eventually('every chunk to have its members back', 60_000, async () => {
    const now = await members(cluster);
    return now.every((set, index) => set.length === before[index]?.length) ? now : null;
  });
  t.same(healed, before, 'the returning server is a member of the same chunks again');
  const caughtUp = (await copied()) - copiedBefore;
  const victimChunks = before.filter((set) => set.includes(victim.id)).length;
  t.ok(caughtUp > 0 && caughtUp <= victimChunks * 256 * 1024,
    `it copied only what changed: ${caughtUp} bytes for ${victimChunks} chunks of ${CHUNK_BYTES} bytes with 64 KiB written in each`);
  await runOk('qemu-io', ['-f', 'raw', '-c', `read -P 0x22 0 64k`, '-c', `read -P 0x11 ${64 * 1024} ${CHUNK_BYTES - 64 * 1024}`, image],
    { timeoutMs: 60_000 });
  t.pass('the data reads back');
  const ended = await shoal('cs', 'maintenance', String(victim.id), '--end');
  t.match(ended.stdout, /is out of maintenance/);

  // A window that runs out with the server away: a warning phase, then its replicas are replaced.
  const short = await shoal('cs', 'maintenance', String(victim.id), '--for', '2s');
  t.equal(short.code, 0, short.stderr);
  await cluster.chunkServers[victimIndex]?.stop('SIGTERM');
  const overrunCopied = await copied();
  await eventually('the window to run out', 15_000, async () => {
    const server = (await cluster.admin.listChunkServers()).chunkServers.find((s) => s.id === victim.id);
    return server?.maintenance?.phase === 'grace' && server.state !== 'online' ? true : null;
  });
  // Each CLI call is a node start (a second or more when the machine is busy): in parallel, inside the grace.
  const [list, info, overrunMetric] = await Promise.all([
    shoal('cs', 'list'), shoal('cs', 'info', String(victim.id)), metricValue(mdsMetrics, 'shoal_mds_chunk_servers_maintenance', '{phase="overrun"}'),
  ]);
  t.match(list.stdout, /offline\/maintenance-overrun/, 'cs list shows the overrun');
  t.equal(overrunMetric, 1, 'the overrun is in the metrics');
  t.match(info.stdout, /maintenance:\s+ran out at [\s\S]*its replicas are\s+replaced from/, 'cs info says when its replicas will be replaced');
  t.equal(await copied(), overrunCopied, 'nothing copied yet, in the grace');
  await eventually('its replicas to be replaced after the grace', 60_000, async () => ((await copied()) > overrunCopied ? true : null));
  t.pass('after the grace, recovery replaces them');
});
