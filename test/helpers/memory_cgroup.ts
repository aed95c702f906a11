// Memory cgroups (v1) for tests: a child of this process's own memory cgroup with a hard limit,
// for a daemon to run in (DaemonOptions.cgroupProcs), and what the kernel says happened there:
// the peak usage, how often the limit was hit, and whether the OOM killer ran. Page cache of the
// files a daemon writes is charged to its cgroup too, as on a real host.

import { mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const MEMORY_ROOT = '/sys/fs/cgroup/memory';

export interface MemoryCgroup {
  readonly path: string;
  readonly procsFile: string;
  readonly limitBytes: number;
  stats(): Promise<MemoryCgroupStats>;
  /** Removes the cgroup (its processes must have exited). */
  remove(): Promise<void>;
}

export interface MemoryCgroupStats {
  readonly maxUsageBytes: number;
  /** Times usage hit the limit (the kernel then reclaimed page cache). */
  readonly failcnt: number;
  /** Processes the OOM killer killed in this cgroup. */
  readonly oomKills: number;
}

/** This process's memory cgroup directory, or null (no cgroup v1 memory controller, or not writable). */
export async function ownMemoryCgroup(): Promise<string | null> {
  try {
    const lines = (await readFile('/proc/self/cgroup', 'utf8')).split('\n');
    const line = lines.find((entry) => entry.split(':')[1]?.split(',').includes('memory'));
    if (line === undefined) return null;
    const path = join(MEMORY_ROOT, line.split(':')[2] ?? '/');
    await readFile(join(path, 'memory.limit_in_bytes'), 'utf8');
    return path;
  } catch {
    return null;
  }
}

export async function createMemoryCgroup(parent: string, name: string, limitBytes: number): Promise<MemoryCgroup> {
  const path = join(parent, name);
  await mkdir(path, { recursive: true });
  await writeFile(join(path, 'memory.limit_in_bytes'), String(limitBytes));
  // Swap would hide a daemon that outgrew its budget: none, where the kernel accounts it.
  await writeFile(join(path, 'memory.swappiness'), '0').catch(() => undefined);
  const number = async (file: string): Promise<number> => Number((await readFile(join(path, file), 'utf8')).trim());
  return {
    path,
    procsFile: join(path, 'cgroup.procs'),
    limitBytes,
    stats: async () => {
      const oomControl = await readFile(join(path, 'memory.oom_control'), 'utf8');
      return {
        maxUsageBytes: await number('memory.max_usage_in_bytes'),
        failcnt: await number('memory.failcnt'),
        oomKills: Number(/^oom_kill (\d+)/m.exec(oomControl)?.[1] ?? 0),
      };
    },
    remove: async () => {
      // The kernel refuses while charged pages are being moved out: a few tries.
      for (let attempt = 0; ; attempt += 1) {
        try {
          await rmdir(path);
          return;
        } catch (error) {
          if (attempt >= 20) throw error;
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      }
    },
  };
}

/** VmHWM of a process: the peak of its resident set, from /proc. */
export async function peakResidentBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const match = /^VmHWM:\s+(\d+) kB/m.exec(status);
  if (match === null) throw new Error(`no VmHWM in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}
