// Changing a volume's or a chunk server's tier from the CLI (`shoal volume set --tier`, `shoal cs
// set-tier`): the change commits with the start of a task (the MDS's tier move), which this
// follows to its end unless told to detach. The task goes on in the MDS whatever happens here.

import { StorageError } from '../errors.ts';
import type { StartTaskBody, TaskInfo } from '../protocol/api.ts';
import type { CliContext } from './command.ts';
import { formatDuration } from './format.ts';
import { followTask } from './task_follow.ts';

export const TIER_DETAILS = [
  'Tiers are 0-3 (e.g. 0 = HDD, 1 = HDD with an SSD journal, 2 = SSD). The change is made at once; the replicas it leaves on',
  'the wrong tier then move, one chunk at a time (a copy is added on the right tier, then the old one leaves), keeping every',
  'chunk\'s copies in distinct failure domains, at the recovery rate limit. It is a task: shoal task pause|resume ID hold',
  'and release the moves; shoal task cancel ID puts the tier back (what moved moves back). When the tier has no room, the',
  'replicas stay where they are, counted as misplaced (shoal stat), and move once it has.',
  '--detach           return once the move has started (follow it later with: shoal task wait ID)',
  '--timeout SECONDS  stop following after SECONDS and exit 1; the move itself goes on',
  '--idempotency-key KEY  the same KEY again returns the task it started (for scripts that retry)',
];

export const TIER_OPTIONS = { detach: { type: 'boolean' }, timeout: { type: 'string' }, 'idempotency-key': { type: 'string' } } as const;

export function parseTier(text: string, what: string): number {
  const tier = /^\d$/.test(text.trim()) ? Number(text) : NaN;
  if (!(tier >= 0 && tier <= 3)) throw new StorageError('ERR_INVALID_ARGUMENT', `${what} must be a tier from 0 to 3, got "${text}"`);
  return tier;
}

/** Starts the tier move `body` asks for and follows it (unless `detach`), saying what moved. `subject`: what changes tier, for people. */
export async function runTierMove(context: CliContext, body: StartTaskBody, subject: string,
  options: { detach: boolean; timeoutMs: number | null }): Promise<void> {
  const mds = await context.mds();
  const task = await mds.startTask(body);
  const from = task.tier === null ? '?' : task.tier.from ?? 'any';
  const to = task.tier?.to ?? '?';
  const started = `task ${task.id}: ${subject} is in tier ${to} now (was ${from}); ${task.progress.itemsTotal} replicas on the wrong tier to move\n`;
  if (options.detach || task.state !== 'running') {
    if (context.json) return context.writeJson(task);
    if (task.state === 'done') {
      const moved = task.progress.itemsDone === 0 ? 'nothing had to move' : `${task.progress.itemsDone} replicas moved`;
      return context.write(`task ${task.id}: ${subject} is in tier ${to} (was ${from}): ${moved}\n`);
    }
    if (task.state !== 'running') return context.write(`task ${task.id} (${subject} to tier ${to}, key ${task.idempotencyKey ?? '-'}) is ${task.state}\n`);
    return context.write(started + followUp(task));
  }
  if (!context.json) context.write(started);
  const startMs = Date.now();
  const done = await followTask(context, task.id, options.timeoutMs);
  if (context.json) return context.writeJson(done);
  const moved = done.progress.itemsDone;
  context.write(`${subject} is on tier ${to}: ${moved === 0 ? 'nothing had to move' : `${moved} replicas moved in ${formatDuration(Date.now() - startMs)}`}\n`);
}

function followUp(task: TaskInfo): string {
  return `follow it with: shoal task wait ${task.id}; pause it with: shoal task pause ${task.id}; ` +
    `undo it with: shoal task cancel ${task.id}\n`;
}
