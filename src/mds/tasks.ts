// Long operations as durable tasks. A task is a record in the MDS's store (model.ts TaskRecord),
// changed only by ops (ops.ts: startDrainTask, setTaskState, recordTaskProgress), so it survives
// an MDS restart and whoever started it going away; `tick` (every second, from the MDS's
// background loop) follows each running task and saves its progress every PROGRESS_SAVE_MS.
//
// A drain is the work the recovery planner already does for a draining server (recovery.ts moves
// each replica off: add a copy elsewhere, then drop this one, as one change of the chunk's set);
// the task gives it an id, progress (replicas and bytes still mapped to the server against what it
// held at the start), a rate and an ETA, pause/resume/cancel, and refusal of a second operation on
// the same server. It is done when the map places nothing on the server.
//
// The rate and ETA are measured here, in memory: after a restart they come back within seconds.

import { StorageError } from '../errors.ts';
import type { TaskInfo } from '../protocol/api.ts';
import { assert } from '../util/assert.ts';
import type { Clock } from '../util/clock.ts';
import type { Logger } from '../util/log.ts';
import { RateMeter } from '../util/rate_meter.ts';
import { drainProgress, type TaskRecord } from './model.ts';
import type { MdsStore } from './store.ts';

/** Progress is saved this often at most while it changes (each save is one op). */
export const PROGRESS_SAVE_MS = 5_000;
/** A running task that moved nothing for this long gets a note saying so (and why, when known). */
export const STALL_NOTE_AFTER_MS = 30_000;
/** The rate is measured over this window. */
const RATE_WINDOW_MS = 30_000;

export interface TasksDeps {
  readonly store: MdsStore;
  readonly clock: Clock;
  readonly log: Logger;
  /** Asks the recovery planner to look again (a drain started, paused or resumed). */
  readonly replan: () => void;
  /** Chunks the planner finds no eligible server for (a drain that cannot finish shows it). */
  readonly blockedChunks: () => number;
}

export class Tasks {
  private readonly deps: TasksDeps;
  private readonly meters = new Map<number, RateMeter>();
  private readonly savedAtMs = new Map<number, number>();
  /** When each running task last moved something (or when this MDS first saw it). */
  private readonly progressAtMs = new Map<number, { atMs: number; itemsDone: number; bytesDone: number }>();
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
    } finally {
      this.ticking = false;
    }
  }

  private async follow(task: TaskRecord): Promise<void> {
    const nowMs = this.deps.clock.nowMs();
    const left = this.deps.store.tables.serverMapped(task.chunkServerId);
    if (left.replicaCount === 0) {
      const done = await this.deps.store.submit({ type: 'setTaskState', taskId: task.id, state: 'done', error: null, nowMs });
      assert(done.type === 'task', 'setTaskState yields a task');
      this.deps.log.info('task done', { task: task.id, kind: task.kind, csId: task.chunkServerId, replicas: done.record.itemsTotal });
      this.forget(task.id);
      return;
    }
    const progress = drainProgress(task, left);
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

  /** Why a running task has moved nothing for a while, or null. */
  private stallNote(task: TaskRecord): string | null {
    const last = this.progressAtMs.get(task.id);
    if (task.state !== 'running' || last === undefined) return null;
    const stalledMs = this.deps.clock.nowMs() - last.atMs;
    if (stalledMs < STALL_NOTE_AFTER_MS) return null;
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
    this.meters.delete(taskId);
    this.savedAtMs.delete(taskId);
    this.progressAtMs.delete(taskId);
  }

  /** The API's view: the record, with the progress of a running drain read live from the map. */
  private info(task: TaskRecord): TaskInfo {
    const { itemsDone, itemsTotal, bytesDone, bytesTotal } = task.state === 'running'
      ? drainProgress(task, this.deps.store.tables.serverMapped(task.chunkServerId)) : task;
    const rate = task.state === 'running' ? this.meters.get(task.id)?.bytesPerSecond() ?? null : null;
    const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());
    return {
      id: task.id,
      kind: task.kind,
      target: { chunkServerId: task.chunkServerId },
      state: task.state,
      progress: { itemsDone, itemsTotal, bytesDone, bytesTotal },
      bytesPerSecond: rate,
      etaSeconds: rate !== null && rate > 0 ? Math.ceil((bytesTotal - bytesDone) / rate) : null,
      error: task.error,
      note: this.stallNote(task),
      idempotencyKey: task.idempotencyKey,
      createdAt: new Date(task.createdAtMs).toISOString(),
      updatedAt: new Date(task.updatedAtMs).toISOString(),
      finishedAt: iso(task.finishedAtMs),
    };
  }
}
