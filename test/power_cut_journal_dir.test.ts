// A power cut with each chunk server's journal on one disk and its data directory on another (an
// SSD in front of an HDD): both disks lose every write not yet synced, at once. The servers come
// back by themselves (their journals are found where cs.json says, owned by them) and every
// acknowledged write reads back: small ones (journalled, then applied) and large ones (in place,
// only their checksums journalled).

import t from 'tap';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster } from './helpers/cluster.ts';
import { mountPowerCutDisk, type CutMode } from './helpers/power_cut.ts';
import { runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
const SEED = Number(process.env['SHOAL_POWER_CUT_SEED'] ?? 20261130);

t.test('journal on one power-cut disk, data on another: every acknowledged write survives', async (t) => {
  t.setTimeout(180_000);
  const hdd = await mountPowerCutDisk(t);
  const ssd = await mountPowerCutDisk(t);
  const cluster = await startCluster(t, { chunkServers: 0, chunkServerParentDir: hdd.path });
  const journalArgs = (index: number): string[] => ['--journal-dir', join(ssd.path, `cs${index}-journal`), '--journal-size', '16M'];
  await Promise.all([0, 1, 2].map((index) => cluster.startChunkServer(index, { extraArgs: journalArgs(index) })));
  await cluster.waitOnline(3);
  await cluster.admin.createVolume({ name: 'v', sizeBytes: 16 * MiB, chunkSizeBytes: 8 * MiB });
  const uri = cluster.nbdUnixUri('v');
  const image = Buffer.alloc(16 * MiB);
  const readBack = join(cluster.dir, 'read-back');
  const write = async (pattern: number, offset: number, bytes: number): Promise<void> => {
    await runOk('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offset} ${bytes}`, uri]);
    image.fill(pattern, offset, offset + bytes);
  };
  const cutAndRestart = async (mode: CutMode): Promise<void> => {
    await cluster.stopAll('SIGKILL');
    const cuts = [await hdd.cut(mode), await ssd.cut(mode)];
    t.ok(mode.mode === 'random' || cuts.every((cut) => cut.droppedPages + cut.undoneDirOps > 0),
      `the cut (${mode.mode}) dropped unsynced writes on both disks: ${cuts.map((cut) => `${cut.droppedPages} pages`).join(', ')}`);
    await hdd.remount();
    await ssd.remount();
    // A reboot gives LMDB a new boot id: it then trusts only its synced meta page.
    process.env['LMDB_RESTORE'] = 'safe';
    try {
      await cluster.startAll();
    } finally {
      delete process.env['LMDB_RESTORE'];
    }
    await runOk('nbdcopy', [uri, readBack], { timeoutMs: 60_000 });
    t.ok((await readFile(readBack)).equals(image), `every acknowledged write reads back after the ${mode.mode} cut`);
  };

  await write(0x11, 0, 2 * MiB); // in place
  await write(0x12, 4096, 8192); // journalled
  await write(0x13, 9 * MiB + 100, 3000);
  await cutAndRestart({ mode: 'none' });
  await write(0x21, 1 * MiB, 1 * MiB);
  await write(0x22, 12 * MiB + 512, 4096);
  await cutAndRestart({ mode: 'random', seed: SEED });
  await cluster.stopAll('SIGKILL');
});
