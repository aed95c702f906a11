// A writer dies in the middle of a write that one member could not take in time: nobody is left
// to report it but the primary. The primary reports it, the member that missed the write leaves
// the set under a new version (whatever it does later with the forward it had queued), comes back
// as a fresh copy, and every member ends byte-identical, with the unacknowledged write present
// everywhere or nowhere. (Members left different with no report at all, when the primary dies
// with its writer, are the simulation's part: test/sim_recovery.)

import t from 'tap';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { startCluster } from './helpers/cluster.ts';
import { CHUNK_BYTES, VOLUME, VOLUME_BYTES, checkReplicasIdentical, eventually, waitHealthy } from './helpers/faults.ts';
import { metricValue } from './helpers/metrics.ts';
import { run, runOk } from './helpers/run.ts';

const KiB = 1024;


t.test('a writer killed mid-write leaves no member different', async (t) => {
  t.setTimeout(180_000);
  // A long heartbeat timeout keeps the frozen member "online": only the primary's report can tell
  // the MDS that it missed a write. The primary gives up on it after 1.5 s.
  const cluster = await startCluster(t, {
    chunkServers: 3,
    mdsArgs: ['--heartbeat-interval-ms', '250', '--heartbeat-timeout-ms', '20000', '--replace-after-ms', '60000',
      '--cs-timeout-ms', '2000', '--lease-timeout-ms', '6000'],
    csArgs: ['--peer-timeout-ms', '1500'],
    nbdArgs: ['--cs-timeout-ms', '10000', '--io-timeout-ms', '60000'],
  });
  await cluster.admin.createVolume({ name: VOLUME, sizeBytes: VOLUME_BYTES, chunkSizeBytes: CHUNK_BYTES });
  const uri = cluster.nbdUnixUri(VOLUME);
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 1M', uri]);
  const before = (await cluster.internal.chunkMap(VOLUME, 0, 1)).chunks[0];
  if (before === undefined || before.replicas.length !== 3) throw new Error('chunk 0 with three members expected');
  const [primary, missing] = before.replicas;
  if (primary === undefined || missing === undefined) throw new Error('members expected');
  const primaryIndex = await cluster.chunkServerIndex(primary.csId);
  const missingIndex = await cluster.chunkServerIndex(missing.csId);

  const primaryMetrics = Number(cluster.chunkServers[primaryIndex]?.ready['metricsPort']);
  const writtenBefore = await metricValue(primaryMetrics, 'shoal_cs_written_bytes_total');
  // The writer opens the volume first (every write open fences every chunk server, which a frozen
  // one cannot answer), then the member freezes, then the write comes.
  const writer = run('qemu-io', ['-f', 'raw', '-c', 'sleep 3000', '-c', 'write -P 0xab 0 64k', uri], { timeoutMs: 30_000 });
  t.ok(await eventually(async () => (await cluster.admin.getVolume(VOLUME)).lease !== null, 10_000), 'the writer opened the volume');
  cluster.chunkServers[missingIndex]?.kill('SIGSTOP');
  // Once the primary has applied the write itself, its forward to the frozen member hangs: the
  // writer dies now, before the primary can answer it.
  const applied = await eventually(async () => (await metricValue(primaryMetrics, 'shoal_cs_written_bytes_total')) > writtenBefore, 20_000);
  t.ok(applied, 'the primary applied the write');
  cluster.nbd?.kill('SIGKILL');
  const written = await writer;
  t.not(written.code, 0, 'the writer died before its write was acknowledged');
  // The primary's forward times out (1.5 s), it reports, the MDS seals without the frozen member
  // (whose seal times out after 2 s): all while the member is still frozen.
  const reported = await eventually(async () => (await metricValue(primaryMetrics, 'shoal_cs_partial_writes_reported_total')) >= 1, 20_000);
  t.ok(reported, 'the primary reported the incomplete write');
  const after = (await cluster.internal.chunkMap(VOLUME, 0, 1)).chunks[0];
  t.ok(after !== undefined && after.version > before.version, `the chunk moved to a new version (${before.version} -> ${after?.version})`);
  t.ok(after !== undefined && !after.replicas.some((member) => member.csId === missing.csId), 'without the member that missed the write');
  cluster.chunkServers[missingIndex]?.kill('SIGCONT');

  const { waitedMs } = await waitHealthy(cluster, 90_000);
  t.pass(`three members again ${waitedMs} ms later`);
  await checkReplicasIdentical(t, cluster);

  // What the members hold is the write wholly or not at all, and a new writer reads it steadily.
  const healed = (await cluster.internal.chunkMap(VOLUME, 0, 1)).chunks[0];
  const index = await cluster.chunkServerIndex(healed!.replicas[0]!.csId);
  const file = join(cluster.chunkServerDir(index), 'chunks', (healed!.chunkId % 256).toString(16).padStart(2, '0'), `${healed!.chunkId}.data`);
  const head = (await readFile(file)).subarray(0, 64 * KiB);
  const pattern = head[0];
  t.ok((pattern === 0x11 || pattern === 0xab) && head.every((byte) => byte === pattern), `the write is all or nothing (0x${pattern?.toString(16)})`);
  await cluster.startNbd();
  for (let read = 0; read < 3; read += 1) {
    const { stdout } = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', `read -P 0x${pattern?.toString(16)} 0 64k`, '-c', 'read -P 0x11 64k 960k', cluster.nbdUnixUri(VOLUME)]);
    t.notMatch(stdout, /verification failed/, `read ${read + 1} through a new NBD server returns the same bytes`);
  }
});
