// What `shoal top` draws (pure): from the MDS's stat and I/O rates, the lines of one screen, each
// cut to the terminal's width and no more lines than its height, so that it fits an 80x24 SSH
// session and never scrolls. Cluster health, space per tier, chunk states and recovery first;
// then the busiest volumes and chunk servers, sorted by the key the user chose.

import type { ClusterStat, IoRates, IoStatsReply } from '../protocol/api.ts';
import { formatBytes } from '../util/size.ts';
import { formatPercent, formatRate } from './format.ts';
import { chunkWarning } from './commands/stat.ts';
import { renderTable, type Column, type Painter, type Style } from './table.ts';

export const TOP_SORT_KEYS = ['iops', 'bandwidth', 'latency', 'name'] as const;
export type TopSortKey = (typeof TOP_SORT_KEYS)[number];

/** The key that selects each sort order. */
export const TOP_SORT_BY_KEY: Readonly<Record<string, TopSortKey>> = { i: 'iops', b: 'bandwidth', l: 'latency', n: 'name' };

export interface TopFrame {
  readonly stat: ClusterStat | null;
  readonly io: IoStatsReply | null;
  /** The cluster's recovery copy rate between the last two refreshes, or null before two. */
  readonly recoveryBytesPerSecond: number | null;
  readonly sort: TopSortKey;
  /** Why the figures may be stale (the MDS unreachable), or ''. */
  readonly note: string;
  readonly nowIso: string;
  readonly intervalMs: number;
}

type VolumeRow = IoStatsReply['volumes'][number];
type ServerRow = IoStatsReply['chunkServers'][number] & { readonly address: string; readonly state: string; readonly tier: number };

const iops = (rates: IoRates): number => rates.readIops + rates.writeIops;
const bandwidth = (rates: IoRates): number => rates.readBytesPerSecond + rates.writeBytesPerSecond;
const latency = (rates: IoRates): number => Math.max(rates.readLatencyMs, rates.writeLatencyMs);

function sorter<Row extends IoRates>(sort: TopSortKey, name: (row: Row) => string): (a: Row, b: Row) => number {
  switch (sort) {
    case 'iops':
      return (a, b) => iops(b) - iops(a) || name(a).localeCompare(name(b));
    case 'bandwidth':
      return (a, b) => bandwidth(b) - bandwidth(a) || name(a).localeCompare(name(b));
    case 'latency':
      return (a, b) => latency(b) - latency(a) || name(a).localeCompare(name(b));
    case 'name':
      return (a, b) => name(a).localeCompare(name(b), undefined, { numeric: true });
  }
}

const rate = (value: number): string => value.toFixed(0);
const ms = (value: number): string => (value === 0 ? '-' : value < 10 ? value.toFixed(2) : value.toFixed(1));
const perSecond = (bytes: number): string => formatBytes(Math.round(bytes));

function ioColumns<Row extends IoRates>(): Column<Row>[] {
  return [
    { header: 'R IOPS', align: 'right', value: (row) => rate(row.readIops) },
    { header: 'W IOPS', align: 'right', value: (row) => rate(row.writeIops) },
    { header: 'READ/s', align: 'right', value: (row) => perSecond(row.readBytesPerSecond) },
    { header: 'WRITE/s', align: 'right', value: (row) => perSecond(row.writeBytesPerSecond) },
    { header: 'R ms', align: 'right', value: (row) => ms(row.readLatencyMs) },
    { header: 'W ms', align: 'right', value: (row) => ms(row.writeLatencyMs) },
  ];
}

const NAME_WIDTH_MAX = 20;

function cut(text: string, width: number): string {
  return text.length <= width ? text : `${text.slice(0, width - 1)}~`;
}

const VOLUME_COLUMNS: readonly Column<VolumeRow>[] = [
  { header: 'VOLUME', value: (row) => cut(row.name, NAME_WIDTH_MAX) },
  ...ioColumns<VolumeRow>(),
  { header: 'NBD', align: 'right', value: (row) => String(row.servedBy) },
];

const SERVER_COLUMNS: readonly Column<ServerRow>[] = [
  { header: 'CS', align: 'right', value: (row) => String(row.id) },
  { header: 'ADDRESS', value: (row) => cut(row.address, NAME_WIDTH_MAX) },
  { header: 'T', align: 'right', value: (row) => String(row.tier) },
  ...ioColumns<ServerRow>(),
  { header: 'STATE', value: (row) => row.state, style: (row) => (row.state === 'online' ? undefined : 'red') },
];

/** Space per tier: "tier 0: 1.2 GiB of 30 GiB used (4.0%)". */
function tierSpace(stat: ClusterStat): string[] {
  const byTier = new Map<number, { capacityBytes: number; usedBytes: number; servers: number }>();
  for (const server of stat.servers) {
    if (server.adminState === 'removed') continue;
    const tier = byTier.get(server.tier) ?? { capacityBytes: 0, usedBytes: 0, servers: 0 };
    tier.capacityBytes += server.capacityBytes;
    tier.usedBytes += server.usedBytes;
    tier.servers += 1;
    byTier.set(server.tier, tier);
  }
  return [...byTier].sort(([a], [b]) => a - b).map(([tier, space]) =>
    `tier ${tier}: ${formatBytes(space.usedBytes)} of ${formatBytes(space.capacityBytes)} used ` +
    `(${formatPercent(space.usedBytes, space.capacityBytes)}), ${space.servers} servers`);
}

/** The screen's lines, at most `rows`, each at most `columns` wide (plain text before painting). */
export function renderTop(frame: TopFrame, columns: number, rows: number, paint: Painter): string[] {
  const width = Math.max(20, columns);
  const lines: Array<{ text: string; style?: Style | undefined }> = [];
  const push = (text: string, style?: Style): void => {
    lines.push({ text: cut(text, width), style });
  };
  push(`shoal top  ${frame.nowIso}  every ${frame.intervalMs / 1000}s  sort: ${frame.sort}  (i b l n: sort, q: quit)`, 'bold');
  const { stat, io } = frame;
  if (frame.note !== '') push(frame.note, 'red');
  if (stat !== null) {
    const warning = chunkWarning(stat);
    const { healthy, degraded, endangered, unavailable } = stat.chunks.byState;
    push(warning ?? `health: OK, ${stat.chunkServers.online} of ${stat.chunkServers.total} chunk servers online`,
      warning === null ? (stat.chunkServers.offline > 0 ? 'yellow' : 'green') : endangered + unavailable > 0 ? 'red' : 'yellow');
    push(`chunks: ${stat.chunks.total} (${healthy} healthy, ${degraded} degraded, ${endangered} endangered, ${unavailable} unavailable)  ` +
      `volumes: ${stat.volumes.count}`);
    for (const tier of tierSpace(stat)) push(`space ${tier}`);
    const { running, pending, blocked } = stat.recovery;
    const busy = running + pending + blocked > 0;
    push(busy
      ? `recovery: ${running} running, ${pending} pending, ${blocked} blocked, copying ${formatRate(frame.recoveryBytesPerSecond)}`
      : 'recovery: idle', busy ? 'yellow' : undefined);
  }
  if (io !== null && stat !== null) {
    const servers = new Map(stat.servers.map((server) => [server.id, server]));
    const serverRows: ServerRow[] = io.chunkServers.map((row) => {
      const server = servers.get(row.id);
      return {
        ...row,
        address: server === undefined ? '?' : `${server.host}:${server.port}`,
        state: server === undefined ? 'unknown' : server.adminState === 'active' ? server.state : `${server.state}/${server.adminState}`,
        tier: server?.tier ?? 0,
      };
    });
    // What is left after the header: volumes get the larger share, chunk servers at least a few rows.
    const left = rows - lines.length - 4;
    const serverRowsShown = Math.min(serverRows.length, Math.max(3, Math.floor(left / 3)));
    const volumeRowsShown = Math.max(1, left - serverRowsShown);
    const volumes = [...io.volumes].sort(sorter<VolumeRow>(frame.sort, (row) => row.name)).slice(0, volumeRowsShown);
    push('');
    const volumeTable = volumes.length === 0
      ? ['no volume I/O reported by any NBD server in the last 15 s']
      : renderTable(VOLUME_COLUMNS, volumes, (text) => text).trimEnd().split('\n');
    for (const [index, line] of volumeTable.entries()) push(line, index === 0 && volumes.length > 0 ? 'bold' : undefined);
    push('');
    const shownServers = serverRows.sort(sorter<ServerRow>(frame.sort, (row) => String(row.id).padStart(6))).slice(0, serverRowsShown);
    const serverTable = shownServers.length === 0
      ? ['no chunk server has reported I/O yet']
      : renderTable(SERVER_COLUMNS, shownServers, (text) => text).trimEnd().split('\n');
    for (const [index, line] of serverTable.entries()) {
      const row = index === 0 ? undefined : shownServers[index - 1];
      push(line, index === 0 ? 'bold' : row !== undefined && row.state.startsWith('online') ? undefined : 'red');
    }
  }
  return lines.slice(0, Math.max(1, rows)).map((line) => paint(line.text, line.style));
}
