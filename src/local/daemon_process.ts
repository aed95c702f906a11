// One daemon (`shoal run mds|cs|nbd ...`) as a child process: started, awaited until it prints its
// ready line, signalled and awaited until it exits. Used by `shoal start`, the tests and the
// benchmark harness, so all three run daemons exactly the same way.

import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { StorageError, isErrorCode, type ErrorCode } from '../errors.ts';
import { DAEMON_ENVIRONMENT } from './daemon_environment.ts';

export const SHOAL_ENTRY = fileURLToPath(new URL('../bin/shoal.js', import.meta.url));

export interface DaemonOptions {
  readonly name: string;
  readonly args: readonly string[];
  readonly readyTimeoutMs?: number;
  /** Own process group: a terminal's Ctrl-C then reaches only the parent. */
  readonly detached?: boolean;
  readonly env?: Readonly<Record<string, string>>;
  /**
   * Run under a supervisor (`shoal start`): the daemon gets a pipe from this process as its stdin
   * and stops by itself the moment this process dies and the pipe closes (src/util/daemon.ts), and
   * it reports why it could not start in a stdout line, which the start error then carries.
   */
  readonly supervised?: boolean;
  /** Called once the process exists, before it is ready: a supervisor records it at once. */
  readonly onSpawn?: (child: ChildProcess) => void;
  /** Where the daemon's stderr (its log) goes: inherited, or collected in memory (last 64 KiB). */
  readonly stderr?: 'inherit' | 'collect';
  /** Lines the daemon prints on stdout that are not its ready line. */
  readonly onLine?: (line: string) => void;
  /**
   * A cgroup's `cgroup.procs` file: the daemon joins that cgroup before node starts (a shell joins
   * and execs it), so every page it ever allocates is charged there. Tests limit memory this way.
   */
  readonly cgroupProcs?: string;
}

const STDERR_TAIL_BYTES = 64 * 1024;

export class DaemonProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly ready: Readonly<Record<string, unknown>>;
  private stderrTail = '';
  private readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(name: string, child: ChildProcess, ready: Record<string, unknown>) {
    this.name = name;
    this.child = child;
    this.ready = ready;
    this.exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve({ code: child.exitCode, signal: child.signalCode });
      else child.once('exit', (code, signal) => resolve({ code, signal }));
    });
  }

  static start(options: DaemonOptions): Promise<DaemonProcess> {
    const readyTimeoutMs = options.readyTimeoutMs ?? 30_000;
    // SHOAL_NODE_ARGS passes extra options to node for every daemon (e.g. --cpu-prof when profiling).
    const nodeArgs = (process.env['SHOAL_NODE_ARGS'] ?? '').split(' ').filter((arg) => arg !== '');
    const supervised = options.supervised === true;
    const command = [process.execPath, '--enable-source-maps', ...nodeArgs, SHOAL_ENTRY, ...options.args];
    const [file, ...args] = options.cgroupProcs === undefined ? command
      : ['/bin/sh', '-c', 'echo $$ > "$0" && exec "$@"', options.cgroupProcs, ...command];
    const child = spawn(file!, args, {
      stdio: [supervised ? 'pipe' : 'ignore', 'pipe', options.stderr === 'collect' ? 'pipe' : 'inherit'],
      detached: options.detached ?? false,
      env: {
        ...DAEMON_ENVIRONMENT,
        ...process.env,
        ...(supervised ? { SHOAL_SUPERVISED: '1' } : {}),
        ...options.env,
      },
    });
    // Nothing is ever written to the lifeline; it only has to stay open while we and the daemon
    // live (closed after its exit, it no longer keeps our event loop running).
    child.stdin?.on('error', () => undefined);
    child.once('exit', () => child.stdin?.destroy());
    options.onSpawn?.(child);
    let tail = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (text: string) => {
      tail = (tail + text).slice(-STDERR_TAIL_BYTES);
    });
    return new Promise((resolve, reject) => {
      let daemon: DaemonProcess | null = null;
      let failure: { code: ErrorCode; message: string } | null = null;
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new StorageError('ERR_TIMEOUT', `${options.name} did not start within ${readyTimeoutMs} ms\n${tail}`));
      }, readyTimeoutMs);
      const lines = createInterface({ input: child.stdout! });
      lines.on('line', (line) => {
        const event = daemon === null ? parseEvent(line) : null;
        if (event?.['event'] === 'failed') {
          failure = { code: isErrorCode(event['code']) ? event['code'] : 'ERR_INTERNAL', message: String(event['message']) };
          return;
        }
        const ready = event?.['event'] === 'ready' ? event : null;
        if (ready === null) {
          options.onLine?.(line);
          return;
        }
        clearTimeout(timer);
        daemon = new DaemonProcess(options.name, child, ready);
        daemon.stderrTail = tail;
        child.stderr?.on('data', () => {
          if (daemon !== null) daemon.stderrTail = tail;
        });
        resolve(daemon);
      });
      // 'close', not 'exit': by then every stdout line (a failure report) has been read.
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        if (daemon !== null) return;
        const exit = signal === null ? `exit code ${code}` : `killed by ${signal}`;
        // The reason the daemon gave, under its own code: ERR_CONFIG stays a configuration error.
        reject(failure === null
          ? new StorageError('ERR_UNAVAILABLE', `${options.name} exited during start-up (${exit})\n${tail}`)
          : new StorageError(failure.code, `${options.name} could not start (${exit}): ${failure.message}\n${tail}`));
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** What the daemon logged lately (only with stderr: 'collect'). */
  get log(): string {
    return this.stderrTail;
  }

  waitExit(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.exited;
  }

  /** Sends `signal`; after `graceMs` without an exit, SIGKILL. Resolves when the process is gone. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.running) return this.exited;
    this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    const result = await this.exited;
    clearTimeout(timer);
    return result;
  }

  kill(signal: NodeJS.Signals): void {
    if (this.running) this.child.kill(signal);
  }
}

/** A daemon's machine-readable stdout line ({"event":"ready"|"failed",...}), or null. */
function parseEvent(line: string): Record<string, unknown> | null {
  if (!line.startsWith('{')) return null;
  try {
    const parsed = JSON.parse(line) as Record<string, unknown>;
    return parsed['event'] === 'ready' || parsed['event'] === 'failed' ? parsed : null;
  } catch {
    return null;
  }
}
