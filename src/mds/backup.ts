// Backups of the MDS's database: one file a running MDS writes (a consistent LMDB copy taken in one
// read transaction, compacted) with a header naming the cluster, the state's generation and a
// checksum, and the offline restore of such a file into an MDS's data directory.
//
// File layout (format 1):
//   0  8 bytes  magic "SHOALMDS"
//   8  u32 BE   format version
//  12  u32 BE   header bytes (H)
//  16  H bytes  header: JSON BackupHeader
//  16+H         the LMDB database file, `lmdbBytes` long, sha256 `lmdbSha256`
//
// A restored database is older than the cluster: when the MDS starts on it, it compares every
// chunk server's replicas with the map, quarantines what the map lacks (never deleting it), takes
// it back into the map, and catches volume epochs up with the servers' fences (see cluster.ts).

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { StorageError } from '../errors.ts';
import { syncDirectory, writeFileDurable } from '../util/fs.ts';
import { MDS_DB_FILE } from './db_file.ts';
import type { MdsStore } from './store.ts';

const MAGIC = Buffer.from('SHOALMDS', 'latin1');
export const BACKUP_FORMAT = 1;
const PREFIX_BYTES = 16;
const HEADER_BYTES_MAX = 64 * 1024;

export interface BackupHeader {
  readonly format: typeof BACKUP_FORMAT;
  readonly clusterId: string;
  /** The state's generation: replicas made after the backup carry higher ones (see generations.ts). */
  readonly generation: number;
  readonly opSeq: number;
  readonly createdAt: string;
  readonly volumes: number;
  readonly chunks: number;
  readonly lmdbBytes: number;
  readonly lmdbSha256: string;
}

/** The file's first bytes: magic, format, header length, header. */
export function encodeBackupPrefix(header: BackupHeader): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const prefix = Buffer.alloc(PREFIX_BYTES);
  MAGIC.copy(prefix, 0);
  prefix.writeUInt32BE(BACKUP_FORMAT, 8);
  prefix.writeUInt32BE(json.length, 12);
  return Buffer.concat([prefix, json]);
}

/** Parses the header at the start of `bytes`; returns it and where the LMDB copy starts. */
export function decodeBackupPrefix(bytes: Buffer, what: string): { header: BackupHeader; dataOffset: number } {
  if (bytes.length < PREFIX_BYTES || !bytes.subarray(0, 8).equals(MAGIC)) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `${what} is not an MDS backup (no SHOALMDS header)`);
  }
  const format = bytes.readUInt32BE(8);
  if (format !== BACKUP_FORMAT) throw new StorageError('ERR_INVALID_ARGUMENT', `${what} is backup format ${format}; this version reads ${BACKUP_FORMAT}`);
  const headerBytes = bytes.readUInt32BE(12);
  if (headerBytes > HEADER_BYTES_MAX || PREFIX_BYTES + headerBytes > bytes.length) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `${what} has a damaged header (${headerBytes} bytes)`);
  }
  let value: unknown;
  try {
    value = JSON.parse(bytes.subarray(PREFIX_BYTES, PREFIX_BYTES + headerBytes).toString('utf8'));
  } catch {
    throw new StorageError('ERR_INVALID_ARGUMENT', `${what} has a header that is not JSON`);
  }
  return { header: checkHeader(value, what), dataOffset: PREFIX_BYTES + headerBytes };
}

function checkHeader(value: unknown, what: string): BackupHeader {
  const header = value as Partial<BackupHeader> | null;
  const isCount = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
  if (header === null || typeof header !== 'object' || header.format !== BACKUP_FORMAT ||
    typeof header.clusterId !== 'string' || !/^[0-9a-f-]{36}$/.test(header.clusterId) ||
    !isCount(header.generation) || !isCount(header.opSeq) || !isCount(header.volumes) || !isCount(header.chunks) ||
    !isCount(header.lmdbBytes) || typeof header.lmdbSha256 !== 'string' || !/^[0-9a-f]{64}$/.test(header.lmdbSha256) ||
    typeof header.createdAt !== 'string') {
    throw new StorageError('ERR_INVALID_ARGUMENT', `${what} has a header missing fields (clusterId, generation, lmdbBytes, lmdbSha256, ...)`);
  }
  return header as BackupHeader;
}

/**
 * Takes a consistent copy of the running MDS's database into `directory` (a temporary file the
 * caller streams and removes) and describes it.
 */
export async function takeBackup(store: MdsStore, clusterId: string, directory: string, nowMs: number): Promise<TakenBackup> {
  const path = join(directory, `backup-${nowMs}-${process.pid}.tmp`);
  const discard = async (): Promise<void> => {
    await rm(path, { force: true });
    await rm(`${path}-lock`, { force: true });
  };
  // One LMDB read transaction: the state as of one commit, whatever is written meanwhile. The
  // counts are read from the copy itself so that they describe exactly it.
  await store.copyTo(path);
  try {
    const sha256 = createHash('sha256');
    for await (const piece of createReadStream(path)) sha256.update(piece as Buffer);
    const described = await store.describeCopy(path);
    return {
      path,
      discard,
      header: {
        format: BACKUP_FORMAT,
        clusterId,
        ...described,
        createdAt: new Date(nowMs).toISOString(),
        lmdbBytes: (await stat(path)).size,
        lmdbSha256: sha256.digest('hex'),
      },
    };
  } catch (error) {
    await discard();
    throw error;
  }
}

export interface TakenBackup {
  /** The database copy, to be sent after `encodeBackupPrefix(header)`. */
  readonly path: string;
  readonly header: BackupHeader;
  /** Removes the copy (and the lock file LMDB made beside it). */
  discard(): Promise<void>;
}

/**
 * Restores a backup file into an MDS data directory that no MDS is running on (the caller holds
 * its lock). The cluster id must match unless `force`; the database file is replaced atomically.
 */
export async function restoreBackup(file: string, dataDir: string, force: boolean): Promise<BackupHeader> {
  const bytes = await readFile(file).catch((error: unknown) => {
    throw new StorageError('ERR_INVALID_ARGUMENT', `cannot read backup ${file}: ${(error as Error).message}`);
  });
  const { header, dataOffset } = decodeBackupPrefix(bytes, file);
  const data = bytes.subarray(dataOffset);
  if (data.length !== header.lmdbBytes || createHash('sha256').update(data).digest('hex') !== header.lmdbSha256) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `${file} is damaged: its database does not match the checksum in its header`);
  }
  const idPath = join(dataDir, 'cluster-id');
  const currentId = (await readFile(idPath, 'utf8').catch(() => '')).trim();
  if (currentId !== '' && currentId !== header.clusterId && !force) {
    throw new StorageError(
      'ERR_CONFLICT',
      `${file} is a backup of cluster ${header.clusterId}, but ${dataDir} belongs to cluster ${currentId}: ` +
        'restoring it there would orphan every chunk server; pass --force only if you mean to',
    );
  }
  await writeFileDurable(join(dataDir, MDS_DB_FILE), data, { mode: 0o600 });
  // The lock file belongs to the database that was replaced; LMDB makes a new one.
  await rm(join(dataDir, `${MDS_DB_FILE}-lock`), { force: true });
  if (currentId !== header.clusterId) await writeFileDurable(idPath, `${header.clusterId}\n`, { mode: 0o600 });
  await syncDirectory(dataDir);
  return header;
}
