// The admin CLI as a test drives it: the real `shoal` binary as a child process, with no
// configuration from the test's own environment (SHOAL_DATA points at an empty folder), and the
// parsing helpers its tables need. Used by cli.test.ts and cli_service.test.ts.

import type { Test } from 'tap';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SHOAL_ENTRY } from '../../src/local/daemon_process.ts';
import { run, type RunResult } from './run.ts';

export interface CliRunner {
  /** The environment every call starts from: no MDS, no token, SHOAL_DATA an empty folder, no colour. */
  readonly cleanEnv: Record<string, string>;
  /** The folder SHOAL_DATA points at (removed when the test ends). */
  readonly emptyDir: string;
  /** Runs `shoal ARGS` with only what `args` and `env` say. */
  shoal(args: readonly string[], env?: Record<string, string>, timeoutMs?: number): Promise<RunResult>;
}

export async function cliRunner(t: Test): Promise<CliRunner> {
  const emptyDir = await mkdtemp(join(tmpdir(), 'shoal-cli-empty-'));
  t.teardown(() => rm(emptyDir, { recursive: true, force: true }));
  const cleanEnv = { SHOAL_MDS: '', SHOAL_TOKEN: '', SHOAL_DATA: emptyDir, NO_COLOR: '1' };
  return {
    cleanEnv,
    emptyDir,
    shoal: (args, env = {}, timeoutMs = 30_000) => run(process.execPath, [SHOAL_ENTRY, ...args], { timeoutMs, env: { ...cleanEnv, ...env } }),
  };
}

/** A chunk server's line in `cs list` or `stat`: its ID comes first, right-aligned. */
export function serverLine(text: string, id: number): string {
  return text.split('\n').find((line) => line.trimStart().split(/\s+/)[0] === String(id)) ?? '';
}
