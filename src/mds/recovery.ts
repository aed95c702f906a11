// The recovery planner: a pure function from what the MDS knows (chunk servers, their liveness and
// space, every chunk's members) to what should change, most urgent first. The scheduler
// (recovery_scheduler.ts) executes the plan within its rate and concurrency limits; the simulation
// test calls this same function.
//
// Rules, per chunk:
// - ranges a failed write left in doubt are settled before anything else, once every member is
//   online (a member that is only restarting must not be taken out of the set for it);
// - a member on a server offline longer than `replaceAfterMs`, or removed, is dropped for good,
//   as long as a live member remains to copy from; a server in an admin's maintenance window
//   (and its grace) is waited for however long it is away;
// - a chunk with fewer healthy members (live, not draining) than `normal` gets one added, in a
//   failure domain none of its members use, preferring a server that still holds an older copy
//   (only what changed is copied then), else the least-full eligible server; but while a member
//   is merely away (offline for less than `replaceAfterMs`) the chunk waits for it, since
//   replacing it would copy whole chunks it brings back: unless fewer than `min` members are live
//   and that has lasted `replaceEndangeredAfterMs` (data at risk goes first);
// - a chunk with more healthy-or-draining members than needed sheds one: draining first, then
//   offline, then one on the wrong tier, then the fullest;
// - new members go to the chunk's tier (its volume's) first, else the nearest tier with room
//   (tiers.ts tierOrder); a chunk with all its members and one on the wrong tier (spilled while
//   its tier was full, or its volume's or server's tier changed) moves that one to a server of
//   its tier that has room, unless a paused tier task holds it;
// - with nothing urgent, and when the scheduler's pace allows (input.followAllowed), a hot chunk
//   of a volume whose writer named its host follows it (planFollow): a member on that host
//   becomes the primary, or a server there takes the place of the primary (then becomes it);
// - with nothing urgent, and a rebalance task running (input.rebalance.move), a replica moves from
//   the fullest to the emptiest server of the same tier while their used fractions differ by more
//   than the task's threshold (one move per chunk); without one, the plan only judges whether the
//   servers of each tier are within the threshold (the MDS starts a task when they are not: tasks.ts).
// Urgency: fewest live members first (a chunk with one live copy before a chunk with two), then
// fewest relative to min.

import { RESERVE_FRACTION, chooseReplicas, domainKey, type FailureDomain, type PlacementCandidate } from './placement.ts';
import type { ChunkServerAdminState } from './model.ts';
import { tierRank } from './tiers.ts';
import { assert } from '../util/assert.ts';

export interface PlannerServer {
  readonly id: number;
  readonly online: boolean;
  /** How long it has been offline, or 0 while online. */
  readonly offlineForMs: number;
  /**
   * In an admin's maintenance window (or its grace after it): while away it is never given up,
   * however long, so its chunks wait for it rather than being copied elsewhere.
   */
  readonly maintenance?: boolean;
  /** Inside the window itself (not its grace): about to go down, it takes no new replicas but its own older copies. */
  readonly maintenanceWindow?: boolean;
  readonly adminState: ChunkServerAdminState;
  readonly healthy: boolean;
  readonly host: string;
  readonly rack: string;
  readonly tier: number;
  /** Its disk is ill (sick_disks.ts): a new replica goes there only when no other server will do. */
  readonly ill?: boolean;
  readonly capacityBytes: number;
  readonly freeBytes: number;
}

export interface PlannerChunk {
  readonly volumeId: number;
  readonly chunkIndex: number;
  readonly chunkId: number;
  readonly replicas: readonly number[];
  readonly replicasNormal: number;
  readonly replicasMin: number;
  readonly chunkSizeBytes: number;
  /** Its volume's tier: where its members belong (null: any tier). */
  readonly tier: number | null;
  /** A failed write left ranges that may differ between members: settle them first. */
  readonly inDoubt: boolean;
  /** Servers holding an older copy of the chunk (members that left): cheap to bring back. */
  readonly detached: readonly number[];
}

export interface PlannerConfig {
  readonly replaceAfterMs: number;
  /**
   * With fewer than `min` members live, a missing member is replaced after this long (at most
   * `replaceAfterMs`); with at least `min` live, the chunk waits `replaceAfterMs` for it.
   */
  readonly replaceEndangeredAfterMs: number;
  /**
   * No member is given up, nor replaced, while fewer than this fraction of the active servers are
   * online: that is a power cut, a partition of the MDS, or the cluster starting, and the servers
   * are coming back (Ceph's mon_osd_min_in_ratio plays the same part).
   */
  readonly replaceQuorumFraction: number;
  readonly failureDomain: FailureDomain;
  /** Most actions returned by one plan. */
  readonly actionsMax: number;
}

export type RecoveryAction =
  | { readonly kind: 'settle'; readonly chunk: PlannerChunk; readonly reason: string; readonly urgency: number }
  | { readonly kind: 'drop'; readonly chunk: PlannerChunk; readonly csIds: readonly number[]; readonly reason: string; readonly urgency: number }
  | {
      readonly kind: 'add';
      readonly chunk: PlannerChunk;
      readonly target: number;
      /** A move: once the target has joined, this member leaves (drain, rebalancing). */
      readonly thenDrop: number | null;
      /** Why: the rebalance task counts its own moves. */
      readonly purpose: 'repair' | 'drain' | 'rebalance' | 'tier' | 'locality';
      readonly reason: string;
      readonly urgency: number;
    }
  /** The member `csId` becomes the chunk's primary (first member), the others keeping their order. */
  | { readonly kind: 'promote'; readonly chunk: PlannerChunk; readonly csId: number; readonly reason: string; readonly urgency: number };

/** What the planner may do about the servers' balance this round. */
export interface RebalanceMode {
  /** Used-fraction gap allowed between servers (0.1 = ten points). */
  readonly thresholdFraction: number;
  /** Plan moves (a rebalance task runs), or only judge whether the servers are within the threshold. */
  readonly move: boolean;
}

export type RebalanceOutcome =
  /** Within the threshold, or fewer than two servers can take replicas. */
  | 'balanced'
  /** Recovery has other work first, servers are away, or fewer than two can take replicas: balance is left for later. */
  | 'deferred'
  /** Beyond the threshold, and not asked to move anything. */
  | 'wanted'
  /** A move is planned or under way (the balance is judged again once it has committed). */
  | 'moving'
  /** Beyond the threshold, yet no replica of the fullest server can go to any emptier one. */
  | 'stuck';

export interface RebalanceJudgement {
  readonly outcome: RebalanceOutcome;
  /** What it was judged against. */
  readonly mode: RebalanceMode;
  /** The fullest usable server's share of its capacity minus the emptiest's (0 with fewer than two). */
  readonly spreadFraction: number;
  /** An estimate of the bytes still to move to get within the threshold (0 once within). */
  readonly remainingBytes: number;
  /** Why it is deferred or stuck, or why it counts as balanced beyond the threshold; empty otherwise. */
  readonly detail: string;
}

export interface RecoveryPlan {
  readonly actions: RecoveryAction[];
  readonly rebalance: RebalanceJudgement;
  /** Chunks that need a new replica but have no eligible server in a free failure domain. */
  readonly blocked: number;
  /** Chunks missing members that are expected back (offline, not yet given up): left as they are. */
  readonly waiting: number;
  /** Chunks with a member on the wrong tier and no server of their tier with room to move it to. */
  readonly misplacedStuck: number;
}

export interface PlannerInput {
  readonly servers: readonly PlannerServer[];
  readonly chunks: Iterable<PlannerChunk>;
  /** Chunks with a procedure in flight: left alone this round. */
  readonly busy: (chunkId: number) => boolean;
  /** Servers not to pick as a new member of this chunk now (a recent add to them failed). */
  readonly avoidTargets?: (chunkId: number) => readonly number[];
  readonly config: PlannerConfig;
  readonly rebalance: RebalanceMode;
  /**
   * A rebalancing move is under way: no other starts until it has committed. Moves planned from
   * the same map before the first commits would all go from the same fullest server to the same
   * emptiest one, overshoot, and be undone by the next ones.
   */
  readonly rebalanceMoveInFlight?: boolean;
  readonly random: () => number;
  /**
   * Bytes the map places on each server, for rebalancing; default: summed over `chunks`. Given
   * when `chunks` holds only the chunks that can need something (see map_scans.ts).
   */
  readonly mappedBytes?: ReadonlyMap<number, number>;
  /** The chunks one server is a member of, in map order, for rebalancing; default: `chunks`. */
  readonly chunksOn?: (csId: number) => Iterable<PlannerChunk>;
  /** The member on `csId` stays on the wrong tier for now: a paused tier task of its server or volume holds it. */
  readonly tierMoveHeld?: (chunk: PlannerChunk, csId: number) => boolean;
  /** Hot chunks (hottest first) and the host their volume's writer runs on: they follow it there (planFollow). */
  readonly follow?: ReadonlyArray<{ readonly chunk: PlannerChunk; readonly host: string }>;
  /** The scheduler's pace allows a following move now (one at a time, at the locality rate). */
  readonly followAllowed?: boolean;
}

/** Lower is more urgent. */
function urgencyOf(live: number, min: number): number {
  return live * 100 + Math.max(0, live - min);
}

export function planRecovery(input: PlannerInput): RecoveryPlan {
  const servers = new Map(input.servers.map((server) => [server.id, server]));
  // Servers away for maintenance are planned absences: they count on neither side of the quorum.
  const active = input.servers.filter((server) => server.adminState !== 'removed' && !(server.maintenance === true && !server.online));
  const quorum = active.filter((server) => server.online).length >= input.config.replaceQuorumFraction * active.length;
  const placed = new Map<number, number>(); // targets chosen this round, to spread them
  const actions: RecoveryAction[] = [];
  let blocked = 0;
  let waiting = 0;
  let misplacedStuck = 0;
  let waitingRebalance = false;
  for (const chunk of input.chunks) {
    if (input.busy(chunk.chunkId)) continue;
    const action = planChunk(chunk, servers, input, placed, quorum);
    if (action === 'blocked') blocked += 1;
    else if (action === 'waiting') waiting += 1;
    else if (action === 'misplaced') misplacedStuck += 1;
    else if (action !== null) actions.push(action);
    // A chunk missing a member that is away is not balanced: moving replicas now would be undone.
    if (action === 'waiting') waitingRebalance = true;
  }
  actions.sort((a, b) => a.urgency - b.urgency);
  // Balance is judged only with every active server counted: one that has not reported its
  // capacity yet (the MDS just started) or is away but expected back would be left out, and the
  // others balanced without it, only to move again once it is back.
  const uncounted = input.servers.filter((s) => s.adminState === 'active' &&
    (s.maintenance === true || (s.online ? s.capacityBytes === 0 : !givenUp(s, input.config))));
  const deferral = actions.length > 0 ? `recovery has ${actions.length} replica changes to make first`
    : blocked > 0 ? `${blocked} chunks cannot be re-replicated (no eligible server) and go first`
    : waitingRebalance ? `${waiting} chunks wait for members on servers that are away`
    : uncounted.length > 0 ? `chunk servers ${uncounted.map((s) => s.id).join(', ')} are away, in maintenance, or have not reported their capacity yet`
    : null;
  if (deferral === null) {
    const { action, judgement } = planRebalance(input, servers);
    // A hot chunk following its writer goes before balance: it is paced apart (followAllowed).
    const follow = input.followAllowed === true ? planFollow(input, servers) : null;
    const chosen = follow ?? action;
    return { actions: chosen === null ? [] : [chosen], rebalance: judgement, blocked, waiting, misplacedStuck };
  }
  const { spreadFraction, remainingBytes } = measureTiers(servers, input, input.rebalance.thresholdFraction);
  return {
    actions: actions.slice(0, input.config.actionsMax),
    rebalance: { outcome: 'deferred', mode: input.rebalance, spreadFraction, remainingBytes, detail: deferral },
    blocked,
    waiting,
    misplacedStuck,
  };
}

function planChunk(chunk: PlannerChunk, servers: Map<number, PlannerServer>, input: PlannerInput,
  placed: Map<number, number>, quorum: boolean): RecoveryAction | 'blocked' | 'waiting' | 'misplaced' | null {
  const { config } = input;
  const live = chunk.replicas.filter((csId) => isLive(servers.get(csId)));
  if (live.length === 0) return null; // nothing to copy from: wait for a member to return
  const urgency = urgencyOf(live.length, chunk.replicasMin);
  if (chunk.inDoubt && live.length === chunk.replicas.length) {
    return { kind: 'settle', chunk, reason: 'ranges left in doubt by a failed write', urgency: -1 };
  }
  const gone = chunk.replicas.filter((csId) => {
    const server = servers.get(csId);
    return server === undefined || server.adminState === 'removed' || (quorum && givenUp(server, config));
  });
  if (gone.length > 0) {
    return { kind: 'drop', chunk, csIds: gone, reason: 'server away too long or removed', urgency };
  }
  const healthy = live.filter((csId) => servers.get(csId)?.adminState === 'active');
  // Away: members offline but not given up, and servers holding an older copy of a member that
  // left while they were unreachable (a write failed on them): both come back with their copy.
  const away = [
    ...chunk.replicas.filter((csId) => !isLive(servers.get(csId))),
    ...chunk.detached.filter((csId) => {
      const server = servers.get(csId);
      // A server in maintenance whose write just failed may still look online for a heartbeat
      // timeout: it is going down, and its copy is waited for all the same.
      return server !== undefined && server.adminState === 'active' && !givenUp(server, config) &&
        (!server.online || (server.maintenance === true && !server.healthy));
    }),
  ];
  if (away.length > 0 && healthy.length < chunk.replicasNormal) {
    // Replacing a member that is only restarting copies whole chunks it brings back with it.
    // An online holder (a server in maintenance whose write just failed) has no time away to wait out.
    const awayForMs = Math.min(...away.map((csId) => servers.get(csId)).filter((s): s is PlannerServer => s !== undefined && !s.online).map((s) => s.offlineForMs));
    const endangered = live.length < chunk.replicasMin;
    if (!quorum || !endangered || awayForMs < Math.min(config.replaceEndangeredAfterMs, config.replaceAfterMs)) return 'waiting';
  }
  if (healthy.length < chunk.replicasNormal) {
    const target = chooseTarget(chunk, servers, input, placed);
    if (target === null) return 'blocked';
    placed.set(target, (placed.get(target) ?? 0) + 1);
    // Enough live copies, one of them on a draining server: move that one (add, then drop).
    const draining = live.find((csId) => servers.get(csId)?.adminState === 'draining');
    if (draining !== undefined && live.length >= chunk.replicasNormal) {
      return { kind: 'add', chunk, target, thenDrop: draining, purpose: 'drain', reason: `moving off draining server ${draining}`, urgency };
    }
    return { kind: 'add', chunk, target, thenDrop: null, purpose: 'repair', reason: 'below the normal replica count', urgency };
  }
  const keepers = chunk.replicas.filter((csId) => servers.get(csId)?.adminState !== 'removed');
  if (healthy.length >= chunk.replicasNormal && keepers.length > chunk.replicasNormal) {
    const victim = chooseVictim(chunk, servers);
    if (victim !== null) return { kind: 'drop', chunk, csIds: [victim], reason: 'above the normal replica count', urgency: 1_000_000 };
  }
  // Every member there: one on the wrong tier moves to the chunk's own, when a server there has room.
  const misplaced = chunk.tier === null ? undefined
    : healthy.find((csId) => servers.get(csId)?.tier !== chunk.tier && input.tierMoveHeld?.(chunk, csId) !== true);
  if (misplaced === undefined) return null;
  const target = chooseTierTarget(chunk, misplaced, servers, input, placed);
  if (target === null) return 'misplaced';
  placed.set(target, (placed.get(target) ?? 0) + 1);
  return {
    kind: 'add', chunk, target, thenDrop: misplaced, purpose: 'tier', urgency: 1_500_000,
    reason: `moving to tier ${chunk.tier}: off chunk server ${misplaced} (tier ${servers.get(misplaced)?.tier})`,
  };
}

/**
 * The first hot chunk (hottest first) whose primary is not on its writer's host, and what to do:
 * make a member on that host the primary, or, with none there, let a server there (of the
 * chunk's tier, with room, in a failure domain the other members leave free) take the primary's
 * place: it becomes the primary on a later round. Only chunks with every member live and active
 * and exactly `normal` of them; none while the scheduler's pace says wait.
 */
function planFollow(input: PlannerInput, servers: Map<number, PlannerServer>): RecoveryAction | null {
  for (const { chunk, host } of input.follow ?? []) {
    if (input.busy(chunk.chunkId)) continue;
    const members = chunk.replicas.map((csId) => servers.get(csId));
    if (members.length !== chunk.replicasNormal || members.some((s) => s === undefined || !isLive(s) || s.adminState !== 'active')) continue;
    const primary = members[0];
    if (primary === undefined || primary.host === host) continue;
    // Not while a member is about to go down for maintenance.
    if (members.some((s) => s?.maintenanceWindow === true)) continue;
    const reason = `following its writer to host ${host}`;
    const onHost = members.find((s) => s !== undefined && s.host === host && s.healthy && s.ill !== true && s.maintenance !== true);
    if (onHost !== undefined) return { kind: 'promote', chunk, csId: onHost.id, reason, urgency: 1_800_000 };
    const avoid = input.avoidTargets?.(chunk.chunkId) ?? [];
    const eligible = [...servers.values()].filter((s) => s.host === host && s.online && s.healthy && s.ill !== true && s.adminState === 'active' &&
      s.maintenance !== true && !avoid.includes(s.id) && !chunk.replicas.includes(s.id) && (chunk.tier === null || s.tier === chunk.tier) &&
      roomByMap(s, chunk, input, new Map()));
    if (eligible.length === 0) continue;
    const target = pickTarget(chunk, eligible, servers, input, new Map(), primary.id);
    if (target === null) continue;
    return { kind: 'add', chunk, target, thenDrop: primary.id, purpose: 'locality', reason, urgency: 1_800_000 };
  }
  return null;
}

/** Offline so long that its replicas are replaced: longer than replaceAfterMs, and not in maintenance. */
function givenUp(server: PlannerServer, config: PlannerConfig): boolean {
  return !server.online && server.offlineForMs >= config.replaceAfterMs && server.maintenance !== true;
}

function isLive(server: PlannerServer | undefined): boolean {
  return server !== undefined && server.online && server.adminState !== 'removed';
}

function candidateOf(server: PlannerServer, pendingChunks: number, chunkSizeBytes: number): PlacementCandidate {
  return {
    csId: server.id,
    host: server.host,
    rack: server.rack,
    tier: server.tier,
    avoid: server.ill === true,
    capacityBytes: server.capacityBytes,
    // Targets already chosen this round count as used, so one plan spreads its copies.
    freeBytes: Math.max(0, server.freeBytes - pendingChunks * chunkSizeBytes),
  };
}

function chooseTarget(chunk: PlannerChunk, servers: Map<number, PlannerServer>, input: PlannerInput,
  placed: Map<number, number>): number | null {
  const avoid = input.avoidTargets?.(chunk.chunkId) ?? [];
  // A server in a maintenance window takes back its own older copies only (it catches up), nothing new.
  const eligible = [...servers.values()].filter(
    (s) => s.online && s.healthy && s.adminState === 'active' && !chunk.replicas.includes(s.id) && !avoid.includes(s.id) &&
      (s.maintenanceWindow !== true || chunk.detached.includes(s.id)),
  );
  // The best new server: of the chunk's tier, else the nearest tier with room (placement.ts).
  const fresh = pickTarget(chunk, eligible, servers, input, placed, null);
  // A server that still holds an older copy gets only what changed: it goes first, unless it
  // sits on a worse tier than a fresh server would.
  const freshRank = fresh === null ? Number.POSITIVE_INFINITY : tierRank(chunk.tier, servers.get(fresh)?.tier ?? chunk.tier ?? 0);
  const holders = eligible.filter((s) => chunk.detached.includes(s.id) && tierRank(chunk.tier, s.tier) <= freshRank);
  if (holders.length > 0) {
    const target = pickTarget(chunk, holders, servers, input, placed, null);
    if (target !== null) return target;
  }
  return fresh;
}

/**
 * A server of the chunk's own tier to take over from `leaving`, a member on the wrong tier (whose
 * failure domain it may share: the member leaves once it has joined); one holding an older copy first.
 */
function chooseTierTarget(chunk: PlannerChunk, leaving: number, servers: Map<number, PlannerServer>, input: PlannerInput,
  placed: Map<number, number>): number | null {
  const avoid = input.avoidTargets?.(chunk.chunkId) ?? [];
  const eligible = [...servers.values()].filter(
    (s) => s.tier === chunk.tier && s.online && s.healthy && s.adminState === 'active' && !chunk.replicas.includes(s.id) && !avoid.includes(s.id) &&
      (s.maintenanceWindow !== true || chunk.detached.includes(s.id)) && roomByMap(s, chunk, input, placed),
  );
  const holders = eligible.filter((s) => chunk.detached.includes(s.id));
  return (holders.length > 0 ? pickTarget(chunk, holders, servers, input, placed, leaving) : null) ??
    pickTarget(chunk, eligible, servers, input, placed, leaving);
}

/**
 * Room judged by the map too: the servers' reports of free space lag by seconds, and tier moves
 * come many at a time once a tier has room again; they must not fill a server into its reserve.
 */
function roomByMap(s: PlannerServer, chunk: PlannerChunk, input: PlannerInput, placed: ReadonlyMap<number, number>): boolean {
  return input.mappedBytes === undefined ||
    s.capacityBytes - (input.mappedBytes.get(s.id) ?? 0) - (placed.get(s.id) ?? 0) * chunk.chunkSizeBytes >=
      chunk.chunkSizeBytes + s.capacityBytes * RESERVE_FRACTION;
}

function pickTarget(chunk: PlannerChunk, eligible: readonly PlannerServer[], servers: Map<number, PlannerServer>,
  input: PlannerInput, placed: Map<number, number>, leaving: number | null): number | null {
  // Domains of members still counted (live ones, and offline ones not yet given up) are taken.
  const exclude = chunk.replicas
    .filter((csId) => csId !== leaving)
    .map((csId) => servers.get(csId))
    .filter((s): s is PlannerServer => s !== undefined && s.adminState !== 'removed' && (s.online || !givenUp(s, input.config)))
    .filter((s) => s.adminState === 'active')
    .map((s) => candidateOf(s, 0, chunk.chunkSizeBytes));
  try {
    const [target] = chooseReplicas(
      eligible.map((s) => candidateOf(s, placed.get(s.id) ?? 0, chunk.chunkSizeBytes)),
      { count: 1, minimum: 1, chunkSizeBytes: chunk.chunkSizeBytes, failureDomain: input.config.failureDomain, exclude, tier: chunk.tier },
      input.random,
    );
    return target ?? null;
  } catch {
    return null; // no eligible server in a free domain: the chunk stays degraded until one appears
  }
}

function chooseVictim(chunk: PlannerChunk, servers: Map<number, PlannerServer>): number | null {
  const ranked = chunk.replicas
    .map((csId) => ({ csId, server: servers.get(csId) }))
    .filter((entry): entry is { csId: number; server: PlannerServer } => entry.server !== undefined)
    .sort((a, b) => victimRank(b.server, chunk.tier) - victimRank(a.server, chunk.tier));
  return ranked[0]?.csId ?? null;
}

/** Higher goes first: draining, then offline, then on the wrong tier, then ill, then the fullest. */
function victimRank(server: PlannerServer, tier: number | null): number {
  const used = server.capacityBytes > 0 ? 1 - server.freeBytes / server.capacityBytes : 1;
  return (server.adminState === 'draining' ? 16 : 0) + (server.online ? 0 : 8) + (tier === null || server.tier === tier ? 0 : 4) +
    (server.ill === true ? 2 : 0) + used;
}


/** Servers whose balance counts: online, healthy (and not ill), active, with a known capacity. */
function usableForBalance(servers: Map<number, PlannerServer>): PlannerServer[] {
  return [...servers.values()].filter((s) => s.online && s.healthy && s.ill !== true && s.adminState === 'active' && s.capacityBytes > 0);
}

interface Balance {
  readonly spreadFraction: number;
  readonly remainingBytes: number;
  /** Usable servers from the emptiest to the fullest. */
  readonly sorted: PlannerServer[];
  readonly share: (server: PlannerServer) => number;
}

/**
 * How far apart the servers are. Fullness here is the replicas the map places on a server over
 * its capacity: it changes the moment a move commits, where the servers' own reports of used
 * space lag (space is freed only once a left replica is deleted), which would make moves
 * overshoot. What is left to move is estimated against the mean share: the bytes above the mean
 * plus half the threshold on the fuller servers, or below the mean less half of it on the
 * emptier ones, whichever is more (the planner stops earlier when the extremes come within the
 * threshold).
 */
function measureBalance(usable: PlannerServer[], input: PlannerInput, thresholdFraction: number): Balance {
  const mappedBytes = input.mappedBytes ?? mappedBytesOf(input.chunks);
  const mappedOn = (server: PlannerServer): number => mappedBytes.get(server.id) ?? 0;
  const share = (server: PlannerServer): number => mappedOn(server) / server.capacityBytes;
  const sorted = [...usable].sort((a, b) => share(a) - share(b));
  const emptiest = sorted[0];
  const fullest = sorted.at(-1);
  if (emptiest === undefined || fullest === undefined || sorted.length < 2) return { spreadFraction: 0, remainingBytes: 0, sorted, share };
  const spreadFraction = share(fullest) - share(emptiest);
  if (spreadFraction <= thresholdFraction) return { spreadFraction, remainingBytes: 0, sorted, share };
  const mean = sorted.reduce((sum, s) => sum + mappedOn(s), 0) / sorted.reduce((sum, s) => sum + s.capacityBytes, 0);
  let above = 0;
  let below = 0;
  for (const server of sorted) {
    above += Math.max(0, mappedOn(server) - (mean + thresholdFraction / 2) * server.capacityBytes);
    below += Math.max(0, (mean - thresholdFraction / 2) * server.capacityBytes - mappedOn(server));
  }
  return { spreadFraction, remainingBytes: Math.ceil(Math.max(above, below)), sorted, share };
}

/** The servers' balance, tier by tier: each tier is balanced within itself (replicas never move between tiers for balance). */
interface TiersBalance {
  /** The widest spread of any tier. */
  readonly spreadFraction: number;
  /** Summed over the tiers. */
  readonly remainingBytes: number;
  /** One per tier with usable servers, by tier. */
  readonly tiers: Balance[];
}

function measureTiers(servers: Map<number, PlannerServer>, input: PlannerInput, thresholdFraction: number): TiersBalance {
  const byTier = new Map<number, PlannerServer[]>();
  for (const server of usableForBalance(servers)) byTier.set(server.tier, [...(byTier.get(server.tier) ?? []), server]);
  const tiers = [...byTier].sort((a, b) => a[0] - b[0]).map(([, group]) => measureBalance(group, input, thresholdFraction));
  return {
    spreadFraction: Math.max(0, ...tiers.map((balance) => balance.spreadFraction)),
    remainingBytes: tiers.reduce((sum, balance) => sum + balance.remainingBytes, 0),
    tiers,
  };
}

/** One tier's move, or why there is none. */
type TierMove =
  | { readonly kind: 'move'; readonly action: RecoveryAction }
  | { readonly kind: 'busy' }
  | { readonly kind: 'balanced' }
  | { readonly kind: 'stuck'; readonly why: string };

/**
 * With nothing urgent: judges each tier's balance against the threshold and, when asked to move,
 * plans one replica from the fullest server of the tier furthest apart to the emptiest one of the
 * same tier that can take it. A move must leave the target no fuller than the source, or the
 * next one undoes it: when that alone is what stops every move, the servers are as balanced as
 * whole chunks allow.
 */
function planRebalance(input: PlannerInput, servers: Map<number, PlannerServer>): { action: RecoveryAction | null; judgement: RebalanceJudgement } {
  const { thresholdFraction, move } = input.rebalance;
  const { spreadFraction, remainingBytes, tiers } = measureTiers(servers, input, thresholdFraction);
  const judged = (outcome: RebalanceOutcome, detail = ''): RebalanceJudgement => ({ outcome, mode: input.rebalance, spreadFraction, remainingBytes, detail });
  // Mid-move the map counts the copy on its target and on its source: judge once it has committed.
  if (input.rebalanceMoveInFlight === true) return { action: null, judgement: judged('moving') };
  if (tiers.every((balance) => balance.sorted.length < 2)) {
    const usable = tiers.reduce((sum, balance) => sum + balance.sorted.length, 0);
    const where = tiers.length > 1 ? ', none of them in the same tier' : '';
    return { action: null, judgement: judged('deferred', `${usable} chunk server(s) can take replicas now${where}: nothing to balance between`) };
  }
  if (spreadFraction <= thresholdFraction) return { action: null, judgement: judged('balanced') };
  if (!move) return { action: null, judgement: judged('wanted') };
  let busy = false;
  let stuck: string | null = null;
  const beyond = tiers.filter((balance) => balance.spreadFraction > thresholdFraction).sort((a, b) => b.spreadFraction - a.spreadFraction);
  for (const balance of beyond) {
    const result = planTierMove(balance, input, servers, tiers.length > 1);
    if (result.kind === 'move') return { action: result.action, judgement: judged('moving') };
    if (result.kind === 'busy') busy = true;
    if (result.kind === 'stuck') stuck ??= result.why;
  }
  if (busy) return { action: null, judgement: judged('moving') };
  if (stuck !== null) return { action: null, judgement: judged('stuck', stuck) };
  return { action: null, judgement: judged('balanced', 'as balanced as whole chunks allow: moving any one would leave its target fuller than its source') };
}

function planTierMove(balance: Balance, input: PlannerInput, servers: Map<number, PlannerServer>, severalTiers: boolean): TierMove {
  const { sorted, share } = balance;
  const fullest = sorted.at(-1);
  assert(fullest !== undefined && sorted.length >= 2, 'a tier beyond the threshold has two servers or more');
  const inTier = severalTiers ? ` of tier ${fullest.tier}` : '';
  const targets = sorted.slice(0, -1); // emptiest first
  let busy = false;
  const refused = { overshoot: 0, domain: 0, room: 0 };
  // Hot chunks that followed their writer to this server's host stay: moving them would be undone.
  const followed = new Set((input.follow ?? []).filter((entry) => entry.host === fullest.host).map((entry) => entry.chunk.chunkId));
  for (const chunk of input.chunksOn?.(fullest.id) ?? input.chunks) {
    if (!chunk.replicas.includes(fullest.id) || followed.has(chunk.chunkId)) continue;
    if (input.busy(chunk.chunkId)) {
      busy = true;
      continue;
    }
    const others = chunk.replicas.filter((csId) => csId !== fullest.id).map((csId) => servers.get(csId));
    const domains = new Set(others.filter((s): s is PlannerServer => s !== undefined).map((s) => domainKey(candidateOf(s, 0, 0), input.config.failureDomain)));
    for (const target of targets) {
      if (chunk.replicas.includes(target.id)) continue;
      if (share(target) + chunk.chunkSizeBytes / target.capacityBytes > share(fullest) - chunk.chunkSizeBytes / fullest.capacityBytes) {
        refused.overshoot += 1;
        continue;
      }
      if (domains.has(domainKey(candidateOf(target, 0, 0), input.config.failureDomain))) {
        refused.domain += 1;
        continue;
      }
      if (!hasRoomFor(target, chunk.chunkSizeBytes)) {
        refused.room += 1;
        continue;
      }
      const action: RecoveryAction = {
        kind: 'add', chunk, target: target.id, thenDrop: fullest.id, purpose: 'rebalance', urgency: 2_000_000,
        reason: `rebalancing${inTier} from server ${fullest.id} (${pointsOf(share(fullest))} % full) to server ${target.id} (${pointsOf(share(target))} %)`,
      };
      return { kind: 'move', action };
    }
  }
  if (busy) return { kind: 'busy' };
  if (refused.domain === 0 && refused.room === 0) return { kind: 'balanced' };
  const why = refused.domain >= refused.room
    ? `every replica on chunk server ${fullest.id} (the fullest${inTier}) that could move would put two copies of its chunk in one ` +
      `${input.config.failureDomain} failure domain: add servers in other ${input.config.failureDomain}s${severalTiers ? ' to the tier' : ''} or use a larger threshold`
    : `the servers${inTier} that could take replicas from chunk server ${fullest.id} (the fullest) are out of room: add capacity`;
  return { kind: 'stuck', why };
}

function pointsOf(fraction: number): string {
  return (fraction * 100).toFixed(1);
}

function mappedBytesOf(chunks: Iterable<PlannerChunk>): Map<number, number> {
  const mappedBytes = new Map<number, number>();
  for (const chunk of chunks) {
    for (const csId of chunk.replicas) mappedBytes.set(csId, (mappedBytes.get(csId) ?? 0) + chunk.chunkSizeBytes);
  }
  return mappedBytes;
}

function hasRoomFor(server: PlannerServer, bytes: number): boolean {
  return server.freeBytes >= bytes + server.capacityBytes * RESERVE_FRACTION;
}
