// The MDS state machine (ops.ts) on in-memory tables, and placement (placement.ts): the rules an
// admin relies on, checked without a disk or a network.

import t from 'tap';
import { StorageError } from '../src/errors.ts';
import { MemoryTables } from '../src/mds/memory_tables.ts';
import { tablesWithServers } from './helpers/mds_tables.ts';
import { chooseReplicas, type PlacementCandidate } from '../src/mds/placement.ts';
import { seededRandom } from '../src/util/clock.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

const cluster = tablesWithServers;

function createVolume(tables: MemoryTables, name = 'vol'): number {
  const result = tables.submit({ type: 'createVolume', name, sizeBytes: 10 * GiB, chunkSizeBytes: 64 * MiB, replicasNormal: 3, replicasMin: 2, nowMs: 2 });
  if (result.type !== 'volume') throw new Error('expected a volume');
  return result.record.id;
}

t.test('volume limits: stored with the volume, a limit always with its burst', async (t) => {
  const tables = cluster();
  const id = createVolume(tables);
  t.equal(tables.getVolume(id)?.qos, undefined, 'a volume created without limits has none');
  const limits = { iopsLimit: 500, iopsBurst: 50, bandwidthLimitBytesPerSecond: 0, bandwidthBurstBytes: 0 };
  tables.submit({ type: 'updateVolume', volumeId: id, qos: { iopsLimit: 500, iopsBurst: 50 } });
  t.same(tables.getVolume(id)?.qos, limits);
  tables.submit({ type: 'updateVolume', volumeId: id, qos: { bandwidthLimitBytesPerSecond: MiB } });
  t.same(tables.getVolume(id)?.qos, { ...limits, bandwidthLimitBytesPerSecond: MiB, bandwidthBurstBytes: MiB },
    'a second change is resolved against the first: both limits hold');
  t.throws(() => tables.submit({ type: 'updateVolume', volumeId: id, sizeBytes: 20 * GiB, qos: { iopsBurst: 10, iopsLimit: 0 } }),
    { code: 'ERR_INVALID_ARGUMENT' });
  t.equal(tables.getVolume(id)?.sizeBytes, 10 * GiB, 'a refused change of limits leaves the size alone too: all or nothing');
  tables.submit({ type: 'updateVolume', volumeId: id, sizeBytes: 20 * GiB });
  t.equal(tables.getVolume(id)?.sizeBytes, 20 * GiB);
  t.throws(() => tables.submit({ type: 'updateVolume', volumeId: id + 1, qos: limits }), { code: 'ERR_NOT_FOUND' });
});

t.test('volumes: unique names, grow-only resize, delete queues replica removal', async (t) => {
  const tables = cluster();
  const id = createVolume(tables);
  t.throws(() => createVolume(tables), { code: 'ERR_VOLUME_EXISTS' });
  t.throws(() => tables.submit({ type: 'resizeVolume', volumeId: id, sizeBytes: GiB }), { code: 'ERR_SHRINK_REFUSED' });
  tables.submit({ type: 'resizeVolume', volumeId: id, sizeBytes: 20 * GiB });
  t.equal(tables.getVolume(id)?.sizeBytes, 20 * GiB);
  const range = tables.submit({ type: 'reserveChunkIds', count: 10 });
  t.match(range, { type: 'chunkIdRange', firstChunkId: 1, count: 10 });
  tables.submit({ type: 'allocateChunk', volumeId: id, chunkIndex: 0, chunkId: 1, replicas: [1, 2, 3] });
  tables.submit({ type: 'allocateChunk', volumeId: id, chunkIndex: 5, chunkId: 2, replicas: [3, 1, 2] });
  t.throws(() => tables.submit({ type: 'allocateChunk', volumeId: id, chunkIndex: 10_000, chunkId: 3, replicas: [1, 2, 3] }), { code: 'ERR_OUT_OF_RANGE' });
  t.equal(tables.countChunks(id), 2);
  tables.submit({ type: 'deleteVolume', volumeId: id });
  t.equal(tables.getVolumeIdByName('vol'), undefined);
  t.equal(tables.countChunks(id), 0);
  t.same(tables.listPendingDeletes(10).map((p) => p.chunkId).sort(), [1, 2]);
  tables.submit({ type: 'replicaDeleted', chunkId: 1, csId: 1 });
  t.same(tables.getPendingDelete(1)?.csIds, [2, 3]);
});

t.test('invariants stop loudly', async (t) => {
  const tables = cluster();
  const id = createVolume(tables);
  tables.submit({ type: 'reserveChunkIds', count: 4 });
  t.throws(() => tables.submit({ type: 'allocateChunk', volumeId: id, chunkIndex: 0, chunkId: 1, replicas: [1, 1, 2] }), { name: 'AssertionError' });
  t.throws(() => tables.submit({ type: 'allocateChunk', volumeId: id, chunkIndex: 0, chunkId: 99, replicas: [1, 2, 3] }), /reserved range/);
  t.throws(() => tables.submit({ type: 'allocateChunk', volumeId: id, chunkIndex: 0, chunkId: 1, replicas: [1] }), /at least min/);
  t.equal(tables.countChunks(id), 0, 'a failed op leaves no trace');
});

t.test('write leases: one holder, epochs only grow, forced takeover', async (t) => {
  const tables = cluster();
  const id = createVolume(tables);
  tables.submit({ type: 'acquireLease', volumeId: id, holder: 'hv1', leaseId: 'a', force: false, nowMs: 3 });
  t.equal(tables.getVolume(id)?.epoch, 1);
  const refused = (() => {
    try {
      tables.submit({ type: 'acquireLease', volumeId: id, holder: 'hv2', leaseId: 'b', force: false, nowMs: 4 });
    } catch (error) {
      return error;
    }
    return null;
  })();
  t.ok(refused instanceof StorageError && refused.code === 'ERR_VOLUME_LEASED');
  t.match((refused as Error).message, /hv1/, 'the refusal names the holder');
  tables.submit({ type: 'acquireLease', volumeId: id, holder: 'hv2', leaseId: 'b', force: true, nowMs: 5 });
  t.equal(tables.getVolume(id)?.epoch, 2);
  tables.submit({ type: 'releaseLease', volumeId: id, leaseId: 'a' });
  t.equal(tables.getVolume(id)?.lease?.holder, 'hv2', 'a stale release does not drop the new holder');
  tables.submit({ type: 'releaseLease', volumeId: id, leaseId: 'b' });
  t.equal(tables.getVolume(id)?.lease, null);
});

function candidates(count: number, freeFraction: (i: number) => number, host: (i: number) => string): PlacementCandidate[] {
  return Array.from({ length: count }, (_, index) => ({
    csId: index + 1,
    host: host(index),
    rack: `rack${index % 2}`,
    tier: 0,
    capacityBytes: 100 * GiB,
    freeBytes: Math.floor(100 * GiB * freeFraction(index)),
  }));
}

t.test('placement: distinct domains, least full first, refuses below min', async (t) => {
  const random = seededRandom(7);
  const six = candidates(6, (i) => 0.1 + i * 0.15, (i) => `h${Math.floor(i / 2)}`);
  const request = { count: 3, minimum: 2, chunkSizeBytes: 64 * MiB, exclude: [] as PlacementCandidate[], tier: 0 };
  const byHost = chooseReplicas(six, { ...request, failureDomain: 'host' }, random);
  t.same(byHost, [6, 4, 2], 'the emptiest server of each host');
  const hosts = new Set(byHost.map((id) => six[id - 1]!.host));
  t.equal(hosts.size, 3, 'three hosts');
  const byRack = chooseReplicas(six, { ...request, failureDomain: 'rack' }, random);
  t.equal(byRack.length, 2, 'only two racks: two replicas (min is 2)');
  t.throws(() => chooseReplicas(six.slice(0, 2), { ...request, minimum: 3, count: 3, failureDomain: 'host' }, random), {
    code: 'ERR_NOT_ENOUGH_SERVERS',
  });
  const full = candidates(3, () => 0.001, (i) => `h${i}`);
  t.throws(() => chooseReplicas(full, { ...request, failureDomain: 'disk' }, random), { code: 'ERR_NO_SPACE' });
  const local = chooseReplicas(six, { ...request, failureDomain: 'host', preferHost: 'h0' }, random);
  t.equal(six[local[0]! - 1]!.host, 'h0', 'the writer\'s host gets the first replica');
});

t.test('placement spreads equal servers evenly over many chunks', async (t) => {
  const random = seededRandom(11);
  const servers = candidates(6, () => 0.5, (i) => `h${i}`);
  const counts = new Map<number, number>();
  for (let chunk = 0; chunk < 3000; chunk += 1) {
    for (const id of chooseReplicas(servers, { count: 3, minimum: 2, chunkSizeBytes: MiB, failureDomain: 'host', exclude: [], tier: 0 }, random)) {
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
  }
  for (const [id, count] of counts) t.ok(count > 1300 && count < 1700, `server ${id} got ${count} of 9000 replicas`);
});

t.test('drain tasks: one per server, idempotency keys, pause/resume/cancel move the server, done only when empty', async (t) => {
  const tables = cluster(4);
  const id = createVolume(tables);
  tables.submit({ type: 'reserveChunkIds', count: 10 });
  tables.submit({ type: 'allocateChunk', volumeId: id, chunkIndex: 0, chunkId: 1, replicas: [1, 2, 3] });
  tables.submit({ type: 'allocateChunk', volumeId: id, chunkIndex: 1, chunkId: 2, replicas: [1, 3, 4] });
  const start = (csId: number, idempotencyKey: string | null = null, joinRunning = false) => {
    const result = tables.submit({ type: 'startDrainTask', csId, idempotencyKey, joinRunning, nowMs: 10 });
    if (result.type !== 'task') throw new Error('expected a task');
    return result;
  };
  const first = start(1, 'key-1');
  t.match(first, { created: true, record: { id: 1, kind: 'drain', chunkServerId: 1, state: 'running', itemsTotal: 2, bytesTotal: 2 * 64 * MiB } });
  t.equal(tables.getChunkServer(1)?.adminState, 'draining', 'the server drains');
  t.match(start(1, 'key-1'), { created: undefined, record: { id: 1 } }, 'the same key again: the same task, not a second one');
  t.throws(() => start(1), { code: 'ERR_TASK_CONFLICT', message: /already being drained by task 1 .*shoal task wait 1/ }, 'a second drain is refused, naming the task');
  t.throws(() => start(2, 'key-1'), { code: 'ERR_CONFLICT', message: /key "key-1" belongs to task 1/ }, 'a key names one request');
  t.match(start(1, null, true), { record: { id: 1 } }, 'the older drain route joins the drain going');

  const move = (taskId: number, state: 'running' | 'paused' | 'done' | 'failed' | 'cancelled') =>
    tables.submit({ type: 'setTaskState', taskId, state, error: state === 'cancelled' ? 'by an admin' : null, nowMs: 20 });
  move(1, 'paused');
  t.equal(tables.getChunkServer(1)?.adminState, 'active', 'paused: the server serves again, nothing moves');
  t.throws(() => move(1, 'done'), { code: 'ERR_CONFLICT' }, 'a paused task is not done');
  move(1, 'running');
  t.equal(tables.getChunkServer(1)?.adminState, 'draining', 'resumed: it drains again');
  t.throws(() => move(1, 'done'), { code: 'ERR_CONFLICT', message: /still holds replicas/ }, 'done only when the map places nothing on it');
  tables.submit({ type: 'recordTaskProgress', taskId: 1, itemsDone: 1, itemsTotal: 2, bytesDone: 64 * MiB, bytesTotal: 128 * MiB, nowMs: 30 });
  t.throws(() => tables.submit({ type: 'recordTaskProgress', taskId: 1, itemsDone: 0, itemsTotal: 2, bytesDone: 0, bytesTotal: 128 * MiB, nowMs: 31 }),
    /only grow/, 'progress never goes back');
  tables.submit({ type: 'setChunkReplicas', volumeId: id, chunkIndex: 0, version: 2, replicas: [2, 3, 4], deleteFrom: [1], inDoubt: [] });
  tables.submit({ type: 'setChunkReplicas', volumeId: id, chunkIndex: 1, version: 2, replicas: [3, 4, 2], deleteFrom: [1], inDoubt: [] });
  t.match(move(1, 'done'), { record: { state: 'done', itemsDone: 2, finishedAtMs: 20 } }, 'empty: done');
  t.equal(tables.getChunkServer(1)?.adminState, 'draining', 'a drained server stays draining until removed');
  t.throws(() => move(1, 'running'), { code: 'ERR_CONFLICT', message: /cannot become running/ }, 'a finished task stays finished');

  // Removed before the task saw the server empty (cs drain --wait && cs rm): the drain is done, not cancelled.
  const third = start(4);
  const onFour = tables.listServerChunks(4, undefined, 10);
  for (const key of onFour) {
    const chunk = tables.getChunk(key.volumeId, key.chunkIndex);
    if (chunk === undefined) throw new Error('a listed chunk exists');
    const replicas = chunk.replicas.filter((csId) => csId !== 4);
    tables.submit({ type: 'setChunkReplicas', volumeId: key.volumeId, chunkIndex: key.chunkIndex, version: chunk.version + 1,
      replicas: [...replicas, 1].slice(0, 3), deleteFrom: [4], inDoubt: [] });
  }
  tables.submit({ type: 'setChunkServerState', csId: 4, adminState: 'removed', nowMs: 35 });
  t.match(tables.getTask(third.record.id), { state: 'done', error: null, itemsDone: onFour.length, itemsTotal: onFour.length, finishedAtMs: 35 },
    'a drain whose server was removed once empty is done');

  const second = start(3);
  const paused = move(second.record.id, 'paused');
  t.match(paused, { record: { itemsDone: 0, itemsTotal: 2 } }, 'a pause records the progress as of the pause');
  move(second.record.id, 'running');
  tables.submit({ type: 'setChunkServerState', csId: 3, adminState: 'active', nowMs: 40 });
  t.match(tables.getTask(second.record.id), { state: 'cancelled', error: /made active \(shoal cs activate\)/, finishedAtMs: 40 },
    'cs activate cancels the drain going on it');
  t.match(start(3), { created: true }, 'and a new drain can start');
});
