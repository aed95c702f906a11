// The benchmark harness's pure parts (bench/nbd/): the fio command for a group of servers, fio's
// group CPU, the write-stage breakdown from /metrics deltas (a metric not exported prints `-`),
// and a CPU profile cut to a job's time window. No fio, no cluster: the harness itself is checked
// by running it (bench/README.md).

import t from 'tap';
import { fioArgs, parseFioReport, type FioJob } from '../bench/nbd/fio.ts';
import { pidOf, summarise } from '../bench/nbd/profile.ts';
import { difference, histogramSum, type ProbeSnapshot } from '../bench/nbd/probes.ts';
import { formatWriteBreakdown, type Measurement } from '../bench/nbd/report.ts';

const QD32: FioJob = { name: 'randwrite-4k-qd32', rw: 'randwrite', blockBytes: 4096, iodepth: 32 };
const QD1: FioJob = { ...QD32, name: 'randwrite-4k-qd1', iodepth: 1 };

t.test('a group of three servers is one fio with a section per server and a third of the iodepth', async (t) => {
  const options = { uris: ['u0', 'u1', 'u2'], regionBytes: 1 << 20, runtimeSeconds: 3, outputPath: 'o.json' };
  const args = fioArgs(QD32, options);
  t.ok(args.includes('--iodepth=11'), '32 / 3 rounded up');
  t.ok(args.includes('--group_reporting'));
  t.same(args.slice(-6), ['--name=randwrite-4k-qd32-0', '--uri=u0', '--name=randwrite-4k-qd32-1', '--uri=u1',
    '--name=randwrite-4k-qd32-2', '--uri=u2'], 'one section per server, after the global options');
  t.ok(fioArgs(QD1, options).includes('--iodepth=1'), 'qd1 stays 1 per server');
  const single = fioArgs(QD32, { ...options, uris: ['u'] });
  t.ok(single.includes('--iodepth=32') && !single.includes('--group_reporting'), 'one server: the job as it is');

  const side = { iops: 3000, bw_bytes: 0, io_bytes: 0, runtime: 3000, clat_ns: { mean: 1e6, max: 2e6 } };
  const report = JSON.stringify({ jobs: [{ error: 0, read: side, write: side, usr_cpu: 10, sys_cpu: 5 }] });
  const result = parseFioReport(QD32, `warning\n${report}`, 3);
  t.equal(result.fioCpuUserPercent, 30, "a group's usr_cpu is the mean of its three job processes");
  t.equal(result.iodepthPerServer, 11);
});

function snapshot(samplesByDaemon: Record<string, Record<string, number>>): ProbeSnapshot {
  return {
    cpuTicksByProcess: new Map(), machineBusyTicks: null, timeMs: 0,
    samplesByDaemon: new Map(Object.entries(samplesByDaemon).map(([name, samples]) => [name, new Map(Object.entries(samples))])),
  };
}

t.test('the write breakdown sums chunk servers, takes means of deltas, and prints - for a missing metric', async (t) => {
  const stage = (name: string, count: number, sum: number): Record<string, number> => ({
    [`shoal_cs_write_stage_seconds_count{stage="${name}"}`]: count, [`shoal_cs_write_stage_seconds_sum{stage="${name}"}`]: sum,
  });
  const before = snapshot({
    nbd: { 'shoal_nbd_request_duration_seconds_count{command="write"}': 100, 'shoal_nbd_request_duration_seconds_sum{command="write"}': 1 },
    cs0: { ...stage('primary_total', 50, 1), 'shoal_cs_journal_commits_total': 10, 'shoal_cs_journal_commit_seconds_total': 1 },
    cs1: {},
  });
  const after = snapshot({
    nbd: { 'shoal_nbd_request_duration_seconds_count{command="write"}': 110, 'shoal_nbd_request_duration_seconds_sum{command="write"}': 1.05 },
    cs0: { ...stage('primary_total', 60, 1.01), 'shoal_cs_journal_commits_total': 20, 'shoal_cs_journal_commit_seconds_total': 1.02 },
    cs1: { ...stage('primary_total', 10, 0.03), 'shoal_cs_journal_wait_seconds_count': 4, 'shoal_cs_journal_wait_seconds_sum': 0.004 },
  });
  const probe = difference(before, after);
  const primary = histogramSum(probe, 'shoal_cs_write_stage_seconds', { stage: 'primary_total' });
  t.equal(primary?.count, 20, 'cs0 and cs1 summed');
  t.ok(Math.abs((primary?.sumSeconds ?? 0) - 0.04) < 1e-9);
  t.equal(histogramSum(probe, 'shoal_client_request_duration_seconds', { op: 'write' }), null, 'not exported');
  const fio = parseFioReport(QD1, JSON.stringify({ jobs: [{ error: 0, read: {}, write: { iops: 1, clat_ns: {} }, usr_cpu: 0, sys_cpu: 0 }] }));
  const m: Measurement = { job: QD1.name, target: 'shoal', position: 0, fio, probe, memory: {}, startedUs: 0, endedUs: 1 };
  const row = formatWriteBreakdown([QD1.name], [m]).split('\n')[2]!.split('|').map((cell) => cell.trim()).slice(2, -1);
  // NBD total, client→primary, primary total, primary local, primary→replicas, replica total, journal wait, commit.
  t.same(row, ['5.00 ms', '-', '2.00 ms', '-', '-', '-', '1.00 ms', '2.00 ms']);
});

t.test('a profile is cut to the job window and split into idle, GC and frames', async (t) => {
  const frame = (functionName: string, url = '', lineNumber = -1) => ({ functionName, url, lineNumber, columnNumber: 0 });
  const profile = {
    nodes: [
      { id: 1, callFrame: frame('(root)') }, { id: 2, callFrame: frame('(idle)') },
      { id: 3, callFrame: frame('(garbage collector)') }, { id: 4, callFrame: frame('work', 'node:internal/x', 9) },
    ],
    // Samples at 1000, 2000, ..., 6000 µs; each counts until the next (the last until endTime 7000).
    startTime: 0, endTime: 7000, samples: [4, 2, 3, 4, 4, 2], timeDeltas: [1000, 1000, 1000, 1000, 1000, 1000],
  };
  const file = { path: 'p', pid: 42, role: 'cs0' };
  const whole = summarise(profile, file, null, 15);
  t.equal(whole.totalUs, 6000);
  t.same([whole.idleUs, whole.gcUs], [2000, 1000]);
  t.same(whole.frames, [{ functionName: 'work', location: 'node:internal/x:10', selfUs: 3000 }]);
  const window = summarise(profile, file, { startUs: 2500, endUs: 5500 }, 15);
  t.same([window.totalUs, window.gcUs, window.frames[0]?.selfUs], [3000, 1000, 2000], 'samples at 3000, 4000, 5000 only');
  t.ok(summarise(profile, file, { startUs: 9000, endUs: 9500 }, 15).empty);
  t.equal(pidOf('CPU.20261130.101525.19724.0.001.cpuprofile'), 19724);
});
