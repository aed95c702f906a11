// `shoal mds ...`: the metadata server's own state.
// - backup FILE: a consistent copy of the MDS's database, taken online, with the cluster id, the
//   state's generation and a checksum, written durably;
// - restore FILE --mds-data DIR: puts a backup back into a stopped MDS's data directory; when
//   the MDS starts on it, it finds what the cluster did since (replicas newer than the map) and
//   takes it back (see rebuild);
// - rebuild: takes back into the chunk map what the chunk servers hold and the map lacks: after
//   the MDS's database was lost, or restored from a copy older than the cluster.

import { createHash } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { StorageError } from '../../errors.ts';
import { decodeBackupPrefix, restoreBackup, type BackupHeader } from '../../mds/backup.ts';
import { lockFile, mkdirDurable, syncDirectory } from '../../util/fs.ts';
import { formatBytes } from '../../util/size.ts';
import { booleanFlag, defineCommand, positional, show, stringFlag, type Command } from '../command.ts';
import { renderFields } from '../table.ts';

/** A backup of a large map takes a while to copy and send; the transfer may take this long. */
const BACKUP_TIMEOUT_MS = 30 * 60_000;

function summary(header: BackupHeader, file: string): string {
  return renderFields([
    { label: 'file', value: file },
    { label: 'cluster', value: header.clusterId },
    { label: 'taken', value: header.createdAt },
    { label: 'generation', value: String(header.generation) },
    { label: 'volumes', value: String(header.volumes) },
    { label: 'chunks', value: String(header.chunks) },
    { label: 'database', value: `${formatBytes(header.lmdbBytes)}, sha256 ${header.lmdbSha256}` },
  ], (text) => text);
}

/**
 * Receives a backup into `file` durably: a temporary file beside it, its checksum verified as it
 * arrives, synced, renamed into place, the directory synced. A failure leaves no partial file.
 */
async function receiveBackup(download: (sink: (chunk: Uint8Array) => Promise<void>) => Promise<void>, file: string): Promise<BackupHeader> {
  const partial = join(dirname(file), `.${basename(file)}.partial`);
  const handle = await open(partial, 'w', 0o600);
  let prefix: Buffer = Buffer.alloc(0);
  let parsed: { header: BackupHeader; dataOffset: number } | null = null;
  const sha256 = createHash('sha256');
  let dataBytes = 0;
  try {
    await download(async (chunk) => {
      await handle.write(chunk);
      if (parsed === null) {
        prefix = Buffer.concat([prefix, chunk]);
        if (prefix.length < 16 || prefix.length < 16 + prefix.readUInt32BE(12)) return;
        parsed = decodeBackupPrefix(prefix, 'the MDS\'s answer');
        const data = prefix.subarray(parsed.dataOffset);
        sha256.update(data);
        dataBytes += data.length;
        return;
      }
      sha256.update(chunk);
      dataBytes += chunk.length;
    });
    const done = parsed as { header: BackupHeader } | null;
    if (done === null || dataBytes !== done.header.lmdbBytes || sha256.digest('hex') !== done.header.lmdbSha256) {
      throw new StorageError('ERR_IO', 'the backup arrived incomplete or damaged (its checksum does not match): nothing was written');
    }
    await handle.sync();
    await handle.close();
    await rename(partial, file);
    await syncDirectory(dirname(file));
    return done.header;
  } catch (error) {
    await handle.close().catch(() => undefined);
    await rm(partial, { force: true });
    throw error;
  }
}

const backup = defineCommand({
  path: ['mds', 'backup'],
  synopsis: 'FILE',
  summary: 'write a consistent copy of the MDS\'s database to FILE, taken while it runs',
  details: [
    'The copy is one consistent state of the map (volumes, chunks, chunk servers), with the cluster id, the state\'s',
    'generation and a sha256 of the database in its header; FILE is written durably (synced) and only once complete.',
    'Keep backups off the MDS\'s disk. Restore one with shoal mds restore.',
  ],
  positionals: ['FILE'],
  parse: (args) => resolve(positional(args, 0)),
  async run(context, file) {
    const mds = await context.mds();
    const header = await receiveBackup((sink) => mds.download('/v1/mds/backup', sink, BACKUP_TIMEOUT_MS), file);
    if (context.json) context.writeJson({ file, ...header });
    else context.write(`backup written\n${summary(header, file)}`);
  },
});

const restore = defineCommand({
  path: ['mds', 'restore'],
  synopsis: 'FILE --mds-data DIR [--force]',
  summary: 'put a backup back into a stopped MDS\'s data directory',
  details: [
    '--mds-data DIR   the MDS\'s --data directory (DATA/mds under shoal start); the MDS must be stopped',
    '--force          restore a backup of another cluster than DIR belongs to (it would orphan DIR\'s chunk servers)',
    'The database is replaced atomically. When the MDS starts again, it compares every chunk server\'s replicas with the',
    'restored map: replicas the cluster made after the backup are kept (quarantined as newer than the map, never',
    'deleted) and taken back into the map, versions and lease epochs catch up, and nothing is copied that was not lost.',
  ],
  options: { 'mds-data': { type: 'string' }, force: { type: 'boolean' } },
  positionals: ['FILE'],
  parse(args) {
    const dataDir = stringFlag(args, 'mds-data');
    if (dataDir === undefined) throw new StorageError('ERR_INVALID_ARGUMENT', '--mds-data DIR is required: the stopped MDS\'s data directory');
    return { file: resolve(positional(args, 0)), dataDir: resolve(dataDir), force: booleanFlag(args, 'force') };
  },
  async run(context, { file, dataDir, force }) {
    // The MDS holds this lock while it runs: a restore under a running MDS would be lost or worse.
    await mkdirDurable(dataDir);
    const lock = await lockFile(join(dataDir, 'lock'));
    if ('heldBy' in lock) throw new StorageError('ERR_CONFLICT', `${dataDir} is in use by a running MDS (pid ${lock.heldBy}): stop it before restoring into it`);
    try {
      const header = await restoreBackup(file, dataDir, force);
      if (context.json) context.writeJson({ restoredInto: dataDir, ...header });
      else context.write(`restored into ${dataDir}; start the MDS: it takes back what the cluster did since the backup\n${summary(header, file)}`);
    } finally {
      await lock.release();
    }
  },
});

const rebuild = defineCommand({
  path: ['mds', 'rebuild'],
  synopsis: '',
  summary: 'take back into the chunk map the volumes and chunks the chunk servers hold and the map lacks',
  details: [
    'Every online chunk server lists its replicas (volume, index, version, generation) and the volumes it knows',
    '(name, size, replica counts, fence epoch). Volumes and chunks the map lacks come back under their ids, each',
    'chunk with its newest copies as members (compared with each other before anything else); quarantined',
    'replicas taken back leave the quarantine. Servers that are offline are not asked: run it again when they are back.',
    'The MDS does this by itself when it finds replicas newer than its map; this command asks for it again.',
    'Safe to run more than once. For an MDS whose disk was lost without a backup: start an empty one with the',
    'cluster\'s id (shoal run mds --cluster-id ID); the chunk servers register and the map comes back.',
  ],
  parse: () => undefined,
  run: (context) =>
    show(context, (mds) => mds.rebuildMap(), (reply) => {
      const lines = [
        `asked ${reply.serversAsked} chunk servers: ${reply.volumesAdopted} volumes and ${reply.chunksAdopted} chunks taken back into the map`,
      ];
      if (reply.conflicts > 0) lines.push(`${reply.conflicts} chunk indexes are in the map under another chunk id: the map's kept, the servers' copies stay quarantined`);
      if (reply.serversUnreachable.length > 0) {
        lines.push(`not asked (offline): chunk servers ${reply.serversUnreachable.join(', ')}; run shoal mds rebuild again once they are back`);
      }
      return `${lines.join('\n')}\n`;
    }),
});

const openapi = defineCommand({
  path: ['mds', 'openapi'],
  synopsis: '',
  summary: 'print the REST API\'s OpenAPI document (what the MDS serves at /v1/openapi.json)',
  details: [
    'Built from the route schemas of this version, without asking an MDS. docs/openapi.json is its copy in the',
    'repository (npm run openapi rewrites it); a test fails when the two differ.',
  ],
  parse: () => undefined,
  async run(context) {
    // Loaded here, not with the CLI: the MDS's API pulls in fastify, which every other command
    // would pay for at start-up.
    const { openApiDocument } = await import('../../mds/api.ts');
    context.write(`${JSON.stringify(await openApiDocument(), null, 2)}\n`);
  },
});

export const mdsCommands: readonly Command[] = [backup, restore, rebuild, openapi];
