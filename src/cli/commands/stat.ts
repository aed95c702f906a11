// `shoal stat`: the cluster at a glance, for the first look during an incident: are servers
// missing, is space running out, is any data below its replica count. Then the per-server space
// table, with the same columns as `shoal cs list`.

import type { ClusterStat } from '../../protocol/api.ts';
import { formatBytes } from '../../util/size.ts';
import { defineCommand, show, type Command } from '../command.ts';
import { formatPercent } from '../format.ts';
import { renderFields, renderTable, type Field, type Style } from '../table.ts';
import { SERVER_SPACE_COLUMNS, sortedById } from './cs.ts';

/** Red when some data waits for servers, yellow when it lacks copies, green when all is well. */
function chunkStyle(byState: ClusterStat['chunks']['byState']): Style {
  if (byState.endangered > 0 || byState.unavailable > 0) return 'red';
  return byState.degraded > 0 ? 'yellow' : 'green';
}

export function statFields(stat: ClusterStat): Field[] {
  const { chunkServers, space, volumes, chunks } = stat;
  const { healthy, degraded, endangered, unavailable } = chunks.byState;
  return [
    {
      label: 'chunk servers',
      value: `${chunkServers.online} online, ${chunkServers.offline} offline (${chunkServers.total} registered)`,
      style: chunkServers.offline > 0 ? 'red' : undefined,
    },
    {
      label: 'space',
      value: `${formatBytes(space.capacityBytes)} capacity, ${formatBytes(space.usedBytes)} used ` +
        `(${formatPercent(space.usedBytes, space.capacityBytes)}), ${formatBytes(space.freeBytes)} free`,
    },
    { label: 'volumes', value: `${volumes.count}, ${formatBytes(volumes.sizeBytes)} provisioned` },
    {
      label: 'chunks',
      value: `${chunks.total}: ${healthy} healthy, ${degraded} degraded, ${endangered} endangered, ${unavailable} unavailable`,
      style: chunkStyle(chunks.byState),
    },
  ];
}

const stat = defineCommand({
  path: ['stat'],
  synopsis: '',
  summary: 'cluster summary: servers, space, volumes, chunk health; space per server',
  details: [
    'Chunk states: healthy = every replica online; degraded = fewer than the normal count but at least the minimum;',
    'endangered = fewer than the minimum online, so I/O to them waits; unavailable = no replica online.',
  ],
  parse: () => undefined,
  run: (context) =>
    show(context, (mds) => mds.stat(), (body) => {
      const summary = renderFields(statFields(body), context.paint);
      if (body.servers.length === 0) return summary;
      return `${summary}\n${renderTable(SERVER_SPACE_COLUMNS, sortedById(body.servers), context.paint)}`;
    }),
});

export const statCommands: readonly Command[] = [stat];
