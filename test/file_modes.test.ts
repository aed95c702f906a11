// Files the daemons make are private to their user: after real daemons (a LocalCluster, and
// `shoal start`) have written data, every file and directory under their data folders has no
// group or other permission bits, even though they were started with a umask of 022. A data
// directory left open by an older version is made 0700 at start, and the log says so. A secret
// file that others may read, or that another user owns, is refused at start with the fix.

import t, { type Test } from 'tap';
import { chmod, chown, lstat, readdir, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { SHOAL_ENTRY } from '../src/local/daemon_process.ts';
import { startCluster } from './helpers/cluster.ts';
import { run, runOk } from './helpers/run.ts';
import { startFolder, startShoal } from './helpers/shoal_start.ts';

const MiB = 1024 * 1024;

interface Walk {
  /** "path mode" of every entry that group or others may access. */
  readonly loose: string[];
  /** Every path seen, relative to the root. */
  readonly seen: string[];
}

/** Every file and directory under `root` (root included); symlinks are skipped (their mode means nothing). */
async function walk(root: string): Promise<Walk> {
  const loose: string[] = [];
  const seen: string[] = [];
  const visit = async (path: string): Promise<void> => {
    let info;
    try {
      info = await lstat(path);
    } catch (error) {
      // A temporary file renamed away while we walk.
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    if (info.isSymbolicLink()) return;
    const name = relative(root, path) || '.';
    seen.push(name);
    // The MDS's public key is made to be copied to every chunk server: not a secret.
    const publicKey = name === 'mds.pub' || name.endsWith('/mds.pub');
    if ((info.mode & 0o077) !== 0 && !publicKey) loose.push(`${name} ${(info.mode & 0o7777).toString(8)}`);
    if (!info.isDirectory()) return;
    const names = await readdir(path).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return [] as string[];
      throw error;
    });
    for (const child of names) await visit(join(path, child));
  };
  await visit(root);
  return { loose, seen };
}

async function modeOf(path: string): Promise<number> {
  return (await stat(path)).mode & 0o7777;
}

/** Daemons inherit the test's umask: 022 is the common default that leaves new files world-readable. */
function useLooseUmask(t: Test): void {
  const previous = process.umask(0o022);
  t.teardown(() => void process.umask(previous));
}

t.test('chunk servers and the MDS keep every file and directory private; open data directories are closed at start', async (t) => {
  t.setTimeout(90_000);
  useLooseUmask(t);
  const cluster = await startCluster(t);
  await cluster.admin.createVolume({ name: 'modes', sizeBytes: 32 * MiB, chunkSizeBytes: 8 * MiB });
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 20M', '-c', 'read -P 0x5a 0 20M', cluster.nbdUnixUri('modes')]);

  // An older version left cs0's and the MDS's directories open; cs0 also lost its catalog, so its
  // chunk files go to orphaned/ at start: a directory made on a later start must be private too.
  await cluster.chunkServers[0]?.stop('SIGTERM');
  await runOk('rm', ['-rf', join(cluster.chunkServerDir(0), 'meta')]);
  await chmod(cluster.chunkServerDir(0), 0o755);
  await chmod(join(cluster.dir, 'mds'), 0o750);
  await cluster.restartMds();
  const cs0 = await cluster.startChunkServer(0);
  t.equal(await modeOf(cluster.chunkServerDir(0)), 0o700, 'the chunk server made its open data directory 0700');
  t.match(cs0.log, /data directory was open to other users: made it 0700.*"previousMode":"0755"/);
  t.equal(await modeOf(join(cluster.dir, 'mds')), 0o700, 'the MDS made its open data directory 0700');
  t.match(cluster.mds.log, /data directory was open to other users: made it 0700.*"previousMode":"0750"/);

  const { loose, seen } = await walk(cluster.dir);
  const kinds = [/^cs0\/orphaned\/\d+\.data$/, /^cs\d\/chunks\/\w+\/\d+\.data$/, /^cs\d\/chunks\/\w+\/\d+\.sums$/,
    /^cs\d\/journal\/\d+\.log$/, /^cs\d\/meta\/data\.mdb$/, /^cs\d\/meta\/lock\.mdb$/, /^cs\d\/cs\.json$/, /^cs\d\/lock$/,
    /^mds\/mds\.lmdb$/, /^mds\/mds\.lmdb-lock$/, /^mds\/cluster-id$/, /^mds\/lock$/, /^nbd\.sock$/];
  for (const kind of kinds) t.ok(seen.some((name) => kind.test(name)), `the walk saw ${kind.source}`);
  t.same(loose, [], `none of the ${seen.length} files and directories is open to group or others`);
});

t.test('shoal start keeps its folder private, and refuses secret files that others may read or own', async (t) => {
  t.setTimeout(90_000);
  useLooseUmask(t);
  const dataDir = await startFolder(t);
  await chmod(dataDir, 0o755);
  const started = await startShoal(t, dataDir);
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 12M', started.nbdUnixUri()]);
  t.equal(await modeOf(dataDir), 0o700, 'the cluster folder was made 0700');
  t.match(started.log(), /cluster folder was open to other users: made it 0700/);
  const { loose, seen } = await walk(dataDir);
  for (const name of ['cluster.key', 'admin.token', 'cluster.json', 'mds/mds.lmdb', 'cs1/cs.json', 'cs2/meta/data.mdb']) {
    t.ok(seen.includes(name), `the walk saw ${name}`);
  }
  t.same(loose, [], `none of the ${seen.length} files and directories is open to group or others`);
  started.child.kill('SIGINT');
  await started.exited;

  const key = join(dataDir, 'cluster.key');
  const token = join(dataDir, 'admin.token');
  const startAgain = (): Promise<Awaited<ReturnType<typeof run>>> => run(process.execPath, [SHOAL_ENTRY, 'start',
    '--data', dataDir, '--mds-listen', '127.0.0.1:0', '--cs-base-port', '0', '--nbd-listen', '127.0.0.1:0',
    '--nbd-metrics', '127.0.0.1:0'], { timeoutMs: 20_000 });
  await chmod(key, 0o644);
  const refused = await startAgain();
  t.equal(refused.code, 2, 'shoal start exits with the configuration error code');
  t.match(refused.stderr, `ERR_CONFIG: secret file ${key} has mode 0644: other users may read or change it; run \`chmod 600 ${key}\``);

  const daemon = await run(process.execPath, [SHOAL_ENTRY, 'run', 'cs', '--data', join(dataDir, 'cs9'), '--mds', 'http://127.0.0.1:1',
    '--cluster-key', key], { timeoutMs: 20_000 });
  t.equal(daemon.code, 2, 'a chunk server refuses it too');
  t.match(daemon.stderr, `secret file ${key} has mode 0644`);

  await chmod(token, 0o640);
  const cli = await run(process.execPath, [SHOAL_ENTRY, '--data', dataDir, 'volume', 'list'], { timeoutMs: 20_000 });
  t.equal(cli.code, 2, 'the CLI refuses an admin token others may read');
  t.match(cli.stderr, `secret file ${token} has mode 0640`);
  t.match(cli.stderr, `chmod 600 ${token}`);

  await chmod(key, 0o600);
  if (process.geteuid?.() === 0) {
    // Another user (nobody) owns the key: that user could replace it.
    await chown(key, 65534, 65534);
    const foreign = await startAgain();
    t.equal(foreign.code, 2, 'a key owned by another user is refused');
    t.match(foreign.stderr, `secret file ${key} is owned by uid 65534, not by this process's user (uid 0) or root`);
  }
});
