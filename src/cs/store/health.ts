// Whether the store should get new replicas: a stopped journal, damage found at start-up (data it
// could not restore), or a chunk write that failed recently (a full disk, a disk error) each make
// the server report itself unhealthy to the MDS, which then places new chunks elsewhere.

import type { StorageError } from '../../errors.ts';
import type { Clock } from '../../util/clock.ts';
import type { Logger } from '../../util/log.ts';

/** How long a failed chunk write keeps the server reported unhealthy (new chunks go elsewhere). */
const WRITE_ERROR_MEMORY_MS = 60_000;

export class StoreHealth {
  private readonly clock: Clock;
  private readonly log: Logger;
  /** Set when start-up found data it could not restore; reported as unhealthy to the MDS. */
  damage: string | null = null;
  private lastWriteError: { message: string; atMs: number } | null = null;

  constructor(clock: Clock, log: Logger) {
    this.clock = clock;
    this.log = log;
  }

  /** A failed write (disk full, disk error) makes the server report itself unhealthy for a while. */
  noteWriteError(error: StorageError): StorageError {
    this.lastWriteError = { message: error.message, atMs: this.clock.nowMs() };
    this.log.error('chunk write failed', { code: error.code, message: error.message });
    return error;
  }

  /** Why this server should not get new replicas now, or null. */
  problem(journalError: StorageError | null): string | null {
    if (journalError !== null) return journalError.message;
    if (this.damage !== null) return this.damage;
    if (this.lastWriteError !== null && this.clock.nowMs() - this.lastWriteError.atMs < WRITE_ERROR_MEMORY_MS) {
      return this.lastWriteError.message;
    }
    return null;
  }
}
