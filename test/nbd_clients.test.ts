// Real NBD clients from Debian (qemu-img, nbdcopy, qemu-io, nbdinfo, libnbd's Python binding) against a real cluster of one
// MDS and three chunk servers behind the NBD server: what goes in comes out, holes stay holes, and
// every chunk ends up with three identical replicas on disk.

import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster } from './helpers/cluster.ts';
import { speakAfterGreeting } from './helpers/nbd_raw.ts';
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

  await t.test('a plain newstyle client (without the fixed-newstyle flag) is served; other options from it end only its connection', async (t) => {
    const uri = cluster.nbdUnixUri('io');
    // libnbd told to leave out the fixed-newstyle flag speaks as old clients do: EXPORT_NAME, then
    // transmission. Both with and without NO_ZEROES (the export reply then ends in 124 zeroes).
    const script = [
      'import nbd, sys',
      'uri, flags, offset, fill = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])',
      'h = nbd.NBD()',
      'h.set_handshake_flags(flags)',
      'h.connect_uri(uri)',
      'data = bytes((i * 7 + fill) % 251 for i in range(65536))',
      'h.pwrite(data, offset)',
      'h.flush()',
      'print(h.get_protocol(), h.get_size(), h.pread(65536, offset) == data)',
      'h.shutdown()',
    ].join('\n');
    const flagsChoices = [0, 2]; // none; NO_ZEROES only (FIXED_NEWSTYLE is 1)
    for (const [index, flags] of flagsChoices.entries()) {
      const { stdout } = await runOk('/usr/bin/python3', ['-c', script, uri, String(flags), String(20 * MiB + index * 65536), String(index + 3)]);
      t.equal(stdout.trim(), `newstyle ${IMAGE_BYTES} True`, `handshake flags ${flags}: plain newstyle, the volume's size, 64 KiB written and read back`);
    }
    // A fixed-newstyle client reads what the plain ones wrote.
    const check = [
      'import nbd, sys',
      'h = nbd.NBD()',
      'h.connect_uri(sys.argv[1])',
      'ok = all(h.pread(65536, 20 * 1048576 + i * 65536) == bytes((j * 7 + i + 3) % 251 for j in range(65536)) for i in range(2))',
      'print(h.get_protocol(), ok)',
    ].join('\n');
    const fixed = await runOk('/usr/bin/python3', ['-c', check, uri]);
    t.equal(fixed.stdout.trim(), 'newstyle-fixed True', 'a fixed-newstyle client reads the same bytes');

    // A plain newstyle client that sends NBD_OPT_LIST gets no reply (it could not read one): the
    // connection closes, and the server serves the next client.
    const socketPath = new URL(uri).searchParams.get('socket') ?? '';
    const option = Buffer.alloc(4 + 16);
    option.write('IHAVEOPT', 4, 'latin1');
    option.writeUInt32BE(3, 12); // NBD_OPT_LIST, no data; client flags 0 before it
    const received = await speakAfterGreeting(socketPath, option);
    t.same(received, { bytes: 18, closed: true }, 'the greeting, then the server closes without a reply');
    const after = await runOk('nbdinfo', ['--size', uri]);
    t.equal(after.stdout.trim(), String(IMAGE_BYTES), 'and serves the next client');
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
