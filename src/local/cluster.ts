// A real cluster on this machine: one MDS, N chunk servers and (optionally) an NBD server, each a
// separate process on loopback with ports chosen by the kernel, in a folder of its own. The tests
// and the benchmark harness use it; they reach each daemon (to kill, freeze or restart it) and each
// replica's files directly. Unlike `shoal start` it restarts nothing by itself.
//
// Its folder holds every credential, as separate hosts would: cluster.key (MDS and chunk
// servers), mds.key / mds.pub (made by the MDS; the public half for the chunk servers),
// admin.token, and hypervisor.cred, the credential of a hypervisor "local" that may serve every
// volume (the NBD server's, and `internal`'s).

import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CsConnectionPool } from '../protocol/cs_connection.ts';
import { clusterRestToken, readMdsPrivateKey } from '../protocol/auth.ts';
import { MdsClient } from '../protocol/mds_client.ts';
import { writeFileDurable } from '../util/fs.ts';
import { DaemonProcess } from './daemon_process.ts';

export interface ClusterOptions {
  /** Parent folder for the cluster's own temporary folder (default: the OS temp folder). */
  readonly parentDir?: string;
  readonly chunkServers?: number;
  readonly nbd?: boolean;
  readonly mdsArgs?: readonly string[];
  readonly csArgs?: readonly string[];
  /** Arguments for chunk server `index` alone (after csArgs), e.g. its host label. */
  readonly csArgsFor?: (index: number) => readonly string[];
  readonly nbdArgs?: readonly string[];
  /** Folder for the chunk servers' data directories (e.g. on another disk); default the cluster's folder. */
  readonly chunkServerParentDir?: string;
  /** The cgroup.procs file each daemon ("mds", "cs0", "nbd") joins before it starts, if any (DaemonOptions.cgroupProcs). */
  readonly cgroupProcsOf?: (name: string) => string | undefined;
}

export interface ChunkServerOverrides {
  readonly mdsUrl?: string;
  readonly extraArgs?: readonly string[];
}

export class LocalCluster {
  readonly dir: string;
  readonly clusterKey: Buffer;
  readonly adminToken: string;
  readonly admin: MdsClient;
  /** The client routes, as the local hypervisor (every volume). */
  internal: MdsClient;
  /** The chunk-server routes, with the cluster token. */
  readonly csApi: MdsClient;
  hypervisorCredential: string;
  mds: DaemonProcess;
  readonly chunkServers: Array<DaemonProcess | null>;
  nbd: DaemonProcess | null = null;
  private readonly options: ClusterOptions;
  private readonly mdsPort: number;
  private nbdPort = 0;
  private readonly overrides = new Map<number, ChunkServerOverrides>();

  private constructor(dir: string, clusterKey: Buffer, adminToken: string, credential: string, mds: DaemonProcess, options: ClusterOptions) {
    this.dir = dir;
    this.clusterKey = clusterKey;
    this.adminToken = adminToken;
    this.hypervisorCredential = credential;
    this.mds = mds;
    this.options = options;
    this.mdsPort = Number(mds.ready['port']);
    this.admin = new MdsClient({ url: this.mdsUrl, token: adminToken });
    this.internal = new MdsClient({ url: this.mdsUrl, token: credential });
    this.csApi = new MdsClient({ url: this.mdsUrl, token: clusterRestToken(clusterKey) });
    this.chunkServers = [];
  }

  /** Starts a cluster; `destroy()` kills every process and removes the folder. */
  static async start(options: ClusterOptions = {}): Promise<LocalCluster> {
    const dir = await mkdtemp(join(options.parentDir ?? tmpdir(), 'shoal-cluster-'));
    const clusterKey = randomBytes(32);
    const adminToken = randomBytes(32).toString('hex');
    await writeFileDurable(join(dir, 'cluster.key'), `${clusterKey.toString('hex')}\n`, { mode: 0o600, exclusive: true });
    await writeFileDurable(join(dir, 'admin.token'), `${adminToken}\n`, { mode: 0o600, exclusive: true });
    const mds = await startMds(dir, 0, options.mdsArgs ?? [], options);
    let credential: string;
    try {
      const admin = new MdsClient({ url: `http://127.0.0.1:${Number(mds.ready['port'])}`, token: adminToken });
      credential = (await admin.addHypervisor({ name: 'local', allVolumes: true })).credential;
      admin.close();
      await writeFileDurable(join(dir, 'hypervisor.cred'), `${credential}\n`, { mode: 0o600, exclusive: true });
    } catch (error) {
      await mds.stop('SIGKILL', 5_000);
      await rm(dir, { recursive: true, force: true });
      throw error;
    }
    const cluster = new LocalCluster(dir, clusterKey, adminToken, credential, mds, options);
    try {
      await cluster.startRest();
    } catch (error) {
      await cluster.destroy();
      throw error;
    }
    return cluster;
  }

  private async startRest(): Promise<void> {
    const count = this.options.chunkServers ?? 3;
    for (let index = 0; index < count; index += 1) this.chunkServers.push(null);
    await Promise.all(this.chunkServers.map((_, index) => this.startChunkServer(index)));
    await this.waitOnline(count);
    if (this.options.nbd ?? true) await this.startNbd();
  }

  get mdsUrl(): string {
    return `http://127.0.0.1:${this.mdsPort}`;
  }

  get nbdSocket(): string {
    return join(this.dir, 'nbd.sock');
  }

  nbdTcpUri(volume: string): string {
    return `nbd://127.0.0.1:${this.nbdPort}/${volume}`;
  }

  nbdUnixUri(volume: string): string {
    return `nbd+unix:///${volume}?socket=${this.nbdSocket}`;
  }

  get nbdTcpPort(): number {
    return this.nbdPort;
  }

  chunkServerDir(index: number): string {
    return join(this.options.chunkServerParentDir ?? this.dir, `cs${index}`);
  }

  /**
   * Starts (or restarts) chunk server `index`. `overrides` stay for later restarts: a server put
   * behind proxies (another MDS address, an advertised port) keeps them.
   */
  async startChunkServer(index: number, overrides?: ChunkServerOverrides): Promise<DaemonProcess> {
    if (overrides !== undefined) this.overrides.set(index, overrides);
    const override = this.overrides.get(index);
    const daemon = await DaemonProcess.start({
      name: `cs${index}`,
      stderr: 'collect',
      ...cgroupOf(this.options, `cs${index}`),
      args: ['run', 'cs', '--data', this.chunkServerDir(index), '--mds', override?.mdsUrl ?? this.mdsUrl,
        '--cluster-key', join(this.dir, 'cluster.key'), ...(this.options.csArgs ?? []), ...(this.options.csArgsFor?.(index) ?? []),
        ...(override?.extraArgs ?? [])],
    });
    this.chunkServers[index] = daemon;
    return daemon;
  }

  /** The MDS's id for chunk server `index` (from its uuid). */
  async chunkServerId(index: number): Promise<number> {
    return this.chunkServerIdByUuid(String(this.chunkServers[index]?.ready['uuid']));
  }

  async chunkServerIdByUuid(uuid: string): Promise<number> {
    const { chunkServers } = await this.admin.listChunkServers();
    const found = chunkServers.find((server) => server.uuid === uuid);
    if (found === undefined) throw new Error(`chunk server ${uuid} is not registered`);
    return found.id;
  }

  /** Index of the chunk server the MDS calls `csId`. */
  async chunkServerIndex(csId: number): Promise<number> {
    const { chunkServers } = await this.admin.listChunkServers();
    const uuid = chunkServers.find((server) => server.id === csId)?.uuid;
    const index = this.chunkServers.findIndex((daemon) => daemon?.ready['uuid'] === uuid);
    if (index < 0) throw new Error(`no local chunk server has id ${csId}`);
    return index;
  }

  async restartMds(): Promise<void> {
    await this.mds.stop('SIGTERM');
    this.mds = await startMds(this.dir, this.mdsPort, this.options.mdsArgs ?? [], this.options);
  }

  /** Starts (or restarts) the NBD server, with `nbdArgs` in place of the cluster's when given. */
  async startNbd(nbdArgs: readonly string[] = this.options.nbdArgs ?? []): Promise<DaemonProcess> {
    const start = (port: number) => DaemonProcess.start({
      name: 'nbd',
      stderr: 'collect',
      ...cgroupOf(this.options, 'nbd'),
      args: ['run', 'nbd', '--mds', this.mdsUrl, '--credential', this.hypervisorCredentialPath, '--socket', this.nbdSocket,
        '--listen', `127.0.0.1:${port}`, ...nbdArgs],
    });
    try {
      this.nbd = await start(this.nbdPort);
    } catch (error) {
      // A restarted NBD server asks for the port it had, which the kernel picked from the
      // ephemeral range: meanwhile any outgoing connection may have been given it. The unix
      // socket stays the same; the TCP port is then a new one (read it from nbdPort).
      if (this.nbdPort === 0 || !String(error).includes('EADDRINUSE')) throw error;
      this.nbd = await start(0);
    }
    this.nbdPort = Number(this.nbd.ready['port']);
    return this.nbd;
  }

  /** Waits until `count` chunk servers are online at the MDS. */
  async waitOnline(count: number, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { chunkServers } = await this.admin.listChunkServers();
      if (chunkServers.filter((cs) => cs.state === 'online').length >= count) return;
      if (Date.now() > deadline) throw new Error(`only ${chunkServers.length} chunk servers registered, ${count} expected online`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  /** Stops every daemon (NBD, chunk servers, MDS) with `signal`, waiting for each to exit. */
  async stopAll(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await this.nbd?.stop(signal);
    await Promise.all(this.chunkServers.map((cs) => cs?.stop(signal)));
    await this.mds.stop(signal);
  }

  /** Starts every daemon again on the same folders and ports. */
  async startAll(): Promise<void> {
    this.mds = await startMds(this.dir, this.mdsPort, this.options.mdsArgs ?? [], this.options);
    await Promise.all(this.chunkServers.map((_, index) => this.startChunkServer(index)));
    await this.waitOnline(this.chunkServers.length);
    if (this.options.nbd ?? true) await this.startNbd();
  }

  /**
   * A new credential for the local hypervisor, as an admin issues after the MDS's database was
   * lost (the old one is unknown to it); the NBD server uses it from its next start.
   */
  async reissueHypervisorCredential(): Promise<void> {
    const { credential } = await this.admin.addHypervisor({ name: `local-${Date.now()}`, allVolumes: true });
    await writeFileDurable(this.hypervisorCredentialPath, `${credential}\n`, { mode: 0o600 });
    this.internal.close();
    this.hypervisorCredential = credential;
    this.internal = new MdsClient({ url: this.mdsUrl, token: credential });
  }

  get hypervisorCredentialPath(): string {
    return join(this.dir, 'hypervisor.cred');
  }

  /** A client's connection pool (for Volume.open with `internal`); the caller closes it. */
  pool(): CsConnectionPool {
    return new CsConnectionPool({ credential: { role: 'client' } });
  }

  /** A pool that talks to chunk servers as one of them (a peer); the caller closes it. */
  peerPool(): CsConnectionPool {
    return new CsConnectionPool({ credential: { role: 'peer', clusterKey: this.clusterKey } });
  }

  /** A pool that talks to chunk servers as the MDS, with its private key; the caller closes it. */
  async mdsPool(): Promise<CsConnectionPool> {
    const privateKey = await readMdsPrivateKey(join(this.dir, 'mds.key'));
    return new CsConnectionPool({ credential: { role: 'mds', clusterKey: this.clusterKey, privateKey, term: 1 } });
  }

  /**
   * sha256 of every chunk replica's data file, per chunk server: read from disk directly, not
   * through any server. Returns chunkId -> hashes in chunk-server order.
   */
  async replicaHashes(): Promise<Map<number, string[]>> {
    const byChunk = new Map<number, string[]>();
    for (const [index] of this.chunkServers.entries()) {
      const chunksDir = join(this.chunkServerDir(index), 'chunks');
      for (const sub of await readdir(chunksDir).catch(() => [] as string[])) {
        for (const name of await readdir(join(chunksDir, sub))) {
          const match = /^(\d+)\.data$/.exec(name);
          if (match === null) continue;
          const hash = createHash('sha256').update(await readFile(join(chunksDir, sub, name))).digest('hex');
          const list = byChunk.get(Number(match[1])) ?? [];
          list.push(hash);
          byChunk.set(Number(match[1]), list);
        }
      }
    }
    return byChunk;
  }

  async destroy(): Promise<void> {
    const all = [this.nbd, ...this.chunkServers, this.mds].filter((d): d is DaemonProcess => d !== null);
    await Promise.all(all.map((daemon) => daemon.stop('SIGKILL', 5_000)));
    await rm(this.dir, { recursive: true, force: true });
  }
}

function cgroupOf(options: ClusterOptions, name: string): { cgroupProcs?: string } {
  const procs = options.cgroupProcsOf?.(name);
  return procs === undefined ? {} : { cgroupProcs: procs };
}

function startMds(dir: string, port: number, extraArgs: readonly string[], options: ClusterOptions): Promise<DaemonProcess> {
  return DaemonProcess.start({
    name: 'mds',
    stderr: 'collect',
    ...cgroupOf(options, 'mds'),
    args: ['run', 'mds', '--data', join(dir, 'mds'), '--listen', `127.0.0.1:${port}`, '--cluster-key', join(dir, 'cluster.key'),
      '--admin-token', join(dir, 'admin.token'), '--failure-domain', 'disk', ...extraArgs],
  });
}
