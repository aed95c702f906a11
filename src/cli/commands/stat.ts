// `shoal stat`: the cluster at a glance, for the first look during an incident: is any data below
// its replica count (then a warning line comes first), are servers missing, is space running out,
// is recovery copying. Then the per-server space table, with the same columns as `shoal cs list`.

import type { ChunkServerReadCacheInfo, ClusterStat, ReadCacheInfo } from '../../protocol/api.ts';
import { formatBytes } from '../../util/size.ts';
import { defineCommand, show, type Command } from '../command.ts';
import { formatPercent, formatRate } from '../format.ts';
import { renderFields, renderTable, type Field, type Style } from '../table.ts';
import { SERVER_SPACE_COLUMNS, sortedById } from './cs.ts';

/** Red when some data waits for servers, yellow when it lacks copies, green when all is well. */
function chunkStyle(byState: ClusterStat['chunks']['byState']): Style {
  if (byState.endangered > 0 || byState.unavailable > 0) return 'red';
  return byState.degraded > 0 ? 'yellow' : 'green';
}

/**
 * The first line when any chunk is not healthy, worst first, so that it is not lost among the
 * fields (with colour off it is the only emphasis there is); null when every chunk is healthy.
 */
export function chunkWarning(stat: ClusterStat): string | null {
  const { total, byState } = stat.chunks;
  const { degraded, endangered, unavailable } = byState;
  const notHealthy = degraded + endangered + unavailable;
  if (notHealthy === 0) return null;
  const parts = [
    unavailable > 0 ? `${unavailable} unavailable (no replica online)` : '',
    endangered > 0 ? `${endangered} endangered (fewer than the minimum online: I/O waits)` : '',
    degraded > 0 ? `${degraded} degraded (fewer copies than normal)` : '',
  ].filter((part) => part !== '');
  return `WARNING: ${notHealthy} of ${total} chunks not healthy: ${parts.join(', ')}`;
}

function serverCounts(stat: ClusterStat): { value: string; alarm: boolean } {
  const { total, online, offline } = stat.chunkServers;
  const draining = stat.servers.filter((s) => s.adminState === 'draining').length;
  const removed = stat.servers.filter((s) => s.adminState === 'removed').length;
  const outOfService = [draining > 0 ? `${draining} draining` : '', removed > 0 ? `${removed} removed` : ''].filter((part) => part !== '');
  // The MDS's totals leave removed servers out; the count of registrations includes them.
  const registered = [`${total + removed} registered`, ...outOfService].join(', ');
  // A removed server that was stopped is offline as it should be: no alarm for it.
  const alarm = stat.servers.some((s) => s.state !== 'online' && s.adminState !== 'removed');
  return { value: `${online} online, ${offline} offline (${registered})`, alarm };
}

function recoveryFields(recovery: ClusterStat['recovery']): Field[] {
  const { running, pending, blocked, succeeded, failed, copiedBytes, bytesPerSecondLimit } = recovery;
  const history = `${succeeded} succeeded, ${failed} failed since the MDS started`;
  const busy = running > 0 || pending > 0;
  const limit = bytesPerSecondLimit === 0 ? 'no rate limit' : `rate limit ${formatRate(bytesPerSecondLimit)}`;
  return [
    {
      label: 'recovery',
      value: busy ? `${running} replica changes running, ${pending} pending (${history})` : `idle (${history})`,
      style: busy ? 'yellow' : undefined,
    },
    ...(recovery.waiting === 0 ? [] : [{
      label: 'waiting',
      value: `${recovery.waiting} chunks miss members that are expected back (restarting or unreachable servers): nothing is copied for them yet`,
      style: 'yellow' as const,
    }]),
    ...(blocked === 0 ? [] : [{
      label: 'blocked',
      value: `${blocked} chunks need a replica but no eligible server is left in a free failure domain: add or activate servers`,
      style: 'red' as const,
    }]),
    { label: 'copied', value: `${formatBytes(copiedBytes)} between chunk servers since the MDS started; ${limit}` },
  ];
}

export function statFields(stat: ClusterStat): Field[] {
  const { space, volumes, chunks } = stat;
  const { healthy, degraded, endangered, unavailable } = chunks.byState;
  const servers = serverCounts(stat);
  return [
    { label: 'chunk servers', value: servers.value, style: servers.alarm ? 'red' : undefined },
    {
      label: 'space',
      value: `${formatBytes(space.capacityBytes)} capacity, ${formatBytes(space.usedBytes)} used ` +
        `(${formatPercent(space.usedBytes, space.capacityBytes)}), ${formatBytes(space.freeBytes)} free`,
    },
    ...illFields(stat),
    ...readCacheFields(stat),
    ...tierFields(stat),
    { label: 'volumes', value: `${volumes.count}, ${formatBytes(volumes.sizeBytes)} provisioned` },
    {
      label: 'chunks',
      value: `${chunks.total}: ${healthy} healthy, ${degraded} degraded, ${endangered} endangered, ${unavailable} unavailable`,
      style: chunkStyle(chunks.byState),
    },
    ...recoveryFields(stat.recovery),
    ...quarantineFields(stat.quarantine),
  ];
}

/** A line per read cache, the hypervisors' then the chunk servers': fill and hit ratio lately. */
function readCacheFields(stat: ClusterStat): Field[] {
  const line = (label: string, cache: ReadCacheInfo | ChunkServerReadCacheInfo): Field => ({
    label,
    value: `${formatBytes(cache.usedBytes)} of ${formatBytes(cache.capacityBytes)}, ` +
      `${cache.hitRatio === null ? 'no reads lately' : `${(cache.hitRatio * 100).toFixed(1)} % hits lately`}; ` +
      `${cache.admissions} blocks taken in, ${cache.evictions} evicted since its start` +
      (cache.corrupt === 0 ? '' : `; ${cache.corrupt} damaged blocks found (the cache device may be failing)`),
    style: cache.corrupt > 0 ? 'yellow' as const : undefined,
  });
  return [
    ...stat.readCaches.map((cache) => line(`read cache ${cache.hypervisor}`, cache)),
    // An MDS older than chunk-server caches sends none.
    ...(stat.chunkServerReadCaches ?? []).map((cache) => line(`read cache cs ${cache.csId}`, cache)),
  ];
}

/** A line per chunk server whose disk is ill: what is slow, and by how much. */
function illFields(stat: ClusterStat): Field[] {
  return stat.servers.filter((server) => server.ill !== null && server.adminState !== 'removed').map((server) => ({
    label: `ill: cs ${server.id}`,
    value: `${server.ill?.reason ?? ''}; reads and new chunks avoid it (replace the disk, or drain it: shoal cs drain ${server.id})`,
    style: 'red' as const,
  }));
}

/**
 * One line per tier when there is more than one (or anything sits on the wrong tier): space,
 * replicas, and what is misplaced (spilled while a tier was full, or still moving after a change of tier).
 */
function tierFields(stat: ClusterStat): Field[] {
  const misplaced = stat.tiers.some((tier) => tier.misplacedReplicas > 0);
  if (stat.tiers.length < 2 && !misplaced) return [];
  const fields: Field[] = stat.tiers.map((tier) => ({
    label: `tier ${tier.tier}`,
    value: `${tier.online}/${tier.servers} servers online, ${formatBytes(tier.usedBytes)} of ${formatBytes(tier.capacityBytes)} used ` +
      `(${formatPercent(tier.usedBytes, tier.capacityBytes)}), ${tier.volumes} volumes, ${tier.replicas} replicas` +
      (tier.misplacedReplicas === 0 ? '' : `, ${tier.misplacedReplicas} of other tiers' volumes`) +
      (tier.elsewhereReplicas === 0 ? '' : `, ${tier.elsewhereReplicas} of its volumes' on other tiers`),
    style: tier.misplacedReplicas > 0 ? 'yellow' as const : undefined,
  }));
  const stuck = stat.recovery.misplacedStuck;
  if (stuck > 0) {
    fields.push({
      label: 'misplaced',
      value: `${stuck} chunks (of those the last plan looked at) wait for a server of their tier with room in a free failure domain: ` +
        'they move once there is one; add servers or capacity to that tier',
      style: 'yellow',
    });
  }
  return fields;
}

function quarantineFields(quarantine: ClusterStat['quarantine']): Field[] {
  const { replicas, newerThanMap, bytes } = quarantine;
  if (replicas === 0) return [];
  const newer = newerThanMap === 0 ? '' : `; ${newerThanMap} newer than the map (kept until shoal mds rebuild or an admin decides)`;
  return [{
    label: 'quarantine',
    value: `${replicas} replicas (${formatBytes(bytes)}) the map does not count on, kept aside${newer}: shoal quarantine list`,
    style: newerThanMap > 0 ? 'red' : 'yellow',
  }];
}

const stat = defineCommand({
  path: ['stat'],
  synopsis: '',
  summary: 'cluster summary: chunk health, servers, space, volumes, recovery; space per server',
  details: [
    'Chunk states: healthy = every replica online; degraded = fewer than the normal count but at least the minimum;',
    'endangered = fewer than the minimum online, so I/O to them waits; unavailable = no replica online.',
    'A WARNING line comes first when any chunk is not healthy.',
    'Tiers (with more than one): each tier\'s space and replicas, and replicas on the wrong tier (spilled while their tier',
    'was full, or still moving after shoal volume set --tier or shoal cs set-tier).',
    'Recovery: replica changes (re-replication, drains, tier moves, rebalancing) running and still planned, and the bytes',
    'copied for them, paced by the MDS\'s --recovery-bytes-per-second.',
  ],
  parse: () => undefined,
  run: (context) =>
    show(context, (mds) => mds.stat(), (body) => {
      const warning = chunkWarning(body);
      const fields = renderFields(statFields(body), context.paint);
      const summary = warning === null ? fields : `${context.paint(warning, chunkStyle(body.chunks.byState))}\n\n${fields}`;
      if (body.servers.length === 0) return summary;
      return `${summary}\n${renderTable(SERVER_SPACE_COLUMNS, sortedById(body.servers), context.paint)}`;
    }),
});

export const statCommands: readonly Command[] = [stat];
