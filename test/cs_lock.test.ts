// A data directory belongs to one chunk server: a second one started on it refuses, says why and
// exits, and the first keeps serving.

import t from 'tap';
import { join } from 'node:path';
import { SHOAL_ENTRY } from '../src/local/daemon_process.ts';
import { startCluster } from './helpers/cluster.ts';
import { run } from './helpers/run.ts';

t.test('a second chunk server on a locked data directory refuses to start', async (t) => {
  t.setTimeout(60_000);
  const cluster = await startCluster(t, { chunkServers: 1, nbd: false });
  const result = await run(process.execPath, [
    SHOAL_ENTRY, 'run', 'cs', '--data', cluster.chunkServerDir(0), '--mds', cluster.mdsUrl,
    '--cluster-key', join(cluster.dir, 'cluster.key'),
  ], { timeoutMs: 30_000 });
  t.equal(result.code, 1, 'it exits with status 1');
  t.match(result.stderr, /ERR_DATA_DIR_LOCKED/, 'with the error code');
  t.match(result.stderr, new RegExp(`in use by another chunk server \\(pid ${cluster.chunkServers[0]?.pid}\\)`), 'naming the holder');
  t.ok(cluster.chunkServers[0]?.running, 'the first server still runs');
  const { chunkServers } = await cluster.admin.listChunkServers();
  t.equal(chunkServers.length, 1, 'no second server registered');
  t.equal(chunkServers[0]?.state, 'online', 'the first is online');
});
