// One writer per volume. A second NBD server (another "hypervisor") is refused while the first
// holds the volume, with an error naming the holder; forced, it fences the first, whose later
// writes are rejected and never land. A writer that dies loses its lease after the timeout.

import t, { type Test } from 'tap';
import { COMMAND } from '../src/nbd/protocol.ts';
import type { LocalCluster } from '../src/local/cluster.ts';
import { startCluster } from './helpers/cluster.ts';
import { RawNbdClient } from './helpers/nbd_raw.ts';
import { NbdServer } from './helpers/nbd_server.ts';
import { run, runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;

async function startNbd(t: Test, cluster: LocalCluster, name: string, extra: string[]): Promise<NbdServer> {
  const server = await NbdServer.start(cluster, name, extra);
  t.teardown(() => server.stop('SIGKILL'));
  return server;
}

t.test('one writer per volume: refusal, forced takeover, fencing, expiry', async (t) => {
  t.setTimeout(120_000);
  const cluster = await startCluster(t, { nbd: false, mdsArgs: ['--lease-timeout-ms', '3000'] });
  await cluster.admin.createVolume({ name: 'v', sizeBytes: 64 * MiB, chunkSizeBytes: 8 * MiB });
  const a = await startNbd(t, cluster, 'hv-a', ['--holder', 'hv-a']);
  const b = await startNbd(t, cluster, 'hv-b', ['--holder', 'hv-b']);

  // Host A's guest holds the volume open (the connection keeps the write lease).
  const guestA = await RawNbdClient.connect(a.socket);
  t.teardown(() => guestA.close());
  await guestA.handshake('v');
  t.equal((await guestA.request(COMMAND.WRITE, 0, 4096, Buffer.alloc(4096, 0x11))).error, 0, 'host A writes');

  const refused = await run('qemu-io', ['-f', 'raw', '-c', 'read 0 4096', b.uri('v')]);
  t.not(refused.code, 0, 'host B cannot open the volume while A holds it');
  t.match(`${refused.stdout}${refused.stderr}`, /hv-a/, 'and the error names the holder');
  t.match(b.daemon.log, /open for write by hv-a/, 'host B logs who holds it');
  const info = await cluster.admin.getVolume('v');
  t.equal(info.lease?.holder, 'hv-a', 'the MDS shows A as the writer');

  const forced = await startNbd(t, cluster, 'hv-c', ['--holder', 'hv-c', '--force-open']);
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 0 4096', forced.uri('v')]);
  t.pass('host C, forced, takes the volume and writes');
  t.ok((await cluster.admin.getVolume('v')).epoch > info.epoch, 'the lease epoch grew');
  const late = await guestA.request(COMMAND.WRITE, 0, 4096, Buffer.alloc(4096, 0x33));
  t.not(late.error, 0, `host A's later write is rejected (errno ${late.error})`);
  const { stdout } = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x22 0 4096', forced.uri('v')]);
  t.notMatch(stdout, /verification failed/, "A's rejected write did not land");

  await forced.stop('SIGTERM');
  guestA.close();
  await a.stop('SIGTERM');

  // A writer that dies without closing: its lease expires, then another host may open.
  const d = await startNbd(t, cluster, 'hv-d', ['--holder', 'hv-d']);
  const guestD = await RawNbdClient.connect(d.socket);
  await guestD.handshake('v');
  await d.stop('SIGKILL');
  guestD.close();
  const early = await run('qemu-io', ['-f', 'raw', '-c', 'read 0 4096', b.uri('v')]);
  t.not(early.code, 0, 'right after the writer died its lease still holds');
  await new Promise((resolve) => setTimeout(resolve, 3_500));
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x44 4096 4096', b.uri('v')]);
  t.pass('after the lease timeout, host B opens and writes');
  let lease = (await cluster.admin.getVolume('v')).lease;
  for (let wait = 0; lease !== null && wait < 50; wait += 1) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    lease = (await cluster.admin.getVolume('v')).lease;
  }
  t.equal(lease, null, 'when its client disconnects, B releases the lease');
});
