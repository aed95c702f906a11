// `shoal cs ...`: the chunk servers as the MDS sees them (state from heartbeats, health and space
// as each server last reported). The server table's columns are exported because `shoal stat`
// shows the space part of the same table and must read the same way.

import { StorageError } from '../../errors.ts';
import type { ChunkServerInfo } from '../../protocol/api.ts';
import { formatBytes } from '../../util/size.ts';
import { defineCommand, positional, show, type Command } from '../command.ts';
import { formatAgeMs, formatPercent, formatTimestamp } from '../format.ts';
import { renderFields, renderTable, type Column } from '../table.ts';

type ServerColumn = Column<ChunkServerInfo>;

function address(server: ChunkServerInfo): string {
  return `${server.host}:${server.port}`;
}

function failureDomain(server: ChunkServerInfo): string {
  const { rack, host } = server.failureDomain;
  return rack === '' ? host : `${rack}/${host}`;
}

const idColumn: ServerColumn = { header: 'ID', align: 'right', value: (s) => String(s.id) };
const addressColumn: ServerColumn = { header: 'ADDRESS', value: address };
const stateColumn: ServerColumn = {
  header: 'STATE',
  value: (s) => s.state,
  style: (s) => (s.state === 'online' ? 'green' : 'red'),
};
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
    'STATE is offline when the MDS has not heard a heartbeat lately; HEALTHY is no after disk errors',
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
          { label: 'last heartbeat', value: formatAgeMs(server.lastHeartbeatAgeMs) },
          {
            label: 'healthy',
            value: server.healthy ? 'yes' : `no: ${server.lastError || 'disk errors'}`,
            style: server.healthy ? undefined : 'red',
          },
          ...(server.healthy && server.lastError !== '' ? [{ label: 'last error', value: server.lastError }] : []),
          { label: 'failure domain', value: failureDomain(server) },
          { label: 'tier', value: String(server.tier) },
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

export const csCommands: readonly Command[] = [list, info];
