// Integration tests start a real cluster (src/local/cluster.ts) and tear it down with the test.
// When the test failed, the daemons' recent logs are printed first: that is what a CI reader needs.

import type { Test } from 'tap';
import { LocalCluster, type ClusterOptions } from '../../src/local/cluster.ts';

export { LocalCluster } from '../../src/local/cluster.ts';

/** Starts a cluster; when `t` ends, every process is killed and the folder removed. */
export async function startCluster(t: Test, options: ClusterOptions = {}): Promise<LocalCluster> {
  // Small journal segments: each chunk server preallocates two, and the suite starts many.
  const cluster = await LocalCluster.start({ ...options, csArgs: ['--journal-segment-bytes', '8M', ...(options.csArgs ?? [])] });
  t.teardown(async () => {
    if (!t.passing() || process.env['SHOAL_TEST_LOGS'] === '1') {
      for (const daemon of [cluster.mds, ...cluster.chunkServers, cluster.nbd]) {
        if (daemon !== null) process.stderr.write(`\n----- ${daemon.name} log (last lines) -----\n${daemon.log.slice(-6000)}\n`);
      }
    }
    await cluster.destroy();
  });
  return cluster;
}
