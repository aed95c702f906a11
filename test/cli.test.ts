// The admin CLI end to end: the real `shoal` binary as a child process against a real MDS and three
// chunk servers (each its own process, on port 0). Checks what admins and scripts rely on: human
// output, --json bodies equal to the API's, exit status 2 with the problem and the usage line for
// bad usage, 1 with the MDS's code and message when the operation fails, and how the CLI finds
// the MDS (flags, environment, cluster.json). Taking servers out of service (drain, rm) and
// fencing a writer run on a second cluster of four chunk servers, with data to move.

import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SHOAL_ENTRY } from '../src/local/daemon_process.ts';
import type { ChunkServerInfo, ChunkServerList, ClusterStat, VolumeInfo, VolumeList } from '../src/protocol/api.ts';
import { startCluster, type LocalCluster } from './helpers/cluster.ts';
import { run, type RunResult } from './helpers/run.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

t.setTimeout(240_000);

const cluster = await startCluster(t, { nbd: false });
// Relative on purpose: the token file is found relative to the cluster folder, not the caller.
await writeFile(join(cluster.dir, 'cluster.json'), JSON.stringify({ mdsUrl: cluster.mdsUrl, adminTokenFile: 'admin.token' }));
const emptyDir = await mkdtemp(join(tmpdir(), 'shoal-cli-empty-'));
t.teardown(() => rm(emptyDir, { recursive: true, force: true }));

const CLEAN_ENV = { SHOAL_MDS: '', SHOAL_TOKEN: '', SHOAL_DATA: emptyDir, NO_COLOR: '1' };

/** The CLI with no configuration from the test's own environment: only what `args` and `env` say. */
function shoal(args: readonly string[], env: Record<string, string> = {}, timeoutMs = 30_000): Promise<RunResult> {
  return run(process.execPath, [SHOAL_ENTRY, ...args], { timeoutMs, env: { ...CLEAN_ENV, ...env } });
}

/** The CLI pointed at the test cluster through its cluster.json, as after `shoal start`. */
function cli(...args: string[]): Promise<RunResult> {
  return shoal([...args, '--data', cluster.dir]);
}

async function ok(t: Test, ...args: string[]): Promise<string> {
  const result = await cli(...args);
  t.equal(result.code, 0, `shoal ${args.join(' ')} exits 0`, { stderr: result.stderr });
  return result.stdout;
}

async function okJson<T>(t: Test, ...args: string[]): Promise<T> {
  return JSON.parse(await ok(t, ...args, '--json')) as T;
}

function lineOf(text: string, first: string): string {
  return text.split('\n').find((line) => line.split(/\s+/)[0] === first) ?? '';
}

/** A chunk server's line in `cs list` or `stat`: its ID comes first, right-aligned. */
function serverLine(text: string, id: number): string {
  return text.split('\n').find((line) => line.trimStart().split(/\s+/)[0] === String(id)) ?? '';
}

t.test('bad usage exits 2, naming the problem and showing the usage line', async (t) => {
  const cases: Array<[args: string[], problem: RegExp, usage: RegExp]> = [
    [['volume', 'create', 'web', '--size', 'ten'], /--size: cannot parse size "ten"/, /usage: shoal volume create NAME --size SIZE/],
    [['volume', 'create', 'bad name', '--size', '1G'], /invalid volume name "bad name"/, /usage: shoal volume create/],
    [['volume', 'create', 'web', '--size', '1G', '--colour'], /unknown flag --colour/, /usage: shoal volume create/],
    [['volume', 'create', 'web'], /missing --size/, /usage: shoal volume create/],
    [['volume', 'create', 'web', '--size', '1G', '--replicas', '2:3'], /--replicas must be N:M .* got "2:3"/, /usage: shoal volume create/],
    [['volume', 'create', 'web', '--size', '1G', '--chunk-size', '3M'], /--chunk-size must be a power of two/, /usage: shoal volume create/],
    [['volume', 'resize', 'web', '--size', '0'], /--size must be from 1 byte/, /usage: shoal volume resize NAME --size/],
    [['volume', 'info'], /missing NAME/, /usage: shoal volume info NAME/],
    [['volume', 'list', 'extra'], /unexpected argument "extra"/, /usage: shoal volume list/],
    [['volume', 'list', '--token', 'x', '--token-file', 'y'], /either --token or --token-file/, /usage: shoal volume list/],
    [['volume', 'grow', 'web'], /unknown volume command "grow"/, /usage: shoal volume list\n\s+shoal volume info NAME/],
    [['volume'], /missing volume command/, /shoal volume create NAME/],
    [['volume', 'fence'], /missing NAME/, /usage: shoal volume fence NAME/],
    [['cs', 'drain', 'web'], /chunk server ID must be a number .* got "web"/, /usage: shoal cs drain ID \[--wait\] \[--timeout SECONDS\]/],
    [['cs', 'drain', '1', '--timeout', '5'], /--timeout bounds --wait/, /usage: shoal cs drain/],
    [['cs', 'drain', '1', '--wait', '--timeout', 'soon'], /--timeout must be a number of seconds greater than 0, got "soon"/, /usage: shoal cs drain/],
    [['cs', 'rm'], /missing ID/, /usage: shoal cs rm ID/],
    [['cs', 'activate', '1.5'], /chunk server ID must be a number .* got "1\.5"/, /usage: shoal cs activate ID/],
    [['frobnicate'], /unknown command "frobnicate"/, /usage: shoal COMMAND/],
  ];
  const results = await Promise.all(cases.map(([args]) => cli(...args)));
  for (const [index, [args, problem, usage]] of cases.entries()) {
    const result = results[index]!;
    t.equal(result.code, 2, `shoal ${args.join(' ')}: exit 2`);
    t.match(result.stderr, /^shoal: ERR_INVALID_ARGUMENT: /, 'error code first');
    t.match(result.stderr, problem, 'names the problem');
    t.match(result.stderr, usage, 'shows the usage');
    t.equal(result.stdout, '', 'prints nothing on stdout');
  }
});

t.test('with no MDS configured: ERR_CONFIG, exit 2, and every way to configure one', async (t) => {
  const result = await shoal(['volume', 'list']);
  t.equal(result.code, 2);
  t.match(result.stderr, /^shoal: ERR_CONFIG: no MDS URL configured/);
  t.match(result.stderr, new RegExp(`no ${join(emptyDir, 'cluster.json')}`));
  for (const way of ['--mds URL', '--token-file FILE', 'SHOAL_MDS=URL', 'SHOAL_TOKEN=TOKEN', '--data DIR', 'SHOAL_DATA=DIR']) {
    t.ok(result.stderr.includes(way), `names ${way}`);
  }
  const tokenless = await shoal(['volume', 'list', '--mds', cluster.mdsUrl]);
  t.equal(tokenless.code, 2);
  t.match(tokenless.stderr, /ERR_CONFIG: no admin token configured/);
});

t.test('help and version need no cluster', async (t) => {
  const overview = await shoal(['--help']);
  t.equal(overview.code, 0);
  for (const words of ['volume create', 'volume resize', 'volume fence', 'cs list', 'cs drain', 'cs activate', 'cs rm', 'stat', '--json', '--token-file FILE']) {
    t.ok(overview.stdout.includes(words), `overview names ${words}`);
  }
  t.same(await shoal(['help']), overview, 'shoal help = shoal --help');
  const create = await shoal(['volume', 'create', '--help']);
  t.equal(create.code, 0);
  t.match(create.stdout, /^usage: shoal volume create NAME --size SIZE \[--chunk-size SIZE\] \[--replicas N:M\]\n/);
  t.same(await shoal(['help', 'volume', 'create']), create, 'shoal help volume create = shoal volume create --help');
  const drain = await shoal(['cs', 'drain', '--help']);
  t.match(drain.stdout, /^usage: shoal cs drain ID \[--wait\] \[--timeout SECONDS\]\n/);
  t.match(drain.stdout, /goes on if this command stops waiting, is interrupted or loses its connection/, 'the drain outlives the command');
  t.match((await shoal(['cs', 'rm', '--help'])).stdout, /Drain it first: shoal cs drain ID --wait/);
  t.match((await shoal(['volume', 'fence', '--help'])).stdout, /writes from the old holder are\s+rejected/);
  const group = await shoal(['volume', '--help']);
  t.equal(group.code, 0);
  t.match(group.stdout, /shoal volume delete NAME \[--force\]/);
  const manifest = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  const version = await shoal(['--version']);
  t.equal(version.code, 0);
  t.equal(version.stdout, `shoal ${manifest.version}\n`);
});

t.test('volume create, list, info, resize, delete: text and --json', async (t) => {
  t.equal(await ok(t, 'volume', 'create', 'web', '--size', '10G'), 'created volume "web": 10.0 GiB, chunk size 64.0 MiB, replicas 3:2\n');
  const db = await okJson<VolumeInfo>(t, 'volume', 'create', 'db', '--size', '500M', '--chunk-size', '16M', '--replicas', '2:1');
  t.match(db, { name: 'db', sizeBytes: 500 * MiB, chunkSizeBytes: 16 * MiB, replicas: { normal: 2, min: 1 }, lease: null });

  const exists = await cli('volume', 'create', 'web', '--size', '1G');
  t.equal(exists.code, 1, 'an existing name is a failed operation, not bad usage');
  t.match(exists.stderr, /^shoal: ERR_VOLUME_EXISTS: volume "web" already exists/);

  const table = await ok(t, 'volume', 'list');
  const [header] = table.split('\n');
  t.match(header, /^NAME\s+SIZE\s+ALLOCATED\s+USE%\s+CHUNK\s+REPLICAS\s+CREATED\s+WRITER$/);
  t.match(lineOf(table, 'web'), /^web\s+10\.0 GiB\s+0 B\s+0\.0%\s+64\.0 MiB\s+3:2\s+\S+ \S+\s+-$/);
  t.match(lineOf(table, 'db'), /^db\s+500 MiB\s+0 B\s+0\.0%\s+16\.0 MiB\s+2:1 /);
  t.equal(header!.indexOf('SIZE') + 'SIZE'.length, lineOf(table, 'web').indexOf('GiB') + 'GiB'.length, 'sizes right-aligned under SIZE');
  t.same(await okJson<VolumeList>(t, 'volume', 'list'), await cluster.admin.listVolumes(), '--json is the API body');

  const info = await ok(t, 'volume', 'info', 'web');
  t.match(info, /^name:\s+web$/m);
  t.match(info, /^size:\s+10\.0 GiB \(10737418240 bytes\)$/m);
  t.match(info, /^allocated:\s+0 of 160 chunks/m);
  t.match(info, /^writer:\s+none$/m);
  t.same(await okJson<VolumeInfo>(t, 'volume', 'info', 'web'), await cluster.admin.getVolume('web'));

  t.equal(await ok(t, 'volume', 'resize', 'web', '--size', '20G'), 'resized volume "web": 10.0 GiB -> 20.0 GiB\n');
  t.equal((await okJson<VolumeInfo>(t, 'volume', 'resize', 'web', '--size', '+4G')).sizeBytes, 24 * GiB, '+SIZE grows by SIZE');
  const shrink = await cli('volume', 'resize', 'web', '--size', '1G');
  t.equal(shrink.code, 1, 'shrink is refused by the MDS: a failed operation');
  t.match(shrink.stderr, /^shoal: ERR_SHRINK_REFUSED: volume "web" is 24.0 GiB \(25769803776 bytes\); shrinking it to .*: volumes only grow/);
  t.equal((await cluster.admin.getVolume('web')).sizeBytes, 24 * GiB, 'size unchanged after the refusal');

  for (const args of [['volume', 'info', 'nope'], ['volume', 'resize', 'nope', '--size', '1G'], ['volume', 'delete', 'nope']]) {
    const missing = await cli(...args);
    t.equal(missing.code, 1, `${args.join(' ')}: exit 1`);
    t.match(missing.stderr, /^shoal: ERR_NOT_FOUND: volume "nope" does not exist/);
  }

  t.equal(await ok(t, 'volume', 'delete', 'db'), 'deleted volume "db": 500 MiB, chunk size 16.0 MiB, replicas 2:1, 0 chunks allocated\n');
  await ok(t, 'volume', 'create', 'tmp', '--size', '1G');
  t.same(await okJson(t, 'volume', 'delete', 'tmp'), { ok: true });
  t.same((await cluster.admin.listVolumes()).volumes.map((v) => v.name), ['web']);
});

t.test('a volume open for write: shown with its writer, deleted only with --force', async (t) => {
  await ok(t, 'volume', 'create', 'busy', '--size', '1G');
  await cluster.internal.openVolume('busy', { mode: 'write', holder: 'nbd@host7' });
  t.match(lineOf(await ok(t, 'volume', 'list'), 'busy'), /\s+nbd@host7$/);
  t.match(await ok(t, 'volume', 'info', 'busy'), /^writer:\s+nbd@host7 since .* \(lease epoch 1\)$/m);
  const refused = await cli('volume', 'delete', 'busy');
  t.equal(refused.code, 1);
  t.match(refused.stderr, /^shoal: ERR_VOLUME_LEASED: volume "busy" is open for write by nbd@host7/);
  t.match(await ok(t, 'volume', 'delete', 'busy', '--force'), /^deleted volume "busy": .*; its writer nbd@host7 is fenced\n$/);
});

t.test('finds the MDS from flags and from the environment', async (t) => {
  const tokenFile = join(cluster.dir, 'admin.token');
  const viaFlags = await shoal(['--mds', cluster.mdsUrl, '--token-file', tokenFile, 'volume', 'list']);
  t.equal(viaFlags.code, 0, 'global flags before the command');
  t.match(viaFlags.stdout, /^web\s/m);
  const viaEnv = await shoal(['volume', 'list'], { SHOAL_MDS: cluster.mdsUrl, SHOAL_TOKEN: cluster.adminToken });
  t.equal(viaEnv.stdout, viaFlags.stdout);
  const viaDataEnv = await shoal(['volume', 'list'], { SHOAL_DATA: cluster.dir });
  t.equal(viaDataEnv.stdout, viaFlags.stdout);
  const wrongToken = await shoal(['volume', 'list', '--mds', cluster.mdsUrl, '--token', 'f'.repeat(64)]);
  t.equal(wrongToken.code, 1);
  t.match(wrongToken.stderr, /^shoal: ERR_UNAUTHORIZED: /);
  const unreachable = await shoal(['stat', '--mds', 'http://127.0.0.1:1', '--token', cluster.adminToken]);
  t.equal(unreachable.code, 1);
  t.match(unreachable.stderr, /^shoal: ERR_UNAVAILABLE: cannot reach the MDS at http:\/\/127\.0\.0\.1:1/);
});

t.test('cs list: the three chunk servers, online', async (t) => {
  const table = await ok(t, 'cs', 'list');
  const lines = table.trimEnd().split('\n');
  t.match(lines[0], /^ID\s+ADDRESS\s+STATE\s+HEALTHY\s+TIER\s+DOMAIN\s+CAPACITY\s+USED\s+FREE\s+USE%\s+REPLICAS\s+MAPPED$/);
  t.equal(lines.length, 4, 'header and three servers');
  for (const line of lines.slice(1)) t.match(line, /^\s*\d+\s+127\.0\.0\.1:\d+\s+online\s+yes\s+/);
  const body = await okJson<ChunkServerList>(t, 'cs', 'list');
  t.equal(body.chunkServers.length, 3);
  t.ok(body.chunkServers.every((cs) => cs.state === 'online'));
  const first = body.chunkServers[0]!;
  t.match(await ok(t, 'cs', 'info', first.uuid), new RegExp(`^id:\\s+${first.id}$`, 'm'));
  const unknown = await cli('cs', 'info', '999');
  t.equal(unknown.code, 1);
  t.match(unknown.stderr, /ERR_NOT_FOUND: no chunk server with id or uuid "999"/);
});

t.test('stat: totals, then space per server', async (t) => {
  const body = await okJson<ClusterStat>(t, 'stat');
  t.match(body, { chunkServers: { total: 3, online: 3, offline: 0 }, volumes: { count: 1, sizeBytes: 24 * GiB } });
  t.equal(body.servers.length, 3);
  const text = await ok(t, 'stat');
  t.match(text, /^chunk servers:\s+3 online, 0 offline \(3 registered\)$/m);
  t.match(text, /^volumes:\s+1, 24\.0 GiB provisioned$/m);
  t.match(text, /^chunks:\s+0: 0 healthy, 0 degraded, 0 endangered, 0 unavailable$/m);
  t.notMatch(text, /WARNING/, 'no warning while every chunk is healthy');
  t.match(text, /^recovery:\s+idle \(\d+ succeeded, \d+ failed since the MDS started\)$/m);
  t.match(text, /^copied:\s+\d+(\.\d)? \S+ between chunk servers since the MDS started; rate limit \d+(\.\d)? \S+\/s$/m);
  t.match(text, /^space:\s+\S+ \S+ capacity, \S+ \S+ used \(\d+\.\d%\), \S+ \S+ free$/m);
  t.match(text, /\n\nID\s+ADDRESS\s+STATE\s+CAPACITY\s+USED\s+FREE\s+USE%\s+REPLICAS\s+MAPPED\n/);
  t.equal(text.split('\n').filter((line) => /^\s*\d+\s+127\.0\.0\.1:\d+\s+online\s/.test(line)).length, 3);
});

// ---- taking chunk servers out of service, fencing a writer: a cluster of four, with chunks ---------

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
    for (const line of lines.slice(1, -1)) t.match(line, new RegExp(`^chunk server ${fullest.id}: \\d+ of \\d+ replicas? left, `), 'progress lines');
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
    t.match(started, new RegExp(`^chunk server ${second.id} .* is draining: the MDS moves its \\d+ replicas? to other servers in the background\n` +
      `follow it with: shoal cs drain ${second.id} --wait \\(or shoal cs info ${second.id}\\); cancel it with: shoal cs activate ${second.id}\n$`));
    t.match(serverLine(await okOn(t, 'cs', 'list'), second.id), /\sonline\/draining\s/);

    const timedOut = await on('cs', 'drain', String(second.id), '--wait', '--timeout', '2');
    t.equal(timedOut.code, 1);
    t.match(timedOut.stderr, new RegExp(`^shoal: ERR_TIMEOUT: chunk server ${second.id} .* still holds \\d+ of \\d+ replicas after 0:0\\d \\(--timeout\\).*; ` +
      'the drain goes on in the MDS'));
    t.equal((await serverById(big, second.id)).adminState, 'draining', 'still draining after the wait gave up');

    if (hasScript()) {
      // On a terminal: a bar re-drawn in place with \r, each line within the terminal's width.
      const command = [process.execPath, SHOAL_ENTRY, 'cs', 'drain', String(second.id), '--wait', '--timeout', '3', '--data', big.dir];
      const tty = await run('script', ['-qec', command.map(shellQuote).join(' '), '/dev/null'], { timeoutMs: 30_000, env: CLEAN_ENV });
      t.match(tty.stdout, new RegExp(`\r(\u001b\\[K)?draining cs ${second.id} \\[\\.+\\] 0/\\d+ moved  `), 'a progress bar');
      const bars = tty.stdout.split('\r').filter((part) => part.startsWith('draining cs'));
      t.ok(bars.length >= 2, 're-drawn every second');
      for (const bar of bars) t.ok(bar.split('\u001b[K')[0]!.length < 80, 'fits an 80-column terminal', { bar });
      t.match(tty.stdout, /ERR_TIMEOUT: .*the drain goes on in the MDS/);
    }

    const activated = await okOn(t, 'cs', 'activate', String(second.id));
    t.match(activated, new RegExp(`^chunk server ${second.id} .* is active: it takes new replicas and keeps the \\d+ replicas? it holds\n$`));
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
