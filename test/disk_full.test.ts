// A chunk server's disk fills up while a guest writes (a real full file system: a small tmpfs,
// mounted by the test, so it runs as root only). The guest sees no error, the full server says it
// is unhealthy and why, new chunks go elsewhere, and what it holds stays readable.

import t from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CsConnection } from '../src/protocol/cs_connection.ts';
import { CS_OP } from '../src/protocol/cs_messages.ts';
import { startCluster } from './helpers/cluster.ts';
import { FAST_CS_ARGS, FAST_MDS_ARGS, FAST_NBD_ARGS } from './helpers/faults.ts';
import { run, runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;

t.test('a chunk server whose disk fills up', async (t) => {
  t.setTimeout(180_000);
  if (process.getuid?.() !== 0) {
    t.skip('needs root to mount a small file system', () => undefined);
    return;
  }
  // No rebalancing: it would move replicas off the full server, and this test reads one there.
  const cluster = await startCluster(t, {
    chunkServers: 3, mdsArgs: [...FAST_MDS_ARGS, '--rebalance-threshold', '100'], csArgs: FAST_CS_ARGS, nbdArgs: FAST_NBD_ARGS,
  });
  const small = cluster.chunkServerDir(3);
  await mkdir(small, { recursive: true });
  // Room for the journal's preallocated segments (2 x 8 MiB), the first chunk, and not much more.
  const mounted = await run('mount', ['-t', 'tmpfs', '-o', 'size=32m', 'tmpfs', small]);
  if (mounted.code !== 0) {
    t.skip(`cannot mount a tmpfs here: ${mounted.stderr.trim()}`, () => undefined);
    return;
  }
  t.teardown(async () => {
    await cluster.chunkServers[3]?.stop('SIGKILL');
    await run('umount', ['-l', small]);
  });
  cluster.chunkServers.push(null);
  await cluster.startChunkServer(3);
  await cluster.waitOnline(4);
  const smallId = await cluster.chunkServerId(3);
  // Four replicas on four servers: the small server holds every chunk, so it must fill up.
  await cluster.admin.createVolume({ name: 'fill', sizeBytes: 128 * MiB, chunkSizeBytes: 8 * MiB, replicas: { normal: 4, min: 2 } });

  // Thin provisioning: eight chunks are placed while the small server has room for each (a first
  // small write allocates them), then filled, which is more than it has. The first chunk is
  // filled while there is room, and never written again.
  const touches = Array.from({ length: 8 }, (_, index) => ['-c', `write -P 0x01 ${index * 8}M 4k`]).flat();
  await runOk('qemu-io', ['-f', 'raw', ...touches, cluster.nbdUnixUri('fill')]);
  const placed = await cluster.internal.chunkMap('fill', 0, 16);
  t.ok(placed.chunks.every((chunk) => chunk.replicas.some((r) => r.csId === smallId)), 'every chunk has a replica on the small server');
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 8M', cluster.nbdUnixUri('fill')]);
  const rest = randomBytes(56 * MiB);
  const restFile = join(cluster.dir, 'rest');
  await writeFile(restFile, rest);
  await runOk('qemu-io', ['-f', 'raw', '-c', `write -s ${restFile} 8M 56M`, cluster.nbdUnixUri('fill')], { timeoutMs: 120_000 });
  const image = join(cluster.dir, 'image');
  await writeFile(image, Buffer.concat([Buffer.alloc(8 * MiB, 0x5a), rest]));
  t.pass('56 MiB more written through NBD while the small server filled up: no error');

  const { chunkServers } = await cluster.admin.listChunkServers();
  const full = chunkServers.find((server) => server.id === smallId);
  t.equal(full?.healthy, false, 'the full server reports itself unhealthy');
  t.match(full?.lastError ?? '', /no space|ENOSPC/i, `and says why: ${full?.lastError}`);

  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 96M 8M', cluster.nbdUnixUri('fill')]);
  const { chunks } = await cluster.internal.chunkMap('fill', 0, 64);
  const newChunk = chunks.find((chunk) => chunk.chunkIndex === 12);
  t.ok(newChunk !== undefined && !newChunk.replicas.some((r) => r.csId === smallId), 'a new chunk is placed elsewhere');

  const out = join(cluster.dir, 'out');
  await runOk('nbdcopy', [cluster.nbdUnixUri('fill'), out], { timeoutMs: 120_000 });
  t.ok((await readFile(out)).subarray(0, 64 * MiB).equals(await readFile(image)), 'the volume reads back exactly');

  const firstChunk = chunks.find((chunk) => chunk.chunkIndex === 0);
  const port = Number(cluster.chunkServers[3]!.ready['port']);
  const direct = await CsConnection.connect({ host: '127.0.0.1', port, credential: { role: 'peer', clusterKey: cluster.clusterKey } });
  t.teardown(() => direct.close());
  const info = await direct.request({ op: CS_OP.CHUNK_INFO, chunkId: firstChunk!.chunkId });
  t.equal(info.reply.code, undefined, 'the full server still holds the first chunk');
  const read = await direct.request({ op: CS_OP.READ, chunkId: firstChunk!.chunkId, version: info.reply.version!, offsetBytes: 0, lengthBytes: 4 * MiB });
  t.equal(read.reply.code, undefined, 'and serves reads of it');
  t.ok(read.payload.length === 4 * MiB && read.payload.every((b) => b === 0x5a), 'with the right bytes');
});
