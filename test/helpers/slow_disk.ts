// A slow disk for tests and benchmarks: slowdisk/slow_fs.py, a FUSE pass-through with the timing
// of one spinning disk (a seek per non-sequential transfer, a bandwidth cap, writes paid for at
// fsync or when dirty pages pass a limit; see the script's header). Daemons whose data directory is
// under `path` run on an "HDD"; a journal directory elsewhere runs on the fast disk in front of it.
// Needs /dev/fuse and Debian's python3-fusepy, like the power-cut disk.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { waitExit, waitReadyLine } from './fuse_child.ts';
import { SYSTEM_PYTHON, checkPowerCutPrerequisites, isMountPoint, unmountPath } from './power_cut.ts';

const START_TIMEOUT_MS = 15_000;
const EXIT_TIMEOUT_MS = 10_000;
const STDERR_TAIL_BYTES = 16 * 1024;

export interface SlowDiskOptions {
  readonly backingDir: string;
  readonly mountDir: string;
  /** Cost of a transfer that does not start where the previous one ended. Default 8 ms. */
  readonly seekMs?: number;
  /** Sequential bytes per second. Default 150 MB/s. */
  readonly bandwidthBytesPerSecond?: number;
  /** Dirty bytes past which a writer first pays for writing back. Default 64 MiB. */
  readonly dirtyLimitBytes?: number;
}

/** The platter's counters since the mount (slow_fs.py's `stats`, asked for with SIGUSR1). */
export interface SlowDiskStats {
  /** Seconds the head was busy (seeks plus transfers); its rise over a span / the span = use. */
  readonly busySeconds: number;
  readonly seeks: number;
  readonly bytes: number;
  readonly dirtyBytes: number;
}

export class SlowDisk {
  readonly path: string;
  readonly backingDir: string;
  private readonly child: ChildProcess;
  private readonly exited: Promise<void>;
  private stderrTail = '';

  private constructor(options: SlowDiskOptions, child: ChildProcess) {
    this.path = resolve(options.mountDir);
    this.backingDir = resolve(options.backingDir);
    this.child = child;
    this.exited = new Promise((done) => {
      if (child.exitCode !== null || child.signalCode !== null) done();
      else child.once('exit', () => done());
    });
    child.stderr?.setEncoding('utf8').on('data', (text: string) => {
      this.stderrTail = (this.stderrTail + text).slice(-STDERR_TAIL_BYTES);
    });
  }

  static async mount(options: SlowDiskOptions): Promise<SlowDisk> {
    checkPowerCutPrerequisites();
    const mountDir = resolve(options.mountDir);
    if (await isMountPoint(mountDir)) throw new Error(`${mountDir} is already a mount point (left by an earlier run?): run \`umount -l ${mountDir}\``);
    await mkdir(options.backingDir, { recursive: true });
    await mkdir(mountDir, { recursive: true });
    const args = ['-u', scriptPath(), '--backing', resolve(options.backingDir), '--mount', mountDir, '--parent-pid', String(process.pid)];
    if (options.seekMs !== undefined) args.push('--seek-ms', String(options.seekMs));
    if (options.bandwidthBytesPerSecond !== undefined) args.push('--bandwidth-bytes', String(Math.round(options.bandwidthBytesPerSecond)));
    if (options.dirtyLimitBytes !== undefined) args.push('--dirty-limit-bytes', String(options.dirtyLimitBytes));
    const disk = new SlowDisk(options, spawn(SYSTEM_PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    try {
      await disk.waitReady();
      if (!(await isMountPoint(mountDir))) throw new Error(`ready, but ${mountDir} is not a mount point`);
    } catch (error) {
      await disk.unmount();
      throw new Error(`mounting the slow disk on ${mountDir} failed: ${(error as Error).message}\n${disk.stderrTail}`);
    }
    return disk;
  }

  /** Unmounts and stops the FUSE process. Idempotent; never throws (problems go to stderr). */
  async unmount(): Promise<void> {
    try {
      await unmountPath(this.path);
      if (!(await this.waitExit())) {
        this.child.kill('SIGKILL');
        await this.waitExit();
      }
    } catch (error) {
      process.stderr.write(`slow_disk: unmounting ${this.path}: ${(error as Error).message}\n`);
    }
  }

  /** The platter's counters now; null when the FUSE process does not answer within `timeoutMs`. */
  stats(timeoutMs = 5_000): Promise<SlowDiskStats | null> {
    const stderr = this.child.stderr;
    if (stderr === null || this.child.exitCode !== null || this.child.signalCode !== null) {
      return Promise.resolve(null);
    }
    return new Promise((resolve) => {
      let text = '';
      const finish = (stats: SlowDiskStats | null): void => {
        clearTimeout(timer);
        stderr.off('data', onData);
        resolve(stats);
      };
      const onData = (chunk: string): void => {
        text += chunk;
        const lines = text.split('\n').slice(0, -1);
        const line = lines.find((candidate) => candidate.includes('"event": "stats"'));
        if (line !== undefined) finish(JSON.parse(line) as SlowDiskStats);
      };
      const timer = setTimeout(() => finish(null), timeoutMs);
      stderr.on('data', onData);
      this.child.kill('SIGUSR1');
    });
  }

  private waitExit(): Promise<boolean> {
    return waitExit(this.exited, EXIT_TIMEOUT_MS);
  }

  private waitReady(): Promise<void> {
    return waitReadyLine(this.child, START_TIMEOUT_MS);
  }
}

/** slow_fs.py beside this file's source (the build keeps .py files in the source tree only). */
function scriptPath(): string {
  const candidates = [
    fileURLToPath(new URL('./slowdisk/slow_fs.py', import.meta.url)),
    fileURLToPath(new URL('../../../test/helpers/slowdisk/slow_fs.py', import.meta.url)),
  ];
  const found = candidates.find((path) => existsSync(path));
  if (found === undefined) throw new Error(`slow_fs.py not found (looked at ${candidates.join(', ')})`);
  return found;
}

/** A slow disk in a fresh temporary folder, unmounted and removed when `t` ends. */
export async function mountSlowDisk(t: Test, options: Omit<SlowDiskOptions, 'backingDir' | 'mountDir'> = {}): Promise<SlowDisk> {
  const rootDir = await mkdtemp(join(tmpdir(), 'shoal-slowdisk-'));
  let disk: SlowDisk | null = null;
  t.teardown(async () => {
    await disk?.unmount();
    if (await isMountPoint(join(rootDir, 'mnt'))) process.stderr.write(`slow_disk: ${rootDir}/mnt is still mounted: leaving it\n`);
    else await rm(rootDir, { recursive: true, force: true });
  });
  disk = await SlowDisk.mount({ ...options, backingDir: join(rootDir, 'backing'), mountDir: join(rootDir, 'mnt') });
  return disk;
}
