// The background scrubber: reads every written block of every replica at a low rate, checks it
// against its checksum, and reports bad blocks to the MDS, which repairs them from a good member.
// One pass walks the chunks in id order; the next pass starts after `passIntervalMs`. Reads go
// through the same block locks as client I/O, so a scrub never sees a write half done.

import { StorageError } from '../errors.ts';
import type { BadBlocksBody } from '../protocol/api.ts';
import type { Logger } from '../util/log.ts';
import type { RateLimiter } from '../util/rate_limiter.ts';
import type { ChunkStore } from './store/chunk_store.ts';

/** Bytes read per step: small enough to hold a chunk's block lock only briefly. */
const SCRUB_STEP_BYTES = 1024 * 1024;

export interface ScrubberOptions {
  readonly store: ChunkStore;
  readonly limiter: RateLimiter;
  readonly passIntervalMs: number;
  readonly log: Logger;
  /** Sends a report of bad blocks (to the MDS); null while the server is not registered. */
  readonly report: (blocks: Omit<BadBlocksBody, 'csId'>) => Promise<void>;
}

export interface ScrubStats {
  scannedBytesTotal: number;
  badBlocksTotal: number;
  passesTotal: number;
}

export class Scrubber {
  readonly stats: ScrubStats = { scannedBytesTotal: 0, badBlocksTotal: 0, passesTotal: 0 };
  private readonly options: ScrubberOptions;
  private stopped = false;
  private running: Promise<void> = Promise.resolve();
  /** Ends the pause between passes early (on stop). */
  private wake: (() => void) | null = null;

  constructor(options: ScrubberOptions) {
    this.options = options;
  }

  start(): void {
    this.running = this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.running;
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      try {
        await this.pass();
        this.stats.passesTotal += 1;
      } catch (error) {
        if (!(error instanceof StorageError)) throw error;
        this.options.log.warn('scrub pass stopped early', { error });
      }
      // A stop during the pass found no pause to cut short: without this check the loop would
      // sleep a whole pass interval (hours) before it saw the stop, and hold the shutdown.
      if (this.stopped) return;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.options.passIntervalMs);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = null;
    }
  }

  /** One pass over every replica. */
  async pass(): Promise<void> {
    const { store } = this.options;
    let fromChunkId = 0;
    for (;;) {
      const page = store.listChunks(fromChunkId, 256);
      if (page.length === 0) return;
      for (const meta of page) {
        if (this.stopped) return;
        for (let offset = 0; offset < meta.sizeBytes && !this.stopped; offset += SCRUB_STEP_BYTES) {
          await this.options.limiter.take(SCRUB_STEP_BYTES);
          const bad = await store.findBadBlocks(meta.chunkId, offset, Math.min(SCRUB_STEP_BYTES, meta.sizeBytes - offset)).catch((error: unknown) => {
            // A chunk deleted or resized under us is not a scrub failure.
            if (error instanceof StorageError && error.code === 'ERR_CHUNK_NOT_FOUND') return [];
            throw error;
          });
          this.stats.scannedBytesTotal += SCRUB_STEP_BYTES;
          if (bad.length > 0) await this.reportBad(meta, bad);
        }
      }
      fromChunkId = (page.at(-1)?.chunkId ?? fromChunkId) + 1;
    }
  }

  private async reportBad(meta: { chunkId: number; volumeId: number; chunkIndex: number }, blocks: number[]): Promise<void> {
    this.stats.badBlocksTotal += blocks.length;
    this.options.log.error('scrub found blocks failing their checksum', { chunkId: meta.chunkId, blocks });
    // Contiguous runs go in one report each.
    let runStart = blocks[0] ?? 0;
    for (let index = 1; index <= blocks.length; index += 1) {
      const block = blocks[index];
      const previous = blocks[index - 1] ?? runStart;
      if (block === previous + 1) continue;
      await this.options.report({
        volumeId: meta.volumeId,
        chunkIndex: meta.chunkIndex,
        chunkId: meta.chunkId,
        offsetBytes: runStart * 4096,
        lengthBytes: (previous - runStart + 1) * 4096,
      }).catch((error: unknown) => this.options.log.warn('could not report bad blocks; the next pass will', { error }));
      runStart = block ?? runStart;
    }
  }
}
