// A chunk server's data directory: the exclusive lock that keeps a second server off it, and the
// identity file (cs.json) that names the disk to the MDS across restarts (and across address
// changes), and its journal (whose segments name the disk by the same uuid) wherever it lives.
// The directory is private to the server's user (0700): chunk data, checksums and journals are
// nobody else's business, and making the top directory private also covers whatever an older
// version created inside it with looser modes.

import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { StorageError } from '../errors.ts';
import {
  PRIVATE_FILE_MODE, lockFile, makeDirectoryPrivate, mkdirDurable, writeFileDurable, type FileLockOptions,
} from '../util/fs.ts';

export interface DataDirIdentity {
  readonly format: 1;
  readonly uuid: string;
  readonly createdAt: string;
  /** The cluster this directory joined at its first registration; it never joins another. */
  readonly clusterId?: string;
  /**
   * Where this directory's journal was at the last start (relative to the directory when inside
   * it, else absolute): a start without --journal-dir uses it. Absent before the first start, and in directories of older versions (DATA/journal).
   * Whether that journal may hold records not yet applied is the catalog's cleanStop word.
   */
  readonly journalDir?: string;
}

export interface DataDirLock {
  release(): Promise<void>;
}

export interface DataDirLockOptions extends FileLockOptions {
  /** Told when the directory was open to group or others and has been made 0700, with its old mode. */
  readonly onMadePrivate?: (previousMode: number) => void;
}

/**
 * Takes the exclusive lock on <dir>/lock (flock, our pid written in it). A server that is
 * stopping (its supervisor died, or it was just told to stop) lets go within seconds, so a start
 * may wait up to `waitMs` for it; a live server never lets go, and then this fails with
 * ERR_DATA_DIR_LOCKED naming the holder's pid. The lock dies with the process, so a crashed server
 * never leaves the directory locked.
 */
export async function lockDataDir(directory: string, options: DataDirLockOptions = {}): Promise<DataDirLock> {
  await mkdirDurable(directory);
  const lock = await lockFile(join(directory, 'lock'), options);
  if ('heldBy' in lock) {
    const waited = (options.waitMs ?? 0) > 0 ? ` (waited ${options.waitMs} ms for it to exit)` : '';
    throw new StorageError(
      'ERR_DATA_DIR_LOCKED',
      `data directory ${directory} is in use by another chunk server (pid ${lock.heldBy})${waited}; ` +
        'stop that one first, or give this one another --data directory',
    );
  }
  try {
    const previousMode = await makeDirectoryPrivate(directory);
    if (previousMode !== null) options.onMadePrivate?.(previousMode);
  } catch (error) {
    await lock.release();
    throw error;
  }
  return lock;
}

/**
 * Takes the exclusive lock on <journalDir>/lock, creating the directory durably: two chunk servers
 * given one journal directory would recycle each other's segments. Fails at once with
 * ERR_DATA_DIR_LOCKED naming the holder (its data directory is locked first, so a server that is
 * stopping has let go of both).
 */
export async function lockJournalDir(journalDir: string): Promise<DataDirLock> {
  await mkdirDurable(journalDir);
  const lock = await lockFile(join(journalDir, 'lock'));
  if ('heldBy' in lock) {
    throw new StorageError(
      'ERR_DATA_DIR_LOCKED',
      `journal directory ${journalDir} is in use by another chunk server (pid ${lock.heldBy}); give each chunk server its own --journal-dir`,
    );
  }
  return lock;
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

/** Writes the identity file durably and atomically: a power cut leaves the old one or the new. */
export async function saveIdentity(directory: string, identity: DataDirIdentity): Promise<void> {
  await writeFileDurable(join(directory, 'cs.json'), `${JSON.stringify(identity, null, 2)}\n`, { mode: PRIVATE_FILE_MODE });
}

function parseIdentity(text: string, path: string): DataDirIdentity {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    const what = text.trim() === '' ? 'is empty (cut short by a crash?)' : 'is not valid JSON';
    throw new StorageError('ERR_CONFIG', `${path} ${what}; ${IDENTITY_REPAIR}`);
  }
  const record = value as Partial<DataDirIdentity> | null;
  if (record?.format !== 1 || typeof record.uuid !== 'string' || !/^[0-9a-f-]{36}$/.test(record.uuid)) {
    throw new StorageError('ERR_CONFIG', `${path} does not describe a chunk server data directory (format 1 with a uuid); ${IDENTITY_REPAIR}`);
  }
  return {
    format: 1,
    uuid: record.uuid,
    createdAt: String(record.createdAt ?? ''),
    ...(typeof record.clusterId === 'string' ? { clusterId: record.clusterId } : {}),
    ...(typeof record.journalDir === 'string' ? { journalDir: record.journalDir } : {}),
  };
}

/** What an admin can do about a damaged identity file: both keep the cluster whole. */
const IDENTITY_REPAIR =
  'restore it from a backup, or write {"format":1,"uuid":"UUID"} into it with the uuid the MDS knows for this ' +
  'server (`shoal cs list`, then `shoal cs info ID`), or move the directory aside to start this disk empty ' +
  '(its replicas are then copied afresh from the other servers)';
