// The read-cache soak's checker (bench/soak): a sector's header read back; what counts as fresh,
// newer (a write in flight), stale and wrong; the workload against an in-memory device whose
// cache is right, and one whose cache keeps blocks a write changed (it must find stale reads);
// the verdict.

import t from 'tap';
import { FENCED_GENERATION, SECTOR_BYTES, SoakModel, parseSector } from '../bench/soak/model.ts';
import { verdict, formatReport, type SoakReport } from '../bench/soak/report.ts';
import { BLOCK_BYTES, Workload, emptyTally, type SoakClient } from '../bench/soak/workload.ts';
import { seededRandom } from '../src/util/clock.ts';
import { zipf } from './helpers/zipf.ts';

t.test('a sector says where it belongs; reads are judged against what was committed and issued', async (t) => {
  const model = new SoakModel(64, 77);
  const first = model.beginWrite(0, 64);
  model.acknowledge(0, first.generations);
  t.same(parseSector(first.data, 5 * SECTOR_BYTES), { runId: 77, sector: 5, generation: 1 }, 'the header of sector 5');
  const sector5v1 = Buffer.from(first.data.subarray(5 * SECTOR_BYTES, 6 * SECTOR_BYTES));

  const fresh = model.verify(sector5v1, 5, model.floors(5, 1));
  t.match(fresh, { sectors: 1, current: 1, ahead: 0, stale: 0, wrong: 0 }, 'what was written reads back fresh');

  // A write of sector 5 sent and not answered yet: a read sent meanwhile may see either.
  const floorsBefore = model.floors(5, 1);
  const second = model.beginWrite(5, 1);
  t.match(model.verify(sector5v1, 5, floorsBefore), { current: 1, stale: 0 }, 'the old bytes, while the write is in flight');
  t.match(model.verify(second.data, 5, floorsBefore), { ahead: 1, stale: 0, wrong: 0 }, 'or the new ones');
  // Acknowledged: a read sent after that must see it.
  model.acknowledge(5, second.generations);
  const stale = model.verify(sector5v1, 5, model.floors(5, 1));
  t.match(stale, { stale: 1, wrong: 0 }, 'the old bytes after the acknowledgement are stale');
  t.match(stale.problems[0], { kind: 'stale', sector: 5, found: 1, floor: 2, newest: 2 });
  // A write that failed: either may be there until the next one is acknowledged.
  const failed = model.beginWrite(5, 1);
  t.match(model.verify(second.data, 5, model.floors(5, 1)), { current: 1, stale: 0 }, 'after a failed write, the old bytes');
  t.match(model.verify(failed.data, 5, model.floors(5, 1)), { ahead: 1, wrong: 0 }, 'or the failed write\'s');

  const kinds = (data: Buffer, sector: number): string[] => model.verify(data, sector, model.floors(sector, data.length / SECTOR_BYTES)).problems.map((p) => p.kind);
  t.same(kinds(sector5v1, 6), ['wrong sector'], 'another sector\'s bytes');
  t.same(kinds(Buffer.alloc(SECTOR_BYTES), 7), ['bad magic'], 'zeroes');
  const flipped = Buffer.from(first.data.subarray(7 * SECTOR_BYTES, 8 * SECTOR_BYTES));
  flipped[1000] = (flipped[1000] ?? 0) ^ 1;
  t.same(kinds(flipped, 7), ['bad checksum'], 'one bit flipped in the payload');
  t.same(kinds(new SoakModel(64, 78).content(7, 1, 1), 7), ['other run'], 'another run\'s sector');
  t.same(kinds(model.content(7, 1, FENCED_GENERATION), 7), ['fenced write'], 'a fenced server\'s probe write');
  t.same(kinds(model.content(7, 1, 9), 7), ['never issued'], 'a generation never sent');
  const mixed = Buffer.concat([first.data.subarray(8 * SECTOR_BYTES, 9 * SECTOR_BYTES), Buffer.alloc(SECTOR_BYTES)]);
  t.match(model.verify(mixed, 8, model.floors(8, 2)), { sectors: 2, current: 1, wrong: 1 }, 'each sector of a long read is judged alone');
});

/** An in-memory volume behind a cache of 64 KiB blocks; `forgetInvalidation` breaks it the way the soak must catch. */
class FakeCachedDevice implements SoakClient {
  open = true;
  readonly cache = new Map<number, Buffer>();
  private readonly disk: Buffer;
  private readonly forgetInvalidation: boolean;

  constructor(bytes: number, forgetInvalidation: boolean) {
    this.disk = Buffer.alloc(bytes);
    this.forgetInvalidation = forgetInvalidation;
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    await new Promise((resolve) => setImmediate(resolve));
    const out = Buffer.alloc(lengthBytes);
    for (let at = offsetBytes; at < offsetBytes + lengthBytes; at += SECTOR_BYTES) {
      const block = Math.floor(at / BLOCK_BYTES);
      let cached = this.cache.get(block);
      if (cached === undefined) {
        cached = Buffer.from(this.disk.subarray(block * BLOCK_BYTES, (block + 1) * BLOCK_BYTES));
        this.cache.set(block, cached);
      }
      cached.copy(out, at - offsetBytes, at - block * BLOCK_BYTES, at - block * BLOCK_BYTES + SECTOR_BYTES);
    }
    return out;
  }

  async write(offsetBytes: number, data: Buffer): Promise<number> {
    await new Promise((resolve) => setImmediate(resolve));
    data.copy(this.disk, offsetBytes);
    if (!this.forgetInvalidation) this.cache.delete(Math.floor(offsetBytes / BLOCK_BYTES));
    return 0;
  }

  close(): void {
    this.open = false;
  }
}

async function soak(forgetInvalidation: boolean): Promise<Workload> {
  const blocks = 32;
  const model = new SoakModel((blocks * BLOCK_BYTES) / SECTOR_BYTES, 5);
  const device = new FakeCachedDevice(blocks * BLOCK_BYTES, forgetInvalidation);
  const prefill = model.beginWrite(0, model.sectors);
  await device.write(0, prefill.data);
  model.acknowledge(0, prefill.generations);
  device.cache.clear();
  const random = seededRandom(3);
  const workload = new Workload({ model, random, pickBlock: zipf(blocks, 1.1, random), workers: 8, writeShare: 0.05, readsWanted: 4_000 });
  workload.setTarget({ server: 'fake', clients: [device] });
  await workload.run();
  return workload;
}

t.test('the workload over a right cache finds nothing; over one that keeps overwritten blocks, stale reads', async (t) => {
  const right = await soak(false);
  t.ok(right.total.reads >= 4_000 && right.total.writes > 50, `${right.total.reads} reads, ${right.total.writes} writes`);
  t.match(right.total, { stale: 0, wrong: 0, failedReads: 0 }, 'a right cache: all fresh');
  t.same(right.problems, []);
  const broken = await soak(true);
  t.ok(broken.total.staleReads > 0, `a cache that ignores writes: ${broken.total.staleReads} stale reads found`);
  t.equal(broken.total.wrong, 0, 'stale, not wrong: the bytes are whole, just old');
  t.match(broken.problems[0], { kind: 'stale', server: 'fake', phase: 'steady' });
});

t.test('the verdict', async (t) => {
  const report = (changes: Partial<SoakReport>): SoakReport => ({
    settings: { seed: 1 }, readsWanted: 10, seconds: 2, timedOut: false, total: { ...emptyTally(), reads: 10, sectors: 20 }, byServer: {}, probes: {},
    caches: { 'hv-a': { hits: 3, misses: 1, admissions: 1, evictions: 0, invalidations: 0, corrupt: 2, restarts: 0 } },
    events: [], skipped: [], failuresByPhase: {}, unexpectedDisconnects: 0, problems: [], ...changes,
  });
  t.equal(verdict(report({})).code, 0, 'all fresh, complete: 0');
  t.match(formatReport(report({})), /\| hit ratio \| 75\.0 % \|/, 'the hit ratio from the server\'s counters');
  t.equal(verdict(report({ total: { ...emptyTally(), reads: 10, stale: 1, staleReads: 1 } })).code, 1, 'one stale sector: 1');
  t.equal(verdict(report({ probes: { 'hv-a': { ...emptyTally(), fencedWritesRefused: 3, fencedWritesAcknowledged: 1 } } })).code, 1, 'a fenced write acknowledged: 1');
  t.match(verdict(report({ timedOut: true, total: { ...emptyTally(), reads: 5 } })), { code: 2, text: /INCOMPLETE: 5 of 10 reads.*time limit/ }, 'cut short: 2');
});
