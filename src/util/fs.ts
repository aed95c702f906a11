// File-system helpers shared by the daemons: fsync of directories, directories that survive a
// power cut, small files (secrets, identities, cluster descriptions) written so that a power cut
// leaves either the old contents or the new, never an empty or half-written file, and the
// exclusive lock files that keep a second process off a directory.
//
// Everything made here is private to the daemon's user (directories 0700, files 0600 unless a
// caller asks otherwise): chunk data, journals, databases and secrets are nobody else's business,
// and a file's mode must not depend on the umask of whoever started the daemon. Daemons also set
// a umask of 077 at start (usePrivateUmask), which covers files that libraries create for us.

import fsExt from 'fs-ext';
import { randomBytes } from 'node:crypto';
import { chmod, link, mkdir, open, readFile, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, relative, sep } from 'node:path';
import { StorageError } from '../errors.ts';

/** Mode of every directory the daemons create: only their own user may list or enter it. */
export const PRIVATE_DIRECTORY_MODE = 0o700;
/** Mode of every file the daemons create unless a caller asks for another. */
export const PRIVATE_FILE_MODE = 0o600;
/** The umask a daemon runs with: no group or other bits on anything it or its libraries create. */
const PRIVATE_UMASK = 0o077;

/**
 * Sets the process umask to 077 and returns the previous one. Called first thing in every
 * daemon, so that files made by libraries (LMDB's data and lock files, backups) are private too,
 * whatever umask the service manager or the shell passed on.
 */
export function usePrivateUmask(): number {
  return process.umask(PRIVATE_UMASK);
}

/**
 * Makes an existing directory 0700 when group or others have any access to it, and returns the
 * mode it had (null when it was already private). A data directory made private this way also
 * hides whatever older versions created inside it with looser modes: nobody else can reach them.
 * A directory owned by another user cannot be changed: that is a configuration error.
 */
export async function makeDirectoryPrivate(path: string): Promise<number | null> {
  const mode = (await stat(path)).mode & 0o7777;
  if ((mode & 0o077) === 0) return null;
  try {
    await chmod(path, PRIVATE_DIRECTORY_MODE);
  } catch (error) {
    throw new StorageError(
      'ERR_CONFIG',
      `cannot make directory ${path} private (mode ${formatMode(mode)}, wanted 0700): ${(error as Error).message}; ` +
        `run \`chmod 700 ${path}\` as its owner, or run the daemon as the user that owns it`,
    );
  }
  return mode;
}

/** A mode as chmod takes it: 0644. */
export function formatMode(mode: number): string {
  return `0${(mode & 0o7777).toString(8).padStart(3, '0')}`;
}

/** fsync a directory so that files created or removed in it survive a crash. */
export async function syncDirectory(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * mkdir -p whose new directories survive a power cut: each directory it creates is fsynced into
 * its parent. New directories are 0700; directories that already existed are left alone.
 */
export async function mkdirDurable(path: string): Promise<void> {
  const firstCreated = await mkdir(path, { recursive: true, mode: PRIVATE_DIRECTORY_MODE });
  if (firstCreated === undefined) return;
  // Parents first: an entry in a directory that is itself not yet durable would vanish with it.
  const created = [firstCreated];
  for (const part of relative(firstCreated, path).split(sep).filter((name) => name !== '')) {
    created.push(join(created.at(-1) ?? firstCreated, part));
  }
  for (const directory of created) await syncDirectory(dirname(directory));
}

export interface DurableWriteOptions {
  /**
   * Permission bits of the file. Without it, a replaced file keeps its mode and a new one gets
   * 0600 (PRIVATE_FILE_MODE).
   */
  readonly mode?: number;
  /**
   * Create only: fail with EEXIST (as `writeFile` with flag 'wx' does) when the file exists. Of two
   * processes creating the same file at once exactly one succeeds, and the other reads the
   * winner's complete contents.
   */
  readonly exclusive?: boolean;
}

/**
 * Writes a small file durably and atomically: a temporary file in the same directory gets the
 * final mode and the data, is fsynced, then renamed over the target (or, for `exclusive`, linked
 * to it, which fails when the target exists), and the directory is fsynced. After a crash at any
 * point the target holds the old contents (or is absent) or the new ones, never a part. The
 * temporary file is removed on every failure.
 */
export async function writeFileDurable(path: string, data: string | Buffer, options: DurableWriteOptions = {}): Promise<void> {
  const directory = dirname(path);
  const temporary = join(directory, `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const mode = options.mode ?? (await existingMode(path, options.exclusive === true)) ?? PRIVATE_FILE_MODE;
  try {
    const handle = await open(temporary, 'wx', mode & PRIVATE_FILE_MODE);
    try {
      // Exactly the mode meant: open() applies the umask, and the result must not depend on it.
      await handle.chmod(mode);
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    if (options.exclusive === true) {
      await link(temporary, path);
      await unlink(temporary);
    } else {
      await rename(temporary, path);
    }
  } catch (error) {
    await removeTemporary(temporary, error);
    throw error;
  }
  await syncDirectory(directory);
}

/** The permission bits of the file being replaced, if any. */
async function existingMode(path: string, exclusive: boolean): Promise<number | undefined> {
  if (exclusive) return undefined;
  try {
    return (await stat(path)).mode & 0o7777;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

/** Removes a temporary file after a failed write; a failure to remove it is reported with the first. */
async function removeTemporary(temporary: string, cause: unknown): Promise<void> {
  try {
    await unlink(temporary);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new AggregateError([cause, error], `could not remove ${temporary} after a failed write`);
  }
}

export interface FileLock {
  release(): Promise<void>;
}

export interface FileLockOptions {
  /** How long to keep trying while another process holds the lock (default: not at all). */
  readonly waitMs?: number;
  /** Told once when the lock is held and we start waiting, with the holder's pid. */
  readonly onWait?: (holder: string, waitMs: number) => void;
}

const LOCK_RETRY_MS = 100;

/**
 * Takes flock(LOCK_EX|LOCK_NB) on `path` and writes our pid into it; while another process holds
 * it, retries for up to `waitMs`. Returns the lock, or the pid written by the holder (or
 * "unknown") when it could not be had. The kernel drops the lock when its holder dies, however it
 * dies, and never hands it over while the holder lives.
 */
export async function lockFile(path: string, options: FileLockOptions = {}): Promise<FileLock | { readonly heldBy: string }> {
  const handle = await open(path, 'a+', PRIVATE_FILE_MODE);
  const waitMs = options.waitMs ?? 0;
  const deadlineMs = Date.now() + waitMs;
  let told = false;
  while (!tryLock(handle)) {
    const holder = (await readFile(path, 'utf8')).trim() || 'unknown';
    if (Date.now() >= deadlineMs) {
      await handle.close();
      return { heldBy: holder };
    }
    if (!told) options.onWait?.(holder, waitMs);
    told = true;
    await new Promise((resolve) => setTimeout(resolve, LOCK_RETRY_MS));
  }
  await handle.truncate(0);
  await handle.write(`${process.pid}\n`, 0);
  return { release: () => handle.close() };
}

/** True when we got the lock, false when another process holds it; other failures throw. */
function tryLock(handle: FileHandle): boolean {
  try {
    fsExt.flockSync(handle.fd, 'exnb');
    return true;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return false;
    throw error;
  }
}
