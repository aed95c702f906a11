// Trying again, in one place. Every client loop that waits and retries (a read failing over round
// after round of members, a change sent again after the MDS settled a failure, a change waiting for
// its chunk to have enough members, the map loaded from an MDS that is restarting, an allocation
// waiting for servers) runs on `Retrier.run`, which owns the deadline, the exponential backoff with
// its cap, and the ERR_IO that names what was tried, how many times and for how long.
//
// Which failures are worth another attempt is decided here too, by where they happen: RETRYABLE
// (whole-request retries), changeRefusal (a primary's answer to a change) and LEASE_LOST (MDS answers
// that end the lease). A code not listed for a place ends the operation with that error at once.

import { StorageError, type ErrorCode } from '../errors.ts';
import { assert } from '../util/assert.ts';
import type { MonotonicClock, Timers } from '../util/clock.ts';

/** The wait after the first failed attempt; each later wait doubles, up to BACKOFF_CAP_MS. */
export const BACKOFF_FIRST_MS = 50;
export const BACKOFF_CAP_MS = 1_600;

/** The wait after `failures` failed attempts in a row (1 or more). */
export function backoffDelayMs(failures: number): number {
  assert(Number.isSafeInteger(failures) && failures >= 1, 'a wait follows at least one failed attempt');
  return Math.min(BACKOFF_CAP_MS, BACKOFF_FIRST_MS * 2 ** Math.min(failures - 1, 30));
}

function codes(...list: ErrorCode[]): ReadonlySet<ErrorCode> {
  return new Set(list);
}

/** Failures worth trying the same request again for, by where they happen. */
export const RETRYABLE = {
  /** Loading the chunk map: an MDS that is restarting or cut off for a while is waited out. */
  mapLoad: codes('ERR_UNAVAILABLE', 'ERR_TIMEOUT'),
  /** Placing a chunk never written: also waits for enough chunk servers in distinct failure domains. */
  allocation: codes('ERR_UNAVAILABLE', 'ERR_TIMEOUT', 'ERR_NOT_ENOUGH_SERVERS'),
  /**
   * Reading from one member: another member may serve it, or the same one once the map is
   * refreshed (a new version, recovery placed the chunk elsewhere, the server restarted).
   */
  replicaRead: codes(
    'ERR_UNAVAILABLE', 'ERR_TIMEOUT', 'ERR_CHECKSUM', 'ERR_IO', 'ERR_CHUNK_VERSION', 'ERR_CHUNK_NOT_FOUND', 'ERR_SHUTTING_DOWN',
  ),
} as const;
export type RetrySite = keyof typeof RETRYABLE;

export function isRetryable(site: RetrySite, error: unknown): error is StorageError {
  return error instanceof StorageError && RETRYABLE[site].has(error.code);
}

/** Refusals of a change that no other attempt fixes: the request or this client's authority is wrong. */
const CHANGE_FATAL = codes('ERR_LEASE_FENCED', 'ERR_OUT_OF_RANGE', 'ERR_INVALID_ARGUMENT', 'ERR_PROTOCOL', 'ERR_TOO_LARGE', 'ERR_UNAUTHORIZED');

/**
 * What a primary's refusal of a change means: `stale`, it holds another version than the map
 * (refresh, and report if the map agrees with us); `fatal`, give up with the error; `failed`, its
 * own copy failed (disk error, full disk, lost its MDS, no such chunk): the MDS replaces it.
 */
export function changeRefusal(code: ErrorCode): 'stale' | 'fatal' | 'failed' {
  if (code === 'ERR_CHUNK_VERSION') return 'stale';
  return CHANGE_FATAL.has(code) ? 'fatal' : 'failed';
}

/** MDS answers meaning this client no longer holds its write lease, by what was asked. */
export const LEASE_LOST = {
  /** The periodic renewal: taken over, the volume deleted, or this hypervisor revoked. */
  leaseRenewal: codes('ERR_LEASE_EXPIRED', 'ERR_NOT_FOUND', 'ERR_UNAUTHORIZED'),
  /** A capability asked for: the lease was taken, or this hypervisor's credential was revoked. */
  capabilityRenewal: codes('ERR_LEASE_EXPIRED', 'ERR_UNAUTHORIZED'),
  /** An allocation or a failure report made under the lease. */
  change: codes('ERR_LEASE_EXPIRED'),
} as const;

export function losesLease(site: keyof typeof LEASE_LOST, error: unknown): error is StorageError {
  return error instanceof StorageError && LEASE_LOST[site].has(error.code);
}

/** The time one operation may take, shared by the loops nested in it (a write waiting for its map). */
export class Deadline {
  readonly startMs: number;
  readonly timeoutMs: number;
  private readonly clock: MonotonicClock;

  constructor(clock: MonotonicClock, timeoutMs: number) {
    assert(timeoutMs >= 0, 'a deadline is not in the past when it is set');
    this.clock = clock;
    this.timeoutMs = timeoutMs;
    this.startMs = clock.monotonicMs();
  }

  elapsedMs(): number {
    return this.clock.monotonicMs() - this.startMs;
  }

  remainingMs(): number {
    return this.timeoutMs - this.elapsedMs();
  }
}

/** What an attempt returns to be tried again: the problem, for the message if the retries run out. */
export class RetryLater {
  readonly problem: string;

  constructor(problem: string) {
    this.problem = problem;
  }
}

export function retryLater(problem: string): RetryLater {
  return new RetryLater(problem);
}

export interface RetrierOptions {
  /** Names what the retries are for in messages: `volume "web1"`. */
  readonly subject: string;
  /** How long an operation keeps trying before ERR_IO. */
  readonly timeoutMs: number;
  readonly timers: Timers;
  /** Called before every wait: throws when the work is no longer wanted (the volume was closed). */
  readonly checkWanted: () => void;
}

export class Retrier {
  private readonly options: RetrierOptions;

  constructor(options: RetrierOptions) {
    this.options = options;
  }

  /** A deadline of the I/O timeout, starting now. */
  deadline(): Deadline {
    return new Deadline(this.options.timers, this.options.timeoutMs);
  }

  /**
   * Runs `attempt` until it returns a value (which `run` returns) or throws (which `run` throws),
   * waiting with backoff each time it returns RetryLater. Past the deadline it gives up with
   * ERR_IO naming `what` (e.g. "write to chunk 3"), the attempts, the time and the last problem;
   * an attempt is always made first, and again after the last wait, however late.
   */
  async run<T>(what: string, deadline: Deadline, attempt: (attemptIndex: number) => Promise<T | RetryLater>): Promise<T> {
    for (let attemptIndex = 0; ; attemptIndex += 1) {
      const result = await attempt(attemptIndex);
      if (!(result instanceof RetryLater)) return result;
      this.options.checkWanted();
      const remainingMs = deadline.remainingMs();
      if (remainingMs <= 0) {
        throw new StorageError('ERR_IO', `${this.options.subject}: gave up on ${what} after ${Math.round(deadline.elapsedMs())} ms ` +
          `and ${attemptIndex + 1} attempts (I/O timeout ${deadline.timeoutMs} ms): ${result.problem}`);
      }
      await this.options.timers.sleep(Math.min(remainingMs, backoffDelayMs(attemptIndex + 1)));
    }
  }
}
