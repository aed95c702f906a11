// `shoal start`: a whole cluster on this machine for trying the product and for development. It
// creates the cluster's secrets on first start, runs one MDS, N chunk servers (one data directory
// each, failure domain = disk) and an NBD server as separate processes, creates a volume if none
// exists, prints how to reach it, restarts a daemon that dies, and stops everything on Ctrl-C
// within five seconds. Starting again in the same data folder finds the same cluster.
//
// What may fail without taking the cluster down: a chunk server that cannot start (a damaged
// cs.json, a locked or broken data directory) or keeps dying is reported, by name, with its data
// directory and the reason, and left stopped while the others serve. The MDS and the NBD server
// are the cluster: if either cannot run, everything stops with the reason.
//
// Crashes of the supervisor itself: every daemon holds a pipe from it (its stdin) and stops when
// that closes; the daemons are recorded in the data folder, and the next start waits for (and at
// worst kills) those still stopping before it starts its own (daemon_record.ts).

import type { ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { StorageError, isStorageError } from '../errors.ts';
import { CLUSTER_KEY_BYTES, ensureSecretFile } from '../protocol/auth.ts';
import { MdsClient } from '../protocol/mds_client.ts';
import { parseHostPort, parseIntegerFlag } from '../util/daemon.ts';
import {
  PRIVATE_FILE_MODE, formatMode, makeDirectoryPrivate, mkdirDurable, usePrivateUmask, writeFileDurable, type FileLock,
} from '../util/fs.ts';
import { createLogger, type Logger } from '../util/log.ts';
import { formatBytes, parseSizeBytes } from '../util/size.ts';
import { parseReadCacheFlags, type ReadCacheConfig } from '../cache/read_cache.ts';
import { DaemonProcess } from './daemon_process.ts';
import { DaemonRecord, lockSupervisor, stopLeftovers } from './daemon_record.ts';

const USAGE = `usage: shoal start [options]        (environment variables in brackets)
  --data DIR             cluster folder (default ./data) [SHOAL_DATA]
  --mds-listen H:P       MDS REST API (default 127.0.0.1:9630) [SHOAL_MDS_PORT sets the port]
  --cs-base-port N       chunk server i listens on N+i, its metrics on N+100+i (default 9631) [SHOAL_CS_BASE_PORT]
  --chunk-servers N      number of chunk servers (default 3)
  --nbd-listen H:P       NBD over TCP (default 127.0.0.1:10809) [SHOAL_NBD_PORT sets the port]
  --nbd-socket PATH      NBD over a unix socket (default DIR/nbd.sock)
  --nbd-metrics H:P      the NBD server's /metrics (default 127.0.0.1:9730)
  --volume NAME          volume created if the cluster has none (default demo)
  --volume-size SIZE     its size (default 4G)
  --journal-dir DIR      the chunk servers' journals in DIR/cs<i>, e.g. on an SSD when DIR (the
                         data folder) is on an HDD (default: each in its data directory; a later
                         start without the flag finds them where they were)
  --journal-size SIZE    each chunk server's journal space (default: the chunk server's, 192M)
  --cs-cache-dir DIR     a read cache for each chunk server in DIR/cs<i>, e.g. on an SSD when the
                         data folder is on an HDD (emptied at every start); with --cs-cache-size
  --cs-cache-size SIZE   each chunk server's read cache (at least 1M)`;

export interface ClusterFile {
  readonly mdsUrl: string;
  readonly adminTokenFile: string;
  readonly clusterKeyFile: string;
  readonly nbd: { readonly tcp: string; readonly socket: string };
}

type Role = 'mds' | 'cs' | 'nbd';

interface DaemonSpec {
  readonly name: string;
  readonly role: Role;
  readonly args: string[];
  /** Where an admin looks when it fails (a chunk server's disk). */
  readonly dataDir: string;
}

interface Supervised {
  /** Ports chosen by the kernel at the first start are kept for restarts: the others know them. */
  spec: DaemonSpec;
  /** Null while it waits for a restart or after we gave up on it. */
  daemon: DaemonProcess | null;
  restarts: number[];
  gaveUp: boolean;
}

interface StartConfig {
  readonly dataDir: string;
  readonly mdsListen: { host: string; port: number };
  readonly nbdListen: { host: string; port: number };
  readonly nbdMetrics: string;
  readonly nbdSocket: string;
  readonly csBasePort: number;
  readonly chunkServers: number;
  readonly volume: string;
  readonly volumeSizeBytes: number;
  /** Folder of the chunk servers' journals (one folder each), or null: in their data directories. */
  readonly journalDir: string | null;
  readonly journalSize: string | null;
  /** Folder of the chunk servers' read caches (one folder each) and each one's size, or undefined: none. */
  readonly csCache: ReadCacheConfig | undefined;
  readonly clusterKeyFile: string;
  readonly adminTokenFile: string;
  readonly adminToken: string;
}

const READY_TIMEOUT_MS = 30_000;
const RESTARTS_PER_MINUTE_MAX = 5;
const RESTART_DELAY_MS = 1_000;
/**
 * Ctrl-C promises everything gone within 5 s, whatever runs (the rest of the 5 s is for reaping
 * and exiting on a busy machine). Each daemon gets SIGTERM and a share of this budget, then
 * SIGKILL: that is safe for data (acknowledged writes are in the chunk servers' journals, the
 * MDS's state is LMDB), only the next start has more to replay.
 */
const STOP_BUDGET_MS = 4_000;
/** The NBD server first: its clients get their replies, or a disconnect. */
const NBD_STOP_MS = 1_500;
/**
 * Then the MDS, so that no replica-set change is decided while chunk servers go down. It waits
 * for the recovery copies in flight, so it gets what the NBD server left over, up to this...
 */
const MDS_STOP_MS = 2_000;
/** ...while the chunk servers, stopped all at once last (journal checkpoint), keep at least this. */
const CS_STOP_MIN_MS = 1_500;

export async function runLocalCluster(argv: string[]): Promise<void> {
  // The cluster folder holds its secrets and every daemon's data: private to this user, and the
  // daemons started from here inherit the umask.
  usePrivateUmask();
  const { values } = parseArgs({
    args: argv,
    options: {
      data: { type: 'string', default: process.env['SHOAL_DATA'] ?? './data' },
      'mds-listen': { type: 'string', default: `127.0.0.1:${process.env['SHOAL_MDS_PORT'] ?? '9630'}` },
      'cs-base-port': { type: 'string', default: process.env['SHOAL_CS_BASE_PORT'] ?? '9631' },
      'chunk-servers': { type: 'string', default: '3' },
      'nbd-listen': { type: 'string', default: `127.0.0.1:${process.env['SHOAL_NBD_PORT'] ?? '10809'}` },
      'nbd-socket': { type: 'string' },
      'nbd-metrics': { type: 'string', default: '127.0.0.1:9730' },
      volume: { type: 'string', default: 'demo' },
      'volume-size': { type: 'string', default: '4G' },
      'journal-dir': { type: 'string' },
      'journal-size': { type: 'string' },
      'cs-cache-dir': { type: 'string' },
      'cs-cache-size': { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const log = createLogger('start');
  const dataDir = resolve(values.data);
  parseHostPort(values['nbd-metrics'], '--nbd-metrics');
  const settings = {
    dataDir,
    mdsListen: parseHostPort(values['mds-listen'], '--mds-listen'),
    nbdListen: parseHostPort(values['nbd-listen'], '--nbd-listen'),
    nbdMetrics: values['nbd-metrics'],
    nbdSocket: resolve(values['nbd-socket'] ?? join(dataDir, 'nbd.sock')),
    csBasePort: parseIntegerFlag(values['cs-base-port'], '--cs-base-port', 9631),
    chunkServers: parseIntegerFlag(values['chunk-servers'], '--chunk-servers', 3, 1),
    volume: values.volume,
    volumeSizeBytes: parseSizeBytes(values['volume-size'], '--volume-size'),
    journalDir: values['journal-dir'] === undefined ? null : resolve(values['journal-dir']),
    // Checked here (a typo stops the start at once), passed on as given.
    journalSize: values['journal-size'] === undefined ? null : String(parseSizeBytes(values['journal-size'], '--journal-size')),
    csCache: parseCsCacheFlags(values['cs-cache-dir'], values['cs-cache-size']),
    clusterKeyFile: join(dataDir, 'cluster.key'),
    adminTokenFile: join(dataDir, 'admin.token'),
  };

  await mkdirDurable(dataDir);
  const previousMode = await makeDirectoryPrivate(dataDir);
  if (previousMode !== null) {
    log.warn('cluster folder was open to other users: made it 0700', { dataDir, previousMode: formatMode(previousMode) });
  }
  const lock = await lockSupervisor(dataDir);
  await stopLeftovers(dataDir, log);
  await ensureSecretFile(settings.clusterKeyFile, CLUSTER_KEY_BYTES);
  const adminToken = (await ensureSecretFile(settings.adminTokenFile, 32)).toString('hex');

  const supervisor = new Supervisor(log, new DaemonRecord(dataDir, log), lock);
  const onSignal = (signal: NodeJS.Signals): void => {
    // `npm start` passes the terminal's Ctrl-C on as a second SIGINT: the stop is bounded anyway.
    if (supervisor.isStopping) log.info('already stopping', { signal, withinMs: STOP_BUDGET_MS });
    else void supervisor.stopAll(0);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await bringUp(supervisor, { ...settings, adminToken }, log);
  } catch (error) {
    // A Ctrl-C during start-up makes the start fail; that stop is already under way.
    if (supervisor.isStopping) return;
    // Printed as the command's own errors are (src/bin/shoal.ts), then everything started stops.
    if (isStorageError(error)) {
      process.stderr.write(`shoal: ${error.code}: ${error.message}\n`);
      await supervisor.stopAll(error.code === 'ERR_CONFIG' ? 2 : 1);
    } else {
      process.stderr.write(`shoal: internal error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
      await supervisor.stopAll(70);
    }
  }
}

/**
 * The local NBD server is a hypervisor like any other: it gets its own credential (every volume),
 * kept in the cluster folder. One the MDS no longer knows (its database was replaced) is replaced.
 */
async function ensureHypervisorCredential(admin: MdsClient, mdsUrl: string, path: string, log: Logger): Promise<void> {
  const existing = await readFile(path, 'utf8').then((text) => text.trim(), () => null);
  if (existing !== null) {
    const probe = new MdsClient({ url: mdsUrl, token: existing });
    try {
      await probe.exports();
      return;
    } catch (error) {
      if (!isStorageError(error, 'ERR_UNAUTHORIZED')) throw error;
      log.warn('the MDS does not accept the local hypervisor credential any more; making a new one', { path });
    } finally {
      probe.close();
    }
  }
  const { credential } = await admin.addHypervisor({ name: `local-${Date.now()}`, allVolumes: true });
  await writeFileDurable(path, `${credential}\n`, { mode: 0o600 });
}

async function bringUp(supervisor: Supervisor, config: StartConfig, log: Logger): Promise<void> {
  const { dataDir, clusterKeyFile } = config;
  const mds = await supervisor.startEssential({
    name: 'mds',
    role: 'mds',
    dataDir: join(dataDir, 'mds'),
    args: ['run', 'mds', '--data', join(dataDir, 'mds'), '--listen', `${config.mdsListen.host}:${config.mdsListen.port}`,
      '--cluster-key', clusterKeyFile, '--admin-token', config.adminTokenFile, '--failure-domain', 'disk'],
  }, 'the MDS');
  const mdsUrl = `http://${config.mdsListen.host}:${String(mds.ready['port'])}`;
  const { running, failed } = await startChunkServers(supervisor, config, mdsUrl);
  const admin = new MdsClient({ url: mdsUrl, token: config.adminToken });
  await waitForChunkServers(admin, running);
  await ensureVolume(admin, config.volume, config.volumeSizeBytes, log);
  const credentialFile = join(dataDir, 'hypervisor.cred');
  await ensureHypervisorCredential(admin, mdsUrl, credentialFile, log);
  const nbd = await supervisor.startEssential({
    name: 'nbd',
    role: 'nbd',
    dataDir,
    args: ['run', 'nbd', '--mds', mdsUrl, '--credential', credentialFile, '--socket', config.nbdSocket,
      '--listen', `${config.nbdListen.host}:${config.nbdListen.port}`, '--default-export', config.volume,
      '--metrics', config.nbdMetrics],
  }, 'the NBD server');
  const nbdTcp = `${config.nbdListen.host}:${String(nbd.ready['port'])}`;
  const clusterFile: ClusterFile = {
    mdsUrl, adminTokenFile: config.adminTokenFile, clusterKeyFile, nbd: { tcp: nbdTcp, socket: config.nbdSocket },
  };
  await writeFileDurable(join(dataDir, 'cluster.json'), `${JSON.stringify(clusterFile, null, 2)}\n`, { mode: PRIVATE_FILE_MODE });
  printBanner({ mdsUrl, nbdTcp, nbdSocket: config.nbdSocket, volume: config.volume, running, failed, dataDir });
  const nbdMetrics = `${config.nbdMetrics.replace(/:\d+$/, '')}:${String(nbd.ready['metricsPort'])}`;
  supervisor.announce({
    mdsUrl, nbdTcp, nbdSocket: config.nbdSocket, nbdMetrics, dataDir, chunkServers: running, failedChunkServers: failed,
  });
}

/** Starts every chunk server at once; those that cannot start are reported and left out. */
async function startChunkServers(
  supervisor: Supervisor, config: StartConfig, mdsUrl: string,
): Promise<{ running: number; failed: string[] }> {
  const specs: DaemonSpec[] = [];
  for (let index = 1; index <= config.chunkServers; index += 1) {
    const port = config.csBasePort === 0 ? 0 : config.csBasePort + index - 1;
    const metricsPort = config.csBasePort === 0 ? 0 : config.csBasePort + 100 + index - 1;
    const csDir = join(config.dataDir, `cs${index}`);
    specs.push({
      name: `cs${index}`,
      role: 'cs',
      dataDir: csDir,
      args: ['run', 'cs', '--data', csDir, '--mds', mdsUrl, '--cluster-key', config.clusterKeyFile,
        '--listen', `127.0.0.1:${port}`, '--metrics', `127.0.0.1:${metricsPort}`,
        ...(config.journalDir === null ? [] : ['--journal-dir', join(config.journalDir, `cs${index}`)]),
        ...(config.journalSize === null ? [] : ['--journal-size', config.journalSize]),
        ...(config.csCache === undefined ? [] : ['--cache-dir', join(config.csCache.dir, `cs${index}`), '--cache-size', String(config.csCache.sizeBytes)])],
    });
  }
  const results = await Promise.allSettled(specs.map((spec) => supervisor.start(spec)));
  const failed: string[] = [];
  results.forEach((result, index) => {
    const spec = specs[index];
    if (result.status === 'fulfilled' || spec === undefined) return;
    failed.push(spec.name);
    supervisor.reportChunkServerDown(spec, `could not start: ${describeError(result.reason)}`);
  });
  const running = specs.length - failed.length;
  if (running === 0) {
    throw new StorageError('ERR_UNAVAILABLE', 'no chunk server could start (the reasons are above): the cluster could store nothing');
  }
  return { running, failed };
}

/** --cs-cache-dir and --cs-cache-size, as each chunk server's --cache-dir and --cache-size go. */
function parseCsCacheFlags(dir: string | undefined, size: string | undefined): ReadCacheConfig | undefined {
  try {
    const cache = parseReadCacheFlags(dir, size);
    return cache === undefined ? undefined : { dir: resolve(cache.dir), sizeBytes: cache.sizeBytes };
  } catch (error) {
    // The chunk servers' flags are named so here.
    if (error instanceof StorageError) throw new StorageError(error.code, error.message.replaceAll('--cache-', '--cs-cache-'));
    throw error;
  }
}

function describeError(error: unknown): string {
  if (isStorageError(error)) return `${error.code}: ${error.message.trim()}`;
  return error instanceof Error ? error.message : String(error);
}

function printBanner(info: {
  mdsUrl: string; nbdTcp: string; nbdSocket: string; volume: string; running: number; failed: string[]; dataDir: string;
}): void {
  const missing = info.failed.length === 0
    ? []
    : [`WARNING: chunk server${info.failed.length === 1 ? '' : 's'} ${info.failed.join(', ')} could not start (see above); ` +
        'the cluster runs without them, with fewer copies of new data'];
  process.stdout.write(
    [
      '',
      `shoal is running: MDS ${info.mdsUrl}, ${info.running} chunk servers, data in ${info.dataDir}`,
      ...missing,
      `NBD export "${info.volume}":`,
      `  nbdinfo nbd://${info.nbdTcp}/${info.volume}`,
      `  nbdinfo 'nbd+unix:///${info.volume}?socket=${info.nbdSocket}'`,
      `  qemu-system-x86_64 ... -drive file=nbd://${info.nbdTcp}/${info.volume},format=raw`,
      'Admin CLI (from this folder): npx shoal stat, npx shoal volume list, npx shoal cs list',
      `Metrics: ${info.mdsUrl}/metrics, chunk servers and NBD server on the ports in their log lines`,
      'Ctrl-C stops the cluster; npm start again finds the same data.',
      '',
    ].join('\n'),
  );
}

async function waitForChunkServers(admin: MdsClient, count: number): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    const { chunkServers } = await admin.listChunkServers();
    const online = chunkServers.filter((cs) => cs.state === 'online').length;
    if (online >= count) return;
    if (Date.now() > deadline) {
      throw new StorageError('ERR_TIMEOUT', `only ${online} of ${count} chunk servers came online within ${READY_TIMEOUT_MS} ms`);
    }
    await new Promise((resolveDelay) => setTimeout(resolveDelay, 200));
  }
}

async function ensureVolume(admin: MdsClient, name: string, sizeBytes: number, log: Logger): Promise<void> {
  const { volumes } = await admin.listVolumes();
  if (volumes.length > 0) return;
  try {
    await admin.createVolume({ name, sizeBytes });
    log.info('volume created', { name, size: formatBytes(sizeBytes) });
  } catch (error) {
    if (!isStorageError(error, 'ERR_VOLUME_EXISTS')) throw error;
  }
}

/** The ports a daemon got from the kernel (asked for port 0), written into its flags. */
function pinPorts(spec: DaemonSpec, ready: Readonly<Record<string, unknown>>): DaemonSpec {
  const chosen: Record<string, unknown> = { '--listen': ready['port'], '--metrics': ready['metricsPort'] };
  const args = spec.args.map((arg, index) => {
    const flag = spec.args[index - 1];
    const port = flag === undefined ? undefined : chosen[flag];
    return typeof port === 'number' && arg.endsWith(':0') ? `${arg.slice(0, -2)}:${port}` : arg;
  });
  return { ...spec, args };
}

/**
 * Runs daemons as child processes, waits for their ready lines, restarts them when they die, and
 * stops them in order within the stop budget.
 */
class Supervisor {
  private readonly supervised: Supervised[] = [];
  /** Daemons spawned but not ready yet. */
  private readonly starting = new Set<ChildProcess>();
  private readonly restartTimers = new Set<NodeJS.Timeout>();
  private stopping = false;
  private readonly log: Logger;
  private readonly record: DaemonRecord;
  /**
   * Held until this process ends, however it ends (the kernel drops it then). Referenced here so
   * that it lives as long as the supervisor: a lock whose handle is garbage-collected is released.
   */
  private readonly lock: FileLock;

  constructor(log: Logger, record: DaemonRecord, lock: FileLock) {
    this.log = log;
    this.record = record;
    this.lock = lock;
  }

  get isStopping(): boolean {
    return this.stopping;
  }

  async start(spec: DaemonSpec): Promise<DaemonProcess> {
    const daemon = await this.spawn(spec);
    const entry: Supervised = { spec: pinPorts(spec, daemon.ready), daemon, restarts: [], gaveUp: false };
    this.supervised.push(entry);
    this.watch(entry, daemon);
    return daemon;
  }

  /** Starts a daemon the cluster cannot do without: its failure fails the start, saying which. */
  async startEssential(spec: DaemonSpec, label: string): Promise<DaemonProcess> {
    try {
      return await this.start(spec);
    } catch (error) {
      if (!isStorageError(error)) throw error;
      throw new StorageError(error.code, `${label} could not start, so the cluster cannot run: ${error.message.trim()}`);
    }
  }

  /** Prints one machine-readable line for tools that drive `shoal start` (tests, bench). */
  announce(fields: Record<string, unknown>): void {
    process.stdout.write(`${JSON.stringify({ event: 'ready', service: 'cluster', ...fields })}\n`);
  }

  /** Says loudly that a chunk server is out, where its disk is, and what to do about it. */
  reportChunkServerDown(spec: DaemonSpec, reason: string): void {
    this.log.error(
      `chunk server ${spec.name} (data directory ${spec.dataDir}) ${reason}. The cluster runs on without it. ` +
        'Fix what the message says, then stop (Ctrl-C) and start again to bring it back',
    );
  }

  private async spawn(spec: DaemonSpec): Promise<DaemonProcess> {
    // The start-up sequence may still be under way when Ctrl-C comes: nothing new from then on.
    if (this.stopping) throw new StorageError('ERR_SHUTTING_DOWN', `not starting ${spec.name}: the cluster is stopping`);
    let child: ChildProcess | null = null;
    const started = DaemonProcess.start({
      name: spec.name,
      args: spec.args,
      detached: true,
      supervised: true,
      readyTimeoutMs: READY_TIMEOUT_MS,
      onSpawn: (spawned) => {
        child = spawned;
        this.starting.add(spawned);
        if (spawned.pid !== undefined) void this.record.add(spec.name, spawned.pid);
      },
      onLine: (line) => process.stdout.write(`${line}\n`),
    });
    try {
      const daemon = await started;
      // Ready just as the stop began (stopStarting signals it too): it must not outlive us.
      if (this.stopping) {
        await daemon.stop('SIGTERM', CS_STOP_MIN_MS);
        throw new StorageError('ERR_SHUTTING_DOWN', `${spec.name} became ready while the cluster was stopping`);
      }
      return daemon;
    } finally {
      if (child !== null) this.starting.delete(child);
    }
  }

  private watch(entry: Supervised, daemon: DaemonProcess): void {
    void daemon.waitExit().then(({ code, signal }) => {
      if (this.stopping || entry.daemon !== daemon) return;
      entry.daemon = null;
      this.restartOrGiveUp(entry, signal === null ? `exited with code ${code}` : `was killed by ${signal}`, true);
    });
  }

  /** After a death or a failed restart: try again in a moment, unless it keeps failing. */
  private restartOrGiveUp(entry: Supervised, what: string, retryable: boolean): void {
    const nowMs = Date.now();
    entry.restarts = entry.restarts.filter((at) => nowMs - at < 60_000);
    if (!retryable || entry.restarts.length >= RESTARTS_PER_MINUTE_MAX) {
      const times = entry.restarts.length + 1;
      this.giveUp(entry, retryable ? `${what}, ${times} times within a minute` : what);
      return;
    }
    entry.restarts.push(nowMs);
    this.log.error(`${entry.spec.name} ${what}; restarting it in ${RESTART_DELAY_MS} ms`);
    const timer = setTimeout(() => {
      this.restartTimers.delete(timer);
      if (!this.stopping) void this.restart(entry);
    }, RESTART_DELAY_MS);
    this.restartTimers.add(timer);
  }

  private async restart(entry: Supervised): Promise<void> {
    try {
      const daemon = await this.spawn(entry.spec);
      entry.daemon = daemon;
      this.watch(entry, daemon);
    } catch (error) {
      if (this.stopping) return;
      // A configuration error stays one: starting again the same way cannot help.
      this.restartOrGiveUp(entry, `failed to restart: ${describeError(error)}`, !isStorageError(error, 'ERR_CONFIG'));
    }
  }

  /** A chunk server is left stopped and the cluster goes on; without the MDS or NBD server it cannot. */
  private giveUp(entry: Supervised, reason: string): void {
    entry.gaveUp = true;
    if (entry.spec.role !== 'cs') {
      this.log.error(`${entry.spec.name} ${reason}: stopping the cluster, which cannot run without it`);
      void this.stopAll(1);
      return;
    }
    this.reportChunkServerDown(entry.spec, `${reason}: left stopped`);
    const chunkServersLeft = this.supervised.filter((other) => other.spec.role === 'cs' && !other.gaveUp).length;
    if (chunkServersLeft === 0) {
      this.log.error('no chunk server is running any more: stopping the cluster');
      void this.stopAll(1);
    }
  }

  /**
   * Stops the NBD server, then the MDS, then every chunk server at once, each within its share of
   * STOP_BUDGET_MS (then SIGKILL), and exits with `exitCode`.
   */
  async stopAll(exitCode: number): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const startedMs = Date.now();
    for (const timer of this.restartTimers) clearTimeout(timer);
    this.restartTimers.clear();
    const deadlineMs = startedMs + STOP_BUDGET_MS;
    const leftMs = (): number => Math.max(0, deadlineMs - Date.now());
    await this.stopRole('nbd', Math.min(NBD_STOP_MS, leftMs()));
    await this.stopRole('mds', Math.min(MDS_STOP_MS, Math.max(0, leftMs() - CS_STOP_MIN_MS)));
    await Promise.all([this.stopRole('cs', leftMs()), this.stopStarting(leftMs())]);
    // Nothing is left running, so a record that stays behind only costs the next start a look.
    await this.record.clear().catch((error: unknown) => this.log.error('could not remove the daemon record', { error }));
    this.log.info('cluster stopped', { inMs: Date.now() - startedMs });
    await this.lock.release().catch((error: unknown) => this.log.error('could not release the start lock', { error }));
    process.exit(exitCode);
  }

  private async stopRole(role: Role, graceMs: number): Promise<void> {
    const daemons = this.supervised.filter((entry) => entry.spec.role === role).flatMap((entry) => entry.daemon ?? []);
    await Promise.all(daemons.map(async (daemon) => {
      if (!daemon.running) return;
      const { signal } = await daemon.stop('SIGTERM', graceMs);
      if (signal === 'SIGKILL') this.log.warn(`${daemon.name} did not stop within ${graceMs} ms: killed it`);
    }));
  }

  /** Daemons not ready yet have no orderly stop to wait for: SIGTERM ends them (SIGKILL if need be). */
  private async stopStarting(graceMs: number): Promise<void> {
    await Promise.all([...this.starting].map(async (child) => {
      const exited = child.exitCode !== null || child.signalCode !== null
        ? Promise.resolve()
        : new Promise<void>((resolveExit) => child.once('exit', () => resolveExit()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    }));
  }
}
