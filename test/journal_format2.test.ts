// A data directory of the previous version, whose journal holds format-2 segments (no header,
// records from byte 0, as record.ts documents them; written here by a writer of its own, not by
// this version's code): its chunk store still opens and replays them from DATA/journal, and
// refuses them from any other journal directory, where nothing says whose they are. Also: a
// journal of another data directory is refused without a change to either.

import t from 'tap';
import { crc32c } from '@node-rs/crc32';
import { randomUUID } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChunkStore, REAL_STORE_ENV } from '../src/cs/store/chunk_store.ts';
import { createLogger } from '../src/util/log.ts';

const KiB = 1024;
const CHUNK = 7;

/** A format-2 WRITE record: 40-byte header (magic SHJ2), then the bytes. */
function format2Write(segmentNumber: number, index: number, offsetBytes: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(40);
  head.writeUInt32BE(0x53484a32, 0);
  head.writeUInt32BE(40 + payload.length, 4);
  head.writeUInt8(1, 12); // WRITE; position in batch 0
  head.writeUInt32BE(segmentNumber, 16);
  head.writeUInt32BE(index, 20);
  head.writeUInt32BE(0, 24);
  head.writeUInt32BE(CHUNK, 28);
  head.writeUInt32BE(offsetBytes, 32);
  head.writeUInt32BE(payload.length, 36);
  head.writeUInt32BE(crc32c(head.subarray(12), crc32c(payload)), 8);
  return Buffer.concat([head, payload]);
}

async function openStore(directory: string, ownerUuid: string, journalDirectory?: string): Promise<ChunkStore> {
  return ChunkStore.open({
    ...REAL_STORE_ENV, directory, ownerUuid, openChunksMax: 8, journalSegmentBytesMax: 1024 * KiB, log: createLogger('test'),
    ...(journalDirectory === undefined ? {} : { journalDirectory }),
  });
}

t.test('format-2 segments replay from DATA/journal only; another disk\'s journal is refused', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'shoal-journal-format2-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const dataDir = join(root, 'data');
  const uuid = randomUUID();
  const first = await openStore(dataDir, uuid);
  await first.createChunk({ chunkId: CHUNK, volumeId: 1, chunkIndex: 0, sizeBytes: 1024 * KiB, version: 1, generation: 0 });
  await first.write(CHUNK, 1, 0, Buffer.alloc(16 * KiB, 0x11));
  await first.close();

  // What the previous version left after a crash: a format-2 segment with two records owed to the
  // chunk file, then the zeroes of a preallocated segment.
  const journal = join(dataDir, 'journal');
  for (const name of await readdir(journal)) await rm(join(journal, name));
  const segment = Buffer.concat([
    format2Write(5, 0, 4 * KiB, Buffer.alloc(4 * KiB, 0x22)),
    format2Write(5, 1, 10_000, Buffer.alloc(100, 0x33)),
    Buffer.alloc(64 * KiB),
  ]);
  await writeFile(join(journal, '0000000000000005.log'), segment);

  const elsewhere = join(root, 'ssd-journal');
  await mkdir(elsewhere);
  await copyFile(join(journal, '0000000000000005.log'), join(elsewhere, '0000000000000005.log'));
  await t.rejects(openStore(dataDir, uuid, elsewhere), { code: 'ERR_JOURNAL_OWNER', message: /format-2 journal segments .* replayed only from/ },
    'format-2 segments outside DATA/journal are refused: nothing says whose they are');

  const store = await openStore(dataDir, uuid);
  const expected = Buffer.alloc(16 * KiB, 0x11);
  expected.fill(0x22, 4 * KiB, 8 * KiB);
  expected.fill(0x33, 10_000, 10_100);
  t.ok((await store.read(CHUNK, 1, 0, 16 * KiB)).equals(expected), 'the format-2 records were replayed into the chunk');
  t.equal(store.journal.damagedRecordsTotal, 0, 'and no damage was seen');
  await store.close();

  // The journal now is format 3, naming this data directory: another one refuses it, unchanged.
  const otherDir = join(root, 'other');
  const otherUuid = randomUUID();
  await t.rejects(openStore(otherDir, otherUuid, journal), {
    code: 'ERR_JOURNAL_OWNER', message: new RegExp(`${journal} holds the journal of another data directory \\(uuid ${uuid}.*${otherDir} \\(uuid ${otherUuid}\\)`),
  }, 'a data directory given another one\'s journal refuses it, naming both');
  const again = await openStore(dataDir, uuid);
  t.ok((await again.read(CHUNK, 1, 0, 16 * KiB)).equals(expected), 'and the journal\'s own data directory still opens with it');
  await again.close();
});
