// Where a replica's files live and how they come and go:
//
//   chunks/<hh>/<chunkId>.data   the chunk's bytes; sparse, holes read as zeroes
//   chunks/<hh>/<chunkId>.sums   the per-block checksums (block_sums.ts)
//   orphaned/                    files with data but no catalog record, set aside for an admin
//
// Files are created and made durable before the chunk's catalog record (the commit point), and
// removed durably before the record goes; so files without a record are a creation a crash cut
// short (empty: removed at start) or a lost catalog's (holding data: set aside, never deleted).

import { join } from 'node:path';
import type { Logger } from '../../util/log.ts';
import type { Disk } from '../disk/disk.ts';
import { holdsWrittenBlocks, sumsBytes } from './block_sums.ts';
import { createSparseFile } from './chunk_file_io.ts';

export interface ChunkPaths {
  readonly directory: string;
  readonly data: string;
  readonly sums: string;
}

export class ChunkFiles {
  private readonly disk: Disk;
  private readonly directory: string;
  private readonly log: Logger;
  /** chunks/<hh> directories known to exist with their entry synced (at most 256). */
  private readonly durableDirectories = new Set<string>();

  constructor(disk: Disk, directory: string, log: Logger) {
    this.disk = disk;
    this.directory = directory;
    this.log = log;
  }

  get chunksDirectory(): string {
    return join(this.directory, 'chunks');
  }

  paths(chunkId: number): ChunkPaths {
    const directory = join(this.chunksDirectory, (chunkId % 256).toString(16).padStart(2, '0'));
    return { directory, data: join(directory, `${chunkId}.data`), sums: join(directory, `${chunkId}.sums`) };
  }

  /** Creates a chunk's empty (sparse) files and makes them durable; throws system errors as they come. */
  async create(chunkId: number, sizeBytes: number): Promise<void> {
    const paths = this.paths(chunkId);
    if (!this.durableDirectories.has(paths.directory)) {
      await this.disk.mkdir(paths.directory);
      await this.disk.syncDirectory(this.chunksDirectory);
      this.durableDirectories.add(paths.directory);
    }
    await Promise.all([
      createSparseFile(this.disk, paths.data, sizeBytes),
      createSparseFile(this.disk, paths.sums, sumsBytes(sizeBytes)),
    ]);
    await this.disk.syncDirectory(paths.directory);
  }

  /** Removes a chunk's files durably (no error if they are already gone). */
  async remove(chunkId: number): Promise<void> {
    const paths = this.paths(chunkId);
    await this.disk.remove(paths.data);
    await this.disk.remove(paths.sums);
    await this.disk.syncDirectory(paths.directory);
  }

  /**
   * Files of chunks without a catalog record (`hasRecord` false). A crash between creating a
   * chunk's files and its record leaves them empty: removed. Files that hold written blocks are
   * never removed on sight (a lost or damaged catalog must not destroy data): they are moved to
   * `orphaned/` and logged.
   */
  async removeOrphans(hasRecord: (chunkId: number) => boolean): Promise<void> {
    const chunksDir = this.chunksDirectory;
    const kept: string[] = [];
    for (const sub of await this.disk.readdir(chunksDir)) {
      for (const name of await this.disk.readdir(join(chunksDir, sub))) {
        const match = /^(\d+)\.sums$/.exec(name);
        if (match === null || hasRecord(Number(match[1]))) continue;
        const chunkId = Number(match[1]);
        const paths = this.paths(chunkId);
        if (holdsWrittenBlocks(await this.disk.readFile(paths.sums))) {
          await this.setAside(chunkId);
          kept.push(String(chunkId));
          continue;
        }
        this.log.warn('removing the files of a chunk whose creation never completed', { chunkId });
        await this.disk.remove(paths.data);
        await this.disk.remove(paths.sums);
      }
      for (const name of await this.disk.readdir(join(chunksDir, sub))) {
        const match = /^(\d+)\.data$/.exec(name);
        // A data file whose checksums are gone holds nothing this server could vouch for.
        if (match !== null && !hasRecord(Number(match[1]))) await this.disk.remove(join(chunksDir, sub, name));
      }
    }
    // Not a reason to stop taking replicas: the data is kept aside for an admin to look at.
    if (kept.length > 0) this.log.error('chunk files with data but no catalog record were set aside in orphaned/, not deleted', { chunks: kept });
  }

  private async setAside(chunkId: number): Promise<void> {
    const orphaned = join(this.directory, 'orphaned');
    await this.disk.mkdir(orphaned);
    const paths = this.paths(chunkId);
    await this.disk.rename(paths.sums, join(orphaned, `${chunkId}.sums`));
    await this.disk.rename(paths.data, join(orphaned, `${chunkId}.data`)).catch(() => undefined);
    await this.disk.syncDirectory(orphaned);
    await this.disk.syncDirectory(this.directory);
    await this.disk.syncDirectory(paths.directory);
  }
}
