// `shoal volume ...`: create, list, inspect, grow, limit, fence the writer of, and delete volumes. Arguments are checked here
// against the same limits the MDS enforces (src/limits.ts), so a typo is reported with the usage
// line before anything is sent; what only the MDS can decide (the name is taken, the volume is
// open, the new size is smaller) comes back as its error and message.

import { StorageError } from '../../errors.ts';
import {
  CHUNK_BYTES_DEFAULT,
  CHUNK_BYTES_MAX,
  CHUNK_BYTES_MIN,
  QOS_BANDWIDTH_BYTES_MAX,
  QOS_IOPS_MAX,
  REPLICAS_MAX,
  VOLUME_BYTES_MAX,
  VOLUME_NAME_REGEX,
  isPowerOfTwo,
} from '../../limits.ts';
import type { VolumeInfo, VolumeQos, VolumeQosChange } from '../../protocol/api.ts';
import { formatBytes, parseSizeBytes } from '../../util/size.ts';
import { booleanFlag, defineCommand, positional, show, stringFlag, type Command, type CommandArgs } from '../command.ts';
import { formatPercent, formatRate, formatReplicas, formatTimestamp } from '../format.ts';
import { renderFields, renderTable, type Column } from '../table.ts';
import { TIER_DETAILS, TIER_OPTIONS, parseTier, runTierMove } from '../tier_move.ts';
import { parseTimeoutMs } from './cs.ts';

// ---- argument checks ------------------------------------------------------------------------------

export function parseVolumeName(text: string): string {
  if (!VOLUME_NAME_REGEX.test(text)) {
    throw new StorageError(
      'ERR_INVALID_ARGUMENT',
      `invalid volume name "${text}": use 1 to 128 letters, digits, '.', '_' and '-', starting with a letter or digit`,
    );
  }
  return text;
}

function requiredFlag(args: CommandArgs, name: string): string {
  const value = stringFlag(args, name);
  if (value === undefined) throw new StorageError('ERR_INVALID_ARGUMENT', `missing --${name}`);
  return value;
}

function parseVolumeSize(text: string, flag: string): number {
  const bytes = parseSizeBytes(text, flag);
  if (bytes < 1 || bytes > VOLUME_BYTES_MAX) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `${flag} must be from 1 byte to ${formatBytes(VOLUME_BYTES_MAX)}, got "${text}"`);
  }
  return bytes;
}

function parseChunkSize(text: string): number {
  const bytes = parseSizeBytes(text, '--chunk-size');
  if (!isPowerOfTwo(bytes) || bytes < CHUNK_BYTES_MIN || bytes > CHUNK_BYTES_MAX) {
    throw new StorageError(
      'ERR_INVALID_ARGUMENT',
      `--chunk-size must be a power of two from ${formatBytes(CHUNK_BYTES_MIN)} to ${formatBytes(CHUNK_BYTES_MAX)}, got "${text}"`,
    );
  }
  return bytes;
}

export function parseReplicas(text: string): { normal: number; min: number } {
  const match = /^(\d+):(\d+)$/.exec(text.trim());
  const normal = Number(match?.[1]);
  const min = Number(match?.[2]);
  if (match === null || !(min >= 1 && min <= normal && normal <= REPLICAS_MAX)) {
    throw new StorageError(
      'ERR_INVALID_ARGUMENT',
      `--replicas must be N:M (keep N copies; I/O continues while at least M are online) with 1 <= M <= N <= ${REPLICAS_MAX}, got "${text}"`,
    );
  }
  return { normal, min };
}

function parseIops(text: string, flag: string): number {
  const value = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(value) || value > QOS_IOPS_MAX) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `${flag} must be a whole number of requests from 0 (no limit) to ${QOS_IOPS_MAX}, got "${text}"`);
  }
  return value;
}

/** A bandwidth: a size per second ("100M", "100M/s", "1G"); 0 is no limit. */
function parseBandwidth(text: string, flag: string): number {
  const bytes = parseSizeBytes(text.replace(/\/s\s*$/i, ''), flag);
  if (bytes > QOS_BANDWIDTH_BYTES_MAX) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `${flag} must be at most ${formatBytes(QOS_BANDWIDTH_BYTES_MAX)}, got "${text}"`);
  }
  return bytes;
}

const QOS_FLAGS = {
  'iops-limit': { type: 'string' },
  'iops-burst': { type: 'string' },
  'bandwidth-limit': { type: 'string' },
  'bandwidth-burst': { type: 'string' },
} as const;

const QOS_DETAILS = [
  '--iops-limit N          requests per second (reads, writes, zeroes, trims), for all its clients together; 0: no limit',
  '--iops-burst N          requests a quiet volume may send at once above the limit (default: one second\'s worth)',
  '--bandwidth-limit SIZE  bytes read and written per second, e.g. 100M; 0: no limit',
  '--bandwidth-burst SIZE  bytes a quiet volume may move at once above the limit (default: one second\'s worth)',
];

/** The QoS flags given, or undefined when none was. */
function parseQosFlags(args: CommandArgs): VolumeQosChange | undefined {
  const iopsLimit = stringFlag(args, 'iops-limit');
  const iopsBurst = stringFlag(args, 'iops-burst');
  const bandwidthLimit = stringFlag(args, 'bandwidth-limit');
  const bandwidthBurst = stringFlag(args, 'bandwidth-burst');
  const change: VolumeQosChange = {
    ...(iopsLimit === undefined ? {} : { iopsLimit: parseIops(iopsLimit, '--iops-limit') }),
    ...(iopsBurst === undefined ? {} : { iopsBurst: parseIops(iopsBurst, '--iops-burst') }),
    ...(bandwidthLimit === undefined ? {} : { bandwidthLimitBytesPerSecond: parseBandwidth(bandwidthLimit, '--bandwidth-limit') }),
    ...(bandwidthBurst === undefined ? {} : { bandwidthBurstBytes: parseBandwidth(bandwidthBurst, '--bandwidth-burst') }),
  };
  return Object.keys(change).length === 0 ? undefined : change;
}

// ---- output ---------------------------------------------------------------------------------------

/** "500 IOPS (burst 1000), 100.0 MiB/s (burst 100.0 MiB)", or "none". */
export function describeQos(qos: VolumeQos): string {
  const parts: string[] = [];
  if (qos.iopsLimit > 0) parts.push(`${qos.iopsLimit} IOPS (burst ${qos.iopsBurst})`);
  if (qos.bandwidthLimitBytesPerSecond > 0) {
    parts.push(`${formatRate(qos.bandwidthLimitBytesPerSecond)} (burst ${formatBytes(qos.bandwidthBurstBytes)})`);
  }
  return parts.length === 0 ? 'none' : parts.join(', ');
}

function chunksInVolume(volume: VolumeInfo): number {
  return Math.ceil(volume.sizeBytes / volume.chunkSizeBytes);
}

const VOLUME_COLUMNS: readonly Column<VolumeInfo>[] = [
  { header: 'NAME', value: (v) => v.name },
  { header: 'SIZE', align: 'right', value: (v) => formatBytes(v.sizeBytes) },
  { header: 'ALLOCATED', align: 'right', value: (v) => formatBytes(v.allocatedBytes) },
  { header: 'USE%', align: 'right', value: (v) => formatPercent(v.allocatedBytes, v.sizeBytes) },
  { header: 'CHUNK', align: 'right', value: (v) => formatBytes(v.chunkSizeBytes) },
  { header: 'REPLICAS', value: (v) => formatReplicas(v.replicas) },
  { header: 'TIER', align: 'right', value: (v) => `${v.tier ?? 'any'}${v.misplacedReplicas === 0 ? '' : ` (${v.misplacedReplicas} elsewhere)`}` },
  { header: 'CREATED', value: (v) => formatTimestamp(v.createdAt) },
  { header: 'WRITER', value: (v) => v.lease?.holder ?? '-', style: (v) => (v.lease === null ? 'dim' : undefined) },
];

function describeVolume(volume: VolumeInfo): string {
  return `${formatBytes(volume.sizeBytes)}, chunk size ${formatBytes(volume.chunkSizeBytes)}, replicas ${formatReplicas(volume.replicas)}`;
}

function volumeFields(volume: VolumeInfo) {
  const lease = volume.lease;
  return [
    { label: 'name', value: volume.name },
    { label: 'id', value: String(volume.id) },
    { label: 'size', value: `${formatBytes(volume.sizeBytes)} (${volume.sizeBytes} bytes)` },
    { label: 'chunk size', value: formatBytes(volume.chunkSizeBytes) },
    {
      label: 'replicas',
      value: `${formatReplicas(volume.replicas)} (${volume.replicas.normal} copies; I/O waits below ${volume.replicas.min} online)`,
    },
    {
      label: 'allocated',
      value: `${volume.chunkCount} of ${chunksInVolume(volume)} chunks, ${formatBytes(volume.allocatedBytes)} per replica ` +
        `(${formatPercent(volume.allocatedBytes, volume.sizeBytes)})`,
    },
    {
      label: 'writer',
      value: lease === null ? 'none' : `${lease.holder} since ${formatTimestamp(lease.acquiredAt)} (lease epoch ${lease.epoch})`,
      style: lease === null ? ('dim' as const) : undefined,
    },
    { label: 'epoch', value: String(volume.epoch) },
    { label: 'I/O limits', value: describeQos(volume.qos) },
    {
      label: 'tier',
      value: volume.tier === null ? 'any (its chunks go wherever there is most room; pin it with shoal volume set --tier N)'
        : volume.misplacedReplicas === 0 ? String(volume.tier)
          : `${volume.tier} (${volume.misplacedReplicas} replicas on other tiers: spilled while it was full, or still moving)`,
    },
    { label: 'created', value: formatTimestamp(volume.createdAt) },
  ];
}

// ---- commands -------------------------------------------------------------------------------------

const list = defineCommand({
  path: ['volume', 'list'],
  synopsis: '',
  summary: 'list volumes: size, space allocated, chunk size, replicas, writer',
  details: ['ALLOCATED counts chunks written at least once, per replica; USE% is ALLOCATED of SIZE.'],
  parse: () => undefined,
  run: (context) =>
    show(context, (mds) => mds.listVolumes(), ({ volumes }) => {
      if (volumes.length === 0) return 'no volumes (create one with: shoal volume create NAME --size SIZE)\n';
      const byName = [...volumes].sort((a, b) => a.name.localeCompare(b.name));
      return renderTable(VOLUME_COLUMNS, byName, context.paint);
    }),
});

const info = defineCommand({
  path: ['volume', 'info'],
  synopsis: 'NAME',
  summary: 'show one volume in detail, with its current writer',
  positionals: ['NAME'],
  parse: (args) => parseVolumeName(positional(args, 0)),
  run: (context, name) => show(context, (mds) => mds.getVolume(name), (volume) => renderFields(volumeFields(volume), context.paint)),
});

const create = defineCommand({
  path: ['volume', 'create'],
  synopsis: 'NAME --size SIZE [--chunk-size SIZE] [--replicas N:M] [--tier N] [--iops-limit N] [--bandwidth-limit SIZE]',
  summary: 'create a volume (thin: space is taken as chunks are written)',
  details: [
    `NAME               1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit`,
    `--size SIZE        e.g. 10G, 500M, 1T (powers of two); at most ${formatBytes(VOLUME_BYTES_MAX)}`,
    `--chunk-size SIZE  unit of placement, a power of two from ${formatBytes(CHUNK_BYTES_MIN)} to ${formatBytes(CHUNK_BYTES_MAX)} (default ${formatBytes(CHUNK_BYTES_DEFAULT)})`,
    `--replicas N:M     keep N copies of each chunk; I/O continues while at least M are online (default: the MDS's, 3:2)`,
    `--tier N           the storage tier (0-3) its chunks go to; while it is full, the nearest tier with room (default: any`,
    `                   tier, wherever there is most room)`,
    ...QOS_DETAILS,
  ],
  options: {
    size: { type: 'string' },
    'chunk-size': { type: 'string' },
    replicas: { type: 'string' },
    tier: { type: 'string' },
    ...QOS_FLAGS,
  },
  positionals: ['NAME'],
  parse(args) {
    const chunkSize = stringFlag(args, 'chunk-size');
    const replicas = stringFlag(args, 'replicas');
    const tier = stringFlag(args, 'tier');
    const qos = parseQosFlags(args);
    return {
      name: parseVolumeName(positional(args, 0)),
      sizeBytes: parseVolumeSize(requiredFlag(args, 'size'), '--size'),
      ...(chunkSize === undefined ? {} : { chunkSizeBytes: parseChunkSize(chunkSize) }),
      ...(replicas === undefined ? {} : { replicas: parseReplicas(replicas) }),
      ...(qos === undefined ? {} : { qos }),
      ...(tier === undefined ? {} : { tier: parseTier(tier, '--tier') }),
    };
  },
  run: (context, body) =>
    show(context, (mds) => mds.createVolume(body), (volume) => `created volume "${volume.name}": ${describeVolume(volume)}` +
      `${body.qos === undefined ? '' : `; I/O limits ${describeQos(volume.qos)}`}\n`),
});

const set = defineCommand({
  path: ['volume', 'set'],
  synopsis: 'NAME [--iops-limit N] [--iops-burst N] [--bandwidth-limit SIZE] [--bandwidth-burst SIZE] [--tier N [--detach] [--timeout SECONDS]]',
  summary: 'change a volume\'s I/O limits or its tier, live: the NBD server serving it applies limits within seconds; its chunks move to a new tier',
  details: [
    ...QOS_DETAILS,
    'Limits not named stay as they are. A limit holds for the volume as a whole, however many connections serve it.',
    'Requests over the limit wait (the guest sees latency, never an error).',
    '--tier N           move the volume to tier N (0-3): new chunks go there at once, and its chunks move there while',
    '                   it stays in use; this follows the move with a progress bar',
    ...TIER_DETAILS,
  ],
  options: { ...QOS_FLAGS, tier: { type: 'string' }, ...TIER_OPTIONS },
  positionals: ['NAME'],
  parse(args) {
    const qos = parseQosFlags(args);
    const tier = stringFlag(args, 'tier');
    if (qos === undefined && tier === undefined) {
      throw new StorageError('ERR_INVALID_ARGUMENT', 'nothing to change: give at least one of --iops-limit, --iops-burst, --bandwidth-limit, --bandwidth-burst, --tier');
    }
    const timeout = stringFlag(args, 'timeout');
    const key = stringFlag(args, 'idempotency-key');
    if (tier === undefined && (timeout !== undefined || key !== undefined || booleanFlag(args, 'detach'))) {
      throw new StorageError('ERR_INVALID_ARGUMENT', '--detach, --timeout and --idempotency-key are for a change of --tier');
    }
    return {
      name: parseVolumeName(positional(args, 0)), qos, tier: tier === undefined ? null : parseTier(tier, '--tier'),
      detach: booleanFlag(args, 'detach'), timeoutMs: timeout === undefined ? null : parseTimeoutMs(timeout), idempotencyKey: key ?? null,
    };
  },
  async run(context, { name, qos, tier, detach, timeoutMs, idempotencyKey }) {
    const mds = await context.mds();
    if (qos !== undefined) {
      const before = context.json ? null : await mds.getVolume(name);
      const after = await mds.updateVolume(name, { qos });
      if (tier === null && (context.json || before === null)) return context.writeJson(after);
      if (before !== null) context.write(`volume "${name}": I/O limits ${describeQos(before.qos)} -> ${describeQos(after.qos)}\n`);
    }
    if (tier === null) return;
    const volume = await mds.getVolume(name);
    if (volume.tier === tier && idempotencyKey === null) {
      if (context.json) return context.writeJson(volume);
      return context.write(`volume "${name}" is in tier ${tier} already; nothing changed\n`);
    }
    await runTierMove(context, { kind: 'tier', volume: name, tier, ...(idempotencyKey === null ? {} : { idempotencyKey }) },
      `volume "${name}"`, { detach, timeoutMs });
  },
});

const resize = defineCommand({
  path: ['volume', 'resize'],
  synopsis: 'NAME --size [+]SIZE',
  summary: 'grow a volume (volumes never shrink)',
  details: [
    '--size SIZE   the new size, e.g. 20G',
    '--size +SIZE  grow by SIZE from the size the MDS reports just before',
    'The MDS refuses a smaller size: shrinking would cut off data the volume\'s user may hold.',
  ],
  options: { size: { type: 'string' } },
  positionals: ['NAME'],
  parse(args) {
    const text = requiredFlag(args, 'size');
    const growBy = text.trimStart().startsWith('+');
    const sizeBytes = parseVolumeSize(growBy ? text.trimStart().slice(1) : text, '--size');
    return { name: parseVolumeName(positional(args, 0)), sizeBytes, growBy };
  },
  async run(context, { name, sizeBytes, growBy }) {
    const mds = await context.mds();
    // The current size is only needed for a relative size and to tell a person what changed.
    const before = growBy || !context.json ? await mds.getVolume(name) : null;
    const targetBytes = growBy && before !== null ? before.sizeBytes + sizeBytes : sizeBytes;
    const after = await mds.resizeVolume(name, targetBytes);
    if (context.json) return context.writeJson(after);
    const fromBytes = before?.sizeBytes ?? after.sizeBytes;
    context.write(
      fromBytes === after.sizeBytes
        ? `volume "${name}" is already ${formatBytes(after.sizeBytes)}; nothing changed\n`
        : `resized volume "${name}": ${formatBytes(fromBytes)} -> ${formatBytes(after.sizeBytes)}\n`,
    );
  },
});

const remove = defineCommand({
  path: ['volume', 'delete'],
  synopsis: 'NAME [--force]',
  summary: 'delete a volume and free its chunks (no prompt: scripts use it)',
  details: [
    '--force  delete even while a client has it open for write; that client is fenced and its I/O fails',
    'Without --force the MDS refuses to delete a volume that is open for write.',
  ],
  options: { force: { type: 'boolean' } },
  positionals: ['NAME'],
  parse: (args) => ({ name: parseVolumeName(positional(args, 0)), force: booleanFlag(args, 'force') }),
  async run(context, { name, force }) {
    const mds = await context.mds();
    // Read first, so that the confirmation says what was lost; scripts with --json skip it.
    const volume = context.json ? null : await mds.getVolume(name);
    const body = await mds.deleteVolume(name, force);
    if (context.json || volume === null) return context.writeJson(body);
    const writer = volume.lease === null ? '' : `; its writer ${volume.lease.holder} is fenced`;
    context.write(
      `deleted volume "${name}": ${describeVolume(volume)}, ${volume.chunkCount} chunks allocated${writer}\n`,
    );
  },
});

const fence = defineCommand({
  path: ['volume', 'fence'],
  synopsis: 'NAME',
  summary: 'take the write lease from the volume\'s writer (forced unlock, e.g. its hypervisor died holding it)',
  details: [
    'The lease epoch grows and every chunk server learns it before this returns: writes from the old holder are',
    'rejected from then on, and the next open for write succeeds at once instead of waiting for the lease to expire.',
    'Use it when the writer is gone for good; a writer still running loses its writes (its I/O fails).',
  ],
  positionals: ['NAME'],
  parse: (args) => parseVolumeName(positional(args, 0)),
  async run(context, name) {
    const mds = await context.mds();
    // Read first, so that the message can say whose lease was taken; scripts with --json skip it.
    const before = context.json ? null : await mds.getVolume(name);
    const after = await mds.fenceWriter(name);
    if (context.json || before === null) return context.writeJson(after);
    const epochs = `lease epoch ${before.epoch} -> ${after.epoch}`;
    const lease = before.lease;
    context.write(
      lease === null
        ? `volume "${name}" had no writer; fenced anyway (${epochs}): writes from any older lease are rejected\n`
        : `fenced volume "${name}": took the write lease from ${lease.holder} (held since ${formatTimestamp(lease.acquiredAt)}; ` +
          `${epochs}); its writes are rejected from now on, and the next open for write succeeds\n`,
    );
  },
});

export const volumeCommands: readonly Command[] = [list, info, create, resize, set, fence, remove];
