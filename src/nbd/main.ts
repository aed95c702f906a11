// The NBD daemon (`shoal run nbd`): exports the cluster's volumes over NBD on a unix socket
// and/or TCP, through the client library (one shared open volume per export), with /metrics.
// Stopping lets in-flight requests finish, then closes volumes (releasing their leases).
//
// Ready line on stdout: {"event":"ready","service":"nbd","port":N|null,"socket":P|null,
// "metricsPort":M}.

import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { VolumeProvider } from '../client/provider.ts';
import { IO_TIMEOUT_MS_DEFAULT } from '../client/volume.ts';
import { StorageError } from '../errors.ts';
import { CLUSTER_KEY_BYTES, clusterRestToken, readSecretFile } from '../protocol/auth.ts';
import { CsConnectionPool } from '../protocol/cs_connection.ts';
import { MdsClient } from '../protocol/mds_client.ts';
import {
  announceReady, onShutdownSignal, parseHostPort, parseIntegerFlag,
} from '../util/daemon.ts';
import { usePrivateUmask } from '../util/fs.ts';
import { createLogger } from '../util/log.ts';
import { serveMetrics } from '../util/metrics_http.ts';
import { NBD_SERVER_DEFAULTS, createNbdServer } from './server.ts';

const USAGE = `usage: shoal run nbd --mds URL --cluster-key FILE [--socket PATH] [--listen H:P]
  --socket PATH            NBD over a unix socket (created 0600)
  --socket-group-access    create the socket 0660, for a group of hypervisor tools
  --listen HOST:PORT       NBD over TCP; use a loopback host unless clients are remote
  --default-export NAME    volume served to clients that ask for the empty export name
  --read-only              open every volume read-only (no write lease is taken)
  --force-open             take write leases held by another host, fencing it (its writes fail):
                           for moving guests off a host that is gone but still holds leases
  --holder NAME            who holds the write leases, shown to admins (default: nbd@HOSTNAME);
                           a restarted server with the same name takes its leases back at once
  --metrics HOST:PORT      Prometheus /metrics (default 127.0.0.1:0)
  --inflight-requests-max N  per connection, before reading pauses (default 64)
  --inflight-bytes-max N     per connection, before reading pauses (default 128 MiB)
  --connections-max N        over all listeners (default 256)
  --io-timeout-ms N          a read or write keeps trying (failover, waiting for recovery) this long
                             before the guest gets EIO (default 60000)
  --cs-timeout-ms N          a chunk server that does not answer within this is treated as failed
                             (default 6000; keep it above the chunk servers' --peer-timeout-ms)`;

/** Leaves the daemon's own deadline room to close volumes after connections drain. */
const CONNECTIONS_DRAIN_MS = 5_000;
const SHUTDOWN_DEADLINE_MS = 15_000;

export async function runNbd(argv: string[]): Promise<void> {
  // Nothing this daemon creates is anyone else's business; the socket sets its own mode.
  usePrivateUmask();
  const { values } = parseArgs({
    args: argv,
    options: {
      mds: { type: 'string' },
      'cluster-key': { type: 'string' },
      socket: { type: 'string' },
      'socket-group-access': { type: 'boolean' },
      listen: { type: 'string' },
      'default-export': { type: 'string' },
      'read-only': { type: 'boolean' },
      'force-open': { type: 'boolean' },
      holder: { type: 'string' },
      metrics: { type: 'string', default: '127.0.0.1:0' },
      'inflight-requests-max': { type: 'string' },
      'inflight-bytes-max': { type: 'string' },
      'connections-max': { type: 'string' },
      'io-timeout-ms': { type: 'string' },
      'cs-timeout-ms': { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (values.mds === undefined || values['cluster-key'] === undefined) {
    throw new StorageError('ERR_CONFIG', `--mds and --cluster-key are required\n${USAGE}`);
  }
  if (values.socket === undefined && values.listen === undefined) {
    throw new StorageError('ERR_CONFIG', `give --socket, --listen or both\n${USAGE}`);
  }
  const d = NBD_SERVER_DEFAULTS;
  await startNbd({
    mdsUrl: values.mds,
    clusterKey: await readSecretFile(values['cluster-key'], CLUSTER_KEY_BYTES),
    socket: values.socket,
    socketMode: values['socket-group-access'] === true ? 0o660 : 0o600,
    listen: values.listen === undefined ? undefined : parseHostPort(values.listen, '--listen'),
    defaultExport: values['default-export'],
    readOnly: values['read-only'] === true,
    forceOpen: values['force-open'] === true,
    holder: values.holder ?? `nbd@${hostname()}`,
    metrics: parseHostPort(values.metrics, '--metrics'),
    inflightRequestsMax: parseIntegerFlag(
      values['inflight-requests-max'], '--inflight-requests-max', d.inflightRequestsMax, 1),
    inflightBytesMax: parseIntegerFlag(
      values['inflight-bytes-max'], '--inflight-bytes-max', d.inflightBytesMax, 1),
    connectionsMax: parseIntegerFlag(
      values['connections-max'], '--connections-max', d.connectionsMax, 1),
    ioTimeoutMs: parseIntegerFlag(values['io-timeout-ms'], '--io-timeout-ms', IO_TIMEOUT_MS_DEFAULT, 100),
    csTimeoutMs: parseIntegerFlag(values['cs-timeout-ms'], '--cs-timeout-ms', 6_000, 100),
  });
}

interface NbdDaemonConfig {
  readonly mdsUrl: string;
  readonly clusterKey: Buffer;
  readonly socket: string | undefined;
  readonly socketMode: number;
  readonly listen: { host: string; port: number } | undefined;
  readonly defaultExport: string | undefined;
  readonly readOnly: boolean;
  readonly forceOpen: boolean;
  readonly holder: string;
  readonly metrics: { host: string; port: number };
  readonly inflightRequestsMax: number;
  readonly inflightBytesMax: number;
  readonly connectionsMax: number;
  readonly ioTimeoutMs: number;
  readonly csTimeoutMs: number;
}

async function startNbd(config: NbdDaemonConfig): Promise<void> {
  const log = createLogger('nbd');
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'shoal_nbd_' });
  const mds = new MdsClient({ url: config.mdsUrl, token: clusterRestToken(config.clusterKey) });
  const pool = new CsConnectionPool({ clusterKey: config.clusterKey, role: 'client', requestTimeoutMs: config.csTimeoutMs });
  const provider = new VolumeProvider({
    mds, pool, log, holder: config.holder, ioTimeoutMs: config.ioTimeoutMs, forceOpen: config.forceOpen,
  });
  const server = await createNbdServer({
    provider,
    registry,
    logger: log,
    readOnly: config.readOnly,
    unixSocketMode: config.socketMode,
    inflightRequestsMax: config.inflightRequestsMax,
    inflightBytesMax: config.inflightBytesMax,
    connectionsMax: config.connectionsMax,
    shutdownTimeoutMs: CONNECTIONS_DRAIN_MS,
    ...(config.socket === undefined ? {} : { unixSocketPath: config.socket }),
    ...(config.listen === undefined ? {} : { tcp: config.listen }),
    ...(config.defaultExport === undefined ? {} : { defaultExport: config.defaultExport }),
  });
  const metricsServer = await serveMetrics(registry, config.metrics.host, config.metrics.port);
  const ready = {
    port: server.tcpPort, socket: server.unixSocketPath, metricsPort: metricsServer.port,
  };
  log.info('NBD daemon ready', { ...ready, defaultExport: config.defaultExport });
  announceReady({ service: 'nbd', ...ready });

  onShutdownSignal(log, async () => {
    await server.close();
    await provider.closeAll();
    pool.closeAll();
    await metricsServer.close();
  }, SHUTDOWN_DEADLINE_MS);
}
