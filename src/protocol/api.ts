// The MDS REST API: one schema per request and response body, used by the MDS to validate and
// serialize (fastify), by the client library and the CLI to type what they send and receive, and
// by the OpenAPI document. Change a shape here and both ends change with it.
//
// Three scopes: admin routes (/v1/volumes, /v1/chunk-servers, /v1/hypervisors, /v1/stat) take the
// admin token; chunk-server routes (/v1/internal/chunk-servers/..., partial writes, bad blocks) the
// cluster token derived from the cluster key; client routes (/v1/internal/exports,
// /v1/internal/volumes/...) a hypervisor's own credential, for the volumes attached to it.

import { Type, type Static } from 'typebox';
import {
  CHUNK_BYTES_MAX,
  CHUNK_BYTES_MIN,
  IO_REPORT_VOLUMES_MAX,
  QOS_BANDWIDTH_BYTES_MAX,
  QOS_IOPS_MAX,
  REPLICAS_MAX,
  VOLUME_BYTES_MAX,
  VOLUME_NAME_PATTERN,
} from '../limits.ts';

const Uint = (options: { maximum?: number; minimum?: number; description?: string } = {}) =>
  Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, ...options });

/**
 * Every error response of the API, whatever failed: the HTTP status, a stable code (errors.ts),
 * a message a person can act on, and details for scripts: `summary` (what the code means) always,
 * and where they apply `field` and `rule` (a request that broke its schema) or `method` and `path`
 * (no such route).
 */
export const ErrorBody = Type.Object({
  statusCode: Type.Integer(),
  code: Type.String(),
  message: Type.String(),
  details: Type.Record(Type.String(), Type.String()),
});
export type ErrorBody = Static<typeof ErrorBody>;

export const VolumeName = Type.String({ pattern: VOLUME_NAME_PATTERN, maxLength: 128 });

/**
 * Running totals of I/O since a process started (a chunk server in its heartbeats, an NBD server
 * per volume in its reports); the MDS turns two of them into rates (src/mds/io_rates.ts).
 */
export const IoTotals = Type.Object({
  readOps: Uint(),
  writeOps: Uint(),
  readBytes: Uint(),
  writtenBytes: Uint(),
  readSeconds: Type.Number({ minimum: 0 }),
  writeSeconds: Type.Number({ minimum: 0 }),
  journalCommits: Type.Optional(Uint({ description: 'a chunk server: durable journal writes of its own disk (the MDS finds sick disks with them)' })),
  journalCommitSeconds: Type.Optional(Type.Number({ minimum: 0 })),
});
export type IoTotals = Static<typeof IoTotals>;

/** Rates over the last report interval; a latency is the mean over that interval's requests (0 without any). */
export const IoRates = Type.Object({
  readIops: Type.Number({ minimum: 0 }),
  writeIops: Type.Number({ minimum: 0 }),
  readBytesPerSecond: Type.Number({ minimum: 0 }),
  writeBytesPerSecond: Type.Number({ minimum: 0 }),
  readLatencyMs: Type.Number({ minimum: 0 }),
  writeLatencyMs: Type.Number({ minimum: 0 }),
});
export type IoRates = Static<typeof IoRates>;

/** What `shoal top` shows of the I/O: each volume's (all its NBD servers together) and each chunk server's. */
export const IoStatsReply = Type.Object({
  volumes: Type.Array(Type.Object({ name: Type.String(), servedBy: Uint({ description: 'NBD servers reporting it' }), ...IoRates.properties })),
  chunkServers: Type.Array(Type.Object({ id: Uint(), ...IoRates.properties })),
});
export type IoStatsReply = Static<typeof IoStatsReply>;
export const VolumeNameParams = Type.Object({ name: VolumeName });
export type VolumeNameParams = Static<typeof VolumeNameParams>;

export const Replicas = Type.Object(
  {
    normal: Type.Integer({ minimum: 1, maximum: REPLICAS_MAX }),
    min: Type.Integer({ minimum: 1, maximum: REPLICAS_MAX }),
  },
  { additionalProperties: false },
);

const IopsLimit = Uint({ maximum: QOS_IOPS_MAX, description: 'requests per second (reads, writes, zeroes, trims); 0: no limit' });
const IopsBurst = Uint({ maximum: QOS_IOPS_MAX, description: 'requests a volume that was quiet may send at once above the limit; 0 with a limit: one second\'s worth' });
const BandwidthLimit = Uint({ maximum: QOS_BANDWIDTH_BYTES_MAX, description: 'bytes read and written per second; 0: no limit' });
const BandwidthBurst = Uint({ maximum: QOS_BANDWIDTH_BYTES_MAX, description: 'bytes a volume that was quiet may move at once above the limit; 0 with a limit: one second\'s worth' });

/**
 * A volume's I/O limits, enforced by the NBD server that serves it (src/client/qos_gate.ts): each
 * a token bucket that fills at the limit up to the burst. A limit of 0 is no limit.
 */
export const VolumeQos = Type.Object({
  iopsLimit: IopsLimit,
  iopsBurst: IopsBurst,
  bandwidthLimitBytesPerSecond: BandwidthLimit,
  bandwidthBurstBytes: BandwidthBurst,
});
export type VolumeQos = Static<typeof VolumeQos>;

/** No limit on anything. */
export const UNLIMITED_QOS: VolumeQos = Object.freeze({ iopsLimit: 0, iopsBurst: 0, bandwidthLimitBytesPerSecond: 0, bandwidthBurstBytes: 0 });

/** The limits to change; the others stay (a changed limit without its burst gets one second's worth). */
export const VolumeQosChange = Type.Object(
  {
    iopsLimit: Type.Optional(IopsLimit),
    iopsBurst: Type.Optional(IopsBurst),
    bandwidthLimitBytesPerSecond: Type.Optional(BandwidthLimit),
    bandwidthBurstBytes: Type.Optional(BandwidthBurst),
  },
  { additionalProperties: false },
);
export type VolumeQosChange = Static<typeof VolumeQosChange>;

export const CreateVolumeBody = Type.Object(
  {
    name: VolumeName,
    sizeBytes: Uint({ minimum: 1, maximum: VOLUME_BYTES_MAX }),
    chunkSizeBytes: Type.Optional(Uint({ minimum: CHUNK_BYTES_MIN, maximum: CHUNK_BYTES_MAX })),
    replicas: Type.Optional(Replicas),
    qos: Type.Optional(VolumeQosChange),
    tier: Type.Optional(Uint({ maximum: 3, description: 'the storage tier its chunks go to, the nearest tier with room while it is full (default: any tier, wherever there is most room)' })),
  },
  { additionalProperties: false },
);
export type CreateVolumeBody = Static<typeof CreateVolumeBody>;

/** What PATCH changes on a volume: its size (grow only), its limits, or both. */
export const UpdateVolumeBody = Type.Object(
  {
    sizeBytes: Type.Optional(Uint({ minimum: 1, maximum: VOLUME_BYTES_MAX })),
    qos: Type.Optional(VolumeQosChange),
  },
  { additionalProperties: false, minProperties: 1 },
);
export type UpdateVolumeBody = Static<typeof UpdateVolumeBody>;

export const DeleteVolumeQuery = Type.Object(
  { force: Type.Optional(Type.Boolean()) },
  { additionalProperties: false },
);
export type DeleteVolumeQuery = Static<typeof DeleteVolumeQuery>;

export const LeaseInfo = Type.Object({
  holder: Type.String(),
  epoch: Uint(),
  acquiredAt: Type.String(),
});
export type LeaseInfo = Static<typeof LeaseInfo>;

export const VolumeInfo = Type.Object({
  id: Uint(),
  name: Type.String(),
  sizeBytes: Uint(),
  chunkSizeBytes: Uint(),
  replicas: Replicas,
  createdAt: Type.String(),
  chunkCount: Uint({ description: 'chunks allocated so far (written at least once)' }),
  allocatedBytes: Uint({ description: 'chunkCount x chunkSizeBytes: the upper bound of space used per replica' }),
  epoch: Uint({ description: 'lease epoch: grows with every write open' }),
  lease: Type.Union([LeaseInfo, Type.Null()]),
  qos: VolumeQos,
  tier: Type.Union([Uint({ maximum: 3 }), Type.Null()], { description: 'the storage tier its chunks go to; null: any tier (created without one)' }),
  misplacedReplicas: Uint({ description: 'replicas on chunk servers of another tier (spilled while the tier was full, or not yet moved after a change of tier)' }),
});
export type VolumeInfo = Static<typeof VolumeInfo>;

export const VolumeList = Type.Object({ volumes: Type.Array(VolumeInfo) });
export type VolumeList = Static<typeof VolumeList>;

export const ChunkServerState = Type.Union([Type.Literal('online'), Type.Literal('offline')]);
export type ChunkServerState = Static<typeof ChunkServerState>;

export const ChunkServerInfo = Type.Object({
  id: Uint(),
  uuid: Type.String(),
  host: Type.String(),
  port: Uint(),
  metricsPort: Uint(),
  failureDomain: Type.Object({ host: Type.String(), rack: Type.String() }),
  tier: Uint(),
  state: ChunkServerState,
  adminState: Type.Union([Type.Literal('active'), Type.Literal('draining'), Type.Literal('removed')]),
  healthy: Type.Boolean({ description: 'false when the server reports disk errors' }),
  lastError: Type.String(),
  capacityBytes: Uint(),
  usedBytes: Uint(),
  freeBytes: Uint(),
  chunkCount: Uint({ description: 'replicas stored, as the chunk server last reported' }),
  mappedReplicaCount: Uint({ description: 'replicas the chunk map places on this server' }),
  misplacedReplicas: Uint({ description: 'of those, replicas of volumes of another tier (they move to their tier once it has room)' }),
  lastHeartbeatAgeMs: Type.Union([Uint(), Type.Null()]),
  registeredAt: Type.String(),
  maintenance: Type.Union([
    Type.Object({
      until: Type.String({ description: 'when the window ends' }),
      phase: Type.Union([Type.Literal('window'), Type.Literal('grace'), Type.Literal('over')], {
        description: 'window: replicas wait for the server and it takes no new chunks; grace: the window ran out, replicas still wait ' +
          '(a warning); over: an away server\'s replicas are replaced as for any other',
      }),
      replicasReplacedFrom: Type.String({ description: 'from when the replicas of the server, if away, are replaced (the end of the grace)' }),
    }),
    Type.Null(),
  ], { description: 'an admin\'s maintenance window (shoal cs maintenance), or null' }),
  ill: Type.Union([
    Type.Object({ since: Type.String(), reason: Type.String({ description: 'what is slow, by how much, against which peers' }) }),
    Type.Null(),
  ], { description: 'its disk is far slower than its peers\' (a disk about to fail?): reads and new chunks avoid it; null when well' }),
});
export type ChunkServerInfo = Static<typeof ChunkServerInfo>;

export const MaintenanceBody = Type.Object(
  { forSeconds: Uint({ minimum: 1, maximum: 7 * 24 * 3600, description: 'the window, from now (a new request replaces it: extend or shorten)' }) },
  { additionalProperties: false },
);
export type MaintenanceBody = Static<typeof MaintenanceBody>;

export const ChunkServerList = Type.Object({ chunkServers: Type.Array(ChunkServerInfo) });
export type ChunkServerList = Static<typeof ChunkServerList>;

export const ChunkHealthCounts = Type.Object({
  healthy: Uint({ description: 'every replica on an online chunk server' }),
  degraded: Uint({ description: 'at least min but fewer than normal replicas online' }),
  endangered: Uint({ description: 'fewer than min replicas online: I/O waits' }),
  unavailable: Uint({ description: 'no replica online' }),
});
export type ChunkHealthCounts = Static<typeof ChunkHealthCounts>;

export const RecoveryInfo = Type.Object({
  running: Uint({ description: 'replica-set changes in flight' }),
  pending: Uint({ description: 'changes the last plan held: 0 when every chunk is as it should be' }),
  blocked: Uint({ description: 'chunks that need a replica but have no eligible server in a free failure domain' }),
  waiting: Uint({ description: 'chunks missing members that are expected back (restarting servers): nothing is copied for them meanwhile' }),
  misplacedStuck: Uint({ description: 'chunks with a replica on the wrong tier that no server of their tier can take now, among those the last plan looked at (at most 4,096)' }),
  succeeded: Uint(),
  failed: Uint(),
  copiedBytes: Uint({ description: 'bytes copied between chunk servers since the MDS started' }),
  settledBytes: Uint({ description: 'bytes copied between members found different by their checksums (writes that died half-done)' }),
  bytesPerSecondLimit: Uint(),
});
export type RecoveryInfo = Static<typeof RecoveryInfo>;

export const QuarantineSummary = Type.Object({
  replicas: Uint({ description: 'replicas on chunk servers that the map does not count on, kept aside' }),
  newerThanMap: Uint({ description: 'of them, made by an MDS state newer than this map (a restored or lost database): never deleted automatically' }),
  bytes: Uint({ description: 'their size (chunk size each)' }),
  graceMs: Uint({ description: 'after this long a quarantined replica that is not newer than the map is deleted' }),
});
export type QuarantineSummary = Static<typeof QuarantineSummary>;

export const QuarantinedReplica = Type.Object({
  chunkId: Uint(),
  csId: Uint(),
  volumeId: Uint(),
  chunkIndex: Uint(),
  version: Uint(),
  generation: Uint(),
  sizeBytes: Uint(),
  newerThanMap: Type.Boolean(),
  reason: Type.String(),
  since: Type.String(),
  deleteAfter: Type.Union([Type.String(), Type.Null()], { description: 'when the grace runs out; null: only on an admin\'s word' }),
});
export type QuarantinedReplica = Static<typeof QuarantinedReplica>;

export const QuarantineList = Type.Object({
  replicas: Type.Array(QuarantinedReplica),
  truncated: Type.Boolean({ description: 'more replicas are quarantined than listed' }),
});
export type QuarantineList = Static<typeof QuarantineList>;

export const QuarantineListQuery = Type.Object(
  { limit: Type.Optional(Uint({ minimum: 1, maximum: 100_000 })) },
  { additionalProperties: false },
);
export type QuarantineListQuery = Static<typeof QuarantineListQuery>;

export const QuarantineDeleteBody = Type.Object(
  {
    replicas: Type.Optional(Type.Array(Type.Object({ chunkId: Uint(), csId: Uint() }, { additionalProperties: false }), { maxItems: 100_000 })),
    all: Type.Optional(Type.Boolean({ description: 'every quarantined replica (those newer than the map only with includeNewer)' })),
    includeNewer: Type.Optional(Type.Boolean({ description: 'also delete replicas newer than the map: their data may exist nowhere else' })),
  },
  { additionalProperties: false },
);
export type QuarantineDeleteBody = Static<typeof QuarantineDeleteBody>;

export const QuarantineDeleteReply = Type.Object({
  queued: Uint({ description: 'replicas queued for deletion' }),
  keptNewer: Uint({ description: 'replicas newer than the map left alone (pass includeNewer to delete them)' }),
});
export type QuarantineDeleteReply = Static<typeof QuarantineDeleteReply>;

export const RebuildReply = Type.Object({
  serversAsked: Uint({ description: 'chunk servers whose replicas were listed' }),
  serversUnreachable: Type.Array(Uint(), { description: 'registered servers not asked (offline): run the rebuild again once they are back' }),
  volumesAdopted: Uint({ description: 'volumes the map lacked, taken back from the chunk servers' }),
  chunksAdopted: Uint({ description: 'chunks the map lacked, taken back (their members are compared first)' }),
  conflicts: Uint({ description: 'chunk indexes the map has under another chunk id: the map\'s is kept, the servers\' copies stay quarantined' }),
});
export type RebuildReply = Static<typeof RebuildReply>;

// ---- tasks ---------------------------------------------------------------------------------------


/** A long operation the MDS carries out in the background (src/mds/tasks.ts). */
export const TaskInfo = Type.Object({
  id: Uint(),
  kind: Type.Union([Type.Literal('drain'), Type.Literal('rebalance'), Type.Literal('tier')]),
  target: Type.Object({
    chunkServerId: Type.Optional(Uint({ description: 'a drain\'s server, or the server a tier move changed; a rebalance has none (it works on every server)' })),
    volumeId: Type.Optional(Uint({ description: 'a tier move: the volume whose tier changed' })),
    volume: Type.Optional(Type.String({ description: 'a tier move: that volume\'s name (absent once it is deleted)' })),
  }),
  tier: Type.Union([Type.Object({ from: Type.Union([Uint({ maximum: 3 }), Type.Null()], { description: 'null: a volume of any tier' }), to: Uint({ maximum: 3 }) }), Type.Null()], {
    description: 'a tier move: the tier its target had and has now (a cancel puts it back)',
  }),
  startedBy: Type.Union([Type.Literal('admin'), Type.Literal('mds')], {
    description: 'mds: the MDS started it by itself (a rebalance once the servers drifted apart beyond its --rebalance-threshold)',
  }),
  thresholdPercent: Type.Union([Type.Number({ minimum: 0, maximum: 100 }), Type.Null()], {
    description: 'a rebalance: the servers end at most this many points of used space apart',
  }),
  spreadPercent: Type.Union([Type.Number({ minimum: 0, maximum: 100 }), Type.Null()], {
    description: 'a running rebalance: how many points of used space the fullest and emptiest servers are apart now',
  }),
  state: Type.Union([
    Type.Literal('queued'), Type.Literal('running'), Type.Literal('paused'), Type.Literal('done'), Type.Literal('failed'), Type.Literal('cancelled'),
  ]),
  progress: Type.Object({
    itemsDone: Uint({ description: 'replicas moved (off a drained server, between servers for balance, or to their tier)' }),
    itemsTotal: Uint({ description: 'a rebalance: done plus an estimate of what is left, which moves as the cluster changes' }),
    bytesDone: Uint(),
    bytesTotal: Uint(),
  }),
  bytesPerSecond: Type.Union([Type.Number({ minimum: 0 }), Type.Null()], { description: 'over the last 30 s; null until measured' }),
  etaSeconds: Type.Union([Uint(), Type.Null()]),
  error: Type.Union([Type.String(), Type.Null()], { description: 'why it failed or was cancelled' }),
  note: Type.Union([Type.String(), Type.Null()], { description: 'why a running task makes no progress, when it makes none' }),
  idempotencyKey: Type.Union([Type.String(), Type.Null()]),
  createdAt: Type.String(),
  updatedAt: Type.String(),
  finishedAt: Type.Union([Type.String(), Type.Null()]),
});
export type TaskInfo = Static<typeof TaskInfo>;

export const TaskList = Type.Object({ tasks: Type.Array(TaskInfo) });
export type TaskList = Static<typeof TaskList>;

export const TaskIdParams = Type.Object({ id: Uint({ minimum: 1 }) });
export type TaskIdParams = Static<typeof TaskIdParams>;

const IdempotencyKey = Type.String({
  minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9._:-]+$',
  description: 'the same key again returns the task it started instead of starting another',
});

/** One body for every kind (not a union: a union's violations would name the wrong kind's fields); the MDS checks which fields a kind takes. */
export const StartTaskBody = Type.Object(
  {
    kind: Type.Unsafe<'drain' | 'rebalance' | 'tier'>({ type: 'string', enum: ['drain', 'rebalance', 'tier'] }),
    chunkServerId: Type.Optional(Uint({ minimum: 1, description: 'a drain: the chunk server to empty; a tier move: the chunk server whose tier changes' })),
    volume: Type.Optional(Type.String({ pattern: VOLUME_NAME_PATTERN, maxLength: 128, description: 'a tier move: the volume whose tier changes' })),
    tier: Type.Optional(Uint({ maximum: 3, description: 'a tier move: the new tier (0-3); the replicas then on the wrong tier move' })),
    thresholdPercent: Type.Optional(Type.Integer({
      minimum: 1, maximum: 99,
      description: 'a rebalance: move replicas until the servers are at most this many points of used space apart (default: the MDS\'s --rebalance-threshold)',
    })),
    idempotencyKey: Type.Optional(IdempotencyKey),
  },
  { additionalProperties: false },
);
export type StartTaskBody = Static<typeof StartTaskBody>;

/** Hot chunks an NBD server names per volume in one I/O report at most. */
export const HOT_CHUNKS_REPORTED_MAX = 16;

/**
 * A read cache's running totals since its process started (src/cache/read_cache.ts): an NBD
 * server's in its I/O reports, a chunk server's in its heartbeats.
 */
export const ReadCacheTotals = Type.Object({
  hits: Uint(),
  misses: Uint(),
  admissions: Uint(),
  evictions: Uint(),
  corrupt: Uint({ description: 'cached blocks that failed their checksum (read from the chunk servers, or the disk, instead)' }),
  usedBytes: Uint(),
  capacityBytes: Uint(),
}, { additionalProperties: false });
export type ReadCacheTotals = Static<typeof ReadCacheTotals>;

export const ReadCacheInfo = Type.Object({
  hypervisor: Type.String(),
  ...ReadCacheTotals.properties,
  hitRatio: Type.Union([Type.Number({ minimum: 0, maximum: 1 }), Type.Null()], { description: 'over its last report interval (a couple of seconds); null without lookups' }),
});
export type ReadCacheInfo = Static<typeof ReadCacheInfo>;

export const ChunkServerReadCacheInfo = Type.Object({
  csId: Uint(),
  ...ReadCacheTotals.properties,
  hitRatio: Type.Union([Type.Number({ minimum: 0, maximum: 1 }), Type.Null()], { description: 'over its last heartbeat interval; null without lookups' }),
});
export type ChunkServerReadCacheInfo = Static<typeof ChunkServerReadCacheInfo>;

/** One storage tier in the stat: its servers' space and the replicas on it. */
export const TierStat = Type.Object({
  tier: Uint({ maximum: 3 }),
  servers: Uint({ description: 'chunk servers of the tier (not removed)' }),
  online: Uint(),
  capacityBytes: Uint({ description: 'of the online servers' }),
  usedBytes: Uint(),
  freeBytes: Uint(),
  replicas: Uint({ description: 'replicas the chunk map places on the tier\'s servers' }),
  misplacedReplicas: Uint({ description: 'of those, replicas of volumes of another tier' }),
  elsewhereReplicas: Uint({ description: 'replicas of this tier\'s volumes on other tiers (spilled while it was full, or still to move after a change of tier)' }),
  volumes: Uint({ description: 'volumes of this tier' }),
});
export type TierStat = Static<typeof TierStat>;

export const ClusterStat = Type.Object({
  chunkServers: Type.Object({ total: Uint(), online: Uint(), offline: Uint() }),
  recovery: RecoveryInfo,
  quarantine: QuarantineSummary,
  space: Type.Object({ capacityBytes: Uint(), usedBytes: Uint(), freeBytes: Uint() }),
  tiers: Type.Array(TierStat, { description: 'tiers that have servers, volumes or replicas, by tier' }),
  readCaches: Type.Array(ReadCacheInfo, { description: 'the NBD servers\' read caches, as they last reported (every couple of seconds)' }),
  chunkServerReadCaches: Type.Array(ChunkServerReadCacheInfo, { description: 'the chunk servers\' read caches, as their last heartbeats reported them, by id' }),
  volumes: Type.Object({ count: Uint(), sizeBytes: Uint() }),
  chunks: Type.Object({ total: Uint(), byState: ChunkHealthCounts }),
  servers: Type.Array(ChunkServerInfo),
});
export type ClusterStat = Static<typeof ClusterStat>;

// ---- internal routes: chunk servers -------------------------------------------------------------

export const ChunkServerSpace = {
  capacityBytes: Uint(),
  freeBytes: Uint(),
  usedBytes: Uint(),
  chunkCount: Uint(),
  healthy: Type.Boolean(),
  lastError: Type.String({ maxLength: 1024 }),
};

export const RegisterChunkServerBody = Type.Object(
  {
    uuid: Type.String({ pattern: '^[0-9a-f-]{36}$' }),
    host: Type.String({ minLength: 1, maxLength: 255 }),
    port: Uint({ minimum: 1, maximum: 65535 }),
    metricsPort: Uint({ maximum: 65535 }),
    failureDomainHost: Type.String({ minLength: 1, maxLength: 255 }),
    rack: Type.String({ maxLength: 255 }),
    tier: Uint({ maximum: 3 }),
    clusterId: Type.Optional(Type.String({ pattern: '^[0-9a-f-]{36}$', description: 'the cluster the directory joined, if any' })),
    divergencePossible: Type.Optional(Type.Boolean({
      description: 'the server stopped uncleanly or could not report a write it forwarded: its chunks are compared with their other members (absent: true)',
    })),
    ...ChunkServerSpace,
  },
  { additionalProperties: false },
);
export type RegisterChunkServerBody = Static<typeof RegisterChunkServerBody>;

export const VolumeFence = Type.Object({ volumeId: Uint(), epoch: Uint() });
export type VolumeFence = Static<typeof VolumeFence>;

export const RegisterChunkServerReply = Type.Object({
  clusterId: Type.String({ description: 'the cluster this MDS runs; a data directory joins one cluster only' }),
  csId: Uint(),
  heartbeatIntervalMs: Uint(),
  heartbeatTimeoutMs: Uint({ description: 'a chunk server that cannot reach the MDS this long stops taking writes' }),
  fences: Type.Array(VolumeFence, { description: 'every volume\'s lease epoch: older writers are rejected' }),
  revocations: Type.Array(Type.Object({ hypervisorId: Uint(), issuedBeforeMs: Uint() }), {
    description: 'hypervisors whose capabilities issued before that time are void',
  }),
});
export type RegisterChunkServerReply = Static<typeof RegisterChunkServerReply>;

export const HeartbeatBody = Type.Object(
  {
    csId: Uint(),
    uuid: Type.String({ maxLength: 36 }),
    divergencePossible: Type.Optional(Type.Boolean({ description: 'a write it forwarded could not be reported: compare its chunks' })),
    io: Type.Optional(IoTotals),
    // Its read cache (--cache-dir); absent without one, so that a server without a cache needs no newer MDS.
    readCache: Type.Optional(ReadCacheTotals),
    ...ChunkServerSpace,
  },
  { additionalProperties: false },
);
export type HeartbeatBody = Static<typeof HeartbeatBody>;

export const HeartbeatReply = Type.Object({ ok: Type.Boolean() });
export type HeartbeatReply = Static<typeof HeartbeatReply>;

// ---- internal routes: clients -------------------------------------------------------------------

export const ReplicaLocation = Type.Object({
  csId: Uint(),
  host: Type.String(),
  port: Uint(),
  hostLabel: Type.Optional(Type.String({ description: 'the host the chunk server runs on (its --failure-domain-host): a client on that host reads it first' })),
});
export type ReplicaLocation = Static<typeof ReplicaLocation>;

export const ChunkMapEntry = Type.Object({
  chunkIndex: Uint(),
  chunkId: Uint(),
  version: Uint(),
  replicas: Type.Array(ReplicaLocation),
  ticket: Type.String({ pattern: '^[0-9a-f]{32}$', description: 'vouches for this version and members to the primary: writes carry it' }),
  inDoubt: Type.Optional(Type.Boolean({
    description: 'a write that died half-done may have left its members different until the MDS settles them (under a new version): not to be cached',
  })),
});
export type ChunkMapEntry = Static<typeof ChunkMapEntry>;

export const OpenVolumeBody = Type.Object(
  {
    mode: Type.Union([Type.Literal('read'), Type.Literal('write')]),
    holder: Type.String({ minLength: 1, maxLength: 255, description: 'who opens: host and process, shown to admins' }),
    force: Type.Optional(Type.Boolean({ description: 'take the write lease from its holder, fencing it' })),
    host: Type.Optional(Type.String({
      minLength: 1, maxLength: 255,
      description: 'a write open: the host the writer runs on (its chunk servers\' --failure-domain-host): the volume\'s hot chunks follow it there',
    })),
    cachedReads: Type.Optional(Type.Boolean({
      description: 'a write open that answers reads from a local cache while its lease is confirmed: whoever takes the lease from it waits that out before writing',
    })),
  },
  { additionalProperties: false },
);
export type OpenVolumeBody = Static<typeof OpenVolumeBody>;

export const LeaseGrant = Type.Object({
  leaseId: Type.String(),
  epoch: Uint(),
  renewIntervalMs: Uint(),
  timeoutMs: Uint(),
  holdWritesMs: Type.Optional(Uint({
    description: 'write nothing for this long: the lease was taken from a holder whose read cache may still answer its guest until then',
  })),
});
export type LeaseGrant = Static<typeof LeaseGrant>;

export const CapabilityReply = Type.Object({
  capability: Type.String({ pattern: '^[0-9a-f]{144}$', description: 'presented to chunk servers (GRANT)' }),
  sessionKey: Type.String({ pattern: '^[0-9a-f]{64}$', description: 'proves the holder at the chunk servers; never sent to them' }),
  expiresAt: Type.String(),
});
export type CapabilityReply = Static<typeof CapabilityReply>;

export const CapabilityBody = Type.Object(
  { leaseId: Type.Optional(Type.String({ maxLength: 64, description: 'for a write capability: the lease held' })) },
  { additionalProperties: false },
);
export type CapabilityBody = Static<typeof CapabilityBody>;

/**
 * No chunk list: a volume of many TiB has a million entries, too many for one reply. The client
 * loads the map page by page (GET .../chunks) as it touches chunks.
 */
export const OpenVolumeReply = Type.Object({
  volume: VolumeInfo,
  lease: Type.Union([LeaseGrant, Type.Null()]),
  capability: CapabilityReply,
});
export type OpenVolumeReply = Static<typeof OpenVolumeReply>;

export const LeaseBody = Type.Object({ leaseId: Type.String({ maxLength: 64 }) }, { additionalProperties: false });

export const AllocateChunkBody = Type.Object(
  {
    leaseId: Type.String({ maxLength: 64 }),
    host: Type.Optional(Type.String({
      minLength: 1, maxLength: 255,
      description: 'the writer\'s host, as chunk servers name theirs (--failure-domain-host): the first replica goes to a chunk server there when one can take it',
    })),
  },
  { additionalProperties: false },
);
export type AllocateChunkBody = Static<typeof AllocateChunkBody>;
export type LeaseBody = Static<typeof LeaseBody>;

/** A renewal's answer carries the volume's limits, so that a change reaches its writer within a renewal interval. */
export const LeaseRenewReply = Type.Object({ ok: Type.Boolean(), qos: VolumeQos });
export type LeaseRenewReply = Static<typeof LeaseRenewReply>;

export const ChunkIndexParams = Type.Object({ name: VolumeName, chunkIndex: Uint() });
export type ChunkIndexParams = Static<typeof ChunkIndexParams>;

/**
 * Chunk indexes one chunk-map reply covers at most. One page of 1,024 entries (64 GiB of a volume
 * of 64 MiB chunks) is about 200 KB of JSON; reading it from LMDB took about 18 ms and encoding it
 * about 9 ms on a heavily loaded 2-core VM (the whole map of 1M entries: 4.6 s and 8.7 s, 199 MB),
 * so a client opening or reading a huge volume never holds the MDS's event loop for long.
 */
export const CHUNK_MAP_PAGE_CHUNKS = 1024;

export const ChunkMapQuery = Type.Object(
  {
    fromIndex: Type.Optional(Uint({ description: 'first chunk index asked for (default 0)' })),
    count: Type.Optional(Uint({
      minimum: 1,
      maximum: 65536,
      description: `chunk indexes asked for; a reply covers at most ${CHUNK_MAP_PAGE_CHUNKS} of them (see endIndex)`,
    })),
  },
  { additionalProperties: false },
);
export type ChunkMapQuery = Static<typeof ChunkMapQuery>;

export const ChunkMapReply = Type.Object({
  /** In chunk-index order. */
  chunks: Type.Array(ChunkMapEntry, { maxItems: CHUNK_MAP_PAGE_CHUNKS }),
  endIndex: Uint({
    description: 'every allocated chunk with fromIndex <= chunkIndex < endIndex is listed: an index in that range ' +
      'that is not listed was never written. Ask again from endIndex for more',
  }),
});
export type ChunkMapReply = Static<typeof ChunkMapReply>;

export const ChunkFailureBody = Type.Object(
  {
    leaseId: Type.String({ maxLength: 64 }),
    version: Uint({ description: 'the chunk version the writer used' }),
    failedCsIds: Type.Array(Uint(), { maxItems: 16, description: 'members that failed the change; empty: a version mismatch' }),
    offsetBytes: Uint({ description: 'the failed change, within the chunk: made the same on the members that stay' }),
    lengthBytes: Uint(),
    reason: Type.Optional(Type.String({ maxLength: 2048, description: 'what the writer saw, for the log' })),
  },
  { additionalProperties: false },
);
export type ChunkFailureBody = Static<typeof ChunkFailureBody>;

export const BadBlocksBody = Type.Object(
  {
    csId: Uint(),
    volumeId: Uint(),
    chunkIndex: Uint(),
    chunkId: Uint(),
    offsetBytes: Uint(),
    lengthBytes: Uint({ minimum: 1, maximum: 64 * 1024 * 1024 }),
  },
  { additionalProperties: false },
);
export type BadBlocksBody = Static<typeof BadBlocksBody>;

export const PartialWriteBody = Type.Object(
  {
    csId: Uint({ description: 'the primary that forwarded the change' }),
    volumeId: Uint(),
    chunkIndex: Uint(),
    chunkId: Uint(),
    version: Uint({ description: 'the chunk version the change carried' }),
    failedCsIds: Type.Array(Uint(), {
      maxItems: 16,
      description: 'members that failed the change (the primary itself if its own write failed); empty when a member refused it as fenced',
    }),
    // Optional: a primary that predates it sends only failedCsIds (never empty), as before.
    cleanCsIds: Type.Optional(Type.Array(Uint(), {
      minItems: 1,
      maxItems: 16,
      description: 'members that refused the change as fenced (a newer writer took over): they hold the range as it was, and the others are made equal to them',
    })),
    offsetBytes: Uint({ description: 'the change, within the chunk' }),
    lengthBytes: Uint({ minimum: 1, maximum: 1024 * 1024 * 1024 }),
    reason: Type.String({ maxLength: 2048 }),
  },
  { additionalProperties: false },
);
export type PartialWriteBody = Static<typeof PartialWriteBody>;

export const RepairReply = Type.Object({ repairedBlocks: Uint() });
export type RepairReply = Static<typeof RepairReply>;

// ---- hypervisors ----------------------------------------------------------------------------------

export const HypervisorName = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$' });

export const HypervisorInfo = Type.Object({
  id: Uint(),
  name: Type.String(),
  allVolumes: Type.Boolean({ description: 'serves every volume' }),
  volumes: Type.Array(Type.String(), { description: 'the volumes attached to it (when not allVolumes)' }),
  createdAt: Type.String(),
  revokedAt: Type.Union([Type.String(), Type.Null()]),
});
export type HypervisorInfo = Static<typeof HypervisorInfo>;

export const HypervisorList = Type.Object({ hypervisors: Type.Array(HypervisorInfo) });
export type HypervisorList = Static<typeof HypervisorList>;

export const AddHypervisorBody = Type.Object(
  {
    name: HypervisorName,
    allVolumes: Type.Optional(Type.Boolean()),
    volumes: Type.Optional(Type.Array(VolumeName, { maxItems: 4096 })),
  },
  { additionalProperties: false },
);
export type AddHypervisorBody = Static<typeof AddHypervisorBody>;

export const AddHypervisorReply = Type.Object({
  hypervisor: HypervisorInfo,
  credential: Type.String({ description: 'shown once: the hypervisor\'s NBD server reads it from a file (--credential)' }),
});
export type AddHypervisorReply = Static<typeof AddHypervisorReply>;

export const HypervisorNameParams = Type.Object({ name: HypervisorName });
export type HypervisorNameParams = Static<typeof HypervisorNameParams>;

export const HypervisorVolumesBody = Type.Object(
  {
    allow: Type.Optional(Type.Array(VolumeName, { maxItems: 4096 })),
    deny: Type.Optional(Type.Array(VolumeName, { maxItems: 4096 })),
    allVolumes: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type HypervisorVolumesBody = Static<typeof HypervisorVolumesBody>;

export const RevokeHypervisorReply = Type.Object({
  hypervisor: HypervisorInfo,
  serversTold: Uint({ description: 'chunk servers that voided its capabilities now' }),
  serversMissed: Type.Array(Uint(), { description: 'online servers that could not be told: they refuse writes until they register again, which tells them' }),
});
export type RevokeHypervisorReply = Static<typeof RevokeHypervisorReply>;

export const ChunkServerIdParams = Type.Object({ id: Uint() });
export type ChunkServerIdParams = Static<typeof ChunkServerIdParams>;

export const ExportList = Type.Object({ names: Type.Array(Type.String()) });
export type ExportList = Static<typeof ExportList>;

/** An NBD server's running totals per volume it serves (or served lately), sent every few seconds. */
export const IoReportBody = Type.Object(
  {
    volumes: Type.Array(
      Type.Object({
        name: VolumeName, ...IoTotals.properties,
        hotChunks: Type.Optional(Type.Array(Uint(), {
          maxItems: HOT_CHUNKS_REPORTED_MAX, description: 'the chunk indexes read and written most since the last report, hottest first',
        })),
      }, { additionalProperties: false }),
      { maxItems: IO_REPORT_VOLUMES_MAX },
    ),
    readCache: Type.Optional(ReadCacheTotals),
  },
  { additionalProperties: false },
);
export type IoReportBody = Static<typeof IoReportBody>;

export const IoReportReply = Type.Object({
  ok: Type.Boolean(),
  avoidCsIds: Type.Optional(Type.Array(Uint(), {
    maxItems: 65_536, description: 'chunk servers whose disks are ill (far slower than their peers\'): read other replicas first',
  })),
});
export type IoReportReply = Static<typeof IoReportReply>;

export const OkReply = Type.Object({ ok: Type.Boolean() });
export type OkReply = Static<typeof OkReply>;
