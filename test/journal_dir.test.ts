// Chunk servers with their journals in directories of their own (--journal-dir, as on an SSD in
// front of an HDD), with real daemons: a journal moved with its contents works from its new path;
// data survives kill -9 and replay from there; journals swapped between two servers are refused,
// naming both disks; a lost journal after an unclean stop is refused; after a clean stop a missing
// journal is recreated.

import t from 'tap';
import { readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster } from './helpers/cluster.ts';
import { runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;

t.test('journals in their own directories: moved, replayed, swapped, lost', async (t) => {
  t.setTimeout(180_000); // about 55 s on a quiet machine; 90 s was not enough at a load of 20
  const cluster = await startCluster(t, { chunkServers: 0 });
  const journalDir = (index: number): string => join(cluster.dir, 'ssd', `cs${index}-journal`);
  const uuid = (index: number): string => String(cluster.chunkServers[index]?.ready['uuid']);
  const csJson = async (index: number): Promise<{ uuid: string; journalDir?: string }> =>
    JSON.parse(await readFile(join(cluster.chunkServerDir(index), 'cs.json'), 'utf8')) as { uuid: string; journalDir?: string };
  const uri = cluster.nbdUnixUri('v');
  const firstJournalDir = (index: number): string => (index === 0 ? `${journalDir(0)}-first` : journalDir(index));
  await Promise.all([0, 1, 2].map((index) => cluster.startChunkServer(index, { extraArgs: ['--journal-dir', firstJournalDir(index), '--journal-size', '24M'] })));
  await cluster.waitOnline(3);
  await cluster.admin.createVolume({ name: 'v', sizeBytes: 16 * MiB, chunkSizeBytes: 8 * MiB });
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 1M', uri]);
  for (const index of [0, 1, 2]) t.equal((await csJson(index)).journalDir, firstJournalDir(index), `cs${index}'s cs.json names its journal`);

  // The admin moves cs0's journal to another device after a clean stop, and passes its new path.
  await cluster.chunkServers[0]?.stop('SIGTERM');
  await rename(firstJournalDir(0), journalDir(0));
  await cluster.startChunkServer(0, { extraArgs: ['--journal-dir', journalDir(0)] });
  t.equal((await csJson(0)).journalDir, journalDir(0), 'a journal moved with its contents works from its new path');

  // Small writes (journalled) and a large one (in place), then kill -9 of everything: replay.
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 4096 8192', '-c', 'write -P 0x33 2M 1M', '-c', 'write -P 0x44 9M 777', uri]);
  await cluster.stopAll('SIGKILL');
  await cluster.startAll();
  const check = async (what: string): Promise<void> => {
    const read = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x11 0 4096', '-c', 'read -P 0x22 4096 8192',
      '-c', 'read -P 0x11 12288 1036288', '-c', 'read -P 0x33 2M 1M', '-c', 'read -P 0x44 9M 777', uri]);
    t.notMatch(read.stdout, /verification failed/, what);
  };
  await check('every acknowledged write reads back after kill -9, replayed from the journals elsewhere');

  // Journals swapped between cs0 and cs1 after an unclean stop: each refuses the other's.
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x55 10M 4K', uri]);
  const [uuid0, uuid1] = [uuid(0), uuid(1)];
  await cluster.chunkServers[0]?.stop('SIGKILL');
  await cluster.chunkServers[1]?.stop('SIGKILL');
  const refused = await cluster.startChunkServer(0, { extraArgs: ['--journal-dir', journalDir(1)] }).then(() => null, (error: Error) => error.message);
  t.match(refused, /ERR_JOURNAL_OWNER/, 'a server given another disk\'s journal refuses to start');
  t.match(refused, new RegExp(`${journalDir(1)}.*uuid ${uuid1}.*${cluster.chunkServerDir(0)} \\(uuid ${uuid0}\\)`),
    'the refusal names the journal\'s owner and this data directory, with both paths');
  t.equal((await csJson(0)).journalDir, journalDir(0), 'the refused start did not record the wrong journal');
  await cluster.startChunkServer(0, { extraArgs: ['--journal-dir', journalDir(0)] });

  // cs1's journal lost (its device gone) after an unclean stop: refused, saying what to do.
  await rename(journalDir(1), `${journalDir(1)}.away`);
  const lost = await cluster.startChunkServer(1, { extraArgs: [] }).then(() => null, (error: Error) => error.message);
  t.match(lost, /ERR_JOURNAL_LOST/, 'a server whose journal is lost after an unclean stop refuses to start');
  t.match(lost, new RegExp(`journal of data directory ${cluster.chunkServerDir(1)} \\(uuid ${uuid1}\\) is lost: ${journalDir(1)} is missing`),
    'it names the data directory and where its journal was (cs.json), without --journal-dir');
  t.match(lost, /shoal cs drain ID --wait; shoal cs rm ID\), and wipe the data directory/, 'and says what to do');
  await rm(journalDir(1), { recursive: true, force: true });
  await rename(`${journalDir(1)}.away`, journalDir(1));
  await cluster.startChunkServer(1);
  await cluster.waitOnline(3);
  await check('the data is still there once each server has its own journal back');

  // One journal directory for two servers: the second is refused while the first runs.
  const shared = await cluster.startChunkServer(3, { extraArgs: ['--journal-dir', journalDir(1)] }).then(() => null, (error: Error) => error.message);
  t.match(shared, new RegExp(`journal directory ${journalDir(1)} is in use by another chunk server \\(pid \\d+\\)`),
    'a journal directory in use by a running server is refused to another');
  // A journal too small for a segment and a spare (the cluster's segments are 8M).
  const small = await cluster.startChunkServer(3, { extraArgs: ['--journal-size', '10M'] }).then(() => null, (error: Error) => error.message);
  t.match(small, /--journal-size 10M is too small: the minimum is 16777216 bytes, a segment and a spare/, 'a journal size below two segments is refused, naming the minimum');

  // After a clean stop a missing journal is recreated, with a warning.
  await cluster.chunkServers[2]?.stop('SIGTERM');
  await rm(journalDir(2), { recursive: true });
  const restarted = await cluster.startChunkServer(2);
  t.match(restarted.log, /the last stop was clean .* a new journal is started there/, 'after a clean stop a lost journal is recreated, with a warning');
  await cluster.waitOnline(3);
  const read = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x55 10M 4K', uri]);
  t.notMatch(read.stdout, /verification failed/, 'and the cluster serves on');
});
