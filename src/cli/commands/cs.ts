// `shoal cs ...`: the chunk servers as the MDS sees them (state from heartbeats, health and space
// as each server last reported), and taking one out of service: drain (the MDS moves its replicas
// off in the background), rebalance (move replicas from the fullest servers to the emptiest),
// activate (cancel a drain), rm (forget an emptied server). The server
// table's columns are exported because `shoal stat` shows the space part of the same table and
// must read the same way.

import { StorageError } from '../../errors.ts';
import type { ChunkServerInfo, TaskInfo } from '../../protocol/api.ts';
import type { MdsClient } from '../../protocol/mds_client.ts';
import { formatBytes } from '../../util/size.ts';
import { booleanFlag, defineCommand, positional, show, stringFlag, type Command } from '../command.ts';
import { formatAgeMs, formatDuration, formatPercent, formatTimestamp } from '../format.ts';
import { followTask } from '../task_follow.ts';
import { TIER_DETAILS, TIER_OPTIONS, parseTier, runTierMove } from '../tier_move.ts';
import { renderFields, renderTable, type Column, type Style } from '../table.ts';

type ServerColumn = Column<ChunkServerInfo>;

function address(server: ChunkServerInfo): string {
  return `${server.host}:${server.port}`;
}

function failureDomain(server: ChunkServerInfo): string {
  const { rack, host } = server.failureDomain;
  return rack === '' ? host : `${rack}/${host}`;
}

/**
 * "online", or with the admin state when it is not active: "online/draining", "offline/removed";
 * in a maintenance window "offline/maintenance", once it ran out "offline/maintenance-overrun";
 * with a disk far slower than its peers' "online/ill".
 */
function serverState(server: ChunkServerInfo): string {
  const phase = server.maintenance?.phase;
  const admin = server.adminState === 'active' ? [] : [server.adminState];
  // Past its window a server that is back is simply online; one still away is overrunning.
  const maintenance = phase === 'window' ? ['maintenance'] : phase === 'grace' && server.state !== 'online' ? ['maintenance-overrun'] : [];
  return [server.state, ...admin, ...maintenance, ...(server.ill === null ? [] : ['ill'])].join('/');
}

/** Removed servers fade out; a draining one is on its way out; offline is the alarm, unless planned. */
function serverStateStyle(server: ChunkServerInfo): Style {
  if (server.adminState === 'removed') return 'dim';
  if (server.maintenance?.phase === 'window') return 'yellow';
  if (server.state !== 'online' || server.ill !== null) return 'red';
  return server.adminState === 'draining' ? 'yellow' : 'green';
}

function describeAdminState(server: ChunkServerInfo): string {
  if (server.adminState === 'draining') return `draining: ${replicas(server.mappedReplicaCount)} left to move off`;
  if (server.adminState === 'removed') return 'removed: takes no replicas';
  return 'active';
}

const idColumn: ServerColumn = { header: 'ID', align: 'right', value: (s) => String(s.id) };
const addressColumn: ServerColumn = { header: 'ADDRESS', value: address };
const stateColumn: ServerColumn = { header: 'STATE', value: serverState, style: serverStateStyle };
const spaceColumns: readonly ServerColumn[] = [
  { header: 'CAPACITY', align: 'right', value: (s) => formatBytes(s.capacityBytes) },
  { header: 'USED', align: 'right', value: (s) => formatBytes(s.usedBytes) },
  { header: 'FREE', align: 'right', value: (s) => formatBytes(s.freeBytes) },
  { header: 'USE%', align: 'right', value: (s) => formatPercent(s.usedBytes, s.capacityBytes) },
];
// Stored (reported by the server) and mapped (placed there by the MDS) differ while replicas are
// being repaired or deleted; a lasting difference is worth a look.
const replicaColumns: readonly ServerColumn[] = [
  { header: 'REPLICAS', align: 'right', value: (s) => String(s.chunkCount) },
  { header: 'MAPPED', align: 'right', value: (s) => String(s.mappedReplicaCount) },
];

export const SERVER_SPACE_COLUMNS: readonly ServerColumn[] = [idColumn, addressColumn, stateColumn, ...spaceColumns, ...replicaColumns];

const SERVER_COLUMNS: readonly ServerColumn[] = [
  idColumn,
  addressColumn,
  stateColumn,
  { header: 'HEALTHY', value: (s) => (s.healthy ? 'yes' : 'no'), style: (s) => (s.healthy ? undefined : 'red') },
  { header: 'TIER', align: 'right', value: (s) => String(s.tier) },
  { header: 'DOMAIN', value: failureDomain },
  ...spaceColumns,
  ...replicaColumns,
];

export function sortedById(servers: readonly ChunkServerInfo[]): ChunkServerInfo[] {
  return [...servers].sort((a, b) => a.id - b.id);
}

const list = defineCommand({
  path: ['cs', 'list'],
  synopsis: '',
  summary: 'list chunk servers: state, health, failure domain, space, replicas',
  details: [
    'STATE is offline when the MDS has not heard a heartbeat lately, followed by /draining or /removed when an',
    'admin took the server out of service (shoal cs drain, shoal cs rm). HEALTHY is no after disk errors',
    '(see `shoal cs info ID` for the error). REPLICAS is what the server stores, MAPPED what the MDS placed there.',
  ],
  parse: () => undefined,
  run: (context) =>
    show(context, (mds) => mds.listChunkServers(), ({ chunkServers }) =>
      chunkServers.length === 0 ? 'no chunk servers registered\n' : renderTable(SERVER_COLUMNS, sortedById(chunkServers), context.paint),
    ),
});

const info = defineCommand({
  path: ['cs', 'info'],
  synopsis: 'ID|UUID',
  summary: 'show one chunk server in detail, with its last disk error',
  positionals: ['ID|UUID'],
  parse: (args) => positional(args, 0),
  async run(context, key) {
    const { chunkServers } = await (await context.mds()).listChunkServers();
    const server = chunkServers.find((s) => String(s.id) === key || s.uuid === key);
    if (server === undefined) {
      throw new StorageError('ERR_NOT_FOUND', `no chunk server with id or uuid "${key}" (see shoal cs list)`);
    }
    if (context.json) return context.writeJson(server);
    context.write(
      renderFields(
        [
          { label: 'id', value: String(server.id) },
          { label: 'uuid', value: server.uuid },
          { label: 'address', value: address(server) },
          { label: 'metrics', value: server.metricsPort === 0 ? 'off' : `http://${server.host}:${server.metricsPort}/metrics` },
          { label: 'state', value: server.state, style: server.state === 'online' ? 'green' : 'red' },
          { label: 'admin state', value: describeAdminState(server), style: server.adminState === 'active' ? undefined : serverStateStyle(server) },
          { label: 'last heartbeat', value: formatAgeMs(server.lastHeartbeatAgeMs) },
          {
            label: 'healthy',
            value: server.healthy ? 'yes' : `no: ${server.lastError || 'disk errors'}`,
            style: server.healthy ? undefined : 'red',
          },
          ...(server.healthy && server.lastError !== '' ? [{ label: 'last error', value: server.lastError }] : []),
          ...(server.ill === null ? [] : [{
            label: 'ill',
            value: `since ${formatTimestamp(server.ill.since)}: ${server.ill.reason}; reads and new chunks avoid it (replace the disk, or drain it)`,
            style: 'red' as const,
          }]),
          { label: 'failure domain', value: failureDomain(server) },
          { label: 'tier', value: String(server.tier) },
          ...(server.maintenance === null || server.maintenance.phase === 'over' ? [] : [{
            label: 'maintenance',
            value: server.maintenance.phase === 'window'
              ? `until ${formatTimestamp(server.maintenance.until)}: its replicas wait for it; no new chunks`
              : `ran out at ${formatTimestamp(server.maintenance.until)}; if away, its replicas are replaced from ` +
                `${formatTimestamp(server.maintenance.replicasReplacedFrom)} (extend: shoal cs maintenance ${server.id} --for DURATION)`,
            style: server.maintenance.phase === 'window' ? 'yellow' as const : 'red' as const,
          }]),
          { label: 'capacity', value: formatBytes(server.capacityBytes) },
          { label: 'used', value: `${formatBytes(server.usedBytes)} (${formatPercent(server.usedBytes, server.capacityBytes)})` },
          { label: 'free', value: formatBytes(server.freeBytes) },
          { label: 'replicas', value: `${server.chunkCount} stored, ${server.mappedReplicaCount} mapped here by the MDS` },
          { label: 'registered', value: formatTimestamp(server.registeredAt) },
        ],
        context.paint,
      ),
    );
  },
});

// ---- taking a server out of service -------------------------------------------------------------

export function parseServerId(text: string): number {
  const id = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(id)) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `chunk server ID must be a number (the ID column of shoal cs list), got "${text}"`);
  }
  return id;
}

/** "90s", "30m", "2h", "1d" (or a plain number of seconds) in milliseconds. */
export function parseDurationMs(text: string, flag: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$/.exec(text);
  const unitMs = { '': 1_000, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[match?.[2] ?? ''] ?? 1_000;
  const ms = match === null ? NaN : Math.round(Number(match[1]) * unitMs);
  if (!(ms >= 1_000) || ms > 7 * 86_400_000) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `${flag} must be a duration from 1s to 7d such as 90s, 30m, 2h or 1d, got "${text}"`);
  }
  return ms;
}

export function parseTimeoutMs(text: string): number {
  const seconds = Number(text);
  if (!/^\s*\d+(\.\d+)?\s*$/.test(text) || !(seconds > 0)) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `--timeout must be a number of seconds greater than 0, got "${text}"`);
  }
  return Math.round(seconds * 1000);
}

function named(server: ChunkServerInfo): string {
  return `chunk server ${server.id} (${address(server)})`;
}

function replicas(count: number): string {
  return count === 1 ? '1 replica' : `${count} replicas`;
}

async function serverById(mds: MdsClient, id: number): Promise<ChunkServerInfo> {
  const server = (await mds.listChunkServers()).chunkServers.find((s) => s.id === id);
  if (server === undefined) throw new StorageError('ERR_NOT_FOUND', `chunk server ${id} is not listed by the MDS`);
  return server;
}

function describeDrainStart(server: ChunkServerInfo): string {
  if (server.mappedReplicaCount === 0) return `${named(server)} is draining and holds no replicas\n`;
  const source = server.state === 'online' ? '' : `; it is ${server.state}, so the copies are made from the other replicas`;
  return `${named(server)} is draining: the MDS moves its ${replicas(server.mappedReplicaCount)} to other servers ` +
    `in the background${source}\n`;
}

function drainNextSteps(server: ChunkServerInfo, task: TaskInfo): string {
  if (server.mappedReplicaCount === 0) return `remove it with: shoal cs rm ${server.id}\n`;
  return `task ${task.id}: follow it with: shoal task wait ${task.id}; pause it with: shoal task pause ${task.id}; ` +
    `cancel it with: shoal task cancel ${task.id}\n`;
}

const drain = defineCommand({
  path: ['cs', 'drain'],
  synopsis: 'ID [--wait] [--timeout SECONDS] [--idempotency-key KEY]',
  summary: 'move every replica off a chunk server (in the background), to remove it or take it down safely',
  details: [
    'ID                 the ID column of shoal cs list',
    '--wait             follow the drain\'s task until the server holds no replicas (as shoal task wait): a progress bar',
    '                   on a terminal, a line every few seconds otherwise, then a final line (with --json: the server\'s final state)',
    '--timeout SECONDS  with --wait: stop waiting after SECONDS and exit 1; the drain itself goes on',
    '--idempotency-key KEY  the same KEY again returns the task it started instead of being refused (for scripts that retry)',
    'The drain is a task (shoal task list): it survives an MDS restart; a second drain of a server with one going is',
    'refused, naming the task; shoal task pause|resume|cancel ID control it.',
    'The MDS places no new replicas on a draining server and copies each of its replicas to another server,',
    'keeping every chunk\'s copies in distinct failure domains, at the recovery rate limit (shoal stat shows it).',
    'The drain runs in the MDS: it goes on if this command stops waiting, is interrupted or loses its connection.',
    'Next: shoal cs rm ID once it is empty, or shoal task cancel TASK (or shoal cs activate ID) to keep the server.',
  ],
  options: { wait: { type: 'boolean' }, timeout: { type: 'string' }, 'idempotency-key': { type: 'string' } },
  positionals: ['ID'],
  parse(args) {
    const timeout = stringFlag(args, 'timeout');
    const wait = booleanFlag(args, 'wait');
    if (timeout !== undefined && !wait) throw new StorageError('ERR_INVALID_ARGUMENT', '--timeout bounds --wait: give both');
    const key = stringFlag(args, 'idempotency-key');
    return {
      id: parseServerId(positional(args, 0)), wait, timeoutMs: timeout === undefined ? null : parseTimeoutMs(timeout),
      ...(key === undefined ? {} : { idempotencyKey: key }),
    };
  },
  async run(context, { id, wait, timeoutMs, idempotencyKey }) {
    const mds = await context.mds();
    const task = await mds.startTask({ kind: 'drain', chunkServerId: id, ...(idempotencyKey === undefined ? {} : { idempotencyKey }) });
    const server = await serverById(mds, id);
    if (!wait) {
      if (context.json) return context.writeJson(task);
      // A key that names a drain that ended: say so, rather than that one starts.
      if (task.state !== 'running') return context.write(`task ${task.id} (drain of chunk server ${id}, key ${task.idempotencyKey ?? '-'}) is ${task.state}\n`);
      return context.write(describeDrainStart(server) + drainNextSteps(server, task));
    }
    if (!context.json) context.write(describeDrainStart(server));
    const startMs = Date.now();
    const done = await followTask(context, task.id, timeoutMs);
    const final = await serverById(mds, id);
    if (context.json) return context.writeJson(final);
    const moved = done.progress.itemsDone;
    const what = moved === 0 ? 'it holds no replicas' : `${replicas(moved)} moved off in ${formatDuration(Date.now() - startMs)}`;
    context.write(`${named(final)} is drained: ${what}; remove it with: shoal cs rm ${id}\n`);
  },
});

const activate = defineCommand({
  path: ['cs', 'activate'],
  synopsis: 'ID',
  summary: 'return a draining chunk server to service: it takes new replicas again',
  details: [
    'Cancels a drain: the replicas still on the server stay there, those already moved stay where they went.',
    'A removed server cannot be activated (wipe its data directory and start it again: it registers as a new server).',
  ],
  positionals: ['ID'],
  parse: (args) => parseServerId(positional(args, 0)),
  run: (context, id) =>
    show(context, (mds) => mds.setChunkServerState(id, 'activate'), (server) => {
      const kept = server.mappedReplicaCount === 0 ? '' : ` and keeps the ${replicas(server.mappedReplicaCount)} it holds`;
      return `${named(server)} is active: it takes new replicas${kept}\n`;
    }),
});

const remove = defineCommand({
  path: ['cs', 'rm'],
  synopsis: 'ID',
  summary: 'remove an emptied chunk server from the cluster for good (drain it first)',
  details: [
    'Drain it first: shoal cs drain ID --wait. The MDS refuses while any replica is still placed on the server.',
    'A removed server is never placed on again and stays listed as removed; stop its process afterwards. Its data',
    'directory cannot rejoin the cluster: wipe it to use the disk again.',
  ],
  positionals: ['ID'],
  parse: (args) => parseServerId(positional(args, 0)),
  run: (context, id) =>
    show(context, (mds) => mds.setChunkServerState(id, 'remove'), (server) => {
      const running = server.state === 'online' ? '; it is still running: stop its process' : '';
      return `removed ${named(server)}: no replica will be placed on it again${running}\n`;
    }),
});

const maintenance = defineCommand({
  path: ['cs', 'maintenance'],
  synopsis: 'ID (--for DURATION | --end)',
  summary: 'let a chunk server go down for a window (a reboot, a kernel or firmware update) without its replicas being copied elsewhere',
  details: [
    '--for DURATION  the window from now: 90s, 30m, 2h, 1d (at most 7d); run it again to extend or shorten it',
    '--end           end the window now (the server is back for good)',
    'During the window the server takes no new chunks and, while it is away, its chunks wait for it: writes go on',
    'with their other replicas (below their normal count: shoal stat shows them degraded), and when it returns it',
    'copies only the blocks that changed meanwhile. When the window runs out with the server still away, the MDS',
    'warns (cs list: maintenance-overrun) and waits another --replace-after-ms before replacing its replicas.',
  ],
  options: { for: { type: 'string' }, end: { type: 'boolean' } },
  positionals: ['ID'],
  parse(args) {
    const forText = stringFlag(args, 'for');
    const end = booleanFlag(args, 'end');
    if ((forText === undefined) === !end) throw new StorageError('ERR_INVALID_ARGUMENT', 'give --for DURATION (start or change the window) or --end');
    return { id: parseServerId(positional(args, 0)), forMs: forText === undefined ? null : parseDurationMs(forText, '--for') };
  },
  run: (context, { id, forMs }) =>
    show(context, (mds) => mds.setMaintenance(id, forMs === null ? null : Math.ceil(forMs / 1000)), (server) =>
      server.maintenance === null || server.maintenance.phase === 'over'
        ? `${named(server)} is out of maintenance: its replicas are replaced as usual when it is away` +
          (server.state === 'online' ? '\n' : ` (it is ${server.state}: recovery replaces its replicas once it has been away for --replace-after-ms)\n`)
        : `${named(server)} is in maintenance until ${formatTimestamp(server.maintenance.until)}: stop it when you like; ` +
          `its chunks wait for it, then it copies only what changed (end it early with: shoal cs maintenance ${server.id} --end)\n`),
});

const rebalance = defineCommand({
  path: ['cs', 'rebalance'],
  synopsis: '[--threshold PCT] [--wait] [--timeout SECONDS] [--idempotency-key KEY]',
  summary: 'move replicas from the fullest chunk servers to the emptiest until their used space is within PCT points',
  details: [
    '--threshold PCT    balance to within PCT points of used space, 1-99 (default: the MDS\'s --rebalance-threshold, 10)',
    '--wait             follow the rebalance\'s task to its end (as shoal task wait)',
    '--timeout SECONDS  with --wait: stop waiting after SECONDS and exit 1; the rebalance itself goes on',
    '--idempotency-key KEY  the same KEY again returns the task it started instead of being refused (for scripts that retry)',
    'The MDS also starts a rebalance by itself whenever the servers drift further apart than its --rebalance-threshold',
    '(a new server joined, say); this command balances now, or tighter. One rebalance runs at a time: a second is',
    'refused, naming the task. It is a task: shoal task pause|resume|cancel ID control it; after a cancel the MDS starts',
    'none by itself for an hour. Replicas move one chunk at a time (a copy is added, then the old one leaves), keeping',
    'every chunk\'s copies in distinct failure domains, at the recovery rate limit, after recovery and drains.',
    'It fails, saying why, when no replica can move (failure domains or full servers in the way).',
  ],
  options: { threshold: { type: 'string' }, wait: { type: 'boolean' }, timeout: { type: 'string' }, 'idempotency-key': { type: 'string' } },
  parse(args) {
    const timeout = stringFlag(args, 'timeout');
    const wait = booleanFlag(args, 'wait');
    if (timeout !== undefined && !wait) throw new StorageError('ERR_INVALID_ARGUMENT', '--timeout bounds --wait: give both');
    const threshold = stringFlag(args, 'threshold');
    const key = stringFlag(args, 'idempotency-key');
    return {
      wait, timeoutMs: timeout === undefined ? null : parseTimeoutMs(timeout),
      ...(threshold === undefined ? {} : { thresholdPercent: parseThresholdPercent(threshold) }),
      ...(key === undefined ? {} : { idempotencyKey: key }),
    };
  },
  async run(context, { wait, timeoutMs, thresholdPercent, idempotencyKey }) {
    const mds = await context.mds();
    const task = await mds.startTask({
      kind: 'rebalance', ...(thresholdPercent === undefined ? {} : { thresholdPercent }), ...(idempotencyKey === undefined ? {} : { idempotencyKey }),
    });
    const started = `task ${task.id}: rebalancing the chunk servers to within ${task.thresholdPercent ?? '?'} points of used space\n`;
    if (!wait) {
      if (context.json) return context.writeJson(task);
      if (task.state !== 'running') return context.write(`task ${task.id} (rebalance, key ${task.idempotencyKey ?? '-'}) is ${task.state}\n`);
      return context.write(started + `follow it with: shoal task wait ${task.id}; pause it with: shoal task pause ${task.id}; ` +
        `cancel it with: shoal task cancel ${task.id}\n`);
    }
    if (!context.json) context.write(started);
    const startMs = Date.now();
    const done = await followTask(context, task.id, timeoutMs);
    if (context.json) return context.writeJson(done);
    const moved = done.progress.itemsDone;
    context.write(`the chunk servers are balanced to within ${done.thresholdPercent ?? '?'} points: ` +
      `${moved === 0 ? 'nothing had to move' : `${replicas(moved)} moved in ${formatDuration(Date.now() - startMs)}`}\n`);
  },
});

const setTier = defineCommand({
  path: ['cs', 'set-tier'],
  synopsis: 'ID TIER [--detach] [--timeout SECONDS] [--idempotency-key KEY]',
  summary: 'change a chunk server\'s tier, live: the replicas of other tiers\' volumes on it move off',
  details: [
    'ID                 the ID column of shoal cs list',
    'TIER               0-3; kept across restarts of the server, whatever its --tier flag says',
    'Nothing is removed and re-added: the server keeps serving, new chunks of its new tier\'s volumes come to it,',
    'and the replicas on it of volumes of other tiers move to servers of their tier (followed here with a progress bar).',
    ...TIER_DETAILS,
  ],
  options: TIER_OPTIONS,
  positionals: ['ID', 'TIER'],
  parse(args) {
    const timeout = stringFlag(args, 'timeout');
    const key = stringFlag(args, 'idempotency-key');
    return {
      id: parseServerId(positional(args, 0)), tier: parseTier(positional(args, 1), 'TIER'), detach: booleanFlag(args, 'detach'),
      timeoutMs: timeout === undefined ? null : parseTimeoutMs(timeout), ...(key === undefined ? {} : { idempotencyKey: key }),
    };
  },
  async run(context, { id, tier, detach, timeoutMs, idempotencyKey }) {
    const server = await serverById(await context.mds(), id);
    if (server.tier === tier && idempotencyKey === undefined) {
      if (context.json) return context.writeJson(server);
      return context.write(`${named(server)} is in tier ${tier} already; nothing changed\n`);
    }
    await runTierMove(context, { kind: 'tier', chunkServerId: id, tier, ...(idempotencyKey === undefined ? {} : { idempotencyKey }) },
      named(server), { detach, timeoutMs });
  },
});

function parseThresholdPercent(text: string): number {
  const value = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(value) || value < 1 || value > 99) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `--threshold must be a whole number of percentage points from 1 to 99, got "${text}"`);
  }
  return value;
}

export const csCommands: readonly Command[] = [list, info, drain, rebalance, maintenance, setTier, activate, remove];
