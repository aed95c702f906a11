// Drives `shoal start` (what `npm start` runs) as a real process on a folder of its own, with every
// port chosen by the kernel so that suites can run side by side. When the test ends, whatever it
// left is killed (the supervisor, then any daemon in its record that outlived it) and the folder
// removed; when it failed, the supervisor's output is printed first.

import type { Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { SHOAL_ENTRY } from '../../src/local/daemon_process.ts';
import { readProcStat, stopLeftovers, type DaemonEntry } from '../../src/local/daemon_record.ts';
import { createLogger } from '../../src/util/log.ts';

export interface ShoalStart {
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The supervisor's {"event":"ready","service":"cluster",...} line. */
  readonly ready: Record<string, unknown>;
  /** Every stdout line so far. */
  readonly output: string[];
  /** Its stderr (its own log and its daemons'), the last 512 KiB. */
  log(): string;
  nbdTcpUri(volume?: string): string;
  nbdUnixUri(volume?: string): string;
}

const READY_TIMEOUT_MS = 90_000;
const LOG_TAIL_BYTES = 512 * 1024;

/** A fresh folder for a cluster, removed (after its processes are gone) when `t` ends. */
export async function startFolder(t: Test): Promise<string> {
  const dataDir = await mkdtemp(join(tmpdir(), 'shoal-start-'));
  t.teardown(async () => {
    // The supervisors started on it are gone by now (their teardowns ran first); anything it
    // recorded that is still alive is stopped before the folder goes.
    await stopLeftovers(dataDir, createLogger('test-cleanup'));
    await rm(dataDir, { recursive: true, force: true });
  });
  return dataDir;
}

/**
 * Runs `shoal start` on `dataDir` and resolves at its ready line; rejects if it exits first. The
 * supervisor is SIGKILLed when `t` ends if it still runs.
 */
export async function startShoal(t: Test, dataDir: string, extraArgs: readonly string[] = []): Promise<ShoalStart> {
  const child = spawn(process.execPath, [SHOAL_ENTRY, 'start', '--data', dataDir, '--mds-listen', '127.0.0.1:0',
    '--cs-base-port', '0', '--nbd-listen', '127.0.0.1:0', '--nbd-metrics', '127.0.0.1:0', '--volume-size', '256M', ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  let log = '';
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  child.stderr.setEncoding('utf8').on('data', (text: string) => {
    log = (log + text).slice(-LOG_TAIL_BYTES);
  });
  t.teardown(async () => {
    if (!t.passing() || process.env['SHOAL_TEST_LOGS'] === '1') {
      process.stderr.write(`\n----- shoal start output -----\n${output.join('\n')}\n----- its log (last lines) -----\n${log.slice(-12_000)}\n`);
    }
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
    // Daemons that outlived it hold the other ends of these pipes: they must not keep the test alive.
    child.stdout.destroy();
    child.stderr.destroy();
  });
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`shoal start did not come up within ${READY_TIMEOUT_MS} ms:\n${output.join('\n')}`)), READY_TIMEOUT_MS);
    createInterface({ input: child.stdout }).on('line', (line) => {
      output.push(line);
      if (!line.startsWith('{"event":"ready","service":"cluster"')) return;
      clearTimeout(timer);
      resolve(JSON.parse(line) as Record<string, unknown>);
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`shoal start exited (code ${code}, signal ${signal}):\n${output.join('\n')}\n${log.slice(-8_000)}`));
    });
  });
  return {
    child,
    exited,
    ready,
    output,
    log: () => log,
    nbdTcpUri: (volume = 'demo') => `nbd://${String(ready['nbdTcp'])}/${volume}`,
    nbdUnixUri: (volume = 'demo') => `nbd+unix:///${volume}?socket=${String(ready['nbdSocket'])}`,
  };
}

/** The daemons the supervisor of `dataDir` has recorded (DATA/daemons.json). */
export async function recordedDaemons(dataDir: string): Promise<DaemonEntry[]> {
  const record = JSON.parse(await readFile(join(dataDir, 'daemons.json'), 'utf8')) as { daemons: DaemonEntry[] };
  return record.daemons;
}

/** Whether the process is still there (a zombie is not: it has let go of everything). */
export async function isAlive(entry: { pid: number; startTicks?: string }): Promise<boolean> {
  const stat = await readProcStat(entry.pid);
  return stat !== null && !stat.exited && (entry.startTicks === undefined || stat.startTicks === entry.startTicks);
}

/** Polls until none of `entries` is alive; resolves false if some still are after `timeoutMs`. */
export async function waitAllGone(entries: ReadonlyArray<{ pid: number; startTicks?: string }>, timeoutMs: number): Promise<boolean> {
  const deadlineMs = Date.now() + timeoutMs;
  for (;;) {
    const alive = await Promise.all(entries.map((entry) => isAlive(entry)));
    if (!alive.includes(true)) return true;
    if (Date.now() > deadlineMs) return false;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
