// A chunk server is frozen with SIGSTOP past the failure-detection timeout while fio writes and
// verifies, then resumed. Requests to it time out, it leaves the sets of the chunks it was written
// through, the guest sees no error, and after it resumes the cluster heals fully.

import t from 'tap';
import { checkFio, checkReplicasIdentical, runFio, sleep, startFaultCluster, waitHealthy } from './helpers/faults.ts';

t.test('SIGSTOP of a chunk server past the timeout, then SIGCONT', async (t) => {
  t.setTimeout(240_000);
  const cluster = await startFaultCluster(t);
  const fio = runFio(cluster, 30);
  await sleep(6_000);
  const victim = 2;
  cluster.chunkServers[victim]?.kill('SIGSTOP');
  t.pass('chunk server 2 frozen while fio runs');
  await sleep(10_000);
  cluster.chunkServers[victim]?.kill('SIGCONT');
  t.pass('chunk server 2 resumed');
  checkFio(t, await fio);
  const { waitedMs } = await waitHealthy(cluster, 90_000);
  t.pass(`every chunk healthy again ${waitedMs} ms after fio ended`);
  await checkReplicasIdentical(t, cluster);
});
