// `shoal task ...`: the long operations the MDS runs in the background (drains, rebalances), as durable
// tasks: list them, show one, follow one to its end (wait), cancel, pause and resume. A task goes
// on in the MDS whatever happens to the command that started or follows it; `wait` can be run
// again at any time, from anywhere, and ends with the task.

import { StorageError } from '../../errors.ts';
import type { TaskInfo } from '../../protocol/api.ts';
import { formatBytes } from '../../util/size.ts';
import { defineCommand, positional, show, stringFlag, type Command } from '../command.ts';
import { formatDuration, formatRate, formatTimestamp } from '../format.ts';
import { eta, followTask, shortTarget, what } from '../task_follow.ts';
import { renderFields, renderTable, type Column, type Style } from '../table.ts';
import { parseTimeoutMs } from './cs.ts';


export function parseTaskId(text: string): number {
  const id = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(id) || id < 1) throw new StorageError('ERR_INVALID_ARGUMENT', `task ID must be a number (the ID column of shoal task list), got "${text}"`);
  return id;
}


function stateStyle(task: TaskInfo): Style | undefined {
  if (task.state === 'failed') return 'red';
  if (task.state === 'cancelled' || task.state === 'paused') return 'yellow';
  return task.state === 'done' ? 'green' : undefined;
}


const TASK_COLUMNS: readonly Column<TaskInfo>[] = [
  { header: 'ID', align: 'right', value: (task) => String(task.id) },
  { header: 'KIND', value: (task) => task.kind },
  { header: 'TARGET', value: shortTarget },
  { header: 'STATE', value: (task) => task.state, style: stateStyle },
  { header: 'DONE', align: 'right', value: (task) => `${task.progress.itemsDone}/${task.progress.itemsTotal}` },
  { header: 'BYTES', align: 'right', value: (task) => formatBytes(task.progress.bytesDone) },
  { header: 'RATE', align: 'right', value: (task) => formatRate(task.bytesPerSecond) },
  { header: 'ETA', align: 'right', value: eta },
  { header: 'CREATED', value: (task) => formatTimestamp(task.createdAt) },
];

function taskFields(task: TaskInfo) {
  const { itemsDone, itemsTotal, bytesDone, bytesTotal } = task.progress;
  return [
    { label: 'task', value: `${task.id}: ${what(task)}` },
    { label: 'state', value: task.state, style: stateStyle(task) },
    { label: 'progress', value: `${itemsDone} of ${itemsTotal} replicas moved, ${formatBytes(bytesDone)} of ${formatBytes(bytesTotal)}` },
    { label: 'rate', value: `${formatRate(task.bytesPerSecond)}, ETA ${eta(task)}` },
    ...(task.spreadPercent === null ? [] : [{ label: 'balance', value: `the servers are ${task.spreadPercent} points of used space apart (the threshold: ${task.thresholdPercent ?? '?'})` }]),
    ...(task.note === null ? [] : [{ label: 'note', value: task.note, style: 'yellow' as const }]),
    ...(task.error === null ? [] : [{ label: 'error', value: task.error, style: 'red' as const }]),
    ...(task.idempotencyKey === null ? [] : [{ label: 'key', value: task.idempotencyKey }]),
    { label: 'created', value: formatTimestamp(task.createdAt) },
    { label: 'updated', value: formatTimestamp(task.updatedAt) },
    { label: 'finished', value: task.finishedAt === null ? '-' : formatTimestamp(task.finishedAt) },
  ];
}

const list = defineCommand({
  path: ['task', 'list'],
  synopsis: '',
  summary: 'list tasks (running, paused, and the last finished ones) with their progress',
  parse: () => undefined,
  run: (context) =>
    show(context, (mds) => mds.listTasks(), ({ tasks }) =>
      tasks.length === 0 ? 'no tasks (a drain or a rebalance starts one: shoal cs drain ID, shoal cs rebalance)\n' : renderTable(TASK_COLUMNS, tasks, context.paint)),
});

const showTask = defineCommand({
  path: ['task', 'show'],
  synopsis: 'ID',
  summary: 'show one task: state, progress, rate, ETA, error',
  positionals: ['ID'],
  parse: (args) => parseTaskId(positional(args, 0)),
  run: (context, id) => show(context, (mds) => mds.getTask(id), (task) => renderFields(taskFields(task), context.paint)),
});

const wait = defineCommand({
  path: ['task', 'wait'],
  synopsis: 'ID [--timeout SECONDS]',
  summary: 'follow a task to its end: exit 0 when done, 1 when it failed or was cancelled',
  details: [
    '--timeout SECONDS  stop waiting after SECONDS and exit 1; the task itself goes on',
    'A progress bar on a terminal, a line every few seconds otherwise; with --json only the final task.',
    'It rides out an MDS restart; Ctrl-C stops only the waiting.',
  ],
  options: { timeout: { type: 'string' } },
  positionals: ['ID'],
  parse(args) {
    const timeout = stringFlag(args, 'timeout');
    return { id: parseTaskId(positional(args, 0)), timeoutMs: timeout === undefined ? null : parseTimeoutMs(timeout) };
  },
  async run(context, { id, timeoutMs }) {
    const startMs = Date.now();
    const task = await followTask(context, id, timeoutMs);
    if (context.json) return context.writeJson(task);
    context.write(`task ${id} (${what(task)}) done: ${task.progress.itemsDone} replicas moved, ` +
      `${formatBytes(task.progress.bytesDone)}, waited ${formatDuration(Date.now() - startMs)}\n`);
  },
});

function actionCommand(action: 'cancel' | 'pause' | 'resume', summary: string, done: (task: TaskInfo) => string): Command {
  return defineCommand({
    path: ['task', action],
    synopsis: 'ID',
    summary,
    positionals: ['ID'],
    parse: (args) => parseTaskId(positional(args, 0)),
    run: (context, id) => show(context, (mds) => mds.taskAction(id, action), done),
  });
}

const cancel = actionCommand('cancel',
  'stop a task (a drain: the replicas moved stay moved, the server serves again; a rebalance: the MDS starts no other by itself for an hour; ' +
    'a tier move: the tier is put back, and what moved moves back)',
  (task) => `task ${task.id} (${what(task)}) cancelled with ${task.progress.itemsDone} of ${task.progress.itemsTotal} done; ${cancelled(task)}\n`);

function cancelled(task: TaskInfo): string {
  if (task.kind === 'tier') {
    if (task.tier?.from === null) return 'the volume is of any tier again: its replicas stay where they are';
    return `${task.tier === null ? 'its tier is put back' : `it is in tier ${task.tier.from} again`}: the replicas that moved move back`;
  }
  if (task.kind === 'drain') return `chunk server ${task.target.chunkServerId ?? '?'} is active again`;
  return 'the replicas moved stay where they went; the MDS starts no rebalance by itself for an hour (shoal cs rebalance starts one)';
}
const pause = actionCommand('pause', 'hold a task where it is (nothing more moves; a drained server serves as active meanwhile)',
  (task) => `task ${task.id} (${what(task)}) paused at ${task.progress.itemsDone} of ${task.progress.itemsTotal}; resume it with: shoal task resume ${task.id}\n`);
const resume = actionCommand('resume', 'go on with a paused task',
  (task) => `task ${task.id} (${what(task)}) running again: ${task.progress.itemsDone} of ${task.progress.itemsTotal} done; follow it with: shoal task wait ${task.id}\n`);

export const taskCommands: readonly Command[] = [list, showTask, wait, cancel, pause, resume];
