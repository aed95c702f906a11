// Writers are paced to the data disk's drain rate, and the journal never outgrows its space.
// First the pacer's decisions on explicit time; then a real journal on real files whose "data
// disk" (the chunk-file sync it calls at checkpoints) drains at a known, slow rate: writers far
// faster than it are slowed to about that rate, none fails, and the journal's files never take
// more than its space.

import t from 'tap';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DrainPacer, type PaceState } from '../src/cs/journal/drain_pacer.ts';
import { Journal } from '../src/cs/journal/journal.ts';
import { JOURNAL_RECORD_TYPE } from '../src/cs/journal/record.ts';
import { realDisk } from '../src/cs/disk/real_disk.ts';
import { createLogger } from '../src/util/log.ts';
import { systemClock } from '../src/util/clock.ts';

const MiB = 1024 * 1024;
const SEGMENT = 8 * MiB;

function state(heldBytes: number, nowMs: number, extra: Partial<PaceState> = {}): PaceState {
  return { heldBytes, limitBytes: 4 * SEGMENT, runningSync: null, nowMs, ...extra };
}

t.test('the pacer: unpaced up to a segment, then the drain rate, slower near full, never zero', async (t) => {
  const pacer = new DrainPacer({ segmentBytes: SEGMENT });
  t.equal(pacer.rateBytesPerSecond(state(3 * SEGMENT, 0)), Infinity, 'no drain measured yet: unpaced');
  pacer.noteSync(40 * MiB, 1_000);
  t.equal(pacer.drainBytesPerSecond, 40 * MiB, 'a sync of 40 MiB in a second: 40 MiB/s');
  pacer.noteSync(20 * MiB, 1_000);
  t.equal(pacer.drainBytesPerSecond, 30 * MiB, 'the estimate follows newer syncs (half weight)');
  pacer.noteSync(64 * MiB, 1);
  t.equal(pacer.drainBytesPerSecond, 30 * MiB, 'a sync too short to say anything is ignored');
  t.equal(pacer.rateBytesPerSecond(state(SEGMENT, 0)), Infinity, 'one segment held: unpaced (bursts are absorbed)');
  t.equal(pacer.rateBytesPerSecond(state(2 * SEGMENT, 0)), 30 * MiB, 'beyond it: the drain rate');
  const nearFull = pacer.rateBytesPerSecond(state(3.75 * SEGMENT, 0));
  t.ok(Math.abs(nearFull - 15 * MiB) < 1, `half-way through the last half segment: half the rate (${(nearFull / MiB).toFixed(1)} MiB/s)`);
  t.ok(pacer.rateBytesPerSecond(state(4 * SEGMENT, 0)) > 0, 'full: slow, but never zero (the space check is the hard stop)');
  const slowSync = pacer.rateBytesPerSecond(state(2 * SEGMENT, 10_000, { runningSync: { bytes: 10 * MiB, startedMs: 5_000 } }));
  t.equal(slowSync, 2 * MiB, 'a sync running longer than the estimate says bounds the rate by what it showed (10 MiB in 5 s)');
  const fastSync = pacer.rateBytesPerSecond(state(2 * SEGMENT, 5_100, { runningSync: { bytes: 10 * MiB, startedMs: 5_000 } }));
  t.equal(fastSync, 30 * MiB, 'one still within the estimate changes nothing');
});

t.test('the pacer lets bytes through at its rate, in order', async (t) => {
  const pacer = new DrainPacer({ segmentBytes: SEGMENT });
  pacer.noteSync(10 * MiB, 1_000); // 10 MiB/s
  let nowMs = 0;
  let taken = 0;
  const record = 64 * 1024;
  // Ask as often as a busy writer would (every millisecond) for ten seconds.
  for (; nowMs < 10_000; nowMs += 1) {
    while (pacer.take(record, state(2 * SEGMENT, nowMs)) === 0) taken += record;
  }
  const rate = taken / 10;
  t.ok(rate > 9.5 * MiB && rate < 10.5 * MiB, `10 s of a writer far faster than the drain: ${(rate / MiB).toFixed(2)} MiB/s at a 10 MiB/s drain`);
  while (pacer.take(record, state(2 * SEGMENT, nowMs)) === 0) taken += record;
  const waitMs = pacer.take(record, state(2 * SEGMENT, nowMs));
  t.ok(waitMs >= 1 && waitMs <= 10, `a refused record is told how long to wait (${waitMs} ms)`);
  t.equal(pacer.take(record, state(SEGMENT / 2, nowMs)), 0, 'once the journal drained below a segment: no wait');
});

t.test('a journal in front of a slow disk: writers slowed to its drain rate, none failed, its space never exceeded', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'shoal-drain-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const directory = join(dir, 'journal');
  const segmentBytes = 1 * MiB;
  const segments = 4;
  const drainBytesPerSecond = 8 * MiB;
  // The "data disk": a checkpoint's sync takes as long as the bytes applied since the last one
  // take at the drain rate (the journal measures its rate from exactly this).
  let appliedSinceSync = 0;
  let syncs = 0;
  const syncChunkFiles = async (): Promise<void> => {
    const bytes = appliedSinceSync;
    appliedSinceSync = 0;
    syncs += 1;
    await new Promise((resolve) => setTimeout(resolve, (bytes * 1000) / drainBytesPerSecond));
  };
  const journal = await Journal.open({
    disk: realDisk, clock: systemClock, directory, segmentBytesMax: segmentBytes, segmentsMax: segments, ownerUuid: '11111111-2222-4333-8444-555555555555',
    batchBytesMax: 1 * MiB, log: createLogger('test'), syncChunkFiles,
  }, async () => undefined);
  const capacityBytes = segments * segmentBytes;
  t.equal(journal.capacityBytes, capacityBytes);

  let largestFilesBytes = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      let bytes = 0;
      for (const name of await readdir(directory)) {
        if (name.endsWith('.log') || name.endsWith('.tmp')) bytes += (await stat(join(directory, name)).catch(() => ({ size: 0 }))).size;
      }
      largestFilesBytes = Math.max(largestFilesBytes, bytes);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  })();

  // Eight writers of 32 KiB records, ten times the journal's space in all: the journal takes them
  // at its device's speed (a tmpfs or an SSD here), many times the 8 MiB/s drain.
  const recordBytes = 32 * 1024;
  const totalBytes = 10 * capacityBytes;
  const payload = Buffer.alloc(recordBytes, 0x5a);
  let written = 0;
  let failures = 0;
  const startedMs = performance.now();
  const writer = async (): Promise<void> => {
    while (written < totalBytes) {
      written += recordBytes;
      const ticket = journal.append(JOURNAL_RECORD_TYPE.WRITE, 1, 0, recordBytes, payload);
      try {
        await ticket.durable;
        appliedSinceSync += recordBytes;
      } catch {
        failures += 1;
      } finally {
        ticket.applied();
      }
    }
  };
  await Promise.all(Array.from({ length: 8 }, writer));
  const seconds = (performance.now() - startedMs) / 1000;
  sampling = false;
  await sampler;
  const rate = totalBytes / seconds;
  const facts = journal.spaceFacts();
  t.equal(failures, 0, 'no write failed for want of journal space');
  t.ok(largestFilesBytes <= capacityBytes, `the journal's files never took more than its space: at most ${largestFilesBytes} of ${capacityBytes} bytes`);
  t.ok(journal.paceStats.pacedRecordsTotal > 0, `writers were paced: ${journal.paceStats.pacedRecordsTotal} records waited, ${journal.paceStats.pacedSecondsTotal.toFixed(1)} s in all`);
  const estimate = facts.drainBytesPerSecond ?? 0;
  t.ok(estimate > drainBytesPerSecond * 0.5 && estimate < drainBytesPerSecond * 2,
    `the measured drain rate is the disk's: ${(estimate / MiB).toFixed(1)} MiB/s for ${drainBytesPerSecond / MiB} MiB/s (${syncs} syncs)`);
  // Loose on purpose (a shared machine): slowed to about the drain rate, not far below it, and
  // not left to run at the journal device's speed either.
  t.ok(rate > drainBytesPerSecond * 0.4 && rate < drainBytesPerSecond * 2.5,
    `${(totalBytes / MiB).toFixed(0)} MiB went in at ${(rate / MiB).toFixed(1)} MiB/s against an ${drainBytesPerSecond / MiB} MiB/s drain`);
  await journal.close();
  t.ok(journal.spaceFacts().waitingRecords === 0, 'nothing left waiting after close');
});
