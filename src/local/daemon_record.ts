// What keeps one `shoal start` from tripping over the remains of another. The running supervisor
// holds an exclusive lock on DATA/start.lock (a second `shoal start` on the same folder is refused)
// and records its daemons in DATA/daemons.json, each by pid and by the start time the kernel gives
// the process (/proc/PID/stat), so that a pid reused by an unrelated process is never taken for
// ours. A supervisor that dies (SIGKILL, OOM killer) leaves its daemons stopping by themselves
// (their stdin pipe closed); the next `shoal start` finds them in the record, waits a few seconds
// for them to finish, and kills what is left, so that it never runs beside them.

import { readFile, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { StorageError } from '../errors.ts';
import { lockFile, syncDirectory, writeFileDurable, type FileLock } from '../util/fs.ts';
import type { Logger } from '../util/log.ts';

const RECORD_FILE = 'daemons.json';
const LOCK_FILE = 'start.lock';
/** A supervisor that was just killed may take a moment to be gone and let go of its lock. */
const SUPERVISOR_LOCK_WAIT_MS = 2_000;
/** Daemons whose supervisor died stop within their own deadline; this is how long we give them. */
export const LEFTOVER_WAIT_MS = 5_000;
/** After SIGKILL a process is gone at once, unless the kernel holds it in uninterruptible I/O. */
const KILLED_WAIT_MS = 2_000;
const POLL_MS = 100;

export interface DaemonEntry {
  readonly name: string;
  readonly pid: number;
  /** Field 22 of /proc/PID/stat: with the boot id, tells this process from a later one with its pid. */
  readonly startTicks: string;
}

interface RecordFile {
  readonly format: 1;
  readonly bootId: string;
  readonly supervisorPid: number;
  readonly daemons: DaemonEntry[];
}

/** Refuses a second `shoal start` on the same folder; the lock lasts as long as this process. */
export async function lockSupervisor(dataDir: string): Promise<FileLock> {
  const lock = await lockFile(join(dataDir, LOCK_FILE), { waitMs: SUPERVISOR_LOCK_WAIT_MS });
  if ('heldBy' in lock) {
    throw new StorageError(
      'ERR_DATA_DIR_LOCKED',
      `another shoal start (pid ${lock.heldBy}) runs the cluster in ${dataDir}; stop it first (Ctrl-C in its terminal, ` +
        `or kill ${lock.heldBy}), or give this one another --data folder`,
    );
  }
  return lock;
}

/** The supervisor's durable list of its daemons, rewritten whenever one starts. */
export class DaemonRecord {
  private readonly path: string;
  private readonly log: Logger;
  private readonly byName = new Map<string, DaemonEntry>();
  private writing: Promise<void> = Promise.resolve();

  constructor(dataDir: string, log: Logger) {
    this.path = join(dataDir, RECORD_FILE);
    this.log = log;
  }

  /** Records a daemon just spawned; writes are queued so the file always ends with the latest list. */
  add(name: string, pid: number): Promise<void> {
    this.writing = this.writing.then(async () => {
      const stat = await readProcStat(pid);
      // Already gone: nothing of it can be left over.
      if (stat === null) return;
      this.byName.set(name, { name, pid, startTicks: stat.startTicks });
      const record: RecordFile = { format: 1, bootId: await bootId(), supervisorPid: process.pid, daemons: [...this.byName.values()] };
      await writeFileDurable(this.path, `${JSON.stringify(record, null, 2)}\n`);
    }).catch((error: unknown) => {
      // Not fatal: the daemon still stops when we die (its stdin pipe); only the next start's
      // check for leftovers would miss it.
      this.log.error(`could not record ${name} (pid ${pid}) in ${this.path}`, { error });
    });
    return this.writing;
  }

  /** After a clean stop nothing is left over: the record goes. */
  async clear(): Promise<void> {
    await this.writing;
    try {
      await unlink(this.path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    await syncDirectory(dirname(this.path));
  }
}

/**
 * Finds daemons that a previous supervisor of this folder left running (it died without stopping
 * them), waits up to LEFTOVER_WAIT_MS for them to exit, then kills the rest, saying so on stderr.
 * Call with the supervisor lock held: then any recorded daemon still alive is a leftover.
 */
export async function stopLeftovers(dataDir: string, log: Logger): Promise<void> {
  const record = await readRecord(join(dataDir, RECORD_FILE), log);
  if (record === null || record.bootId !== (await bootId())) return;
  let alive = await aliveOf(record.daemons);
  if (alive.length === 0) return;
  log.warn(`found ${describe(alive)} left running by a shoal start (pid ${record.supervisorPid}) that ended without ` +
    `stopping them; waiting up to ${LEFTOVER_WAIT_MS} ms for them to stop`);
  alive = await waitGone(alive, LEFTOVER_WAIT_MS);
  if (alive.length === 0) {
    log.info('the previous daemons have stopped');
    return;
  }
  for (const entry of alive) {
    log.warn(`killing ${entry.name} (pid ${entry.pid}): still running after ${LEFTOVER_WAIT_MS} ms (a chunk server replays its journal at start)`);
    killIfAlive(entry.pid);
  }
  alive = await waitGone(alive, KILLED_WAIT_MS);
  if (alive.length > 0) {
    throw new StorageError('ERR_UNAVAILABLE', `${describe(alive)} of the previous shoal start did not exit even after SIGKILL ` +
      '(stuck in the kernel, e.g. on a hung disk); start again once they are gone');
  }
}

async function readRecord(path: string, log: Logger): Promise<RecordFile | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
  try {
    const record = JSON.parse(text) as RecordFile;
    if (record.format === 1 && Array.isArray(record.daemons)) return record;
  } catch {
    // reported below
  }
  // Written atomically, so this is damage from outside; chunk servers still refuse a locked directory.
  log.warn(`${path} is not a daemon record; not looking for daemons a previous shoal start left running`);
  return null;
}

async function aliveOf(entries: readonly DaemonEntry[]): Promise<DaemonEntry[]> {
  const alive: DaemonEntry[] = [];
  for (const entry of entries) {
    const stat = await readProcStat(entry.pid);
    if (stat !== null && stat.startTicks === entry.startTicks && !stat.exited) alive.push(entry);
  }
  return alive;
}

async function waitGone(entries: readonly DaemonEntry[], timeoutMs: number): Promise<DaemonEntry[]> {
  const deadlineMs = Date.now() + timeoutMs;
  let alive = await aliveOf(entries);
  while (alive.length > 0 && Date.now() < deadlineMs) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    alive = await aliveOf(alive);
  }
  return alive;
}

function killIfAlive(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}

function describe(entries: readonly DaemonEntry[]): string {
  return `${entries.length} daemon${entries.length === 1 ? '' : 's'} (${entries.map((e) => `${e.name} pid ${e.pid}`).join(', ')})`;
}

/**
 * A process's start time and whether it has exited, from /proc/PID/stat; null when there is no
 * such process. A zombie (exited, not yet reaped by whoever inherited it) counts as exited: it
 * holds no files, locks or ports any more.
 */
export async function readProcStat(pid: number): Promise<{ startTicks: string; exited: boolean } | null> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT' || (error as NodeJS.ErrnoException).code === 'ESRCH') return null;
    throw error;
  }
  // The command name (field 2) is in parentheses and may hold spaces or ')': fields start after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = fields[0] ?? '';
  const startTicks = fields[19];
  if (startTicks === undefined) throw new StorageError('ERR_INTERNAL', `unexpected /proc/${pid}/stat: ${text.slice(0, 200)}`);
  return { startTicks, exited: state === 'Z' || state === 'X' };
}

async function bootId(): Promise<string> {
  return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
}
