// The chunk-server daemon: one process per data directory. Locks the directory, replays the
// journal, serves the chunk protocol and /metrics, registers with the MDS, and shuts down in
// order (stop accepting, finish the journal, sync files, release the lock).
//
// Ready line on stdout: {"event":"ready","service":"cs","port":N,"metricsPort":M,"uuid":"..."}.

import type { KeyObject } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { StorageError } from '../errors.ts';
import { BLOCK_BYTES } from '../limits.ts';
import { CLUSTER_KEY_BYTES, clusterRestToken, readMdsPublicKey, readSecretFile } from '../protocol/auth.ts';
import { capabilityKey } from '../protocol/capability.ts';
import { CsConnectionPool } from '../protocol/cs_connection.ts';
import { MdsClient } from '../protocol/mds_client.ts';
import { announceReady, onShutdownSignal, parseHostPort, parseIntegerFlag } from '../util/daemon.ts';
import { formatMode, usePrivateUmask } from '../util/fs.ts';
import { systemClock, systemMonotonicClock } from '../util/clock.ts';
import { createLogger, type Logger } from '../util/log.ts';
import { serveMetrics } from '../util/metrics_http.ts';
import { RateLimiter } from '../util/rate_limiter.ts';
import { ByteGate } from '../util/byte_gate.ts';
import { MemoryWatch, formatMiB, parseMemoryBudget, registerMemoryMetrics } from '../util/memory_budget.ts';
import { parseSizeBytes } from '../util/size.ts';
import { registerReadCacheMetrics } from '../cache/metrics.ts';
import { ReadCache, parseReadCacheFlags, type ReadCacheConfig } from '../cache/read_cache.ts';
import { ChunkReadCache } from './store/chunk_read_cache.ts';
import { ChunkStore, IN_PLACE_WRITE_BYTES_MIN_DEFAULT, IN_PLACE_WRITE_BYTES_MIN_OWN_JOURNAL_DEVICE, REAL_STORE_ENV } from './store/chunk_store.ts';
import { DiskUsage } from './disk_usage.ts';
import { CS_MEMORY_BUDGET_MIN, csMemoryPlan, type CsMemoryLimits } from './memory_plan.ts';
import { JOURNAL_SEGMENTS_DEFAULT, JOURNAL_SEGMENTS_MIN } from './journal/journal.ts';
import { lockDataDir, lockJournalDir, loadIdentity, saveIdentity, type DataDirLock } from './data_dir.ts';
import { PartialWriteReporter } from './partial_writes.ts';
import { MdsLink } from './mds_link.ts';
import { CsMetrics } from './metrics.ts';
import { Scrubber } from './scrubber.ts';
import { TicketChecker } from './ticket_check.ts';
import { CS_CONNECTIONS_MAX_DEFAULT, CS_UNAUTHENTICATED_CONNECTIONS_MAX_DEFAULT, ChunkServer } from './server.ts';

const USAGE = `usage: shoal run cs --data DIR --mds URL --cluster-key FILE [options]
  --mds-public-key FILE       the MDS's public key, mds.pub (default: mds.pub beside the cluster key)
  --listen HOST:PORT          chunk protocol address (default 127.0.0.1:0)
  --advertise-host HOST       address clients and peers use (default: the listen host)
  --metrics HOST:PORT         Prometheus /metrics (default 127.0.0.1:0)
  --failure-domain-host NAME  host label for placement (default: this machine's hostname)
  --rack NAME                 rack label for placement (default "default")
  --tier N                    storage tier 0-3 (default 0)
  --memory-budget N           memory for the whole process: runtime, requests in flight, open chunks'
                              checksums, journal and connection buffers (default 512M; at least
                              ${formatMiB(CS_MEMORY_BUDGET_MIN)}). A plan that does not fit refuses to start; under pressure
                              the server takes in fewer requests, it is not killed
  --inflight-bytes-max N      payload bytes in flight before reads pause (default: what the budget
                              leaves, up to 256M)
  --open-chunks-max N         chunk files kept open (default 256)
  --journal-dir PATH          the journal's directory, e.g. on an SSD in front of an HDD (default: where
                              this data directory's journal was last, else DIR/journal); a journal moved
                              with its contents works from its new path
  --journal-size N            the journal's space: rounded down to whole segments, at least two (a
                              segment and a spare) (default 3 segments, 192M)
  --journal-segment-bytes N   journal segment size, preallocated; a checkpoint when one is full (default 64M)
  --in-place-write-bytes N    writes of at least N bytes go straight to the chunk file, only their
                              checksums through the journal (default 64K, or 1M when the journal is on
                              a device of its own; 0 = every write journalled)
  --peer-timeout-ms N         a peer replica that does not answer a forwarded write within this is
                              reported failed (default 4000; keep it below the clients' --cs-timeout-ms,
                              so the primary names the failed peer before the client gives up on it)
  --advertise-port N          port clients and peers use, when a proxy or NAT sits in front
  --scrub-bytes-per-second N  background checksum scrub rate, 0 = off (default 4 MiB/s)
  --scrub-interval-ms N       pause between scrub passes (default 21600000, six hours)
  --capacity-bytes N          use at most this much of the disk (default: all of it)
  --cache-dir PATH            keep a read cache there (an SSD in front of an HDD): 64 KiB blocks of
                              the replicas clients read, checked by checksum on every hit, dropped by
                              every change of their replica, emptied at start; one server per directory
  --cache-size N              its size (e.g. 16G; at least 1M); with --cache-dir
  --connections-max N         open connections at most; beyond it a new one closes the oldest
                              unauthenticated one, or is refused when all have authenticated
                              (default ${CS_CONNECTIONS_MAX_DEFAULT})
  --unauthenticated-connections-max N  connections still to authenticate at most; a new one
                              beyond it closes the oldest of them (default ${CS_UNAUTHENTICATED_CONNECTIONS_MAX_DEFAULT})`;

const MiB = 1024 * 1024;
/** How often the server re-measures its own files (a directory walk). */
const USAGE_REFRESH_MS = 5_000;
/** How long a start waits for a previous server on the same directory that is still stopping. */
const LOCK_WAIT_MS = 3_000;

export async function runChunkServer(argv: string[]): Promise<void> {
  // Before anything is created: chunk data, journals and the catalog are private to this user.
  usePrivateUmask();
  const { values } = parseArgs({
    args: argv,
    options: {
      data: { type: 'string' },
      mds: { type: 'string' },
      'cluster-key': { type: 'string' },
      'mds-public-key': { type: 'string' },
      listen: { type: 'string', default: '127.0.0.1:0' },
      'advertise-host': { type: 'string' },
      metrics: { type: 'string', default: '127.0.0.1:0' },
      'failure-domain-host': { type: 'string', default: hostname() },
      rack: { type: 'string', default: 'default' },
      tier: { type: 'string' },
      'inflight-bytes-max': { type: 'string' },
      'memory-budget': { type: 'string' },
      'open-chunks-max': { type: 'string' },
      'journal-segment-bytes': { type: 'string' },
      'journal-dir': { type: 'string' },
      'journal-size': { type: 'string' },
      'in-place-write-bytes': { type: 'string' },
      'peer-timeout-ms': { type: 'string' },
      'advertise-port': { type: 'string' },
      'scrub-bytes-per-second': { type: 'string' },
      'scrub-interval-ms': { type: 'string' },
      'capacity-bytes': { type: 'string' },
      'cache-dir': { type: 'string' },
      'cache-size': { type: 'string' },
      'connections-max': { type: 'string' },
      'unauthenticated-connections-max': { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (values.data === undefined || values.mds === undefined || values['cluster-key'] === undefined) {
    throw new StorageError('ERR_CONFIG', `--data, --mds and --cluster-key are required\n${USAGE}`);
  }
  const tier = parseIntegerFlag(values.tier, '--tier', 0);
  if (tier > 3) throw new StorageError('ERR_CONFIG', '--tier must be 0-3');
  const listen = parseHostPort(values.listen, '--listen');
  const connectionsMax = parseIntegerFlag(values['connections-max'], '--connections-max', CS_CONNECTIONS_MAX_DEFAULT, 1);
  const unauthenticatedConnectionsMax = parseIntegerFlag(values['unauthenticated-connections-max'],
    '--unauthenticated-connections-max', Math.min(CS_UNAUTHENTICATED_CONNECTIONS_MAX_DEFAULT, connectionsMax), 1);
  if (unauthenticatedConnectionsMax > connectionsMax) {
    throw new StorageError('ERR_CONFIG',
      `--unauthenticated-connections-max (${unauthenticatedConnectionsMax}) must not exceed --connections-max (${connectionsMax})`);
  }
  const openChunksMax = parseIntegerFlag(values['open-chunks-max'], '--open-chunks-max', 256, 1);
  const journalSegmentBytes = values['journal-segment-bytes'] === undefined
    ? 64 * MiB : Math.max(MiB, parseSizeBytes(values['journal-segment-bytes'], '--journal-segment-bytes'));
  const readCache = parseReadCacheFlags(values['cache-dir'], values['cache-size']);
  // Before anything is read or opened: a budget that cannot be kept is a configuration error.
  const memory = csMemoryPlan({
    budgetBytes: parseMemoryBudget(values['memory-budget'], CS_MEMORY_BUDGET_MIN),
    inflightBytesMax: values['inflight-bytes-max'] === undefined ? null : Math.max(MiB, parseSizeBytes(values['inflight-bytes-max'], '--inflight-bytes-max')),
    openChunksMax,
    cacheSizeBytes: readCache?.sizeBytes ?? null,
  });
  await startChunkServer({
    dataDir: values.data,
    mdsUrl: values.mds,
    clusterKey: await readSecretFile(values['cluster-key'], CLUSTER_KEY_BYTES),
    mdsPublicKey: await readMdsPublicKey(values['mds-public-key'] ?? join(dirname(values['cluster-key']), 'mds.pub')),
    listen,
    advertiseHost: values['advertise-host'] ?? listen.host,
    metrics: parseHostPort(values.metrics, '--metrics'),
    failureDomainHost: values['failure-domain-host'],
    rack: values.rack,
    tier,
    memory,
    openChunksMax,
    journalSegmentBytes,
    journalSegmentsMax: parseJournalSize(values['journal-size'], journalSegmentBytes),
    journalDir: values['journal-dir'] === undefined ? null : resolve(values['journal-dir']),
    inPlaceWriteBytesMin: parseInPlaceWriteBytes(values['in-place-write-bytes']),
    peerTimeoutMs: parseIntegerFlag(values['peer-timeout-ms'], '--peer-timeout-ms', 4_000, 100),
    advertisePort: values['advertise-port'] === undefined ? null : parseIntegerFlag(values['advertise-port'], '--advertise-port', 0, 1),
    scrubBytesPerSecond: parseIntegerFlag(values['scrub-bytes-per-second'], '--scrub-bytes-per-second', 4 * MiB),
    scrubIntervalMs: parseIntegerFlag(values['scrub-interval-ms'], '--scrub-interval-ms', 6 * 3_600_000),
    capacityBytes: values['capacity-bytes'] === undefined ? null : parseSizeBytes(values['capacity-bytes'], '--capacity-bytes'),
    readCache,
    connectionsMax,
    unauthenticatedConnectionsMax,
  });
}

/**
 * --journal-size: the journal's space as a number of segments, rounded down to whole segments; at
 * least a segment and a spare (the journal switches to the spare at each checkpoint).
 */
function parseJournalSize(value: string | undefined, segmentBytes: number): number {
  if (value === undefined) return JOURNAL_SEGMENTS_DEFAULT;
  const bytes = parseSizeBytes(value, '--journal-size');
  const segments = Math.floor(bytes / segmentBytes);
  if (segments < JOURNAL_SEGMENTS_MIN) {
    throw new StorageError('ERR_CONFIG',
      `--journal-size ${value} is too small: the minimum is ${JOURNAL_SEGMENTS_MIN * segmentBytes} bytes, a segment and a spare ` +
      `of ${segmentBytes} bytes (--journal-segment-bytes; a smaller segment size allows a smaller journal)`);
  }
  return segments;
}

/** --in-place-write-bytes: 0 turns in-place writes off; otherwise at least one block; null: the default. */
function parseInPlaceWriteBytes(value: string | undefined): number | null {
  if (value === undefined) return null;
  const bytes = parseSizeBytes(value, '--in-place-write-bytes');
  if (bytes === 0) return Number.POSITIVE_INFINITY;
  if (bytes < BLOCK_BYTES) throw new StorageError('ERR_CONFIG', `--in-place-write-bytes must be 0 or at least ${BLOCK_BYTES} (one block)`);
  return bytes;
}

interface ChunkServerConfig {
  readonly dataDir: string;
  readonly mdsUrl: string;
  readonly clusterKey: Buffer;
  readonly mdsPublicKey: KeyObject;
  readonly listen: { host: string; port: number };
  readonly advertiseHost: string;
  readonly metrics: { host: string; port: number };
  readonly failureDomainHost: string;
  readonly rack: string;
  readonly tier: number;
  readonly memory: CsMemoryLimits;
  readonly openChunksMax: number;
  readonly journalSegmentBytes: number;
  readonly journalSegmentsMax: number;
  /** --journal-dir, absolute; null: where cs.json says the journal was, else DATA/journal. */
  readonly journalDir: string | null;
  /** null: the default for where the journal is (IN_PLACE_WRITE_BYTES_MIN_*). */
  readonly inPlaceWriteBytesMin: number | null;
  readonly peerTimeoutMs: number;
  readonly advertisePort: number | null;
  readonly scrubBytesPerSecond: number;
  readonly scrubIntervalMs: number;
  readonly capacityBytes: number | null;
  /** --cache-dir and --cache-size, if given (chunk_read_cache.ts). */
  readonly readCache: ReadCacheConfig | undefined;
  readonly connectionsMax: number;
  readonly unauthenticatedConnectionsMax: number;
}

async function startChunkServer(config: ChunkServerConfig): Promise<void> {
  const log = createLogger('cs');
  const lock = await lockDataDir(config.dataDir, {
    waitMs: LOCK_WAIT_MS,
    onWait: (holder, waitMs) => log.warn('data directory locked by another chunk server; waiting for it to exit', { holder, waitMs }),
    onMadePrivate: (previousMode) => log.warn('data directory was open to other users: made it 0700',
      { dataDir: config.dataDir, previousMode: formatMode(previousMode) }),
  });
  let identity = await loadIdentity(config.dataDir);
  // cs.json keeps a journal inside the data directory relative to it, so both can move together.
  const journalDir = config.journalDir ?? resolve(config.dataDir, identity.journalDir ?? 'journal');
  const journalDirInside = relative(resolve(config.dataDir), journalDir);
  const journalDirRecorded = journalDirInside.startsWith('..') ? journalDir : journalDirInside;
  let journalLock: DataDirLock | null = null;
  let journalOwnDevice = false;
  let readCache: ReadCache | undefined;
  let store: ChunkStore;
  try {
    journalLock = await lockJournalDir(journalDir);
    journalOwnDevice = (await stat(journalDir)).dev !== (await stat(config.dataDir)).dev;
    readCache = config.readCache === undefined ? undefined : await openReadCache(config.readCache, config.dataDir, log);
    store = await ChunkStore.open({
      ...REAL_STORE_ENV,
      directory: config.dataDir,
      openChunksMax: config.openChunksMax,
      openSumsBytesMax: config.memory.openSumsBytesMax,
      journalSegmentBytesMax: config.journalSegmentBytes,
      journalSegmentsMax: config.journalSegmentsMax,
      journalDirectory: journalDir,
      ownerUuid: identity.uuid,
      journalRecorded: identity.journalDir !== undefined,
      inPlaceWriteBytesMin: config.inPlaceWriteBytesMin ?? (journalOwnDevice ? IN_PLACE_WRITE_BYTES_MIN_OWN_JOURNAL_DEVICE : IN_PLACE_WRITE_BYTES_MIN_DEFAULT),
      ...(readCache === undefined ? {} : { readCache: new ChunkReadCache(readCache) }),
      log,
    });
  } catch (error) {
    await readCache?.close();
    await journalLock?.release();
    await lock.release();
    throw error;
  }
  if (identity.journalDir !== journalDirRecorded) {
    // Recorded once the journal there was opened as this disk's: the next start finds it without
    // --journal-dir, and a lost journal is named in the refusal.
    if (identity.journalDir !== undefined) log.warn('journal directory changed', { from: identity.journalDir, to: journalDir });
    identity = { ...identity, journalDir: journalDirRecorded };
    await saveIdentity(config.dataDir, identity);
  }
  const mds = new MdsClient({ url: config.mdsUrl, token: clusterRestToken(config.clusterKey) });
  let link: MdsLink | null = null;
  const metrics = new CsMetrics(() => store, () => link?.lastSpace ?? null);
  metrics.watchJournal(store.journal, { directory: journalDir, ownDevice: journalOwnDevice });
  if (readCache !== undefined) {
    registerReadCacheMetrics(metrics.registry, readCache, {
      prefix: 'shoal_cs', source: 'the disk', changes: 'changes of their replicas (writes, copies, repairs, new versions, deletes)',
    });
  }
  const peerCredential = { role: 'peer', clusterKey: config.clusterKey } as const;
  const peers = new CsConnectionPool({ credential: peerCredential, requestTimeoutMs: config.peerTimeoutMs });
  const bulkPeers = new CsConnectionPool({ credential: peerCredential, requestTimeoutMs: 120_000 });
  const partialWrites = new PartialWriteReporter({
    send: (report) => mds.reportPartialWrite(report),
    csId: () => link?.registeredId ?? null,
    log,
  });
  metrics.watchPartialWrites(partialWrites);
  let advertisedPort = 0;
  const ticketKey = capabilityKey(config.clusterKey);
  const inflightGate = new ByteGate('requests', config.memory.inflightBytesMax, systemMonotonicClock);
  const memoryWatch = new MemoryWatch({ plan: config.memory.plan, gates: [inflightGate], clock: systemMonotonicClock, log });
  registerMemoryMetrics(metrics.registry, memoryWatch, config.memory.plan, [inflightGate]);
  memoryWatch.start();
  const server = new ChunkServer({
    store,
    clusterKey: config.clusterKey,
    capabilityKey: ticketKey,
    tickets: new TicketChecker(ticketKey),
    mdsPublicKey: config.mdsPublicKey,
    self: () => {
      const csId = link?.registeredId ?? null;
      return csId === null ? null : { csId, host: config.advertiseHost, port: advertisedPort };
    },
    peers,
    bulkPeers,
    inflightGate,
    log,
    metrics,
    writeBlocker: () => (link === null ? new StorageError('ERR_UNAVAILABLE', 'chunk server is starting') : link.writeBlocker()),
    partialWrites,
    connectionsMax: config.connectionsMax,
    unauthenticatedConnectionsMax: config.unauthenticatedConnectionsMax,
  });
  const port = await server.listen(config.listen.host, config.listen.port);
  advertisedPort = config.advertisePort ?? port;
  const metricsServer = await serveMetrics(metrics.registry, config.metrics.host, config.metrics.port);
  const usage = new DiskUsage(config.dataDir, config.capacityBytes);
  await usage.refresh();
  const usageTimer = setInterval(() => {
    usage.refresh().catch((error: unknown) => log.warn('measuring disk usage failed', { error }));
  }, USAGE_REFRESH_MS);
  usageTimer.unref();
  link = new MdsLink({
    mds,
    store,
    usage,
    registration: {
      uuid: identity.uuid,
      host: config.advertiseHost,
      port: advertisedPort,
      metricsPort: metricsServer.port,
      failureDomainHost: config.failureDomainHost,
      rack: config.rack,
      tier: config.tier,
    },
    log,
    clock: systemMonotonicClock,
    partialWrites,
    revoke: (hypervisorId, issuedBeforeMs) => server.revoke(hypervisorId, issuedBeforeMs),
    ioTotals: () => metrics.ioTotals(),
    ...(readCache === undefined ? {} : { readCacheTotals: () => readCache.totals() }),
    clusterId: () => identity.clusterId,
    adoptCluster: async (clusterId) => {
      if (identity.clusterId === clusterId) return;
      if (identity.clusterId !== undefined) {
        throw new StorageError(
          'ERR_CONFIG',
          `data directory ${config.dataDir} belongs to cluster ${identity.clusterId}, but the MDS at ${config.mdsUrl} runs ` +
            `cluster ${clusterId}: not joining (there its replicas would count as orphans). Point --mds at the right cluster.`,
        );
      }
      identity = { ...identity, clusterId };
      await saveIdentity(config.dataDir, identity);
      log.info('joined cluster', { clusterId });
    },
  });
  link.start();
  const scrubber = new Scrubber({
    store,
    limiter: new RateLimiter(config.scrubBytesPerSecond, systemClock, (ms) => new Promise((resolve) => setTimeout(resolve, ms))),
    passIntervalMs: config.scrubIntervalMs,
    log,
    report: async (blocks) => {
      const csId = link?.registeredId ?? null;
      if (csId === null) throw new StorageError('ERR_UNAVAILABLE', 'not registered with the MDS yet');
      await mds.reportBadBlocks({ csId, ...blocks });
    },
  });
  if (config.scrubBytesPerSecond > 0) scrubber.start();
  metrics.watchScrubber(scrubber);
  // Chunk files written since the last checkpoint are synced at least this often, which bounds
  // replay work after a crash even when the journal fills slowly.
  const checkpointTimer = setInterval(() => {
    store.journal.checkpoint().catch((error: unknown) => log.error('checkpoint failed', { error }));
  }, 30_000);
  log.info('chunk server ready', {
    dataDir: config.dataDir, journalDir, journalOwnDevice, uuid: identity.uuid, port, metricsPort: metricsServer.port,
    memoryBudgetBytes: config.memory.plan.budgetBytes, inflightBytesMax: config.memory.inflightBytesMax,
    readCache: readCache === undefined || config.readCache === undefined ? null : { dir: config.readCache.dir, capacityBytes: readCache.capacityBytes },
  });
  announceReady({ service: 'cs', port, metricsPort: metricsServer.port, uuid: identity.uuid });

  onShutdownSignal(log, async () => {
    memoryWatch.stop();
    clearInterval(checkpointTimer);
    clearInterval(usageTimer);
    // Closing the listener and every connection ends what callers wait for: a client's write
    // without a reply was not acknowledged, and the MDS retries an unfinished COPY_RANGE. Waiting
    // for a long paced copy here would hold the stop past any deadline.
    await server.close();
    // A slow or vanished MDS must not hold the stop either: its calls in flight end now.
    mds.close();
    await Promise.all([scrubber.stop(), link?.stop()]);
    peers.closeAll();
    bulkPeers.closeAll();
    await metricsServer.close();
    // Checkpoints the journal: not needed for the data (it replays), but the next start is quicker.
    await store.close();
    await readCache?.close();
    await journalLock?.release();
    await lock.release();
  });
}

/** Opens (emptying) the read cache; one on the data directory's own device is allowed, but gains nothing. */
async function openReadCache(config: ReadCacheConfig, dataDir: string, log: Logger): Promise<ReadCache> {
  const cache = await ReadCache.open(config.dir, config.sizeBytes, log, { owner: 'chunk server' });
  if ((await stat(config.dir)).dev === (await stat(dataDir)).dev) {
    log.warn('the read cache is on the data directory\'s own device: it saves no disk reads (give it an SSD)', { cacheDir: config.dir, dataDir });
  }
  return cache;
}
