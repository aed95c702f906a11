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
import { readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { StorageError } from '../errors.ts';
import { mkdirDurable, writeFileDurable } from '../util/fs.ts';
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

/** Reads a hex secret file written by ensureSecretFile. */
export async function readSecretFile(path: string, bytes: number): Promise<Buffer> {
  let text: string;
  try {
    text = (await readFile(path, 'utf8')).trim();
  } catch (error) {
    throw new StorageError('ERR_CONFIG', `cannot read secret file ${path}: ${(error as Error).message}`);
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
