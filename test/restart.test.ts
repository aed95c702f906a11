// Stop every process and start again: what was written reads back unchanged. Done twice: after an
// orderly stop (SIGTERM), and after kill -9 of everything at once, where the journals replay.

import t from 'tap';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster } from './helpers/cluster.ts';
import { runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
// Four chunks of 8 MiB, a hole across a chunk boundary: what a restart must keep is per block
// and per chunk, so the 64 MiB it was proved nothing more than 32 MiB does.
const VOLUME_BYTES = 32 * MiB;

t.test('data survives a full restart, orderly and after kill -9', async (t) => {
  t.setTimeout(180_000);
  const cluster = await startCluster(t);
  await cluster.admin.createVolume({ name: 'keep', sizeBytes: VOLUME_BYTES, chunkSizeBytes: 8 * MiB });
  const image = join(cluster.dir, 'image');
  const readBack = join(cluster.dir, 'read-back');

  const writeImage = async (): Promise<Buffer> => {
    const bytes = randomBytes(VOLUME_BYTES);
    bytes.fill(0, 12 * MiB, 20 * MiB); // a hole
    await writeFile(image, bytes);
    await runOk('nbdcopy', [image, cluster.nbdUnixUri('keep')], { timeoutMs: 60_000 });
    return bytes;
  };
  const readImage = async (): Promise<Buffer> => {
    await runOk('nbdcopy', [cluster.nbdUnixUri('keep'), readBack], { timeoutMs: 60_000 });
    return readFile(readBack);
  };

  const first = await writeImage();
  await cluster.stopAll('SIGTERM');
  await cluster.startAll();
  t.ok((await readImage()).equals(first), 'unchanged after SIGTERM and restart');

  const second = await writeImage();
  // A small unaligned write acknowledged just before the crash must survive too.
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 1000 777', cluster.nbdUnixUri('keep')]);
  second.fill(0x42, 1000, 1777);
  await cluster.stopAll('SIGKILL');
  await cluster.startAll();
  t.ok((await readImage()).equals(second), 'unchanged after kill -9 of every daemon and restart');
  const volume = await cluster.admin.getVolume('keep');
  t.equal(volume.sizeBytes, VOLUME_BYTES, 'the MDS kept the volume');
});
