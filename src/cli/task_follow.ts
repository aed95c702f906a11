// Following a task to its end from the CLI (`shoal task wait`, `shoal cs drain --wait`): a bar
// re-drawn in place on a terminal, a line every few seconds otherwise, riding out an MDS restart.
// The task goes on in the MDS whatever happens here; every way out says so.

import { StorageError } from '../errors.ts';
import type { TaskInfo } from '../protocol/api.ts';
import { formatBytes } from '../util/size.ts';
import type { CliContext } from './command.ts';
import { formatDuration, formatRate } from './format.ts';
import { CLEAR_LINE, isMdsAway, progressBar, redrawLine } from './progress.ts';

const POLL_INTERVAL_MS = 1_000;
const PLAIN_LINE_INTERVAL_MS = 5_000;
const BAR_WIDTH = 20;

export function what(task: TaskInfo): string {
  if (task.kind === 'tier') {
    const subject = task.target.chunkServerId !== undefined ? `chunk server ${task.target.chunkServerId}`
      : `volume ${task.target.volume === undefined ? task.target.volumeId ?? '?' : `"${task.target.volume}"`}`;
    const from = task.tier === null ? '?' : task.tier.from === null ? 'any tier' : `tier ${task.tier.from}`;
    return `move of ${subject} from ${from} to tier ${task.tier?.to ?? '?'}`;
  }
  if (task.target.chunkServerId !== undefined) return `${task.kind} of chunk server ${task.target.chunkServerId}`;
  const by = task.startedBy === 'mds' ? ', started by the MDS' : '';
  return `${task.kind} of the chunk servers to within ${task.thresholdPercent ?? '?'} points${by}`;
}

/** A task's target in a few characters (a table column, a progress bar). */
export function shortTarget(task: TaskInfo): string {
  if (task.target.chunkServerId !== undefined) return `cs ${task.target.chunkServerId}`;
  if (task.target.volumeId !== undefined) return `vol ${task.target.volume ?? task.target.volumeId}`;
  return 'all cs';
}

export function eta(task: TaskInfo): string {
  return task.etaSeconds === null ? '-' : formatDuration(task.etaSeconds * 1000);
}

function bar(task: TaskInfo, elapsedMs: number, note: string): string {
  const { itemsDone, itemsTotal } = task.progress;
  const head = `task ${task.id} ${task.kind} ${shortTarget(task)} ${progressBar(itemsDone, itemsTotal, BAR_WIDTH)} ${itemsDone}/${itemsTotal}`;
  if (note !== '') return `${head}  ${formatDuration(elapsedMs)}  ${note}`;
  return `${head}  ${formatRate(task.bytesPerSecond)}  ETA ${eta(task)}  ${formatDuration(elapsedMs)}`;
}

function plainLine(task: TaskInfo, note: string): string {
  const { itemsDone, itemsTotal, bytesDone, bytesTotal } = task.progress;
  return `task ${task.id} (${what(task)}): ${task.state}, ${itemsDone} of ${itemsTotal} replicas moved, ` +
    `${formatBytes(bytesDone)} of ${formatBytes(bytesTotal)}, ${formatRate(task.bytesPerSecond)}, ETA ${eta(task)}${note === '' ? '' : `; ${note}`}\n`;
}

/**
 * Follows a task until it ends: a bar re-drawn on a terminal, a line every few seconds otherwise.
 * Resolves with the finished task when it is done; rejects when it failed or was cancelled (exit
 * 1), on --timeout, or on Ctrl-C (exit 130), saying each time that the task itself goes on.
 */
export async function followTask(context: CliContext, id: number, timeoutMs: number | null): Promise<TaskInfo> {
  const mds = await context.mds();
  const startMs = Date.now();
  const deadlineMs = timeoutMs === null ? Infinity : startMs + timeoutMs;
  let task: TaskInfo | null = null;
  let lastPlainLineMs = -Infinity;
  let barShown = false;
  const goesOn = `the task goes on in the MDS (follow it with: shoal task wait ${id})`;
  const onInterrupt = (): void => {
    if (barShown) context.write('\n');
    process.stderr.write(`shoal: stopped waiting for task ${id}${task === null ? '' : ` (${task.state})`}; ${goesOn}\n`);
    process.exit(130);
  };
  process.once('SIGINT', onInterrupt);
  try {
    for (;;) {
      let note = '';
      try {
        task = await mds.getTask(id);
        note = task.note ?? (task.state === 'paused' ? `paused (shoal task resume ${id})` : '');
      } catch (error) {
        if (!isMdsAway(error)) throw error;
        note = `MDS unreachable, retrying (${error.code})`;
      }
      if (task?.state === 'done') return task;
      if (task?.state === 'failed' || task?.state === 'cancelled') {
        if (context.json) context.writeJson(task);
        throw new StorageError('ERR_CONFLICT', `task ${id} (${what(task)}) ${task.state}: ${task.error ?? 'no reason given'}`);
      }
      const nowMs = Date.now();
      if (nowMs >= deadlineMs) {
        throw new StorageError('ERR_TIMEOUT', task === null
          ? `the MDS did not answer for task ${id} within --timeout; ${goesOn}`
          : `task ${id} (${what(task)}) is still ${task.state} after ${formatDuration(nowMs - startMs)} ` +
            `(--timeout), ${task.progress.itemsDone} of ${task.progress.itemsTotal} done; ${goesOn}`);
      }
      // Nothing to show until the MDS has answered once.
      if (task !== null && !context.json) {
        if (context.interactive) {
          const columns = context.columns();
          context.write(redrawLine(bar(task, nowMs - startMs, note), columns));
          barShown = true;
        } else if (nowMs - lastPlainLineMs >= PLAIN_LINE_INTERVAL_MS) {
          context.write(plainLine(task, note));
          lastPlainLineMs = nowMs;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(POLL_INTERVAL_MS, deadlineMs - nowMs)));
    }
  } finally {
    process.removeListener('SIGINT', onInterrupt);
    if (barShown) context.write(CLEAR_LINE);
  }
}

