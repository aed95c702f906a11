// `shoal top`: the cluster refreshing in place, like top(1): health, space per tier, chunk states,
// recovery, and the busiest volumes and chunk servers by IOPS, bandwidth or latency (keys i, b, l,
// n; q or Ctrl-C quits). It draws on the terminal's alternate screen and gives the screen back as
// it was on exit. When stdout is not a terminal (or with --once) it prints one screen and ends, so
// that scripts and logs get the same view. The rates come from the MDS (GET /v1/io), which makes
// them from what chunk servers and NBD servers report every few seconds.

import { StorageError } from '../../errors.ts';
import type { ClusterStat, IoStatsReply } from '../../protocol/api.ts';
import type { MdsClient } from '../../protocol/mds_client.ts';
import { booleanFlag, defineCommand, stringFlag, type CliContext, type Command } from '../command.ts';
import { RateMeter, isMdsAway } from '../progress.ts';
import { TOP_SORT_BY_KEY, TOP_SORT_KEYS, renderTop, type TopFrame, type TopSortKey } from '../top_screen.ts';

const INTERVAL_MS_DEFAULT = 2_000;
const INTERVAL_MS_MIN = 500;

const ENTER_SCREEN = '\u001b[?1049h\u001b[?25l';
const LEAVE_SCREEN = '\u001b[?25h\u001b[?1049l';
const HOME = '\u001b[H';
const CLEAR_TO_LINE_END = '\u001b[K';
const CLEAR_BELOW = '\u001b[J';

interface TopParams {
  readonly intervalMs: number;
  readonly sort: TopSortKey;
  readonly once: boolean;
}

function parseInterval(text: string | undefined): number {
  if (text === undefined) return INTERVAL_MS_DEFAULT;
  const seconds = Number(text);
  if (!Number.isFinite(seconds) || seconds * 1000 < INTERVAL_MS_MIN) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `--interval must be a number of seconds, at least ${INTERVAL_MS_MIN / 1000}, got "${text}"`);
  }
  return Math.round(seconds * 1000);
}

function parseSort(text: string | undefined): TopSortKey {
  if (text === undefined) return 'iops';
  const key = TOP_SORT_KEYS.find((candidate) => candidate === text);
  if (key === undefined) throw new StorageError('ERR_INVALID_ARGUMENT', `--sort must be one of ${TOP_SORT_KEYS.join(', ')}, got "${text}"`);
  return key;
}

/** One refresh: the stat and the rates, or why they could not be had (the last ones stay shown). */
async function fetchFrame(mds: MdsClient): Promise<{ stat: ClusterStat; io: IoStatsReply } | { note: string }> {
  try {
    const [stat, io] = await Promise.all([mds.stat(), mds.ioStats()]);
    return { stat, io };
  } catch (error) {
    // The screen stays up, saying so, until the MDS answers again.
    if (isMdsAway(error)) return { note: `MDS unreachable (${error.code}): showing the last figures` };
    throw error;
  }
}

async function runTop(context: CliContext, params: TopParams): Promise<void> {
  const mds = await context.mds();
  if (context.json) {
    const [stat, io] = await Promise.all([mds.stat(), mds.ioStats()]);
    return context.writeJson({ stat, io });
  }
  const meter = new RateMeter(Math.max(10_000, params.intervalMs * 3));
  let frame: TopFrame = {
    stat: null, io: null, recoveryBytesPerSecond: null, sort: params.sort, note: '', nowIso: '', intervalMs: params.intervalMs,
  };
  const refresh = async (): Promise<void> => {
    const fetched = await fetchFrame(mds);
    const nowIso = new Date().toISOString().replace('T', ' ').slice(0, 19);
    if ('note' in fetched) {
      frame = { ...frame, note: fetched.note, nowIso };
      return;
    }
    meter.add(Date.now(), fetched.stat.recovery.copiedBytes);
    frame = { ...frame, stat: fetched.stat, io: fetched.io, recoveryBytesPerSecond: meter.bytesPerSecond(), note: '', nowIso };
  };

  const stdin = process.stdin;
  if (params.once || !context.interactive || stdin.isTTY !== true) {
    await refresh();
    context.write(`${renderTop(frame, context.columns(), Number.MAX_SAFE_INTEGER, context.paint).join('\n')}\n`);
    return;
  }

  const rows = (): number => (process.stdout.rows > 0 ? process.stdout.rows : 24);
  const draw = (): void => {
    const lines = renderTop(frame, context.columns(), rows(), context.paint);
    context.write(`${HOME}${lines.map((line) => `${line}${CLEAR_TO_LINE_END}`).join('\r\n')}${CLEAR_BELOW}`);
  };
  let quit: () => void = () => {};
  const quitting = new Promise<void>((resolve) => {
    quit = resolve;
  });
  const onKey = (data: Buffer): void => {
    for (const byte of data) {
      const key = String.fromCharCode(byte).toLowerCase();
      // q, Ctrl-C (raw mode delivers it as a byte, not a signal), Ctrl-D.
      if (key === 'q' || byte === 3 || byte === 4) return quit();
      const sort = TOP_SORT_BY_KEY[key];
      if (sort !== undefined) {
        frame = { ...frame, sort };
        draw();
      }
    }
  };
  context.write(ENTER_SCREEN);
  stdin.setRawMode(true);
  stdin.resume();
  stdin.on('data', onKey);
  process.stdout.on('resize', draw);
  let timer: NodeJS.Timeout | null = null;
  let failure: unknown = null;
  let stopped = false;
  const tick = (): void => {
    refresh().then(() => {
      if (!stopped) draw();
    }, (error: unknown) => {
      failure = error;
      quit();
    }).finally(() => {
      // A refresh still under way when q was pressed must not start the next one: its timer
      // would keep the process alive after the screen is gone.
      if (!stopped) timer = setTimeout(tick, params.intervalMs);
    });
  };
  try {
    tick();
    await quitting;
  } finally {
    stopped = true;
    if (timer !== null) clearTimeout(timer);
    stdin.off('data', onKey);
    process.stdout.off('resize', draw);
    stdin.setRawMode(false);
    stdin.pause();
    context.write(LEAVE_SCREEN);
  }
  if (failure !== null) throw failure;
}

const top = defineCommand({
  path: ['top'],
  synopsis: '[--interval SECONDS] [--sort iops|bandwidth|latency|name] [--once]',
  summary: 'watch the cluster refresh in place: health, space, recovery, busiest volumes and chunk servers',
  details: [
    `--interval SECONDS  time between refreshes (default ${INTERVAL_MS_DEFAULT / 1000})`,
    '--sort KEY          first order of the tables (default iops); keys i, b, l, n change it while running',
    '--once              print one screen and end (the default when stdout is not a terminal)',
    'Volume rates are the sum over the NBD servers serving each volume, over their last report (every 2 s);',
    'chunk-server rates count the reads and writes each server served, clients\' and peers\' (a write counts on',
    'every replica). q or Ctrl-C quits. Fits an 80x24 terminal.',
  ],
  options: { interval: { type: 'string' }, sort: { type: 'string' }, once: { type: 'boolean' } },
  parse: (args) => ({ intervalMs: parseInterval(stringFlag(args, 'interval')), sort: parseSort(stringFlag(args, 'sort')), once: booleanFlag(args, 'once') }),
  run: runTop,
});

export const topCommands: readonly Command[] = [top];
