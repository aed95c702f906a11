// Replica placement: a pure function of the candidates, the request and a random source, so that
// simulation tests can drive it through many seeds.
//
// Rules: replicas sit in distinct failure domains; servers of the volume's tier go first, then
// those of the nearest tiers (tiers.ts tierOrder: a full tier spills, and the planner moves the
// spilled replicas back once it has room); within a tier the least-full servers (by fraction
// used) go first, ties broken at random so that equal servers share the load, and servers with an
// ill disk (sick_disks.ts) go last; a server without
// room for a whole chunk plus its reserve is never chosen; the writer's own host is preferred for
// the first replica (locality) when it has a candidate in the best tier there is room on.

import { StorageError } from '../errors.ts';
import { assert } from '../util/assert.ts';
import { tierRank } from './tiers.ts';

export const FAILURE_DOMAINS = ['disk', 'host', 'rack'] as const;
export type FailureDomain = (typeof FAILURE_DOMAINS)[number];

export interface PlacementCandidate {
  readonly csId: number;
  /** The chunk server's failure-domain labels. */
  readonly host: string;
  readonly rack: string;
  readonly capacityBytes: number;
  readonly freeBytes: number;
  readonly tier: number;
  /** Chosen only after every other server of its tier: its disk is ill (sick_disks.ts). */
  readonly avoid?: boolean;
}

export interface PlacementRequest {
  readonly count: number;
  readonly minimum: number;
  readonly chunkSizeBytes: number;
  readonly failureDomain: FailureDomain;
  /** Servers already holding the chunk (their domains are taken) or to avoid. */
  readonly exclude: readonly PlacementCandidate[];
  readonly preferHost?: string;
  /** The volume's tier: its servers first, then the nearest tiers'; null: any tier. */
  readonly tier: number | null;
}

/** Free space a server keeps back, as a fraction of capacity, so it never fills to the last byte. */
export const RESERVE_FRACTION = 0.02;

export function domainKey(candidate: PlacementCandidate, failureDomain: FailureDomain): string {
  switch (failureDomain) {
    case 'disk':
      return `cs:${candidate.csId}`;
    case 'host':
      return `host:${candidate.host}`;
    case 'rack':
      return `rack:${candidate.rack}`;
  }
}

function usedFraction(candidate: PlacementCandidate): number {
  if (candidate.capacityBytes <= 0) return 1;
  return 1 - candidate.freeBytes / candidate.capacityBytes;
}

function hasRoom(candidate: PlacementCandidate, chunkSizeBytes: number): boolean {
  return candidate.freeBytes >= chunkSizeBytes + candidate.capacityBytes * RESERVE_FRACTION;
}

/**
 * Chooses up to `count` servers in distinct domains. Returns at least `minimum` of them, or throws
 * ERR_NOT_ENOUGH_SERVERS / ERR_NO_SPACE naming what is missing.
 */
export function chooseReplicas(
  candidates: readonly PlacementCandidate[],
  request: PlacementRequest,
  random: () => number,
): number[] {
  assert(request.minimum >= 1 && request.minimum <= request.count, 'placement minimum within 1..count');
  const takenDomains = new Set(request.exclude.map((c) => domainKey(c, request.failureDomain)));
  const excludedIds = new Set(request.exclude.map((c) => c.csId));
  const eligible = candidates.filter((c) => !excludedIds.has(c.csId));
  const withRoom = eligible.filter((c) => hasRoom(c, request.chunkSizeBytes));
  const rankOf = (candidate: PlacementCandidate): number => tierRank(request.tier, candidate.tier) * 2 + (candidate.avoid === true ? 1 : 0);
  const ranked = withRoom
    .map((candidate) => ({ candidate, tieBreak: random() }))
    .sort((a, b) => rankOf(a.candidate) - rankOf(b.candidate) || usedFraction(a.candidate) - usedFraction(b.candidate) || a.tieBreak - b.tieBreak)
    .map(({ candidate }) => candidate);
  const best = ranked[0];
  if (request.preferHost !== undefined && best !== undefined) {
    const local = ranked.findIndex((c) => c.host === request.preferHost && rankOf(c) === rankOf(best));
    if (local > 0) ranked.unshift(...ranked.splice(local, 1));
  }
  const chosen: number[] = [];
  for (const candidate of ranked) {
    if (chosen.length === request.count) break;
    const key = domainKey(candidate, request.failureDomain);
    if (takenDomains.has(key)) continue;
    takenDomains.add(key);
    chosen.push(candidate.csId);
  }
  if (chosen.length < request.minimum) {
    const domains = new Set(eligible.map((c) => domainKey(c, request.failureDomain))).size;
    const code = eligible.length > withRoom.length ? 'ERR_NO_SPACE' : 'ERR_NOT_ENOUGH_SERVERS';
    throw new StorageError(
      code,
      `need ${request.minimum} replicas in distinct ${request.failureDomain} failure domains, found ` +
        `${chosen.length} (${eligible.length} online chunk servers in ${domains} domains, ` +
        `${withRoom.length} with room for a ${request.chunkSizeBytes}-byte chunk)`,
    );
  }
  assert(new Set(chosen).size === chosen.length, 'placement never repeats a server');
  return chosen;
}
