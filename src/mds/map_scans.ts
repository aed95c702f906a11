// Bounded reads of the chunk map for the recovery planner and the cluster stat. A map of millions
// of chunks is never walked whole here: only the chunks that can need something are read, found
// through the indexes the tables keep with the records (model.ts: the attention set, each
// server's chunks, per-server counts).
//
// A chunk can need the planner only if its record says so (in doubt, or a replica count other
// than its volume's normal: the attention set), a member sits on a server that is not serving
// (offline, draining, removed), or a member sits on a server of another tier than its volume's
// (tiers.ts misplacedPairs, read through the server's index one volume at a time). Any other
// chunk has every member live, active, on its tier, and exactly `normal` of them, for which the
// planner decides nothing (see planChunk in recovery.ts); so a plan over these candidates equals
// a plan over the whole map. Candidates are read in windows
// of at most `windowChunksMax`, the next tick going on where the last stopped: while a server
// holding a million replicas is offline, each tick reads a bounded slice of them, and "most
// endangered first" holds within a window (a non-goal: a global order over a million chunks).
//
// The stat's chunk health counts read the same candidates, in slices that yield to the event
// loop; every other chunk is healthy by the same argument.

import { setImmediate as nextTurn } from 'node:timers/promises';
import type { ChunkHealthCounts } from '../protocol/api.ts';
import { assert } from '../util/assert.ts';
import { volumeTier, type ChunkKey, type ChunkRecord, type MdsTables, type VolumeRecord } from './model.ts';
import type { PlannerChunk } from './recovery.ts';

/** Where the planner's candidates come from: the attention set, every chunk of a server, or one volume's chunks on a server. */
export type WindowSource =
  | { readonly kind: 'attention' }
  | { readonly kind: 'server'; readonly csId: number }
  | { readonly kind: 'misplaced'; readonly csId: number; readonly volumeId: number };

/** Keys read from an index per call. */
const KEYS_PER_READ = 1_024;

const keyOf = (key: ChunkKey): string => `${key.volumeId}:${key.chunkIndex}`;

/** Where a scan of some sources goes on: a source (by its key) and a chunk key in it. */
export interface SourceCursor {
  readonly source: string;
  readonly after: ChunkKey | undefined;
}

/**
 * Where the next recovery window starts. The chunks that can need repair (the attention set, the
 * servers not serving) and the misplaced ones have a cursor each: a tier change that leaves a
 * million replicas on the wrong tier must not push a failed server's chunks out of the windows.
 */
export interface WindowCursor {
  readonly main: SourceCursor;
  readonly misplaced: SourceCursor;
}

const ATTENTION: WindowSource = { kind: 'attention' };

function sourceKey(source: WindowSource): string {
  return source.kind === 'attention' ? 'attention' : source.kind === 'server' ? `server:${source.csId}` : `misplaced:${source.csId}:${source.volumeId}`;
}

const SOURCES_START: SourceCursor = { source: '', after: undefined };
export const WINDOW_START: WindowCursor = { main: SOURCES_START, misplaced: SOURCES_START };

export function plannerChunk(tables: MdsTables, chunk: ChunkRecord, volume: VolumeRecord): PlannerChunk {
  return {
    volumeId: chunk.volumeId,
    chunkIndex: chunk.chunkIndex,
    chunkId: chunk.chunkId,
    replicas: chunk.replicas,
    replicasNormal: volume.replicasNormal,
    replicasMin: volume.replicasMin,
    chunkSizeBytes: volume.chunkSizeBytes,
    tier: volumeTier(volume),
    inDoubt: (chunk.inDoubt ?? []).length > 0,
    detached: tables.getPendingDelete(chunk.chunkId)?.csIds ?? [],
  };
}

function listSource(tables: MdsTables, source: WindowSource, after: ChunkKey | undefined, limit: number): ChunkKey[] {
  switch (source.kind) {
    case 'attention':
      return tables.listAttentionChunks(after, limit);
    case 'server':
      return tables.listServerChunks(source.csId, after, limit);
    case 'misplaced':
      return tables.listServerVolumeChunks(source.csId, source.volumeId, after?.chunkIndex ?? -1, limit);
  }
}

/**
 * The planner's candidates for one tick, at most `windowChunksMax` distinct chunks: the attention
 * set, then the chunks of each server in `notServing` (ascending ids), from their cursor on and
 * wrapping around; then, in the room left, each volume's chunks on a server of another tier
 * (`misplaced`), from theirs. `next` is where the following window starts.
 */
export function recoveryWindow(tables: MdsTables, volumes: ReadonlyMap<number, VolumeRecord>, notServing: readonly number[],
  cursor: WindowCursor, windowChunksMax: number,
  misplaced: ReadonlyArray<{ readonly csId: number; readonly volumeId: number }> = []): { chunks: PlannerChunk[]; next: WindowCursor } {
  assert(windowChunksMax > 0, 'a window holds chunks');
  const seen = new Set<string>();
  const chunks: PlannerChunk[] = [];
  const main = scanSources(tables, volumes, [ATTENTION, ...notServing.map((csId): WindowSource => ({ kind: 'server', csId }))],
    cursor.main, windowChunksMax, seen, chunks);
  const rest = misplaced.length === 0 || seen.size >= windowChunksMax ? (misplaced.length === 0 ? SOURCES_START : cursor.misplaced)
    : scanSources(tables, volumes, misplaced.map(({ csId, volumeId }): WindowSource => ({ kind: 'misplaced', csId, volumeId })),
      cursor.misplaced, windowChunksMax, seen, chunks);
  const next = main === SOURCES_START && rest === SOURCES_START ? WINDOW_START : { main, misplaced: rest };
  return { chunks: inMapOrder(chunks), next };
}

/**
 * Reads `sources` from `cursor` on, wrapping around once, into `chunks` until `seen` holds
 * `windowChunksMax` chunks; returns where the next scan starts (SOURCES_START after a full lap).
 */
function scanSources(tables: MdsTables, volumes: ReadonlyMap<number, VolumeRecord>, sources: readonly WindowSource[], cursor: SourceCursor,
  windowChunksMax: number, seen: Set<string>, chunks: PlannerChunk[]): SourceCursor {
  const keys = sources.map(sourceKey);
  let index = Math.max(0, keys.indexOf(cursor.source));
  let after = keys[index] === cursor.source ? cursor.after : undefined;
  // One lap over every source, then the start source again up to where the lap began.
  for (let visits = 0; visits <= sources.length; visits += 1) {
    const source = sources[index];
    assert(source !== undefined, 'the source index stays in range');
    for (;;) {
      const room = windowChunksMax - seen.size;
      const page = listSource(tables, source, after, Math.min(KEYS_PER_READ, room));
      for (const key of page) {
        if (seen.has(keyOf(key))) continue;
        seen.add(keyOf(key));
        const chunk = tables.getChunk(key.volumeId, key.chunkIndex);
        const volume = volumes.get(key.volumeId);
        if (chunk !== undefined && volume !== undefined) chunks.push(plannerChunk(tables, chunk, volume));
      }
      after = page.at(-1) ?? after;
      if (seen.size >= windowChunksMax) return { source: sourceKey(source), after };
      if (page.length < Math.min(KEYS_PER_READ, room)) break;
    }
    index = (index + 1) % sources.length;
    after = undefined;
  }
  return SOURCES_START;
}

/**
 * The planner sees the chunks in map order, as a walk of the whole map would show them: ties in
 * urgency and its seeded choices then fall as they would over the whole map.
 */
function inMapOrder(chunks: PlannerChunk[]): PlannerChunk[] {
  return chunks.sort((a, b) => a.volumeId - b.volumeId || a.chunkIndex - b.chunkIndex);
}

/** The chunks on one server, lazily and at most `lookMax` of them (the planner's rebalancing candidates). */
export function* chunksOnServer(tables: MdsTables, volumes: ReadonlyMap<number, VolumeRecord>, csId: number,
  lookMax: number): Generator<PlannerChunk> {
  let after: ChunkKey | undefined;
  for (let looked = 0; looked < lookMax;) {
    const keys = tables.listServerChunks(csId, after, Math.min(KEYS_PER_READ, lookMax - looked));
    for (const key of keys) {
      const chunk = tables.getChunk(key.volumeId, key.chunkIndex);
      const volume = volumes.get(key.volumeId);
      if (chunk !== undefined && volume !== undefined) yield plannerChunk(tables, chunk, volume);
    }
    looked += keys.length;
    after = keys.at(-1);
    if (after === undefined || keys.length < KEYS_PER_READ) return;
  }
}

export interface ChunkHealth {
  readonly total: number;
  readonly byState: ChunkHealthCounts;
}

/**
 * Chunks by health (as the stat defines it: live members against min and normal), reading only
 * the attention set and the chunks of `offline` servers, `sliceRecordsMax` records per event-loop
 * turn. Each chunk is counted once: from the attention set if it is in it, else from the first
 * offline server (in `offline`'s order) it is a member of.
 */
export async function chunkHealth(tables: MdsTables, volumes: ReadonlyMap<number, VolumeRecord>, offline: readonly number[],
  isOnline: (csId: number) => boolean, sliceRecordsMax: number): Promise<ChunkHealth> {
  let total = 0;
  for (const volume of volumes.values()) total += tables.countChunks(volume.id);
  const byState = { healthy: 0, degraded: 0, endangered: 0, unavailable: 0 };
  let counted = 0;
  let sliceRecords = 0;
  const classify = (chunk: ChunkRecord): void => {
    const volume = volumes.get(chunk.volumeId);
    const live = chunk.replicas.filter(isOnline).length;
    const normal = volume?.replicasNormal ?? chunk.replicas.length;
    const min = volume?.replicasMin ?? 1;
    if (live === 0) byState.unavailable += 1;
    else if (live < min) byState.endangered += 1;
    else if (live < normal) byState.degraded += 1;
    else byState.healthy += 1;
    counted += 1;
  };
  const sources: WindowSource[] = [ATTENTION, ...offline.map((csId): WindowSource => ({ kind: 'server', csId }))];
  for (const [position, source] of sources.entries()) {
    const earlier = new Set(offline.slice(0, Math.max(0, position - 1)));
    let after: ChunkKey | undefined;
    for (;;) {
      const keys = listSource(tables, source, after, KEYS_PER_READ);
      for (const key of keys) {
        const chunk = tables.getChunk(key.volumeId, key.chunkIndex);
        if (chunk === undefined) continue; // deleted between two slices
        if (source.kind !== 'attention' && (tables.isAttentionChunk(key.volumeId, key.chunkIndex) || chunk.replicas.some((csId) => earlier.has(csId)))) continue;
        classify(chunk);
      }
      sliceRecords += keys.length;
      if (sliceRecords >= sliceRecordsMax) {
        sliceRecords = 0;
        await nextTurn();
      }
      after = keys.at(-1);
      if (after === undefined || keys.length < KEYS_PER_READ) break;
    }
  }
  // Every chunk not read has all members online and exactly `normal` of them.
  byState.healthy += Math.max(0, total - counted);
  return { total, byState };
}
