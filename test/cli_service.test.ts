// The admin CLI taking chunk servers out of service and fencing a writer: the real `shoal` binary
// as a child process against a real MDS and four chunk servers (each its own process) holding
// chunks: drain --wait with its progress (and its bar on a terminal), rm refused until drained,
// a drain that cannot finish given up on with --timeout and cancelled with activate, volume fence,
// and the stat warning when chunks lose replicas. Split from cli.test.ts, which checks the rest of
// the CLI on a cluster of three.

import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SHOAL_ENTRY } from '../src/local/daemon_process.ts';
import type { ChunkServerInfo, ChunkServerList, VolumeInfo } from '../src/protocol/api.ts';
import { cliRunner, serverLine } from './helpers/cli.ts';
import { startCluster, type LocalCluster } from './helpers/cluster.ts';
import { run, type RunResult } from './helpers/run.ts';

const MiB = 1024 ** 2;

t.setTimeout(240_000);

const { shoal, cleanEnv: CLEAN_ENV } = await cliRunner(t);

/** `script` gives the CLI a terminal, to see the progress bar; absent on some systems. */
function hasScript(): boolean {
  try {
    execFileSync('script', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function shellQuote(word: string): string {
  return `'${word.replaceAll("'", "'\\''")}'`;
}

t.test('cs drain, rm, activate and volume fence on a cluster with data', async (t) => {
  const big = await startCluster(t, {
    nbd: false,
    chunkServers: 4,
    mdsArgs: ['--heartbeat-interval-ms', '200', '--heartbeat-timeout-ms', '1500', '--recovery-bytes-per-second', '0'],
  });
  await writeFile(join(big.dir, 'cluster.json'), JSON.stringify({ mdsUrl: big.mdsUrl, adminTokenFile: 'admin.token' }));
  const on = (...args: string[]): Promise<RunResult> => shoal([...args, '--data', big.dir], {}, 90_000);
  const okOn = async (t: Test, ...args: string[]): Promise<string> => {
    const result = await on(...args);
    t.equal(result.code, 0, `shoal ${args.join(' ')} exits 0`, { stderr: result.stderr });
    return result.stdout;
  };
  const serverById = async (c: LocalCluster, id: number): Promise<ChunkServerInfo> => {
    const found = (await c.admin.listChunkServers()).chunkServers.find((s) => s.id === id);
    if (found === undefined) throw new Error(`chunk server ${id} not listed`);
    return found;
  };

  // Chunks with replicas on three of the four servers each: allocation places them, no data needed.
  const CHUNKS = 8;
  await big.admin.createVolume({ name: 'v', sizeBytes: 64 * MiB, chunkSizeBytes: 4 * MiB });
  const { lease } = await big.internal.openVolume('v', { mode: 'write', holder: 'test' });
  if (lease === null) throw new Error('no write lease');
  for (let index = 0; index < CHUNKS; index += 1) await big.internal.allocateChunk('v', index, lease.leaseId);
  const servers = (await big.admin.listChunkServers()).chunkServers;
  const [fullest, second, third] = [...servers].sort((a, b) => b.mappedReplicaCount - a.mappedReplicaCount);
  if (fullest === undefined || second === undefined || third === undefined) throw new Error('four servers expected');
  t.ok(fullest.mappedReplicaCount > 0 && second.mappedReplicaCount > 0, 'the servers hold replicas');

  await t.test('drain --wait moves every replica off, keeping three of each chunk', async (t) => {
    const result = await on('cs', 'drain', String(fullest.id), '--wait', '--timeout', '60');
    t.equal(result.code, 0, 'exit 0', { stderr: result.stderr });
    const lines = result.stdout.trimEnd().split('\n');
    t.match(lines[0], new RegExp(`^chunk server ${fullest.id} \\(127\\.0\\.0\\.1:\\d+\\) is draining: the MDS moves its ` +
      `${fullest.mappedReplicaCount} replicas? to other servers in the background$`));
    t.match(lines.at(-1), new RegExp(`^chunk server ${fullest.id} .* is drained: ${fullest.mappedReplicaCount} replicas? moved off ` +
      `in \\d+:\\d\\d; remove it with: shoal cs rm ${fullest.id}$`));
    for (const line of lines.slice(1, -1)) {
      t.match(line, new RegExp(`^task \\d+ \\(drain of chunk server ${fullest.id}\\): running, \\d+ of \\d+ replicas moved, `), 'progress lines: the drain\'s task');
    }
    t.notMatch(result.stdout, /\r/, 'no bar re-drawn when stdout is not a terminal');

    const drained = await serverById(big, fullest.id);
    t.match(drained, { adminState: 'draining', mappedReplicaCount: 0 });
    const { chunks } = await big.internal.chunkMap('v', 0, 100);
    t.equal(chunks.length, CHUNKS);
    for (const chunk of chunks) {
      t.equal(new Set(chunk.replicas.map((r) => r.csId)).size, 3, `chunk ${chunk.chunkIndex}: three replicas`);
      t.notOk(chunk.replicas.some((r) => r.csId === fullest.id), `chunk ${chunk.chunkIndex}: none on the drained server`);
    }

    // Again with --json: only the server's final state, the API's ChunkServerInfo.
    const json = await on('cs', 'drain', String(fullest.id), '--wait', '--json');
    t.equal(json.code, 0);
    const body = JSON.parse(json.stdout) as ChunkServerInfo;
    const api = await serverById(big, fullest.id);
    t.same(Object.keys(body).sort(), Object.keys(api).sort(), '--json is the API body');
    t.match(body, { id: api.id, uuid: api.uuid, adminState: 'draining', mappedReplicaCount: 0, registeredAt: api.registeredAt });

    const table = await okOn(t, 'cs', 'list');
    t.match(serverLine(table, fullest.id), new RegExp(`^\\s*${fullest.id}\\s+127\\.0\\.0\\.1:\\d+\\s+online/draining\\s+yes\\s`));
    t.match(await okOn(t, 'cs', 'info', String(fullest.id)), /^admin state:\s+draining: 0 replicas left to move off$/m);
    const stat = await okOn(t, 'stat');
    t.match(stat, /^chunk servers:\s+4 online, 0 offline \(4 registered, 1 draining\)$/m);
    t.match(stat, /^recovery:\s+(idle|\d+ replica changes running, \d+ pending) \(\d+ succeeded, \d+ failed since the MDS started\)$/m);
    t.match(stat, /^copied:\s+\S+ \S+ between chunk servers since the MDS started; no rate limit$/m);
    t.ok((await big.admin.stat()).recovery.copiedBytes > 0, 'the drain copied replicas');
  });

  await t.test('cs rm: refused while the server holds replicas, then removes the drained one', async (t) => {
    const refused = await on('cs', 'rm', String(second.id));
    t.equal(refused.code, 1, 'a refusal by the MDS is a failed operation: exit 1');
    t.match(refused.stderr, new RegExp(`^shoal: ERR_CONFLICT: chunk server ${second.id} still holds \\d+ replicas: drain it first`));
    t.equal(refused.stdout, '');
    t.equal((await serverById(big, second.id)).adminState, 'active', 'unchanged');

    t.match(await okOn(t, 'cs', 'rm', String(fullest.id)),
      new RegExp(`^removed chunk server ${fullest.id} \\(127\\.0\\.0\\.1:\\d+\\): no replica will be placed on it again; it is still running`));
    const listed = JSON.parse(await okOn(t, 'cs', 'list', '--json')) as ChunkServerList;
    t.equal(listed.chunkServers.find((s) => s.id === fullest.id)?.adminState, 'removed');
    t.match(serverLine(await okOn(t, 'cs', 'list'), fullest.id), /\sonline\/removed\s/);
    const again = await on('cs', 'rm', String(fullest.id));
    t.equal(again.code, 1);
    t.match(again.stderr, /was removed already/);
  });

  await t.test('a drain that cannot finish: --timeout gives up (exit 1), activate cancels it', async (t) => {
    // Three active servers left for three replicas per chunk: nowhere to move the second's replicas.
    const started = await okOn(t, 'cs', 'drain', String(second.id));
    const taskId = Number(/\ntask (\d+): /.exec(started)?.[1]);
    t.match(started, new RegExp(`^chunk server ${second.id} .* is draining: the MDS moves its \\d+ replicas? to other servers in the background\n` +
      `task ${taskId}: follow it with: shoal task wait ${taskId}; pause it with: shoal task pause ${taskId}; cancel it with: shoal task cancel ${taskId}\n$`));
    t.match(serverLine(await okOn(t, 'cs', 'list'), second.id), /\sonline\/draining\s/);
    const again = await on('cs', 'drain', String(second.id), '--wait');
    t.equal(again.code, 1, 'a second drain of the server is refused');
    t.match(again.stderr, new RegExp(`^shoal: ERR_TASK_CONFLICT: chunk server ${second.id} is already being drained by task ${taskId} `));

    const timedOut = await on('task', 'wait', String(taskId), '--timeout', '2');
    t.equal(timedOut.code, 1);
    t.match(timedOut.stderr, new RegExp(`^shoal: ERR_TIMEOUT: task ${taskId} \\(drain of chunk server ${second.id}\\) is still running after 0:0\\d \\(--timeout\\), ` +
      '\\d+ of \\d+ done; the task goes on in the MDS'));
    t.equal((await serverById(big, second.id)).adminState, 'draining', 'still draining after the wait gave up');

    if (hasScript()) {
      // On a terminal: a bar re-drawn in place with \r, each line within the terminal's width.
      const command = [process.execPath, SHOAL_ENTRY, 'task', 'wait', String(taskId), '--timeout', '3', '--data', big.dir];
      const tty = await run('script', ['-qec', command.map(shellQuote).join(' '), '/dev/null'], { timeoutMs: 30_000, env: CLEAN_ENV });
      t.match(tty.stdout, new RegExp(`\r(\u001b\\[K)?task ${taskId} drain cs ${second.id} \\[\\.+\\] 0/\\d+  `), 'a progress bar');
      const bars = tty.stdout.split('\r').filter((part) => part.startsWith(`task ${taskId} drain`));
      t.ok(bars.length >= 2, 're-drawn every second');
      for (const bar of bars) t.ok(bar.split('\u001b[K')[0]!.length < 80, 'fits an 80-column terminal', { bar });
      t.match(tty.stdout, /ERR_TIMEOUT: .*the task goes on in the MDS/);
    }

    const activated = await okOn(t, 'cs', 'activate', String(second.id));
    t.match(activated, new RegExp(`^chunk server ${second.id} .* is active: it takes new replicas and keeps the \\d+ replicas? it holds\n$`));
    t.match(await big.admin.getTask(taskId), { state: 'cancelled', error: /made active \(shoal cs activate\)/ }, 'activate cancels the drain task');
    t.equal((await serverById(big, second.id)).adminState, 'active');
    const json = JSON.parse(await okOn(t, 'cs', 'activate', String(second.id), '--json')) as ChunkServerInfo;
    t.match(json, { id: second.id, adminState: 'active' });
    t.match(serverLine(await okOn(t, 'cs', 'list'), second.id), /\sonline\s+yes\s/);
  });

  await t.test('volume fence takes the lease: the epoch grows, the next open succeeds', async (t) => {
    const before = await big.admin.getVolume('v');
    t.equal(before.lease?.holder, 'test');
    const fenced = await okOn(t, 'volume', 'fence', 'v');
    t.match(fenced, new RegExp(`^fenced volume "v": took the write lease from test \\(held since .*; lease epoch ${before.epoch} -> ` +
      `${before.epoch + 1}\\); its writes are rejected from now on, and the next open for write succeeds\n$`));
    const after = JSON.parse(await okOn(t, 'volume', 'info', 'v', '--json')) as VolumeInfo;
    t.equal(after.epoch, before.epoch + 1, 'the epoch grew');
    t.equal(after.lease, null, 'nobody holds the lease');
    await t.rejects(big.internal.allocateChunk('v', CHUNKS, lease.leaseId), 'the fenced holder can no longer allocate');
    const reopened = await big.internal.openVolume('v', { mode: 'write', holder: 'other' });
    t.ok(reopened.lease !== null && reopened.lease.epoch > after.epoch, 'the next open for write succeeds');

    const json = JSON.parse(await okOn(t, 'volume', 'fence', 'v', '--json')) as VolumeInfo;
    t.same(json, await big.admin.getVolume('v'), '--json is the API body');
    t.equal(json.lease, null);
    t.match(await okOn(t, 'volume', 'fence', 'v'), /^volume "v" had no writer; fenced anyway \(lease epoch \d+ -> \d+\)/);
    const missing = await on('volume', 'fence', 'nope');
    t.equal(missing.code, 1);
    t.match(missing.stderr, /^shoal: ERR_NOT_FOUND: volume "nope" does not exist/);
  });

  await t.test('stat puts a warning first when chunks lose replicas', async (t) => {
    const victim = await big.chunkServerIndex(third.id);
    await big.chunkServers[victim]?.stop('SIGKILL');
    const deadline = Date.now() + 15_000;
    while ((await big.admin.stat()).chunks.byState.healthy === CHUNKS) {
      if (Date.now() > deadline) throw new Error('chunks still all healthy 15 s after a chunk server was killed');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const text = await okOn(t, 'stat');
    const [first, blank] = text.split('\n');
    t.match(first, new RegExp(`^WARNING: \\d+ of ${CHUNKS} chunks not healthy: .*degraded \\(fewer copies than normal\\)`));
    t.equal(blank, '', 'a blank line after the warning');
    // The removed server is out of the totals: 2 online and the killed one offline, of 4 registered.
    t.match(text, /^chunk servers:\s+2 online, 1 offline \(4 registered, 1 removed\)$/m);
  });
});
