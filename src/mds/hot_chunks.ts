// The chunks each volume's writer reads and writes most, as its NBD server last reported them
// (every couple of seconds; pure, explicit time). The recovery planner moves their primaries to
// the writer's host, slowly (recovery.ts planFollow): after a VM moves to another hypervisor its
// hot chunks follow it. Bounded (VOLUMES_MAX volumes, the oldest report dropped first); a report
// older than STALE_MS is forgotten. Not durable: after an MDS restart the next reports bring it back.

const VOLUMES_MAX = 65_536;
const STALE_MS = 30_000;

export class HotChunks {
  private readonly byVolume = new Map<number, { readonly chunkIndexes: readonly number[]; readonly atMs: number }>();

  record(volumeId: number, chunkIndexes: readonly number[], nowMs: number): void {
    this.byVolume.delete(volumeId);
    if (this.byVolume.size >= VOLUMES_MAX) {
      const oldest = this.byVolume.keys().next();
      if (oldest.done !== true) this.byVolume.delete(oldest.value);
    }
    this.byVolume.set(volumeId, { chunkIndexes: [...chunkIndexes], atMs: nowMs });
  }

  /** Every volume's hot chunks reported within STALE_MS, hottest first. */
  current(nowMs: number): Array<{ volumeId: number; chunkIndexes: readonly number[] }> {
    const result: Array<{ volumeId: number; chunkIndexes: readonly number[] }> = [];
    for (const [volumeId, report] of this.byVolume) {
      if (nowMs - report.atMs > STALE_MS) this.byVolume.delete(volumeId);
      else result.push({ volumeId, chunkIndexes: report.chunkIndexes });
    }
    return result;
  }
}
