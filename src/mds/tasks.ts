// Long operations as durable tasks. A task is a record in the MDS's store (model.ts TaskRecord),
// changed only by ops (ops.ts: startDrainTask, startRebalanceTask, setTaskState,
// recordTaskProgress), so it survives an MDS restart and whoever started it going away; `tick`
// (every second, from the MDS's background loop) follows each running task and saves its
// progress every PROGRESS_SAVE_MS.
//
// A drain is the work the recovery planner already does for a draining server (recovery.ts moves
// each replica off: add a copy elsewhere, then drop this one, as one change of the chunk's set);
// the task gives it an id, progress (replicas and bytes still mapped to the server against what it
// held at the start), a rate and an ETA, pause/resume/cancel, and refusal of a second operation on
// the same server. It is done when the map places nothing on the server.
//
// A rebalance is the planner moving replicas from the fullest server to the emptiest, which it
// does only while a rebalance task runs (rebalanceModeOf, below). An admin starts one with a
// threshold; the MDS starts one by itself when the planner judges the servers further apart than
// its --rebalance-threshold, to half that threshold (so that servers hovering around it do not
// start one task after another), unless an admin cancelled one, or one at least as loose failed,
// in the last AUTO_REBALANCE_HOLDOFF_MS. Its progress is the moves finished for it (each counted in the
// commit that completes it: ops.ts countMove) against those plus an estimate of what is left
// (saved with the rest every PROGRESS_SAVE_MS); it is done when the planner finds
// the servers within the threshold, and fails when no replica can move for STUCK_FAIL_AFTER_MS
// (failure domains or full servers in the way), saying why.
//
// A tier move follows the replicas a change of tier left on the wrong tier: the change itself
// (a volume's or a chunk server's tier) commits with the start of the task, and the planner moves
// those replicas at the recovery rate (recovery.ts). Progress: the replicas still on the wrong
// tier (tiers.ts, from the kept counts) against what there was at the start. Done when none is
// left; a pause holds its replicas where they are; a cancel puts the tier back, and what moved
// moves back. While the tier has no room, the task waits and its note says so.
//
// The rate and ETA are measured here, in memory: after a restart they come back within seconds.

import { StorageError } from '../errors.ts';
import type { TaskInfo } from '../protocol/api.ts';
import { assert } from '../util/assert.ts';
import type { Clock } from '../util/clock.ts';
import type { Logger } from '../util/log.ts';
import { RateMeter } from '../util/rate_meter.ts';
import type { RebalanceStatus } from './cluster.ts';
import {
  progressFromLeft, isFinalTaskState, type MdsTables, type RebalanceTaskRecord, type TaskProgress, type TaskRecord, type TierTarget, type TierTaskRecord,
} from './model.ts';
import type { RebalanceMode } from './recovery.ts';
import { activeRebalance, tierTaskLeft } from './ops.ts';
import type { MdsStore } from './store.ts';

/** Progress is saved this often at most while it changes (each save is one op). */
export const PROGRESS_SAVE_MS = 5_000;
/** A running task that moved nothing for this long gets a note saying so (and why, when known). */
export const STALL_NOTE_AFTER_MS = 30_000;
/** The rate is measured over this window. */
const RATE_WINDOW_MS = 30_000;
/** A rebalance whose planner finds no replica that can move for this long fails, saying why. */
export const STUCK_FAIL_AFTER_MS = 30_000;
/** After a rebalance was cancelled or failed, the MDS starts none by itself for this long (an admin still can). */
export const AUTO_REBALANCE_HOLDOFF_MS = 3_600_000;

export interface TasksDeps {
  readonly store: MdsStore;
  readonly clock: Clock;
  readonly log: Logger;
  /** Asks the recovery planner to look again (a drain started, paused or resumed). */
  readonly replan: () => void;
  /** Chunks the planner finds no eligible server for (a drain that cannot finish shows it). */
  readonly blockedChunks: () => number;
  /** Chunks on the wrong tier the planner finds no server of their tier with room for. */
  readonly misplacedStuckChunks: () => number;
  /** A volume's name, for the API's view of a tier task (null once deleted). */
  readonly volumeName: (volumeId: number) => string | null;
  /** The servers' balance as the planner last judged it. */
  readonly rebalance: () => RebalanceStatus;
  /** The MDS's --rebalance-threshold as a fraction: beyond it the MDS starts a rebalance by itself (1 or more: never). */
  readonly autoRebalanceThreshold: number;
}


/**
 * What the recovery planner may do about balance: move replicas, to its threshold, while a
 * rebalance task runs (whose moves then count for it); otherwise only judge the servers against
 * the MDS's own threshold (`tick` starts a task when they are beyond it).
 */
export function rebalanceModeOf(tables: MdsTables, autoThresholdFraction: number): { rebalance: RebalanceMode; rebalanceTaskId: number | null } {
  const task = activeRebalance(tables);
  if (task?.kind === 'rebalance' && task.state === 'running') {
    return { rebalance: { thresholdFraction: task.thresholdFraction, move: true }, rebalanceTaskId: task.id };
  }
  return { rebalance: { thresholdFraction: autoThresholdFraction, move: false }, rebalanceTaskId: null };
}

/**
 * Replicas on the wrong tier that a paused tier task holds where they are: those on its server,
 * or those of its volume. `(csId, volumeId) => held`.
 */
export function tierMovesHeld(tables: MdsTables): (csId: number, volumeId: number) => boolean {
  const servers = new Set<number>();
  const volumes = new Set<number>();
  for (const task of tables.listTasks()) {
    if (task.kind !== 'tier' || task.state !== 'paused') continue;
    if ('chunkServerId' in task.target) servers.add(task.target.chunkServerId);
    else volumes.add(task.target.volumeId);
  }
  return (csId, volumeId) => servers.has(csId) || volumes.has(volumeId);
}

export class Tasks {
  private readonly deps: TasksDeps;
  private readonly meters = new Map<number, RateMeter>();
  private readonly savedAtMs = new Map<number, number>();
  /** When each running task last moved something (or when this MDS first saw it). */
  private readonly progressAtMs = new Map<number, { atMs: number; itemsDone: number; bytesDone: number }>();
  /** Since when the planner has found no replica a running rebalance could move. */
  private readonly stuckSinceMs = new Map<number, number>();
  private ticking = false;

  constructor(deps: TasksDeps) {
    this.deps = deps;
  }

  /** Starts a drain of `csId`, or returns the task an earlier request with the same key started. */
  async startDrain(csId: number, idempotencyKey: string | null, joinRunning = false): Promise<{ task: TaskInfo; created: boolean }> {
    const result = await this.deps.store.submit({ type: 'startDrainTask', csId, idempotencyKey, joinRunning, nowMs: this.deps.clock.nowMs() });
    assert(result.type === 'task', 'startDrainTask yields a task');
    const created = result.created === true;
    if (created) this.deps.log.info('task started', { task: result.record.id, kind: 'drain', csId, replicas: result.record.itemsTotal });
    this.deps.replan();
    return { task: this.info(result.record), created };
  }

  /**
   * Starts a rebalance to within `thresholdPercent` points (null: the MDS's own threshold), or
   * returns the task an earlier request with the same key started. One at a time.
   */
  async startRebalance(thresholdPercent: number | null, idempotencyKey: string | null): Promise<{ task: TaskInfo; created: boolean }> {
    const thresholdFraction = thresholdPercent === null ? this.deps.autoRebalanceThreshold : thresholdPercent / 100;
    // A retry with its key gets its task back whatever the MDS's threshold is now.
    const same = idempotencyKey === null ? undefined : this.deps.store.tables.listTasks().find((task) => task.idempotencyKey === idempotencyKey);
    if (same?.kind === 'rebalance' && (thresholdPercent === null || same.thresholdFraction === thresholdFraction)) {
      return { task: this.info(same), created: false };
    }
    if (thresholdFraction >= 1) {
      throw new StorageError('ERR_INVALID_ARGUMENT',
        'this MDS does not rebalance by itself (--rebalance-threshold 100): give the threshold to balance to (shoal cs rebalance --threshold PCT)');
    }
    return this.submitRebalance(thresholdFraction, 'admin', idempotencyKey);
  }

  /**
   * Changes a volume's or a chunk server's tier and starts the task that follows the moves it
   * causes, or returns the task an earlier request with the same key started.
   */
  async startTier(target: TierTarget, tier: number, idempotencyKey: string | null): Promise<{ task: TaskInfo; created: boolean }> {
    const result = await this.deps.store.submit({ type: 'startTierTask', target, tier, idempotencyKey, nowMs: this.deps.clock.nowMs() });
    assert(result.type === 'task' && result.record.kind === 'tier', 'startTierTask yields a tier task');
    const created = result.created === true;
    if (created) {
      this.deps.log.info('task started', {
        task: result.record.id, kind: 'tier', ...target, fromTier: result.record.fromTier, toTier: tier, replicas: result.record.itemsTotal,
      });
    }
    this.deps.replan();
    return { task: this.info(result.record), created };
  }

  private async submitRebalance(thresholdFraction: number, startedBy: 'admin' | 'mds', idempotencyKey: string | null): Promise<{ task: TaskInfo; created: boolean }> {
    const status = this.deps.rebalance();
    // Judged against another threshold, the estimate is rough; the first tick under the task corrects it.
    const bytes = status.judgement?.remainingBytes ?? 0;
    const estimate = { items: this.replicasFor(bytes, status), bytes };
    const result = await this.deps.store.submit({ type: 'startRebalanceTask', thresholdFraction, startedBy, idempotencyKey, estimate, nowMs: this.deps.clock.nowMs() });
    assert(result.type === 'task', 'startRebalanceTask yields a task');
    const created = result.created === true;
    if (created) {
      this.deps.log.info('task started', {
        task: result.record.id, kind: 'rebalance', startedBy, thresholdPercent: Math.round(thresholdFraction * 100),
        spreadPercent: status.judgement === null ? null : percent(status.judgement.spreadFraction),
      });
    }
    this.deps.replan();
    return { task: this.info(result.record), created };
  }

  private replicasFor(bytes: number, status: RebalanceStatus): number {
    return bytes === 0 || status.averageReplicaBytes === 0 ? 0 : Math.ceil(bytes / status.averageReplicaBytes);
  }

  async pause(taskId: number): Promise<TaskInfo> {
    return this.move(taskId, 'paused', null);
  }

  async resume(taskId: number): Promise<TaskInfo> {
    return this.move(taskId, 'running', null);
  }

  async cancel(taskId: number): Promise<TaskInfo> {
    return this.move(taskId, 'cancelled', 'cancelled by an admin');
  }

  get(taskId: number): TaskInfo {
    const task = this.deps.store.tables.getTask(taskId);
    if (task === undefined) throw new StorageError('ERR_NOT_FOUND', `task ${taskId} does not exist (finished tasks are kept for a while, then dropped)`);
    return this.info(task);
  }

  list(): TaskInfo[] {
    return this.deps.store.tables.listTasks().map((task) => this.info(task));
  }

  /** Follows every running task once: progress, and the end of those that are done. */
  async tick(): Promise<void> {
    if (this.ticking) return;
    this.ticking = true;
    try {
      for (const { id } of this.deps.store.tables.listTasks()) {
        // Read again: an admin's pause or cancel may have committed while the last one was saved.
        const task = this.deps.store.tables.getTask(id);
        if (task === undefined || task.state !== 'running') {
          this.forget(id);
          continue;
        }
        await this.follow(task).catch((error: unknown) => {
          // An admin's change won the race (the task is no longer running): the next tick sees it.
          this.deps.log.warn('could not update a task; trying again next tick', { task: id, error });
        });
      }
      await this.startRebalanceIfDue().catch((error: unknown) => {
        this.deps.log.warn('could not start a rebalance; trying again next tick', { error });
      });
    } finally {
      this.ticking = false;
    }
  }

  /** The MDS's own rebalance: when the planner judges the servers beyond its threshold and none is going. */
  private async startRebalanceIfDue(): Promise<void> {
    const threshold = this.deps.autoRebalanceThreshold;
    const judgement = this.deps.rebalance().judgement;
    if (threshold >= 1 || judgement === null || judgement.outcome !== 'wanted' || judgement.mode.thresholdFraction !== threshold) return;
    const tasks = this.deps.store.tables.listTasks();
    if (activeRebalance(this.deps.store.tables) !== undefined) return;
    const nowMs = this.deps.clock.nowMs();
    // An admin's cancel holds it off; so does a failure of a task at least as loose as this one
    // would be (it would fail the same way), but not one of a tighter task an admin asked for.
    const goal = autoRebalanceGoal(threshold);
    const held = tasks.some((task) => task.kind === 'rebalance' && task.finishedAtMs !== null && nowMs - task.finishedAtMs < AUTO_REBALANCE_HOLDOFF_MS &&
      (task.state === 'cancelled' || (task.state === 'failed' && task.thresholdFraction >= goal)));
    if (held) return;
    await this.submitRebalance(goal, 'mds', null);
  }

  private async follow(task: TaskRecord): Promise<void> {
    const nowMs = this.deps.clock.nowMs();
    const ended = task.kind === 'drain' ? this.drainEnd(task) : task.kind === 'tier' ? this.tierEnd(task) : this.rebalanceEnd(task, nowMs);
    const progress = this.liveProgress(task);
    if (ended !== null) {
      // One op: the change records the progress as of its commit (a drain's from the map, a rebalance's as counted).
      const done = await this.deps.store.submit({ type: 'setTaskState', taskId: task.id, state: ended.state, error: ended.error, nowMs });
      assert(done.type === 'task', 'setTaskState yields a task');
      const log = ended.state === 'done' ? this.deps.log.info.bind(this.deps.log) : this.deps.log.warn.bind(this.deps.log);
      log(`task ${ended.state}`, { task: task.id, kind: task.kind, replicas: done.record.itemsDone, error: ended.error });
      this.forget(task.id);
      return;
    }
    this.meterOf(task.id).add(nowMs, progress.bytesDone);
    const last = this.progressAtMs.get(task.id);
    if (last === undefined || progress.itemsDone !== last.itemsDone || progress.bytesDone !== last.bytesDone) {
      this.progressAtMs.set(task.id, { atMs: nowMs, itemsDone: progress.itemsDone, bytesDone: progress.bytesDone });
    }
    const changed = progress.itemsDone !== task.itemsDone || progress.itemsTotal !== task.itemsTotal ||
      progress.bytesDone !== task.bytesDone || progress.bytesTotal !== task.bytesTotal;
    if (!changed || nowMs - (this.savedAtMs.get(task.id) ?? 0) < PROGRESS_SAVE_MS) return;
    this.savedAtMs.set(task.id, nowMs);
    await this.deps.store.submit({ type: 'recordTaskProgress', taskId: task.id, ...progress, nowMs });
  }

  /** A drain ends when the map places nothing on its server. */
  private drainEnd(task: Extract<TaskRecord, { kind: 'drain' }>): { state: 'done'; error: null } | null {
    return this.deps.store.tables.serverMapped(task.chunkServerId).replicaCount === 0 ? { state: 'done', error: null } : null;
  }

  /** A tier move ends when no replica of its target is left on the wrong tier. */
  private tierEnd(task: TierTaskRecord): { state: 'done'; error: null } | null {
    return tierTaskLeft(this.deps.store.tables, task.target).replicaCount === 0 ? { state: 'done', error: null } : null;
  }

  /** A rebalance ends when the planner, judging under it, finds the servers within its threshold, or finds no move for too long. */
  private rebalanceEnd(task: RebalanceTaskRecord, nowMs: number): { state: 'done' | 'failed'; error: string | null } | null {
    const judgement = this.judgementUnder(task);
    if (judgement === null) return null;
    if (judgement.outcome === 'balanced') return this.deps.rebalance().movesInFlight === 0 ? { state: 'done', error: null } : null;
    if (judgement.outcome !== 'stuck') {
      this.stuckSinceMs.delete(task.id);
      return null;
    }
    const since = this.stuckSinceMs.get(task.id) ?? nowMs;
    this.stuckSinceMs.set(task.id, since);
    if (nowMs - since < STUCK_FAIL_AFTER_MS) return null;
    return {
      state: 'failed',
      error: `cannot balance further: the servers are ${percent(judgement.spreadFraction)} points apart, the threshold is ` +
        `${percent(task.thresholdFraction)}, and ${judgement.detail}`,
    };
  }

  /** The planner's last judgement if it was made under this running task (not before it started, nor against another threshold). */
  private judgementUnder(task: RebalanceTaskRecord) {
    const judgement = this.deps.rebalance().judgement;
    if (judgement === null || !judgement.mode.move || judgement.mode.thresholdFraction !== task.thresholdFraction) return null;
    return judgement;
  }

  /** A running task's progress now: a drain's from the map, a rebalance's from the moves finished for it. */
  private liveProgress(task: TaskRecord): TaskProgress {
    if (task.kind === 'drain') return progressFromLeft(task, this.deps.store.tables.serverMapped(task.chunkServerId));
    if (task.kind === 'tier') return progressFromLeft(task, tierTaskLeft(this.deps.store.tables, task.target));
    const { itemsDone, bytesDone } = task;
    const judgement = this.judgementUnder(task);
    // Until the planner has judged under this task, what was estimated before stands.
    const leftBytes = judgement === null ? Math.max(0, task.bytesTotal - task.bytesDone) : judgement.remainingBytes;
    const leftItems = judgement === null ? Math.max(0, task.itemsTotal - task.itemsDone) : this.replicasFor(leftBytes, this.deps.rebalance());
    return { itemsDone, itemsTotal: itemsDone + leftItems, bytesDone, bytesTotal: bytesDone + leftBytes };
  }

  /** Why a running task has moved nothing for a while, or null. */
  private stallNote(task: TaskRecord): string | null {
    const last = this.progressAtMs.get(task.id);
    if (task.state !== 'running' || last === undefined) return null;
    if (task.kind === 'rebalance') {
      const judgement = this.judgementUnder(task);
      if (judgement?.outcome === 'deferred') return `waiting: ${judgement.detail}`;
      if (judgement?.outcome === 'stuck') return `no replica can move now: ${judgement.detail}`;
    }
    const stalledMs = this.deps.clock.nowMs() - last.atMs;
    if (stalledMs < STALL_NOTE_AFTER_MS) return null;
    const stuck = this.deps.misplacedStuckChunks();
    if (task.kind === 'tier' && stuck > 0) {
      const where = 'volumeId' in task.target ? `tier ${task.toTier}` : 'the tiers of the volumes whose replicas it holds';
      return `nothing moved for ${Math.round(stalledMs / 1000)} s: the planner finds no server of the right tier with room ` +
        `and a free failure domain for ${stuck} chunks: add servers or capacity to ${where}, or cancel the task to put the tier back`;
    }
    const blocked = this.deps.blockedChunks();
    const why = blocked > 0
      ? `: the planner finds no eligible server for ${blocked} chunks (too few active servers or failure domains?)`
      : ' (see the MDS log; recovery may be busy with chunks below their minimum first)';
    return `nothing moved for ${Math.round(stalledMs / 1000)} s${why}`;
  }

  private async move(taskId: number, state: 'paused' | 'running' | 'cancelled', error: string | null): Promise<TaskInfo> {
    const result = await this.deps.store.submit({ type: 'setTaskState', taskId, state, error, nowMs: this.deps.clock.nowMs() });
    assert(result.type === 'task', 'setTaskState yields a task');
    this.deps.log.info('task changed', { task: taskId, state });
    if (state !== 'running') this.forget(taskId);
    this.deps.replan();
    return this.info(result.record);
  }

  private meterOf(taskId: number): RateMeter {
    let meter = this.meters.get(taskId);
    if (meter === undefined) {
      meter = new RateMeter(RATE_WINDOW_MS);
      this.meters.set(taskId, meter);
    }
    return meter;
  }

  private forget(taskId: number): void {
    this.stuckSinceMs.delete(taskId);
    this.meters.delete(taskId);
    this.savedAtMs.delete(taskId);
    this.progressAtMs.delete(taskId);
  }

  /** The API's view: the record, with a running task's progress read live. */
  private info(task: TaskRecord): TaskInfo {
    const running = task.state === 'running';
    const { itemsDone, itemsTotal, bytesDone, bytesTotal } = running ? this.liveProgress(task) : task;
    const rate = running ? this.meters.get(task.id)?.bytesPerSecond() ?? null : null;
    const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());
    const judgement = task.kind === 'rebalance' && running ? this.judgementUnder(task) : null;
    return {
      id: task.id,
      kind: task.kind,
      target: this.targetOf(task),
      tier: task.kind === 'tier' ? { from: task.fromTier, to: task.toTier } : null,
      startedBy: task.kind === 'rebalance' ? task.startedBy : 'admin',
      thresholdPercent: task.kind === 'rebalance' ? percent(task.thresholdFraction) : null,
      spreadPercent: judgement === null ? null : percent(judgement.spreadFraction),
      state: task.state,
      progress: { itemsDone, itemsTotal, bytesDone, bytesTotal },
      bytesPerSecond: rate,
      etaSeconds: rate !== null && rate > 0 ? Math.ceil((bytesTotal - bytesDone) / rate) : null,
      error: task.error,
      note: isFinalTaskState(task.state) ? null : this.stallNote(task),
      idempotencyKey: task.idempotencyKey,
      createdAt: new Date(task.createdAtMs).toISOString(),
      updatedAt: new Date(task.updatedAtMs).toISOString(),
      finishedAt: iso(task.finishedAtMs),
    };
  }

  private targetOf(task: TaskRecord): TaskInfo['target'] {
    if (task.kind === 'drain') return { chunkServerId: task.chunkServerId };
    if (task.kind === 'rebalance') return {};
    if ('chunkServerId' in task.target) return { chunkServerId: task.target.chunkServerId };
    const name = this.deps.volumeName(task.target.volumeId);
    return { volumeId: task.target.volumeId, ...(name === null ? {} : { volume: name }) };
  }
}

/**
 * What the MDS's own rebalance balances to: half the threshold that starts it (at least one
 * point), so that it does not end right at the edge and start again at the next write.
 */
export function autoRebalanceGoal(thresholdFraction: number): number {
  return Math.max(0.01, thresholdFraction / 2);
}

/** A fraction as percentage points, to one decimal. */
function percent(fraction: number): number {
  return Math.round(Math.min(1, Math.max(0, fraction)) * 1000) / 10;
}
