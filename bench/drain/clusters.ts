// The journal-drain benchmark's cluster, as a bench target: a LocalCluster (MDS, three chunk
// servers, NBD server) with the volume `bench`, every chunk server's data directory on the one
// slow disk (a FUSE "HDD": one platter, one head for all three, like one HDD per host scaled down
// to one host) and each journal in its own folder on the fast disk (`--journal-dir`), with the
// bench's journal flags. (The fast cluster, all on the fast disk, is nbd/targets.ts's startShoal.)
//
// Invariants: a cluster's stop() is idempotent and never throws; it kills every daemon, removes the
// cluster folder (MDS, sockets, journals) and the data directories it made on the slow disk.
// Non-goals: one slow disk per chunk server (the FUSE helper is one process, one platter).

import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { LocalCluster } from '../../src/local/cluster.ts';
import { VOLUME_NAME, clusterTarget, onceAsync, type Target } from '../nbd/targets.ts';

const CHUNK_SERVERS = 3;

export interface JournalClusterOptions {
  /** Fast-disk folder for the cluster's own folder (MDS, sockets, the journals). */
  readonly runDir: string;
  /** Folder on the slow disk under which this cluster's data directories are made. */
  readonly slowDir: string;
  /** Chunk-server flags besides --journal-dir (journal size, segment size, in-place bytes). */
  readonly journalArgs: readonly string[];
  readonly volumeBytes: number;
}

/** The journal cluster as a target, and what its daemons logged as warnings or errors. */
export interface JournalTarget extends Target {
  /** Lines at level warn or error in the daemons' logs (the last 64 KiB each), `name: line`. */
  warnings(): string[];
}

const LOG_LINES_MAX = 40;

export async function startJournalCluster(options: JournalClusterOptions): Promise<JournalTarget> {
  const dataParent = await mkdtemp(join(options.slowDir, 'data-'));
  let cluster: LocalCluster | null = null;
  const stop = onceAsync(async () => {
    await cluster?.destroy().catch(() => undefined);
    await rm(dataParent, { recursive: true, force: true }).catch(() => undefined);
  });
  try {
    cluster = await LocalCluster.start({
      parentDir: options.runDir, chunkServers: 0, nbd: false, chunkServerParentDir: dataParent,
    });
    const started = cluster;
    const csArgs = (index: number): string[] =>
      ['--journal-dir', join(started.dir, `cs${index}-journal`), ...options.journalArgs];
    await Promise.all(Array.from({ length: CHUNK_SERVERS }, (_, index) =>
      started.startChunkServer(index, { extraArgs: csArgs(index) })));
    await started.waitOnline(CHUNK_SERVERS);
    await started.startNbd();
    await started.admin.createVolume({ name: VOLUME_NAME, sizeBytes: options.volumeBytes });
  } catch (error) {
    await stop();
    throw error;
  }
  const daemons = cluster;
  const warnings = (): string[] => [daemons.mds, ...daemons.chunkServers, daemons.nbd]
    .flatMap((daemon) => (daemon === null ? [] : daemon.log.split('\n')
      .filter((line) => / (warn|error) /.test(line)).map((line) => `${daemon.name}: ${line}`)))
    .slice(0, LOG_LINES_MAX);
  const target = clusterTarget(cluster, {
    label: 'ssd-journal+slow-disk',
    description: `LocalCluster.start({ chunkServers: 0, nbd: false, chunkServerParentDir: ` +
      `'${dataParent}' }) (slow disk); startChunkServer(i, { extraArgs: ['--journal-dir', ` +
      `'CLUSTER/csI-journal', ${options.journalArgs.map((arg) => `'${arg}'`).join(', ')}] }) ` +
      `for i in 0..2 (fast disk); startNbd(); createVolume({ name: '${VOLUME_NAME}', ` +
      `sizeBytes: ${options.volumeBytes} })`,
    stop,
  });
  return { ...target, warnings };
}
