// An NBD server restarted under a running guest costs the guest no I/O error: QEMU's NBD client
// with `reconnect-delay` (here qemu-img bench writing at queue depth 8) keeps its requests while
// the server is gone, reconnects to the new one on the same unix socket, and resends what was in
// flight. The new server, under the same holder name, takes the volume's write lease back at once.
// Both a clean stop (SIGTERM: in-flight requests finish first) and a crash (SIGKILL: they are
// lost and resent) are covered, and every block written reads back.

import t from 'tap';
import { spawn } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster } from './helpers/cluster.ts';
import { metricValue } from './helpers/metrics.ts';
import { runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
const VOLUME_BYTES = 64 * MiB;
const WRITES = 4000;
const WRITE_BYTES = 4096;
const STEP_BYTES = 8192;

for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
  t.test(`qemu-img bench with reconnect-delay across an NBD server ${signal}: no error, every block written`, async (t) => {
    t.setTimeout(120_000);
    const cluster = await startCluster(t);
    await cluster.admin.createVolume({ name: 'guest', sizeBytes: VOLUME_BYTES });
    const socketPath = join(cluster.dir, 'nbd.sock');
    const image = `driver=nbd,server.type=unix,server.path=${socketPath},export=guest,reconnect-delay=20`;
    const bench = spawn('qemu-img', ['bench', '-w', '-c', String(WRITES), '-d', '8', '-s', String(WRITE_BYTES),
      '-S', String(STEP_BYTES), '--pattern=0x5a', '--image-opts', image], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    bench.stdout.setEncoding('utf8').on('data', (text: string) => void (output += text));
    bench.stderr.setEncoding('utf8').on('data', (text: string) => void (output += text));
    const exited = new Promise<number | null>((resolve) => bench.once('exit', (code) => resolve(code)));
    t.teardown(() => void bench.kill('SIGKILL'));

    // Once a tenth of its writes are through (the NBD server's counter says so), restart the
    // server under it.
    const nbd = cluster.nbd;
    if (nbd === null) throw new Error('the cluster has no NBD server');
    const metricsPort = Number(nbd.ready['metricsPort']);
    const deadline = Date.now() + 30_000;
    while (await metricValue(metricsPort, 'shoal_nbd_written_bytes_total') < (WRITES / 10) * WRITE_BYTES && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    t.equal(bench.exitCode, null, 'qemu-img bench is still writing when the NBD server goes');
    await nbd.stop(signal, 10_000);
    await cluster.startNbd();
    t.equal(bench.exitCode, null, 'and when the new one is up');
    const code = await exited;
    t.equal(code, 0, `qemu-img bench ends without an error: ${output.trim().split('\n').at(-1) ?? ''}`);

    // Every block it wrote holds the pattern; the blocks between them were never written.
    const copy = join(cluster.dir, 'guest.img');
    await runOk('nbdcopy', [`nbd+unix:///guest?socket=${socketPath}`, copy]);
    const bytes = await readFile(copy);
    await rm(copy);
    let wrong = 0;
    for (let index = 0; index < VOLUME_BYTES / STEP_BYTES; index += 1) {
      const block = bytes.subarray(index * STEP_BYTES, index * STEP_BYTES + WRITE_BYTES);
      const gap = bytes.subarray(index * STEP_BYTES + WRITE_BYTES, (index + 1) * STEP_BYTES);
      const expected = index < WRITES ? 0x5a : 0;
      if (!block.every((byte) => byte === expected) || !gap.every((byte) => byte === 0)) wrong += 1;
    }
    t.equal(wrong, 0, `all ${WRITES} written blocks hold 0x5a and nothing else changed`);
  });
}
