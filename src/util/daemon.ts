// What every daemon shares: its ready (or failed) line on stdout, orderly shutdown on SIGINT/SIGTERM
// or when its supervisor dies, and parsing of the flags that every daemon has.

import { StorageError } from '../errors.ts';
import type { Logger } from './log.ts';

/** Prints the one machine-readable line a supervisor waits for. Logs go to stderr. */
export function announceReady(fields: { service: string; [key: string]: unknown }): void {
  process.stdout.write(`${JSON.stringify({ event: 'ready', ...fields })}\n`);
}

/**
 * Runs `stop` once: on the first SIGINT/SIGTERM, or when the supervisor that started the daemon
 * dies. A second signal exits at once; `deadlineMs` after the start of the stop, the process exits
 * whatever is left.
 */
export function onShutdownSignal(log: Logger, stop: () => Promise<void>, deadlineMs = 10_000): void {
  let stopping = false;
  const begin = (reason: Record<string, unknown>): void => {
    stopping = true;
    log.info('stopping', reason);
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
  const handler = (signal: NodeJS.Signals): void => {
    if (stopping) {
      log.warn('second signal: exiting now', { signal });
      process.exit(130);
    }
    begin({ signal });
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  // A supervisor that dies while we already stop changes nothing: the stop goes on.
  watchSupervisor(log, (reason) => {
    if (!stopping) begin({ reason });
  });
}

/**
 * Under `shoal start` daemons run in their own process group (so one Ctrl-C reaches only the
 * supervisor, which stops them in order). If the supervisor itself dies, they must not live on as
 * orphans holding ports and data directories. Each gets a pipe from the supervisor as its stdin,
 * which the kernel closes the moment the supervisor dies, however it dies: end of stdin means stop,
 * in the same orderly way as SIGTERM. The supervisor never writes to it.
 */
function watchSupervisor(log: Logger, stop: (reason: string) => void): void {
  if (!isSupervised()) return;
  process.stdin.on('end', () => {
    log.warn('supervisor is gone (its pipe closed): stopping');
    stop('supervisor gone');
  });
  process.stdin.on('error', (error) => {
    log.warn('supervisor pipe failed: stopping', { error });
    stop('supervisor pipe failed');
  });
  process.stdin.resume();
  // Its stdout pipe died with it: a later write there must not crash a daemon that is stopping.
  process.stdout.on('error', (error) => log.debug('stdout is gone with the supervisor', { error }));
}

/** True when the process runs under `shoal start`, which reads `announceFailure` lines. */
export function isSupervised(): boolean {
  return process.env['SHOAL_SUPERVISED'] === '1';
}

/**
 * Tells the supervisor, in one machine-readable stdout line, why the daemon could not start, so
 * that it can repeat the reason beside the daemon's name (its own log only has the reason).
 */
export function announceFailure(fields: { code: string; message: string }): void {
  process.stdout.write(`${JSON.stringify({ event: 'failed', ...fields })}\n`);
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
