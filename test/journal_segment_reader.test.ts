// Reading journal segments at start-up, a piece at a time, on real files: a start after a crash
// reads the bytes its records take (plus a bounded look for damage), not the preallocated
// segments; records that cross pieces, or are larger than one, come back whole; damage is still
// told from a torn tail when a piece boundary falls anywhere.

import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Journal, type JournalOptions } from '../src/cs/journal/journal.ts';
import { JOURNAL_HEADER_BYTES, JOURNAL_RECORD_TYPE, SEGMENT_HEADER_BYTES, type JournalRecord } from '../src/cs/journal/record.ts';
import { SEGMENT_PIECE_BYTES, SegmentReader } from '../src/cs/journal/segment_reader.ts';
import type { Disk, DiskFile } from '../src/cs/disk/disk.ts';
import { realDisk } from '../src/cs/disk/real_disk.ts';
import { createLogger } from '../src/util/log.ts';
import { systemClock } from '../src/util/clock.ts';

const OWNER_UUID = '11111111-2222-4333-8444-555555555555';
const MiB = 1024 * 1024;

function options(directory: string, disk: Disk, segmentBytesMax: number, batchBytesMax: number): JournalOptions {
  return {
    disk, clock: systemClock, directory, segmentBytesMax, ownerUuid: OWNER_UUID, batchBytesMax,
    log: createLogger('test'), syncChunkFiles: async () => undefined,
  };
}

/** The real disk, counting the bytes read from files opened for reading or read whole. */
function countingDisk(counter: { bytesRead: number }): Disk {
  return {
    ...realDisk,
    async open(path, mode, openOptions): Promise<DiskFile> {
      const file = await realDisk.open(path, mode, openOptions);
      return new Proxy(file, {
        get(target, property) {
          if (property === 'read') {
            return async (...args: Parameters<DiskFile['read']>) => {
              const bytesRead = await target.read(...args);
              counter.bytesRead += bytesRead;
              return bytesRead;
            };
          }
          const value: unknown = Reflect.get(target, property);
          return typeof value === 'function' ? value.bind(target) : value;
        },
      });
    },
    async readFile(path) {
      const bytes = await realDisk.readFile(path);
      counter.bytesRead += bytes.length;
      return bytes;
    },
  };
}

async function scratch(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shoal-segment-reader-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Appends each record on its own (one batch each), durable and applied. */
async function appendEach(journal: Journal, payloads: readonly Buffer[]): Promise<void> {
  for (const [i, payload] of payloads.entries()) {
    const ticket = journal.append(JOURNAL_RECORD_TYPE.WRITE, i + 1, 0, payload.length, payload);
    await ticket.durable;
    ticket.applied();
  }
}

async function segmentPath(dir: string): Promise<string> {
  const [segment] = (await readdir(dir)).filter((n) => /^\d{16}\.log$/.test(n));
  if (segment === undefined) throw new Error(`no segment in ${dir}`);
  return join(dir, segment);
}

async function readAll(path: string, pieceBytes: number, batchBytesMax: number): Promise<{ records: JournalRecord[]; damaged: boolean }> {
  const reader = await SegmentReader.open(await realDisk.open(path, 'read'), pieceBytes);
  try {
    const records: JournalRecord[] = [];
    for await (const record of reader.records(1)) records.push({ ...record, payload: Buffer.from(record.payload) });
    return { records, damaged: await reader.laterBatchPastStop(1, batchBytesMax) };
  } finally {
    await reader.close();
  }
}

t.test('a start after a crash reads what the records take, not the preallocated segment', async (t) => {
  const dir = await scratch(t);
  const segmentBytesMax = 64 * MiB;
  const journal = await Journal.open(options(dir, realDisk, segmentBytesMax, MiB), async () => undefined);
  const payloads = [randomBytes(4096), randomBytes(100), randomBytes(70_000)];
  await appendEach(journal, payloads);
  await journal.abandon(); // the process "crashed" here
  t.equal((await readFile(await segmentPath(dir))).length, segmentBytesMax, 'the segment is preallocated');

  const counter = { bytesRead: 0 };
  const replayed: JournalRecord[] = [];
  const scanned: number[] = [];
  const reopened = await Journal.open(
    options(dir, countingDisk(counter), segmentBytesMax, MiB),
    async (record) => void replayed.push({ ...record, payload: Buffer.from(record.payload) }),
    (record) => void scanned.push(record.index),
  );
  t.same(scanned, [0, 1, 2], 'every record scanned');
  t.same(replayed.map((r) => r.chunkId), [1, 2, 3], 'every record replayed');
  for (const [i, payload] of payloads.entries()) t.ok(replayed[i]?.payload.equals(payload), `record ${i} whole`);
  // The owner check, the scan and the replay read a piece each; the damage look a batch past the stop.
  const boundBytes = 3 * SEGMENT_PIECE_BYTES + MiB + SEGMENT_PIECE_BYTES;
  t.ok(counter.bytesRead <= boundBytes, `${counter.bytesRead} bytes read from a ${segmentBytesMax}-byte segment (at most ${boundBytes})`);
  await reopened.close();
});

t.test('records across pieces, and larger than one, come back whole at any piece size', async (t) => {
  const dir = await scratch(t);
  const journal = await Journal.open(options(dir, realDisk, MiB, MiB), async () => undefined);
  const payloads = Array.from({ length: 40 }, (_, i) => randomBytes(1 + ((i * 977) % 5000)));
  await appendEach(journal, payloads);
  await journal.abandon();
  const path = await segmentPath(dir);
  for (const pieceBytes of [64, 97, 1000, 4096, SEGMENT_PIECE_BYTES]) {
    const { records, damaged } = await readAll(path, pieceBytes, MiB);
    t.equal(records.length, payloads.length, `${pieceBytes}-byte pieces: every record`);
    t.ok(records.every((record, i) => record.index === i && record.payload.equals(payloads[i] ?? Buffer.alloc(0))), `${pieceBytes}-byte pieces: in order, whole`);
    t.notOk(damaged, `${pieceBytes}-byte pieces: the end is not taken for damage`);
  }
});

t.test('damage is told from a torn tail at any piece size, within a batch of the stop', async (t) => {
  const dir = await scratch(t);
  const journal = await Journal.open(options(dir, realDisk, MiB, MiB), async () => undefined);
  const payloads = Array.from({ length: 20 }, () => randomBytes(300));
  await appendEach(journal, payloads);
  await journal.abandon();
  const path = await segmentPath(dir);
  const bytes = await readFile(path);
  const recordBytes = JOURNAL_HEADER_BYTES + 300;
  const damagedAt = SEGMENT_HEADER_BYTES + recordBytes * 7 + JOURNAL_HEADER_BYTES + 10; // inside the eighth record's payload
  bytes.writeUInt8(bytes.readUInt8(damagedAt) ^ 0xff, damagedAt);
  await writeFile(path, bytes);
  for (const pieceBytes of [64, 97, 1000, SEGMENT_PIECE_BYTES]) {
    const { records, damaged } = await readAll(path, pieceBytes, MiB);
    t.equal(records.length, 7, `${pieceBytes}-byte pieces: replay stops at the damaged record`);
    t.ok(damaged, `${pieceBytes}-byte pieces: the later records prove damage`);
  }
  // The look goes one batch past the stop (or to the end of the record there, when its header
  // is whole): a later record beyond that is not searched for.
  t.ok((await readAll(path, 64, 100)).damaged, 'the damaged record\'s own size leads to the next batch');
  const headless = Buffer.from(bytes);
  headless.fill(0, SEGMENT_HEADER_BYTES + recordBytes * 7, SEGMENT_HEADER_BYTES + recordBytes * 7 + 8); // its magic and size
  await writeFile(path, headless);
  t.ok((await readAll(path, 64, recordBytes + 1)).damaged, 'a batch past the stop, found');
  t.notOk((await readAll(path, 64, 100)).damaged, 'a later batch further than batchBytesMax past the stop is not looked for');
  await writeFile(path, bytes);

  // A torn tail (the last records cut off) is the end, not damage.
  await writeFile(path, bytes.subarray(0, SEGMENT_HEADER_BYTES + recordBytes * 19 + 100));
  const torn = await readAll(path, 97, MiB);
  t.equal(torn.records.length, 7, 'still stops at the damage');
  const clean = Buffer.from(await readFile(path));
  clean.writeUInt8(clean.readUInt8(damagedAt) ^ 0xff, damagedAt); // undo the damage
  await writeFile(path, clean);
  const tail = await readAll(path, 97, MiB);
  t.equal(tail.records.length, 19, 'a torn last record ends replay');
  t.notOk(tail.damaged, 'and is not damage');
});
