// A chunk data file whose syncs are shared and whose first failed sync is final. Every sync of
// the file (an in-place write's, a checkpoint's, an eviction's) goes through here:
// - one at a time, and a call made while one runs waits for the next, which every call arriving
//   meanwhile shares: writes that arrive together cost one fdatasync, and a sync never "succeeds"
//   beside one that is failing;
// - after a failed sync, every later one fails with the same error: Linux may have dropped the
//   dirty pages the failed one covered and reports the error once, so a later fdatasync can
//   succeed without them (a write acknowledged on that would be lost at the next power cut).

import type { DiskFile } from '../disk/disk.ts';

/** A data file whose syncs are shared; `syncing` says whether one is under way. */
export interface SharedSyncFile extends DiskFile {
  /**
   * True while an fdatasync of the file runs. A write to the file may then wait for it (a file
   * system may hold the file's lock, or wait for pages under writeback): never on the event loop.
   */
  readonly syncing: boolean;
}

export function shareSyncs(file: DiskFile): SharedSyncFile {
  let running: Promise<void> | null = null;
  let next: Promise<void> | null = null;
  let failure: { error: unknown } | null = null;
  const start = (): Promise<void> => {
    if (failure !== null) return Promise.reject(failure.error);
    const current = file.datasync().catch((error: unknown) => {
      failure ??= { error };
      throw error;
    }).finally(() => {
      if (running === current) running = null;
    });
    running = current;
    return current;
  };
  const sync = (): Promise<void> => {
    if (failure !== null) return Promise.reject(failure.error);
    if (next !== null) return next;
    if (running === null) return start();
    // The running sync may have started before the caller's writes: wait for the next one.
    const queued = running.catch(() => undefined).then(() => {
      next = null;
      return start();
    });
    next = queued;
    return queued;
  };
  return {
    get syncing() {
      return running !== null;
    },
    durableWrites: file.durableWrites,
    read: (target, targetOffset, lengthBytes, positionBytes) => file.read(target, targetOffset, lengthBytes, positionBytes),
    readNow: (target, targetOffset, lengthBytes, positionBytes) => file.readNow(target, targetOffset, lengthBytes, positionBytes),
    write: (source, sourceOffset, lengthBytes, positionBytes) => file.write(source, sourceOffset, lengthBytes, positionBytes),
    writeNow: (source, sourceOffset, lengthBytes, positionBytes) => file.writeNow(source, sourceOffset, lengthBytes, positionBytes),
    writev: (buffers, positionBytes) => file.writev(buffers, positionBytes),
    datasync: sync,
    // Data files need their data and size only (they are created at their full size).
    sync,
    truncate: (sizeBytes) => file.truncate(sizeBytes),
    sizeBytes: () => file.sizeBytes(),
    punchHole: (offsetBytes, lengthBytes) => file.punchHole(offsetBytes, lengthBytes),
    close: () => file.close(),
  };
}
