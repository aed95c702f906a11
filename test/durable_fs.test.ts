// The small-file and lock helpers every daemon relies on (src/util/fs.ts, ensureSecretFile):
// a durable write replaces a file atomically (a reader sees the old bytes or the new, never a
// part), gives it the asked mode whatever the umask (or keeps the mode of the file it replaces),
// and leaves no temporary file, not even when it fails; an exclusive create refuses an existing
// file and, of many racing creators, lets exactly one win. A lock can be waited for, a bounded time.

import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureSecretFile } from '../src/protocol/auth.ts';
import { lockFile, mkdirDurable, writeFileDurable } from '../src/util/fs.ts';

async function folder(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shoal-fs-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function modeOf(path: string): Promise<number> {
  return (await stat(path)).mode & 0o7777;
}

t.test('a new file gets exactly the asked mode, whatever the umask', async (t) => {
  const dir = await folder(t);
  const previous = process.umask(0o077);
  t.teardown(() => void process.umask(previous));
  await writeFileDurable(join(dir, 'shared'), 'x\n', { mode: 0o644 });
  t.equal(await modeOf(join(dir, 'shared')), 0o644, 'a umask of 077 does not narrow an asked 0644');
  await writeFileDurable(join(dir, 'secret'), 'y\n', { mode: 0o600 });
  t.equal(await modeOf(join(dir, 'secret')), 0o600);
  t.same(await readdir(dir), ['secret', 'shared'], 'no temporary file is left');
});

t.test('replacing keeps the mode of the file replaced, and is atomic for readers', async (t) => {
  const dir = await folder(t);
  const path = join(dir, 'cs.json');
  const old = Buffer.alloc(1024 * 1024, 'a');
  const fresh = Buffer.alloc(512 * 1024, 'b');
  await writeFile(path, old);
  await chmod(path, 0o640);
  let reads = 0;
  let torn = 0;
  let writing = true;
  const reader = (async () => {
    while (writing) {
      const seen = await readFile(path);
      reads += 1;
      if (!seen.equals(old) && !seen.equals(fresh)) torn += 1;
    }
  })();
  for (let round = 0; round < 40; round += 1) await writeFileDurable(path, round % 2 === 0 ? fresh : old);
  writing = false;
  await reader;
  t.ok(reads > 0, `a reader read the file ${reads} times while it was replaced 40 times`);
  t.equal(torn, 0, 'and always saw one whole version, never an empty or partial file');
  t.equal(await modeOf(path), 0o640, 'the mode of the file replaced is kept');
  t.same(await readdir(dir), ['cs.json'], 'no temporary file is left');
});

t.test('exclusive create refuses an existing file; of racing creators exactly one wins', async (t) => {
  const dir = await folder(t);
  const path = join(dir, 'cluster.key');
  await writeFileDurable(path, 'first\n', { mode: 0o600, exclusive: true });
  await t.rejects(writeFileDurable(path, 'second\n', { mode: 0o600, exclusive: true }), { code: 'EEXIST' }, 'a second create is refused');
  t.equal(await readFile(path, 'utf8'), 'first\n', 'and the file is untouched');

  const racePath = join(dir, 'admin.token');
  const results = await Promise.allSettled(
    Array.from({ length: 16 }, (_, index) => writeFileDurable(racePath, `writer ${index}\n`, { mode: 0o600, exclusive: true })),
  );
  const winners = results.flatMap((result, index) => (result.status === 'fulfilled' ? [index] : []));
  t.equal(winners.length, 1, 'exactly one of 16 racing creators wins');
  t.ok(results.every((result) => result.status === 'fulfilled' || (result.reason as NodeJS.ErrnoException).code === 'EEXIST'),
    'the others get EEXIST');
  t.equal(await readFile(racePath, 'utf8'), `writer ${winners[0]}\n`, 'the file holds the winner\'s whole contents');
  t.same((await readdir(dir)).sort(), ['admin.token', 'cluster.key'], 'no temporary file is left');
});

t.test('a failed write leaves no temporary file', async (t) => {
  const dir = await folder(t);
  await mkdir(join(dir, 'taken'));
  await t.rejects(writeFileDurable(join(dir, 'taken'), 'data\n'), 'renaming over a directory fails');
  t.same(await readdir(dir), ['taken'], 'and the temporary file is gone');
});

t.test('mkdirDurable creates every missing level', async (t) => {
  const dir = await folder(t);
  await mkdirDurable(join(dir, 'a', 'b', 'c'));
  t.ok((await stat(join(dir, 'a', 'b', 'c'))).isDirectory());
  await mkdirDurable(join(dir, 'a', 'b', 'c'));
  t.pass('an existing directory is fine');
});

t.test('secret files: created once, 0600, the same for concurrent callers; an empty one is a clear error', async (t) => {
  const dir = await folder(t);
  const path = join(dir, 'new', 'cluster.key');
  const secrets = await Promise.all(Array.from({ length: 8 }, () => ensureSecretFile(path, 32)));
  t.ok(secrets.every((secret) => secret.equals(secrets[0]!)), 'eight concurrent starters all get the same secret');
  t.equal(await modeOf(path), 0o600);
  t.match(await readFile(path, 'utf8'), /^[0-9a-f]{64}\n$/);
  t.ok((await ensureSecretFile(path, 32)).equals(secrets[0]!), 'a later start reads it back');

  const empty = join(dir, 'admin.token');
  await writeFile(empty, '', { mode: 0o600 });
  await t.rejects(ensureSecretFile(empty, 32), { code: 'ERR_CONFIG', message: /admin\.token must hold 64 hex digits, but it is empty .*delete it/ },
    'an empty secret (what a crash left of an unsynced write) is not silently replaced: the error says what to do');
});

/** Another process takes the lock on `path` and lets go (exits) after `holdMs`; resolves once it holds it. */
function holdLock(t: Test, path: string, holdMs: number): Promise<number> {
  const script = `import fsExt from 'fs-ext'; import { openSync, writeSync } from 'node:fs';
    const fd = openSync(${JSON.stringify(path)}, 'a+'); fsExt.flockSync(fd, 'exnb'); writeSync(fd, process.pid + '\\n');
    process.stdout.write('locked\\n'); setTimeout(() => process.exit(0), ${holdMs});`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => void child.kill('SIGKILL'));
  return new Promise((resolve, reject) => {
    child.stdout.once('data', () => resolve(child.pid ?? -1));
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`lock holder exited early (code ${code})`)));
  });
}

t.test('a lock held by a live process is never had; one whose holder exits is had after a wait', async (t) => {
  const dir = await folder(t);
  const held = join(dir, 'held');
  const holderPid = await holdLock(t, held, 60_000);
  const refused = await lockFile(held, { waitMs: 300 });
  t.same(refused, { heldBy: String(holderPid) }, 'a live holder keeps it, and is named by pid');

  const exiting = join(dir, 'exiting');
  await holdLock(t, exiting, 500);
  const waits: string[] = [];
  const startedMs = Date.now();
  const lock = await lockFile(exiting, { waitMs: 5_000, onWait: (holder) => waits.push(holder) });
  t.ok(!('heldBy' in lock), `taken ${Date.now() - startedMs} ms later, once the holder had exited`);
  t.equal(waits.length, 1, 'the wait was announced once');
  if (!('heldBy' in lock)) await lock.release();
  t.equal((await readFile(exiting, 'utf8')).trim(), String(process.pid), 'the new holder wrote its pid');
});
