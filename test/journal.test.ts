// The chunk-server journal on real files: group commit makes every append durable before it
// resolves; a journal left by a crash replays every acknowledged record in order; a torn tail or a
// corrupted record stops replay there and never yields damaged data.

import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { mkdtemp, readdir, readFile, readlink, rm, truncate, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Journal } from '../src/cs/journal/journal.ts';
import { JOURNAL_HEADER_BYTES, JOURNAL_RECORD_TYPE, SEGMENT_HEADER_BYTES, type JournalRecord } from '../src/cs/journal/record.ts';
import { createLogger } from '../src/util/log.ts';
import { systemClock } from '../src/util/clock.ts';
import { realDisk } from '../src/cs/disk/real_disk.ts';

const OWNER_UUID = '11111111-2222-4333-8444-555555555555';

async function openJournal(directory: string, replayed: JournalRecord[] = []): Promise<Journal> {
  return Journal.open(
    { disk: realDisk, clock: systemClock, directory, segmentBytesMax: 1 << 20, ownerUuid: OWNER_UUID, batchBytesMax: 1 << 20, log: createLogger('test'), syncChunkFiles: async () => undefined },
    async (record) => {
      replayed.push({ ...record, payload: Buffer.from(record.payload) });
    },
  );
}

const execFileAsync = promisify(execFile);

/** Appends, waits until durable, and marks the record applied, as the chunk store does. */
async function appendApplied(journal: Journal, ...args: Parameters<Journal['append']>): Promise<void> {
  const ticket = journal.append(...args);
  try {
    await ticket.durable;
  } finally {
    ticket.applied();
  }
}

/** Whether a spare is (or within a few seconds becomes) ready in `dir`: spares are prepared in the background. */
async function spareAppears(dir: string): Promise<boolean> {
  const deadlineMs = Date.now() + 10_000;
  for (;;) {
    if ((await readdir(dir)).some((n) => n.startsWith('spare-'))) return true;
    if (Date.now() > deadlineMs) return false;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function scratch(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shoal-journal-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

t.test('acknowledged records replay in order after a crash', async (t) => {
  const dir = await scratch(t);
  const journal = await openJournal(dir);
  const payloads = Array.from({ length: 200 }, (_, i) => randomBytes(1 + (i % 7) * 700));
  await Promise.all(payloads.map((payload, i) => appendApplied(journal, JOURNAL_RECORD_TYPE.WRITE, 1000 + i, i * 10, payload.length, payload)));
  await appendApplied(journal, JOURNAL_RECORD_TYPE.ZERO, 5, 4096, 8192);
  t.ok(journal.stats.commitsTotal < journal.stats.appendsTotal, `group commit: ${journal.stats.appendsTotal} appends in ${journal.stats.commitsTotal} commits`);
  await journal.abandon(); // the process "crashed" here
  const replayed: JournalRecord[] = [];
  const reopened = await openJournal(dir, replayed);
  t.equal(replayed.length, 201, 'every acknowledged record comes back');
  for (const [i, payload] of payloads.entries()) {
    t.equal(replayed[i]?.chunkId, 1000 + i);
    t.ok(replayed[i]?.payload.equals(payload), `payload ${i} intact`);
  }
  t.match(replayed[200], { type: JOURNAL_RECORD_TYPE.ZERO, chunkId: 5, offsetBytes: 4096, lengthBytes: 8192 });
  t.same(replayed.map((r) => r.index), replayed.map((_, i) => i), 'in order: consecutive indexes of one segment');
  await reopened.close();
});

t.test('segments are opened with O_DSYNC: a commit\'s writev is its sync', async (t) => {
  const dir = await scratch(t);
  const journal = await openJournal(dir);
  await appendApplied(journal, JOURNAL_RECORD_TYPE.WRITE, 1, 0, 4096, randomBytes(4096));
  // The kernel's view of the segment's open file: fdinfo's flags (octal) carry O_DSYNC.
  const fdDir = '/proc/self/fd';
  const segmentFds = [];
  for (const fd of await readdir(fdDir)) {
    const target = await readlink(join(fdDir, fd)).catch(() => '');
    if (target.startsWith(dir) && target.endsWith('.log')) segmentFds.push(fd);
  }
  t.equal(segmentFds.length, 1, 'one segment open');
  const flags = Number.parseInt(/flags:\s+(\d+)/.exec(await readFile(`/proc/self/fdinfo/${segmentFds[0]}`, 'utf8'))?.[1] ?? '0', 8);
  t.ok((flags & fsConstants.O_DSYNC) === fsConstants.O_DSYNC, `O_DSYNC set (flags 0${flags.toString(8)})`);
  await journal.close();
});

t.test('an in-place record carries its blocks\' sums, is scanned before replay, and only fits whole blocks', async (t) => {
  const dir = await scratch(t);
  const journal = await openJournal(dir);
  const sums = Buffer.alloc(3 * 4);
  for (let i = 0; i < 3; i += 1) sums.writeUInt32BE(0x01020304 * (i + 1), i * 4);
  await appendApplied(journal, JOURNAL_RECORD_TYPE.WRITE, 9, 0, 4096, Buffer.alloc(4096, 7));
  await appendApplied(journal, JOURNAL_RECORD_TYPE.IN_PLACE, 9, 8192, 3 * 4096, sums);
  t.throws(() => journal.append(JOURNAL_RECORD_TYPE.IN_PLACE, 9, 100, 3 * 4096, sums), 'an in-place record covers whole blocks');
  t.throws(() => journal.append(JOURNAL_RECORD_TYPE.IN_PLACE, 9, 8192, 3 * 4096, sums.subarray(4)), 'one sum per block');
  await journal.abandon();
  const scanned: string[] = [];
  const replayed: JournalRecord[] = [];
  const reopened = await Journal.open(
    { disk: realDisk, clock: systemClock, directory: dir, segmentBytesMax: 1 << 20, ownerUuid: OWNER_UUID, batchBytesMax: 1 << 20, log: createLogger('test'), syncChunkFiles: async () => undefined },
    async (record) => {
      t.equal(scanned.length, 2, 'every record is scanned before the first is applied');
      replayed.push({ ...record, payload: Buffer.from(record.payload) });
    },
    (record) => void scanned.push(`${record.type}:${record.offsetBytes}`),
  );
  t.same(scanned, [`${JOURNAL_RECORD_TYPE.WRITE}:0`, `${JOURNAL_RECORD_TYPE.IN_PLACE}:8192`]);
  t.match(replayed[1], { type: JOURNAL_RECORD_TYPE.IN_PLACE, chunkId: 9, offsetBytes: 8192, lengthBytes: 3 * 4096 });
  t.ok(replayed[1]?.payload.equals(sums), 'the sums come back');
  await reopened.close();
});

t.test('a torn tail and a corrupted record end replay there', async (t) => {
  const dir = await scratch(t);
  const journal = await openJournal(dir);
  for (let i = 0; i < 10; i += 1) await appendApplied(journal, JOURNAL_RECORD_TYPE.WRITE, i + 1, 0, 100, Buffer.alloc(100, i));
  await journal.abandon();
  const [segment] = (await readdir(dir)).filter((n) => /^\d{16}\.log$/.test(n));
  const path = join(dir, segment!);
  const recordBytes = JOURNAL_HEADER_BYTES + 100;
  await truncate(path, SEGMENT_HEADER_BYTES + recordBytes * 9 + 50); // the tenth record is cut in half
  const bytes = await readFile(path);
  const damaged = SEGMENT_HEADER_BYTES + recordBytes * 5 + JOURNAL_HEADER_BYTES + 3; // inside the sixth record's payload
  bytes.writeUInt8(bytes.readUInt8(damaged) ^ 0xff, damaged);
  await writeFile(path, bytes);
  const replayed: JournalRecord[] = [];
  const reopened = await openJournal(dir, replayed);
  t.same(replayed.map((r) => r.chunkId), [1, 2, 3, 4, 5], 'records before the damage only');
  t.equal(reopened.damagedRecordsTotal, 1, 'damage is reported, not taken for a torn tail');
  for (const record of replayed) t.ok(record.payload.every((b) => b === record.chunkId - 1), 'undamaged bytes');
  await reopened.close();
});

t.test('checkpoints drop old segments once chunk files are synced', async (t) => {
  const dir = await scratch(t);
  let syncs = 0;
  const journal = await Journal.open(
    { disk: realDisk, clock: systemClock, directory: dir, segmentBytesMax: 64 * 1024, ownerUuid: OWNER_UUID, batchBytesMax: 1 << 20, log: createLogger('test'), syncChunkFiles: async () => { syncs += 1; } },
    async () => undefined,
  );
  for (let i = 0; i < 40; i += 1) await appendApplied(journal, JOURNAL_RECORD_TYPE.WRITE, 1, 0, 4096, Buffer.alloc(4096));
  t.ok((await readdir(dir)).filter((n) => /^\d{16}\.log$/.test(n)).length >= 1);
  await journal.checkpoint();
  const segments = (await readdir(dir)).filter((n) => /^\d{16}\.log$/.test(n));
  t.equal(segments.length, 1, 'only the current segment remains');
  // A segment that ran past its size is deleted and a spare zero-filled in the background.
  t.ok(await spareAppears(dir), 'a spare is ready for reuse');
  t.ok(syncs >= 1, 'chunk files synced before segments were dropped');
  await journal.close();
});

t.test('a torn tail alone is not damage', async (t) => {
  const dir = await scratch(t);
  const journal = await openJournal(dir);
  for (let i = 0; i < 3; i += 1) await appendApplied(journal, JOURNAL_RECORD_TYPE.WRITE, i + 1, 0, 10, Buffer.alloc(10, i));
  await journal.abandon();
  const [segment] = (await readdir(dir)).filter((n) => /^\d{16}\.log$/.test(n));
  await truncate(join(dir, segment!), SEGMENT_HEADER_BYTES + (JOURNAL_HEADER_BYTES + 10) * 2 + 7);
  const replayed: JournalRecord[] = [];
  const reopened = await openJournal(dir, replayed);
  t.same(replayed.map((r) => r.chunkId), [1, 2]);
  t.equal(reopened.damagedRecordsTotal, 0);
  await reopened.close();
});

t.test('a checkpoint waits until records of the old segment reach the chunk files', async (t) => {
  const dir = await scratch(t);
  const events: string[] = [];
  const journal = await Journal.open(
    { disk: realDisk, clock: systemClock, directory: dir, segmentBytesMax: 1 << 20, ownerUuid: OWNER_UUID, batchBytesMax: 1 << 20, log: createLogger('test'), syncChunkFiles: async () => { events.push('sync'); } },
    async () => undefined,
  );
  const ticket = journal.append(JOURNAL_RECORD_TYPE.WRITE, 1, 0, 10, Buffer.alloc(10));
  await ticket.durable;
  const checkpoint = journal.checkpoint().then(() => events.push('checkpoint done'));
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.same(events, [], 'no sync while a durable record is not applied yet');
  events.push('applied');
  ticket.applied();
  await checkpoint;
  t.same(events, ['applied', 'sync', 'checkpoint done']);
  await journal.close();
});

t.test('recycled segments: records of a file\'s earlier life are never replayed', async (t) => {
  const dir = await scratch(t);
  // Small segments, so that several checkpoints recycle files.
  const open = (replayed: JournalRecord[]) => Journal.open(
    { disk: realDisk, clock: systemClock, directory: dir, segmentBytesMax: 16 * 1024, ownerUuid: OWNER_UUID, batchBytesMax: 1 << 20, log: createLogger('test'), syncChunkFiles: async () => undefined },
    async (record) => { replayed.push({ ...record, payload: Buffer.from(record.payload) }); },
  );
  const first = await open([]);
  for (let i = 0; i < 60; i += 1) await appendApplied(first, JOURNAL_RECORD_TYPE.WRITE, 1, 0, 1000, Buffer.alloc(1000, i));
  await first.checkpoint();
  for (let i = 0; i < 3; i += 1) await appendApplied(first, JOURNAL_RECORD_TYPE.WRITE, 2, 0, 10, Buffer.alloc(10, 100 + i));
  t.ok(await spareAppears(dir), 'spares exist');
  // Crash: the current segment is a recycled file holding old records after the three new ones.
  await first.abandon();
  const replayed: JournalRecord[] = [];
  const second = await open(replayed);
  t.same(replayed.map((r) => r.payload[0]), [100, 101, 102], 'only the three records written since the checkpoint');
  t.equal(second.damagedRecordsTotal, 0, 'old records are not taken for damage');
  await second.close();
});

t.test('a journal on a full disk fails its writes, then takes writes again once there is room', async (t) => {
  if (process.getuid?.() !== 0) {
    t.skip('needs root to mount a small file system', () => undefined);
    return;
  }
  const dir = await scratch(t);
  const mounted = await execFileAsync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir]).then(() => true, () => false);
  if (!mounted) {
    t.skip('cannot mount a tmpfs here', () => undefined);
    return;
  }
  t.teardown(() => execFileAsync('umount', ['-l', dir]).then(() => undefined, () => undefined));
  const filler = join(dir, 'filler');
  await writeFile(filler, Buffer.alloc(700 * 1024));
  // The journal's space (20 segments of 64 KiB) is larger than the disk's room: the disk fills first.
  const options = {
    disk: realDisk, clock: systemClock, directory: join(dir, 'j'), segmentBytesMax: 64 * 1024, segmentsMax: 20, ownerUuid: OWNER_UUID, batchBytesMax: 1 << 20,
    log: createLogger('test'), syncChunkFiles: async () => undefined,
  };
  const journal = await Journal.open(options, async () => undefined);
  let acked = 0;
  let failure: unknown = null;
  // The records stay unapplied until the disk is full, so no checkpoint can recycle a segment and
  // the journal must grow into the 300 KiB left: the disk fills whatever the timing.
  const unapplied: Array<{ applied(): void }> = [];
  for (let i = 0; i < 200 && failure === null; i += 1) {
    const ticket = journal.append(JOURNAL_RECORD_TYPE.WRITE, 1, 0, 4096, Buffer.alloc(4096, i % 250));
    unapplied.push(ticket);
    try {
      await ticket.durable;
      acked += 1;
    } catch (error) {
      failure = error;
    }
  }
  for (const ticket of unapplied) ticket.applied();
  t.match(failure, { code: 'ERR_NO_SPACE' }, `the disk fills after ${acked} records`);
  t.match(journal.healthError, { code: 'ERR_NO_SPACE' }, 'and the journal says so');
  await rm(filler);
  await new Promise((resolve) => setTimeout(resolve, 1_100));
  await appendApplied(journal, JOURNAL_RECORD_TYPE.WRITE, 2, 0, 4096, Buffer.alloc(4096, 0xee));
  t.equal(journal.healthError, null, 'with room again, writes are taken');
  await journal.abandon();
  const replayed: JournalRecord[] = [];
  const reopened = await Journal.open(options, async (record) => { replayed.push({ ...record, payload: Buffer.from(record.payload) }); });
  // Checkpoints recycled the older segments: what is left to replay is the tail since the last one.
  t.ok(replayed.length >= 1, `replay finds the records since the last checkpoint (${replayed.length})`);
  t.ok(replayed.every((record, index) => index === 0 || record.index === (replayed[index - 1]?.index ?? 0) + 1 || record.segmentNumber !== replayed[index - 1]?.segmentNumber),
    'in order, with no gap');
  t.equal(replayed.at(-1)?.payload[0], 0xee, 'the last record is the one written after the disk had room');
  t.equal(reopened.damagedRecordsTotal, 0);
  await reopened.abandon();
});
