// How much of its disk a chunk server uses and may use. `used` is what the server's own files take
// (chunk files, checksums, journal, metadata: allocated blocks, so sparse holes cost nothing), so
// several servers on one file system each report their own share. `capacity` is the file system's
// size, or less when the admin caps it (--capacity-bytes). `free` is what the server may still
// fill: the smaller of the cap's remainder and the file system's free space.

import { readdir, stat, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import type { SpaceReport } from './metrics.ts';

/** Files per directory read in one go while walking, to keep the walk's memory small. */
const WALK_BATCH = 256;

export class DiskUsage {
  private readonly directory: string;
  private readonly capacityCapBytes: number | null;
  private usedBytes = 0;
  private walking: Promise<void> | null = null;

  constructor(directory: string, capacityCapBytes: number | null) {
    this.directory = directory;
    this.capacityCapBytes = capacityCapBytes;
  }

  /** Re-measures what the directory's files take; concurrent calls share one walk. */
  refresh(): Promise<void> {
    this.walking ??= allocatedBytes(this.directory)
      .then((bytes) => {
        this.usedBytes = bytes;
      })
      .finally(() => {
        this.walking = null;
      });
    return this.walking;
  }

  async report(): Promise<SpaceReport> {
    const fs = await statfs(this.directory);
    const fsCapacity = fs.blocks * fs.bsize;
    const fsFree = fs.bavail * fs.bsize;
    const capacityBytes = this.capacityCapBytes === null ? fsCapacity : Math.min(fsCapacity, this.capacityCapBytes);
    const freeBytes = Math.max(0, Math.min(fsFree, capacityBytes - this.usedBytes));
    return { capacityBytes, usedBytes: this.usedBytes, freeBytes };
  }
}

async function allocatedBytes(directory: string): Promise<number> {
  let total = 0;
  let entries: string[];
  try {
    entries = await readdir(directory);
  } catch {
    return 0; // removed meanwhile
  }
  for (let start = 0; start < entries.length; start += WALK_BATCH) {
    const sizes = await Promise.all(
      entries.slice(start, start + WALK_BATCH).map(async (name) => {
        const path = join(directory, name);
        const info = await stat(path).catch(() => null);
        if (info === null) return 0;
        return info.isDirectory() ? allocatedBytes(path) : info.blocks * 512;
      }),
    );
    for (const size of sizes) total += size;
  }
  return total;
}
