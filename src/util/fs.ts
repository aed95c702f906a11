// File-system helpers shared by the daemons.

import { open } from 'node:fs/promises';

/** fsync a directory so that files created or removed in it survive a crash. */
export async function syncDirectory(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
