// A writer that released its lease may still have requests on the way: a client's close does not
// wait for them, and a network may hold them. Here writer A's write is held in a proxy between A
// and the chunk servers; A closes; B opens the volume (no force needed: the lease was released)
// and reads; then the held write is let through. The open fenced A (the epoch grew), so the write
// is refused: B never sees the data change under it, and no member holds A's late bytes.
// The test also measures what a write open costs now that every one fences (printed).

import t from 'tap';
import { Volume } from '../src/client/volume.ts';
import type { CapabilityGrant } from '../src/protocol/capability.ts';
import { CsConnectionPool, type CsRequestBody, type CsResponse } from '../src/protocol/cs_connection.ts';
import { CS_OP } from '../src/protocol/cs_messages.ts';
import { createLogger } from '../src/util/log.ts';
import { startCluster } from './helpers/cluster.ts';
import { FaultProxy } from './helpers/fault_proxy.ts';
import { sleep } from './helpers/faults.ts';

const MiB = 1024 * 1024;
const KiB = 1024;
/** More with SHOAL_OPENS_MEASURED=<n> (comparing builds). */
const OPENS_MEASURED = Number(process.env['SHOAL_OPENS_MEASURED'] ?? 5);

/** A client's pool whose connections to chunk servers go through proxies (port -> proxy port). */
class ProxiedPool extends CsConnectionPool {
  readonly routes = new Map<number, number>();

  override request(host: string, port: number, body: CsRequestBody, payload?: Buffer, grant?: CapabilityGrant): Promise<CsResponse> {
    return super.request(host, this.routes.get(port) ?? port, body, payload, grant);
  }
}

t.test('a write still on the way when its writer released the lease never lands under the next writer', async (t) => {
  t.setTimeout(90_000);
  const cluster = await startCluster(t, { chunkServers: 3, nbd: false });
  await cluster.admin.createVolume({ name: 'v', sizeBytes: 64 * MiB, chunkSizeBytes: 8 * MiB, replicas: { normal: 3, min: 2 } });
  const log = createLogger('test-client');
  const pool = cluster.pool();
  t.teardown(() => pool.closeAll());
  // Probes and reads of the members' bytes as a chunk server would make them (no capability needed).
  const peers = cluster.peerPool();
  t.teardown(() => peers.closeAll());

  // What one write open costs (each one fences every chunk server now).
  const openMs: number[] = [];
  for (let open = 0; open < OPENS_MEASURED; open += 1) {
    const startedMs = performance.now();
    const volume = await Volume.open({ mds: cluster.internal, pool, name: 'v', readOnly: false, holder: 'measure', log });
    openMs.push(performance.now() - startedMs);
    await volume.close();
  }
  openMs.sort((a, b) => a - b);
  t.comment(`write open: median ${openMs[Math.floor(OPENS_MEASURED / 2)]?.toFixed(1)} ms, min ${openMs[0]?.toFixed(1)} ms (${OPENS_MEASURED} opens, 3 chunk servers)`);

  const proxied = new ProxiedPool({ credential: { role: 'client' } });
  t.teardown(() => proxied.closeAll());
  const proxies: FaultProxy[] = [];
  t.teardown(async () => {
    for (const proxy of proxies) await proxy.close();
  });
  for (const daemon of cluster.chunkServers) {
    const port = Number(daemon?.ready['port']);
    const proxy = await FaultProxy.start({ host: '127.0.0.1', port });
    proxies.push(proxy);
    proxied.routes.set(port, proxy.port);
  }

  const writerA = await Volume.open({ mds: cluster.internal, pool: proxied, name: 'v', readOnly: false, holder: 'a', log, ioTimeoutMs: 20_000 });
  await writerA.write(0, Buffer.alloc(64 * KiB, 0x11));
  for (const proxy of proxies) proxy.blackhole();
  const late = writerA.write(0, Buffer.alloc(64 * KiB, 0xaa)).then(() => 'stored', (error: unknown) => (error as { code?: string }).code ?? String(error));
  await sleep(200); // the request has left A: it sits in the proxy
  await writerA.close();
  t.pass('A closed (its lease released) with a write still on the way');

  const writerB = await Volume.open({ mds: cluster.internal, pool, name: 'v', readOnly: false, holder: 'b', log, ioTimeoutMs: 20_000 });
  t.teardown(() => writerB.close());
  const first = await writerB.read(0, 64 * KiB);
  t.ok(first.every((byte) => byte === 0x11), 'B opens without force and reads what A wrote before it closed');

  for (const proxy of proxies) proxy.heal();
  const outcome = await late;
  t.equal(outcome, 'ERR_LEASE_FENCED', `A's late write is refused as fenced (${outcome})`);
  const again = await writerB.read(0, 64 * KiB);
  t.ok(again.every((byte) => byte === 0x11), `B reads the same bytes after the late write arrived (first byte now 0x${again[0]?.toString(16)})`);
  // Every member, read directly at the map's version: none holds A's late bytes.
  const entry = (await cluster.internal.chunkMap('v', 0, 1)).chunks[0];
  if (entry === undefined) throw new Error('chunk 0 expected');
  for (const member of entry.replicas) {
    const { reply, payload } = await peers.request(member.host, member.port, {
      op: CS_OP.READ, chunkId: entry.chunkId, version: entry.version, offsetBytes: 0, lengthBytes: 64 * KiB,
    });
    t.ok(reply.code === undefined && payload.every((byte) => byte === 0x11), `member ${member.csId} holds A's bytes from before the close, not the late ones`);
  }
});
