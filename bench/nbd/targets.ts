// The things fio measures, each one or more NBD exports on unix sockets: shoal (a real
// LocalCluster with three chunk servers and its NBD server) and the qemu-nbd baselines serving raw
// files. Here they are started, described (the exact command lines, read back from /proc) and
// stopped.
//
// Invariants: every target lives under the one run folder, so shoal's chunk files and the raw
// files share a file system and a disk; a target's stop() is idempotent and never throws, so the
// harness can call every stop() on any exit path (normal end, error, Ctrl-C).
//
// Why two qemu-nbd baselines: shoal acknowledges a write only after every replica's journal
// fdatasync, so `--cache=directsync` (O_DIRECT|O_DSYNC: each write is on stable storage before its
// reply) is the equally durable comparison. `--cache=writeback` (qemu-nbd's default) acknowledges
// from the page cache and shows what a non-durable server gets on this machine. Three directsync
// servers on three files, driven at once (`qemu-directsync-x3`), are the floor for three durable
// copies on this one disk: what shoal's three replicas would cost if replication itself were free.
//
// Non-goals: TCP exports (the unix socket is the cheaper path for both), multi-connection clients.

import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, truncate, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { LocalCluster } from '../../src/local/cluster.ts';

export type TargetId = 'shoal' | 'qemu-directsync' | 'qemu-writeback' | 'qemu-directsync-x3';

export interface Target {
  readonly id: TargetId;
  /** Label for tables, e.g. `qemu-nbd(directsync)`. */
  readonly label: string;
  /** One NBD URI per server; fio drives them all at once (one job section each). */
  readonly uris: readonly string[];
  /**
   * Process name -> pid, for CPU and memory accounting (e.g. `cs0`, `nbd`, `qemu-nbd`, or
   * `qemu-nbd0`..`qemu-nbd2` for the three-server baseline).
   */
  readonly pids: ReadonlyMap<string, number>;
  /** Daemon name -> Prometheus /metrics URL (shoal only). */
  readonly metricsUrls: ReadonlyMap<string, string>;
  /** The command lines that serve this target, as run. */
  commandLines(): Promise<string[]>;
  /** The end of the serving processes' logs, to show when a job against this target fails. */
  logTail(): string;
  stop(): Promise<void>;
}

/** The volume every shoal target exports. */
export const VOLUME_NAME = 'bench';

export interface ShoalTargetOptions {
  readonly runDir: string;
  readonly volumeBytes: number;
  readonly chunkServers: number;
  /** Run every daemon under node --cpu-prof, writing its profile here when it exits. */
  readonly profileDir: string | null;
}

export async function startShoal(options: ShoalTargetOptions): Promise<Target> {
  const { runDir, chunkServers, volumeBytes, profileDir } = options;
  const cluster = await startCluster(runDir, chunkServers, profileDir);
  // A profiled daemon writes its profile only when it exits by itself: stop every daemon with
  // SIGTERM first (each exits normally; SIGKILL after 20 s), then destroy (SIGKILL, rm).
  const stop = onceAsync(async () => {
    if (profileDir !== null) await stopGracefully(cluster).catch(() => undefined);
    await cluster.destroy().catch(() => undefined);
  });
  try {
    await cluster.admin.createVolume({ name: VOLUME_NAME, sizeBytes: volumeBytes });
  } catch (error) {
    await stop();
    throw error;
  }
  return clusterTarget(cluster, {
    label: 'shoal',
    description: `LocalCluster.start({ chunkServers: ${chunkServers}, nbd: true }); ` +
      `createVolume({ name: '${VOLUME_NAME}', sizeBytes: ${volumeBytes} }) ` +
      '(default chunk size and replica count)',
    stop,
  });
}

export interface ClusterTargetOptions {
  readonly label: string;
  /** How the cluster was started, the first of the target's command lines. */
  readonly description: string;
  readonly stop: () => Promise<void>;
}

/**
 * A started LocalCluster (with its NBD server and the volume `bench`) as a target: its daemons'
 * pids and /metrics URLs, logs and command lines. Other harnesses start clusters of other shapes
 * (a journal on another disk) and measure them the same way.
 */
export function clusterTarget(cluster: LocalCluster, options: ClusterTargetOptions): Target {
  const pids = new Map<string, number>([['mds', cluster.mds.pid]]);
  const metricsUrls = new Map<string, string>();
  for (const [index, cs] of cluster.chunkServers.entries()) {
    if (cs === null) continue;
    pids.set(`cs${index}`, cs.pid);
    metricsUrls.set(`cs${index}`, `http://127.0.0.1:${Number(cs.ready['metricsPort'])}/metrics`);
  }
  if (cluster.nbd !== null) {
    pids.set('nbd', cluster.nbd.pid);
    metricsUrls.set('nbd', `http://127.0.0.1:${Number(cluster.nbd.ready['metricsPort'])}/metrics`);
  }
  return {
    id: 'shoal',
    label: options.label,
    uris: [cluster.nbdUnixUri(VOLUME_NAME)],
    pids,
    metricsUrls,
    logTail: () => {
      const daemons = [cluster.mds, ...cluster.chunkServers, cluster.nbd];
      return daemons.filter((daemon) => daemon !== null)
        .map((daemon) => `--- ${daemon.name} log (end) ---\n${daemon.log.slice(-2048)}`).join('\n');
    },
    commandLines: async () => [
      options.description, ...(await Promise.all([...pids.values()].map(processCommandLine))),
    ],
    stop: options.stop,
  };
}

/**
 * LocalCluster.start with SHOAL_NODE_ARGS set for its daemons when profiling (DaemonProcess reads
 * it at each spawn); restored afterwards, as nothing else in this process starts daemons.
 */
async function startCluster(runDir: string, chunkServers: number, profileDir: string | null,
): Promise<LocalCluster> {
  const start = (): Promise<LocalCluster> =>
    LocalCluster.start({ parentDir: runDir, chunkServers, nbd: true });
  if (profileDir === null) return start();
  const saved = process.env['SHOAL_NODE_ARGS'];
  const profileArgs = `--cpu-prof --cpu-prof-dir=${profileDir}`;
  process.env['SHOAL_NODE_ARGS'] = saved === undefined ? profileArgs : `${saved} ${profileArgs}`;
  try {
    return await start();
  } finally {
    if (saved === undefined) delete process.env['SHOAL_NODE_ARGS'];
    else process.env['SHOAL_NODE_ARGS'] = saved;
  }
}

/** NBD server first (it is the chunk servers' client), then the chunk servers, then the MDS. */
async function stopGracefully(cluster: LocalCluster): Promise<void> {
  const graceMs = 20_000;
  await cluster.nbd?.stop('SIGTERM', graceMs);
  await Promise.all(cluster.chunkServers.map((cs) => cs?.stop('SIGTERM', graceMs)));
  await cluster.mds.stop('SIGTERM', graceMs);
}

export type QemuCache = 'directsync' | 'writeback';

export interface QemuTargetOptions {
  readonly runDir: string;
  readonly volumeBytes: number;
  readonly cache: QemuCache;
  /** How many servers, each on its own raw file and socket (1, or 3 for the copies floor). */
  readonly servers: 1 | 3;
}

/** One qemu-nbd process on one raw file. */
interface QemuServer {
  readonly args: readonly string[];
  readonly uri: string;
  readonly pid: number;
  readonly stderr: () => string;
  readonly stop: () => Promise<void>;
}

export async function startQemuNbd(options: QemuTargetOptions): Promise<Target> {
  const group = options.servers > 1;
  const id: TargetId = options.cache === 'writeback' ? 'qemu-writeback'
    : group ? 'qemu-directsync-x3' : 'qemu-directsync';
  const servers: QemuServer[] = [];
  const stop = onceAsync(() => Promise.all(servers.map((server) => server.stop())));
  try {
    for (let index = 0; index < options.servers; index += 1) {
      const name = group ? `${id}-${index}` : id;
      servers.push(await startQemuServer(options, name));
    }
  } catch (error) {
    await stop();
    throw error;
  }
  // The single servers keep the process name `qemu-nbd`; a group's are qemu-nbd0, qemu-nbd1, ...
  const processName = (index: number): string => (group ? `qemu-nbd${index}` : 'qemu-nbd');
  return {
    id,
    label: group ? `qemu-nbd(directsync)x${options.servers}` : `qemu-nbd(${options.cache})`,
    uris: servers.map((server) => server.uri),
    pids: new Map(servers.map((server, index) => [processName(index), server.pid])),
    metricsUrls: new Map(),
    commandLines: async () =>
      servers.map((server) => ['qemu-nbd', ...server.args].map(shellQuote).join(' ')),
    logTail: () => servers.map((server, index) =>
      `--- ${processName(index)} stderr (end) ---\n${server.stderr()}`).join('\n'),
    stop,
  };
}

async function startQemuServer(options: QemuTargetOptions, name: string): Promise<QemuServer> {
  const imagePath = join(options.runDir, `${name}.raw`);
  const socketPath = join(options.runDir, `${name}.sock`);
  // A sparse file the size of the shoal volume; the prefill allocates the measured region.
  await writeFile(imagePath, '');
  await truncate(imagePath, options.volumeBytes);
  // aio=native needs O_DIRECT, which directsync has and writeback has not (it uses threads).
  const aio = options.cache === 'directsync' ? ['--aio=native'] : [];
  const args = ['-f', 'raw', `--cache=${options.cache}`, ...aio, '--discard=unmap', '--persistent',
    '--shared=8', '-x', VOLUME_NAME, '-k', socketPath, imagePath];
  const child = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (text: string) => {
    stderr = (stderr + text).slice(-8192);
  });
  const stop = onceAsync(() => stopChild(child));
  try {
    await waitForSocket(socketPath, child, () => stderr);
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    args, stop, stderr: () => stderr, pid: child.pid ?? -1,
    uri: `nbd+unix:///${VOLUME_NAME}?socket=${socketPath}`,
  };
}

/** Connects until the server accepts; qemu-nbd binds and listens a moment after it starts. */
async function waitForSocket(socketPath: string, child: ChildProcess, stderr: () => string,
): Promise<void> {
  const deadlineMs = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`qemu-nbd exited during start-up (code ${child.exitCode})\n${stderr()}`);
    }
    const accepted = await new Promise<boolean>((resolve) => {
      const socket = connect(socketPath);
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (accepted) return;
    if (Date.now() > deadlineMs) {
      throw new Error(`qemu-nbd did not listen on ${socketPath} within 10 s\n${stderr()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

async function processCommandLine(pid: number): Promise<string> {
  const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  const argv = raw.split('\0').filter((part) => part.length > 0);
  return argv.length === 0 ? `(pid ${pid} gone)` : argv.map(shellQuote).join(' ');
}

export function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`;
}

export function onceAsync(action: () => Promise<unknown>): () => Promise<void> {
  let done: Promise<void> | null = null;
  return () => {
    done ??= action().then(() => undefined);
    return done;
  };
}
