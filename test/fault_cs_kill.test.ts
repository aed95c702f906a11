// A chunk server is killed with SIGKILL while fio writes and verifies, then started again. The
// guest sees no error; the cluster re-replicates, and ends with every chunk on three servers with
// identical bytes.

import t from 'tap';
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
  await sleep(10_000);
  await cluster.startChunkServer(victim);
  t.pass('chunk server 1 started again');
  checkFio(t, await fio);
  const { waitedMs } = await waitHealthy(cluster, 90_000);
  t.pass(`every chunk healthy again ${waitedMs} ms after fio ended`);
  await checkReplicasIdentical(t, cluster);
});
