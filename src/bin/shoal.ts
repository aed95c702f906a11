#!/usr/bin/env node
// The one command: daemons (`shoal run mds|cs|nbd`), the local cluster (`shoal start`) and the
// admin CLI (everything else). Operating errors print their code and message and exit non-zero;
// anything else is a bug and prints its stack. A daemon under `shoal start` also reports the error
// to its supervisor in a stdout line.

import { StorageError } from '../errors.ts';
import { announceFailure, isSupervised } from '../util/daemon.ts';

const DAEMON_USAGE = 'usage: shoal run mds|cs|nbd [options]   (each takes --help)';

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (command === 'run') {
    const [daemon, ...flags] = rest;
    if (daemon === 'mds') return (await import('../mds/main.ts')).runMds(flags);
    if (daemon === 'cs') return (await import('../cs/main.ts')).runChunkServer(flags);
    if (daemon === 'nbd') return (await import('../nbd/main.ts')).runNbd(flags);
    throw new StorageError('ERR_CONFIG', DAEMON_USAGE);
  }
  if (command === 'start') return (await import('../local/start.ts')).runLocalCluster(rest);
  return (await import('../cli/main.ts')).runCli(argv);
}

main(process.argv.slice(2)).catch((error: unknown) => {
  if (error instanceof StorageError) {
    process.stderr.write(`shoal: ${error.code}: ${error.message}\n`);
    process.exitCode = error.code === 'ERR_CONFIG' || error.code === 'ERR_INVALID_ARGUMENT' ? 2 : 1;
  } else {
    process.stderr.write(`shoal: internal error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 70;
  }
  // A daemon under `shoal start` also tells its supervisor, which names it beside the reason.
  if (isSupervised()) {
    announceFailure(error instanceof StorageError
      ? { code: error.code, message: error.message }
      : { code: 'ERR_INTERNAL', message: error instanceof Error ? error.message : String(error) });
  }
});
