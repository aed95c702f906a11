// Fences and admission of client changes. A volume's fence epoch (the newest writer's lease epoch
// this server knows) is raised in memory at once and recorded in the catalog after. Client changes
// are admitted against it and tracked in flight per volume (admitChange), and raising a fence
// waits for the admitted changes of older epochs to finish: once a FENCE is acknowledged, no
// change of a fenced writer lands.

import { StorageError } from '../../errors.ts';
import { assert } from '../../util/assert.ts';
import type { Catalog } from './catalog.ts';

/** A client change admitted past the fence check, until it has landed or failed. */
interface AdmittedChange {
  readonly epoch: number;
  readonly finished: Promise<void>;
}

export class Fences {
  private readonly catalog: Catalog;
  /**
   * Fence epochs raised in this run and not yet in the catalog: a raise takes effect here at once,
   * before its record is written. An entry leaves once the catalog holds as much.
   */
  private readonly raised = new Map<number, number>();
  /** Fence records are written one at a time, in order, so a lower epoch never lands last. */
  private fenceWrites: Promise<void> = Promise.resolve();
  /** Per volume, the client changes admitted and not finished (bounded by the requests in flight). */
  private readonly admitted = new Map<number, Set<AdmittedChange>>();

  constructor(catalog: Catalog) {
    this.catalog = catalog;
  }

  epoch(volumeId: number): number {
    return Math.max(this.raised.get(volumeId) ?? 0, this.catalog.getFence(volumeId));
  }

  /** See ChunkStore.raiseFence. */
  async raise(volumeId: number, epoch: number): Promise<void> {
    assert(Number.isSafeInteger(epoch) && epoch >= 0, 'fence epochs are whole numbers');
    if (epoch > this.epoch(volumeId)) this.raised.set(volumeId, epoch);
    const older = [...(this.admitted.get(volumeId) ?? [])].filter((change) => change.epoch < epoch);
    if (older.length > 0) await Promise.all(older.map((change) => change.finished));
    // Nothing ahead of the catalog: no record to wait for (and no wait behind other volumes' records).
    if (this.raised.has(volumeId)) await this.record(volumeId);
  }

  /** Writes the volume's fence epoch to the catalog if it is ahead there (in order, see fenceWrites). */
  private record(volumeId: number): Promise<void> {
    const write = this.fenceWrites.then(async () => {
      const epoch = this.raised.get(volumeId);
      if (epoch === undefined) return;
      if (epoch > this.catalog.getFence(volumeId)) await this.catalog.putFence(volumeId, epoch);
      // Raised again meanwhile? Then that raise's own write records it.
      if (this.raised.get(volumeId) === epoch) this.raised.delete(volumeId);
    });
    this.fenceWrites = write.catch(() => undefined);
    return write;
  }

  /** See ChunkStore.admitChange. */
  async admit<T>(volumeId: number, epoch: number, change: () => Promise<T>): Promise<T> {
    const fence = this.epoch(volumeId);
    if (epoch < fence) {
      throw new StorageError(
        'ERR_LEASE_FENCED',
        `write to volume ${volumeId} carries lease epoch ${epoch}, but epoch ${fence} has taken over`,
      );
    }
    let finish!: () => void;
    const admitted: AdmittedChange = { epoch, finished: new Promise<void>((resolve) => (finish = resolve)) };
    let inFlight = this.admitted.get(volumeId);
    if (inFlight === undefined) {
      inFlight = new Set();
      this.admitted.set(volumeId, inFlight);
    }
    inFlight.add(admitted);
    try {
      return await change();
    } finally {
      inFlight.delete(admitted);
      if (inFlight.size === 0 && this.admitted.get(volumeId) === inFlight) this.admitted.delete(volumeId);
      finish();
    }
  }

  /** Changes admitted and not finished, all volumes. */
  get admittedCount(): number {
    let count = 0;
    for (const inFlight of this.admitted.values()) count += inFlight.size;
    return count;
  }
}
