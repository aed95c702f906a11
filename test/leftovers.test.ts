// A chunk server never loses replicas to a map that does not know them, and never joins another
// cluster: replicas the map does not know are quarantined when their server registers (kept,
// shown in stat, deleted on an admin's word), and a data directory that joined one cluster refuses
// an MDS of another (which would take all its replicas for leftovers).

import t from 'tap';
import { join } from 'node:path';
import { DaemonProcess } from '../src/local/daemon_process.ts';
import { readMdsPrivateKey } from '../src/protocol/auth.ts';
import { CsConnection } from '../src/protocol/cs_connection.ts';
import { CS_OP } from '../src/protocol/cs_messages.ts';
import { MdsClient } from '../src/protocol/mds_client.ts';
import { startCluster } from './helpers/cluster.ts';
import { FAST_MDS_ARGS } from './helpers/faults.ts';
import { runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;

t.test('leftover replicas are quarantined, not deleted; a directory stays in its cluster', async (t) => {
  t.setTimeout(120_000);
  const cluster = await startCluster(t, { mdsArgs: [...FAST_MDS_ARGS, '--quarantine-grace-ms', '12000'] });
  await cluster.admin.createVolume({ name: 'v', sizeBytes: 64 * MiB, chunkSizeBytes: 8 * MiB });
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x44 0 1M', cluster.nbdUnixUri('v')]);
  const [chunk] = (await cluster.internal.chunkMap('v', 0, 1)).chunks;
  const member = chunk!.replicas[0]!;
  const index = await cluster.chunkServerIndex(member.csId);
  const asMds = async (): Promise<CsConnection> => {
    const port = Number(cluster.chunkServers[index]!.ready['port']);
    const privateKey = await readMdsPrivateKey(join(cluster.dir, 'mds.key'));
    const connection = await CsConnection.connect({ host: '127.0.0.1', port, credential: { role: 'mds', clusterKey: cluster.clusterKey, privateKey, term: 1 } });
    t.teardown(() => connection.close());
    return connection;
  };
  const info = async (chunkId: number): Promise<string> =>
    (await (await asMds()).request({ op: CS_OP.CHUNK_INFO, chunkId })).reply.code ?? 'present';

  // A replica the map has never heard of, as an allocation that crashed would leave: made under
  // the map's own generation (one allocation so far), so not newer than the map.
  const created = await (await asMds()).request({
    op: CS_OP.CREATE_CHUNK, chunkId: 987_654, volumeId: 1, chunkIndex: 5, sizeBytes: MiB, version: 1, generation: 1,
  });
  t.equal(created.reply.code, undefined, 'a leftover replica exists on the server');
  const second = await (await asMds()).request({
    op: CS_OP.CREATE_CHUNK, chunkId: 987_655, volumeId: 1, chunkIndex: 6, sizeBytes: MiB, version: 1, generation: 1,
  });
  t.equal(second.reply.code, undefined, 'and a second one, that nobody will confirm');
  await cluster.chunkServers[index]!.stop('SIGTERM');
  await cluster.startChunkServer(index);
  let quarantined = 0;
  for (let wait = 0; wait < 60 && quarantined === 0; wait += 1) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    quarantined = (await cluster.admin.stat()).quarantine.replicas;
  }
  t.equal(quarantined, 2, 'after the server registers again, the leftovers are quarantined (shown in stat)');
  const { replicas } = await cluster.admin.listQuarantine(10);
  t.match(replicas, [{ chunkId: 987_654, csId: member.csId, volumeId: 1, chunkIndex: 5, newerThanMap: false }, { chunkId: 987_655 }],
    'and listed, not newer than the map, with when their grace runs out');
  t.ok(replicas.every((replica) => replica.deleteAfter !== null), 'each has a deletion time');
  await new Promise((resolve) => setTimeout(resolve, 3_000));
  t.equal(await info(987_654), 'present', 'quarantined, it is still on its server seconds later');
  t.equal(await info(chunk!.chunkId), 'present', 'its real replica stays');
  const released = await cluster.admin.deleteQuarantined({ replicas: [{ chunkId: 987_654, csId: member.csId }] });
  t.same(released, { queued: 1, keptNewer: 0 }, 'an admin confirms its deletion');
  let gone = 'present';
  for (let wait = 0; wait < 60 && gone === 'present'; wait += 1) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    gone = await info(987_654);
  }
  t.equal(gone, 'ERR_CHUNK_NOT_FOUND', 'and then it is deleted from its server');
  t.equal(await info(987_655), 'present', 'the other is still kept');
  let expired = 'present';
  for (let wait = 0; wait < 120 && expired === 'present'; wait += 1) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    expired = await info(987_655);
  }
  t.equal(expired, 'ERR_CHUNK_NOT_FOUND', 'once its grace (12 s here) runs out, it is deleted too');
  t.equal((await cluster.admin.stat()).quarantine.replicas, 0, 'the quarantine is empty again');

  // The same directory pointed at the MDS of another cluster.
  const other = await DaemonProcess.start({
    name: 'other-mds',
    stderr: 'collect',
    args: ['run', 'mds', '--data', join(cluster.dir, 'other-mds'), '--listen', '127.0.0.1:0', '--cluster-key', join(cluster.dir, 'cluster.key'),
      '--admin-token', join(cluster.dir, 'admin.token'), '--failure-domain', 'disk'],
  });
  t.teardown(() => other.stop('SIGKILL'));
  await cluster.chunkServers[index]!.stop('SIGTERM');
  await cluster.startChunkServer(index, { mdsUrl: `http://127.0.0.1:${String(other.ready['port'])}` });
  // Waits for the refusal itself (it comes at the server's first registration attempt), not a fixed time.
  const refusal = /belongs to cluster .*this MDS runs cluster .*not registering/;
  for (let wait = 0; wait < 100 && !refusal.test(cluster.chunkServers[index]!.log); wait += 1) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  t.match(cluster.chunkServers[index]!.log, refusal, 'the MDS refuses the server, saying why');
  const otherAdmin = new MdsClient({
    url: `http://127.0.0.1:${String(other.ready['port'])}`, token: cluster.adminToken,
  });
  t.equal((await otherAdmin.listChunkServers()).chunkServers.length, 0, 'the other MDS has no server registered');
  t.equal(await info(chunk!.chunkId), 'present', 'and the replica is untouched');
  await cluster.chunkServers[index]!.stop('SIGTERM');
  await cluster.startChunkServer(index, { mdsUrl: cluster.mdsUrl });
  await cluster.waitOnline(3);
  const { stdout } = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x44 0 1M', cluster.nbdUnixUri('v')]);
  t.notMatch(stdout, /verification failed/, 'back in its own cluster, the data reads');
});
