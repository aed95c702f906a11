// `shoal start`: a whole cluster on this machine for trying the product and for development. It
// creates the cluster's secrets on first start, runs one MDS, N chunk servers (one data directory
// each, failure domain = disk) and an NBD server as separate processes, creates a volume if none
// exists, prints how to reach it, restarts a daemon that dies, and stops everything on Ctrl-C.
// Starting again in the same data folder finds the same cluster.

import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { StorageError, isStorageError } from '../errors.ts';
import { CLUSTER_KEY_BYTES, ensureSecretFile } from '../protocol/auth.ts';
import { MdsClient } from '../protocol/mds_client.ts';
import { parseHostPort, parseIntegerFlag } from '../util/daemon.ts';
import { createLogger, type Logger } from '../util/log.ts';
import { formatBytes, parseSizeBytes } from '../util/size.ts';
import { DaemonProcess } from './daemon_process.ts';

const USAGE = `usage: shoal start [options]        (environment variables in brackets)
  --data DIR             cluster folder (default ./data) [SHOAL_DATA]
  --mds-listen H:P       MDS REST API (default 127.0.0.1:9630) [SHOAL_MDS_PORT sets the port]
  --cs-base-port N       chunk server i listens on N+i, its metrics on N+100+i (default 9631) [SHOAL_CS_BASE_PORT]
  --chunk-servers N      number of chunk servers (default 3)
  --nbd-listen H:P       NBD over TCP (default 127.0.0.1:10809) [SHOAL_NBD_PORT sets the port]
  --nbd-socket PATH      NBD over a unix socket (default DIR/nbd.sock)
  --nbd-metrics H:P      the NBD server's /metrics (default 127.0.0.1:9730)
  --volume NAME          volume created if the cluster has none (default demo)
  --volume-size SIZE     its size (default 4G)`;

export interface ClusterFile {
  readonly mdsUrl: string;
  readonly adminTokenFile: string;
  readonly clusterKeyFile: string;
  readonly nbd: { readonly tcp: string; readonly socket: string };
}

interface DaemonSpec {
  readonly name: string;
  readonly args: string[];
}

interface Running {
  readonly spec: DaemonSpec;
  daemon: DaemonProcess;
  restarts: number[];
}

const READY_TIMEOUT_MS = 30_000;
const RESTARTS_PER_MINUTE_MAX = 5;

export async function runLocalCluster(argv: string[]): Promise<void> {
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
      help: { type: 'boolean' },
    },
  });
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const log = createLogger('start');
  const dataDir = resolve(values.data);
  const mdsListen = parseHostPort(values['mds-listen'], '--mds-listen');
  const nbdListen = parseHostPort(values['nbd-listen'], '--nbd-listen');
  parseHostPort(values['nbd-metrics'], '--nbd-metrics');
  const csBasePort = parseIntegerFlag(values['cs-base-port'], '--cs-base-port', 9631);
  const chunkServers = parseIntegerFlag(values['chunk-servers'], '--chunk-servers', 3, 1);
  const volumeSizeBytes = parseSizeBytes(values['volume-size'], '--volume-size');
  const nbdSocket = resolve(values['nbd-socket'] ?? join(dataDir, 'nbd.sock'));

  await mkdir(dataDir, { recursive: true });
  const clusterKeyFile = join(dataDir, 'cluster.key');
  const adminTokenFile = join(dataDir, 'admin.token');
  await ensureSecretFile(clusterKeyFile, CLUSTER_KEY_BYTES);
  const adminToken = (await ensureSecretFile(adminTokenFile, 32)).toString('hex');

  const supervisor = new Supervisor(log);
  process.on('SIGINT', () => void supervisor.stopAll(0));
  process.on('SIGTERM', () => void supervisor.stopAll(0));

  const mds = await supervisor.start({
    name: 'mds',
    args: ['run', 'mds', '--data', join(dataDir, 'mds'), '--listen', `${mdsListen.host}:${mdsListen.port}`,
      '--cluster-key', clusterKeyFile, '--admin-token', adminTokenFile, '--failure-domain', 'disk'],
  });
  const mdsUrl = `http://${mdsListen.host}:${String(mds.daemon.ready['port'])}`;
  for (let index = 1; index <= chunkServers; index += 1) {
    const port = csBasePort === 0 ? 0 : csBasePort + index - 1;
    const metricsPort = csBasePort === 0 ? 0 : csBasePort + 100 + index - 1;
    await supervisor.start({
      name: `cs${index}`,
      args: ['run', 'cs', '--data', join(dataDir, `cs${index}`), '--mds', mdsUrl, '--cluster-key', clusterKeyFile,
        '--listen', `127.0.0.1:${port}`, '--metrics', `127.0.0.1:${metricsPort}`],
    });
  }
  const admin = new MdsClient({ url: mdsUrl, token: adminToken });
  await waitForChunkServers(admin, chunkServers);
  await ensureVolume(admin, values.volume, volumeSizeBytes, log);
  const nbd = await supervisor.start({
    name: 'nbd',
    args: ['run', 'nbd', '--mds', mdsUrl, '--cluster-key', clusterKeyFile, '--socket', nbdSocket,
      '--listen', `${nbdListen.host}:${nbdListen.port}`, '--default-export', values.volume,
      '--metrics', values['nbd-metrics']],
  });
  const nbdTcp = `${nbdListen.host}:${String(nbd.daemon.ready['port'])}`;
  const clusterFile: ClusterFile = { mdsUrl, adminTokenFile, clusterKeyFile, nbd: { tcp: nbdTcp, socket: nbdSocket } };
  await writeFile(join(dataDir, 'cluster.json'), `${JSON.stringify(clusterFile, null, 2)}\n`);
  printBanner({ mdsUrl, nbdTcp, nbdSocket, volume: values.volume, chunkServers, dataDir });
  supervisor.announce({ mdsUrl, nbdTcp, nbdSocket, dataDir });
}

function printBanner(info: { mdsUrl: string; nbdTcp: string; nbdSocket: string; volume: string; chunkServers: number; dataDir: string }): void {
  process.stdout.write(
    [
      '',
      `shoal is running: MDS ${info.mdsUrl}, ${info.chunkServers} chunk servers, data in ${info.dataDir}`,
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
    if (chunkServers.filter((cs) => cs.state === 'online').length >= count) return;
    if (Date.now() > deadline) {
      throw new StorageError('ERR_TIMEOUT', `only ${chunkServers.length} of ${count} chunk servers came online`);
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

/** Runs daemons as child processes, waits for their ready lines, restarts them when they die. */
class Supervisor {
  private readonly running: Running[] = [];
  private stopping = false;
  private readonly log: Logger;

  constructor(log: Logger) {
    this.log = log;
  }

  async start(spec: DaemonSpec): Promise<Running> {
    const running: Running = { spec, daemon: await this.spawn(spec), restarts: [] };
    this.running.push(running);
    this.watch(running);
    return running;
  }

  /** Prints one machine-readable line for tools that drive `shoal start` (tests, bench). */
  announce(fields: Record<string, unknown>): void {
    process.stdout.write(`${JSON.stringify({ event: 'ready', service: 'cluster', ...fields })}\n`);
  }

  private spawn(spec: DaemonSpec): Promise<DaemonProcess> {
    return DaemonProcess.start({
      name: spec.name,
      args: spec.args,
      detached: true,
      env: { SHOAL_SUPERVISED: '1' },
      onLine: (line) => process.stdout.write(`${line}\n`),
    });
  }

  private watch(running: Running): void {
    void running.daemon.waitExit().then(({ code, signal }) => {
      if (this.stopping) return;
      const nowMs = Date.now();
      running.restarts = running.restarts.filter((at) => nowMs - at < 60_000);
      if (running.restarts.length >= RESTARTS_PER_MINUTE_MAX) {
        this.log.error(`${running.spec.name} keeps dying; stopping the cluster`, { code, signal });
        void this.stopAll(1);
        return;
      }
      running.restarts.push(nowMs);
      this.log.error(`${running.spec.name} exited; restarting it in 1 s`, { code, signal });
      setTimeout(() => {
        if (this.stopping) return;
        this.spawn(running.spec).then(
          (daemon) => {
            running.daemon = daemon;
            this.watch(running);
          },
          (error: unknown) => {
            this.log.error(`${running.spec.name} failed to restart; stopping the cluster`, { error });
            void this.stopAll(1);
          },
        );
      }, 1_000);
    });
  }

  /** Stops daemons in reverse start order (NBD first, MDS last), each given time to finish. */
  async stopAll(exitCode: number): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const running of [...this.running].reverse()) await running.daemon.stop('SIGTERM');
    this.log.info('cluster stopped');
    process.exit(exitCode);
  }
}
