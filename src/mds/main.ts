// The MDS daemon: opens the store, starts the REST API and the background loops (lease expiry,
// removal of deleted replicas), and stops them in order on SIGINT/SIGTERM.
//
// On start-up it prints one JSON line on stdout, {"event":"ready","service":"mds","port":N},
// which is how `shoal start` and the tests learn the port when they asked for port 0.

import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { StorageError } from '../errors.ts';
import type { KeyObject } from 'node:crypto';
import { CLUSTER_KEY_BYTES, clusterRestToken, ensureMdsKeyPair, readSecretFile } from '../protocol/auth.ts';
import { capabilityKey } from '../protocol/capability.ts';
import { CsConnectionPool } from '../protocol/cs_connection.ts';
import { systemClock, systemMonotonicClock } from '../util/clock.ts';
import { MemoryWatch, formatMiB, parseMemoryBudget, registerMemoryMetrics, type MemoryPlan } from '../util/memory_budget.ts';
import { MDS_MEMORY_BUDGET_MIN, mdsMemoryPlan } from './memory_plan.ts';
import { announceReady, onShutdownSignal, parseHostPort, parseIntegerFlag } from '../util/daemon.ts';
import { formatMode, lockFile, makeDirectoryPrivate, mkdirDurable, usePrivateUmask, writeFileDurable } from '../util/fs.ts';
import { createLogger } from '../util/log.ts';
import { buildApi } from './api.ts';
import { MdsMetrics } from './metrics.ts';
import { FAILURE_DOMAINS, type FailureDomain } from './placement.ts';
import { MDS_CONFIG_DEFAULTS, type MdsConfig } from './config.ts';
import { MetadataService } from './service.ts';
import { MDS_DB_FILE, MdsStore } from './store.ts';

const USAGE = `usage: shoal run mds --data DIR --cluster-key FILE --admin-token FILE [options]
  --listen HOST:PORT           REST API address (default 127.0.0.1:9630)
  --failure-domain disk|host|rack   where replicas of one chunk must differ (default host)
  --heartbeat-timeout-ms N     chunk server offline after this silence (default 5000)
  --lease-timeout-ms N         write lease lost after this long without renewal (default 20000)
  --heartbeat-interval-ms N    how often chunk servers report (default 1000)
  --replace-after-ms N         a chunk server offline this long has its replicas replaced (default 300000)
  --recovery-bytes-per-second N  copy rate of re-replication and rebalancing, 0 = unlimited (default 64 MiB/s)
  --recovery-concurrency N     replica copies in flight at once (default 4)
  --cs-timeout-ms N            a chunk server that does not answer the MDS within this has failed (default 10000)
  --rebalance-threshold PCT    start a rebalance task (replicas move from the fullest servers to the
                               emptiest, until they are within half of PCT) when servers' used space
                               differs by more than this many percentage points (default 10; 100:
                               only when an admin asks, with shoal cs rebalance --threshold PCT)
  --replace-endangered-after-ms N  a chunk with fewer than its minimum of copies online gets a new
                               replica after this long (default 30000; at most --replace-after-ms);
                               with its minimum online it waits --replace-after-ms for the others
  --quarantine-grace-ms N      replicas the map does not know, not newer than it, are deleted after
                               this long in quarantine (default 604800000, seven days)
  --cluster-id ID              the cluster's id, for an empty data directory: start an MDS whose
                               disk was lost with the id its chunk servers know (their cs.json)
  --mds-key FILE               the MDS's private key, made on first start, with its public half
                               FILE's name ending .pub for the chunk servers (default: mds.key and
                               mds.pub beside the cluster key); it never leaves this host
  --capability-ttl-ms N        how long a capability issued to a hypervisor's client is valid
                               (default 3600000; clients renew it well before)
  --sick-latency-factor N      a chunk server whose journal commits or reads take N times the median
                               of its tier's other servers (and 20 ms more) ... (default 5)
  --sick-after-ms N            ... for this long on end is marked ill: reads and new chunks avoid it,
                               and shoal cs list says why (default 60000)
  --locality-bytes-per-second N  a volume's hot chunks follow its writer to its host (after a VM
                               moved) at most this fast, one at a time, when nothing else is to
                               do (default 4 MiB/s; 0: never)
  --memory-budget N            memory for the whole process: runtime, REST requests, the recovery
                               planner, repairs in flight (default 512M; at least ${formatMiB(MDS_MEMORY_BUDGET_MIN)}); LMDB's
                               pages are the kernel's page cache, outside it`;

const BACKGROUND_TICK_MS = 1_000;
const CLUSTER_ID_PATTERN = /^[0-9a-f-]{36}$/;
/** A copy step (8 MiB through a loaded server) may take seconds; a control request may not. */
const BULK_TIMEOUT_MS = 120_000;
/** A shutdown that waits longer than this for background work says so in the log. */
const SLOW_DRAIN_LOG_MS = 200;

export async function runMds(argv: string[]): Promise<void> {
  // Before anything is created: the database and the cluster's identity are private to this user.
  usePrivateUmask();
  const { values } = parseArgs({
    args: argv,
    options: {
      data: { type: 'string' },
      listen: { type: 'string', default: '127.0.0.1:9630' },
      'cluster-key': { type: 'string' },
      'admin-token': { type: 'string' },
      'failure-domain': { type: 'string', default: MDS_CONFIG_DEFAULTS.failureDomain },
      'heartbeat-timeout-ms': { type: 'string' },
      'lease-timeout-ms': { type: 'string' },
      'heartbeat-interval-ms': { type: 'string' },
      'replace-after-ms': { type: 'string' },
      'recovery-bytes-per-second': { type: 'string' },
      'recovery-concurrency': { type: 'string' },
      'cs-timeout-ms': { type: 'string' },
      'rebalance-threshold': { type: 'string' },
      'replace-endangered-after-ms': { type: 'string' },
      'quarantine-grace-ms': { type: 'string' },
      'cluster-id': { type: 'string' },
      'mds-key': { type: 'string' },
      'capability-ttl-ms': { type: 'string' },
      'sick-latency-factor': { type: 'string' },
      'sick-after-ms': { type: 'string' },
      'locality-bytes-per-second': { type: 'string' },
      'memory-budget': { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (values.data === undefined || values['cluster-key'] === undefined || values['admin-token'] === undefined) {
    throw new StorageError('ERR_CONFIG', `--data, --cluster-key and --admin-token are required\n${USAGE}`);
  }
  const failureDomain = values['failure-domain'] as FailureDomain;
  if (!FAILURE_DOMAINS.includes(failureDomain)) {
    throw new StorageError('ERR_CONFIG', `--failure-domain must be one of ${FAILURE_DOMAINS.join(', ')}`);
  }
  const config: MdsConfig = {
    ...MDS_CONFIG_DEFAULTS,
    failureDomain,
    heartbeatTimeoutMs: parseIntegerFlag(values['heartbeat-timeout-ms'], '--heartbeat-timeout-ms', MDS_CONFIG_DEFAULTS.heartbeatTimeoutMs),
    leaseTimeoutMs: parseIntegerFlag(values['lease-timeout-ms'], '--lease-timeout-ms', MDS_CONFIG_DEFAULTS.leaseTimeoutMs),
    heartbeatIntervalMs: parseIntegerFlag(values['heartbeat-interval-ms'], '--heartbeat-interval-ms', MDS_CONFIG_DEFAULTS.heartbeatIntervalMs, 50),
    replaceAfterMs: parseIntegerFlag(values['replace-after-ms'], '--replace-after-ms', MDS_CONFIG_DEFAULTS.replaceAfterMs),
    recoveryBytesPerSecond: parseIntegerFlag(
      values['recovery-bytes-per-second'], '--recovery-bytes-per-second', MDS_CONFIG_DEFAULTS.recoveryBytesPerSecond),
    recoveryConcurrency: parseIntegerFlag(values['recovery-concurrency'], '--recovery-concurrency', MDS_CONFIG_DEFAULTS.recoveryConcurrency, 1),
    rebalanceThreshold:
      parseIntegerFlag(values['rebalance-threshold'], '--rebalance-threshold', MDS_CONFIG_DEFAULTS.rebalanceThreshold * 100, 1) / 100,
    replaceEndangeredAfterMs: parseIntegerFlag(
      values['replace-endangered-after-ms'], '--replace-endangered-after-ms', MDS_CONFIG_DEFAULTS.replaceEndangeredAfterMs),
    quarantineGraceMs: parseIntegerFlag(values['quarantine-grace-ms'], '--quarantine-grace-ms', MDS_CONFIG_DEFAULTS.quarantineGraceMs),
    capabilityTtlMs: parseIntegerFlag(values['capability-ttl-ms'], '--capability-ttl-ms', MDS_CONFIG_DEFAULTS.capabilityTtlMs, 1_000),
    sickLatencyFactor: parseIntegerFlag(values['sick-latency-factor'], '--sick-latency-factor', MDS_CONFIG_DEFAULTS.sickLatencyFactor, 2),
    sickAfterMs: parseIntegerFlag(values['sick-after-ms'], '--sick-after-ms', MDS_CONFIG_DEFAULTS.sickAfterMs, 1_000),
    localityBytesPerSecond: parseIntegerFlag(values['locality-bytes-per-second'], '--locality-bytes-per-second', MDS_CONFIG_DEFAULTS.localityBytesPerSecond),
  };
  const givenClusterId = values['cluster-id'];
  if (givenClusterId !== undefined && !CLUSTER_ID_PATTERN.test(givenClusterId)) {
    throw new StorageError('ERR_CONFIG', `--cluster-id must be a cluster id (a uuid, as in a chunk server's cs.json), got "${givenClusterId}"`);
  }
  if (config.rebalanceThreshold > 1) {
    throw new StorageError('ERR_CONFIG', '--rebalance-threshold is in percentage points of used space: 1-99, or 100 to rebalance only when an admin asks');
  }
  if (config.heartbeatTimeoutMs <= config.heartbeatIntervalMs * 2) {
    throw new StorageError('ERR_CONFIG', '--heartbeat-timeout-ms must exceed twice --heartbeat-interval-ms, or one late heartbeat marks a server offline');
  }
  const listen = parseHostPort(values.listen, '--listen');
  const clusterKey = await readSecretFile(values['cluster-key'], CLUSTER_KEY_BYTES);
  const adminToken = (await readSecretFile(values['admin-token'], 32)).toString('hex');
  const mdsKeyPath = values['mds-key'] ?? join(dirname(values['cluster-key']), 'mds.key');
  const mdsKey = await ensureMdsKeyPair(mdsKeyPath, mdsKeyPath.replace(/(\.key)?$/, '.pub'));
  const csTimeoutMs = parseIntegerFlag(values['cs-timeout-ms'], '--cs-timeout-ms', 10_000, 100);
  const memory = mdsMemoryPlan({
    budgetBytes: parseMemoryBudget(values['memory-budget'], MDS_MEMORY_BUDGET_MIN), recoveryConcurrency: config.recoveryConcurrency,
  });
  await startMds({ dataDir: values.data, listen, clusterKey, mdsKey, adminToken, config, csTimeoutMs, givenClusterId, memory });
}

async function startMds(options: {
  dataDir: string;
  listen: { host: string; port: number };
  clusterKey: Buffer;
  mdsKey: KeyObject;
  adminToken: string;
  config: MdsConfig;
  csTimeoutMs: number;
  givenClusterId: string | undefined;
  memory: MemoryPlan;
}): Promise<void> {
  const log = createLogger('mds');
  await mkdirDurable(options.dataDir);
  // One MDS per data directory; `shoal mds restore` takes the same lock, so it never writes under a running one.
  const lock = await lockFile(join(options.dataDir, 'lock'));
  if ('heldBy' in lock) {
    throw new StorageError('ERR_DATA_DIR_LOCKED', `MDS data directory ${options.dataDir} is in use by another process (pid ${lock.heldBy}): stop it first`);
  }
  const previousMode = await makeDirectoryPrivate(options.dataDir);
  if (previousMode !== null) {
    log.warn('data directory was open to other users: made it 0700', { dataDir: options.dataDir, previousMode: formatMode(previousMode) });
  }
  const clusterId = await ensureClusterId(options.dataDir, options.givenClusterId);
  // Syncs the directory entry of the database file it may have just created (see MdsStore.open).
  const store = await MdsStore.open(join(options.dataDir, MDS_DB_FILE));
  // One MDS today: term 1. Several later: the leader's term from the consensus engine.
  const credential = { role: 'mds', clusterKey: options.clusterKey, privateKey: options.mdsKey, term: 1 } as const;
  const pool = new CsConnectionPool({ credential, requestTimeoutMs: options.csTimeoutMs });
  const bulkPool = new CsConnectionPool({ credential, requestTimeoutMs: BULK_TIMEOUT_MS });
  const service = new MetadataService({
    store, config: options.config, clock: systemClock, random: Math.random, pool, bulkPool, log, clusterId, dataDir: options.dataDir,
    capabilityKey: capabilityKey(options.clusterKey),
  });
  const metrics = new MdsMetrics(() => service, store);
  const app = await buildApi({
    service,
    adminToken: options.adminToken,
    clusterToken: clusterRestToken(options.clusterKey),
    metricsRegistry: metrics.registry,
    metrics,
    log,
  });
  // No gate of its own: under pressure the MDS collects garbage sooner; its requests are small and
  // bounded, and its map is in LMDB's file pages.
  const memoryWatch = new MemoryWatch({ plan: options.memory, gates: [], clock: systemMonotonicClock, log });
  registerMemoryMetrics(metrics.registry, memoryWatch, options.memory, []);
  memoryWatch.start();
  await app.listen({ host: options.listen.host, port: options.listen.port });
  const address = app.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : options.listen.port;

  let stopping = false;
  let background: Promise<void> = Promise.resolve();
  const tick = setInterval(() => {
    background = background
      .then(async () => {
        if (stopping) return;
        service.cluster.recoveryTick();
        await service.tasks.tick();
        await service.cluster.sweepDeletedReplicas();
      })
      .catch((error: unknown) => log.error('background loop failed', { error }));
  }, BACKGROUND_TICK_MS);

  log.info('MDS ready', { host: options.listen.host, port, failureDomain: options.config.failureDomain });
  announceReady({ service: 'mds', port });

  onShutdownSignal(log, async () => {
    memoryWatch.stop();
    stopping = true;
    clearInterval(tick);
    await app.close();
    // Recovery copies in flight are waited for; when that is what makes a stop slow, the log says so.
    const drainStartedMs = Date.now();
    await background;
    await service.cluster.recovery.drain();
    const drainMs = Date.now() - drainStartedMs;
    if (drainMs >= SLOW_DRAIN_LOG_MS) log.info('waited for background work (recovery copies) to finish', { drainMs });
    pool.closeAll();
    bulkPool.closeAll();
    await store.close();
    await lock.release();
  });
}

/**
 * The cluster's identity, made once when the MDS first starts in this directory: complete and
 * durable before it is used, because chunk servers record it and refuse any other afterwards.
 */
async function ensureClusterId(dataDir: string, given: string | undefined): Promise<string> {
  const path = join(dataDir, 'cluster-id');
  try {
    await writeFileDurable(path, `${given ?? randomUUID()}\n`, { exclusive: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  const clusterId = (await readFile(path, 'utf8')).trim();
  if (given !== undefined && clusterId !== given) {
    throw new StorageError('ERR_CONFIG', `${path} holds cluster ${clusterId}, not the --cluster-id ${given} given: remove the flag or the directory's contents`);
  }
  if (!CLUSTER_ID_PATTERN.test(clusterId)) {
    throw new StorageError(
      'ERR_CONFIG',
      `${path} does not hold a cluster id${clusterId === '' ? ' (it is empty: cut short by a crash?)' : ''}; ` +
        'write back the "clusterId" recorded in any of this cluster\'s chunk servers\' cs.json files',
    );
  }
  return clusterId;
}
