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
import { isFinalTaskState, type TaskRecord } from './model.ts';
import type { MdsStore } from './store.ts';

/** Progress is saved this often at most while it changes (each save is one op). */
export const PROGRESS_SAVE_MS = 5_000;
/** The rate is measured over this window. */
const RATE_WINDOW_MS = 30_000;

export interface TasksDeps {
  readonly store: MdsStore;
  readonly clock: Clock;
  readonly log: Logger;
  /** Asks the recovery planner to look again (a drain started, paused or resumed). */
  readonly replan: () => void;
}

export class Tasks {
  private readonly deps: TasksDeps;
  private readonly meters = new Map<number, RateMeter>();
  private readonly savedAtMs = new Map<number, number>();
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
      for (const task of this.deps.store.tables.listTasks()) {
        if (task.state === 'running') await this.follow(task);
        else if (isFinalTaskState(task.state)) this.forget(task.id);
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
    // Replicas placed on the server while a drain was paused join its total.
    const itemsDone = Math.max(task.itemsDone, task.itemsTotal - left.replicaCount);
    const itemsTotal = itemsDone + left.replicaCount;
    const bytesDone = Math.max(task.bytesDone, task.bytesTotal - left.mappedBytes);
    const bytesTotal = bytesDone + left.mappedBytes;
    this.meterOf(task.id).add(nowMs, bytesDone);
    const changed = itemsDone !== task.itemsDone || itemsTotal !== task.itemsTotal || bytesDone !== task.bytesDone || bytesTotal !== task.bytesTotal;
    if (!changed || nowMs - (this.savedAtMs.get(task.id) ?? 0) < PROGRESS_SAVE_MS) return;
    this.savedAtMs.set(task.id, nowMs);
    await this.deps.store.submit({ type: 'recordTaskProgress', taskId: task.id, itemsDone, itemsTotal, bytesDone, bytesTotal, nowMs });
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
  }

  /** The API's view: the record, with the progress of a running drain read live from the map. */
  private info(task: TaskRecord): TaskInfo {
    let { itemsDone, itemsTotal, bytesDone, bytesTotal } = task;
    if (task.state === 'running') {
      const left = this.deps.store.tables.serverMapped(task.chunkServerId);
      itemsDone = Math.max(itemsDone, itemsTotal - left.replicaCount);
      itemsTotal = itemsDone + left.replicaCount;
      bytesDone = Math.max(bytesDone, bytesTotal - left.mappedBytes);
      bytesTotal = bytesDone + left.mappedBytes;
    }
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
      idempotencyKey: task.idempotencyKey,
      createdAt: new Date(task.createdAtMs).toISOString(),
      updatedAt: new Date(task.updatedAtMs).toISOString(),
      finishedAt: iso(task.finishedAtMs),
    };
  }
}
