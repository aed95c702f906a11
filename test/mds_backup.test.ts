// `shoal mds backup` and `shoal mds restore` with the real CLI: a backup taken while the cluster
// writes is one consistent, checksummed file; a damaged or foreign file is refused by name and
// harms nothing; restoring it into the stopped MDS brings the cluster back with everything written
// after the backup too (taken back from the chunk servers, nothing deleted).

import t from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SHOAL_ENTRY } from '../src/local/daemon_process.ts';
import { decodeBackupPrefix } from '../src/mds/backup.ts';
import { startCluster } from './helpers/cluster.ts';
import { sleep } from './helpers/faults.ts';
import { run, runOk, type RunResult } from './helpers/run.ts';

const MiB = 1024 * 1024;

t.test('backup online, restore offline, everything back', async (t) => {
  t.setTimeout(240_000);
  const cluster = await startCluster(t, { chunkServers: 3, mdsArgs: ['--heartbeat-interval-ms', '250', '--heartbeat-timeout-ms', '2000'] });
  await writeFile(join(cluster.dir, 'cluster.json'), JSON.stringify({ mdsUrl: cluster.mdsUrl, adminTokenFile: 'admin.token' }));
  const shoal = (...args: string[]): Promise<RunResult> =>
    run(process.execPath, [SHOAL_ENTRY, ...args, '--data', cluster.dir], { timeoutMs: 60_000, env: { NO_COLOR: '1', SHOAL_MDS: '', SHOAL_TOKEN: '' } });
  const image = Buffer.alloc(32 * MiB);
  const write = async (pattern: number, offset: number, bytes: number): Promise<void> => {
    await runOk('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offset} ${bytes}`, cluster.nbdUnixUri('v')]);
    image.fill(pattern, offset, offset + bytes);
  };
  await cluster.admin.createVolume({ name: 'v', sizeBytes: image.length, chunkSizeBytes: 4 * MiB });
  await write(0x61, 0, 6 * MiB);

  const file = join(cluster.dir, 'mds.backup');
  const taken = await shoal('mds', 'backup', file, '--json');
  t.equal(taken.code, 0, 'shoal mds backup exits 0', { stderr: taken.stderr });
  const bytes = await readFile(file);
  const { header } = decodeBackupPrefix(bytes, file);
  const clusterId = (await readFile(join(cluster.dir, 'mds', 'cluster-id'), 'utf8')).trim();
  t.match(header, { format: 1, clusterId, volumes: 1, chunks: 2 }, 'the file names the cluster and what the map held');
  t.ok(header.generation >= 2, `with the state's generation (${header.generation})`);
  t.match(JSON.parse(taken.stdout), { file, clusterId }, '--json describes the file');

  // Written after the backup: must come back after the restore.
  await write(0x62, 20 * MiB, 5 * MiB);
  await write(0x63, 1 * MiB, 4096);

  const mdsDir = join(cluster.dir, 'mds');
  const busy = await shoal('mds', 'restore', file, '--mds-data', mdsDir);
  t.equal(busy.code, 1, 'a restore under a running MDS is refused: exit 1');
  t.match(busy.stderr, /in use by a running MDS \(pid \d+\)/, 'naming the running MDS');
  await cluster.nbd?.stop('SIGTERM');
  await cluster.mds.stop('SIGTERM');

  const garbage = join(cluster.dir, 'garbage');
  await writeFile(garbage, 'not a backup at all');
  const refusedGarbage = await shoal('mds', 'restore', garbage, '--mds-data', mdsDir);
  t.equal(refusedGarbage.code, 1, 'a file that is not a backup: exit 1');
  t.match(refusedGarbage.stderr, /is not an MDS backup/, 'saying so');
  const damaged = join(cluster.dir, 'damaged');
  const flipped = Buffer.from(bytes);
  flipped[flipped.length - 100] = (flipped[flipped.length - 100] ?? 0) ^ 0xff;
  await writeFile(damaged, flipped);
  const refusedDamaged = await shoal('mds', 'restore', damaged, '--mds-data', mdsDir);
  t.match(refusedDamaged.stderr, /damaged/, 'a damaged backup is refused by its checksum');
  const foreign = join(cluster.dir, 'foreign');
  const otherId = '00000000-0000-4000-8000-000000000000';
  const foreignBytes = Buffer.from(bytes.toString('latin1').replace(clusterId, otherId), 'latin1');
  await writeFile(foreign, foreignBytes);
  const refusedForeign = await shoal('mds', 'restore', foreign, '--mds-data', mdsDir);
  t.match(refusedForeign.stderr, /backup of cluster 0{8}-.*belongs to cluster/, 'a backup of another cluster is refused without --force');

  const restored = await shoal('mds', 'restore', file, '--mds-data', mdsDir);
  t.equal(restored.code, 0, 'shoal mds restore exits 0', { stderr: restored.stderr });
  await cluster.restartMds();
  for (let wait = 0; wait < 120; wait += 1) {
    const stat = await cluster.admin.stat().catch(() => null);
    const chunks = await cluster.internal.chunkMap('v', 0, 100).catch(() => null);
    if (stat !== null && chunks !== null && chunks.chunks.length === 4 && stat.quarantine.newerThanMap === 0) break;
    await sleep(250);
  }
  t.equal((await cluster.internal.chunkMap('v', 0, 100)).chunks.length, 4, 'the chunks written after the backup are back in the map');
  await cluster.startNbd();
  const readBack = join(cluster.dir, 'read-back');
  await runOk('nbdcopy', [cluster.nbdUnixUri('v'), readBack], { timeoutMs: 60_000 });
  t.ok((await readFile(readBack)).equals(image), 'every byte written before and after the backup reads back');
});
