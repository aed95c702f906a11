// Locality, on a real cluster whose three chunk servers say they run on hosts h1, h2 and h3 (their
// --failure-domain-host) and whose NBD server says it runs on h2 (--host): every chunk the NBD
// server writes gets its first replica, the primary that takes the writes, on h2's chunk server,
// and reads go to that server alone; an NBD server on a host with no chunk server spreads its
// reads over the members.

import t from 'tap';
import { startCluster } from './helpers/cluster.ts';
import { metricValue } from './helpers/metrics.ts';
import { eventually } from './helpers/eventually.ts';
import { run, runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
const CHUNK_BYTES = 4 * MiB;
const WRITTEN_BYTES = 64 * MiB;
const HOSTS = ['h1', 'h2', 'h3'];

t.test('new chunks start on the writer\'s host and reads stay there', async (t) => {
  t.setTimeout(120_000);
  const cluster = await startCluster(t, {
    chunkServers: 3,
    csArgsFor: (index) => ['--failure-domain-host', HOSTS[index] ?? `h${index + 1}`],
    nbdArgs: ['--host', 'h2'],
  });
  await cluster.admin.createVolume({ name: 'local', sizeBytes: 128 * MiB, chunkSizeBytes: CHUNK_BYTES });
  const image = cluster.nbdUnixUri('local');
  await runOk('qemu-io', ['-f', 'raw', '-c', `write -P 0x3c 0 ${WRITTEN_BYTES}`, image], { timeoutMs: 60_000 });

  const servers = (await cluster.admin.listChunkServers()).chunkServers;
  const h2 = servers.find((server) => server.failureDomain.host === 'h2');
  if (h2 === undefined) throw new Error('no chunk server on h2');
  const { chunks } = await cluster.internal.chunkMap('local', 0, 64);
  t.equal(chunks.length, WRITTEN_BYTES / CHUNK_BYTES, 'every written chunk is mapped');
  t.ok(chunks.every((chunk) => chunk.replicas[0]?.csId === h2.id), `every chunk's first replica (its primary) is on h2 (chunk server ${h2.id})`);
  t.ok(chunks.every((chunk) => chunk.replicas.find((r) => r.csId === h2.id)?.hostLabel === 'h2'), 'the map names each replica\'s host');

  const reads = async (): Promise<Map<number, number>> => {
    const counts = new Map<number, number>();
    for (const server of servers) counts.set(server.id, await metricValue(server.metricsPort, 'shoal_cs_requests_total', '{op="read",code="ok"}') || 0);
    return counts;
  };
  const before = await reads();
  await runOk('qemu-io', ['-f', 'raw', '-c', `read -P 0x3c 0 ${WRITTEN_BYTES}`, image], { timeoutMs: 60_000 });
  const after = await reads();
  const delta = servers.map((server) => [server.failureDomain.host, (after.get(server.id) ?? 0) - (before.get(server.id) ?? 0)] as const);
  const onH2 = delta.find(([host]) => host === 'h2')?.[1] ?? 0;
  t.ok(onH2 >= WRITTEN_BYTES / CHUNK_BYTES, `reads of the whole written range reached h2's server: ${delta.map(([h, n]) => `${h} ${n}`).join(', ')}`);
  t.same(delta.filter(([host]) => host !== 'h2').map(([, n]) => n), [0, 0], 'and no other');

  // The same volume through an NBD server on a host without a chunk server: reads spread.
  await cluster.nbd?.stop('SIGTERM');
  await cluster.startNbd(['--host', 'elsewhere']);
  const spreadBefore = await reads();
  await runOk('qemu-io', ['-f', 'raw', '-c', `read -P 0x3c 0 ${WRITTEN_BYTES}`, image], { timeoutMs: 60_000 });
  const spreadAfter = await reads();
  const served = servers.filter((server) => (spreadAfter.get(server.id) ?? 0) > (spreadBefore.get(server.id) ?? 0)).length;
  t.equal(served, 3, 'from elsewhere, every member serves some of the reads');
});

t.test('after its writer moves to another host, a volume\'s hot chunks follow it there', async (t) => {
  t.setTimeout(180_000);
  const hosts = ['h1', 'h2', 'h3', 'h4'];
  const cluster = await startCluster(t, {
    chunkServers: 4,
    mdsArgs: ['--locality-bytes-per-second', String(64 * MiB)],
    csArgsFor: (index) => ['--failure-domain-host', hosts[index] ?? `h${index + 1}`],
    nbdArgs: ['--host', 'h1'],
  });
  await cluster.admin.createVolume({ name: 'vm', sizeBytes: 128 * MiB, chunkSizeBytes: CHUNK_BYTES });
  const image = cluster.nbdUnixUri('vm');
  await runOk('qemu-io', ['-f', 'raw', '-c', `write -P 0x5e 0 ${WRITTEN_BYTES}`, image], { timeoutMs: 60_000 });
  const servers = (await cluster.admin.listChunkServers()).chunkServers;
  const idOn = (host: string): number => servers.find((s) => s.failureDomain.host === host)?.id ?? -1;
  const primaries = async (): Promise<number[]> => (await cluster.internal.chunkMap('vm', 0, 64)).chunks.map((chunk) => chunk.replicas[0]?.csId ?? -1);
  t.ok((await primaries()).every((csId) => csId === idOn('h1')), 'written from h1: every primary on h1');
  const withoutH4 = (await cluster.internal.chunkMap('vm', 0, 64)).chunks.filter((chunk) => chunk.replicas.every((r) => r.csId !== idOn('h4'))).length;

  // The VM moves to h4: its NBD server there reads the volume (its hot chunks are all of it).
  await cluster.nbd?.stop('SIGTERM');
  await cluster.startNbd(['--host', 'h4']);
  // The guest's I/O goes on, in short fio runs, until its chunks have followed (slow on a loaded machine).
  let followedAll = false;
  const reading = (async () => {
    let code: number | null = 0;
    while (!followedAll && code === 0) {
      code = (await run('fio', [
        '--name=vm', '--ioengine=nbd', `--uri=${image}`, '--rw=randrw', '--bs=4k', '--iodepth=4', `--size=${WRITTEN_BYTES}`,
        '--time_based', '--runtime=10', '--verify=0', '--output-format=json',
      ], { timeoutMs: 60_000 })).code;
    }
    return { code };
  })();
  try {
    await eventually('every hot chunk\'s primary to be on h4', 90_000, async () => ((await primaries()).every((csId) => csId === idOn('h4')) ? true : null));
  } finally {
    followedAll = true;
  }
  t.pass(`every chunk's primary followed the writer to h4 (${withoutH4} of ${WRITTEN_BYTES / CHUNK_BYTES} had no copy there and were copied first)`);
  const followed = await metricValue(Number(cluster.mds.ready['port']), 'shoal_mds_locality_follows_total');
  t.ok(followed >= WRITTEN_BYTES / CHUNK_BYTES, `shoal_mds_locality_follows_total: ${followed}`);
  const { chunks } = await cluster.internal.chunkMap('vm', 0, 64);
  t.ok(chunks.every((chunk) => new Set(chunk.replicas.map((r) => r.csId)).size === 3), 'every chunk keeps three copies');
  t.equal((await reading).code, 0, 'the guest\'s I/O went on meanwhile');
});
