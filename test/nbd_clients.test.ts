// Real NBD clients from Debian (qemu-img, nbdcopy, qemu-io, nbdinfo) against a real cluster of one
// MDS and three chunk servers behind the NBD server: what goes in comes out, holes stay holes, and
// every chunk ends up with three identical replicas on disk.

import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster } from './helpers/cluster.ts';
import { runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
// Eight chunks: data before and after the two never-written ones (MiB 32-47), holes inside
// chunks, a chunk boundary and a last byte. Every check is in units of MiB and chunks, so a larger
// image proves nothing more; it only moved more bytes (it was 256 MiB: 1.5 GiB of replicas).
const IMAGE_BYTES = 64 * MiB;
const CHUNK_BYTES = 8 * MiB;

/** MiB `index` of the image holds data unless it is a hole: every fourth MiB, and MiB 32-47 (two whole chunks). */
function isDataMiB(index: number): boolean {
  return index % 4 !== 1 && !(index >= 32 && index < 48);
}

async function writeSourceImage(path: string): Promise<string> {
  const handle = await open(path, 'w');
  const hash = createHash('sha256');
  const zeroes = Buffer.alloc(MiB);
  for (let index = 0; index < IMAGE_BYTES / MiB; index += 1) {
    if (isDataMiB(index)) {
      const bytes = randomBytes(MiB);
      await handle.write(bytes, 0, MiB, index * MiB);
      hash.update(bytes);
    } else {
      hash.update(zeroes);
    }
  }
  await handle.truncate(IMAGE_BYTES);
  await handle.close();
  return hash.digest('hex');
}

async function sha256File(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

t.test('real clients against a three-replica cluster', async (t) => {
  t.setTimeout(240_000);
  const cluster = await startCluster(t);
  const work = join(cluster.dir, 'work');
  await runOk('mkdir', ['-p', work]);
  const source = join(work, 'source.img');
  const sourceHash = await writeSourceImage(source);
  for (const name of ['img', 'copy', 'io']) {
    await cluster.admin.createVolume({ name, sizeBytes: IMAGE_BYTES, chunkSizeBytes: CHUNK_BYTES });
  }

  await t.test('qemu-img convert in and out keeps every byte', async (t) => {
    const uri = cluster.nbdUnixUri('img');
    await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, uri], { timeoutMs: 120_000 });
    const out = join(work, 'img.out');
    await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, out], { timeoutMs: 120_000 });
    t.equal(await sha256File(out), sourceHash, 'sha256 of the image read back equals the source');
    await rm(out);
  });

  await t.test('nbdinfo --map reports data and holes truthfully', async (t) => {
    const { stdout } = await runOk('nbdinfo', ['--map', '--json', cluster.nbdUnixUri('img')]);
    const extents = JSON.parse(stdout) as Array<{ offset: number; length: number; type: number }>;
    let covered = 0;
    let wrong = 0;
    let gaps = 0;
    for (const extent of extents) {
      if (extent.offset !== covered) gaps += 1;
      covered += extent.length;
      const hole = (extent.type & 1) === 1;
      for (let at = extent.offset; at < extent.offset + extent.length; at += MiB) {
        if (hole === isDataMiB(Math.floor(at / MiB))) wrong += 1;
      }
    }
    t.equal(gaps, 0, 'extents are contiguous');
    t.equal(covered, IMAGE_BYTES, 'the map covers the whole volume');
    t.equal(wrong, 0, 'every data MiB is reported allocated and every hole MiB as a hole');
    const holes = extents.filter((e) => (e.type & 3) === 3);
    t.ok(holes.some((e) => e.offset <= 32 * MiB && e.offset + e.length >= 48 * MiB), 'the never-written chunks are one hole');
    const info = await cluster.admin.getVolume('img');
    t.equal(info.chunkCount, IMAGE_BYTES / CHUNK_BYTES - 2, 'the two all-zero chunks were never allocated');
  });

  await t.test('nbdcopy in and out keeps every byte', async (t) => {
    const uri = cluster.nbdUnixUri('copy');
    await runOk('nbdcopy', [source, uri], { timeoutMs: 120_000 });
    const out = join(work, 'copy.out');
    await runOk('nbdcopy', [cluster.nbdTcpUri('copy'), out], { timeoutMs: 120_000 });
    t.equal(await sha256File(out), sourceHash, 'sha256 equal after nbdcopy both ways (unix socket in, TCP out)');
    await rm(out);
  });

  await t.test('qemu-io: unaligned, across a chunk boundary, at the last byte', async (t) => {
    const uri = cluster.nbdTcpUri('io');
    const last = IMAGE_BYTES - 1;
    const writes = [
      `write -P 0x5a 511 3000`,
      `write -P 0xa5 ${CHUNK_BYTES - 1000} 5000`,
      `write -P 0x3c ${IMAGE_BYTES - 4096 - 17} 4113`,
      `write -P 0x77 ${last} 1`,
    ];
    await runOk('qemu-io', ['-f', 'raw', ...writes.flatMap((c) => ['-c', c]), uri]);
    const reads = [
      `read -P 0x5a 511 3000`,
      `read -P 0x00 0 511`,
      `read -P 0x00 3511 1000`,
      `read -P 0xa5 ${CHUNK_BYTES - 1000} 5000`,
      `read -P 0x00 ${CHUNK_BYTES - 2000} 1000`,
      `read -P 0x00 ${CHUNK_BYTES + 4000} 96`,
      `read -P 0x00 ${IMAGE_BYTES - 8192} 4079`,
      `read -P 0x3c ${IMAGE_BYTES - 4096 - 17} 4112`,
      `read -P 0x77 ${last} 1`,
    ];
    // A fresh connection, read-only: what was written is what is there, and nothing around it moved.
    const { stdout } = await runOk('qemu-io', ['-r', '-f', 'raw', ...reads.flatMap((c) => ['-c', c]), uri]);
    t.notMatch(stdout, /Pattern verification failed/, 'every pattern reads back');
    t.equal((stdout.match(/^read /gm) ?? []).length, reads.length, 'every read ran');
  });

  await t.test('every chunk has three identical replicas on disk', async (t) => {
    const replicas = await cluster.replicaHashes();
    const expected = (await cluster.admin.listVolumes()).volumes.reduce((sum, v) => sum + v.chunkCount, 0);
    t.equal(replicas.size, expected, 'every allocated chunk is on disk');
    let identical = 0;
    for (const [chunkId, hashes] of replicas) {
      if (hashes.length === 3 && new Set(hashes).size === 1) identical += 1;
      else t.fail(`chunk ${chunkId}: ${hashes.length} replicas, ${new Set(hashes).size} distinct contents`);
    }
    t.equal(identical, expected, `${identical} chunks, each with three identical replicas`);
  });

  await t.test('a discard of the whole volume makes it one hole, reading as zeroes', async (t) => {
    const uri = cluster.nbdUnixUri('copy');
    await runOk('qemu-io', ['-f', 'raw', '-c', `discard 0 ${IMAGE_BYTES}`, uri]);
    const { stdout } = await runOk('nbdinfo', ['--map', '--json', uri]);
    const extents = JSON.parse(stdout) as Array<{ offset: number; length: number; type: number }>;
    t.ok(extents.every((e) => (e.type & 3) === 3), `every extent is a hole that reads as zeroes (${extents.length} extents)`);
    const read = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', `read -P 0 0 ${IMAGE_BYTES}`, uri], { timeoutMs: 60_000 });
    t.notMatch(read.stdout, /verification failed/, 'and the bytes are zeroes');
  });

  await writeFile(join(work, 'done'), '');
});
