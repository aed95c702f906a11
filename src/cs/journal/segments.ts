// The journal's files: journal/<segment number>.log segments (16 digits), records appended in
// order, and journal/spare-<n>.log files waiting to become segments.
//
// Segments are preallocated (zero-filled once, then recycled after checkpoints), so a commit
// overwrites blocks the file already has: its fdatasync flushes data only, never the file's size
// through the file system's own journal, which is what makes one sync cheap. A recycled file still
// holds records of its earlier life; they carry an older segment number, so replay, which accepts
// only the segment's own number with consecutive indexes, stops there as it stops at zeroes.
//
// New segments and spares are numbered above every number seen in the directory, so a number is
// never used twice and a spare's old records never pass for the new segment's.
//
// A file becomes a segment with its header (record.ts: the format, its number, the data directory
// it belongs to) written and synced before any record goes in.
//
// The journal's space is `segmentsMax` files of `segmentBytesMax`: segments and spares together.
// The journal (journal.ts) keeps the bytes of its files within it: the current segment may run
// past its size while a checkpoint is still making room, but only into space no other file takes,
// and a spare is made or kept only where it fits (`mayAddSpare`, recycle's `fileBytes`).

import { dirname, join } from 'node:path';
import type { Logger } from '../../util/log.ts';
import { SEGMENT_HEADER_BYTES, encodeSegmentHeader } from './record.ts';
import type { Disk, DiskFile } from '../disk/disk.ts';

const ZERO_FILL = Buffer.alloc(1024 * 1024);
const SEGMENT_NAME = /^(\d{16})\.log$/;
const SPARE_NAME = /^spare-(\d{16})\.log$/;

/** The segment records are appended to. */
export interface Segment {
  readonly handle: DiskFile;
  readonly number: number;
  readonly name: string;
  sizeBytes: number;
  nextIndex: number;
  /** Bytes the file took before any record (a spare's or a preallocated file's size; else 0). */
  readonly allocatedBytes: number;
}

export interface SegmentName {
  readonly name: string;
  readonly number: number;
}

export interface SegmentFilesOptions {
  readonly disk: Disk;
  readonly directory: string;
  /** Size a segment is preallocated to. */
  readonly segmentBytesMax: number;
  /** Segment files (segments and spares) the journal's space holds; at least 2 (a segment and a spare). */
  readonly segmentsMax: number;
  /** The uuid of the data directory the journal belongs to, written in each segment's header. */
  readonly ownerUuid: string;
  readonly log: Logger;
  /** Whether the journal's space has room for one more spare of `segmentBytesMax` now. */
  readonly mayAddSpare?: () => boolean;
}

export class SegmentFiles {
  private readonly options: SegmentFilesOptions;
  /** Highest segment number seen in the directory, spares included: new segments go above it. */
  private highestNumber = 0;
  private preparingSpare: Promise<void> | null = null;
  /** Spare files, counting one being prepared (each takes `segmentBytesMax` of the journal's space). */
  private spareFiles = 0;

  private constructor(options: SegmentFilesOptions) {
    this.options = options;
  }

  /** Creates the directory durably, drops half-prepared spares and learns the numbers in use. */
  static async open(options: SegmentFilesOptions): Promise<SegmentFiles> {
    const { disk, directory } = options;
    await disk.mkdir(directory);
    await disk.syncDirectory(dirname(directory));
    // A spare half zero-filled when the server stopped is of no use.
    for (const name of await disk.readdir(directory)) {
      if (name.endsWith('.tmp')) await disk.remove(join(directory, name));
    }
    const files = new SegmentFiles(options);
    const { segments, spares } = await files.list();
    files.highestNumber = Math.max(0, ...segments.map((s) => s.number), ...spares.map((s) => s.number));
    files.spareFiles = spares.length;
    return files;
  }

  /** Bytes the spare files take (one being prepared included). */
  get spareBytes(): number {
    return this.spareFiles * this.options.segmentBytesMax;
  }

  /** Segments and spares, each by ascending number. */
  async list(): Promise<{ segments: SegmentName[]; spares: SegmentName[] }> {
    const names = (await this.options.disk.readdir(this.options.directory)).sort();
    const pick = (pattern: RegExp) => names.flatMap((name) => {
      const match = pattern.exec(name);
      return match === null ? [] : [{ name, number: Number(match[1]) }];
    });
    return { segments: pick(SEGMENT_NAME), spares: pick(SPARE_NAME) };
  }

  /** A file of the journal opened for reading (segment_reader.ts reads segments from it). */
  openRead(name: string): Promise<DiskFile> {
    return this.options.disk.open(join(this.options.directory, name), 'read');
  }

  /** The first `bytes` of a file (fewer if it is shorter). */
  async readHead(name: string, bytes: number): Promise<Buffer> {
    const handle = await this.options.disk.open(join(this.options.directory, name), 'read');
    try {
      const head = Buffer.alloc(bytes);
      const bytesRead = await handle.read(head, 0, bytes, 0);
      return head.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  }

  /**
   * Opens the next segment: a prepared spare renamed to the next number, or, when none is ready, a
   * new file (preallocated first if `preallocate`, else growing as it is written).
   */
  async next(preallocate: boolean): Promise<Segment> {
    const { disk, directory, segmentBytesMax } = this.options;
    const number = this.highestNumber + 1;
    this.highestNumber = number;
    const name = segmentName(number);
    const path = join(directory, name);
    const { spares } = await this.list();
    const spare = spares[0];
    if (spare !== undefined) {
      await disk.rename(join(directory, spare.name), path);
      this.spareFiles -= 1;
    } else if (preallocate) {
      await zeroFill(disk, path, segmentBytesMax);
    }
    // Records are written with O_DSYNC: a commit is one writev, durable when it returns.
    const handle = await disk.open(path, spare !== undefined || preallocate ? 'readWrite' : 'createExclusive', { durableWrites: true });
    try {
      // The header before any record: a segment holding records always names its owner.
      await handle.write(encodeSegmentHeader(this.options.ownerUuid, number), 0, SEGMENT_HEADER_BYTES, 0);
      await handle.sync();
    } catch (error) {
      await handle.close().catch(() => undefined);
      throw error;
    }
    // The segment's directory entry must survive a crash as surely as the records in it (and the
    // renames of recycled segments to spares go with it).
    await disk.syncDirectory(directory);
    const allocatedBytes = spare !== undefined || preallocate ? segmentBytesMax : 0;
    return { handle, number, name, sizeBytes: SEGMENT_HEADER_BYTES, nextIndex: 0, allocatedBytes };
  }

  /**
   * Keeps old segments as spares for reuse, as many as the journal's space leaves beside the
   * segments still in use; deletes the rest, and any that grew past a segment's size (`fileBytes`
   * tells a file's size; a spare must take no more than its share of the space).
   */
  async recycle(names: readonly string[], fileBytes: (name: string) => number): Promise<void> {
    const { disk, directory, segmentsMax, segmentBytesMax } = this.options;
    const { segments, spares } = await this.list();
    const inUse = segments.filter((s) => !names.includes(s.name)).length;
    let kept = spares.length;
    for (const name of names) {
      const number = Number(SEGMENT_NAME.exec(name)?.[1] ?? 0);
      if (inUse + kept < segmentsMax && fileBytes(name) <= segmentBytesMax) {
        await disk.rename(join(directory, name), join(directory, spareName(number)));
        kept += 1;
        this.spareFiles += 1;
      } else {
        await disk.remove(join(directory, name));
      }
    }
  }

  /** Zero-fills a spare in the background when there is none, so the next checkpoint finds one. */
  prepareSpare(): void {
    if (this.preparingSpare !== null) return;
    const { disk, directory, segmentBytesMax, log } = this.options;
    this.preparingSpare = (async () => {
      const { segments, spares } = await this.list();
      if (spares.length > 0 || segments.length + 1 > this.options.segmentsMax) return;
      if (this.options.mayAddSpare !== undefined && !this.options.mayAddSpare()) return;
      this.highestNumber += 1;
      this.spareFiles += 1; // its space is taken from the first zero written
      const temporary = join(directory, `preparing-${this.highestNumber}.tmp`);
      try {
        await zeroFill(disk, temporary, segmentBytesMax);
        await disk.rename(temporary, join(directory, spareName(this.highestNumber)));
      } catch (error) {
        this.spareFiles -= 1;
        await disk.remove(temporary).catch(() => undefined);
        throw error;
      }
    })()
      .catch((error: unknown) => log.warn('could not prepare a journal spare; segments will grow as written', { error }))
      .finally(() => {
        this.preparingSpare = null;
      });
  }

  /** Resolves once no spare is being prepared (before the journal closes). */
  async settled(): Promise<void> {
    await this.preparingSpare;
  }
}

function segmentName(number: number): string {
  return `${String(number).padStart(16, '0')}.log`;
}

function spareName(number: number): string {
  return `spare-${String(number).padStart(16, '0')}.log`;
}

async function zeroFill(disk: Disk, path: string, sizeBytes: number): Promise<void> {
  const handle = await disk.open(path, 'create');
  try {
    for (let offset = 0; offset < sizeBytes; offset += ZERO_FILL.length) {
      await handle.write(ZERO_FILL, 0, Math.min(ZERO_FILL.length, sizeBytes - offset), offset);
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}
