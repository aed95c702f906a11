// The parts of the MDS state machine that keep a lost or rolled-back map from destroying data,
// checked on in-memory tables: generations and lost ranges (generations.ts), the quarantine ops,
// and the rebuild plan (rebuild.ts) that takes back what chunk servers hold.

import t from 'tap';
import { lostRange, newerThanMapTest, proposedGeneration } from '../src/mds/generations.ts';
import { MemoryTables } from '../src/mds/memory_tables.ts';
import { tablesWithServers } from './helpers/mds_tables.ts';
import { planRebuild, type ServerHoldings } from '../src/mds/rebuild.ts';
import type { ChunkListEntry } from '../src/protocol/cs_messages.ts';

const MiB = 1024 ** 2;

function cluster(servers = 3): MemoryTables {
  const tables = tablesWithServers(servers);
  tables.submit({ type: 'reserveChunkIds', count: 100 });
  return tables;
}

function replica(chunkId: number, volumeId: number, chunkIndex: number, version: number, generation: number): ChunkListEntry {
  return { chunkId, volumeId, chunkIndex, version, generation, sizeBytes: 8 * MiB };
}

t.test('generations grow with replica-changing ops; a server ahead of the map reveals a lost range', async (t) => {
  const tables = cluster();
  const volume = tables.submit({ type: 'createVolume', name: 'v', sizeBytes: 64 * MiB, chunkSizeBytes: 8 * MiB, replicasNormal: 3, replicasMin: 2, nowMs: 2 });
  if (volume.type !== 'volume') throw new Error('volume expected');
  t.equal(proposedGeneration(tables), 1, 'commands of the first replica-changing op carry generation 1');
  tables.submit({ type: 'allocateChunk', volumeId: volume.record.id, chunkIndex: 0, chunkId: 1, replicas: [1, 2, 3] });
  tables.submit({ type: 'setChunkReplicas', volumeId: volume.record.id, chunkIndex: 0, version: 2, replicas: [1, 2], deleteFrom: [3], inDoubt: [] });
  t.equal(tables.getMeta('generation'), 2, 'allocation and a set change each move the generation');
  t.equal(lostRange(tables, 2, 10), null, 'a server at the map\'s generation proves nothing lost');
  const range = lostRange(tables, 7, 10);
  t.same(range, { lowExclusive: 2, highInclusive: 7, foundAtMs: 10 }, 'a server at 7 proves 3..7 lost');
  tables.submit({ type: 'recordLostGenerations', lowExclusive: 2, highInclusive: 7, nowMs: 10 });
  t.equal(tables.getMeta('generation'), 7, 'the map jumps past the lost range: new commands never reuse it');
  tables.submit({ type: 'recordLostGenerations', lowExclusive: 2, highInclusive: 5, nowMs: 11 });
  t.equal(tables.listLostGenerations().length, 1, 'a range already covered is not recorded twice');
  tables.submit({ type: 'allocateChunk', volumeId: volume.record.id, chunkIndex: 1, chunkId: 2, replicas: [1, 2, 3] });
  const newer = newerThanMapTest(tables);
  t.ok(newer(5), 'a replica from the lost range is newer than the map, even once the map has moved past it');
  t.notOk(newer(2), 'one from before the loss is not');
  t.notOk(newer(8), 'one made after the jump (known to the map) is not');
  t.ok(newer(9), 'one above the map\'s generation is');
});

t.test('quarantine: newer stays newer; an admin\'s release queues the deletion', async (t) => {
  const tables = cluster();
  const entry = { chunkId: 50, csId: 1, volumeId: 9, chunkIndex: 0, version: 3, generation: 4, sizeBytes: 8 * MiB, reason: 'test' };
  tables.submit({ type: 'quarantineReplicas', entries: [{ ...entry, newerThanMap: true }], nowMs: 100 });
  tables.submit({ type: 'quarantineReplicas', entries: [{ ...entry, newerThanMap: false }], nowMs: 200 });
  t.match(tables.getQuarantined(50, 1), { newerThanMap: true, sinceMs: 100 }, 'a later look never downgrades a newer replica, nor resets its age');
  tables.submit({ type: 'releaseQuarantined', entries: [{ chunkId: 50, csId: 1 }] });
  t.equal(tables.getQuarantined(50, 1), undefined, 'released');
  t.same(tables.getPendingDelete(50)?.csIds, [1], 'and queued for deletion from its server');
});

t.test('rebuild: volumes by name and epoch, chunks from their newest copies, conflicts left alone', async (t) => {
  const tables = cluster(4);
  const kept = tables.submit({ type: 'createVolume', name: 'kept', sizeBytes: 64 * MiB, chunkSizeBytes: 8 * MiB, replicasNormal: 3, replicasMin: 2, nowMs: 2 });
  if (kept.type !== 'volume') throw new Error('volume expected');
  tables.submit({ type: 'allocateChunk', volumeId: kept.record.id, chunkIndex: 0, chunkId: 1, replicas: [1, 2, 3] });
  const description = { name: 'web', sizeBytes: 128 * MiB, replicasNormal: 3, replicasMin: 2 };
  const holdings: ServerHoldings[] = [
    {
      csId: 1,
      chunks: [replica(1, kept.record.id, 0, 1, 1), replica(70, 7, 2, 5, 9), replica(71, kept.record.id, 3, 2, 9)],
      volumes: [{ volumeId: 7, description, fenceEpoch: 12 }, { volumeId: kept.record.id, description: null, fenceEpoch: 1 }],
    },
    { csId: 2, chunks: [replica(70, 7, 2, 5, 9), replica(72, kept.record.id, 0, 4, 9)], volumes: [{ volumeId: 7, description, fenceEpoch: 15 }] },
    { csId: 3, chunks: [replica(70, 7, 2, 4, 8), replica(71, kept.record.id, 3, 2, 9)], volumes: [] },
    { csId: 4, chunks: [replica(73, 8, 0, 1, 9)], volumes: [{ volumeId: 8, description: { ...description, name: 'kept' }, fenceEpoch: 3 }] },
  ];
  const plan = planRebuild(tables, holdings, 1_000);
  t.match(plan, { volumesAdopted: 2, chunksAdopted: 3, conflicts: 1 }, 'two volumes and three chunks come back; one index conflicts');
  for (const op of plan.ops) tables.submit(op);
  t.match(tables.getVolume(7), { name: 'web', sizeBytes: 128 * MiB, epoch: 15, replicasNormal: 3 },
    'a lost volume comes back with its name and size, and an epoch at the highest fence its servers hold');
  t.match(tables.getVolume(8), { name: 'kept-recovered-8' }, 'a name taken meanwhile gets a suffix');
  t.match(tables.getChunk(7, 2), { chunkId: 70, version: 5, replicas: [1, 2] }, 'the newest copies are the members');
  t.ok((tables.getChunk(7, 2)?.inDoubt ?? []).length > 0, 'and are compared before anything else');
  t.same(tables.getPendingDelete(70)?.csIds, [3], 'the older copy stays outside the set, to be brought up to date or removed');
  t.match(tables.getChunk(kept.record.id, 3), { chunkId: 71, replicas: [1, 3] }, 'a chunk the map lacked in a volume it has comes back');
  t.match(tables.getChunk(kept.record.id, 0), { chunkId: 1 }, 'a conflicting index keeps the map\'s chunk');
  t.ok(tables.getMeta('nextChunkId') > 73, 'chunk ids seen on the servers are never handed out again');
  t.ok(tables.getMeta('nextVolumeId') > 8, 'nor volume ids');
  const again = planRebuild(tables, holdings, 2_000);
  t.match(again, { volumesAdopted: 0, chunksAdopted: 0 }, 'a second rebuild finds nothing more to take back');
});
