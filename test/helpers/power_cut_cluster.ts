// A real cluster whose every simulated host has its own power-cut disk (power_cut.ts): the MDS's
// data directory on one PowerCutDisk, each chunk server's on its own. NBD servers, their unix
// sockets and the cluster key / admin token files stay on the real disk in the test's temporary
// folder (a socket cannot live on the FUSE mount, and a hypervisor's NBD server holds no data).
//
// Power cuts: the whole cluster at once (every daemon SIGKILLed and reaped, every disk cut, then
// everything restarted as after a reboot), one chunk server's host alone while the others run,
// or the MDS's host alone. After a 'random' cut a host's daemon starts with LMDB_RESTORE=safe,
// what a real reboot gives it (a new boot id: lmdb-js then does not trust an unsynced meta page).
//
// Daemons are `shoal run mds|cs|nbd` through src/local/daemon_process.ts, as in every other
// integration test. Their logs are kept per incarnation: problem lines (checksum mismatch, journal
// damage) are collected for the tests to assert on, and every log is printed when a test fails.
// Teardown kills every process and unmounts every disk, bounded in time, also after a failure.

import { randomBytes } from 'node:crypto';
import { createWriteStream, type WriteStream } from 'node:fs';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { DaemonProcess } from '../../src/local/daemon_process.ts';
import { MdsClient } from '../../src/protocol/mds_client.ts';
import { metricValue } from './metrics.ts';
import { PowerCutDisk, isMountPoint, type CutMode, type CutResult } from './power_cut.ts';

/** Lines that must never appear in a daemon's log after a power cut. */
export const PROBLEM_PATTERN = /checksum mismatch|journal damaged|journal replay failed/;

const ONLINE_TIMEOUT_MS = 60_000;
const TEARDOWN_TIMEOUT_MS = 60_000;
const LOG_PRINT_BYTES = 8_000;

export interface PowerCutClusterOptions {
  readonly chunkServers?: number;
  readonly mdsArgs?: readonly string[];
  readonly csArgs?: readonly string[];
  readonly nbdArgs?: readonly string[];
  /** Unsynced bytes each disk may hold (power_cut.ts); default 256 MiB. */
  readonly dirtyLimitBytes?: number;
}

export interface HostCut {
  readonly host: string;
  readonly mode: 'none' | 'random';
  /** The seed this host's disk was cut with (random mode): derived from the test's seed. */
  readonly seed?: number;
  readonly result: CutResult;
}

export interface LogProblem {
  readonly daemon: string;
  readonly line: string;
}

interface Host {
  readonly name: string;
  readonly index: number;
  readonly disk: PowerCutDisk;
  /** The daemon's next start follows a random cut: LMDB_RESTORE=safe, as after a reboot. */
  safeRestore: boolean;
}

interface NbdInstance {
  readonly name: string;
  readonly args: readonly string[];
  daemon: DaemonProcess | null;
}

/** The seed a host's disk is cut with, from the test's seed: distinct per host, reproducible. */
export function hostSeed(seed: number, hostIndex: number): number {
  return seed * 16 + hostIndex;
}

export class PowerCutCluster {
  readonly dir: string;
  readonly clusterKeyPath: string;
  readonly adminTokenPath: string;
  mds: DaemonProcess | null = null;
  readonly chunkServers: Array<DaemonProcess | null> = [];
  /** Every daemon incarnation's log, in start order: printed when a test fails. */
  readonly incarnations: Array<{ name: string; daemon: DaemonProcess }> = [];
  readonly problems: LogProblem[] = [];
  private readonly logStreams: WriteStream[] = [];
  /** How long each phase of the last whole-cluster cut took (for messages). */
  lastCutPhases = '';
  private readonly options: PowerCutClusterOptions;
  private readonly mdsHost: Host;
  private readonly csHosts: Host[];
  private readonly nbds = new Map<string, NbdInstance>();
  private mdsPort = 0;
  private readonly csUuids: Array<string | null> = [];
  private readonly adminToken: string;
  private clients: { admin: MdsClient; internal: MdsClient } | null = null;
  private destroyed = false;

  private constructor(dir: string, adminToken: string, options: PowerCutClusterOptions, mdsHost: Host, csHosts: Host[]) {
    this.dir = dir;
    this.options = options;
    this.mdsHost = mdsHost;
    this.csHosts = csHosts;
    this.clusterKeyPath = join(dir, 'cluster.key');
    this.adminTokenPath = join(dir, 'admin.token');
    this.adminToken = adminToken;
    for (let index = 0; index < csHosts.length; index += 1) {
      this.chunkServers.push(null);
      this.csUuids.push(null);
    }
  }

  /**
   * Mounts one disk per host, starts the MDS, the chunk servers and one NBD server ('nbd'), and
   * registers a teardown on `t` that prints the logs if `t` failed, kills every process and
   * unmounts every disk.
   */
  static async start(t: Test, options: PowerCutClusterOptions = {}): Promise<PowerCutCluster> {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-pcc-'));
    const clusterKey = randomBytes(32);
    const adminToken = randomBytes(32).toString('hex');
    await writeFile(join(dir, 'cluster.key'), `${clusterKey.toString('hex')}\n`, { mode: 0o600 });
    await writeFile(join(dir, 'admin.token'), `${adminToken}\n`, { mode: 0o600 });
    const mounted: PowerCutDisk[] = [];
    let cluster: PowerCutCluster | null = null;
    let ended = false;
    t.teardown(async () => {
      ended = true;
      if (cluster !== null) {
        if (!t.passing() || process.env['SHOAL_TEST_LOGS'] === '1') await cluster.keepLogs();
        await cluster.destroy();
      } else {
        await Promise.all(mounted.map((disk) => disk.unmount()));
        await removeIfUnmounted(dir, mounted);
      }
    });
    const mount = async (name: string): Promise<PowerCutDisk> => {
      const disk = await PowerCutDisk.mount({
        backingDir: join(dir, 'hosts', name, 'backing'),
        mountDir: join(dir, 'hosts', name, 'mnt'),
        ...(options.dirtyLimitBytes === undefined ? {} : { dirtyLimitBytes: options.dirtyLimitBytes }),
        onUnexpectedExit: (error) => {
          if (ended) process.stderr.write(`power-cut disk of ${name} after the test: ${error.message}\n`);
          else t.fail(`the power-cut disk of ${name} died: ${error.message}`);
        },
      });
      mounted.push(disk);
      return disk;
    };
    await mkdir(join(dir, 'hosts'), { recursive: true });
    await mkdir(join(dir, 'logs'), { recursive: true });
    const count = options.chunkServers ?? 4;
    const disks = await Promise.all([mount('mds'), ...Array.from({ length: count }, (_, i) => mount(`cs${i}`))]);
    const [mdsDisk, ...csDisks] = disks;
    if (mdsDisk === undefined) throw new Error('no MDS disk');
    cluster = new PowerCutCluster(dir, adminToken, options,
      { name: 'mds', index: 0, disk: mdsDisk, safeRestore: false },
      csDisks.map((disk, i) => ({ name: `cs${i}`, index: i + 1, disk, safeRestore: false })));
    process.once('exit', cluster.killOnExit);
    await cluster.startMds();
    await Promise.all(cluster.csHosts.map((_, i) => cluster!.startChunkServer(i)));
    await cluster.waitOnline();
    await cluster.startNbd('nbd');
    return cluster;
  }

  /** The admin REST client (the admin token). */
  get admin(): MdsClient {
    if (this.clients === null) throw new Error('the MDS has not started yet');
    return this.clients.admin;
  }

  /** The client routes as the hypervisor "local" (every volume): chunk maps. */
  get internal(): MdsClient {
    if (this.clients === null) throw new Error('the MDS has not started yet');
    return this.clients.internal;
  }

  /** The NBD servers' hypervisor credential (on the real disk, like the keys). */
  get credentialPath(): string {
    return join(this.dir, 'hypervisor.cred');
  }

  get mdsUrl(): string {
    return `http://127.0.0.1:${this.mdsPort}`;
  }

  get chunkServerCount(): number {
    return this.csHosts.length;
  }

  /** The data directory of chunk server `index`, under its host's mount (created by the product). */
  csDataDir(index: number): string {
    return join(this.host(index).disk.path, 'shoal');
  }

  /** The MDS's data directory, under its host's mount (created by the product). */
  get mdsDataDir(): string {
    return join(this.mdsHost.disk.path, 'mds');
  }

  nbdSocket(name = 'nbd'): string {
    return join(this.dir, `${name}.sock`);
  }

  nbdUnixUri(volume: string, name = 'nbd'): string {
    return `nbd+unix:///${volume}?socket=${this.nbdSocket(name)}`;
  }

  nbdDaemon(name = 'nbd'): DaemonProcess | null {
    return this.nbds.get(name)?.daemon ?? null;
  }

  /** Starts the MDS on its port (chosen by the kernel the first time, then kept). */
  async startMds(): Promise<DaemonProcess> {
    const host = this.mdsHost;
    const daemon = await this.launch('mds', host, [
      'run', 'mds', '--data', this.mdsDataDir, '--listen', `127.0.0.1:${this.mdsPort}`, '--cluster-key', this.clusterKeyPath,
      '--admin-token', this.adminTokenPath, '--failure-domain', 'host', ...(this.options.mdsArgs ?? []),
    ]);
    this.mds = daemon;
    if (this.mdsPort === 0) {
      this.mdsPort = Number(daemon.ready['port']);
      const admin = new MdsClient({ url: this.mdsUrl, token: this.adminToken });
      const { credential } = await admin.addHypervisor({ name: 'local', allVolumes: true });
      await writeFile(this.credentialPath, `${credential}\n`, { mode: 0o600 });
      this.clients = { admin, internal: new MdsClient({ url: this.mdsUrl, token: credential }) };
    }
    return daemon;
  }

  /** Starts (or restarts) chunk server `index`: its own host name is its failure domain. */
  async startChunkServer(index: number, extraArgs: readonly string[] = []): Promise<DaemonProcess> {
    const host = this.host(index);
    const daemon = await this.launch(host.name, host, [
      'run', 'cs', '--data', this.csDataDir(index), '--mds', this.mdsUrl, '--cluster-key', this.clusterKeyPath,
      '--failure-domain-host', `host-${host.name}`, '--journal-segment-bytes', '4M', ...(this.options.csArgs ?? []), ...extraArgs,
    ]);
    this.chunkServers[index] = daemon;
    this.csUuids[index] = String(daemon.ready['uuid']);
    return daemon;
  }

  /**
   * Starts an NBD server called `name` on <dir>/<name>.sock, holding leases as `name`; the
   * cluster restarts it after a whole-cluster cut with the same arguments.
   */
  async startNbd(name: string, extraArgs: readonly string[] = []): Promise<DaemonProcess> {
    const args = ['run', 'nbd', '--mds', this.mdsUrl, '--credential', this.credentialPath, '--socket', this.nbdSocket(name),
      '--holder', name, ...(this.options.nbdArgs ?? []), ...extraArgs];
    const instance: NbdInstance = this.nbds.get(name) ?? { name, args, daemon: null };
    if (instance.daemon?.running === true) throw new Error(`NBD server ${name} is already running`);
    this.nbds.set(name, { ...instance, args });
    const daemon = await this.launch(name, null, args);
    this.nbds.set(name, { name, args, daemon });
    return daemon;
  }

  /** Stops an NBD server for good (it is not restarted after cuts). */
  async stopNbd(name: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const instance = this.nbds.get(name);
    this.nbds.delete(name);
    await instance?.daemon?.stop(signal, 10_000);
  }

  /** SIGKILLs chunk server `index` and waits until it is reaped; its disk stays mounted. */
  async killChunkServer(index: number): Promise<void> {
    await killAndReap(this.chunkServers[index] ?? null);
  }

  /** The MDS's id for chunk server `index`. */
  async chunkServerId(index: number): Promise<number> {
    const uuid = this.csUuids[index];
    const { chunkServers } = await this.admin.listChunkServers();
    const found = chunkServers.find((server) => server.uuid === uuid);
    if (found === undefined) throw new Error(`chunk server ${index} (${uuid}) is not registered`);
    return found.id;
  }

  /** The index of the chunk server the MDS calls `csId`. */
  async chunkServerIndex(csId: number): Promise<number> {
    const { chunkServers } = await this.admin.listChunkServers();
    const uuid = chunkServers.find((server) => server.id === csId)?.uuid;
    const index = this.csUuids.findIndex((known) => known !== null && known === uuid);
    if (index < 0) throw new Error(`no chunk server here has id ${csId}`);
    return index;
  }

  /** A counter from chunk server `index`'s /metrics (its current incarnation: counters restart at 0). */
  async csMetric(index: number, name: string): Promise<number> {
    const daemon = this.chunkServers[index];
    if (daemon === null || daemon === undefined || !daemon.running) throw new Error(`chunk server ${index} is not running`);
    return metricValue(Number(daemon.ready['metricsPort']), name);
  }

  /** Waits until every chunk server of this cluster is online at the MDS. */
  async waitOnline(timeoutMs = ONLINE_TIMEOUT_MS): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = 'no answer from the MDS';
    for (;;) {
      try {
        const { chunkServers } = await this.admin.listChunkServers();
        const offline = this.csUuids.filter((uuid) => chunkServers.find((server) => server.uuid === uuid)?.state !== 'online');
        if (offline.length === 0) return;
        last = `not online: ${offline.join(', ')}; the MDS lists ${JSON.stringify(chunkServers.map((s) => [s.id, s.state, s.adminState]))}`;
      } catch (error) {
        last = (error as Error).message;
      }
      if (Date.now() > deadline) throw new Error(`chunk servers not online within ${timeoutMs} ms: ${last}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }

  /**
   * Cuts the power of every host at once: every daemon (NBD servers included) SIGKILLed and
   * reaped, every disk cut with `mode` (random: each host its own seed from `mode.seed`), then
   * every disk remounted and every daemon restarted; resolves once every chunk server is online.
   */
  async cutAll(mode: CutMode): Promise<HostCut[]> {
    const timer = phaseTimer();
    const daemons = [...[...this.nbds.values()].map((nbd) => nbd.daemon), ...this.chunkServers, this.mds];
    for (const daemon of daemons) daemon?.kill('SIGKILL');
    await Promise.all(daemons.map((daemon) => killAndReap(daemon)));
    timer.lap('kill');
    const hosts = [this.mdsHost, ...this.csHosts];
    const cuts = await Promise.all(hosts.map((host) => this.cutHost(host, mode)));
    timer.lap('cut');
    await Promise.all(hosts.map((host) => host.disk.remount()));
    timer.lap('remount');
    await this.startMds();
    timer.lap('mds');
    await Promise.all(this.csHosts.map((_, index) => this.startChunkServer(index)));
    timer.lap('cs');
    await this.waitOnline();
    timer.lap('online');
    for (const nbd of [...this.nbds.values()]) await this.startNbd(nbd.name);
    timer.lap('nbd');
    this.lastCutPhases = timer.text();
    return cuts;
  }

  /**
   * Cuts the power of chunk server `index`'s host alone: SIGKILL, cut, remount, restart. The
   * other daemons keep running. Resolves once it serves again (not necessarily online yet).
   */
  async cutChunkServer(index: number, mode: CutMode): Promise<HostCut> {
    const host = this.host(index);
    await killAndReap(this.chunkServers[index] ?? null);
    const cut = await this.cutHost(host, mode);
    await host.disk.remount();
    await this.startChunkServer(index);
    return cut;
  }

  /** Cuts the power of the MDS's host alone; the chunk servers and NBD servers keep running. */
  async cutMds(mode: CutMode): Promise<HostCut> {
    await killAndReap(this.mds);
    const cut = await this.cutHost(this.mdsHost, mode);
    await this.mdsHost.disk.remount();
    await this.startMds();
    return cut;
  }

  /** Problem lines logged since `from` (an index into `problems`). */
  problemsSince(from: number): LogProblem[] {
    return this.problems.slice(from);
  }

  /**
   * Prints the end of every daemon incarnation's log, and copies the whole logs (one file per
   * incarnation) to a folder that outlives the test, named in the output.
   */
  async keepLogs(): Promise<void> {
    for (const { name, daemon } of this.incarnations) {
      process.stderr.write(`\n----- ${name} (pid ${daemon.pid}) log, last ${LOG_PRINT_BYTES} bytes -----\n${daemon.log.slice(-LOG_PRINT_BYTES)}\n`);
    }
    await Promise.all(this.logStreams.map((stream) => new Promise((resolve) => stream.end(resolve))));
    const kept = await mkdtemp(join(tmpdir(), 'shoal-power-cut-logs-'));
    await cp(join(this.dir, 'logs'), kept, { recursive: true }).catch(() => undefined);
    process.stderr.write(`\nthe daemons' whole logs are kept in ${kept}\n`);
  }

  /** Kills every process and unmounts every disk; bounded in time; never throws. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    process.removeListener('exit', this.killOnExit);
    const work = (async () => {
      const daemons = [...[...this.nbds.values()].map((nbd) => nbd.daemon), ...this.chunkServers, this.mds];
      await Promise.all(daemons.map((daemon) => killAndReap(daemon)));
      const disks = [this.mdsHost, ...this.csHosts].map((host) => host.disk);
      await Promise.all(disks.map((disk) => disk.unmount()));
      await removeIfUnmounted(this.dir, disks);
    })();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), TEARDOWN_TIMEOUT_MS);
    });
    const outcome = await Promise.race([work.then(() => 'done' as const, (error: unknown) => error), timeout]);
    clearTimeout(timer);
    if (outcome === 'timeout') process.stderr.write(`power-cut cluster teardown took over ${TEARDOWN_TIMEOUT_MS} ms; ${this.dir} may be left\n`);
    else if (outcome !== 'done') process.stderr.write(`power-cut cluster teardown: ${String(outcome)}\n`);
  }

  /** Last resort if the test process exits without a teardown: no daemon outlives it. */
  private readonly killOnExit = (): void => {
    for (const daemon of [...[...this.nbds.values()].map((nbd) => nbd.daemon), ...this.chunkServers, this.mds]) daemon?.kill('SIGKILL');
  };

  private host(index: number): Host {
    const host = this.csHosts[index];
    if (host === undefined) throw new Error(`no chunk server ${index}`);
    return host;
  }

  private async cutHost(host: Host, mode: CutMode): Promise<HostCut> {
    if (mode.mode === 'none') {
      return { host: host.name, mode: 'none', result: await host.disk.cut(mode) };
    }
    const seed = hostSeed(mode.seed, host.index);
    const result = await host.disk.cut({ mode: 'random', seed });
    host.safeRestore = true;
    return { host: host.name, mode: 'random', seed, result };
  }

  /** Starts a daemon, keeping its log; problem lines are collected as they come. */
  private async launch(name: string, host: Host | null, args: readonly string[]): Promise<DaemonProcess> {
    const env: Record<string, string> = {};
    if (host?.safeRestore === true) env['LMDB_RESTORE'] = 'safe';
    const spawnedAt = new Date();
    const daemon = await DaemonProcess.start({ name, args, stderr: 'collect', env, readyTimeoutMs: 60_000 });
    if (host !== null) host.safeRestore = false;
    this.incarnations.push({ name, daemon });
    const file = createWriteStream(join(this.dir, 'logs', `${String(this.incarnations.length).padStart(3, '0')}-${name}-${daemon.pid}.log`));
    file.on('error', () => undefined);
    this.logStreams.push(file);
    file.write(`# ${spawnedAt.toISOString()} spawned: ${args.join(' ')}${env['LMDB_RESTORE'] === undefined ? '' : ' (LMDB_RESTORE=safe)'}\n`);
    file.write(`# ${new Date().toISOString()} ready\n`);
    file.write(daemon.log);
    daemon.child.stderr?.on('data', (text: string) => file.write(text));
    daemon.child.once('exit', () => file.end());
    // What it logged before its ready line, then every later line.
    let partial = '';
    const scan = (text: string): void => {
      const lines = (partial + text).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) if (PROBLEM_PATTERN.test(line)) this.problems.push({ daemon: `${name} (pid ${daemon.pid})`, line });
    };
    scan(daemon.log);
    daemon.child.stderr?.on('data', (text: string) => scan(text));
    return daemon;
  }
}

function phaseTimer(): { lap(name: string): void; text(): string } {
  let last = Date.now();
  const laps: string[] = [];
  return {
    lap: (name) => {
      const now = Date.now();
      laps.push(`${name} ${now - last} ms`);
      last = now;
    },
    text: () => laps.join(', '),
  };
}

async function killAndReap(daemon: DaemonProcess | null): Promise<void> {
  if (daemon === null) return;
  await daemon.stop('SIGKILL', 5_000);
}

async function removeIfUnmounted(dir: string, disks: readonly PowerCutDisk[]): Promise<void> {
  for (const disk of disks) {
    if (await isMountPoint(disk.path)) {
      process.stderr.write(`${disk.path} is still mounted: leaving ${dir} in place\n`);
      return;
    }
  }
  await rm(dir, { recursive: true, force: true });
}
