// Where the CLI finds the MDS and its admin token. Each is looked up on its own, first found wins:
//   1. flags: --mds URL, --token TOKEN or --token-file FILE
//   2. environment: SHOAL_MDS, SHOAL_TOKEN
//   3. the cluster file that `shoal start` writes: <--data | SHOAL_DATA | ./data>/cluster.json,
//      giving mdsUrl and adminTokenFile
// so that after `npm start` the CLI works from the same folder with no flags, and scripts on other
// machines pass the two values explicitly. When nothing is found the error says all three ways.

import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { StorageError } from '../errors.ts';
import type { ClusterFile } from '../local/start.ts';
import { readSecretFile } from '../protocol/auth.ts';

/** The admin token is 32 random bytes, written as 64 hex digits. */
const ADMIN_TOKEN_BYTES = 32;
const DATA_DIR_DEFAULT = './data';

export interface ConnectionFlags {
  readonly mds?: string | undefined;
  readonly token?: string | undefined;
  readonly tokenFile?: string | undefined;
  readonly data?: string | undefined;
}

export interface Connection {
  readonly url: string;
  readonly token: string;
}

type Environment = Readonly<Record<string, string | undefined>>;

/** `flags` holds at most one of token and tokenFile: the dispatcher refuses both as bad usage. */
export async function resolveConnection(flags: ConnectionFlags, env: Environment = process.env): Promise<Connection> {
  const tokenFile = flags.tokenFile === undefined ? undefined : resolve(flags.tokenFile);
  let url = nonEmpty(flags.mds) ?? nonEmpty(env['SHOAL_MDS']);
  let token = tokenFile === undefined ? (nonEmpty(flags.token) ?? nonEmpty(env['SHOAL_TOKEN'])) : await readToken(tokenFile);
  if (url === undefined || token === undefined) {
    const dataDir = resolve(nonEmpty(flags.data) ?? nonEmpty(env['SHOAL_DATA']) ?? DATA_DIR_DEFAULT);
    const cluster = await readClusterFile(join(dataDir, 'cluster.json'), url === undefined ? 'MDS URL' : 'admin token');
    url ??= cluster.mdsUrl;
    // A relative token file in cluster.json is relative to the cluster folder, not to the caller.
    token ??= await readToken(resolve(dataDir, cluster.adminTokenFile));
  }
  if (!/^https?:\/\/[^/]/.test(url)) {
    throw new StorageError('ERR_CONFIG', `MDS URL must start with http:// or https://, got "${url}"`);
  }
  return { url, token };
}

function nonEmpty(text: string | undefined): string | undefined {
  return text === undefined || text.trim() === '' ? undefined : text.trim();
}

async function readToken(path: string): Promise<string> {
  return (await readSecretFile(path, ADMIN_TOKEN_BYTES)).toString('hex');
}

async function readClusterFile(path: string, missing: string): Promise<Pick<ClusterFile, 'mdsUrl' | 'adminTokenFile'>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new StorageError('ERR_CONFIG', `cannot read ${path}: ${(error as Error).message}`);
    }
    throw new StorageError(
      'ERR_CONFIG',
      [
        `no ${missing} configured, and no ${path}. Give the MDS and its admin token in one of three ways:`,
        '  flags:        --mds URL --token-file FILE   (or --token TOKEN)',
        '  environment:  SHOAL_MDS=URL SHOAL_TOKEN=TOKEN',
        '  cluster file: --data DIR or SHOAL_DATA=DIR, the folder of a cluster started with `shoal start`',
      ].join('\n'),
    );
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new StorageError('ERR_CONFIG', `${path} is not JSON: ${(error as Error).message}`);
  }
  const fields = parsed as Partial<Record<'mdsUrl' | 'adminTokenFile', unknown>> | null;
  if (typeof fields?.mdsUrl !== 'string' || typeof fields.adminTokenFile !== 'string') {
    throw new StorageError('ERR_CONFIG', `${path} must hold the strings "mdsUrl" and "adminTokenFile"`);
  }
  return { mdsUrl: fields.mdsUrl, adminTokenFile: fields.adminTokenFile };
}
