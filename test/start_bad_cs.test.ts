// One broken disk does not take `shoal start` down: chunk servers whose cs.json is garbage or
// empty (what a power cut left of it before it was written durably) are named with their data
// directory and the reason, the others serve, and the export works. A chunk server that keeps
// dying is left stopped, with an error, while the cluster runs on. Without an MDS there is no
// cluster: that stops everything, with the reason.

import t from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { SHOAL_ENTRY } from '../src/local/daemon_process.ts';
import { run, runOk } from './helpers/run.ts';
import { isAlive, recordedDaemons, startFolder, startShoal, waitAllGone } from './helpers/shoal_start.ts';

const MiB = 1024 * 1024;
const FOUR_SERVERS = ['--chunk-servers', '4'];

t.test('chunk servers with a damaged cs.json are reported; the cluster runs on the others', async (t) => {
  t.setTimeout(240_000);
  const dataDir = await startFolder(t);
  const first = await startShoal(t, dataDir, FOUR_SERVERS);
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 0 4M', '-c', 'flush', first.nbdUnixUri()]);
  first.child.kill('SIGINT');
  t.equal((await first.exited).code, 0, 'the first run stops cleanly');

  await writeFile(join(dataDir, 'cs1', 'cs.json'), '{"format":1,"uu\u0000\u0007garbage');
  await writeFile(join(dataDir, 'cs2', 'cs.json'), '');
  const second = await startShoal(t, dataDir, FOUR_SERVERS);
  t.same(second.ready['failedChunkServers'], ['cs1', 'cs2'], 'the ready line names the servers that could not start');
  t.equal(second.ready['chunkServers'], 2, 'and counts the two that run');
  const csDir = (index: number): string => join(dataDir, `cs${index}`).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  t.match(second.log(), new RegExp(`chunk server cs1 \\(data directory ${csDir(1)}\\) could not start: ERR_CONFIG: .*` +
    `${csDir(1)}/cs\\.json is not valid JSON; restore it from a backup, or write .*shoal cs list`), 'cs1: which, where, why and what to do');
  t.match(second.log(), new RegExp(`chunk server cs2 \\(data directory ${csDir(2)}\\) could not start: ERR_CONFIG: .*` +
    `${csDir(2)}/cs\\.json is empty`), 'cs2 likewise');
  t.match(second.log(), /The cluster runs on without it/);
  t.ok(second.output.some((line) => /WARNING: chunk servers cs1, cs2 could not start/.test(line)), 'the banner warns too');

  const { stdout } = await runOk('nbdinfo', ['--json', second.nbdTcpUri()]);
  t.equal((JSON.parse(stdout) as { exports: Array<{ 'export-size': number }> }).exports[0]?.['export-size'], 256 * MiB, 'nbdinfo reaches the export');
  // A chunk not written before gets its replicas on the two servers that run.
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x21 200M 1M', '-c', 'flush', second.nbdUnixUri()]);
  const read = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x21 200M 1M', '-c', 'read -P 0x77 0 4M', second.nbdTcpUri()]);
  t.notMatch(read.stdout, /verification failed/, 'new data is written and read back, old data is read');

  // A chunk server that keeps dying: restarted a few times, then left stopped; the cluster stays.
  let killed = 0;
  for (let round = 0; round < 10; round += 1) {
    const cs3 = (await recordedDaemons(dataDir)).find((d) => d.name === 'cs3');
    if (cs3 === undefined || !(await isAlive(cs3))) break;
    process.kill(cs3.pid, 'SIGKILL');
    killed += 1;
    t.ok(await waitAllGone([cs3], 5_000), `cs3 (pid ${cs3.pid}) killed`);
    // The supervisor restarts it after a second; wait for the new one, or for it to give up.
    const deadlineMs = Date.now() + 20_000;
    while (Date.now() < deadlineMs && !/cs3 exited .* times within a minute: left stopped/.test(second.log())) {
      const next = (await recordedDaemons(dataDir)).find((d) => d.name === 'cs3');
      if (next !== undefined && next.pid !== cs3.pid && (await isAlive(next))) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    if (/left stopped/.test(second.log())) break;
  }
  t.match(second.log(), /chunk server cs3 \(data directory .*cs3\) .*SIGKILL.*, 6 times within a minute: left stopped/,
    `after ${killed} deaths in a minute cs3 is left stopped, with an error naming it`);
  t.equal(second.child.exitCode, null, 'the cluster still runs');
  // Only cs0 runs now. The chunk at 200M was written while cs0 and cs3 were the servers running,
  // so cs0 holds it; the chunk at 0 may have had all three replicas on cs1..cs3 (placement is
  // random), and a read of it waits for one of them to come back, so nbdinfo must not probe it.
  await runOk('nbdinfo', ['--json', '--no-content', second.nbdTcpUri()]);
  const stillRead = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x21 200M 1M', second.nbdTcpUri()]);
  t.notMatch(stillRead.stdout, /verification failed/, 'and its export still answers, with the data on the server that runs');
  second.child.kill('SIGINT');
  t.equal((await second.exited).code, 0, 'Ctrl-C stops it cleanly');
});

t.test('an MDS that cannot start stops everything, saying why', async (t) => {
  t.setTimeout(120_000);
  const dataDir = await startFolder(t);
  // Its port is taken.
  const squatter = createServer();
  await new Promise<void>((resolve) => squatter.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => squatter.close(() => resolve())));
  const port = (squatter.address() as AddressInfo).port;
  const result = await run(process.execPath, [SHOAL_ENTRY, 'start', '--data', dataDir, '--mds-listen', `127.0.0.1:${port}`,
    '--cs-base-port', '0', '--nbd-listen', '127.0.0.1:0', '--nbd-metrics', '127.0.0.1:0'], { timeoutMs: 60_000 });
  t.not(result.code, 0, `shoal start exits with an error (code ${result.code})`);
  t.match(result.stderr, new RegExp(`shoal: \\S+: the MDS could not start, so the cluster cannot run: .*EADDRINUSE.*127\\.0\\.0\\.1:${port}`),
    'naming the MDS and the reason');
  await t.rejects(readFile(join(dataDir, 'daemons.json')), { code: 'ENOENT' }, 'it recorded no daemon left running');
});
