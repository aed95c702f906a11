// The MDS is killed with SIGKILL while fio writes and verifies, and started again a few seconds
// later. Chunk servers stop taking writes while they cannot reach it (they could miss a fence),
// so writes wait; nothing fails and nothing is lost.

import t from 'tap';
import { checkFio, checkReplicasIdentical, runFio, sleep, startFaultCluster, waitHealthy } from './helpers/faults.ts';

t.test('SIGKILL of the MDS under load, then restart', async (t) => {
  t.setTimeout(240_000);
  const cluster = await startFaultCluster(t);
  const fio = runFio(cluster, 30);
  await sleep(6_000);
  cluster.mds.kill('SIGKILL');
  await cluster.mds.waitExit();
  t.pass('MDS killed with SIGKILL while fio runs');
  await sleep(4_000);
  await cluster.restartMds();
  t.pass('MDS started again');
  checkFio(t, await fio);
  const { waitedMs } = await waitHealthy(cluster, 90_000);
  t.pass(`every chunk healthy ${waitedMs} ms after fio ended`);
  await checkReplicasIdentical(t, cluster);
});
