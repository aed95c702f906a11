// `npm start` after a power cut: the whole cluster of `shoal start` (its secrets, cluster.json,
// the MDS's database and cluster id, every chunk server's identity, journal and chunks) lives on a
// disk that loses every write not yet synced, and cannot punch holes (zeroing falls back to
// writing zeroes). Power is cut twice, once dropping everything
// unsynced and once keeping a seeded random part of it (as a disk's write-back would); each time
// the cluster comes back by itself and every acknowledged write reads back byte for byte.

import t from 'tap';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mountPowerCutDisk, type CutMode, type PowerCutDisk } from './helpers/power_cut.ts';
import { recordedDaemons, startShoal, waitAllGone, type ShoalStart } from './helpers/shoal_start.ts';
import { runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
const SEED = Number(process.env['SHOAL_POWER_CUT_SEED'] ?? 20261130);

/** Kills the supervisor and every daemon at once, as the power does. */
async function killEverything(started: ShoalStart, dataDir: string): Promise<void> {
  const daemons = await recordedDaemons(dataDir);
  started.child.kill('SIGKILL');
  for (const daemon of daemons) {
    try {
      process.kill(daemon.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  await started.exited;
  if (!(await waitAllGone(daemons, 10_000))) throw new Error('daemons survived SIGKILL for 10 s');
}

t.test('shoal start comes back after power cuts with every acknowledged write', async (t) => {
  t.setTimeout(300_000);
  const socketDir = await mkdtemp(join(tmpdir(), 'shoal-powercut-sock-'));
  t.teardown(() => rm(socketDir, { recursive: true, force: true }));
  const disk: PowerCutDisk = await mountPowerCutDisk(t);
  const dataDir = join(disk.path, 'data');
  const args = ['--nbd-socket', join(socketDir, 'nbd.sock'), '--volume-size', '64M'];
  const image = Buffer.alloc(64 * MiB);
  const readBack = join(socketDir, 'read-back');
  let started = await startShoal(t, dataDir, args);

  const write = async (pattern: number, offset: number, bytes: number): Promise<void> => {
    await runOk('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offset} ${bytes}`, started.nbdUnixUri()]);
    image.fill(pattern, offset, offset + bytes);
  };
  const cutAndRestart = async (mode: CutMode): Promise<void> => {
    await killEverything(started, dataDir);
    const cut = await disk.cut(mode);
    t.ok(cut.droppedPages + cut.undoneDirOps > 0 || mode.mode === 'random',
      `the cut (${mode.mode}${mode.mode === 'random' ? ` seed ${mode.seed}` : ''}) dropped unsynced writes: ` +
        `${cut.droppedPages} pages, ${cut.undoneDirOps} directory changes`);
    await disk.remount();
    // A reboot gives LMDB a new boot id: it then trusts only its synced meta page.
    process.env['LMDB_RESTORE'] = 'safe';
    try {
      started = await startShoal(t, dataDir, args);
    } finally {
      delete process.env['LMDB_RESTORE'];
    }
    t.pass(`npm start after the cut came back (${mode.mode})`);
    await runOk('nbdcopy', [started.nbdUnixUri(), readBack], { timeoutMs: 120_000 });
    t.ok((await readFile(readBack)).equals(image), `every acknowledged write reads back after the ${mode.mode} cut`);
  };

  // Acknowledged writes (each one durable on three chunk servers before its reply), some on new
  // chunks, some overwriting, and a flush at the end of each qemu-io.
  await write(0x11, 0, 4 * MiB);
  await write(0x12, 20 * MiB, 3 * MiB);
  await write(0x13, 1 * MiB + 512, 4096);
  await cutAndRestart({ mode: 'none' });

  await write(0x21, 40 * MiB, 2 * MiB);
  await write(0x22, 2 * MiB, 64 * 1024);
  // Zeroing whole blocks punches holes; this disk cannot (ENOTSUP), so zeroes are written instead.
  await runOk('qemu-io', ['-f', 'raw', '-c', `write -z ${20 * MiB} ${MiB}`, started.nbdUnixUri()]);
  image.fill(0, 20 * MiB, 21 * MiB);
  await cutAndRestart({ mode: 'random', seed: SEED });

  await write(0x31, 60 * MiB, 1 * MiB);
  await runOk('nbdcopy', [started.nbdUnixUri(), readBack], { timeoutMs: 120_000 });
  t.ok((await readFile(readBack)).equals(image), 'and it takes new writes');
  await killEverything(started, dataDir);
});
