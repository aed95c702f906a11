// Peer authentication for the cluster's internal ports. Every daemon and client of one cluster
// holds the same 32-byte cluster key (a file, mode 0600). Nothing secret crosses the wire:
//
// - chunk-server connections: the server sends a random nonce in HELLO; the caller answers with
//   its own nonce and HMAC(key, "client" | role | serverNonce | callerNonce); the server answers
//   with HMAC(key, "server" | serverNonce | callerNonce), so each side proves it holds the key.
// - MDS internal REST routes: a bearer token derived from the key (HMAC(key, "rest")), so a token
//   seen on the wire does not reveal the key itself.
//
// The admin API uses a separate token (admin.token) so that operators never need the cluster key.

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { open } from 'node:fs/promises';
import { dirname } from 'node:path';
import { StorageError } from '../errors.ts';
import { formatMode, mkdirDurable, writeFileDurable } from '../util/fs.ts';
import type { PeerRole } from './cs_messages.ts';

export const CLUSTER_KEY_BYTES = 32;
export const NONCE_BYTES = 32;

export function newNonce(): Buffer {
  return randomBytes(NONCE_BYTES);
}

export function callerMac(key: Buffer, role: PeerRole, serverNonce: Buffer, callerNonce: Buffer): Buffer {
  return createHmac('sha256', key).update('shoal-cs-client-v1').update(role).update(serverNonce).update(callerNonce).digest();
}

export function serverMac(key: Buffer, serverNonce: Buffer, callerNonce: Buffer): Buffer {
  return createHmac('sha256', key).update('shoal-cs-server-v1').update(serverNonce).update(callerNonce).digest();
}

export function macEqual(expected: Buffer, actual: Buffer): boolean {
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}

/** The bearer token for the MDS's internal routes. */
export function clusterRestToken(key: Buffer): string {
  return createHmac('sha256', key).update('shoal-rest-v1').digest('hex');
}

export function tokenEqual(expected: string, actual: string): boolean {
  const a = Buffer.from(expected);
  const b = Buffer.from(actual);
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * Reads a hex secret file written by ensureSecretFile. The file must be a regular file that only
 * its owner may read or write (no group or other bits, as ssh demands of private keys): whoever
 * reads the cluster key holds the cluster's authority, and whoever may change it can lock the
 * cluster out or slip in a key of their own. For the same reason its owner must be this process's
 * user, or root: root can do anything anyway, and a root-owned file lets an admin provision the
 * secret for a daemon running as root. A root process does not accept a file owned by another
 * user, who could replace it. The mode and owner are read from the opened file itself, so the
 * checks and the read are about the same file even if the path is replaced meanwhile.
 */
export async function readSecretFile(path: string, bytes: number): Promise<Buffer> {
  let text: string;
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    throw new StorageError('ERR_CONFIG', `cannot read secret file ${path}: ${(error as Error).message}`);
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw new StorageError('ERR_CONFIG', `secret file ${path} is not a regular file`);
    if ((info.mode & 0o077) !== 0) {
      throw new StorageError(
        'ERR_CONFIG',
        `secret file ${path} has mode ${formatMode(info.mode)}: other users may read or change it; ` +
          `run \`chmod 600 ${path}\` (and replace the secret if someone else may have read it)`,
      );
    }
    const uid = process.geteuid?.();
    if (uid !== undefined && info.uid !== uid && info.uid !== 0) {
      throw new StorageError(
        'ERR_CONFIG',
        `secret file ${path} is owned by uid ${info.uid}, not by this process's user (uid ${uid}) or root: its owner ` +
          `may change it; run \`chown ${uid} ${path}\`, or run the daemon as its owner`,
      );
    }
    text = (await handle.readFile('utf8')).trim();
  } catch (error) {
    if (error instanceof StorageError) throw error;
    throw new StorageError('ERR_CONFIG', `cannot read secret file ${path}: ${(error as Error).message}`);
  } finally {
    await handle.close();
  }
  if (!new RegExp(`^[0-9a-f]{${bytes * 2}}$`).test(text)) {
    // An empty file is what a crash leaves of a secret written without fsync (older versions did).
    const hint = text === ''
      ? ', but it is empty (cut short by a crash?): copy it back from another host of this cluster, or, for a ' +
        'local `shoal start` cluster whose daemons all read it from here, delete it and a new one is made'
      : '';
    throw new StorageError('ERR_CONFIG', `secret file ${path} must hold ${bytes * 2} hex digits${hint}`);
  }
  return Buffer.from(text, 'hex');
}

/**
 * Creates a random hex secret file (mode 0600) unless it exists; returns its contents. The file
 * is complete and durable before anyone can see it, and of two processes creating it at once one
 * wins and both return the winner's secret.
 */
export async function ensureSecretFile(path: string, bytes: number): Promise<Buffer> {
  await mkdirDurable(dirname(path));
  try {
    await writeFileDurable(path, `${randomBytes(bytes).toString('hex')}\n`, { mode: 0o600, exclusive: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  return readSecretFile(path, bytes);
}
