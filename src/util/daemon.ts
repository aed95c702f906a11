// What every daemon shares: its ready line on stdout, orderly shutdown on SIGINT/SIGTERM, and
// parsing of the flags that every daemon has.

import { StorageError } from '../errors.ts';
import type { Logger } from './log.ts';

/** Prints the one machine-readable line a supervisor waits for. Logs go to stderr. */
export function announceReady(fields: { service: string; [key: string]: unknown }): void {
  process.stdout.write(`${JSON.stringify({ event: 'ready', ...fields })}\n`);
}

/** Runs `stop` once on the first SIGINT/SIGTERM; a second signal exits at once. */
export function onShutdownSignal(log: Logger, stop: () => Promise<void>, deadlineMs = 10_000): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals): void => {
    if (stopping) {
      log.warn('second signal: exiting now', { signal });
      process.exit(130);
    }
    stopping = true;
    log.info('stopping', { signal });
    const deadline = setTimeout(() => {
      log.error('shutdown took too long: exiting', { deadlineMs });
      process.exit(1);
    }, deadlineMs);
    deadline.unref();
    stop().then(
      () => {
        log.info('stopped');
        process.exit(0);
      },
      (error: unknown) => {
        log.error('shutdown failed', { error });
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  watchSupervisor(log, handler);
}

/**
 * Under `shoal start` daemons run in their own process group (so one Ctrl-C reaches only the
 * supervisor, which stops them in order). If the supervisor itself dies, they must not live on as
 * orphans holding ports and data directories: they notice the parent change and stop.
 */
function watchSupervisor(log: Logger, stop: (signal: NodeJS.Signals) => void): void {
  if (process.env['SHOAL_SUPERVISED'] !== '1') return;
  const parentPid = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid === parentPid) return;
    clearInterval(timer);
    log.warn('supervisor is gone: stopping', { parentPid });
    stop('SIGTERM');
  }, 1_000);
  timer.unref();
}

export function parseHostPort(text: string, flag: string): { host: string; port: number } {
  const match = /^(.*):(\d{1,5})$/.exec(text);
  const port = match === null ? NaN : Number(match[2]);
  if (match === null || match[1] === undefined || match[1] === '' || !(port >= 0 && port <= 65535)) {
    throw new StorageError('ERR_CONFIG', `${flag} must be HOST:PORT (port 0-65535), got "${text}"`);
  }
  return { host: match[1].replace(/^\[(.*)\]$/, '$1'), port };
}

export function parseIntegerFlag(text: string | undefined, flag: string, fallback: number, minimum = 0): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < minimum) {
    throw new StorageError('ERR_CONFIG', `${flag} must be an integer of at least ${minimum}, got "${text}"`);
  }
  return value;
}
