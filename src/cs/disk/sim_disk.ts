// An in-memory Disk with Linux's durability rules and seeded faults, so that seeded tests can run
// the real chunk store and journal through thousands of power cuts a second.
//
// What it models:
// - Files are inodes with a durable image (pages + size on stable storage) and a volatile page
//   cache of 4 KiB pages (what reads see). Writes land in the cache and mark pages dirty;
//   datasync/sync of a handle writes that file's dirty pages (holes included) and its size to the
//   durable image. fsync and fdatasync are the same here.
// - Directory tables are volatile too: create, rename, remove and mkdir change a directory's
//   table; syncDirectory copies it to the directory's durable table. A file (or directory) whose
//   entry never became durable is gone after a power cut, whatever was synced inside it.
// - powerCut(): this disk dies (every later call on it or on its handles throws EIO, close()
//   excepted, so the old process's leftover work cannot touch what survived) and a new SimDisk is
//   returned on the surviving state: the durable namespace, and per file its durable image plus a
//   seeded random subset of its dirty pages (write-back may have landed any of them, in any order:
//   multi-page writes tear) and either its durable or its volatile size. The 'dropUnsynced' mode
//   lands nothing that was not synced. processCrash() is kill -9 without the power cut: the handles
//   die, the page cache and the volatile namespace stay.
// - Write-back before the cut: when a dirty page is overwritten, its previous content may first
//   have reached the disk (`writebackChance`), so an intermediate version can survive a cut.
// - Faults, each drawn from the seeded plan or injected once for targeted tests:
//   a failed datasync/sync (EIO) lands a random part of the dirty pages (not the size) and marks
//   every one of them clean: the rest stays readable until the cut but is never written, and the
//   next sync "succeeds" without it (Linux's errseq behaviour, the reason a failed fsync must
//   never be retried as if nothing happened); a write fails with EIO (possibly after a short write); a write
//   that needs a page past `capacityPages` (pages allocated by live files) is short or fails with
//   ENOSPC; punchHole throws ENOTSUP when the file system "cannot punch holes"; a directory sync
//   fails with EIO (nothing of it becomes durable). `faultsPaused` stops the random ones (a test's
//   start-up phases); every fault that happened is in `faults`, for checkers.
// - Latency: every call waits a seeded number of steps (event-loop turns or microtask hops)
//   before and after it takes effect, so that concurrent operations interleave differently per
//   seed, and a cut can fall between an effect and the moment its caller learns of it; some calls
//   may take longer (`slowTurnsMax`: syncs, writes to a busy file), as on real disks.
//
// What it does not model: read errors and silent corruption (bit rot); file system metadata
// journaling that would make one fsync commit other files' sizes or entries (each file and each
// directory is made durable only by its own sync, the weakest POSIX reading); write-back at
// arbitrary moments other than overwrites and the cut; space held by the durable image (capacity
// counts the pages of the volatile view); permissions, links beyond rename, file times, O_DIRECT.
// Renames across directories are two table changes, each durable with its own directory.
//
// Invariant: pages are immutable Buffers once stored, so the cache and the durable image share
// them freely; every change stores a new page.

import { posix } from 'node:path';
import { assert } from '../../util/assert.ts';
import type { Disk, DiskFile, OpenMode, OpenOptions } from './disk.ts';

export const SIM_PAGE_BYTES = 4096;
const ZERO_PAGE = Buffer.alloc(SIM_PAGE_BYTES);

/** Probabilities per call, and the disk's capacity. */
export interface SimFaultPlan {
  /** A datasync/sync fails with EIO. */
  readonly syncEio: number;
  /** A write/writev fails with EIO. */
  readonly writeEio: number;
  /** A syncDirectory fails with EIO. */
  readonly dirSyncEio: number;
  /** Pages the live files may allocate; a write past it is short or fails with ENOSPC. */
  readonly capacityPages: number;
  /** False: punchHole throws ENOTSUP, as on a file system without hole punching. */
  readonly punchHole: boolean;
  /** Random EIO faults hit only files (and directories) whose path this accepts. */
  readonly target: (path: string) => boolean;
}

export const NO_FAULTS: SimFaultPlan = {
  syncEio: 0, writeEio: 0, dirSyncEio: 0, capacityPages: Number.POSITIVE_INFINITY, punchHole: true, target: () => true,
};

export interface SimDiskOptions {
  readonly random: () => number;
  readonly faults?: Partial<SimFaultPlan>;
  /** Most steps (event-loop turns or microtask hops) a call waits before, and again after, its effect. 0: none. */
  readonly latencyStepsMax?: number;
  /**
   * Most extra event-loop turns a call waits before its effect, by system call and path: the slow
   * calls of a real disk (syncs; writes throttled while a busy file flushes).
   */
  readonly slowTurnsMax?: (syscall: string, path: string) => number;
  /** Chance that a dirty page's content reached the disk before the page is overwritten. */
  readonly writebackChance?: number;
  /** Called as each call starts (targeted tests cut power, or start other work, from here). */
  readonly onCall?: (syscall: string, path: string) => void;
}

export type SimFaultKind = 'syncEio' | 'writeEio' | 'noSpace' | 'noPunch' | 'dirSyncEio';

/** A fault that happened: what, in which call, on which path. */
export interface SimFault {
  readonly kind: SimFaultKind;
  readonly syscall: string;
  readonly path: string;
  /** The power cuts before it in the disk's lineage. */
  readonly boot: number;
}

/** One injected fault: the next matching call fails (once). */
export interface SimInjection {
  readonly kind: 'syncEio' | 'writeEio' | 'dirSyncEio';
  readonly path: (path: string) => boolean;
}

export type PowerCutMode = 'random' | 'dropUnsynced';

export interface PowerCutOptions {
  readonly mode: PowerCutMode;
  /** Decides which dirty pages land in 'random' mode; defaults to the disk's own source. */
  readonly random?: () => number;
  /** Overrides the random choice per dirty page (targeted tests): true lands it. */
  readonly landPage?: (path: string, page: number) => boolean;
}

export interface PowerCutReport {
  /** Dirty pages that never reached the disk. */
  readonly droppedPages: number;
  /** Dirty pages that write-back landed. */
  readonly landedPages: number;
  /** Files whose size reverted to the durable one. */
  readonly revertedSizes: number;
  /** Files and directories reachable before the cut that are gone after it. */
  readonly lostNodes: number;
}

interface FileNode {
  readonly kind: 'file';
  /** The volatile view: absent pages are holes. */
  readonly pages: Map<number, Buffer>;
  /** On stable storage. */
  readonly durablePages: Map<number, Buffer>;
  /** Pages whose volatile state (content or hole) a sync must still write. */
  readonly dirty: Set<number>;
  sizeBytes: number;
  durableSizeBytes: number;
  /** Volatile directory entries naming this file. */
  links: number;
  openHandles: number;
}

interface DirNode {
  readonly kind: 'dir';
  readonly entries: Map<string, Node>;
  durableEntries: Map<string, Node>;
}

type Node = FileNode | DirNode;

const ERRNO_TEXT: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EEXIST: 'file already exists',
  ENOSPC: 'no space left on device',
  EIO: 'i/o error',
  ENOTSUP: 'operation not supported on socket',
  ENOTDIR: 'not a directory',
  EISDIR: 'illegal operation on a directory',
  EBADF: 'bad file descriptor',
};

/**
 * An error shaped as node:fs throws it: `code`, `syscall`, `path`, and (like those, which come
 * from libuv) no stack worth capturing: a dead disk throws thousands of them.
 */
export function simErrno(code: string, syscall: string, path: string): NodeJS.ErrnoException {
  const stackTraceLimit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  const error: NodeJS.ErrnoException = new Error(`${code}: ${ERRNO_TEXT[code] ?? 'error'}, ${syscall} '${path}'`);
  Error.stackTraceLimit = stackTraceLimit;
  error.code = code;
  error.syscall = syscall;
  error.path = path;
  return error;
}

function newFile(): FileNode {
  return { kind: 'file', pages: new Map(), durablePages: new Map(), dirty: new Set(), sizeBytes: 0, durableSizeBytes: 0, links: 0, openHandles: 0 };
}

function newDir(): DirNode {
  return { kind: 'dir', entries: new Map(), durableEntries: new Map() };
}

function pagesOf(offsetBytes: number, lengthBytes: number): { first: number; end: number } {
  return { first: Math.floor(offsetBytes / SIM_PAGE_BYTES), end: Math.ceil((offsetBytes + lengthBytes) / SIM_PAGE_BYTES) };
}

/** Shared by a SimDisk and the disks that succeed it after power cuts. */
interface Lineage {
  readonly faults: SimFault[];
  readonly injections: SimInjection[];
}

export class SimDisk implements Disk {
  private readonly options: SimDiskOptions;
  private readonly plan: SimFaultPlan;
  private readonly random: () => number;
  private readonly root: DirNode;
  private readonly lineage: Lineage;
  private dead = false;
  /** Pages held by live files (linked, or open); checked against capacityPages. */
  private allocatedPages = 0;
  /** Random faults off (start-up phases a test wants clean); capacity still applies. */
  faultsPaused = false;
  /** Increments with each power cut in this disk's lineage. */
  readonly boot: number;

  constructor(options: SimDiskOptions, survived?: { root: DirNode; lineage: Lineage; boot: number }) {
    this.options = options;
    this.plan = { ...NO_FAULTS, ...options.faults };
    this.random = options.random;
    this.root = survived?.root ?? newDir();
    this.lineage = survived?.lineage ?? { faults: [], injections: [] };
    this.boot = survived?.boot ?? 0;
    if (survived !== undefined) this.allocatedPages = countPages(this.root);
  }

  /** Every fault so far, in this disk and those before it in its lineage. */
  get faults(): readonly SimFault[] {
    return this.lineage.faults;
  }

  get isDead(): boolean {
    return this.dead;
  }

  get pagesAllocated(): number {
    return this.allocatedPages;
  }

  /** Pages of a file not yet synced, ascending (targeted tests pick what a cut lands). */
  dirtyPages(path: string): number[] {
    const node = this.lookup(path, 'stat');
    return node.kind === 'file' ? [...node.dirty].sort((a, b) => a - b) : [];
  }

  /** The next call of `kind` on a matching path fails, whatever the plan says. */
  inject(injection: SimInjection): void {
    this.lineage.injections.push(injection);
  }

  /**
   * Waits a seeded number of steps: how long a call takes. A step is a turn of the event loop
   * (other calls, timers and setImmediate work run) one time in four, else a microtask hop (other
   * promise chains run): both kinds of interleaving, at a fraction of the cost of loop turns.
   */
  async latency(): Promise<void> {
    const stepsMax = this.options.latencyStepsMax ?? 0;
    if (stepsMax === 0) return;
    const steps = Math.floor(this.random() * (stepsMax + 1));
    for (let step = 0; step < steps; step += 1) {
      if (this.random() < 0.25) await new Promise<void>((resolve) => setImmediate(resolve));
      else await Promise.resolve();
    }
  }

  /** The extra time a slow call takes (event-loop turns, seeded; see `slowTurnsMax`). */
  private async slowness(syscall: string, path: string): Promise<void> {
    const turnsMax = this.options.slowTurnsMax?.(syscall, path) ?? 0;
    if (turnsMax === 0) return;
    const turns = Math.floor(this.random() * (turnsMax + 1));
    for (let turn = 0; turn < turns; turn += 1) await new Promise<void>((resolve) => setImmediate(resolve));
  }

  // ---- Disk -------------------------------------------------------------------------------------

  async open(path: string, mode: OpenMode, options?: OpenOptions): Promise<DiskFile> {
    const durableWrites = options?.durableWrites === true && mode !== 'read';
    return this.call('open', path, () => {
      const { parent, name } = this.parentOf(path, 'open');
      let node = parent.entries.get(name);
      if (node !== undefined && mode === 'createExclusive') throw simErrno('EEXIST', 'open', path);
      if (node === undefined) {
        if (mode === 'read' || mode === 'readWrite') throw simErrno('ENOENT', 'open', path);
        node = newFile();
        node.links = 1;
        parent.entries.set(name, node);
      } else if (node.kind === 'dir') {
        throw simErrno('EISDIR', 'open', path);
      } else if (mode === 'create') {
        this.resize(node, 0);
      }
      node.openHandles += 1;
      return new SimFile(this, node, path, mode !== 'read', durableWrites);
    });
  }

  async readFile(path: string): Promise<Buffer> {
    return this.call('open', path, () => {
      const node = this.lookup(path, 'open');
      if (node.kind === 'dir') throw simErrno('EISDIR', 'read', path);
      const bytes = Buffer.alloc(node.sizeBytes);
      readPages(node, bytes, 0, node.sizeBytes, 0);
      return bytes;
    });
  }

  async readdir(path: string): Promise<string[]> {
    return this.call('scandir', path, () => {
      const node = this.lookup(path, 'scandir');
      if (node.kind !== 'dir') throw simErrno('ENOTDIR', 'scandir', path);
      return this.shuffled([...node.entries.keys()]);
    });
  }

  async mkdir(path: string): Promise<void> {
    return this.call('mkdir', path, () => {
      let dir = this.root;
      for (const name of components(path)) {
        let next = dir.entries.get(name);
        if (next === undefined) {
          next = newDir();
          dir.entries.set(name, next);
        }
        if (next.kind !== 'dir') throw simErrno('ENOTDIR', 'mkdir', path);
        dir = next;
      }
    });
  }

  async rename(fromPath: string, toPath: string): Promise<void> {
    return this.call('rename', fromPath, () => {
      const from = this.parentOf(fromPath, 'rename');
      const to = this.parentOf(toPath, 'rename');
      const node = from.parent.entries.get(from.name);
      if (node === undefined) throw simErrno('ENOENT', 'rename', fromPath);
      const replaced = to.parent.entries.get(to.name);
      if (replaced === node) return;
      if (replaced?.kind === 'dir') throw simErrno('EISDIR', 'rename', toPath);
      from.parent.entries.delete(from.name);
      to.parent.entries.set(to.name, node);
      if (replaced !== undefined) this.unlink(replaced);
    });
  }

  async remove(path: string): Promise<void> {
    return this.call('unlink', path, () => {
      const { parent, name } = this.parentOf(path, 'unlink');
      const node = parent.entries.get(name);
      if (node === undefined) return;
      if (node.kind === 'dir') throw simErrno('EISDIR', 'unlink', path);
      parent.entries.delete(name);
      this.unlink(node);
    });
  }

  async syncDirectory(path: string): Promise<void> {
    return this.call('fsync', path, () => {
      const node = this.lookup(path, 'open');
      if (node.kind !== 'dir') throw simErrno('ENOTDIR', 'open', path);
      if (this.fault('dirSyncEio', 'fsync', path)) throw simErrno('EIO', 'fsync', path);
      node.durableEntries = new Map(node.entries);
    });
  }

  // ---- power cut --------------------------------------------------------------------------------

  /**
   * Cuts power: this disk and its handles die, and the returned disk holds what survived (see the
   * header). The new disk has the same options; `options` replaces them (a new fault plan).
   */
  powerCut(cut: PowerCutOptions, options: SimDiskOptions = this.options): { disk: SimDisk; report: PowerCutReport } {
    assert(!this.dead, 'power cut of a disk that is already dead');
    this.dead = true;
    const random = cut.random ?? this.random;
    const counts = { droppedPages: 0, landedPages: 0, revertedSizes: 0, lostNodes: 0 };
    const before = countNodes(this.root);
    const rebuilt = new Map<Node, Node>();
    const rebuild = (node: Node, path: string): Node => {
      const done = rebuilt.get(node);
      if (done !== undefined) return done;
      let next: Node;
      if (node.kind === 'dir') {
        const dir = newDir();
        rebuilt.set(node, dir);
        for (const [name, child] of node.durableEntries) dir.entries.set(name, rebuild(child, posix.join(path, name)));
        dir.durableEntries = new Map(dir.entries);
        next = dir;
      } else {
        next = survivingFile(node, path, cut, random, counts);
        rebuilt.set(node, next);
      }
      return next;
    };
    const root = rebuild(this.root, '/');
    assert(root.kind === 'dir', 'the root survives as a directory');
    for (const node of rebuilt.values()) if (node.kind === 'file') node.links = 0;
    countLinks(root);
    counts.lostNodes = before - countNodes(root);
    const disk = new SimDisk(options, { root, lineage: this.lineage, boot: this.boot + 1 });
    return { disk, report: counts };
  }

  /**
   * The process dies (kill -9) but the machine stays up: every handle of this disk dies, nothing
   * written is lost (the page cache stays), and the returned disk sees it all.
   */
  processCrash(options: SimDiskOptions = this.options): SimDisk {
    assert(!this.dead, 'process crash on a dead disk');
    this.dead = true;
    forEachFile(this.root, (file) => void (file.openHandles = 0));
    return new SimDisk(options, { root: this.root, lineage: this.lineage, boot: this.boot });
  }

  // ---- used by SimFile --------------------------------------------------------------------------

  /** Runs one call: the hook, latency, the effect (unless the disk died meanwhile), latency again. */
  async call<T>(syscall: string, path: string, effect: () => T): Promise<T> {
    // A dead disk answers at once and draws no randomness: leftovers of the old process must not
    // shift what the disk after the cut does.
    this.checkAlive(syscall, path);
    this.options.onCall?.(syscall, path);
    this.checkAlive(syscall, path);
    await this.slowness(syscall, path);
    await this.latency();
    this.checkAlive(syscall, path);
    const result = effect();
    await this.latency();
    // Power was cut after the effect: the caller never learns that it happened.
    this.checkAlive(syscall, path);
    return result;
  }

  /** A call done before returning: no latency steps (there is no turn to wait), the same checks and faults. */
  callNow<T>(syscall: string, path: string, effect: () => T): T {
    this.checkAlive(syscall, path);
    this.options.onCall?.(syscall, path);
    this.checkAlive(syscall, path);
    return effect();
  }

  checkAlive(syscall: string, path: string): void {
    if (this.dead) throw simErrno('EIO', syscall, path);
  }

  /** Whether this call fails with `kind`: an injected fault first, else the plan's chance. */
  fault(kind: 'syncEio' | 'writeEio' | 'dirSyncEio', syscall: string, path: string): boolean {
    const injected = this.lineage.injections.findIndex((injection) => injection.kind === kind && injection.path(path));
    let hit = injected >= 0;
    if (hit) this.lineage.injections.splice(injected, 1);
    else hit = !this.faultsPaused && this.plan[kind] > 0 && this.plan.target(path) && this.random() < this.plan[kind];
    if (hit) this.note(kind, syscall, path);
    return hit;
  }

  note(kind: SimFaultKind, syscall: string, path: string): void {
    this.lineage.faults.push({ kind, syscall, path, boot: this.boot });
  }

  get punchSupported(): boolean {
    return this.plan.punchHole;
  }

  /** Writes `source` at `positionBytes`; short (or ENOSPC) when the disk is full. */
  writeBytes(file: FileNode, source: Buffer, positionBytes: number, path: string): number {
    let done = 0;
    while (done < source.length) {
      const at = positionBytes + done;
      const page = Math.floor(at / SIM_PAGE_BYTES);
      const inPage = at - page * SIM_PAGE_BYTES;
      const bytes = Math.min(SIM_PAGE_BYTES - inPage, source.length - done);
      const old = file.pages.get(page);
      if (old === undefined && this.allocatedPages >= this.plan.capacityPages) {
        this.note('noSpace', 'write', path);
        if (done === 0) throw simErrno('ENOSPC', 'write', path);
        break;
      }
      let next: Buffer;
      const piece = source.subarray(done, done + bytes);
      if (bytes === SIM_PAGE_BYTES) {
        next = piece.equals(ZERO_PAGE) ? ZERO_PAGE : copyOfPage(piece);
      } else {
        next = copyOfPage(old ?? ZERO_PAGE);
        next.set(piece, inPage);
      }
      this.setPage(file, page, next);
      done += bytes;
    }
    file.sizeBytes = Math.max(file.sizeBytes, positionBytes + done);
    return done;
  }

  /** Makes the file's dirty pages and size durable, or fails with EIO as Linux does (see header). */
  syncFile(file: FileNode, path: string, syscall: string): void {
    if (this.fault('syncEio', syscall, path)) {
      // Write-back got part of the pages out before the error; the rest is lost, yet clean.
      for (const page of file.dirty) if (this.random() < 0.5) landPage(file, page);
      file.dirty.clear();
      throw simErrno('EIO', syscall, path);
    }
    for (const page of file.dirty) landPage(file, page);
    file.dirty.clear();
    file.durableSizeBytes = file.sizeBytes;
  }

  /** Deallocates whole pages, zeroes the partial ones at the edges (size unchanged). */
  punch(file: FileNode, offsetBytes: number, lengthBytes: number): void {
    const endBytes = Math.min(offsetBytes + lengthBytes, file.sizeBytes);
    if (endBytes <= offsetBytes) return;
    const { first, end } = pagesOf(offsetBytes, endBytes - offsetBytes);
    for (let page = first; page < end; page += 1) {
      const pageStart = page * SIM_PAGE_BYTES;
      const from = Math.max(offsetBytes, pageStart) - pageStart;
      const to = Math.min(endBytes, pageStart + SIM_PAGE_BYTES) - pageStart;
      const old = file.pages.get(page);
      if (from === 0 && to === SIM_PAGE_BYTES) this.setPage(file, page, undefined);
      else if (old !== undefined) this.setPage(file, page, zeroed(old, from, to));
    }
  }

  /** Sets the size: pages past it become holes (a partial last page is zero-filled past it). */
  resize(file: FileNode, sizeBytes: number): void {
    if (sizeBytes < file.sizeBytes) {
      const keep = Math.ceil(sizeBytes / SIM_PAGE_BYTES);
      for (const page of new Set([...file.pages.keys(), ...file.durablePages.keys()])) {
        if (page >= keep) this.setPage(file, page, undefined);
      }
      const tail = sizeBytes % SIM_PAGE_BYTES;
      const last = file.pages.get(keep - 1);
      if (tail !== 0 && last !== undefined) this.setPage(file, keep - 1, zeroed(last, tail, SIM_PAGE_BYTES));
    }
    file.sizeBytes = sizeBytes;
  }

  closeFile(file: FileNode): void {
    assert(file.openHandles > 0, 'closing an open file');
    file.openHandles -= 1;
    if (file.openHandles === 0 && file.links === 0) this.allocatedPages -= file.pages.size;
  }

  // ---- internals --------------------------------------------------------------------------------

  /** Stores a page (undefined: a hole), dirty; its previous dirty content may have been written back. */
  private setPage(file: FileNode, page: number, content: Buffer | undefined): void {
    const old = file.pages.get(page);
    const wasDirty = file.dirty.has(page);
    const writebackChance = this.options.writebackChance ?? 0;
    if (wasDirty && writebackChance > 0 && this.random() < writebackChance) landPage(file, page);
    if (content === undefined) {
      if (old !== undefined) {
        file.pages.delete(page);
        this.allocatedPages -= 1;
      }
    } else {
      if (old === undefined) this.allocatedPages += 1;
      file.pages.set(page, content);
    }
    file.dirty.add(page);
  }

  private unlink(node: Node): void {
    if (node.kind !== 'file') return;
    node.links -= 1;
    if (node.links === 0 && node.openHandles === 0) this.allocatedPages -= node.pages.size;
  }

  private lookup(path: string, syscall: string): Node {
    let node: Node = this.root;
    for (const name of components(path)) {
      if (node.kind !== 'dir') throw simErrno('ENOTDIR', syscall, path);
      const next: Node | undefined = node.entries.get(name);
      if (next === undefined) throw simErrno('ENOENT', syscall, path);
      node = next;
    }
    return node;
  }

  private parentOf(path: string, syscall: string): { parent: DirNode; name: string } {
    const names = components(path);
    const name = names.pop();
    if (name === undefined) throw simErrno('EISDIR', syscall, path);
    const parent = this.lookup(`/${names.join('/')}`, syscall);
    if (parent.kind !== 'dir') throw simErrno('ENOTDIR', syscall, path);
    return { parent, name };
  }

  private shuffled<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i -= 1) {
      const j = Math.floor(this.random() * (i + 1));
      const item = items[i];
      const other = items[j];
      assert(item !== undefined && other !== undefined, 'shuffle indexes');
      items[i] = other;
      items[j] = item;
    }
    return items;
  }
}

class SimFile implements DiskFile {
  private readonly disk: SimDisk;
  private readonly node: FileNode;
  private readonly path: string;
  private readonly writable: boolean;
  readonly durableWrites: boolean;
  private closed = false;
  /** A short write that hit a fault: the next write reports the error. */
  private pendingWriteError: NodeJS.ErrnoException | null = null;

  constructor(disk: SimDisk, node: FileNode, path: string, writable: boolean, durableWrites: boolean) {
    this.disk = disk;
    this.node = node;
    this.path = path;
    this.writable = writable;
    this.durableWrites = durableWrites;
  }

  read(target: Buffer, targetOffset: number, lengthBytes: number, positionBytes: number): Promise<number> {
    return this.op('read', false, () => {
      const bytes = Math.max(0, Math.min(lengthBytes, this.node.sizeBytes - positionBytes));
      readPages(this.node, target, targetOffset, bytes, positionBytes);
      return bytes;
    });
  }

  readNow(target: Buffer, targetOffset: number, lengthBytes: number, positionBytes: number): number {
    return this.disk.callNow('read', this.path, () => {
      if (this.closed) throw simErrno('EBADF', 'read', this.path);
      const bytes = Math.max(0, Math.min(lengthBytes, this.node.sizeBytes - positionBytes));
      readPages(this.node, target, targetOffset, bytes, positionBytes);
      return bytes;
    });
  }

  write(source: Buffer, sourceOffset: number, lengthBytes: number, positionBytes: number): Promise<number> {
    return this.durably(this.op('write', true, () => this.writeChecked(source.subarray(sourceOffset, sourceOffset + lengthBytes), positionBytes)));
  }

  writeNow(source: Buffer, sourceOffset: number, lengthBytes: number, positionBytes: number): number {
    assert(!this.durableWrites, 'writeNow is for page-cache writes, not for a handle whose writes sync');
    return this.disk.callNow('write', this.path, () => {
      if (this.closed || !this.writable) throw simErrno('EBADF', 'write', this.path);
      return this.writeChecked(source.subarray(sourceOffset, sourceOffset + lengthBytes), positionBytes);
    });
  }

  writev(buffers: readonly Buffer[], positionBytes: number): Promise<number> {
    return this.durably(this.op('write', true, () => this.writeChecked(Buffer.concat(buffers), positionBytes)));
  }

  /**
   * O_DSYNC as Linux does it: the write lands in the page cache, then the file is synced before
   * the call returns; a cut between the two keeps what write-back landed, a failed sync fails the
   * write (its bytes stay readable, not durable).
   */
  private async durably(written: Promise<number>): Promise<number> {
    const bytes = await written;
    if (this.durableWrites) await this.datasync();
    return bytes;
  }

  datasync(): Promise<void> {
    return this.op('fdatasync', false, () => this.disk.syncFile(this.node, this.path, 'fdatasync'));
  }

  sync(): Promise<void> {
    return this.op('fsync', false, () => this.disk.syncFile(this.node, this.path, 'fsync'));
  }

  truncate(sizeBytes: number): Promise<void> {
    return this.op('ftruncate', true, () => this.disk.resize(this.node, sizeBytes));
  }

  sizeBytes(): Promise<number> {
    return this.op('fstat', false, () => this.node.sizeBytes);
  }

  punchHole(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.op('fallocate', true, () => {
      if (!this.disk.punchSupported) {
        this.disk.note('noPunch', 'fallocate', this.path);
        throw simErrno('ENOTSUP', 'fallocate', this.path);
      }
      this.disk.punch(this.node, offsetBytes, lengthBytes);
    });
  }

  async close(): Promise<void> {
    // Closing is harmless even on a dead disk: the process that held the handle is gone.
    if (this.closed) return;
    this.closed = true;
    if (!this.disk.isDead) this.disk.closeFile(this.node);
  }

  private op<T>(syscall: string, writes: boolean, effect: () => T): Promise<T> {
    return this.disk.call(syscall, this.path, () => {
      if (this.closed || (writes && !this.writable)) throw simErrno('EBADF', syscall, this.path);
      return effect();
    });
  }

  /** A write: a pending error, a fault (maybe after a short write), or the bytes. */
  private writeChecked(source: Buffer, positionBytes: number): number {
    const pending = this.pendingWriteError;
    if (pending !== null) {
      this.pendingWriteError = null;
      throw pending;
    }
    if (this.disk.fault('writeEio', 'write', this.path)) {
      const error = simErrno('EIO', 'write', this.path);
      const pages = Math.floor(source.length / SIM_PAGE_BYTES);
      if (pages < 2) throw error;
      // Linux reports what it wrote before the error; the error comes with the next call.
      this.pendingWriteError = error;
      return this.disk.writeBytes(this.node, source.subarray(0, SIM_PAGE_BYTES * Math.ceil(pages / 2)), positionBytes, this.path);
    }
    return this.disk.writeBytes(this.node, source, positionBytes, this.path);
  }
}

function components(path: string): string[] {
  assert(posix.isAbsolute(path), 'sim disk paths are absolute');
  return posix.normalize(path).split('/').filter((name) => name !== '');
}

function readPages(file: FileNode, target: Buffer, targetOffset: number, lengthBytes: number, positionBytes: number): void {
  let done = 0;
  while (done < lengthBytes) {
    const at = positionBytes + done;
    const page = Math.floor(at / SIM_PAGE_BYTES);
    const inPage = at - page * SIM_PAGE_BYTES;
    const bytes = Math.min(SIM_PAGE_BYTES - inPage, lengthBytes - done);
    const content = file.pages.get(page);
    if (content === undefined) target.fill(0, targetOffset + done, targetOffset + done + bytes);
    else target.set(content.subarray(inPage, inPage + bytes), targetOffset + done);
    done += bytes;
  }
}

/** The durable image takes the page's volatile state (content or hole). */
function landPage(file: FileNode, page: number): void {
  const content = file.pages.get(page);
  if (content === undefined) file.durablePages.delete(page);
  else file.durablePages.set(page, content);
}

/**
 * Pages are carved from slabs: a fresh 4 KiB ArrayBuffer per page costs more than the rest of the
 * simulation. A slab lives as long as any page of it does. (Uint8Array.set copies: Buffer.copy is
 * several times slower for small copies on Node 20.)
 */
const SLAB_PAGES = 64;
let slab = Buffer.allocUnsafeSlow(SLAB_PAGES * SIM_PAGE_BYTES);
let slabPagesUsed = 0;

function copyOfPage(page: Buffer): Buffer {
  if (slabPagesUsed === SLAB_PAGES) {
    slab = Buffer.allocUnsafeSlow(SLAB_PAGES * SIM_PAGE_BYTES);
    slabPagesUsed = 0;
  }
  const copy = slab.subarray(slabPagesUsed * SIM_PAGE_BYTES, (slabPagesUsed + 1) * SIM_PAGE_BYTES);
  slabPagesUsed += 1;
  copy.set(page);
  return copy;
}

function zeroed(page: Buffer, fromBytes: number, toBytes: number): Buffer {
  const next = copyOfPage(page);
  next.fill(0, fromBytes, toBytes);
  return next;
}

/** A file as it comes back after a cut: its durable image, some dirty pages, one of its sizes. */
function survivingFile(old: FileNode, path: string, cut: PowerCutOptions, random: () => number,
  counts: { droppedPages: number; landedPages: number; revertedSizes: number }): FileNode {
  const file = newFile();
  for (const [page, content] of old.durablePages) file.durablePages.set(page, content);
  for (const page of old.dirty) {
    const land = cut.landPage?.(path, page) ?? (cut.mode === 'random' && random() < 0.5);
    if (!land) {
      counts.droppedPages += 1;
      continue;
    }
    counts.landedPages += 1;
    const content = old.pages.get(page);
    if (content === undefined) file.durablePages.delete(page);
    else file.durablePages.set(page, content);
  }
  let sizeBytes = old.durableSizeBytes;
  if (old.sizeBytes !== old.durableSizeBytes) {
    if (cut.mode === 'random' && random() < 0.5) sizeBytes = old.sizeBytes;
    else counts.revertedSizes += 1;
  }
  const keep = Math.ceil(sizeBytes / SIM_PAGE_BYTES);
  const tail = sizeBytes % SIM_PAGE_BYTES;
  for (const [page, content] of file.durablePages) {
    if (page >= keep) file.durablePages.delete(page);
    else if (page === keep - 1 && tail !== 0) file.durablePages.set(page, zeroed(content, tail, SIM_PAGE_BYTES));
  }
  file.sizeBytes = sizeBytes;
  file.durableSizeBytes = sizeBytes;
  for (const [page, content] of file.durablePages) file.pages.set(page, content);
  return file;
}

function forEachFile(dir: DirNode, visit: (file: FileNode) => void, seen = new Set<Node>()): void {
  for (const child of dir.entries.values()) {
    if (seen.has(child)) continue;
    seen.add(child);
    if (child.kind === 'file') visit(child);
    else forEachFile(child, visit, seen);
  }
}

function countLinks(dir: DirNode): void {
  for (const child of dir.entries.values()) {
    if (child.kind === 'file') child.links += 1;
    else countLinks(child);
  }
}

function countPages(dir: DirNode, seen = new Set<Node>()): number {
  let pages = 0;
  for (const child of dir.entries.values()) {
    if (seen.has(child)) continue;
    seen.add(child);
    pages += child.kind === 'file' ? child.pages.size : countPages(child, seen);
  }
  return pages;
}

function countNodes(dir: DirNode, seen = new Set<Node>()): number {
  let nodes = 0;
  for (const child of dir.entries.values()) {
    if (seen.has(child)) continue;
    seen.add(child);
    nodes += 1 + (child.kind === 'dir' ? countNodes(child, seen) : 0);
  }
  return nodes;
}
