// A forced takeover races a write of the old holder: the write reaches the chunk's primary before
// the primary's fence, and its forwards reach the other members after theirs (the forwards are
// held in proxies between the primary and the members). The members refuse it as fenced. That
// refusal is not a member failure: nobody leaves the set, the old holder learns its lease is gone
// (ERR_LEASE_FENCED), the MDS makes the primary equal to a member that refused, and the takeover
// is acknowledged only after that, so the new writer never sees the fenced bytes on any member.

import t from 'tap';
import { Volume } from '../src/client/volume.ts';
import { capabilityKey, chunkTicket, type CapabilityGrant } from '../src/protocol/capability.ts';
import { CsConnectionPool, type CsRequestBody, type CsResponse } from '../src/protocol/cs_connection.ts';
import { CS_OP } from '../src/protocol/cs_messages.ts';
import { createLogger } from '../src/util/log.ts';
import { startCluster } from './helpers/cluster.ts';
import { FaultProxy } from './helpers/fault_proxy.ts';
import { eventually } from './helpers/faults.ts';
import { metricValue } from './helpers/metrics.ts';

const MiB = 1024 * 1024;
const KiB = 1024;

/**
 * A client's pool that routes the primary's forwards through proxies (member port -> proxy port).
 * The chunk's ticket vouches for the forward list, so the test, which holds the cluster key,
 * tags the rerouted list as the MDS would have (what only a test harness can do).
 */
class ForwardProxiedPool extends CsConnectionPool {
  readonly routes = new Map<number, number>();
  readonly csIdByPort = new Map<number, number>();
  private readonly ticketKey: Buffer;

  constructor(clusterKey: Buffer) {
    super({ credential: { role: 'client' } });
    this.ticketKey = capabilityKey(clusterKey);
  }

  override request(host: string, port: number, body: CsRequestBody, payload?: Buffer, grant?: CapabilityGrant): Promise<CsResponse> {
    if (body.op !== CS_OP.WRITE && body.op !== CS_OP.ZERO) return super.request(host, port, body, payload, grant);
    const forward = body.forward.map((target) => ({ ...target, port: this.routes.get(target.port) ?? target.port }));
    const primary = { csId: this.csIdByPort.get(port) ?? -1, host, port };
    const ticket = chunkTicket(this.ticketKey, body.chunkId, body.version, body.volumeId, [primary, ...forward]);
    return super.request(host, port, { ...body, forward, ticket }, payload, grant);
  }
}

t.test('members refusing a fenced write are not dropped, and its bytes do not survive', async (t) => {
  t.setTimeout(90_000);
  const cluster = await startCluster(t, { chunkServers: 3, nbd: false, csArgs: ['--peer-timeout-ms', '20000'] });
  await cluster.admin.createVolume({ name: 'v', sizeBytes: 64 * MiB, chunkSizeBytes: 8 * MiB, replicas: { normal: 3, min: 2 } });
  const log = createLogger('test-client');
  const pool = cluster.pool();
  t.teardown(() => pool.closeAll());
  // Probes and reads of the members' bytes as a chunk server would make them (no capability needed).
  const peers = cluster.peerPool();
  t.teardown(() => peers.closeAll());
  const viaProxies = new ForwardProxiedPool(cluster.clusterKey);
  for (const server of (await cluster.admin.listChunkServers()).chunkServers) viaProxies.csIdByPort.set(server.port, server.id);
  t.teardown(() => viaProxies.closeAll());
  const proxies: FaultProxy[] = [];
  t.teardown(async () => {
    for (const proxy of proxies) await proxy.close();
  });
  for (const daemon of cluster.chunkServers) {
    const port = Number(daemon?.ready['port']);
    const proxy = await FaultProxy.start({ host: '127.0.0.1', port });
    proxies.push(proxy);
    viaProxies.routes.set(port, proxy.port);
  }

  const writerA = await Volume.open({ mds: cluster.internal, pool: viaProxies, name: 'v', readOnly: false, holder: 'a', log, ioTimeoutMs: 20_000 });
  await writerA.write(0, Buffer.alloc(64 * KiB, 0x11));
  const before = (await cluster.internal.chunkMap('v', 0, 1)).chunks[0];
  const [primary, ...others] = before?.replicas ?? [];
  if (before === undefined || primary === undefined || others.length !== 2) throw new Error('chunk 0 with three members expected');
  const primaryMetrics = Number(cluster.chunkServers[await cluster.chunkServerIndex(primary.csId)]?.ready['metricsPort']);
  const writtenBefore = await metricValue(primaryMetrics, 'shoal_cs_written_bytes_total');

  for (const proxy of proxies) proxy.blackhole();
  const late = writerA.write(0, Buffer.alloc(64 * KiB, 0xaa)).then(() => 'stored', (error: unknown) => (error as { code?: string }).code ?? String(error));
  const applied = await eventually(async () => (await metricValue(primaryMetrics, 'shoal_cs_written_bytes_total')) > writtenBefore, 20_000);
  t.ok(applied, 'the primary applied the old holder\'s write; its forwards are held');

  const opening = Volume.open({ mds: cluster.internal, pool, name: 'v', readOnly: false, holder: 'b', force: true, log, ioTimeoutMs: 20_000 });
  opening.catch(() => undefined);
  // The other members are fenced once they refuse the old holder's epoch (a probe rewriting the
  // bytes they already hold, so it changes nothing where it is still taken).
  const volumeId = (await cluster.admin.getVolume('v')).id;
  const fenced = await eventually(async () => {
    const codes = await Promise.all(others.map(async (member) => (await peers.request(member.host, member.port, {
      op: CS_OP.WRITE, chunkId: before.chunkId, version: before.version, volumeId, epoch: writerA.epoch,
      offsetBytes: 0, lengthBytes: 4 * KiB, forward: [],
    }, Buffer.alloc(4 * KiB, 0x11))).reply.code));
    return codes.every((code) => code === 'ERR_LEASE_FENCED');
  }, 20_000);
  t.ok(fenced, 'the takeover has fenced the other members');
  for (const proxy of proxies) proxy.heal();

  t.equal(await late, 'ERR_LEASE_FENCED', 'the old holder learns its lease is gone');
  const writerB = await opening;
  t.teardown(() => writerB.close());
  t.pass('the takeover is acknowledged');
  // The chunk's entry once any replica-set change in progress on it has finished.
  const after = await cluster.internal.getChunk('v', 0);
  t.same(after.replicas.map((member) => member.csId).sort(), before.replicas.map((member) => member.csId).sort(),
    `no member left the set for refusing the write (version ${before.version} -> ${after.version})`);
  for (const member of after.replicas) {
    const { reply, payload } = await peers.request(member.host, member.port, {
      op: CS_OP.READ, chunkId: before.chunkId, version: after.version, offsetBytes: 0, lengthBytes: 64 * KiB,
    });
    t.ok(reply.code === undefined && payload.every((byte) => byte === 0x11), `member ${member.csId} does not hold the fenced bytes (${reply.code ?? `0x${payload[0]?.toString(16)}`})`);
  }
  const read = await writerB.read(0, 64 * KiB);
  t.ok(read.every((byte) => byte === 0x11), 'the new writer reads the bytes from before the takeover');
});
