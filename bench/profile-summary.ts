// Summarises node CPU profiles (.cpuprofile) of shoal's daemons: per daemon, the frames with the
// most self time and the shares of idle, GC and program time. Reads one file or a folder; when
// the folder holds the manifest that `nbd-fio --profile DIR` writes, profiles are named by daemon
// (mds, cs0, ..., nbd) and summarised per job, over the job's run on shoal only.
//
// Usage: node build/bench/profile-summary.js PATH [--job NAME] [--whole] [--top N]

import { parseArgs } from 'node:util';
import { summariseFolder } from './nbd/profile.ts';

const USAGE = `usage: profile-summary PATH [options]
  PATH          a .cpuprofile file, or a folder of them (nbd-fio --profile DIR)
  --job NAME    only this job's window (default: every job in the folder's manifest)
  --whole       the whole profiles, ignoring job windows (also without a manifest)
  --top N       frames per daemon (default 15)
  --help`;

function main(): void {
  const { values, positionals } = parseArgs({
    options: {
      job: { type: 'string' },
      whole: { type: 'boolean', default: false },
      top: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    allowPositionals: true,
  });
  const top = Number(values.top ?? 15);
  if (values.help || positionals.length !== 1 || !Number.isInteger(top) || top < 1) {
    process.stdout.write(`${USAGE}\n`);
    process.exitCode = values.help ? 0 : 2;
    return;
  }
  const text = summariseFolder(positionals[0]!, { top, whole: values.whole,
    job: values.job ?? null });
  process.stdout.write(`${text}\n`);
}

try {
  main();
} catch (error) {
  process.stderr.write(`profile-summary: ${error instanceof Error ? error.message : error}\n`);
  process.exitCode = 1;
}
