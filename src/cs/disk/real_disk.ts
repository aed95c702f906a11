// The real disk: the Disk interface over node:fs, with hole punching from fs-native-extensions
// (fallocate PUNCH_HOLE | KEEP_SIZE). Nothing here retries or hides an error: a failed fsync is
// reported to the caller, which must treat the data it covered as possibly lost.

import fsx from 'fs-native-extensions';
import { constants, readSync, writeSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, type FileHandle } from 'node:fs/promises';
import type { Disk, DiskFile, OpenMode, OpenOptions } from './disk.ts';

const FLAGS: Record<OpenMode, string> = { read: 'r', readWrite: 'r+', create: 'w', createExclusive: 'wx' };
const { O_CREAT, O_DSYNC, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY } = constants;
/** The same modes as FLAGS, each with O_DSYNC. */
const DSYNC_FLAGS: Record<OpenMode, number> = {
  read: O_RDONLY,
  readWrite: O_RDWR | O_DSYNC,
  create: O_WRONLY | O_CREAT | O_TRUNC | O_DSYNC,
  createExclusive: O_WRONLY | O_CREAT | O_EXCL | O_DSYNC,
};

class RealFile implements DiskFile {
  private readonly handle: FileHandle;
  readonly durableWrites: boolean;

  constructor(handle: FileHandle, durableWrites: boolean) {
    this.handle = handle;
    this.durableWrites = durableWrites;
  }

  async read(target: Buffer, targetOffset: number, lengthBytes: number, positionBytes: number): Promise<number> {
    return (await this.handle.read(target, targetOffset, lengthBytes, positionBytes)).bytesRead;
  }

  readNow(target: Buffer, targetOffset: number, lengthBytes: number, positionBytes: number): number {
    return readSync(this.handle.fd, target, targetOffset, lengthBytes, positionBytes);
  }

  async write(source: Buffer, sourceOffset: number, lengthBytes: number, positionBytes: number): Promise<number> {
    return (await this.handle.write(source, sourceOffset, lengthBytes, positionBytes)).bytesWritten;
  }

  writeNow(source: Buffer, sourceOffset: number, lengthBytes: number, positionBytes: number): number {
    return writeSync(this.handle.fd, source, sourceOffset, lengthBytes, positionBytes);
  }

  async writev(buffers: readonly Buffer[], positionBytes: number): Promise<number> {
    return (await this.handle.writev([...buffers], positionBytes)).bytesWritten;
  }

  datasync(): Promise<void> {
    return this.handle.datasync();
  }

  sync(): Promise<void> {
    return this.handle.sync();
  }

  truncate(sizeBytes: number): Promise<void> {
    return this.handle.truncate(sizeBytes);
  }

  async sizeBytes(): Promise<number> {
    return (await this.handle.stat()).size;
  }

  punchHole(offsetBytes: number, lengthBytes: number): Promise<void> {
    return fsx.trim(this.handle.fd, offsetBytes, lengthBytes);
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

export const realDisk: Disk = {
  async open(path: string, mode: OpenMode, options?: OpenOptions): Promise<DiskFile> {
    const durableWrites = options?.durableWrites === true && mode !== 'read';
    // Chunk data, checksums and journals are nobody's business but this server's.
    return new RealFile(await open(path, durableWrites ? DSYNC_FLAGS[mode] : FLAGS[mode], 0o600), durableWrites);
  },
  readFile: (path) => readFile(path),
  readdir: (path) => readdir(path),
  async mkdir(path: string): Promise<void> {
    await mkdir(path, { recursive: true, mode: 0o700 });
  },
  rename: (fromPath, toPath) => rename(fromPath, toPath),
  remove: (path) => rm(path, { force: true }),
  async syncDirectory(path: string): Promise<void> {
    const handle = await open(path, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  },
};
