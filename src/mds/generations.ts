// MDS generations: how a chunk server's replica tells the MDS that it was made by a newer MDS state
// than the one now running (a database restored from an old copy, or lost and rebuilt), so that
// it is kept instead of being deleted as a leftover.
//
// The MDS state holds a generation that grows by one with every op that gives chunk servers new
// replica state (allocateChunk, setChunkReplicas). Every command that creates or seals a replica
// carries the generation the op that follows it will commit (`proposed`), and the replica keeps
// the highest it was given. So a replica whose generation is above the map's was touched by an op
// this map does not have. A chunk server whose replicas reach above the map's generation reveals
// that the map was rolled back: the gap is recorded as lost generations, and the map's generation
// jumps past it, so that replicas from the lost range stay recognisable as newer for good.
//
// Pure: reads tables, no I/O, no clock.

import type { LostGenerations, MdsTables } from './model.ts';

/** The generation the next replica-changing op will commit: what commands carry. */
export function proposedGeneration(tables: MdsTables): number {
  return tables.getMeta('generation') + 1;
}

/**
 * Whether a replica with a given generation was made by an MDS state that this map does not
 * include: a test built once from the tables, for checking a server's many replicas.
 */
export function newerThanMapTest(tables: MdsTables): (generation: number) => boolean {
  const current = tables.getMeta('generation');
  const lost = tables.listLostGenerations();
  return (generation) => generation > current || lost.some((range) => generation > range.lowExclusive && generation <= range.highInclusive);
}

/**
 * The range a chunk server's highest replica generation proves lost, or null when the map is not
 * behind it. `highestSeen` equal to the proposed generation is an op that was in flight when the
 * MDS stopped: it may have committed in a state now lost, so it counts as newer too.
 */
export function lostRange(tables: MdsTables, highestSeen: number, nowMs: number): LostGenerations | null {
  const current = tables.getMeta('generation');
  if (highestSeen <= current) return null;
  return { lowExclusive: current, highInclusive: highestSeen, foundAtMs: nowMs };
}
