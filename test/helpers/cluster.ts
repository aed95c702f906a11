// Integration tests start a real cluster (src/local/cluster.ts) and tear it down with the test.

import type { Test } from 'tap';
import { LocalCluster, type ClusterOptions } from '../../src/local/cluster.ts';

export { LocalCluster } from '../../src/local/cluster.ts';

/** Starts a cluster; when `t` ends, every process is killed and the folder removed. */
export async function startCluster(t: Test, options: ClusterOptions = {}): Promise<LocalCluster> {
  const cluster = await LocalCluster.start(options);
  t.teardown(() => cluster.destroy());
  return cluster;
}
