// Reports of changes a primary could not complete on every member. The writer reports these
// itself, but a writer that died (a crashed hypervisor, a killed NBD server) never will, and the
// members would be left holding different bytes at one version; so the primary tells the MDS too.
// Fire and forget, bounded: past REPORTS_INFLIGHT_MAX the report is not sent (and counted), which
// leaves the writer's report and the compare-on-return as the safety nets.
//
// A member that refused the change as fenced (ERR_LEASE_FENCED) did not fail: it knew of a newer
// writer than the primary did, and the change is a fenced writer's. Such a report names nobody as
// failed; it names the members that refused (clean: they never held the change), and the MDS makes
// the members equal copying from one of them, so the fenced bytes leave the members that took
// them instead of spreading to the others.

import { isStorageError } from '../errors.ts';
import type { PartialWriteBody } from '../protocol/api.ts';
import type { Logger } from '../util/log.ts';

const REPORTS_INFLIGHT_MAX = 64;

/** Failures that mean the member refused the change before applying any of it. */
const REFUSALS = new Set(['ERR_CHUNK_VERSION', 'ERR_LEASE_FENCED', 'ERR_OUT_OF_RANGE', 'ERR_INVALID_ARGUMENT', 'ERR_CHUNK_NOT_FOUND']);

export interface PartialWriteReporterOptions {
  readonly send: (report: PartialWriteBody) => Promise<unknown>;
  /** This server's id once registered, else null (then nothing can be reported). */
  readonly csId: () => number | null;
  readonly log: Logger;
}

export interface ChangeOutcome {
  readonly volumeId: number;
  readonly chunkIndex: number;
  readonly chunkId: number;
  readonly version: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  /** This primary's own result: null if it applied the change, else its error code. */
  readonly localCode: string | null;
  /** Per member it forwarded to: null if it applied the change, else its error code. */
  readonly peers: ReadonlyArray<{ readonly csId: number; readonly code: string | null }>;
}

export class PartialWriteReporter {
  private readonly options: PartialWriteReporterOptions;
  private inflight = 0;
  /** A report was skipped or failed since the last `takeLost`: the MDS must compare our chunks. */
  private lost = false;
  readonly stats = { reportedTotal: 0, failedTotal: 0, skippedTotal: 0 };

  constructor(options: PartialWriteReporterOptions) {
    this.options = options;
  }

  /**
   * Reports the change if members may now differ: some failed, and not every failure is a plain
   * refusal on every member (where nothing was applied anywhere). Resolves once the report is
   * answered, failed or skipped (never rejects); a caller may wait for the MDS to have settled it.
   */
  consider(outcome: ChangeOutcome): Promise<void> {
    const report = this.reportFor(outcome);
    if (report === null) return Promise.resolve();
    if (this.inflight >= REPORTS_INFLIGHT_MAX) {
      this.skip(outcome, 'too many reports in flight');
      return Promise.resolve();
    }
    this.inflight += 1;
    return this.options.send(report).then(
      () => {
        this.stats.reportedTotal += 1;
      },
      (error: unknown) => {
        this.stats.failedTotal += 1;
        this.lost = true;
        const level = isStorageError(error, 'ERR_UNAVAILABLE') ? 'warn' : 'error';
        this.options.log[level]('reporting a change incomplete on members failed', { chunkId: outcome.chunkId, error });
      },
    ).finally(() => {
      this.inflight -= 1;
    });
  }

  /** The report the MDS needs about `outcome`, or null when the members cannot differ. */
  private reportFor(outcome: ChangeOutcome): PartialWriteBody | null {
    const csId = this.options.csId();
    const results = [{ csId: csId ?? -1, code: outcome.localCode }, ...outcome.peers];
    const failed = results.filter((result) => result.code !== null);
    if (failed.length === 0) return null;
    const applied = failed.length < results.length;
    if (!applied && failed.every((result) => REFUSALS.has(result.code ?? ''))) return null;
    if (csId === null) {
      this.skip(outcome, 'not registered');
      return null;
    }
    const fenced = outcome.peers.filter((peer) => peer.code === 'ERR_LEASE_FENCED');
    return {
      csId,
      volumeId: outcome.volumeId,
      chunkIndex: outcome.chunkIndex,
      chunkId: outcome.chunkId,
      version: outcome.version,
      // A fenced change: nobody failed; whoever did not apply it leaves the set when it cannot be
      // sealed, as always, and the current writer reports its own failures.
      failedCsIds: fenced.length > 0 ? [] : failed.map((result) => result.csId).slice(0, 16),
      ...(fenced.length > 0 ? { cleanCsIds: fenced.map((peer) => peer.csId).slice(0, 16) } : {}),
      offsetBytes: outcome.offsetBytes,
      lengthBytes: outcome.lengthBytes,
      reason: failed.map((result) => `${result.csId}: ${result.code}`).join('; ').slice(0, 2048),
    };
  }

  private skip(outcome: ChangeOutcome, why: string): void {
    this.stats.skippedTotal += 1;
    this.lost = true;
    this.options.log.error('a change incomplete on members could not be reported to the MDS', { chunkId: outcome.chunkId, why });
  }

  /**
   * Whether a report was lost since the last call (and forgets it): the MDS link then asks the MDS
   * to compare every chunk of this server with its other members, the net under the net.
   */
  takeLost(): boolean {
    const lost = this.lost;
    this.lost = false;
    return lost;
  }
}
