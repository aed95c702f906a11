// Peer authentication for the cluster's internal ports. Three kinds of caller, each holding only
// what its role needs (see the README's security section for which file lives on which host):
//
// - the MDS proves itself with an Ed25519 signature (mds.key stays on the MDS host; chunk servers
//   hold only mds.pub), over the server's nonce, its own nonce and its term, so that a later MDS
//   leader's term can fence a deposed one at the chunk servers;
// - chunk servers prove to each other, and to the MDS's chunk-server REST routes, that they hold the
//   cluster key (HMAC(key, "client" | role | serverNonce | callerNonce)); the server answers with
//   HMAC(key, "server" | serverNonce | callerNonce), so each side proves it holds the key;
// - hypervisors hold neither: a client connection proves nothing at AUTH and can do nothing until it
//   presents a capability the MDS issued (capability.ts), and at the MDS a hypervisor uses its own
//   credential (hypervisor id and secret), which the admin issues and can revoke alone.
//
// The admin API uses a separate token (admin.token) so that operators never need the cluster key.

import { createHash, createHmac, createPrivateKey, createPublicKey, randomBytes, sign, timingSafeEqual, verify, type KeyObject } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
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
  const text = await readSecretText(path);
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

/** A PEM private key (a TLS server's), with the same checks of type, mode and owner as the secrets above. */
export async function readSecretPem(path: string): Promise<string> {
  const text = await readSecretText(path);
  if (!/^-----BEGIN [A-Z ]*PRIVATE KEY-----/m.test(text)) {
    throw new StorageError('ERR_CONFIG', `${path} holds no PEM private key (a line "-----BEGIN ... PRIVATE KEY-----")`);
  }
  return text;
}

/** A secret file's text, trimmed, once its type, mode and owner are checked. */
async function readSecretText(path: string): Promise<string> {
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
  return text;
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

// ---- the MDS's key pair --------------------------------------------------------------------------

/** An Ed25519 seed (the private key) and a public key are 32 bytes each. */
export const MDS_KEY_BYTES = 32;
const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

export function mdsPrivateKeyFromSeed(seed: Buffer): KeyObject {
  return createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]), format: 'der', type: 'pkcs8' });
}

export function mdsPublicKeyFromRaw(raw: Buffer): KeyObject {
  return createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, raw]), format: 'der', type: 'spki' });
}

function rawPublicKey(privateKey: KeyObject): Buffer {
  const der = createPublicKey(privateKey).export({ format: 'der', type: 'spki' });
  return der.subarray(der.length - MDS_KEY_BYTES);
}

/**
 * Creates the MDS's key pair unless it exists: the private seed at `privatePath` (a secret file,
 * 0600) and the public key at `publicPath` (hex, readable: it goes to every chunk server). Returns
 * the private key. A public file that does not match the private one is rewritten from it.
 */
export async function ensureMdsKeyPair(privatePath: string, publicPath: string): Promise<KeyObject> {
  const seed = await ensureSecretFile(privatePath, MDS_KEY_BYTES);
  const privateKey = mdsPrivateKeyFromSeed(seed);
  const publicHex = rawPublicKey(privateKey).toString('hex');
  const existing = await readFile(publicPath, 'utf8').then((text) => text.trim(), () => null);
  if (existing !== publicHex) {
    await mkdirDurable(dirname(publicPath));
    await writeFileDurable(publicPath, `${publicHex}\n`, { mode: 0o644 });
  }
  return privateKey;
}

export async function readMdsPrivateKey(path: string): Promise<KeyObject> {
  return mdsPrivateKeyFromSeed(await readSecretFile(path, MDS_KEY_BYTES));
}

/** Reads mds.pub: not a secret, so any mode will do. */
export async function readMdsPublicKey(path: string): Promise<KeyObject> {
  let text: string;
  try {
    text = (await readFile(path, 'utf8')).trim();
  } catch (error) {
    throw new StorageError('ERR_CONFIG', `cannot read the MDS's public key ${path}: ${(error as Error).message}`);
  }
  if (!/^[0-9a-f]{64}$/.test(text)) {
    throw new StorageError('ERR_CONFIG', `${path} must hold the MDS's public key as 64 hex digits (copy mds.pub from the MDS host)`);
  }
  return mdsPublicKeyFromRaw(Buffer.from(text, 'hex'));
}

function mdsProofData(term: number, serverNonce: Buffer, callerNonce: Buffer): Buffer {
  const termBytes = Buffer.alloc(8);
  termBytes.writeUInt32BE(Math.floor(term / 2 ** 32), 0);
  termBytes.writeUInt32BE(term >>> 0, 4);
  return Buffer.concat([Buffer.from('shoal-cs-mds-v1'), termBytes, serverNonce, callerNonce]);
}

/** The MDS's proof in AUTH: an Ed25519 signature (64 bytes). */
export function mdsProof(privateKey: KeyObject, term: number, serverNonce: Buffer, callerNonce: Buffer): Buffer {
  return sign(null, mdsProofData(term, serverNonce, callerNonce), privateKey);
}

export function verifyMdsProof(publicKey: KeyObject, term: number, serverNonce: Buffer, callerNonce: Buffer, proof: Buffer): boolean {
  return proof.length === 64 && verify(null, mdsProofData(term, serverNonce, callerNonce), publicKey, proof);
}

// ---- hypervisor credentials ----------------------------------------------------------------------

/** A hypervisor's credential, as its file and its bearer token hold it: `shoal-hv1.<id>.<64 hex>`. */
const HYPERVISOR_CREDENTIAL = /^shoal-hv1\.([0-9]{1,10})\.([0-9a-f]{64})$/;
export const HYPERVISOR_SECRET_BYTES = 32;

export function formatHypervisorCredential(id: number, secret: Buffer): string {
  return `shoal-hv1.${id}.${secret.toString('hex')}`;
}

export function parseHypervisorCredential(text: string): { id: number; secret: Buffer } | null {
  const match = HYPERVISOR_CREDENTIAL.exec(text.trim());
  if (match === null) return null;
  const id = Number(match[1]);
  if (!Number.isSafeInteger(id) || id > 0xffffffff) return null;
  return { id, secret: Buffer.from(match[2] ?? '', 'hex') };
}

/** What the MDS keeps of a hypervisor's secret: enough to check it, not to use it. */
export function hypervisorSecretDigest(secret: Buffer): string {
  return createHash('sha256').update('shoal-hv-secret-v1').update(secret).digest('hex');
}

export function newHypervisorSecret(): Buffer {
  return randomBytes(HYPERVISOR_SECRET_BYTES);
}

/** Reads a hypervisor's credential file (mode checked like every secret file). */
export async function readHypervisorCredential(path: string): Promise<string> {
  const text = await readSecretText(path);
  if (parseHypervisorCredential(text) === null) {
    throw new StorageError('ERR_CONFIG', `${path} must hold a hypervisor credential (shoal-hv1.ID.SECRET), as \`shoal hypervisor add\` prints it`);
  }
  return text;
}
