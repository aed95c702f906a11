// A chunk server's data directory: the exclusive lock that keeps a second server off it, and the
// identity file that names the disk to the MDS across restarts (and across address changes).

import fsExt from 'fs-ext';
import { randomUUID } from 'node:crypto';
import { mkdir, open, readFile, rename, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { StorageError } from '../errors.ts';
import { syncDirectory } from '../util/fs.ts';

export interface DataDirIdentity {
  readonly format: 1;
  readonly uuid: string;
  readonly createdAt: string;
  /** The cluster this directory joined at its first registration; it never joins another. */
  readonly clusterId?: string;
}

export interface DataDirLock {
  release(): Promise<void>;
}

/**
 * Takes flock(LOCK_EX|LOCK_NB) on <dir>/lock and writes our pid into it. Fails with
 * ERR_DATA_DIR_LOCKED naming the holder's pid when another process has it. The lock dies with the
 * process, so a crashed server never leaves the directory locked.
 */
export async function lockDataDir(directory: string): Promise<DataDirLock> {
  await mkdir(directory, { recursive: true });
  const path = join(directory, 'lock');
  const handle: FileHandle = await open(path, 'a+');
  try {
    fsExt.flockSync(handle.fd, 'exnb');
  } catch (error) {
    await handle.close();
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EAGAIN' && code !== 'EWOULDBLOCK') throw error;
    const holder = (await readFile(path, 'utf8').catch(() => '')).trim() || 'unknown';
    throw new StorageError(
      'ERR_DATA_DIR_LOCKED',
      `data directory ${directory} is in use by another chunk server (pid ${holder}); ` +
        'stop that one first, or give this one another --data directory',
    );
  }
  await handle.truncate(0);
  await handle.write(`${process.pid}\n`, 0);
  return {
    release: async () => {
      await handle.close();
    },
  };
}

/** Reads the directory's identity, creating it on first start. */
export async function loadIdentity(directory: string): Promise<DataDirIdentity> {
  const path = join(directory, 'cs.json');
  let text: string | null = null;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  if (text !== null) return parseIdentity(text, path);
  const identity: DataDirIdentity = { format: 1, uuid: randomUUID(), createdAt: new Date().toISOString() };
  await saveIdentity(directory, identity);
  return identity;
}

/** Writes the identity file atomically (write, rename, sync the directory). */
export async function saveIdentity(directory: string, identity: DataDirIdentity): Promise<void> {
  const path = join(directory, 'cs.json');
  await writeFile(`${path}.tmp`, `${JSON.stringify(identity, null, 2)}\n`, { flag: 'w' });
  await rename(`${path}.tmp`, path);
  await syncDirectory(directory);
}

function parseIdentity(text: string, path: string): DataDirIdentity {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new StorageError('ERR_CONFIG', `${path} is not valid JSON; restore it from a backup or move the directory aside`);
  }
  const record = value as Partial<DataDirIdentity> | null;
  if (record?.format !== 1 || typeof record.uuid !== 'string' || !/^[0-9a-f-]{36}$/.test(record.uuid)) {
    throw new StorageError('ERR_CONFIG', `${path} does not describe a chunk server data directory (format 1 with a uuid)`);
  }
  return {
    format: 1,
    uuid: record.uuid,
    createdAt: String(record.createdAt ?? ''),
    ...(typeof record.clusterId === 'string' ? { clusterId: record.clusterId } : {}),
  };
}
