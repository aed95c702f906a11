// The chunk indexes the MDS's LMDB tables keep with the records (chunk id, each server's chunks,
// per-server counts, the chunks that need the planner) against the plain walks of the in-memory
// tables, over seeded random ops on a real database; after a reopen; and rebuilt for a database
// that lacks them. Then the bounded reads built on them (map_scans.ts): the planner's windows
// cover exactly the chunks that can need something and plan as a walk of the whole map does, and
// the stat's health counts equal a full count.

import t, { type Test } from 'tap';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from 'lmdb';
import { seededRandom } from '../src/util/clock.ts';
import { MemoryTables } from '../src/mds/memory_tables.ts';
import { LmdbTables, MDS_DB_TABLES_MAX, MdsStore } from '../src/mds/store.ts';
import type { MdsOp } from '../src/mds/ops.ts';
import type { ChunkKey, MdsTables, VolumeRecord } from '../src/mds/model.ts';
import { chunkHealth, plannerChunk, recoveryWindow, WINDOW_START } from '../src/mds/map_scans.ts';
import { planRecovery, type PlannerServer } from '../src/mds/recovery.ts';

const SERVERS = 6;
const CHUNK_BYTES = 1024 * 1024;
const SEED = Number(process.env['SEED'] ?? 7);

/** Both tables answer every index question alike. */
function sameIndexes(t: Test, lmdb: MdsTables, memory: MdsTables, label: string): void {
  const all = (list: (after: ChunkKey | undefined) => ChunkKey[]): ChunkKey[] => {
    const out: ChunkKey[] = [];
    for (let page = list(undefined); page.length > 0; page = list(page.at(-1))) out.push(...page);
    return out;
  };
  for (let csId = 1; csId <= SERVERS; csId += 1) {
    t.same(lmdb.serverMapped(csId), memory.serverMapped(csId), `${label}: counts of server ${csId}`);
    t.same(all((after) => lmdb.listServerChunks(csId, after, 7)), all((after) => memory.listServerChunks(csId, after, 7)),
      `${label}: chunks of server ${csId}`);
    const sorted = (counts: ReadonlyMap<number, number>): Array<[number, number]> => [...counts].sort((a, b) => a[0] - b[0]);
    t.same(sorted(lmdb.serverVolumeReplicas(csId)), sorted(memory.serverVolumeReplicas(csId)), `${label}: per-volume counts of server ${csId}`);
    for (const volumeId of [1, 2, 3]) {
      t.same(all((after) => lmdb.listServerVolumeChunks(csId, volumeId, after?.chunkIndex ?? -1, 5)),
        all((after) => memory.listServerVolumeChunks(csId, volumeId, after?.chunkIndex ?? -1, 5)), `${label}: volume ${volumeId}'s chunks on server ${csId}`);
    }
  }
  t.same(all((after) => lmdb.listAttentionChunks(after, 5)), all((after) => memory.listAttentionChunks(after, 5)), `${label}: attention set`);
  memory.forEachChunk((chunk) => {
    if (lmdb.getChunkById(chunk.chunkId)?.chunkIndex !== chunk.chunkIndex) t.fail(`${label}: chunk id ${chunk.chunkId} found`);
  });
}

/** Seeded ops touching every way a chunk record changes. */
function* randomOps(random: () => number, count: number): Generator<MdsOp> {
  const pick = (n: number): number => Math.floor(random() * n);
  const members = (n: number): number[] => {
    const ids = Array.from({ length: SERVERS }, (_, i) => i + 1).sort(() => random() - 0.5);
    return ids.slice(0, n);
  };
  yield { type: 'reserveChunkIds', count: 100_000 };
  for (const name of ['a', 'b']) {
    yield { type: 'createVolume', name, sizeBytes: 64 * CHUNK_BYTES, chunkSizeBytes: CHUNK_BYTES, replicasNormal: 3, replicasMin: 2, nowMs: 1 };
  }
  let nextChunkId = 1;
  let version = 1;
  for (let i = 0; i < count; i += 1) {
    const volumeId = 1 + pick(2);
    const chunkIndex = pick(64);
    const roll = random();
    if (roll < 0.45) yield { type: 'allocateChunk', volumeId, chunkIndex, chunkId: nextChunkId++, replicas: members(2 + pick(3)) };
    else if (roll < 0.75) {
      version += 1;
      yield { type: 'setChunkReplicas', volumeId, chunkIndex, version, replicas: members(1 + pick(4)), deleteFrom: [], inDoubt: [] };
    } else if (roll < 0.85) yield { type: 'markInDoubt', volumeId, chunkIndex, ranges: [{ offsetBytes: 0, lengthBytes: 4096 }] };
    else if (roll < 0.95) yield { type: 'markServerChunksInDoubt', csId: 1 + pick(SERVERS), limit: 1 + pick(8) };
    else if (roll < 0.97) yield { type: 'deleteVolume', volumeId };
    else yield { type: 'createVolume', name: volumeId === 1 ? 'a' : 'b', sizeBytes: 64 * CHUNK_BYTES, chunkSizeBytes: CHUNK_BYTES, replicasNormal: 3, replicasMin: 2, nowMs: 1 };
  }
}

function registrations(): MdsOp[] {
  return Array.from({ length: SERVERS }, (_, i) => ({
    type: 'registerChunkServer', uuid: `cs-${i + 1}`, host: '127.0.0.1', port: 9001 + i, metricsPort: 0, failureDomainHost: `h${i + 1}`,
    rack: 'r', tier: 0, nowMs: 1,
  }) as const);
}

t.test('indexes kept with the records match a walk, across a reopen and a rebuild', async (t) => {
  t.setTimeout(60_000);
  const dir = await mkdtemp(join(tmpdir(), 'shoal-indexes-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'mds.lmdb');
  const store = await MdsStore.open(path);
  const memory = new MemoryTables();
  // Ops submitted together share one commit (applied in order): a batch per await keeps this fast.
  let batch: Array<Promise<void>> = [];
  const apply = (op: MdsOp): void => {
    let memoryError: unknown = null;
    try {
      memory.submit(op);
    } catch (error) {
      memoryError = error;
    }
    // Ops that fail (a chunk allocated twice, a volume gone) fail alike and change nothing.
    batch.push(store.submit(op).then(() => false, () => true).then((failed) => {
      if (failed !== (memoryError !== null)) t.fail(`op ${op.type} fails in both or neither`);
    }));
  };
  const flush = async (): Promise<void> => {
    await Promise.all(batch);
    batch = [];
  };
  for (const op of registrations()) apply(op);
  let applied = 0;
  for (const op of randomOps(seededRandom(SEED), 1_500)) {
    // Assertion failures (an allocate of a taken index) are part of the mix: both sides refuse them.
    apply(op);
    applied += 1;
    if (applied % 100 === 0) await flush();
    if (applied % 500 === 0) sameIndexes(t, store.tables, memory, `after ${applied} ops (seed ${SEED})`);
  }
  await flush();
  sameIndexes(t, store.tables, memory, 'at the end');
  await store.close();

  const reopened = await MdsStore.open(path);
  sameIndexes(t, reopened.tables, memory, 'after a reopen');
  await reopened.close();

  // A database from before the per-volume counts (indexes v1, no v2): they are built at open.
  const v1 = open({ path, compression: false, maxDbs: MDS_DB_TABLES_MAX });
  const older = new LmdbTables(v1);
  await older.chunkCounts.remove('indexes-v2');
  await older.chunkCounts.put('indexes-v1', 1);
  await older.serverVolumeCounts.clearAsync();
  await v1.close();
  const upgraded = await MdsStore.open(path);
  sameIndexes(t, upgraded.tables, memory, 'after building the per-volume counts of an indexes-v1 database');
  await upgraded.close();

  // A database from before the indexes: they are built at open.
  const root = open({ path, compression: false, maxDbs: MDS_DB_TABLES_MAX });
  const raw = new LmdbTables(root);
  await raw.chunkCounts.remove('indexes-v2');
  await raw.serverVolumeCounts.clearAsync();
  await raw.serverChunks.clearAsync();
  await raw.attention.clearAsync();
  await raw.serverCounts.clearAsync();
  await raw.chunkIds.clearAsync();
  await root.close();
  const rebuilt = await MdsStore.open(path);
  sameIndexes(t, rebuilt.tables, memory, 'after building them at open');
  await rebuilt.close();
});

/** A map where each server is in one of several states, and chunks of every kind. */
function mixedMap(random: () => number): { tables: MemoryTables; servers: PlannerServer[] } {
  const tables = new MemoryTables();
  for (const op of registrations()) tables.submit(op);
  tables.submit({ type: 'reserveChunkIds', count: 10_000 });
  tables.submit({ type: 'createVolume', name: 'v', sizeBytes: 4096 * CHUNK_BYTES, chunkSizeBytes: CHUNK_BYTES, replicasNormal: 3, replicasMin: 2, nowMs: 1 });
  for (let chunkIndex = 0; chunkIndex < 600; chunkIndex += 1) {
    const ids = Array.from({ length: SERVERS }, (_, i) => i + 1).sort(() => random() - 0.5);
    const count = random() < 0.9 ? 3 : 2 + Math.floor(random() * 3);
    tables.submit({ type: 'allocateChunk', volumeId: 1, chunkIndex, chunkId: chunkIndex + 1, replicas: ids.slice(0, count) });
    if (random() < 0.05) tables.submit({ type: 'markInDoubt', volumeId: 1, chunkIndex, ranges: [{ offsetBytes: 0, lengthBytes: 512 }] });
  }
  tables.submit({ type: 'setChunkServerState', csId: 2, adminState: 'draining' });
  const server = (id: number, online: boolean, offlineForMs: number): PlannerServer => ({
    id, online, offlineForMs, adminState: tables.getChunkServer(id)?.adminState ?? 'active', healthy: true, host: `h${id}`, rack: 'r', tier: 0,
    capacityBytes: 1 << 40, freeBytes: (1 << 40) - id * (1 << 30),
  });
  // Server 5 is away (not yet given up), server 6 gone long enough to be replaced.
  const servers = [server(1, true, 0), server(2, true, 0), server(3, true, 0), server(4, true, 0), server(5, false, 1_000), server(6, false, 600_000)];
  return { tables, servers };
}

t.test('recovery windows cover what can need something and plan as the whole map does', async (t) => {
  const { tables, servers } = mixedMap(seededRandom(SEED));
  const volumes = new Map<number, VolumeRecord>(tables.listVolumes().map((v) => [v.id, v]));
  const volume = volumes.get(1);
  t.ok(volume !== undefined);
  if (volume === undefined) return;
  const everything: ReturnType<typeof plannerChunk>[] = [];
  tables.forEachChunk((chunk) => everything.push(plannerChunk(tables, chunk, volume)));
  const notServing = servers.filter((s) => !s.online || s.adminState !== 'active').map((s) => s.id);
  const candidates = everything.filter((c) => c.inDoubt || c.replicas.length !== 3 || c.replicas.some((id) => notServing.includes(id)));
  t.ok(candidates.length > 100 && candidates.length < everything.length, `${candidates.length} of ${everything.length} chunks can need something`);

  // Small windows: one lap of ticks (until the cursor is back at the start) sees every
  // candidate, and nothing else. A chunk on two servers that are not serving may come twice.
  const seen = new Set<number>();
  let cursor = WINDOW_START;
  let ticks = 0;
  do {
    const window = recoveryWindow(tables, volumes, notServing, cursor, 50);
    if (window.chunks.length > 50) t.fail('a window is bounded');
    for (const chunk of window.chunks) seen.add(chunk.chunkId);
    cursor = window.next;
    ticks += 1;
  } while (cursor !== WINDOW_START && ticks < 100);
  t.ok(ticks > candidates.length / 50, `a lap took ${ticks} windows`);
  t.same([...seen].sort((a, b) => a - b), candidates.map((c) => c.chunkId).sort((a, b) => a - b), 'a lap of windows covers every candidate once');

  // A window that holds them all plans exactly as the whole map does (same seeded choices).
  const config = { replaceAfterMs: 300_000, replaceEndangeredAfterMs: 60_000, replaceQuorumFraction: 0.5, failureDomain: 'host' as const, actionsMax: 256 };
  const rebalance = { thresholdFraction: 0.1, move: true };
  const whole = planRecovery({ servers, chunks: everything, busy: () => false, config, rebalance, random: seededRandom(1) });
  const window = recoveryWindow(tables, volumes, notServing, WINDOW_START, 10_000);
  const windowed = planRecovery({ servers, chunks: window.chunks, busy: () => false, config, rebalance, random: seededRandom(1) });
  t.ok(whole.actions.length > 0, `the whole map plans ${whole.actions.length} actions`);
  // (Balance is judged from every server's mapped bytes, which the MDS passes in; not compared here.)
  const { rebalance: _windowedBalance, ...windowedPlan } = windowed;
  const { rebalance: _wholeBalance, ...wholePlan } = whole;
  t.same(windowedPlan, wholePlan, 'the window plans the same actions, blocked and waiting counts');

  // The stat's health count reads only candidates, and equals a full count.
  const online = (csId: number): boolean => servers.find((s) => s.id === csId)?.online === true;
  const full = { healthy: 0, degraded: 0, endangered: 0, unavailable: 0 };
  for (const chunk of everything) {
    const live = chunk.replicas.filter(online).length;
    if (live === 0) full.unavailable += 1;
    else if (live < 2) full.endangered += 1;
    else if (live < 3) full.degraded += 1;
    else full.healthy += 1;
  }
  const offline = servers.filter((s) => !s.online).map((s) => s.id);
  const health = await chunkHealth(tables, volumes, offline, online, 16);
  t.same(health, { total: everything.length, byState: full }, 'health counts match a count of every chunk');
});
