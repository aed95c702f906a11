// The life cycle of a FUSE file-system process that tests start (the power-cut disk, the slow
// disk): waiting for its one-line "ready" announcement, and for its exit.

import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

/** Resolves when the child prints a line containing "ready"; rejects if it exits or errs first, or after timeoutMs. */
export function waitReadyLine(child: ChildProcess, timeoutMs: number): Promise<void> {
  return new Promise((ready, reject) => {
    const timer = setTimeout(() => reject(new Error(`not ready within ${timeoutMs} ms`)), timeoutMs);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (!line.includes('"ready"')) return;
      clearTimeout(timer);
      ready();
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the FUSE process exited during start-up (code ${code}, signal ${signal})`));
    });
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/** True once `exited` settles; false if it has not after timeoutMs. */
export async function waitExit(exited: Promise<void>, timeoutMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<false>((done) => {
    timer = setTimeout(() => done(false), timeoutMs);
  });
  const result = await Promise.race([exited.then(() => true as const), timedOut]);
  clearTimeout(timer);
  return result;
}
