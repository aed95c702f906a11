// The file I/O a chunk server's storage does (journal segments, chunk data and checksum files), as
// one interface. Two implementations: the real disk (real_disk.ts, node:fs) and a simulated disk
// (sim_disk.ts) that keeps unsynced writes volatile and can lose them, tear them, fail an fsync
// with EIO or run out of space, so seeded tests can cut power thousands of times a second.
//
// Errors are thrown as the operating system reports them: objects with an errno `code` ('ENOENT',
// 'EEXIST', 'ENOSPC', 'EIO', 'ENOTSUP'); callers turn them into StorageErrors at their edge.
// The contract mirrors POSIX on Linux, which is what the code above it must be correct against:
// - a write is durable only after datasync/sync of its file, or when it returns on a handle
//   opened with `durableWrites` (O_DSYNC: the write and the fdatasync in one call);
// - creating, renaming or removing a directory entry is durable only after syncDirectory of the
//   directory it is in;
// - after a failed datasync, the data it covered may be gone even if a later datasync succeeds.

/** How a file is opened: an existing file, read-only or read-write; created (truncated); created only if absent. */
export type OpenMode = 'read' | 'readWrite' | 'create' | 'createExclusive';

export interface OpenOptions {
  /**
   * Every write through the handle returns only once its bytes (and the size needed to read them)
   * are on stable storage: O_DSYNC, write and fdatasync in one system call. A journal's commit then
   * costs one thread-pool round trip instead of two (measured here: 405-514 µs against 582-656 µs
   * per 4 KiB record, bench/README.md).
   */
  readonly durableWrites?: boolean;
}

export interface DiskFile {
  /** Opened with `durableWrites`: each write is durable when it returns (a datasync adds nothing). */
  readonly durableWrites: boolean;
  /** Reads up to `lengthBytes` at `positionBytes` into `target[targetOffset..]`; returns bytes read (0 at end of file). */
  read(target: Buffer, targetOffset: number, lengthBytes: number, positionBytes: number): Promise<number>;
  /**
   * The same read, done before returning (pread on the calling thread). For small reads of blocks
   * that are likely in the page cache, where a thread-pool round trip costs several times the copy;
   * a read that must wait for the device holds the caller that long (see on_loop_gate.ts).
   */
  readNow(target: Buffer, targetOffset: number, lengthBytes: number, positionBytes: number): number;
  /** Writes `source[sourceOffset..sourceOffset+lengthBytes)` at `positionBytes`; returns bytes written. */
  write(source: Buffer, sourceOffset: number, lengthBytes: number, positionBytes: number): Promise<number>;
  /**
   * The same write, done before returning (pwrite on the calling thread). For small writes into
   * the page cache only, where a thread-pool round trip (a queue lock, a wake-up, a completion
   * event) costs several times the copy itself; never for syncs or for reads, which may wait for
   * the device.
   */
  writeNow(source: Buffer, sourceOffset: number, lengthBytes: number, positionBytes: number): number;
  /** Writes the buffers one after another from `positionBytes`; returns bytes written (may be short). */
  writev(buffers: readonly Buffer[], positionBytes: number): Promise<number>;
  /** fdatasync: the file's data (and the size needed to read it) is on stable storage. */
  datasync(): Promise<void>;
  /** fsync: data and every attribute. */
  sync(): Promise<void>;
  truncate(sizeBytes: number): Promise<void>;
  /** The file's size (fstat), with writes not yet synced. */
  sizeBytes(): Promise<number>;
  /** Deallocates a range, which then reads as zeroes; throws ENOTSUP/EOPNOTSUPP where unsupported. */
  punchHole(offsetBytes: number, lengthBytes: number): Promise<void>;
  close(): Promise<void>;
}

export interface Disk {
  open(path: string, mode: OpenMode, options?: OpenOptions): Promise<DiskFile>;
  /** The whole file. */
  readFile(path: string): Promise<Buffer>;
  /** Names in a directory, in no particular order. */
  readdir(path: string): Promise<string[]>;
  /** Creates the directory and missing parents (like mkdir -p); each new one still needs its parent synced. */
  mkdir(path: string): Promise<void>;
  rename(fromPath: string, toPath: string): Promise<void>;
  /** Removes a file; no error when it is already gone. */
  remove(path: string): Promise<void>;
  /** fsync of a directory: entries created, renamed or removed in it are durable. */
  syncDirectory(path: string): Promise<void>;
}

/** The errno code of an error thrown by a Disk, or undefined. */
export function errnoCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Hole punching is not supported here: Linux says EOPNOTSUPP, Node reports it as ENOTSUP. */
export function isUnsupported(error: unknown): boolean {
  const code = errnoCode(error);
  return code === 'ENOTSUP' || code === 'EOPNOTSUPP';
}
