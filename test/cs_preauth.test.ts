// Strangers on a chunk server's port: hundreds of connections that never authenticate, and
// connections that announce a frame of megabytes before authenticating, against real chunk server
// processes. The oversized ones are closed at their prefix (not at the AUTH deadline), the servers'
// memory stays bounded, and meanwhile a real NBD server started in the middle of the flood (its
// connections to the chunk servers are new, and must authenticate amid it) writes and reads.
// Then a server with a small --connections-max refuses a newcomer once every connection has
// authenticated, and keeps serving those it has.

import t, { type Test } from 'tap';
import { readFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { FRAME_BODY_BYTES_MAX } from '../src/limits.ts';
import { CsConnection } from '../src/protocol/cs_connection.ts';
import { CS_OP } from '../src/protocol/cs_messages.ts';
import { FrameReader } from '../src/protocol/frame.ts';
import { startCluster, type LocalCluster } from './helpers/cluster.ts';
import { metricValue } from './helpers/metrics.ts';
import { runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
/** Idle strangers opened per chunk server at first, and then more every tick while the client works. */
const IDLE_FIRST = 300;
const IDLE_PER_TICK = 5;
const TICK_MS = 100;
/** Strangers per chunk server that announce a full-size frame and stream its body. */
const OVERSIZED = 48;
/** What a server's RSS may grow by under the oversized frames (the old code held 4 MiB for each). */
const OVERSIZED_RSS_GROWTH_BYTES_MAX = 32 * MiB;
/** ...and under the flood while the client writes through it (its data in flight included). */
const FLOOD_RSS_GROWTH_BYTES_MAX = 96 * MiB;

async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  if (match === null) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(match[1]) * 1024;
}

function csPort(cluster: LocalCluster, index: number): number {
  return Number(cluster.chunkServers[index]?.ready['port']);
}

function csMetricsPort(cluster: LocalCluster, index: number): number {
  return Number(cluster.chunkServers[index]?.ready['metricsPort']);
}

/** Raw sockets the test opened; all destroyed when the test ends. */
function socketJar(t: Test): Set<Socket> {
  const sockets = new Set<Socket>();
  t.teardown(() => {
    for (const socket of sockets) socket.destroy();
  });
  return sockets;
}

/** A connection that reads the HELLO and then says nothing. */
function openIdle(port: number, sockets: Set<Socket>): void {
  const socket = connect({ host: '127.0.0.1', port });
  sockets.add(socket);
  socket.on('error', () => undefined);
  socket.on('close', () => sockets.delete(socket));
  socket.resume();
}

/**
 * A connection that announces a body of FRAME_BODY_BYTES_MAX (a size authenticated peers may
 * send). With `streamBody` it then streams all of it but the last byte, so that the frame never
 * completes; without, it waits. Resolves with the code of the error reply the server sent before
 * closing (null if none came).
 */
function sendOversized(port: number, streamBody: boolean, junk: Buffer, sockets: Set<Socket>): Promise<string | null> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    sockets.add(socket);
    const reader = new FrameReader();
    const codes: string[] = [];
    const closed = (): void => {
      sockets.delete(socket);
      socket.destroy();
      resolve(codes[0] ?? null);
    };
    socket.on('error', () => undefined);
    socket.on('data', (data: Buffer) => {
      reader.push(data);
      for (let frame = reader.next(); frame !== null; frame = reader.next()) {
        if (frame.header['op'] === CS_OP.REPLY) codes.push(String(frame.header['code']));
      }
    });
    socket.once('end', closed);
    socket.once('close', closed);
    socket.once('connect', () => {
      const prefix = Buffer.alloc(6);
      prefix.writeUInt32BE(FRAME_BODY_BYTES_MAX, 0);
      prefix.writeUInt16BE(64, 4);
      socket.write(prefix);
      if (!streamBody) return;
      for (let sentBytes = 0; sentBytes < FRAME_BODY_BYTES_MAX - 1; sentBytes += junk.length) {
        socket.write(junk.subarray(0, Math.min(junk.length, FRAME_BODY_BYTES_MAX - 1 - sentBytes)));
      }
    });
  });
}

t.test('a flood of unauthenticated and oversized connections neither locks out real peers nor fills memory', async (t) => {
  t.setTimeout(120_000);
  const cluster = await startCluster(t, { nbd: false });
  await cluster.admin.createVolume({ name: 'busy', sizeBytes: 64 * MiB, chunkSizeBytes: 8 * MiB });
  const indexes = cluster.chunkServers.map((_, index) => index);
  const pids = indexes.map((index) => cluster.chunkServers[index]?.pid ?? -1);
  const rssBefore = await Promise.all(pids.map(rssBytes));
  const rssPeak = [...rssBefore];
  const sampler = setInterval(() => {
    pids.forEach((pid, index) => {
      rssBytes(pid).then((bytes) => {
        rssPeak[index] = Math.max(rssPeak[index] ?? 0, bytes);
      }, () => undefined);
    });
  }, 50);
  t.teardown(() => clearInterval(sampler));

  const sockets = socketJar(t);
  // First the oversized frames, on their own (a connect storm would only slow them down). Half
  // of them stream the body: the old server buffered 4 MiB for each until the AUTH deadline.
  const junk = Buffer.alloc(256 * 1024, 0xee);
  const codes = await Promise.all(indexes.flatMap((index) =>
    Array.from({ length: OVERSIZED }, (_, count) => sendOversized(csPort(cluster, index), count % 2 === 0, junk, sockets))));
  const prefixOnly = codes.filter((_, count) => count % 2 === 1);
  t.same(new Set(prefixOnly), new Set(['ERR_FRAME_TOO_LARGE']),
    `the ${prefixOnly.length} connections that sent only an oversized prefix were refused for it, not at the AUTH deadline`);
  t.equal(codes.length, indexes.length * OVERSIZED, 'and every oversized connection was closed');
  for (const index of indexes) {
    const growth = (rssPeak[index] ?? 0) - (rssBefore[index] ?? 0);
    t.ok(growth < OVERSIZED_RSS_GROWTH_BYTES_MAX,
      `cs${index}: RSS grew by ${(growth / MiB).toFixed(1)} MiB at most under the oversized frames`);
  }

  for (const index of indexes) for (let count = 0; count < IDLE_FIRST; count += 1) openIdle(csPort(cluster, index), sockets);
  // More strangers keep coming while the real client works: each evicts the oldest one waiting.
  const flood = setInterval(() => {
    for (const index of indexes) for (let count = 0; count < IDLE_PER_TICK; count += 1) openIdle(csPort(cluster, index), sockets);
  }, TICK_MS);
  t.teardown(() => clearInterval(flood));

  const startedMs = Date.now();
  await cluster.startNbd();
  for (let round = 0; round < 3; round += 1) {
    const pattern = `0x${(0x21 + round).toString(16)}`;
    await runOk('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${round * 8}M 8M`, '-c', `read -P ${pattern} ${round * 8}M 8M`,
      cluster.nbdUnixUri('busy')], { timeoutMs: 30_000 });
  }
  const clientMs = Date.now() - startedMs;
  t.ok(clientMs < 60_000, `a new NBD server connected amid the flood and wrote and read 24 MiB in ${clientMs} ms`);

  clearInterval(flood);
  clearInterval(sampler);
  for (const index of indexes) {
    const growth = (rssPeak[index] ?? 0) - (rssBefore[index] ?? 0);
    t.ok(growth < FLOOD_RSS_GROWTH_BYTES_MAX,
      `cs${index}: RSS grew by ${(growth / MiB).toFixed(1)} MiB at most under the flood and the writes`);
    const port = csMetricsPort(cluster, index);
    t.equal(await metricValue(port, 'shoal_cs_preauth_frames_too_large_total'), OVERSIZED, `cs${index} counted the oversized frames`);
    const evicted = await metricValue(port, 'shoal_cs_connections_evicted_total');
    t.ok(evicted > 0, `cs${index} evicted ${evicted} unauthenticated connections, oldest first`);
    const waiting = await metricValue(port, 'shoal_cs_unauthenticated_connections');
    t.ok(waiting <= 256, `cs${index} holds ${waiting} unauthenticated connections, within the default cap of 256`);
  }
});

t.test('with every slot taken by authenticated peers, a newcomer is refused and the others keep working', async (t) => {
  t.setTimeout(60_000);
  const cluster = await startCluster(t, {
    nbd: false, chunkServers: 1, csArgs: ['--connections-max', '8', '--unauthenticated-connections-max', '2'],
  });
  const port = csPort(cluster, 0);
  const connect = (): Promise<CsConnection> =>
    CsConnection.connect({ host: '127.0.0.1', port, credential: { role: 'peer', clusterKey: cluster.clusterKey } });
  const held: CsConnection[] = [];
  t.teardown(() => {
    for (const connection of held) connection.close();
  });
  let refusal: unknown = null;
  for (let attempt = 0; attempt < 12 && refusal === null; attempt += 1) {
    try {
      held.push(await connect());
    } catch (error) {
      refusal = error;
    }
  }
  t.ok(held.length >= 1 && held.length < 8, `${held.length} more peers got in beside the MDS's connections, then one was refused`);
  t.match(refusal, { code: 'ERR_UNAVAILABLE' }, 'the newcomer saw its connection closed');
  t.ok(await metricValue(csMetricsPort(cluster, 0), 'shoal_cs_connections_refused_total') >= 1, 'the refusal is counted');
  for (const connection of held) {
    const { reply } = await connection.request({ op: CS_OP.CHUNK_INFO, chunkId: 424_242 });
    t.equal(reply.code, 'ERR_CHUNK_NOT_FOUND', 'a peer already in is still served');
  }
});
