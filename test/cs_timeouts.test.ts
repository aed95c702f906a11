// A chunk-server connection's timeout tells a dead server from a slow one: a real chunk server
// whose replies reach the caller at a slow, steady pace through a proxy keeps its connection
// however long its queue takes to drain (here four times the timeout), and a server that answers
// nothing at all is given up on after the timeout. Before, every request had to be answered within
// the timeout of its send: under load, healthy members behind a long queue were dropped from their
// sets and copied again, and the requests given up on still landed later.

import t from 'tap';
import { Volume } from '../src/client/volume.ts';
import { CsConnectionPool } from '../src/protocol/cs_connection.ts';
import { CS_OP } from '../src/protocol/cs_messages.ts';
import { createLogger } from '../src/util/log.ts';
import { startCluster } from './helpers/cluster.ts';
import { FaultProxy } from './helpers/fault_proxy.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const TIMEOUT_MS = 1_000;
const READS = 12;

t.test('a slow chunk server is waited for, a silent one is given up on', async (t) => {
  t.setTimeout(90_000);
  const cluster = await startCluster(t, { chunkServers: 1, nbd: false });
  await cluster.admin.createVolume({ name: 'v', sizeBytes: 8 * MiB, chunkSizeBytes: 8 * MiB, replicas: { normal: 1, min: 1 } });
  const clientPool = cluster.pool();
  t.teardown(() => clientPool.closeAll());
  const writer = await Volume.open({ mds: cluster.internal, pool: clientPool, name: 'v', readOnly: false, holder: 'w', log: createLogger('test-client') });
  t.teardown(() => writer.close());
  await writer.write(0, Buffer.alloc(READS * 64 * KiB, 0x5a));
  const entry = (await cluster.internal.chunkMap('v', 0, 1)).chunks[0];
  const member = entry?.replicas[0];
  if (entry === undefined || member === undefined) throw new Error('chunk 0 with a member expected');

  const proxy = await FaultProxy.start({ host: member.host, port: member.port });
  t.teardown(() => proxy.close());
  // 64 KiB and a bit every 350 ms: one read's reply per tick, the last about 4 s after its send.
  proxy.trickleReplies(64 * KiB + 256, 350);
  const peers = new CsConnectionPool({ credential: { role: 'peer', clusterKey: cluster.clusterKey }, requestTimeoutMs: TIMEOUT_MS });
  t.teardown(() => peers.closeAll());
  const read = (index: number) => peers.request('127.0.0.1', proxy.port, {
    op: CS_OP.READ, chunkId: entry.chunkId, version: entry.version, offsetBytes: index * 64 * KiB, lengthBytes: 64 * KiB,
  });
  const startedMs = Date.now();
  const replies = await Promise.all(Array.from({ length: READS }, (_, index) => read(index)));
  const elapsedMs = Date.now() - startedMs;
  t.ok(elapsedMs > 3 * TIMEOUT_MS, `the last reply came ${elapsedMs} ms after the sends, past the ${TIMEOUT_MS} ms timeout`);
  t.ok(replies.every((reply) => reply.reply.code === undefined && reply.payload.equals(Buffer.alloc(64 * KiB, 0x5a))),
    'every read answered with its bytes');

  proxy.blackhole();
  const silentStartMs = Date.now();
  const failure = await read(0).then(() => null, (error: unknown) => error as { code?: string; message?: string });
  const silentMs = Date.now() - silentStartMs;
  t.equal(failure?.code, 'ERR_TIMEOUT', `a server that answers nothing times out: ${failure?.message}`);
  t.ok(silentMs < 4 * TIMEOUT_MS, `within ${silentMs} ms`);
});
