// The NBD daemon (`shoal run nbd`): exports the cluster's volumes over NBD on a unix socket
// and/or TCP, through the client library (one shared open volume per export), with /metrics.
// Stopping lets in-flight requests finish, then closes volumes (releasing their leases).
//
// Ready line on stdout: {"event":"ready","service":"nbd","port":N|null,"socket":P|null,
// "metricsPort":M}.

import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { Registry } from 'prom-client';
import { VolumeProvider } from '../client/provider.ts';
import { IO_TIMEOUT_MS_DEFAULT } from '../client/volume.ts';
import { StorageError } from '../errors.ts';
import { readHypervisorCredential } from '../protocol/auth.ts';
import { registerReadCacheMetrics } from '../cache/metrics.ts';
import { ReadCache, parseReadCacheFlags, type ReadCacheConfig } from '../cache/read_cache.ts';
import { clientRequestObserver, registerQosMetrics } from '../client/metrics.ts';
import { HOT_CHUNKS_REPORTED_MAX } from '../protocol/api.ts';
import { parseSizeBytes } from '../util/size.ts';
import { systemMonotonicClock, systemTimers } from '../util/clock.ts';
import { ByteGate } from '../util/byte_gate.ts';
import { MemoryWatch, formatMiB, parseMemoryBudget, registerMemoryMetrics } from '../util/memory_budget.ts';
import { IO_BYTES_MAX } from '../limits.ts';
import { NBD_MEMORY_BUDGET_MIN, nbdMemoryPlan, type NbdMemoryLimits } from './memory_plan.ts';
import { IoReporter } from './io_reporter.ts';
import { volumeIoStats } from './volume_stats.ts';
import { CsConnectionPool } from '../protocol/cs_connection.ts';
import { MdsClient } from '../protocol/mds_client.ts';
import {
  announceReady, onShutdownSignal, parseHostPort, parseIntegerFlag,
} from '../util/daemon.ts';
import { usePrivateUmask } from '../util/fs.ts';
import { createLogger } from '../util/log.ts';
import { collectProcessMetrics } from '../util/metrics.ts';
import { serveMetrics } from '../util/metrics_http.ts';
import { NBD_SERVER_DEFAULTS, createNbdServer } from './server.ts';
import { loadNbdTls, type NbdTlsConfig } from './tls.ts';

const USAGE = `usage: shoal run nbd --mds URL --credential FILE [--socket PATH] [--listen H:P]
  --credential FILE        this hypervisor's credential (\`shoal hypervisor add NAME\` prints it;
                           mode 0600): it serves the volumes attached to this hypervisor
  --socket PATH            NBD over a unix socket (created 0600)
  --socket-group-access    create the socket 0660, for a group of hypervisor tools
  --listen HOST:PORT       NBD over TCP; use a loopback host unless clients are remote
  --tls-cert FILE          with --tls-key: TCP clients must start TLS first (qemu's tls-creds,
  --tls-key FILE           libnbd's nbds://); the key file mode 0600. The unix socket stays plain
  --tls-ca FILE            and TCP clients must present a certificate this CA signed
  --default-export NAME    volume served to clients that ask for the empty export name
  --read-only              open every volume read-only (no write lease is taken)
  --force-open             take write leases held by another host, fencing it (its writes fail):
                           for moving guests off a host that is gone but still holds leases
  --holder NAME            who holds the write leases, shown to admins (default: nbd@HOSTNAME);
                           a restarted server with the same name takes its leases back at once
  --host NAME              this host, as its chunk servers name it (their --failure-domain-host,
                           default: HOSTNAME): new chunks get their first replica, which takes the
                           writes, on a chunk server here, and reads go to replicas here first
  --metrics HOST:PORT      Prometheus /metrics (default 127.0.0.1:0)
  --inflight-requests-max N  per connection, before reading pauses (default 64)
  --inflight-bytes-max N     per connection, before reading pauses (default 128M, at most the total)
  --inflight-bytes-total-max N  all connections, before every one pauses (default: what the memory
                             budget leaves, up to 256M)
  --memory-budget N          memory for the whole process: runtime, requests in flight, connection
                             buffers, open volumes, the read cache's index (default 512M; at least
                             ${formatMiB(NBD_MEMORY_BUDGET_MIN)} without a cache). A plan that does not fit refuses to start;
                             under pressure the server takes in fewer requests, it is not killed
  --unix-connections-max N   clients on the unix socket at once (default 256)
  --tcp-connections-max N    clients over TCP at once, apart from the unix socket's (default 128)
  --tcp-connections-per-address-max N
                             TCP clients from one remote address at once (default 32)
  --handshake-timeout-ms N   a client must finish negotiating within this from connecting
                             (default 30000)
  --write-stall-timeout-ms N a client that reads none of its replies for this long is cut,
                             freeing its slot and memory; idle clients are kept (default 120000)
  --io-timeout-ms N          a read or write keeps trying (failover, waiting for recovery) this long
                             before the guest gets EIO (default 60000)
  --cs-timeout-ms N          a chunk server that does not answer within this is treated as failed
                             (default 6000; keep it above the chunk servers' --peer-timeout-ms)
  --cache-dir PATH           keep a local read cache there (an SSD): 64 KiB blocks of the volumes
                             served, checked by checksum on every hit, emptied at start
  --cache-size N             its size (e.g. 8G; at least 1M); with --cache-dir`;

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
      credential: { type: 'string' },
      socket: { type: 'string' },
      'socket-group-access': { type: 'boolean' },
      listen: { type: 'string' },
      'default-export': { type: 'string' },
      'read-only': { type: 'boolean' },
      'force-open': { type: 'boolean' },
      holder: { type: 'string' },
      host: { type: 'string' },
      metrics: { type: 'string', default: '127.0.0.1:0' },
      'inflight-requests-max': { type: 'string' },
      'inflight-bytes-max': { type: 'string' },
      'inflight-bytes-total-max': { type: 'string' },
      'memory-budget': { type: 'string' },
      'connections-max': { type: 'string' },
      'cluster-key': { type: 'string' },
      'unix-connections-max': { type: 'string' },
      'tcp-connections-max': { type: 'string' },
      'tcp-connections-per-address-max': { type: 'string' },
      'handshake-timeout-ms': { type: 'string' },
      'write-stall-timeout-ms': { type: 'string' },
      'io-timeout-ms': { type: 'string' },
      'cache-dir': { type: 'string' },
      'cache-size': { type: 'string' },
      'cs-timeout-ms': { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-ca': { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (values['cluster-key'] !== undefined) {
    // Hypervisors held the cluster key once; now each has its own credential, which can be revoked alone.
    throw new StorageError('ERR_CONFIG', '--cluster-key is no longer given to hypervisors: give this one its own credential ' +
      '(on the admin side: shoal hypervisor add NAME --volume V --out FILE) and pass --credential FILE');
  }
  if (values.mds === undefined || values.credential === undefined) {
    throw new StorageError('ERR_CONFIG', `--mds and --credential are required\n${USAGE}`);
  }
  if (values.socket === undefined && values.listen === undefined) {
    throw new StorageError('ERR_CONFIG', `give --socket, --listen or both\n${USAGE}`);
  }
  if (values['connections-max'] !== undefined) {
    // One shared pool let TCP clients lock out the local hypervisor; say what replaced it.
    throw new StorageError('ERR_CONFIG', '--connections-max was split: give ' +
      '--unix-connections-max and --tcp-connections-max (and --tcp-connections-per-address-max)');
  }
  const tlsCert = values['tls-cert'];
  const tlsKey = values['tls-key'];
  const tlsCa = values['tls-ca'];
  if ((tlsCert === undefined) !== (tlsKey === undefined) || (tlsCa !== undefined && tlsCert === undefined)) {
    throw new StorageError('ERR_CONFIG', '--tls-cert and --tls-key go together (and --tls-ca needs them)');
  }
  if (tlsCert !== undefined && values.listen === undefined) {
    throw new StorageError('ERR_CONFIG', 'TLS applies to NBD over TCP: give --listen too (the unix socket stays plain)');
  }
  const tls = tlsCert === undefined || tlsKey === undefined ? undefined
    : await loadNbdTls({ certPath: tlsCert, keyPath: tlsKey, ...(tlsCa === undefined ? {} : { caPath: tlsCa }) });
  const cache = parseReadCacheFlags(values['cache-dir'], values['cache-size']);
  const d = NBD_SERVER_DEFAULTS;
  await startNbd({
    cache,
    tls,
    mdsUrl: values.mds,
    credential: await readHypervisorCredential(values.credential),
    socket: values.socket,
    socketMode: values['socket-group-access'] === true ? 0o660 : 0o600,
    listen: values.listen === undefined ? undefined : parseHostPort(values.listen, '--listen'),
    defaultExport: values['default-export'],
    readOnly: values['read-only'] === true,
    forceOpen: values['force-open'] === true,
    holder: values.holder ?? `nbd@${hostname()}`,
    hostLabel: values.host ?? hostname(),
    metrics: parseHostPort(values.metrics, '--metrics'),
    inflightRequestsMax: parseIntegerFlag(
      values['inflight-requests-max'], '--inflight-requests-max', d.inflightRequestsMax, 1),
    memory: nbdMemoryPlan({
      budgetBytes: parseMemoryBudget(values['memory-budget'], NBD_MEMORY_BUDGET_MIN),
      inflightBytesTotalMax: values['inflight-bytes-total-max'] === undefined ? null
        : Math.max(IO_BYTES_MAX, parseSizeBytes(values['inflight-bytes-total-max'], '--inflight-bytes-total-max')),
      inflightBytesMax: values['inflight-bytes-max'] === undefined ? null
        : Math.max(1, parseSizeBytes(values['inflight-bytes-max'], '--inflight-bytes-max')),
      cacheSizeBytes: cache?.sizeBytes ?? null,
    }),
    unixConnectionsMax: parseIntegerFlag(
      values['unix-connections-max'], '--unix-connections-max', d.unixConnectionsMax, 1),
    tcpConnectionsMax: parseIntegerFlag(
      values['tcp-connections-max'], '--tcp-connections-max', d.tcpConnectionsMax, 1),
    tcpConnectionsPerAddressMax: parseIntegerFlag(values['tcp-connections-per-address-max'],
      '--tcp-connections-per-address-max', d.tcpConnectionsPerAddressMax, 1),
    handshakeTimeoutMs: parseIntegerFlag(
      values['handshake-timeout-ms'], '--handshake-timeout-ms', d.handshakeTimeoutMs, 100),
    writeStallTimeoutMs: parseIntegerFlag(
      values['write-stall-timeout-ms'], '--write-stall-timeout-ms', d.writeStallTimeoutMs, 100),
    ioTimeoutMs: parseIntegerFlag(values['io-timeout-ms'], '--io-timeout-ms', IO_TIMEOUT_MS_DEFAULT, 100),
    csTimeoutMs: parseIntegerFlag(values['cs-timeout-ms'], '--cs-timeout-ms', 6_000, 100),
  });
}

interface NbdDaemonConfig {
  readonly tls: NbdTlsConfig | undefined;
  /** The local read cache, if any (../cache/read_cache.ts). */
  readonly cache: ReadCacheConfig | undefined;
  readonly mdsUrl: string;
  /** The hypervisor's own credential: neither the cluster key nor the MDS's key ever reach this host. */
  readonly credential: string;
  readonly socket: string | undefined;
  readonly socketMode: number;
  readonly listen: { host: string; port: number } | undefined;
  readonly defaultExport: string | undefined;
  readonly readOnly: boolean;
  readonly forceOpen: boolean;
  readonly holder: string;
  readonly hostLabel: string;
  readonly metrics: { host: string; port: number };
  readonly inflightRequestsMax: number;
  readonly memory: NbdMemoryLimits;
  readonly unixConnectionsMax: number;
  readonly tcpConnectionsMax: number;
  readonly tcpConnectionsPerAddressMax: number;
  readonly handshakeTimeoutMs: number;
  readonly writeStallTimeoutMs: number;
  readonly ioTimeoutMs: number;
  readonly csTimeoutMs: number;
}

async function startNbd(config: NbdDaemonConfig): Promise<void> {
  const log = createLogger('nbd');
  const registry = new Registry();
  collectProcessMetrics(registry, 'shoal_nbd_');
  const mds = new MdsClient({ url: config.mdsUrl, token: config.credential });
  const pool = new CsConnectionPool({
    credential: { role: 'client' }, requestTimeoutMs: config.csTimeoutMs, observe: clientRequestObserver(registry),
  });
  // Chunk servers whose disks the MDS finds ill: every volume reads them last (io_reporter.ts brings the list).
  const avoidServers = new Set<number>();
  const inflightGate = new ByteGate('requests', config.memory.inflightBytesTotalMax, systemMonotonicClock);
  const memoryWatch = new MemoryWatch({ plan: config.memory.plan, gates: [inflightGate], clock: systemMonotonicClock, log });
  registerMemoryMetrics(registry, memoryWatch, config.memory.plan, [inflightGate]);
  memoryWatch.start();
  const readCache = config.cache === undefined ? undefined : await ReadCache.open(config.cache.dir, config.cache.sizeBytes, log, { owner: 'NBD server' });
  if (readCache !== undefined) {
    registerReadCacheMetrics(registry, readCache, { prefix: 'shoal_client', source: 'the chunk servers', changes: 'writes through this host' });
  }
  const provider = new VolumeProvider({
    mds, pool, log, holder: config.holder, hostLabel: config.hostLabel, ioTimeoutMs: config.ioTimeoutMs, forceOpen: config.forceOpen, avoidServers,
    ...(readCache === undefined ? {} : { readCache }),
  });
  registerQosMetrics(registry, () => provider.openVolumes());
  const server = await createNbdServer({
    provider,
    registry,
    logger: log,
    readOnly: config.readOnly,
    unixSocketMode: config.socketMode,
    inflightRequestsMax: config.inflightRequestsMax,
    inflightBytesMax: config.memory.inflightBytesMax,
    inflightGate,
    unixConnectionsMax: config.unixConnectionsMax,
    tcpConnectionsMax: config.tcpConnectionsMax,
    tcpConnectionsPerAddressMax: config.tcpConnectionsPerAddressMax,
    handshakeTimeoutMs: config.handshakeTimeoutMs,
    writeStallTimeoutMs: config.writeStallTimeoutMs,
    shutdownTimeoutMs: CONNECTIONS_DRAIN_MS,
    ...(config.socket === undefined ? {} : { unixSocketPath: config.socket }),
    ...(config.listen === undefined ? {} : { tcp: config.listen }),
    ...(config.defaultExport === undefined ? {} : { defaultExport: config.defaultExport }),
    ...(config.tls === undefined ? {} : { tls: config.tls }),
  });
  const metricsServer = await serveMetrics(registry, config.metrics.host, config.metrics.port);
  const ready = {
    port: server.tcpPort, socket: server.unixSocketPath, metricsPort: metricsServer.port,
  };
  log.info('NBD daemon ready', { ...ready, defaultExport: config.defaultExport });
  announceReady({ service: 'nbd', ...ready });

  const ioReporter = new IoReporter({
    stats: volumeIoStats(registry), mds, log, timers: systemTimers, ...(readCache === undefined ? {} : { readCache }),
    hotChunks: (name) => provider.writableVolume(name)?.takeHotChunks(HOT_CHUNKS_REPORTED_MAX) ?? [],
    onAvoid: (csIds) => {
      if (csIds.length === avoidServers.size && csIds.every((csId) => avoidServers.has(csId))) return;
      log.info('chunk servers to read from last (ill disks, says the MDS)', { csIds });
      avoidServers.clear();
      for (const csId of csIds) avoidServers.add(csId);
    },
  });
  ioReporter.start();

  onShutdownSignal(log, async () => {
    memoryWatch.stop();
    ioReporter.stop();
    await server.close();
    await provider.closeAll();
    await readCache?.close();
    pool.closeAll();
    await metricsServer.close();
  }, SHUTDOWN_DEADLINE_MS);
}
