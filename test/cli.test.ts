// The admin CLI end to end: the real `shoal` binary as a child process against a real MDS and three
// chunk servers (each its own process, on port 0). Checks what admins and scripts rely on: human
// output, --json bodies equal to the API's, exit status 2 with the problem and the usage line for
// bad usage, 1 with the MDS's code and message when the operation fails, and how the CLI finds
// the MDS (flags, environment, cluster.json). Taking servers out of service (drain, rm) and
// fencing a writer, on a cluster of four chunk servers with data to move, are in cli_service.test.ts
// (a file of its own: the suite runs it beside this one, and neither nears the per-file timeout).

import t, { type Test } from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ChunkServerList, ClusterStat, VolumeInfo, VolumeList } from '../src/protocol/api.ts';
import { cliRunner } from './helpers/cli.ts';
import { startCluster } from './helpers/cluster.ts';
import type { RunResult } from './helpers/run.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

t.setTimeout(240_000);

const cluster = await startCluster(t, { nbd: false });
// Relative on purpose: the token file is found relative to the cluster folder, not the caller.
await writeFile(join(cluster.dir, 'cluster.json'), JSON.stringify({ mdsUrl: cluster.mdsUrl, adminTokenFile: 'admin.token' }));
/** The CLI with no configuration from the test's own environment: only what `args` and `env` say. */
const { shoal, emptyDir } = await cliRunner(t);

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
  t.match(create.stdout, /^usage: shoal volume create NAME --size SIZE \[--chunk-size SIZE\] \[--replicas N:M\] \[--tier N\] \[--iops-limit N\] \[--bandwidth-limit SIZE\]\n/);
  t.same(await shoal(['help', 'volume', 'create']), create, 'shoal help volume create = shoal volume create --help');
  const drain = await shoal(['cs', 'drain', '--help']);
  t.match(drain.stdout, /^usage: shoal cs drain ID \[--wait\] \[--timeout SECONDS\] \[--idempotency-key KEY\]\n/);
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
  t.match(header, /^NAME\s+SIZE\s+ALLOCATED\s+USE%\s+CHUNK\s+REPLICAS\s+TIER\s+CREATED\s+WRITER$/);
  t.match(lineOf(table, 'web'), /^web\s+10\.0 GiB\s+0 B\s+0\.0%\s+64\.0 MiB\s+3:2\s+any\s+\S+ \S+\s+-$/);
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
