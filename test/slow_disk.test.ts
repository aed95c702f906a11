// The slow-disk helper behaves like one spinning disk: sequential transfers stream at its
// bandwidth, random reads cost a seek each, writes are paid for when synced, and data is intact.

import { randomBytes } from 'node:crypto';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { mountSlowDisk } from './helpers/slow_disk.ts';

const MiB = 1024 * 1024;

t.test('a slow disk charges seeks and bandwidth, and keeps every byte', { timeout: 60_000 }, async (t) => {
  const seekMs = 10;
  const bandwidthBytesPerSecond = 32 * MiB;
  const disk = await mountSlowDisk(t, { seekMs, bandwidthBytesPerSecond });

  // Sequential: 8 MiB written, then synced: the sync pays about 8 MiB / 32 MiB/s = 250 ms.
  const data = randomBytes(8 * MiB);
  const file = await open(join(disk.path, 'seq'), 'w');
  const writeStart = performance.now();
  for (let offset = 0; offset < data.length; offset += MiB) await file.write(data, offset, MiB, offset);
  const writtenMs = performance.now() - writeStart;
  const syncStart = performance.now();
  await file.datasync();
  const syncMs = performance.now() - syncStart;
  await file.close();
  t.ok(syncMs >= 240, `the sync paid for 8 MiB at 32 MiB/s: ${syncMs.toFixed(0)} ms (writes before it took ${writtenMs.toFixed(0)} ms)`);
  t.ok(syncMs < 2_500, `and not for seeks per page: ${syncMs.toFixed(0)} ms`);
  t.ok((await readFile(join(disk.backingDir, 'seq'))).equals(data), 'the backing file holds every byte');

  // Random reads of data the kernel has not cached (written beside the mount): a seek each.
  const cold = randomBytes(16 * MiB);
  await writeFile(join(disk.backingDir, 'cold'), cold);
  const reader = await open(join(disk.path, 'cold'), 'r');
  const reads = 16;
  const readStart = performance.now();
  for (let index = 0; index < reads; index += 1) {
    const position = ((index * 7) % reads) * MiB + 4096 * index;
    const target = Buffer.alloc(4096);
    await reader.read(target, 0, 4096, position);
    if (!target.equals(cold.subarray(position, position + 4096))) t.fail(`read at ${position} returned other bytes`);
  }
  const readMs = performance.now() - readStart;
  await reader.close();
  t.ok(readMs >= reads * seekMs * 0.9, `${reads} scattered reads paid a seek each: ${readMs.toFixed(0)} ms`);
});
