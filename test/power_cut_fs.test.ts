// Proves the power-cut disk (test/helpers/power_cut.ts over helpers/powercut/powercut_fs.py) with
// real files through the mount: a cut keeps what was synced, byte for byte, and the directory
// entries whose directory was fsynced, and drops everything else; random cuts are reproducible;
// statfs, hole punching and LMDB work through it. Integration tests that cut the power of
// daemons rely on each of these.

import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, open, readFile, readdir, rename, rmdir, stat, statfs, truncate, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import fsx from 'fs-native-extensions';
import { open as openLmdb } from 'lmdb';
import { mountPowerCutDisk, type CutMode, type CutResult, type PowerCutDisk } from './helpers/power_cut.ts';

const PAGE_BYTES = 4096;

t.setTimeout(120_000); // about 15 s on an idle machine; several times that when other suites load it

/** Deterministic bytes that differ for every label. */
function pattern(label: string, sizeBytes: number): Buffer {
  const blocks: Buffer[] = [];
  for (let i = 0; blocks.length * 32 < sizeBytes; i++) blocks.push(createHash('sha256').update(`${label}:${i}`).digest());
  return Buffer.concat(blocks).subarray(0, sizeBytes);
}

function sameBytes(t: Test, actual: Buffer, expected: Buffer, message: string): void {
  const digest = (bytes: Buffer): string => `${bytes.length} bytes, sha256 ${createHash('sha256').update(bytes).digest('hex').slice(0, 16)}`;
  t.equal(digest(actual), digest(expected), message);
}

async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes `data` at `positionBytes`, fdatasync'd when `sync` is set. Creates the file if needed. */
async function writeAt(path: string, data: Buffer, positionBytes: number, sync: boolean): Promise<void> {
  const handle = await open(path, 'a+').then((created) => created.close()).then(() => open(path, 'r+'));
  try {
    await handle.write(data, 0, data.length, positionBytes);
    if (sync) await handle.datasync();
  } finally {
    await handle.close();
  }
}

/** A file whose data and directory entry are both durable. */
async function writeDurable(path: string, data: Buffer): Promise<void> {
  await writeAt(path, data, 0, true);
  await fsyncDir(dirname(path));
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

async function cutAndRemount(t: Test, disk: PowerCutDisk, mode: CutMode = { mode: 'none' }): Promise<CutResult> {
  const result = await disk.cut(mode);
  t.same(result.undoFailures, [], 'every directory change the cut undid was undone cleanly');
  await disk.remount();
  return result;
}

/** Runs a node ES module script; resolves once it printed `line` (or exited), with what it printed. */
function startNodeScript(source: string, line: string): Promise<{ child: ReturnType<typeof spawn>; output: () => string }> {
  const child = spawn(process.execPath, ['--input-type=module', '-e', source], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (text: string) => {
    stderr += text;
  });
  return new Promise((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (text: string) => {
      stdout += text;
      if (stdout.includes(line)) resolve({ child, output: () => stdout });
    });
    child.once('exit', (code, signal) => {
      if (stdout.includes(line)) resolve({ child, output: () => stdout });
      else reject(new Error(`script exited (code ${code}, signal ${signal}) before printing ${line}\n${stderr}`));
    });
  });
}

async function killAndReap(child: ReturnType<typeof spawn>): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  }
}

t.test("unsynced writes vanish at a cut; fdatasync'd ones survive byte for byte", async (t) => {
  const disk = await mountPowerCutDisk(t);
  const file = join(disk.path, 'data');
  const synced = pattern('synced', 3 * PAGE_BYTES + 100);
  await writeDurable(file, synced);
  const unsynced = pattern('unsynced', 2 * PAGE_BYTES);
  await writeAt(file, unsynced, 0, false);
  sameBytes(t, (await readFile(file)).subarray(0, unsynced.length), unsynced, 'before the cut, readers see the unsynced write');
  const stats = await disk.stats();
  t.equal(stats.dirtyPages, 2, 'two dirty pages are pending');

  const cut = await cutAndRemount(t, disk);
  t.equal(cut.droppedPages, 2, 'the cut dropped the two unsynced pages');
  sameBytes(t, await readFile(file), synced, 'after the cut the file holds exactly what was synced');
});

t.test('a partly synced file keeps exactly its synced pages, and its synced size', async (t) => {
  const disk = await mountPowerCutDisk(t);
  const file = join(disk.path, 'partial');
  const original = pattern('original', 4 * PAGE_BYTES);
  await writeDurable(file, original);
  const handle = await open(file, 'r+');
  const first = pattern('first', PAGE_BYTES);
  await handle.write(first, 0, PAGE_BYTES, 0);
  await handle.datasync();
  await handle.write(pattern('second', PAGE_BYTES), 0, PAGE_BYTES, PAGE_BYTES);
  await handle.write(pattern('fourth', PAGE_BYTES - 10), 0, PAGE_BYTES - 10, 3 * PAGE_BYTES + 5);
  await handle.write(pattern('appended', 2 * PAGE_BYTES), 0, 2 * PAGE_BYTES, 4 * PAGE_BYTES);
  await handle.close();
  t.equal((await stat(file)).size, 6 * PAGE_BYTES, 'before the cut the file has grown');

  await cutAndRemount(t, disk);
  const expected = Buffer.concat([first, original.subarray(PAGE_BYTES)]);
  sameBytes(t, await readFile(file), expected, 'the synced first page is new; every unsynced change, growth included, is gone');
});

t.test('a size change without sync is undone, with the bytes it cut off', async (t) => {
  const disk = await mountPowerCutDisk(t);
  const shrunk = join(disk.path, 'shrunk');
  const grown = join(disk.path, 'grown');
  const shrunkOriginal = pattern('shrunk', 10_000);
  const grownOriginal = pattern('grown', 5_000);
  await writeDurable(shrunk, shrunkOriginal);
  await writeDurable(grown, grownOriginal);
  const handle = await open(shrunk, 'r+');
  await handle.truncate(3_000);
  await handle.write(Buffer.from('abc'), 0, 3, 6_000);
  await handle.close();
  await truncate(grown, 50_000);
  const before = await readFile(shrunk);
  t.equal(before.length, 6_003, 'before the cut: shrunk to 3000, then written at 6000');
  t.ok(before.subarray(3_000, 6_000).equals(Buffer.alloc(3_000)), 'the cut-off range reads as zeroes before the cut');
  t.equal((await stat(grown)).size, 50_000, 'before the cut: grown to 50000');

  const cut = await cutAndRemount(t, disk);
  t.equal(cut.droppedSizeChanges, 2, 'two size changes dropped');
  sameBytes(t, await readFile(shrunk), shrunkOriginal, 'the shrunk file is back, bytes and size');
  sameBytes(t, await readFile(grown), grownOriginal, 'the grown file is back to its size');
});

t.test('a created and fsynced file survives only once its directory is fsynced', async (t) => {
  const disk = await mountPowerCutDisk(t);
  const lostDir = join(disk.path, 'lost');
  const keptDir = join(disk.path, 'kept');
  await mkdir(lostDir);
  await mkdir(keptDir);
  await fsyncDir(disk.path);
  const data = pattern('entry', 3 * PAGE_BYTES);
  await writeAt(join(lostDir, 'file'), data, 0, true);
  await writeAt(join(keptDir, 'file'), data, 0, true);
  await fsyncDir(keptDir);
  t.equal((await disk.stats()).pendingDirOps, 1, 'one directory change is pending');

  const cut = await cutAndRemount(t, disk);
  t.equal(cut.undoneDirOps, 1, 'the cut undid one directory change');
  t.same(await readdir(lostDir), [], 'the file whose directory was not fsynced is gone');
  sameBytes(t, await readFile(join(keptDir, 'file')), data, 'the file whose directory was fsynced survives');
});

t.test("dirModel 'journal': a file's fsync also commits directory changes, as on ext4", async (t) => {
  const disk = await mountPowerCutDisk(t, { dirModel: 'journal' });
  const data = pattern('journal', PAGE_BYTES);
  await mkdir(join(disk.path, 'dir'));
  await writeAt(join(disk.path, 'dir', 'synced'), data, 0, true);
  await writeAt(join(disk.path, 'dir', 'later'), data, 0, false);
  await cutAndRemount(t, disk);
  sameBytes(t, await readFile(join(disk.path, 'dir', 'synced')), data, 'the fsynced file and its new directory survive without a directory fsync');
  t.notOk(await exists(join(disk.path, 'dir', 'later')), 'a file created after the last fsync does not');
});

t.test('rename(tmp, final) without a directory fsync is undone: the old final comes back', async (t) => {
  const disk = await mountPowerCutDisk(t);
  const oldData = pattern('old', PAGE_BYTES + 7);
  const newData = pattern('new', 2 * PAGE_BYTES);
  for (const dir of ['unsynced', 'synced']) {
    await mkdir(join(disk.path, dir));
    await fsyncDir(disk.path);
    await writeDurable(join(disk.path, dir, 'final'), oldData);
    await writeAt(join(disk.path, dir, 'tmp'), newData, 0, true);
    await rename(join(disk.path, dir, 'tmp'), join(disk.path, dir, 'final'));
  }
  await fsyncDir(join(disk.path, 'synced'));
  sameBytes(t, await readFile(join(disk.path, 'unsynced', 'final')), newData, 'before the cut, final has the new content');

  await cutAndRemount(t, disk);
  sameBytes(t, await readFile(join(disk.path, 'unsynced', 'final')), oldData, 'without the directory fsync, the old final is back');
  t.notOk(await exists(join(disk.path, 'unsynced', 'tmp')), 'and tmp, never committed, is gone');
  sameBytes(t, await readFile(join(disk.path, 'synced', 'final')), newData, 'with the directory fsync, the rename survives');
  t.same(await readdir(join(disk.path, 'synced')), ['final'], 'and only final is there');
});

t.test('removals, and renames between directories, survive only through the fsync of each directory', async (t) => {
  const disk = await mountPowerCutDisk(t);
  const at = (...names: string[]): string => join(disk.path, ...names);
  for (const dir of ['unsynced', 'synced', 'target', 'emptied']) await mkdir(at(dir));
  await fsyncDir(disk.path);
  for (const dir of ['unsynced', 'synced']) {
    await writeDurable(at(dir, 'removed'), pattern(`${dir} removed`, 5000));
    await writeDurable(at(dir, 'moved'), pattern(`${dir} moved`, 5000));
  }
  for (const dir of ['unsynced', 'synced']) {
    await unlink(at(dir, 'removed'));
    await rename(at(dir, 'moved'), at('target', `${dir}-moved`));
  }
  await rmdir(at('emptied'));
  await mkdir(at('fresh'));
  await mkdir(at('fresh', 'sub'));
  await writeDurable(at('fresh', 'sub', 'file'), pattern('fresh', 100));
  await fsyncDir(at('fresh'));
  await fsyncDir(at('synced'));
  await fsyncDir(at('target'));

  await cutAndRemount(t, disk);
  t.same((await readdir(disk.path)).sort(), ['emptied', 'synced', 'target', 'unsynced'], 'rmdir and mkdir without the fsync of their directory are undone, subtree and all');
  sameBytes(t, await readFile(at('unsynced', 'removed')), pattern('unsynced removed', 5000), 'an unlink without directory fsync is undone, content and all');
  sameBytes(t, await readFile(at('unsynced', 'moved')), pattern('unsynced moved', 5000), 'a rename whose source directory was not fsynced is undone');
  t.same(await readdir(at('synced')), [], 'the committed unlink and rename stay done');
  t.same(await readdir(at('target')), ['synced-moved'], 'only the rename with both directories fsynced arrived');
  sameBytes(t, await readFile(at('target', 'synced-moved')), pattern('synced moved', 5000), 'with its content');
});

t.test('a SIGKILLed writer loses what it did not sync (a killed process would not)', async (t) => {
  const disk = await mountPowerCutDisk(t);
  const file = join(disk.path, 'killed');
  const synced = pattern('killed-synced', 2 * PAGE_BYTES);
  const unsynced = pattern('killed-unsynced', 3 * PAGE_BYTES);
  const script = `
    import { openSync, writeSync, fdatasyncSync } from 'node:fs';
    const fd = openSync(${JSON.stringify(file)}, 'w');
    writeSync(fd, Buffer.from(${JSON.stringify(synced.toString('base64'))}, 'base64'));
    fdatasyncSync(fd);
    writeSync(fd, Buffer.from(${JSON.stringify(unsynced.toString('base64'))}, 'base64'));
    process.stdout.write('written\\n');
    setInterval(() => undefined, 1000);`;
  await fsyncDir(disk.path);
  const { child } = await startNodeScript(script, 'written');
  await killAndReap(child);
  await fsyncDir(disk.path); // the file's entry is durable: only its data is in question
  sameBytes(t, await readFile(file), Buffer.concat([synced, unsynced]), 'after SIGKILL the unsynced write is still readable (page cache)');

  const cut = await cutAndRemount(t, disk);
  t.equal(cut.droppedPages, 3, 'the cut dropped the three unsynced pages');
  sameBytes(t, await readFile(file), synced, 'after the cut only the synced part is there');
});

/** One run of the random-cut scenario on its own disk: which pages and entries survived. */
async function randomScenario(t: Test, seed: number): Promise<{ result: CutResult; pages: string; entries: string[] }> {
  const disk = await mountPowerCutDisk(t);
  const file = join(disk.path, 'pages');
  const pageCount = 32;
  await writeDurable(file, Buffer.alloc(pageCount * PAGE_BYTES, 'o'));
  await mkdir(join(disk.path, 'entries'));
  await fsyncDir(disk.path);
  await writeAt(file, Buffer.alloc(pageCount * PAGE_BYTES, 'n'), 0, false);
  for (let i = 0; i < 8; i++) await writeAt(join(disk.path, 'entries', `e${i}`), Buffer.from(`entry ${i}`), 0, true);
  const result = await cutAndRemount(t, disk, { mode: 'random', seed });
  const content = await readFile(file);
  let pages = '';
  for (let i = 0; i < pageCount; i++) pages += String.fromCharCode(content[i * PAGE_BYTES] ?? 0);
  const entries = (await readdir(join(disk.path, 'entries'))).sort();
  return { result, pages, entries };
}

t.test('random cuts are reproducible and keep some pages, drop others (three disks at once)', async (t) => {
  const [first, again, other] = await Promise.all([randomScenario(t, 7), randomScenario(t, 7), randomScenario(t, 8)]);
  t.same(again, first, 'the same seed gives the same outcome');
  t.ok(first.result.keptPages > 0 && first.result.droppedPages > 0, `seed 7 kept ${first.result.keptPages} pages and dropped ${first.result.droppedPages}`);
  t.equal(first.pages.replace(/o/g, '').length, first.result.keptPages, `the kept pages are the new ones (${first.pages})`);
  t.match(first.pages, /^[on]+$/, 'every page is entirely old or entirely new');
  const keptEntries = Array.from({ length: first.result.keptDirOps }, (_, i) => `e${i}`);
  t.same(first.entries, keptEntries, `the surviving entries are the oldest ${first.result.keptDirOps} (a journal prefix)`);
  t.not(`${other.pages} ${other.entries.join()}`, `${first.pages} ${first.entries.join()}`, 'another seed gives another outcome');
});

t.test('statfs through the mount reports the backing disk', async (t) => {
  const disk = await mountPowerCutDisk(t);
  const [through, backing] = await Promise.all([statfs(disk.path), statfs(disk.backingDir)]);
  t.ok(through.blocks > 0, `the mount reports ${through.blocks} blocks`);
  t.equal(through.blocks, backing.blocks, 'as many blocks as the backing disk');
  t.equal(through.bsize, backing.bsize, 'of the same size');
});

t.test('punching a hole: ENOTSUP by default; volatile zeroes with punchHole', async (t) => {
  const plain = await mountPowerCutDisk(t);
  const original = pattern('punch', 4 * PAGE_BYTES);
  await writeDurable(join(plain.path, 'file'), original);
  const handle = await open(join(plain.path, 'file'), 'r+');
  await t.rejects(fsx.trim(handle.fd, PAGE_BYTES, 2 * PAGE_BYTES), { code: 'ENOTSUP' }, 'Node reports ENOTSUP');
  await handle.close();

  const disk = await mountPowerCutDisk(t, { punchHole: true });
  const expected = Buffer.concat([original.subarray(0, PAGE_BYTES), Buffer.alloc(2 * PAGE_BYTES), original.subarray(3 * PAGE_BYTES)]);
  await writeDurable(join(disk.path, 'synced'), original);
  await writeDurable(join(disk.path, 'unsynced'), original);
  const synced = await open(join(disk.path, 'synced'), 'r+');
  await fsx.trim(synced.fd, PAGE_BYTES, 2 * PAGE_BYTES);
  await synced.datasync();
  await synced.close();
  const unsynced = await open(join(disk.path, 'unsynced'), 'r+');
  await fsx.trim(unsynced.fd, PAGE_BYTES, 2 * PAGE_BYTES);
  await unsynced.close();
  sameBytes(t, await readFile(join(disk.path, 'unsynced')), expected, 'before the cut the punched range reads as zeroes');

  await cutAndRemount(t, disk);
  sameBytes(t, await readFile(join(disk.path, 'synced')), expected, 'a synced hole survives');
  t.ok((await stat(join(disk.backingDir, 'synced'))).blocks < 32, 'and is a hole in the backing file');
  sameBytes(t, await readFile(join(disk.path, 'unsynced')), original, 'an unsynced hole is gone');
});

t.test('LMDB through the mount: every awaited put survives a power cut', async (t) => {
  const disk = await mountPowerCutDisk(t);
  const envDir = join(disk.path, 'lmdb');
  // The options of the metadata store (src/mds/store.ts); lmdb-js defaults otherwise.
  const options = { path: envDir, compression: false, maxDbs: 16, mapSize: 64 * 1024 * 1024 };
  const created = openLmdb(options);
  await created.put('created', true);
  await created.close();
  await fsyncDir(envDir); // LMDB never fsyncs its directory: make data.mdb's entry durable here
  await fsyncDir(disk.path);

  const script = `
    const { open } = await import(${JSON.stringify(import.meta.resolve('lmdb'))});
    const db = open(${JSON.stringify(options)});
    for (let i = 0; i < 20; i++) {
      await db.put('key' + i, 'value ' + i + ' ' + 'x'.repeat(3000));
      process.stdout.write('acked ' + i + '\\n');
    }
    process.kill(process.pid, 'SIGKILL');`;
  const { child, output } = await startNodeScript(script, 'acked 19');
  await killAndReap(child);
  const acked = output().split('\n').filter((line) => line.startsWith('acked ')).map((line) => Number(line.slice(6)));
  t.equal(acked.length, 20, 'the writer saw 20 puts acknowledged before it died');

  await cutAndRemount(t, disk);
  const db = openLmdb(options);
  try {
    const missing = acked.filter((i) => db.get(`key${i}`) !== `value ${i} ${'x'.repeat(3000)}`);
    t.same(missing, [], 'every acknowledged put is there after the power cut');
    t.equal(db.get('created'), true, 'and so is the first one');
  } finally {
    await db.close();
  }
});
