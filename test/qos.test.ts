// Per-volume I/O limits (QoS). The parts alone first: the token bucket, the gate every request of
// an open volume passes (fake time), and how a requested change becomes the stored limits. Then a
// real cluster: fio random reads at queue depth 32 against a volume limited to 500 IOPS measure
// 450-550 while a second volume on the same NBD server, limited by bandwidth, keeps its own rate
// (2 MiB/s of writes); a live
// `shoal volume set` reaches the running guest without a reconnect; the limits survive an MDS
// restart; bad limits are refused with the reason.

import t from 'tap';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fioArgs, parseFioReport, type FioJob, type FioResult } from '../bench/nbd/fio.ts';
import { QosGate } from '../src/client/qos_gate.ts';
import { resolveQosChange } from '../src/mds/volume_qos.ts';
import { UNLIMITED_QOS, type VolumeQos } from '../src/protocol/api.ts';
import { TokenBucket } from '../src/util/token_bucket.ts';
import { cliRunner } from './helpers/cli.ts';
import { startCluster } from './helpers/cluster.ts';
import { FakeTimers } from './helpers/fake_timers.ts';
import { metricValue } from './helpers/metrics.ts';
import { run, runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;

const qos = (change: Partial<VolumeQos>): VolumeQos => ({ ...UNLIMITED_QOS, ...change });

t.test('token bucket: bursts up to its capacity, then the rate; debt is waited off', async (t) => {
  const bucket = new TokenBucket(100, 10, 0);
  for (let index = 0; index < 10; index += 1) t.equal(bucket.take(1, 0), 0, `take ${index + 1} of the burst goes at once`);
  t.equal(bucket.take(1, 0), 10, 'the 11th waits one token: 10 ms at 100/s');
  t.equal(bucket.take(1, 0), 20, 'the 12th two');
  t.equal(bucket.take(1, 5_000), 0, 'after a long quiet time it goes at once');
  for (let index = 0; index < 9; index += 1) bucket.take(1, 5_000);
  t.equal(bucket.take(1, 5_000), 10, 'but the quiet time bought only the capacity, not 500 tokens');
  bucket.configure(0, 0, 5_000);
  t.equal(bucket.take(1_000_000, 5_000), 0, 'rate 0: no limit');
  const bytes = new TokenBucket(1_000, 1_000, 0);
  t.equal(bytes.take(4_000, 0), 0, 'a take larger than the capacity goes at once from a full bucket...');
  t.equal(bytes.take(500, 0), 3_500, '...and leaves a debt the next taker waits off with its own cost: 3.5 s');
  bytes.giveBack(500);
  bytes.giveBack(4_000);
  t.equal(bytes.take(1_000, 0), 0, 'given back: the bucket is full again');
  t.throws(() => new TokenBucket(10, 0, 0), /holds something/, 'a limited bucket with no capacity stops loudly');
});

t.test('gate: no limit costs nothing; over the limit requests wait in order; live changes apply to the waiting', async (t) => {
  const timers = new FakeTimers();
  const open = new QosGate(UNLIMITED_QOS, timers);
  t.equal(open.admit(32 * MiB), null, 'without limits every request goes at once, no promise made');

  const gate = new QosGate(qos({ iopsLimit: 100, iopsBurst: 10 }), timers);
  const released: number[] = [];
  for (let index = 0; index < 30; index += 1) {
    const wait = gate.admit(4096);
    if (wait === null) released.push(index);
    else void wait.then(() => released.push(index));
  }
  t.same(released, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'the burst of 10 goes at once');
  t.equal(gate.waiting, 20, '20 wait');
  await timers.advance(100);
  t.same(released.length, 20, 'at 100/s, 10 more after 100 ms');
  t.same(released, [...released].sort((a, b) => a - b), 'in arrival order');
  t.equal(gate.stats.delayedRequests, 20);

  gate.setLimits(qos({ iopsLimit: 10, iopsBurst: 10 }));
  await timers.advance(100);
  t.equal(released.length, 21, 'lowered to 10/s: the waiting ones slow down at once (one per 100 ms)');
  gate.setLimits(UNLIMITED_QOS);
  await timers.advance(0);
  t.equal(released.length, 30, 'lifted: everyone waiting goes at once');
  t.equal(gate.waiting, 0);
  t.ok(gate.stats.delayedSeconds > 0, `waits are summed (${gate.stats.delayedSeconds.toFixed(3)} s)`);
  t.equal(timers.pending, 0, 'no timer is left');

  const bandwidth = new QosGate(qos({ bandwidthLimitBytesPerSecond: MiB, bandwidthBurstBytes: MiB }), timers);
  t.equal(bandwidth.admit(4 * MiB), null, 'a quiet volume sends a large request at once');
  let smallDone = false;
  void bandwidth.admit(4096)?.then(() => {
    smallDone = true;
  });
  await timers.advance(2_900);
  t.notOk(smallDone, 'the next request waits until the 3 MiB of debt are paid at 1 MiB/s');
  await timers.advance(200);
  t.ok(smallDone, 'and then goes');

  const closing = new QosGate(qos({ iopsLimit: 1, iopsBurst: 1 }), timers);
  closing.admit(0);
  let late = false;
  void closing.admit(0)?.then(() => {
    late = true;
  });
  closing.releaseAll();
  await timers.advance(0);
  t.ok(late, 'a closing volume lets its waiters go (they then fail on the closed volume)');
  t.equal(timers.pending, 0, 'no timer is left');

  // After 200 days of uptime a millisecond clock has coarse floating-point steps: zero-byte
  // requests behind a waiting write are due at the same moment, and must stay in order.
  timers.nowMs = 2 ** 34 + 0.123456789;
  const longUp = new QosGate(qos({ bandwidthLimitBytesPerSecond: 3 * MiB + 7, bandwidthBurstBytes: 1_000 }), timers);
  let order = 0;
  const seen: number[] = [];
  for (let index = 0; index < 200; index += 1) {
    const bytes = index % 3 === 0 ? 4099 : 0;
    const mine = order++;
    void longUp.admit(bytes)?.then(() => seen.push(mine));
    if (index % 50 === 0) longUp.setLimits(qos({ bandwidthLimitBytesPerSecond: 3 * MiB + 7 + index, bandwidthBurstBytes: 1_000 }));
  }
  await timers.advance(10_000);
  t.same(seen, [...seen].sort((a, b) => a - b), 'released in arrival order, no broken assertion');
  t.equal(longUp.waiting, 0);

  const later = new QosGate(UNLIMITED_QOS, timers);
  later.setLimits(qos({ iopsLimit: 10, iopsBurst: 5 }));
  const immediate = Array.from({ length: 5 }, () => later.admit(0)).filter((wait) => wait === null).length;
  t.equal(immediate, 5, 'a limit set on a volume that had none starts with its whole burst, as a fresh open does');
  later.releaseAll();
});

t.test('a change of limits: unnamed fields stay, a new limit gets one second of burst, a burst needs a limit', async (t) => {
  const limited = resolveQosChange(UNLIMITED_QOS, { iopsLimit: 500 });
  t.same(limited, qos({ iopsLimit: 500, iopsBurst: 500 }), 'a limit alone: burst of one second');
  const both = resolveQosChange(limited, { bandwidthLimitBytesPerSecond: 100 * MiB, bandwidthBurstBytes: 10 * MiB });
  t.same(both, qos({ iopsLimit: 500, iopsBurst: 500, bandwidthLimitBytesPerSecond: 100 * MiB, bandwidthBurstBytes: 10 * MiB }), 'the IOPS limit stays');
  t.same(resolveQosChange(both, { iopsBurst: 2_000 }).iopsBurst, 2_000, 'a burst alone changes the burst');
  t.same(resolveQosChange({ ...both, iopsBurst: 2_000 }, { iopsLimit: 50 }).iopsBurst, 50, 'a new limit does not keep the old limit\'s burst');
  t.same(resolveQosChange({ ...both, iopsBurst: 2_000 }, { iopsLimit: 500 }).iopsBurst, 2_000, 'the same limit given again keeps its burst');
  t.same(resolveQosChange(both, { iopsLimit: 0 }), qos({ bandwidthLimitBytesPerSecond: 100 * MiB, bandwidthBurstBytes: 10 * MiB }), 'limit 0 lifts the limit and its burst');
  t.throws(() => resolveQosChange(UNLIMITED_QOS, { iopsBurst: 10 }), { code: 'ERR_INVALID_ARGUMENT', message: /iopsBurst 10 without iopsLimit/ });
});

/** fio's nbd engine: random I/O at queue depth 32 for `runtimeS` after a ramp that spends the burst. */
async function fio(uri: string, rw: 'randread' | 'randwrite', blockBytes: number, runtimeS: number, outputPath: string, regionBytes = 64 * MiB): Promise<FioResult> {
  const job: FioJob = { name: `${rw}-${blockBytes}-qd32`, rw, blockBytes, iodepth: 32 };
  const args = fioArgs(job, { uris: [uri], regionBytes, runtimeSeconds: runtimeS, outputPath, extraArgs: ['--ramp_time=2'] });
  const result = await run('fio', args, { timeoutMs: (runtimeS + 60) * 1000 });
  if (result.code !== 0) throw new Error(`fio exited ${result.code}: ${result.stderr}`);
  return parseFioReport(job, await readFile(outputPath, 'utf8'));
}

t.test('fio against limited volumes on one NBD server: each keeps its own limit, changed live', async (t) => {
  t.setTimeout(240_000);
  // A short lease: renewals (which carry the limits) every 2 s.
  const cluster = await startCluster(t, { mdsArgs: ['--lease-timeout-ms', '8000'] });
  const cli = await cliRunner(t);
  const shoal = (...args: string[]) => cli.shoal(args, { SHOAL_MDS: cluster.mdsUrl, SHOAL_TOKEN: cluster.adminToken });

  let created = await shoal('volume', 'create', 'capped', '--size', '256M', '--chunk-size', '16M', '--iops-limit', '500', '--iops-burst', '50');
  t.equal(created.code, 0, created.stderr);
  t.match(created.stdout, /I\/O limits 500 IOPS \(burst 50\)/, 'create says the limits');
  created = await shoal('volume', 'create', 'piped', '--size', '256M', '--chunk-size', '16M', '--bandwidth-limit', '2M/s', '--bandwidth-burst', '256K');
  t.equal(created.code, 0, created.stderr);

  // Both at once, each on its own connection to the same NBD server. The 500 IOPS are reads of
  // written data (each from a chunk server), which this cluster serves several times over even
  // beside another test; writes (three replicas, journal commits) reach 500 only on a quiet machine.
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 0 16M', cluster.nbdUnixUri('capped')], { timeoutMs: 60_000 });
  const [capped, piped] = await Promise.all([
    fio(cluster.nbdUnixUri('capped'), 'randread', 4096, 8, join(cluster.dir, 'fio-capped.json'), 16 * MiB),
    fio(cluster.nbdUnixUri('piped'), 'randwrite', 64 * 1024, 8, join(cluster.dir, 'fio-piped.json')),
  ]);
  t.ok(capped.iops >= 450 && capped.iops <= 550, `limited to 500 IOPS, fio measured ${capped.iops.toFixed(0)} IOPS`);
  const pipedMiB = piped.bandwidthBytesPerSecond / MiB;
  t.ok(pipedMiB >= 1.8 && pipedMiB <= 2.2, `limited to 2 MiB/s, fio measured ${pipedMiB.toFixed(2)} MiB/s (${piped.iops.toFixed(0)} IOPS of 64 KiB)`);

  // A live change: lower the limit while fio runs, and count the writes the NBD server serves.
  const nbd = cluster.nbd;
  if (nbd === null) throw new Error('the cluster has no NBD server');
  const metricsPort = Number(nbd.ready['metricsPort']);
  const limitInForce = () => metricValue(metricsPort, 'shoal_client_volume_qos_limit', '{volume="capped",mode="write",limit="iops"}');
  const writesServed = () => metricValue(metricsPort, 'shoal_nbd_volume_requests_total', '{volume="capped",op="write"}');
  // The read run closed the volume: the live run opens it again (a new open, the limit from the MDS).
  const running = fio(cluster.nbdUnixUri('capped'), 'randwrite', 4096, 18, join(cluster.dir, 'fio-live.json'));
  // (fio's first connection only probes the export, and its close and the next open may overlap:
  // the value seen last in the loop is what is checked, not one more scrape.)
  const deadline = Date.now() + 20_000;
  let inForce = await limitInForce();
  while (inForce !== 500 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    inForce = await limitInForce();
  }
  t.equal(inForce, 500, 'the NBD server reports the limit in force');
  const set = await shoal('volume', 'set', 'capped', '--iops-limit', '200');
  t.equal(set.code, 0, set.stderr);
  t.match(set.stdout, /500 IOPS \(burst 50\) -> 200 IOPS \(burst 200\)/, 'set says what changed');
  const changedBy = Date.now() + 10_000;
  while (await limitInForce() !== 200 && Date.now() < changedBy) await new Promise((resolve) => setTimeout(resolve, 200));
  t.equal(await limitInForce(), 200, 'the running NBD server took the new limit without a reconnect');
  // Let the burst of the new bucket (at most 200) drain, then count for 5 s.
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  const before = { writes: await writesServed(), atMs: performance.now() };
  await new Promise((resolve) => setTimeout(resolve, 5_000));
  const after = { writes: await writesServed(), atMs: performance.now() };
  const liveIops = (after.writes - before.writes) / ((after.atMs - before.atMs) / 1000);
  t.ok(liveIops >= 180 && liveIops <= 220, `after the change the NBD server served ${liveIops.toFixed(0)} writes/s (limit 200)`);
  const delayed = await metricValue(metricsPort, 'shoal_client_volume_qos_delayed_requests_total', '{volume="capped",mode="write"}');
  t.ok(delayed > 0, `${delayed} requests were held back`);
  await running;

  // Durable: the limits are part of the volume record.
  await cluster.restartMds();
  const info = await shoal('volume', 'info', 'capped');
  t.match(info.stdout, /I\/O limits:\s+200 IOPS \(burst 200\)/, 'after an MDS restart the limit is still there');
  t.same((await cluster.admin.getVolume('piped')).qos, qos({ bandwidthLimitBytesPerSecond: 2 * MiB, bandwidthBurstBytes: MiB / 4 }));

  // Lifting and refusing.
  const lifted = await shoal('volume', 'set', 'capped', '--iops-limit', '0');
  t.match(lifted.stdout, /-> none/, 'limit 0 lifts it');
  const nothing = await shoal('volume', 'set', 'capped');
  t.not(nothing.code, 0);
  t.match(nothing.stderr, /nothing to change/, 'set without a limit says so');
  const bad = await shoal('volume', 'set', 'capped', '--iops-limit', 'lots');
  t.match(bad.stderr, /--iops-limit must be a whole number/, 'a bad number is named');
  const burstAlone = await shoal('volume', 'set', 'capped', '--bandwidth-burst', '1M');
  t.not(burstAlone.code, 0);
  t.match(burstAlone.stderr, /bandwidthBurstBytes \d+ without bandwidthLimitBytesPerSecond/, 'a burst without a limit is refused by the MDS');
  t.same((await cluster.admin.getVolume('capped')).qos, UNLIMITED_QOS, 'and changed nothing');
});
