// `shoal quarantine ...`: replicas chunk servers hold that the chunk map does not count on (a
// crashed allocation, a deleted volume's replica on a server that was away, or, after an MDS
// database was restored from an old copy, replicas of data the map has lost). They are never
// deleted on sight: listed here and in `shoal stat`, deleted on an admin's word, or after the
// MDS's grace period unless they are newer than the map.

import { StorageError } from '../../errors.ts';
import type { QuarantinedReplica } from '../../protocol/api.ts';
import { formatBytes } from '../../util/size.ts';
import { booleanFlag, defineCommand, show, stringFlag, type Command } from '../command.ts';
import { formatTimestamp } from '../format.ts';
import { renderTable, type Column } from '../table.ts';

const COLUMNS: ReadonlyArray<Column<QuarantinedReplica>> = [
  { header: 'CHUNK', align: 'right', value: (r) => String(r.chunkId) },
  { header: 'CS', align: 'right', value: (r) => String(r.csId) },
  { header: 'VOLUME', align: 'right', value: (r) => String(r.volumeId) },
  { header: 'INDEX', align: 'right', value: (r) => String(r.chunkIndex) },
  { header: 'VERSION', align: 'right', value: (r) => String(r.version) },
  { header: 'SIZE', align: 'right', value: (r) => formatBytes(r.sizeBytes) },
  { header: 'NEWER', value: (r) => (r.newerThanMap ? 'yes' : 'no'), style: (r) => (r.newerThanMap ? 'red' : undefined) },
  { header: 'SINCE', value: (r) => formatTimestamp(r.since) },
  { header: 'DELETED AFTER', value: (r) => (r.deleteAfter === null ? 'never by itself' : formatTimestamp(r.deleteAfter)) },
  { header: 'WHY', value: (r) => r.reason },
];

const list = defineCommand({
  path: ['quarantine', 'list'],
  synopsis: '[--limit N]',
  summary: 'list replicas the chunk map does not count on, kept aside instead of deleted',
  details: [
    '--limit N   show at most N (default 1000)',
    'NEWER = yes: made by an MDS state newer than the running one (its database was restored or lost). Such',
    'replicas are never deleted by themselves: take them back with shoal mds rebuild, or delete them with',
    'shoal quarantine delete --include-newer once you know their data is not needed.',
  ],
  options: { limit: { type: 'string' } },
  parse(args) {
    const text = stringFlag(args, 'limit') ?? '1000';
    const limit = Number(text);
    if (!/^\d+$/.test(text) || limit < 1 || limit > 100_000) {
      throw new StorageError('ERR_INVALID_ARGUMENT', `--limit must be a number from 1 to 100000, got "${text}"`);
    }
    return limit;
  },
  run: (context, limit) =>
    show(context, (mds) => mds.listQuarantine(limit), ({ replicas, truncated }) => {
      if (replicas.length === 0) return 'no replica is quarantined\n';
      const table = renderTable(COLUMNS, replicas, context.paint);
      return truncated ? `${table}(more are quarantined: raise --limit)\n` : table;
    }),
});

function parseReplicaKey(text: string): { chunkId: number; csId: number } {
  const match = /^(\d+):(\d+)$/.exec(text);
  if (match === null) throw new StorageError('ERR_INVALID_ARGUMENT', `a replica is CHUNK:CS (the CHUNK and CS columns of shoal quarantine list), got "${text}"`);
  return { chunkId: Number(match[1]), csId: Number(match[2]) };
}

const remove = defineCommand({
  path: ['quarantine', 'delete'],
  synopsis: '(--all | CHUNK:CS ...) [--include-newer]',
  summary: 'delete quarantined replicas: the admin\'s confirmation',
  details: [
    'CHUNK:CS          one replica (the CHUNK and CS columns of shoal quarantine list); several may be given',
    '--all             every quarantined replica',
    '--include-newer   also replicas newer than the map, whose data may exist nowhere else',
  ],
  options: { all: { type: 'boolean' }, 'include-newer': { type: 'boolean' } },
  anyPositionals: true,
  parse(args) {
    const all = booleanFlag(args, 'all');
    if (all === (args.positionals.length > 0)) throw new StorageError('ERR_INVALID_ARGUMENT', 'give --all or CHUNK:CS replicas, not both, not neither');
    return { all, replicas: args.positionals.map(parseReplicaKey), includeNewer: booleanFlag(args, 'include-newer') };
  },
  run: (context, body) =>
    show(context, (mds) => mds.deleteQuarantined(body), ({ queued, keptNewer }) =>
      `${queued} replicas queued for deletion` +
        (keptNewer > 0 ? `; ${keptNewer} newer than the map kept (add --include-newer to delete them too)` : '') + '\n'),
});

export const quarantineCommands: readonly Command[] = [list, remove];
