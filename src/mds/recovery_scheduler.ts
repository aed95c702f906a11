// Runs the recovery plan: every tick it asks the planner (recovery.ts) what should change and
// starts the most urgent actions, at most `concurrency` at a time, with copies paced by the
// replicator's rate limit so foreground I/O keeps its share of disks and network. It never
// decides anything itself.

import { assert } from '../util/assert.ts';
import { setBounded } from '../util/bounded_map.ts';
import type { Logger } from '../util/log.ts';
import {
  planRecovery, type PlannerChunk, type PlannerConfig, type PlannerServer, type RebalanceJudgement, type RebalanceMode, type RecoveryAction,
} from './recovery.ts';
import type { Replicator } from './replicator.ts';

export interface RecoverySchedulerOptions {
  readonly replicator: Replicator;
  readonly log: Logger;
  readonly random: () => number;
  readonly concurrency: number;
  readonly planner: PlannerConfig;
  /**
   * The current picture: servers, and the chunks that can need something with their volume's
   * replica settings (a bounded window of them on a large map: see map_scans.ts).
   */
  readonly view: () => RecoveryView;
  readonly nowMs: () => number;
  /** Copy rate of hot chunks following their writer (0: they do not): one move at a time, spaced by its copy's time at this rate. */
  readonly localityBytesPerSecond?: number;
  /**
   * Whether a replica of the volume on the server is still on the wrong tier: a tier move whose
   * task was cancelled (the tier put back) while its copy was being made keeps the member.
   */
  readonly stillMisplaced?: (volumeId: number, csId: number) => boolean;
}

export interface RecoveryView {
  readonly servers: PlannerServer[];
  readonly chunks: Iterable<PlannerChunk>;
  readonly mappedBytes?: ReadonlyMap<number, number>;
  readonly chunksOn?: (csId: number) => Iterable<PlannerChunk>;
  /** Members on the wrong tier that a paused tier task holds where they are. */
  readonly tierMoveHeld?: (chunk: PlannerChunk, csId: number) => boolean;
  /** Hot chunks and their writer's host (recovery.ts planFollow). */
  readonly follow?: ReadonlyArray<{ readonly chunk: PlannerChunk; readonly host: string }>;
  /** Whether a rebalance task runs (moves are planned) and its threshold, or the automatic one's. */
  readonly rebalance: RebalanceMode;
  /** The running rebalance task, which counts the moves made for it. */
  readonly rebalanceTaskId: number | null;
}

/** Pause after a primary moved to its writer's host (no copy to pace by). */
const PROMOTE_GAP_MS = 500;

/** How long a server that failed to take a chunk's new replica is passed over for that chunk. */
const FAILED_TARGET_BACKOFF_MS = 60_000;
const FAILED_TARGETS_MAX = 10_000;

export interface RecoveryStats {
  running: number;
  started: number;
  succeeded: number;
  failed: number;
  /**
   * Actions the last plan held (0 = nothing to do: every chunk as it should be). With more
   * chunks needing something than one window holds, this and the next two count the last window.
   */
  pending: number;
  /** Chunks the last plan could not help: no eligible server in a free failure domain. */
  blocked: number;
  /** Chunks missing members that are expected back: left alone until they return or are given up. */
  waiting: number;
  /** Chunks with a member on the wrong tier that no server of their tier has room for now. */
  misplacedStuck: number;
}

export class RecoveryScheduler {
  readonly stats: RecoveryStats = { running: 0, started: 0, succeeded: 0, failed: 0, pending: 0, blocked: 0, waiting: 0, misplacedStuck: 0 };
  /** The servers' balance as the last plan judged it (null before the first). */
  lastRebalance: RebalanceJudgement | null = null;
  /** Rebalancing moves under way: a rebalance is not done before they have committed (and been counted). */
  rebalanceMovesInFlight = 0;
  /** A hot chunk following its writer is under way (one at a time); the next not before `followNextAtMs`. */
  private followInFlight = 0;
  private followNextAtMs = 0;
  /** Hot chunks made primary on their writer's host since start (after a copy there, where there was none). */
  followed = 0;
  private readonly options: RecoverySchedulerOptions;
  private readonly inFlight = new Set<number>();
  /**
   * chunkId -> servers an add to which failed lately, with when to try them again: the planner
   * picks another target meanwhile rather than failing on the same one every tick. Bounded.
   */
  private readonly failedTargets = new Map<number, Array<{ csId: number; untilMs: number }>>();
  private readonly running = new Set<Promise<void>>();
  private stopped = false;

  constructor(options: RecoverySchedulerOptions) {
    this.options = options;
  }

  /** Plans and starts what fits; returns the number of actions started. */
  tick(): number {
    if (this.stopped) return 0;
    const { replicator } = this.options;
    const view = this.options.view();
    const plan = planRecovery({
      servers: view.servers,
      chunks: view.chunks,
      ...(view.mappedBytes === undefined ? {} : { mappedBytes: view.mappedBytes }),
      ...(view.chunksOn === undefined ? {} : { chunksOn: view.chunksOn }),
      ...(view.tierMoveHeld === undefined ? {} : { tierMoveHeld: view.tierMoveHeld }),
      ...(view.follow === undefined ? {} : { follow: view.follow }),
      followAllowed: (this.options.localityBytesPerSecond ?? 0) > 0 && this.followInFlight === 0 && this.options.nowMs() >= this.followNextAtMs,
      busy: (chunkId) => this.inFlight.has(chunkId) || replicator.isBusy(chunkId),
      avoidTargets: (chunkId) => this.avoidTargets(chunkId),
      config: this.options.planner,
      rebalance: view.rebalance,
      rebalanceMoveInFlight: this.rebalanceMovesInFlight > 0,
      random: this.options.random,
    });
    this.lastRebalance = plan.rebalance;
    this.stats.pending = plan.actions.length;
    this.stats.blocked = plan.blocked;
    this.stats.waiting = plan.waiting;
    this.stats.misplacedStuck = plan.misplacedStuck;
    let started = 0;
    for (const action of plan.actions) {
      if (this.inFlight.size >= this.options.concurrency) break;
      if (this.inFlight.has(action.chunk.chunkId)) continue;
      this.start(action, view.rebalanceTaskId);
      started += 1;
    }
    return started;
  }

  private start(action: RecoveryAction, rebalanceTaskId: number | null): void {
    const { chunk } = action;
    this.inFlight.add(chunk.chunkId);
    this.stats.running += 1;
    this.stats.started += 1;
    let succeeded = false;
    const rebalancing = action.kind === 'add' && action.purpose === 'rebalance';
    if (rebalancing) this.rebalanceMovesInFlight += 1;
    const following = action.kind === 'promote' || (action.kind === 'add' && action.purpose === 'locality');
    if (following) this.followInFlight += 1;
    assert(this.rebalanceMovesInFlight <= 1, 'one rebalancing move at a time (see planRecovery)');
    const work = this.execute(action, rebalanceTaskId)
      .then(() => {
        this.stats.succeeded += 1;
        succeeded = true;
      })
      .catch((error: unknown) => {
        this.stats.failed += 1;
        if (action.kind === 'add') this.rememberFailedTarget(chunk.chunkId, action.target);
        this.options.log.warn('recovery action failed; it will be planned again', {
          kind: action.kind, chunkId: chunk.chunkId, reason: action.reason, error,
        });
      })
      .finally(() => {
        this.inFlight.delete(chunk.chunkId);
        this.stats.running -= 1;
        if (rebalancing) this.rebalanceMovesInFlight -= 1;
        if (following) {
          this.followInFlight -= 1;
          const rate = this.options.localityBytesPerSecond ?? 0;
          const gapMs = action.kind === 'promote' || rate === 0 ? PROMOTE_GAP_MS : (chunk.chunkSizeBytes / rate) * 1000;
          this.followNextAtMs = this.options.nowMs() + gapMs;
          if (succeeded && action.kind === 'promote') this.followed += 1;
        }
        this.running.delete(work);
        // A finished action makes room: plan again now rather than at the next tick. After a
        // failure, wait for the tick: retrying at once would spin on a server that is down.
        if (succeeded && !this.stopped) this.tick();
      });
    this.running.add(work);
  }

  private avoidTargets(chunkId: number): number[] {
    const entries = this.failedTargets.get(chunkId);
    if (entries === undefined) return [];
    const nowMs = this.options.nowMs();
    const live = entries.filter((entry) => entry.untilMs > nowMs);
    if (live.length === 0) this.failedTargets.delete(chunkId);
    else this.failedTargets.set(chunkId, live);
    return live.map((entry) => entry.csId);
  }

  private rememberFailedTarget(chunkId: number, csId: number): void {
    const entries = (this.failedTargets.get(chunkId) ?? []).filter((entry) => entry.csId !== csId);
    entries.push({ csId, untilMs: this.options.nowMs() + FAILED_TARGET_BACKOFF_MS });
    setBounded(this.failedTargets, chunkId, entries, FAILED_TARGETS_MAX);
  }

  private async execute(action: RecoveryAction, rebalanceTaskId: number | null): Promise<void> {
    const { replicator } = this.options;
    const { chunk } = action;
    switch (action.kind) {
      case 'settle':
        await replicator.settle(chunk.volumeId, chunk.chunkIndex);
        return;
      case 'drop':
        await replicator.drop(chunk.volumeId, chunk.chunkIndex, action.csIds, { reason: action.reason });
        return;
      case 'promote':
        await replicator.promote(chunk.volumeId, chunk.chunkIndex, action.csId, action.reason);
        return;
      case 'add':
        await replicator.add(chunk.volumeId, chunk.chunkIndex, action.target);
        // The tier changed back meanwhile: the leaving member is where it belongs again, and the
        // new copy is the one too many (the planner sheds it, the one on the wrong tier first).
        if (action.purpose === 'tier' && action.thenDrop !== null && this.options.stillMisplaced?.(chunk.volumeId, action.thenDrop) === false) return;
        if (action.thenDrop !== null) {
          const counted = action.purpose === 'rebalance' && rebalanceTaskId !== null ? { countForTaskId: rebalanceTaskId } : {};
          await replicator.drop(chunk.volumeId, chunk.chunkIndex, [action.thenDrop], { reason: action.reason, ...counted });
        }
        return;
    }
  }

  /** Stops planning and waits for the actions in flight (shutdown). */
  async drain(): Promise<void> {
    this.stopped = true;
    this.options.replicator.stop();
    await Promise.allSettled([...this.running]);
  }
}
