// A chunk server's "the MDS is fresh" window starts when its request was sent, not when the reply
// came back. Here the MDS's replies to one chunk server are held on the way (a proxy between the
// two): its heartbeat reaches the MDS, the answer does not. The MDS sees the server go silent,
// waits out its margin, and a forced takeover of the volume goes ahead without telling it (it is
// away long enough to have stopped writing by itself). Then the held reply arrives. The server must
// not take that reply as fresh contact: until it has registered again (which loads the new fence),
// the old holder's writes sent straight to it are refused, never stored.

import t from 'tap';
import { Volume } from '../src/client/volume.ts';
import { CS_OP } from '../src/protocol/cs_messages.ts';
import { createLogger } from '../src/util/log.ts';
import { startCluster } from './helpers/cluster.ts';
import { FaultProxy } from './helpers/fault_proxy.ts';
import { eventually, sleep } from './helpers/faults.ts';

const MiB = 1024 * 1024;
const KiB = 1024;
const HEARTBEAT_TIMEOUT_MS = 1_000;

t.test('a heartbeat reply held on the way does not reopen a chunk server to a fenced writer', async (t) => {
  t.setTimeout(90_000);
  const cluster = await startCluster(t, {
    chunkServers: 2,
    nbd: false,
    mdsArgs: ['--heartbeat-interval-ms', '200', '--heartbeat-timeout-ms', String(HEARTBEAT_TIMEOUT_MS), '--cs-timeout-ms', '2000'],
  });
  // A third chunk server (the victim) reaches the MDS through a proxy that can hold the MDS's replies.
  const toMds = await FaultProxy.start({ host: '127.0.0.1', port: Number(cluster.mds.ready['port']) });
  t.teardown(() => toMds.close());
  await cluster.startChunkServer(2, { mdsUrl: `http://127.0.0.1:${toMds.port}` });
  await cluster.waitOnline(3);
  const victimId = await cluster.chunkServerId(2);

  await cluster.admin.createVolume({ name: 'v', sizeBytes: 64 * MiB, chunkSizeBytes: 8 * MiB, replicas: { normal: 3, min: 2 } });
  const pool = cluster.pool();
  t.teardown(() => pool.closeAll());
  const log = createLogger('test-client');
  const writerA = await Volume.open({ mds: cluster.internal, pool, name: 'v', readOnly: false, holder: 'a', log, ioTimeoutMs: 10_000 });
  await writerA.write(0, Buffer.alloc(64 * KiB, 0x11));
  const entry = (await cluster.internal.chunkMap('v', 0, 1)).chunks[0];
  const victim = entry?.replicas.find((replica) => replica.csId === victimId);
  if (entry === undefined || victim === undefined) throw new Error('chunk 0 on the victim expected');
  const volumeId = (await cluster.admin.getVolume('v')).id;
  // What reaches the victim for the old holder: its epoch, as the primary's forward (the path that
  // trusts the epoch alone; a client's own requests also need a capability and the chunk's ticket).
  const peers = cluster.peerPool();
  t.teardown(() => peers.closeAll());
  const staleWrite = async (fill: number): Promise<string> => {
    const body = {
      op: CS_OP.WRITE, chunkId: entry.chunkId, version: entry.version, volumeId, epoch: writerA.epoch, offsetBytes: 0, lengthBytes: 4 * KiB, forward: [],
    };
    const { reply } = await peers.request(victim.host, victim.port, body, Buffer.alloc(4 * KiB, fill));
    return reply.code ?? 'stored';
  };
  t.equal(await staleWrite(0x11), 'stored', 'before anything happens, the old holder\'s writes reach the victim');

  toMds.holdReplies();
  const offline = await eventually(async () => {
    const { chunkServers } = await cluster.admin.listChunkServers();
    return chunkServers.find((server) => server.id === victimId)?.state === 'offline';
  }, 10_000);
  t.ok(offline, 'with its heartbeat replies held, the MDS sees the victim go silent');
  // Away long enough (twice the timeout past offline) that a fence goes ahead without it.
  await sleep(2 * HEARTBEAT_TIMEOUT_MS + 300);
  const writerB = await Volume.open({ mds: cluster.internal, pool, name: 'v', readOnly: false, holder: 'b', force: true, log, ioTimeoutMs: 10_000 });
  t.teardown(() => writerB.close());
  t.ok(writerB.epoch > writerA.epoch, `b took the volume over (epoch ${writerA.epoch} -> ${writerB.epoch}) without the victim`);

  toMds.heal();
  t.pass('the held heartbeat reply is let through');
  const outcomes = new Map<string, number>();
  const startedMs = Date.now();
  // At least two seconds of tries, and on until the victim has registered again (a loaded machine
  // may take a while).
  for (;;) {
    const elapsedMs = Date.now() - startedMs;
    if (elapsedMs > 15_000 || (elapsedMs > 2_000 && outcomes.has('ERR_LEASE_FENCED'))) break;
    const outcome = await staleWrite(0x22).catch((error: unknown) => `threw ${(error as Error).message}`);
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
    await sleep(20);
  }
  t.comment(`old holder's writes to the victim after the reply: ${JSON.stringify(Object.fromEntries(outcomes))}`);
  t.equal(outcomes.get('stored') ?? 0, 0, 'none of the old holder\'s writes was stored');
  t.ok((outcomes.get('ERR_LEASE_FENCED') ?? 0) > 0, 'once registered again, the victim knows the new fence');
  await writerA.close();
});
