// Locality, on a real cluster whose three chunk servers say they run on hosts h1, h2 and h3 (their
// --failure-domain-host) and whose NBD server says it runs on h2 (--host): every chunk the NBD
// server writes gets its first replica, the primary that takes the writes, on h2's chunk server,
// and reads go to that server alone; an NBD server on a host with no chunk server spreads its
// reads over the members.

import t from 'tap';
import { startCluster } from './helpers/cluster.ts';
import { metricValue } from './helpers/metrics.ts';
import { runOk } from './helpers/run.ts';

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
