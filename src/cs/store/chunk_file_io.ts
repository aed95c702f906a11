// Whole-range I/O on chunk files. A DiskFile may read or write fewer bytes than asked, as pread
// and pwrite may; the chunk store and the handle cache go through these loops so that no caller
// takes a short transfer for a whole one.

import { StorageError } from '../../errors.ts';
import type { Disk, DiskFile } from '../disk/disk.ts';
import { assert } from '../../util/assert.ts';

/** Zeroes written at a time where holes cannot be punched. */
const ZERO_BLOCK = Buffer.alloc(256 * 1024);

export async function readFully(handle: DiskFile, target: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < target.length) {
    const bytesRead = await handle.read(target, done, target.length - done, position + done);
    if (bytesRead === 0) {
      // Past the end of a file we sized ourselves: the file was truncated behind our back.
      throw new StorageError('ERR_IO', `short read at ${position + done}: chunk file is shorter than its chunk`);
    }
    done += bytesRead;
  }
}

/**
 * readFully done before returning, for small reads of blocks likely in the page cache (see
 * DiskFile.readNow): at most this many bytes, so the event loop is never held for a large copy.
 */
export const READ_NOW_BYTES_MAX = 64 * 1024;

export function readFullyNow(handle: DiskFile, target: Buffer, position: number): void {
  assert(target.length <= READ_NOW_BYTES_MAX, `a read of ${target.length} bytes is too large to do on the event loop`);
  let done = 0;
  while (done < target.length) {
    const bytesRead = handle.readNow(target, done, target.length - done, position + done);
    if (bytesRead === 0) throw new StorageError('ERR_IO', `short read at ${position + done}: chunk file is shorter than its chunk`);
    done += bytesRead;
  }
}

export async function writeFully(handle: DiskFile, source: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < source.length) {
    done += await handle.write(source, done, source.length - done, position + done);
  }
}

/**
 * writeFully done before returning, for small writes into the page cache (see DiskFile.writeNow):
 * at most this many bytes, so the event loop is never held for a large copy.
 */
export const WRITE_NOW_BYTES_MAX = 64 * 1024;

export function writeFullyNow(handle: DiskFile, source: Buffer, position: number): void {
  assert(source.length <= WRITE_NOW_BYTES_MAX, `a write of ${source.length} bytes is too large to do on the event loop`);
  let done = 0;
  while (done < source.length) {
    done += handle.writeNow(source, done, source.length - done, position + done);
  }
}

export async function writeZeroes(handle: DiskFile, startBytes: number, lengthBytes: number): Promise<void> {
  for (let done = 0; done < lengthBytes; done += ZERO_BLOCK.length) {
    await writeFully(handle, ZERO_BLOCK.subarray(0, Math.min(ZERO_BLOCK.length, lengthBytes - done)), startBytes + done);
  }
}

/** A new file of `sizeBytes` that reads as zeroes, its size synced (its directory entry is the caller's). */
export async function createSparseFile(disk: Disk, path: string, sizeBytes: number): Promise<void> {
  const handle = await disk.open(path, 'create');
  try {
    await handle.truncate(sizeBytes);
    await handle.sync();
  } finally {
    await handle.close();
  }
}
