// With fewer live replicas than the volume's minimum, writes are never acknowledged: they wait for
// the replicas to come back, and fail with EIO after the configured I/O timeout. Once a replica
// returns, writes go on.

import t from 'tap';
import { startCluster } from './helpers/cluster.ts';
import { FAST_CS_ARGS, FAST_MDS_ARGS } from './helpers/faults.ts';
import { run, runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;

t.test('below the minimum replica count writes wait, then fail with EIO', async (t) => {
  t.setTimeout(120_000);
  const cluster = await startCluster(t, {
    chunkServers: 3,
    mdsArgs: FAST_MDS_ARGS,
    csArgs: FAST_CS_ARGS,
    nbdArgs: ['--cs-timeout-ms', '2500', '--io-timeout-ms', '5000'],
  });
  await cluster.admin.createVolume({ name: 'v', sizeBytes: 64 * MiB, chunkSizeBytes: 8 * MiB, replicas: { normal: 3, min: 2 } });
  const uri = cluster.nbdUnixUri('v');
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 64k', uri]);
  await cluster.chunkServers[1]?.stop('SIGKILL');
  await cluster.chunkServers[2]?.stop('SIGKILL');
  const startedMs = Date.now();
  const result = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 0 64k', uri], { timeoutMs: 60_000 });
  const waitedMs = Date.now() - startedMs;
  t.match(result.stdout + result.stderr, /Input\/output error/, 'the write fails with EIO');
  t.ok(waitedMs >= 4_000, `after waiting out the I/O timeout (${waitedMs} ms)`);
  const { chunks } = await cluster.internal.chunkMap('v', 0, 8);
  t.ok(chunks[0] !== undefined && chunks[0].replicas.length < 2, `the chunk is below its minimum (${chunks[0]?.replicas.length} member)`);

  await cluster.startChunkServer(1);
  await cluster.startChunkServer(2);
  await cluster.waitOnline(3);
  const again = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 0 64k', uri], { timeoutMs: 60_000 });
  t.equal(again.code, 0, `with servers back, writes go on\n${again.stdout}`);
  const { stdout } = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x33 0 64k', uri]);
  t.notMatch(stdout, /verification failed/, 'and read back');
});
