// fio's nbd engine at iodepth 32, random 4 KiB reads and writes with crc32c verification, for a
// bounded time against the real cluster: no verify error, no I/O error.

import t from 'tap';
import { startCluster } from './helpers/cluster.ts';
import { run } from './helpers/run.ts';

const MiB = 1024 * 1024;

t.test('fio randrw with verify=crc32c at iodepth 32', async (t) => {
  t.setTimeout(180_000);
  const cluster = await startCluster(t);
  await cluster.admin.createVolume({ name: 'fio', sizeBytes: 256 * MiB, chunkSizeBytes: 16 * MiB });
  const result = await run('fio', [
    '--name=verify', '--ioengine=nbd', `--uri=${cluster.nbdUnixUri('fio')}`,
    '--rw=randrw', '--bs=4k', '--iodepth=32', '--size=64M', '--offset=8M',
    '--time_based', '--runtime=15', '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0',
    '--output-format=json',
  ], { timeoutMs: 120_000 });
  t.equal(result.code, 0, `fio exits 0\n${result.stderr}`);
  const report = JSON.parse(result.stdout.slice(result.stdout.indexOf('{'))) as {
    jobs: Array<{ error: number; read: { io_bytes: number; total_ios: number }; write: { io_bytes: number; total_ios: number } }>;
  };
  const job = report.jobs[0];
  t.ok(job !== undefined, 'one job reported');
  t.equal(job?.error, 0, 'no I/O or verify error');
  t.ok((job?.write.total_ios ?? 0) > 100, `wrote ${job?.write.total_ios} blocks`);
  t.ok((job?.read.total_ios ?? 0) > 100, `read ${job?.read.total_ios} blocks, verified`);
  t.notMatch(result.stderr, /verify|bad magic|crc32c/i, 'no verify complaint on stderr');
});
