// Long operations as durable tasks, on a real cluster of four chunk servers holding data: a drain
// started with `shoal cs drain --wait` goes on when the CLI is killed and when the MDS restarts,
// and `shoal task wait` follows it to its end; a second drain of the same server is refused naming
// the task; the same request with an idempotency key starts one task; pause, resume and cancel
// stop and restart the moving with nothing half-moved (every chunk keeps its three copies, the
// data reads back).

import t from 'tap';
import { spawn } from 'node:child_process';
import { SHOAL_ENTRY } from '../src/local/daemon_process.ts';
import type { TaskInfo } from '../src/protocol/api.ts';
import { cliRunner } from './helpers/cli.ts';
import { startCluster, type LocalCluster } from './helpers/cluster.ts';
import { runOk } from './helpers/run.ts';
import { eventually } from './helpers/eventually.ts';

const MiB = 1024 * 1024;
const CHUNK_BYTES = 16 * MiB;
const WRITTEN_BYTES = 96 * MiB;

/** Every chunk of the volume has exactly three members on distinct servers; returns the members per chunk. */
async function chunkMembers(cluster: LocalCluster): Promise<number[][]> {
  const { chunks } = await cluster.internal.chunkMap('data', 0, 100);
  return chunks.map((chunk) => chunk.replicas.map((replica) => replica.csId));
}

/** Nothing running or planned in recovery: every move in flight has finished. */
async function recoveryIdle(cluster: LocalCluster): Promise<void> {
  await eventually('recovery to be idle', 60_000, async () => {
    const { recovery } = await cluster.admin.stat();
    return recovery.running === 0 && recovery.pending === 0 ? true : null;
  });
}

t.test('a drain as a durable task: survives its CLI and the MDS, refuses a second, pauses, resumes, cancels cleanly', async (t) => {
  t.setTimeout(240_000);
  const cluster = await startCluster(t, {
    chunkServers: 4,
    // Slow copies, so that the drain is still going when the CLI is killed and the MDS restarted.
    mdsArgs: ['--heartbeat-interval-ms', '200', '--heartbeat-timeout-ms', '1500', '--recovery-bytes-per-second', String(6 * MiB)],
  });
  const cli = await cliRunner(t);
  const env = { SHOAL_MDS: cluster.mdsUrl, SHOAL_TOKEN: cluster.adminToken };
  const shoal = (...args: string[]) => cli.shoal(args, env, 90_000);

  await cluster.admin.createVolume({ name: 'data', sizeBytes: 128 * MiB, chunkSizeBytes: CHUNK_BYTES });
  const image = cluster.nbdUnixUri('data');
  await runOk('qemu-io', ['-f', 'raw', '-c', `write -P 0x5a 0 ${WRITTEN_BYTES}`, image], { timeoutMs: 60_000 });
  const servers = (await cluster.admin.listChunkServers()).chunkServers;
  const [fullest, second] = [...servers].sort((a, b) => b.mappedReplicaCount - a.mappedReplicaCount);
  if (fullest === undefined || second === undefined) throw new Error('four servers expected');
  t.ok(fullest.mappedReplicaCount >= 3, `chunk server ${fullest.id} holds ${fullest.mappedReplicaCount} replicas`);

  // Started by a CLI that follows it, then killed.
  const follower = spawn(process.execPath, [SHOAL_ENTRY, 'cs', 'drain', String(fullest.id), '--wait'], {
    env: { ...process.env, ...cli.cleanEnv, ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let followerOut = '';
  follower.stdout.setEncoding('utf8').on('data', (text: string) => {
    followerOut += text;
  });
  const followerExited = new Promise<number | null>((resolve) => follower.once('exit', (code) => resolve(code)));
  await eventually('the CLI to say the drain started', 20_000, async () => (followerOut.includes('is draining') ? true : null));
  follower.kill('SIGKILL');
  await followerExited;
  const started = await eventually('a running drain task', 10_000, async () =>
    (await cluster.admin.listTasks()).tasks.find((task) => task.target.chunkServerId === fullest.id && task.state === 'running') ?? null);
  t.match(started, { kind: 'drain', state: 'running', progress: { itemsTotal: fullest.mappedReplicaCount } }, `task ${started.id} runs`);

  const refused = await shoal('cs', 'drain', String(fullest.id));
  t.equal(refused.code, 1, 'a second drain of the same server is refused');
  t.match(refused.stderr, new RegExp(`ERR_TASK_CONFLICT: chunk server ${fullest.id} is already being drained by task ${started.id} `));
  t.match(refused.stderr, new RegExp(`shoal task wait ${started.id}`), 'naming the task and how to follow it');

  // The MDS restarts in the middle; the task is in its store and goes on.
  const before = await cluster.admin.getTask(started.id);
  t.ok(before.progress.itemsDone < before.progress.itemsTotal, `still going before the restart (${before.progress.itemsDone} of ${before.progress.itemsTotal})`);
  await cluster.restartMds();
  t.equal((await cluster.admin.getTask(started.id)).state, 'running', 'after the MDS restart the task is still running');
  const waited = await shoal('task', 'wait', String(started.id), '--timeout', '120');
  t.equal(waited.code, 0, `task wait follows it to its end: ${waited.stderr}`);
  t.match(waited.stdout, new RegExp(`task ${started.id} \\(drain of chunk server ${fullest.id}\\) done: ${fullest.mappedReplicaCount} replicas moved`));
  const done = await cluster.admin.getTask(started.id);
  t.match(done, { state: 'done', progress: { itemsDone: fullest.mappedReplicaCount, itemsTotal: fullest.mappedReplicaCount }, error: null });
  t.ok(done.finishedAt !== null, 'with its finish time');
  for (const members of await chunkMembers(cluster)) {
    t.equal(new Set(members).size, 3, 'each chunk keeps three copies on distinct servers');
    t.notOk(members.includes(fullest.id), 'none on the drained server');
  }

  // One request sent twice with a key starts one task.
  const body = { kind: 'drain' as const, chunkServerId: second.id, idempotencyKey: 'retire-second-1' };
  const reply1 = await fetch(`${cluster.mdsUrl}/v1/tasks`, {
    method: 'POST', headers: { authorization: `Bearer ${cluster.adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  const reply2 = await fetch(`${cluster.mdsUrl}/v1/tasks`, {
    method: 'POST', headers: { authorization: `Bearer ${cluster.adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  const [task1, task2] = [await reply1.json() as TaskInfo, await reply2.json() as TaskInfo];
  t.same([reply1.status, reply2.status], [201, 200], 'created, then the same task returned');
  t.equal(task2.id, task1.id, 'one task');
  t.equal((await cluster.admin.listTasks()).tasks.filter((task) => task.target.chunkServerId === second.id).length, 1);

  // Pause, resume, cancel.
  const paused = await shoal('task', 'pause', String(task1.id));
  t.equal(paused.code, 0, paused.stderr);
  t.match(paused.stdout, new RegExp(`task ${task1.id} \\(drain of chunk server ${second.id}\\) paused at \\d+ of \\d+`));
  t.equal((await cluster.admin.listChunkServers()).chunkServers.find((s) => s.id === second.id)?.adminState, 'active', 'paused: the server is active');
  await recoveryIdle(cluster);
  const heldWhilePaused = (await cluster.admin.listChunkServers()).chunkServers.find((s) => s.id === second.id)?.mappedReplicaCount;
  await new Promise((resolve) => setTimeout(resolve, 2_000));
  t.equal((await cluster.admin.listChunkServers()).chunkServers.find((s) => s.id === second.id)?.mappedReplicaCount, heldWhilePaused,
    'nothing moves while paused');
  const resumed = await shoal('task', 'resume', String(task1.id));
  t.match(resumed.stdout, /running again/);
  t.equal((await cluster.admin.getTask(task1.id)).state, 'running');
  const cancelled = await shoal('task', 'cancel', String(task1.id));
  t.equal(cancelled.code, 0, cancelled.stderr);
  t.match(cancelled.stdout, new RegExp(`task ${task1.id} .* cancelled with \\d+ of \\d+ done; chunk server ${second.id} is active again`));
  t.match(await cluster.admin.getTask(task1.id), { state: 'cancelled', error: 'cancelled by an admin' });
  const waitCancelled = await shoal('task', 'wait', String(task1.id));
  t.equal(waitCancelled.code, 1, 'waiting on a cancelled task exits 1');
  t.match(waitCancelled.stderr, new RegExp(`task ${task1.id} \\(drain of chunk server ${second.id}\\) cancelled: cancelled by an admin`));
  await recoveryIdle(cluster);
  for (const members of await chunkMembers(cluster)) t.equal(new Set(members).size, 3, 'after the cancel every chunk has its three copies: nothing half-moved');
  await runOk('qemu-io', ['-f', 'raw', '-c', `read -P 0x5a 0 ${WRITTEN_BYTES}`, image], { timeoutMs: 60_000 });
  t.pass('the data reads back');

  const listed = await shoal('task', 'list');
  t.match(listed.stdout, new RegExp(`^\\s*${started.id}\\s+drain\\s+cs ${fullest.id}\\s+done\\s`, 'm'), 'task list shows the done drain');
  t.match(listed.stdout, new RegExp(`^\\s*${task1.id}\\s+drain\\s+cs ${second.id}\\s+cancelled\\s`, 'm'), 'and the cancelled one');
  const missing = await shoal('task', 'show', '999');
  t.equal(missing.code, 1);
  t.match(missing.stderr, /ERR_NOT_FOUND: task 999 does not exist/);
});
