// A chunk server is cut off from the network (a partition: its links go silent, nothing is
// refused) while fio writes and verifies, then reconnected. Every connection to and from it goes
// through fault proxies: clients, peers and the MDS reach it through one, and it reaches the MDS
// through another.

import t from 'tap';
import { FaultProxy } from './helpers/fault_proxy.ts';
import { checkFio, checkReplicasIdentical, runFio, sleep, startFaultCluster, waitHealthy } from './helpers/faults.ts';

t.test('a chunk server partitioned from everyone, then reconnected', async (t) => {
  t.setTimeout(240_000);
  const cluster = await startFaultCluster(t);
  const victim = 3;
  // Restart chunk server 3 behind the proxies, on the same data directory.
  await cluster.chunkServers[victim]?.stop('SIGTERM');
  const inbound = await FaultProxy.start();
  const toMds = await FaultProxy.start({ host: '127.0.0.1', port: Number(cluster.mds.ready['port']) });
  t.teardown(async () => {
    await inbound.close();
    await toMds.close();
  });
  const daemon = await cluster.startChunkServer(victim, {
    mdsUrl: `http://127.0.0.1:${toMds.port}`,
    extraArgs: ['--advertise-port', String(inbound.port)],
  });
  inbound.setTarget('127.0.0.1', Number(daemon.ready['port']));
  await cluster.waitOnline(4);

  const fio = runFio(cluster, 30);
  await sleep(6_000);
  inbound.blackhole();
  toMds.blackhole();
  t.pass('chunk server 3 partitioned while fio runs');
  await sleep(10_000);
  inbound.heal();
  toMds.heal();
  t.pass('partition healed');
  checkFio(t, await fio);
  const { waitedMs } = await waitHealthy(cluster, 90_000);
  t.pass(`every chunk healthy again ${waitedMs} ms after fio ended`);
  await checkReplicasIdentical(t, cluster);
});
