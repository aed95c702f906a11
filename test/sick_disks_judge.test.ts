// Sick-disk judgement, pure, with explicit time (src/mds/sick_disks.ts): a disk far slower than its
// tier's other disks for the sustained time is marked ill, with the reason; not before, not when
// it is only a little slower, not against another tier's disks, not on too few operations; it
// recovers only after being fine for the recovery time; a restart of its server (totals going
// down) starts its measurements over.

import t from 'tap';
import { SickDisks, type DiskTotals, type JudgedServer } from '../src/mds/sick_disks.ts';

const config = { factor: 5, floorMs: 20, sickAfterMs: 10_000, recoverAfterMs: 20_000, windowMs: 5_000, minOps: 5 };

/** One second of a server's work: commits and reads, each count with its mean latency (and a read's size). */
interface Second {
  readonly commits?: number;
  readonly commitMs: number;
  readonly reads?: number;
  readonly readMs?: number;
  readonly readBytes?: number;
}

/**
 * Servers reporting every second. `work(csId, second)` is what each did then: a latency in ms
 * alone means 10 commits at that latency and no reads.
 */
function simulate(seconds: number, servers: readonly JudgedServer[], work: (csId: number, second: number) => number | Second, sick = new SickDisks(config),
  startSecond = 0, totals = new Map<number, DiskTotals>()) {
  const events: Array<{ second: number; kind: string; csId: number; reason?: string }> = [];
  for (let second = startSecond; second < startSecond + seconds; second += 1) {
    for (const server of servers) {
      const done = work(server.csId, second);
      const { commits = 10, commitMs, reads = 0, readMs = 0, readBytes = 4096 } = typeof done === 'number' ? { commitMs: done } : done;
      const before = totals.get(server.csId) ?? { commits: 0, commitSeconds: 0, reads: 0, readSeconds: 0, readBytes: 0 };
      const after = {
        commits: before.commits + commits, commitSeconds: before.commitSeconds + (commits * commitMs) / 1000,
        reads: before.reads + reads, readSeconds: before.readSeconds + (reads * readMs) / 1000, readBytes: before.readBytes + reads * readBytes,
      };
      totals.set(server.csId, after);
      sick.record(server.csId, after, second * 1000);
    }
    for (const event of sick.judge(servers, second * 1000)) events.push({ second, ...event });
  }
  return { sick, events, totals };
}

const four: JudgedServer[] = [1, 2, 3, 4].map((csId) => ({ csId, tier: 0, online: true }));

t.test('a disk far slower than its peers for the sustained time is ill, then recovers after the recovery time', async (t) => {
  const slowUntil = 40;
  const { sick, events } = simulate(80, four, (csId, second) => (csId === 3 && second < slowUntil ? 60 : 2));
  const ill = events.find((event) => event.kind === 'ill');
  t.ok(ill !== undefined && ill.csId === 3, 'server 3 falls ill');
  // Slow from second 0, measured once it has a window's worth: ill sickAfterMs later, not before.
  t.ok(ill !== undefined && ill.second >= 10 && ill.second <= 12, `after about 10 s of slowness (at ${ill?.second} s)`);
  t.match(ill?.reason, /journal commits take 60\.0 ms on average, 30x the median of the 3 other servers of its tier \(2\.0 ms\)/);
  const recovered = events.find((event) => event.kind === 'recovered');
  // Fast again from second 40; the window still holds slow commits for a few seconds; then 20 s fine.
  t.ok(recovered !== undefined && recovered.second >= slowUntil + 20 && recovered.second <= slowUntil + 27,
    `recovers after 20 s of being fine (at ${recovered?.second} s)`);
  t.equal(sick.illness(3), undefined);
  t.same(events.map((event) => event.kind), ['ill', 'recovered'], 'no flapping');
});

t.test('not ill: a short slow spell, a small difference, too few peers, another tier, too few operations', async (t) => {
  t.same(simulate(60, four, (csId, second) => (csId === 3 && second >= 10 && second < 16 ? 80 : 2)).events, [], 'slow for 6 s of the 10 needed');
  t.same(simulate(60, four, (csId) => (csId === 3 ? 9 : 0.5)).events, [], '18x slower, but only 8.5 ms more than the median');
  const two: JudgedServer[] = [1, 2].map((csId) => ({ csId, tier: 0, online: true }));
  t.same(simulate(60, two, (csId) => (csId === 2 ? 80 : 2)).events, [], 'one peer: nothing to compare with');
  const tiers: JudgedServer[] = [{ csId: 1, tier: 0, online: true }, { csId: 2, tier: 0, online: true }, { csId: 3, tier: 0, online: true },
    { csId: 4, tier: 2, online: true }, { csId: 5, tier: 2, online: true }, { csId: 6, tier: 2, online: true }];
  const hddAndSsd = simulate(60, tiers, (csId) => (csId <= 3 ? 40 : 0.3));
  t.same(hddAndSsd.events, [], 'an HDD tier is not judged against an SSD tier');
  // Ten commits a second over a window of five (and the sample just before it): at most 60, below 100.
  const sparse = new SickDisks({ ...config, minOps: 100 });
  t.same(simulate(60, four, (csId) => (csId === 3 ? 80 : 2), sparse).events, [], 'too few operations in the window to judge');
});

t.test('an offline server keeps its state; a restart of its server starts the measurements over', async (t) => {
  const slow = simulate(20, four, (csId) => (csId === 3 ? 60 : 2));
  t.ok(slow.sick.illness(3) !== undefined, 'ill after 20 s');
  // Offline: not judged, still ill.
  const offline = four.map((server) => (server.csId === 3 ? { ...server, online: false } : server));
  const away = simulate(40, offline.filter((s) => s.csId !== 3).concat([]), () => 2, slow.sick, 20, slow.totals);
  t.same(away.events, [], 'no change while it is away');
  t.ok(slow.sick.illness(3) !== undefined, 'still ill while offline');
  // It restarts (totals from zero) with a healthy disk: fine for 20 s, then recovered.
  slow.totals.delete(3);
  const back = simulate(40, four, () => 2, slow.sick, 60, slow.totals);
  t.match(back.events, [{ kind: 'recovered', csId: 3 }], 'recovers once measured fine long enough');
  slow.sick.forget(3);
  t.same(slow.sick.illServers(), []);
});

t.test('ill for its reads: cleared only by its reads; large reads are no sickness; a gap starts the count again', async (t) => {
  // Server 3 reads slowly (60 ms against 2 ms) until second 30, then nobody reads from it any more
  // (readers avoid it); its commits are fine throughout.
  const readsThenAvoided = simulate(120, four, (csId, second) => ({
    commitMs: 1, reads: csId === 3 && second >= 30 ? 0 : 20, readMs: csId === 3 ? 60 : 2,
  }));
  t.match(readsThenAvoided.events, [{ kind: 'ill', csId: 3, reason: /^reads take 60\.0 ms/ }], 'ill for its reads, and never cleared by its commits');
  t.ok(readsThenAvoided.sick.illness(3) !== undefined, 'still ill 90 s after its reads stopped');

  // Server 3 serves a backup's 1 MiB reads (20 ms each); the others serve 4 KiB reads (1 ms).
  const backup = simulate(60, four, (csId) => ({ commitMs: 1, reads: 20, readMs: csId === 3 ? 20 : 1, readBytes: csId === 3 ? 1024 * 1024 : 4096 }));
  t.same(backup.events, [], 'reads of another size are not compared');

  // Slow for 6 s, then idle (not measured) for a minute, then slow for 6 s: never 10 s on end.
  const gappy = simulate(72, four, (csId, second) => {
    if (csId !== 3) return 2;
    if (second >= 6 && second < 66) return { commits: 0, commitMs: 0 };
    return 60;
  });
  t.same(gappy.events, [], 'a gap longer than the window starts the count again');
});

