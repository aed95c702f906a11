// Memory budgets on a real cluster under sustained load: every daemon runs in its own memory cgroup
// limited to its --memory-budget plus CGROUP_SLACK_BYTES (page cache of the files it writes is
// charged there too, as on a host), and fio's nbd engine writes 1 MiB blocks at QD128 (two jobs of
// 64) with crc32c verification. No daemon is killed or fails, fio sees no error, each daemon's peak
// resident memory (VmHWM) stays under its budget, and the budget is what the metrics publish.
//
// Without the NBD server's in-flight gate, its resident memory passed its budget here (268 MiB for
// a 224 MiB budget): the gate is what holds it.

import t from 'tap';
import { startCluster } from './helpers/cluster.ts';
import { createMemoryCgroup, ownMemoryCgroup, peakResidentBytes, type MemoryCgroup } from './helpers/memory_cgroup.ts';
import { metricValue } from './helpers/metrics.ts';
import { run } from './helpers/run.ts';

const MiB = 1024 * 1024;
/** What the kernel may charge a daemon's cgroup beyond its budget: page cache and kernel memory. */
const CGROUP_SLACK_BYTES = 64 * MiB;
const BUDGET_BYTES: Record<string, number> = { mds: 256 * MiB, cs: 256 * MiB, nbd: 288 * MiB };
const JOB_BYTES = 256 * MiB;

function budgetOf(name: string): number {
  const budget = BUDGET_BYTES[name.replace(/\d+$/, '')];
  if (budget === undefined) throw new Error(`no budget for ${name}`);
  return budget;
}

t.test('each daemon stays within its memory budget under QD128 1 MiB writes', async (t) => {
  t.setTimeout(300_000);
  const parent = await ownMemoryCgroup();
  if (parent === null) {
    t.fail('this test needs the cgroup v1 memory controller, writable (run as root on a host or a privileged container)');
    return;
  }
  const names = ['mds', 'cs0', 'cs1', 'cs2', 'nbd'];
  const suffix = `shoal-memory-${process.pid}`;
  const cgroups = new Map<string, MemoryCgroup>();
  for (const name of names) cgroups.set(name, await createMemoryCgroup(parent, `${suffix}-${name}`, budgetOf(name) + CGROUP_SLACK_BYTES));
  // Registered before the cluster's teardown, so it runs after it: a cgroup goes once its processes have.
  t.teardown(async () => {
    for (const cgroup of cgroups.values()) await cgroup.remove();
  });
  const cluster = await startCluster(t, {
    chunkServers: 3,
    mdsArgs: ['--memory-budget', String(budgetOf('mds'))],
    csArgs: ['--memory-budget', String(budgetOf('cs'))],
    nbdArgs: ['--memory-budget', String(budgetOf('nbd'))],
    cgroupProcsOf: (name) => cgroups.get(name)?.procsFile,
  });
  await cluster.admin.createVolume({ name: 'load', sizeBytes: 2 * JOB_BYTES, chunkSizeBytes: 64 * MiB });

  const fio = await run('fio', [
    '--name=load', '--ioengine=nbd', `--uri=${cluster.nbdUnixUri('load')}`, '--rw=randwrite', '--bs=1M',
    '--numjobs=2', '--iodepth=64', `--size=${JOB_BYTES}`, `--offset_increment=${JOB_BYTES}`, '--loops=2',
    '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0', '--group_reporting', '--output-format=json',
  ], { timeoutMs: 240_000 });
  t.equal(fio.code, 0, `fio exits 0\n${fio.stderr}`);
  const report = JSON.parse(fio.stdout.slice(fio.stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { io_bytes: number } }> };
  t.equal(report.jobs[0]?.error, 0, 'no I/O or verify error');
  t.ok((report.jobs[0]?.write.io_bytes ?? 0) >= 2 * 2 * JOB_BYTES, `wrote ${Math.round((report.jobs[0]?.write.io_bytes ?? 0) / MiB)} MiB`);

  const daemons = [cluster.mds, ...cluster.chunkServers, cluster.nbd];
  for (const [index, name] of names.entries()) {
    const daemon = daemons[index];
    if (daemon === null || daemon === undefined) {
      t.fail(`${name} is missing`);
      continue;
    }
    t.ok(daemon.running, `${name} is running`);
    const peak = await peakResidentBytes(daemon.pid);
    const stats = await cgroups.get(name)!.stats();
    t.ok(peak < budgetOf(name), `${name}: peak resident ${Math.round(peak / MiB)} MiB < budget ${budgetOf(name) / MiB} MiB ` +
      `(cgroup peak ${Math.round(stats.maxUsageBytes / MiB)} MiB, limit hit ${stats.failcnt} times)`);
    t.equal(stats.oomKills, 0, `${name}: no OOM kill in its cgroup`);
  }
  // Reported, not judged: a chunk server at its cgroup's limit can stall in reclaim for longer
  // than --peer-timeout-ms and leave some sets (cs_timeouts.test.ts covers a slow one that answers).
  const mdsPort = Number(new URL(cluster.mdsUrl).port);
  t.comment(`recovery copied ${Math.round(await metricValue(mdsPort, 'shoal_mds_recovery_copied_bytes_total') / MiB)} MiB under the load`);
  const metricsPorts: Record<string, number> = {
    mds: mdsPort,
    cs0: Number(cluster.chunkServers[0]?.ready['metricsPort']),
    nbd: Number(cluster.nbd?.ready['metricsPort']),
  };
  for (const [name, port] of Object.entries(metricsPorts)) {
    const daemon = name.replace(/\d+$/, '');
    t.equal(await metricValue(port, `shoal_${daemon}_memory_budget_bytes`, '{share="total"}'), budgetOf(name), `${name} publishes its budget`);
    const peakMetric = await metricValue(port, `shoal_${daemon}_memory_resident_peak_bytes`);
    t.ok(peakMetric > 0 && peakMetric < budgetOf(name), `${name} publishes its peak, ${Math.round(peakMetric / MiB)} MiB`);
  }
});
