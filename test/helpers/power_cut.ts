// Power cuts for real daemons. A SIGKILLed process leaves its writes in the kernel's page cache,
// so killing it proves nothing about durability; a power cut loses every write that was not
// fsynced. PowerCutDisk mounts a FUSE file system (powercut/powercut_fs.py, run by Debian's
// Python with python3-fusepy) over a backing folder. It keeps unsynced data and uncommitted
// directory changes in its own memory; cut() drops them (all, or a seeded random part), leaves the
// backing folder as the disk would be after power returns, and unmounts. remount() brings the
// "rebooted" disk back. Several disks can be mounted at once: one per simulated host.
//
// What the file system models (details in powercut_fs.py):
// - file data and size survive only through fsync/fdatasync of the file (or O_SYNC/O_DSYNC writes);
// - a created, removed or renamed entry survives only through fsync of its directory (both
//   directories for a rename between two); a file whose creation is lost disappears with its data
//   (dirModel 'journal': any file fsync commits every directory change, as on ext4);
// - mode, owner and times are applied at once; sockets cannot be created on the mount;
// - fallocate(PUNCH_HOLE) fails with EOPNOTSUPP (Node: ENOTSUP) unless punchHole is set.
// A Python FUSE is slow (tens of MB/s): keep test data to tens of MiB.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, realpath, rm } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { waitExit, waitReadyLine } from './fuse_child.ts';
import { run } from './run.ts';

/** Debian's Python: the pyenv python3 on PATH does not see Debian's python3-fusepy. */
export const SYSTEM_PYTHON = '/usr/bin/python3';
export const INSTALL_COMMAND = 'apt-get install -y python3-fusepy';

const START_TIMEOUT_MS = 15_000;
const REQUEST_TIMEOUT_MS = 30_000;
const CUT_TIMEOUT_MS = 60_000;
const UMOUNT_TIMEOUT_MS = 10_000;
const EXIT_TIMEOUT_MS = 10_000;
const STDERR_TAIL_BYTES = 16 * 1024;

export interface PowerCutDiskOptions {
  readonly backingDir: string;
  readonly mountDir: string;
  /** Support fallocate(PUNCH_HOLE) through the mount. Default false: it fails with EOPNOTSUPP. */
  readonly punchHole?: boolean;
  /** Unsynced bytes the file system may hold; a write past this fails with ENOSPC. Default 256 MiB. */
  readonly dirtyLimitBytes?: number;
  /** When directory changes become durable: see DirModel. Default 'posix'. */
  readonly dirModel?: DirModel;
  readonly startTimeoutMs?: number;
  /** Called when the FUSE process exits without being asked to. Default: printed on stderr. */
  readonly onUnexpectedExit?: (error: Error) => void;
}

/**
 * 'posix': an entry survives only through fsync of its directory (the strict reading, default).
 * 'journal': any file fsync/fdatasync also commits every pending directory change, as a journal
 * commit does on ext4 or xfs (LMDB never fsyncs its directory, for one).
 */
export type DirModel = 'posix' | 'journal';

export type CutMode = { readonly mode: 'none' } | { readonly mode: 'random'; readonly seed: number };

/** What a cut did. Pages are 4 KiB; bytes are pages * 4096. */
export interface CutResult {
  readonly mode: 'none' | 'random';
  readonly seed?: number;
  readonly droppedPages: number;
  readonly droppedBytes: number;
  readonly keptPages: number;
  readonly keptBytes: number;
  readonly droppedSizeChanges: number;
  readonly keptSizeChanges: number;
  readonly undoneDirOps: number;
  readonly keptDirOps: number;
  /** Undo steps that failed. cut() throws when there are any: the helper has a bug. */
  readonly undoFailures: readonly string[];
  /** Exceptions inside the file system since it was mounted. cut() throws when there are any. */
  readonly internalErrors: number;
}

export interface PowerCutStats {
  readonly dirtyFiles: number;
  readonly dirtyPages: number;
  readonly dirtyBytes: number;
  /** Memory the cached pages take (punched pages take none). */
  readonly cacheBytes: number;
  readonly dirtyLimitBytes: number;
  readonly pendingDirOps: number;
  readonly totals: {
    readonly writes: number;
    readonly writeBytes: number;
    readonly syncs: number;
    readonly dirSyncs: number;
    readonly dirOps: number;
    /** Exceptions inside the file system (its bugs; the call got EINVAL). */
    readonly internalErrors: number;
  };
  readonly lastCut: CutResult | null;
}

let prerequisitesChecked = false;

/** Throws, naming the command that fixes it, when this machine cannot run the file system. */
export function checkPowerCutPrerequisites(): void {
  if (prerequisitesChecked) return;
  if (!existsSync('/dev/fuse')) {
    throw new Error('/dev/fuse is missing: run `modprobe fuse` (in a container, start it with --device /dev/fuse --cap-add SYS_ADMIN)');
  }
  const probe = spawnSync(SYSTEM_PYTHON, ['-c', 'import fusepy'], { encoding: 'utf8', timeout: 15_000 });
  if (probe.status !== 0) {
    throw new Error(`${SYSTEM_PYTHON} cannot import fusepy (${(probe.stderr ?? String(probe.error)).trim().split('\n').pop()}): run \`${INSTALL_COMMAND}\` as root`);
  }
  prerequisitesChecked = true;
}

export class PowerCutDisk {
  private readonly options: PowerCutDiskOptions;
  private fuse: FuseProcess | null = null;
  private death: Error | null = null;
  private lastCut: CutResult | null = null;

  private constructor(options: PowerCutDiskOptions) {
    this.options = { ...options, backingDir: resolve(options.backingDir), mountDir: resolve(options.mountDir) };
  }

  static async mount(options: PowerCutDiskOptions): Promise<PowerCutDisk> {
    checkPowerCutPrerequisites();
    const disk = new PowerCutDisk(options);
    await disk.start();
    return disk;
  }

  /** The mount point: daemons keep their data directories under it. */
  get path(): string {
    return this.options.mountDir;
  }

  get backingDir(): string {
    return this.options.backingDir;
  }

  get mounted(): boolean {
    return this.fuse !== null;
  }

  async stats(): Promise<PowerCutStats> {
    const stats = (await this.live('stats').request('stats', REQUEST_TIMEOUT_MS)) as unknown as PowerCutStats;
    return { ...stats, lastCut: stats.lastCut ?? this.lastCut };
  }

  /**
   * Cuts the power. PRECONDITION: every process using the mount was SIGKILLed (and reaped).
   * Drops what did not survive, stops the FUSE process and unmounts (lazily if still busy),
   * leaving the backing folder as the disk would be when power returns.
   */
  async cut(mode: CutMode): Promise<CutResult> {
    if (mode.mode === 'random' && !Number.isSafeInteger(mode.seed)) throw new Error(`cut: seed must be an integer, got ${mode.seed}`);
    const fuse = this.live('cut');
    fuse.expectedExit = true; // unmounting ends it
    let result: CutResult;
    try {
      const command = mode.mode === 'none' ? 'cut none' : `cut random ${mode.seed}`;
      result = (await fuse.request(command, CUT_TIMEOUT_MS)) as unknown as CutResult;
    } finally {
      await this.stopFuse();
    }
    this.lastCut = result;
    if (result.internalErrors > 0 || result.undoFailures.length > 0) {
      throw new Error(`the power-cut file system of ${this.path} is not trustworthy: ${result.internalErrors} internal errors, `
        + `undo failures: ${JSON.stringify(result.undoFailures)}; its log:\n${fuse.log}`);
    }
    return result;
  }

  /** Mounts a fresh FUSE process (fresh kernel cache) over the same backing folder. */
  async remount(): Promise<void> {
    if (this.fuse !== null) throw new Error(`remount: ${this.path} is still mounted; cut() or unmount() it first`);
    this.death = null;
    await this.start();
  }

  /** Clean teardown: syncs everything, unmounts. Idempotent; never throws (problems go to stderr). */
  async unmount(): Promise<void> {
    try {
      const fuse = this.fuse;
      if (fuse !== null && fuse.running) {
        await fuse.request('sync-all', REQUEST_TIMEOUT_MS).catch((error: unknown) => warn(`sync before unmounting ${this.path}`, error));
      }
      await this.stopFuse();
    } catch (error) {
      warn(`unmounting ${this.path}`, error);
    }
  }

  private async start(): Promise<void> {
    const { backingDir, mountDir } = this.options;
    if (await isMountPoint(mountDir)) throw new Error(`${mountDir} is already a mount point (left by an earlier run?): run \`umount -l ${mountDir}\``);
    await mkdir(backingDir, { recursive: true });
    await mkdir(mountDir, { recursive: true });
    const fuse = await FuseProcess.start(this.options);
    this.fuse = fuse;
    void fuse.exited.then(() => {
      if (!fuse.expectedExit) this.noteDeath(fuse);
    });
  }

  private noteDeath(fuse: FuseProcess): void {
    const how = `code ${fuse.child.exitCode}, signal ${fuse.child.signalCode}`;
    this.death = new Error(`the power-cut FUSE process of ${this.path} died unexpectedly (${how}); its log:\n${fuse.log}`);
    if (this.options.onUnexpectedExit) this.options.onUnexpectedExit(this.death);
    else process.stderr.write(`power_cut: ${this.death.message}\n`);
  }

  private live(what: string): FuseProcess {
    if (this.death !== null) throw this.death;
    if (this.fuse === null || !this.fuse.running) throw new Error(`${what}: ${this.path} is not mounted`);
    return this.fuse;
  }

  /** Unmounts, waits for the FUSE process to exit (SIGKILL after a while), removes its socket. */
  private async stopFuse(): Promise<void> {
    const fuse = this.fuse;
    if (fuse !== null) {
      fuse.expectedExit = true;
      await unmountPath(this.path);
      if (!(await fuse.waitExit(EXIT_TIMEOUT_MS))) {
        warn(`stopping ${this.path}`, new Error(`FUSE process ${fuse.child.pid} still running ${EXIT_TIMEOUT_MS} ms after the unmount: SIGKILL`));
        fuse.child.kill('SIGKILL');
        await fuse.waitExit(EXIT_TIMEOUT_MS);
      }
      this.fuse = null;
      await rm(fuse.controlDir, { recursive: true, force: true });
    }
    await unmountPath(this.path);
  }
}

/** One FUSE process: started, awaited until mounted, asked over its control socket. */
class FuseProcess {
  readonly child: ChildProcess;
  readonly controlDir: string;
  readonly exited: Promise<void>;
  expectedExit = false;
  private stderrTail = '';

  private constructor(child: ChildProcess, controlDir: string) {
    this.child = child;
    this.controlDir = controlDir;
    this.exited = new Promise((resolveExit) => {
      if (child.exitCode !== null || child.signalCode !== null) resolveExit();
      else child.once('exit', () => resolveExit());
    });
    child.stderr?.setEncoding('utf8').on('data', (text: string) => {
      this.stderrTail = (this.stderrTail + text).slice(-STDERR_TAIL_BYTES);
    });
  }

  static async start(options: PowerCutDiskOptions): Promise<FuseProcess> {
    const controlDir = await mkdtemp(join(tmpdir(), 'powercut-ctl-'));
    const args = ['-u', fileSystemScript(), '--backing', options.backingDir, '--mount', options.mountDir,
      '--control', join(controlDir, 'control.sock'), '--parent-pid', String(process.pid)];
    if (options.punchHole === true) args.push('--punch-hole');
    if (options.dirtyLimitBytes !== undefined) args.push('--dirty-limit-bytes', String(options.dirtyLimitBytes));
    if (options.dirModel !== undefined) args.push('--dir-model', options.dirModel);
    const fuse = new FuseProcess(spawn(SYSTEM_PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'] }), controlDir);
    try {
      await fuse.waitReady(options.startTimeoutMs ?? START_TIMEOUT_MS);
      if (!(await isMountPoint(options.mountDir))) throw new Error(`ready, but ${options.mountDir} is not a mount point`);
      await fuse.request('ping', REQUEST_TIMEOUT_MS);
    } catch (error) {
      fuse.expectedExit = true;
      fuse.child.kill('SIGKILL');
      await fuse.waitExit(EXIT_TIMEOUT_MS);
      await unmountPath(options.mountDir).catch(() => undefined);
      await rm(controlDir, { recursive: true, force: true });
      throw new Error(`mounting the power-cut file system on ${options.mountDir} failed: ${(error as Error).message}\n${fuse.log}`);
    }
    return fuse;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  get log(): string {
    return this.stderrTail;
  }

  /** True once exited; false if still running after timeoutMs. */
  waitExit(timeoutMs: number): Promise<boolean> {
    return waitExit(this.exited, timeoutMs);
  }

  private waitReady(timeoutMs: number): Promise<void> {
    return waitReadyLine(this.child, timeoutMs);
  }

  /** Sends one command line; resolves with the JSON reply, rejects on an error reply. */
  request(command: string, timeoutMs: number): Promise<Record<string, unknown>> {
    return new Promise((resolveReply, reject) => {
      const socket = createConnection(join(this.controlDir, 'control.sock'));
      const fail = (message: string): void => {
        clearTimeout(timer);
        socket.destroy();
        reject(new Error(`power-cut control '${command}': ${message}${this.running ? '' : `\nthe FUSE process is gone; its log:\n${this.log}`}`));
      };
      const timer = setTimeout(() => fail(`no answer within ${timeoutMs} ms`), timeoutMs);
      let reply = '';
      socket.setEncoding('utf8');
      socket.on('connect', () => socket.write(`${command}\n`));
      socket.on('data', (text: string) => {
        reply += text;
      });
      socket.on('error', (error) => fail(error.message));
      socket.on('close', () => {
        clearTimeout(timer);
        const parsed = parseReply(reply);
        if (parsed === null) fail(`no reply (got ${JSON.stringify(reply.slice(0, 200))})`);
        else if (typeof parsed['error'] === 'string') fail(parsed['error']);
        else resolveReply(parsed);
      });
    });
  }
}

function parseReply(reply: string): Record<string, unknown> | null {
  try {
    const parsed: unknown = JSON.parse(reply);
    return typeof parsed === 'object' && parsed !== null ? (parsed as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** powercut_fs.py beside this file's source (the build keeps .py files in the source tree only). */
function fileSystemScript(): string {
  const candidates = [
    fileURLToPath(new URL('./powercut/powercut_fs.py', import.meta.url)),
    fileURLToPath(new URL('../../../test/helpers/powercut/powercut_fs.py', import.meta.url)),
  ];
  const found = candidates.find((path) => existsSync(path));
  if (found === undefined) throw new Error(`powercut_fs.py not found (looked at ${candidates.join(', ')})`);
  return found;
}

/** Whether `dir` is a mount point, from /proc/self/mountinfo (works on a dead FUSE mount too). */
export async function isMountPoint(dir: string): Promise<boolean> {
  let target = resolve(dir);
  try {
    target = await realpath(dir);
  } catch {
    // a dead FUSE mount cannot be resolved (ENOTCONN): compare the path as given
  }
  const mountInfo = await readFile('/proc/self/mountinfo', 'utf8');
  return mountInfo.split('\n').some((line) => unescapeMountPath(line.split(' ')[4] ?? '') === target);
}

function unescapeMountPath(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_match, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/** umount, then umount -l if busy; throws if `dir` is still a mount point after both. */
export async function unmountPath(dir: string): Promise<void> {
  if (!(await isMountPoint(dir))) return;
  await run('umount', [dir], { timeoutMs: UMOUNT_TIMEOUT_MS });
  if (!(await isMountPoint(dir))) return;
  const lazy = await run('umount', ['-l', dir], { timeoutMs: UMOUNT_TIMEOUT_MS });
  if (await isMountPoint(dir)) throw new Error(`cannot unmount ${dir}: ${lazy.stderr.trim()}`);
}

function warn(what: string, error: unknown): void {
  process.stderr.write(`power_cut: ${what}: ${error instanceof Error ? error.message : String(error)}\n`);
}

export interface PowerCutTestOptions {
  readonly punchHole?: boolean;
  readonly dirtyLimitBytes?: number;
  readonly dirModel?: DirModel;
}

/**
 * A disk in a fresh temporary folder (backing/ and mnt/), unmounted and removed when `t` ends.
 * If the FUSE process dies during the test, the test fails.
 */
export async function mountPowerCutDisk(t: Test, options: PowerCutTestOptions = {}): Promise<PowerCutDisk> {
  const rootDir = await mkdtemp(join(tmpdir(), 'shoal-powercut-'));
  let disk: PowerCutDisk | null = null;
  let ended = false;
  t.teardown(async () => {
    ended = true;
    await disk?.unmount();
    const mountDir = join(rootDir, 'mnt');
    if (await isMountPoint(mountDir)) warn('teardown', new Error(`${mountDir} is still mounted: leaving ${rootDir} in place`));
    else await rm(rootDir, { recursive: true, force: true });
  });
  disk = await PowerCutDisk.mount({
    ...options,
    backingDir: join(rootDir, 'backing'),
    mountDir: join(rootDir, 'mnt'),
    onUnexpectedExit: (error) => {
      if (ended) warn('after the test', error);
      else t.fail(error.message);
    },
  });
  return disk;
}
