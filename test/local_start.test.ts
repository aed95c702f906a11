// `shoal start` (what `npm start` runs): a whole local cluster that prints how to reach its NBD
// export, stops every daemon on Ctrl-C (SIGINT), and finds the same data when started again.

import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { SHOAL_ENTRY } from '../src/local/daemon_process.ts';
import { run, runOk } from './helpers/run.ts';

interface Started {
  readonly exited: Promise<number | null>;
  readonly ready: Record<string, unknown>;
  readonly output: string[];
  readonly log: () => string;
  stop(): void;
}

function startLocal(dataDir: string, extraArgs: readonly string[] = []): Promise<Started> {
  const child = spawn(process.execPath, [SHOAL_ENTRY, 'start', '--data', dataDir, '--mds-listen', '127.0.0.1:0',
    '--cs-base-port', '0', '--nbd-listen', '127.0.0.1:0', '--nbd-metrics', '127.0.0.1:0', '--volume-size', '256M', ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  let log = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  child.stderr.setEncoding('utf8').on('data', (text: string) => {
    log = (log + text).slice(-256 * 1024);
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`shoal start did not come up:\n${output.join('\n')}`)), 60_000);
    createInterface({ input: child.stdout }).on('line', (line) => {
      output.push(line);
      if (!line.startsWith('{"event":"ready","service":"cluster"')) return;
      clearTimeout(timer);
      resolve({ exited, ready: JSON.parse(line) as Record<string, unknown>, output, log: () => log, stop: () => child.kill('SIGINT') });
    });
    void exited.then(() => reject(new Error(`shoal start exited:\n${output.join('\n')}`)));
  });
}

t.test('shoal start: a local cluster, stopped by Ctrl-C, restarted on the same data', async (t) => {
  t.setTimeout(180_000);
  const dataDir = await mkdtemp(join(tmpdir(), 'shoal-start-'));
  t.teardown(() => rm(dataDir, { recursive: true, force: true }));

  const first = await startLocal(dataDir);
  t.teardown(() => first.stop());
  const tcp = String(first.ready['nbdTcp']);
  t.ok(first.output.some((line) => line.includes(`nbdinfo nbd://${tcp}/demo`)), 'it prints how to reach the export');
  const { stdout } = await runOk('nbdinfo', ['--json', `nbd://${tcp}/demo`]);
  t.equal((JSON.parse(stdout) as { exports: Array<{ 'export-size': number }> }).exports[0]?.['export-size'], 256 * 1024 * 1024,
    'nbdinfo reaches the demo volume over TCP');
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6d 1M 64k', `nbd+unix:///demo?socket=${String(first.ready['nbdSocket'])}`]);
  const stoppingAtMs = Date.now();
  first.stop();
  t.equal(await first.exited, 0, 'Ctrl-C stops the cluster and it exits 0');
  const stopMs = Date.now() - stoppingAtMs;
  t.ok(stopMs < 8_000, `in order and promptly (${stopMs} ms)`);
  t.notMatch(first.log(), /took too long/, 'no daemon had to be cut short');
  t.match(first.log(), /cluster stopped/);
  const leftovers = await run('pgrep', ['-f', dataDir]);
  t.equal(leftovers.stdout.trim(), '', 'no daemon of it is left running');

  // Started again with the journals in a folder of their own (after a clean stop, each chunk
  // server makes its journal there afresh), each given two 64M segments of space.
  const journalDir = await mkdtemp(join(tmpdir(), 'shoal-start-journals-'));
  t.teardown(() => rm(journalDir, { recursive: true, force: true }));
  const second = await startLocal(dataDir, ['--journal-dir', journalDir, '--journal-size', '128M']);
  t.teardown(() => second.stop());
  const read = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x6d 1M 64k', `nbd://${String(second.ready['nbdTcp'])}/demo`]);
  t.notMatch(read.stdout, /verification failed/, 'started again, it finds the same data');
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x4a 2M 4k', `nbd://${String(second.ready['nbdTcp'])}/demo`]);
  for (const name of ['cs1', 'cs2', 'cs3']) {
    const files = await readdir(join(journalDir, name));
    t.ok(files.some((file) => /^\d{16}\.log$/.test(file)), `--journal-dir: ${name}'s journal is in ${name} there (${files.join(' ')})`);
    const identity = JSON.parse(await readFile(join(dataDir, name, 'cs.json'), 'utf8')) as { journalDir?: string };
    t.equal(identity.journalDir, join(journalDir, name), `and its cs.json says so, for the next start`);
  }
  second.stop();
  t.equal(await second.exited, 0);
  const third = await startLocal(dataDir);
  t.teardown(() => third.stop());
  const again = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x4a 2M 4k', `nbd://${String(third.ready['nbdTcp'])}/demo`]);
  t.notMatch(again.stdout, /verification failed/, 'a start without the flag finds the journals where they were, and the data');
  third.stop();
  t.equal(await third.exited, 0);
});
