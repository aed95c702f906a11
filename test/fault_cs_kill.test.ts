// A chunk server is killed with SIGKILL while fio writes and verifies, then started again. The
// guest sees no error; the cluster re-replicates, and ends with every chunk on three servers with
// identical bytes.

import t from 'tap';
import { metricValue } from './helpers/metrics.ts';
import { checkFio, checkReplicasIdentical, runFio, sleep, startFaultCluster, waitHealthy } from './helpers/faults.ts';

t.test('SIGKILL of a chunk server under load, then restart', async (t) => {
  t.setTimeout(240_000);
  const cluster = await startFaultCluster(t);
  const fio = runFio(cluster, 30);
  await sleep(6_000);
  const victim = 1;
  cluster.chunkServers[victim]?.kill('SIGKILL');
  await cluster.chunkServers[victim]?.waitExit();
  t.pass('chunk server 1 killed with SIGKILL while fio runs');
  const deadId = await cluster.chunkServerIdByUuid(String(cluster.chunkServers[victim]?.ready['uuid']));
  let offlineAfterMs = -1;
  const killedAtMs = Date.now();
  for (let wait = 0; wait < 40 && offlineAfterMs < 0; wait += 1) {
    await sleep(250);
    const stat = await cluster.admin.stat();
    if (stat.chunkServers.offline === 1 && stat.servers.find((s) => s.id === deadId)?.state === 'offline') offlineAfterMs = Date.now() - killedAtMs;
  }
  t.ok(offlineAfterMs >= 0, `the MDS marks it offline in stat ${offlineAfterMs} ms after the kill (heartbeat timeout 2000 ms)`);
  const port = Number(cluster.mds.ready['port']);
  t.equal(await metricValue(port, 'shoal_mds_chunk_servers', '{state="offline"}'), 1, 'and in /metrics');
  await sleep(Math.max(0, 10_000 - (Date.now() - killedAtMs)));
  await cluster.startChunkServer(victim);
  t.pass('chunk server 1 started again');
  await cluster.waitOnline(4);
  t.equal(await metricValue(port, 'shoal_mds_chunk_servers', '{state="online"}'), 4, 'online again in /metrics');
  checkFio(t, await fio);
  const { waitedMs } = await waitHealthy(cluster, 90_000);
  t.pass(`every chunk healthy again ${waitedMs} ms after fio ended`);
  await checkReplicasIdentical(t, cluster);
});
