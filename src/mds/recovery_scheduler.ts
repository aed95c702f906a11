// Runs the recovery plan: every tick it asks the planner (recovery.ts) what should change and
// starts the most urgent actions, at most `concurrency` at a time, with copies paced by the
// replicator's rate limit so foreground I/O keeps its share of disks and network. It never
// decides anything itself.

import type { Logger } from '../util/log.ts';
import { planRecovery, type PlannerChunk, type PlannerConfig, type PlannerServer, type RecoveryAction } from './recovery.ts';
import type { Replicator } from './replicator.ts';

export interface RecoverySchedulerOptions {
  readonly replicator: Replicator;
  readonly log: Logger;
  readonly random: () => number;
  readonly concurrency: number;
  readonly planner: PlannerConfig;
  /** The current picture: servers and every chunk with its volume's replica settings. */
  readonly view: () => { servers: PlannerServer[]; chunks: Iterable<PlannerChunk> };
}

export interface RecoveryStats {
  running: number;
  started: number;
  succeeded: number;
  failed: number;
  /** Actions the last plan held (0 = nothing to do: every chunk as it should be). */
  pending: number;
  /** Chunks the last plan could not help: no eligible server in a free failure domain. */
  blocked: number;
}

export class RecoveryScheduler {
  readonly stats: RecoveryStats = { running: 0, started: 0, succeeded: 0, failed: 0, pending: 0, blocked: 0 };
  private readonly options: RecoverySchedulerOptions;
  private readonly inFlight = new Set<number>();
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
      busy: (chunkId) => this.inFlight.has(chunkId) || replicator.isBusy(chunkId),
      config: this.options.planner,
      random: this.options.random,
    });
    this.stats.pending = plan.actions.length;
    this.stats.blocked = plan.blocked;
    let started = 0;
    for (const action of plan.actions) {
      if (this.inFlight.size >= this.options.concurrency) break;
      if (this.inFlight.has(action.chunk.chunkId)) continue;
      this.start(action);
      started += 1;
    }
    return started;
  }

  private start(action: RecoveryAction): void {
    const { chunk } = action;
    this.inFlight.add(chunk.chunkId);
    this.stats.running += 1;
    this.stats.started += 1;
    let succeeded = false;
    const work = this.execute(action)
      .then(() => {
        this.stats.succeeded += 1;
        succeeded = true;
      })
      .catch((error: unknown) => {
        this.stats.failed += 1;
        this.options.log.warn('recovery action failed; it will be planned again', {
          kind: action.kind, chunkId: chunk.chunkId, reason: action.reason, error,
        });
      })
      .finally(() => {
        this.inFlight.delete(chunk.chunkId);
        this.stats.running -= 1;
        this.running.delete(work);
        // A finished action makes room: plan again now rather than at the next tick. After a
        // failure, wait for the tick: retrying at once would spin on a server that is down.
        if (succeeded && !this.stopped) this.tick();
      });
    this.running.add(work);
  }

  private async execute(action: RecoveryAction): Promise<void> {
    const { replicator } = this.options;
    const { chunk } = action;
    switch (action.kind) {
      case 'settle':
        await replicator.settle(chunk.volumeId, chunk.chunkIndex);
        return;
      case 'drop':
        await replicator.drop(chunk.volumeId, chunk.chunkIndex, action.csIds, { reason: action.reason });
        return;
      case 'add':
        await replicator.add(chunk.volumeId, chunk.chunkIndex, action.target);
        if (action.thenDrop !== null) {
          await replicator.drop(chunk.volumeId, chunk.chunkIndex, [action.thenDrop], { reason: action.reason });
        }
        return;
    }
  }

  /** Stops planning and waits for the actions in flight (shutdown). */
  async drain(): Promise<void> {
    this.stopped = true;
    await Promise.allSettled([...this.running]);
  }
}
