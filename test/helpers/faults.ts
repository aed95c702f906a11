// The frame of every fault-injection test: a four-server cluster tuned to detect failures within
// seconds, fio writing and verifying through NBD while the fault happens, then the checks that the
// cluster healed: every chunk back to its normal replica count, with identical bytes on every
// member (read from the members' files directly).

import type { Test } from 'tap';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { LocalCluster } from '../../src/local/cluster.ts';
import { startCluster } from './cluster.ts';
import { run, type RunResult } from './run.ts';

const MiB = 1024 * 1024;

/** Detection within about two seconds: what a test can wait for, and still far above scheduling noise. */
export const FAST_MDS_ARGS = [
  '--heartbeat-interval-ms', '250', '--heartbeat-timeout-ms', '2000', '--replace-after-ms', '4000',
  '--cs-timeout-ms', '2000', '--lease-timeout-ms', '6000',
];
// The client waits longer than a primary waits for its peers, so a primary can name the failed peer.
export const FAST_CS_ARGS = ['--peer-timeout-ms', '1500'];
export const FAST_NBD_ARGS = ['--cs-timeout-ms', '2500', '--io-timeout-ms', '60000'];

export const VOLUME = 'fault';
export const VOLUME_BYTES = 256 * MiB;
export const CHUNK_BYTES = 8 * MiB;

export async function startFaultCluster(t: Test, chunkServers = 4): Promise<LocalCluster> {
  const cluster = await startCluster(t, {
    chunkServers,
    mdsArgs: FAST_MDS_ARGS,
    csArgs: FAST_CS_ARGS,
    nbdArgs: FAST_NBD_ARGS,
  });
  await cluster.admin.createVolume({ name: VOLUME, sizeBytes: VOLUME_BYTES, chunkSizeBytes: CHUNK_BYTES });
  return cluster;
}

export interface FioOutcome {
  readonly result: RunResult;
  readonly error: number;
  readonly writes: number;
  readonly reads: number;
}

/** fio randrw with crc32c verification for `runtimeSeconds`, then its verify pass over all it wrote. */
export async function runFio(cluster: LocalCluster, runtimeSeconds: number): Promise<FioOutcome> {
  const result = await run('fio', [
    '--name=fault', '--ioengine=nbd', `--uri=${cluster.nbdUnixUri(VOLUME)}`,
    '--rw=randrw', '--bs=4k', '--iodepth=16', '--size=96M', '--offset=4M',
    '--time_based', `--runtime=${runtimeSeconds}`, '--verify=crc32c', '--verify_fatal=1', '--do_verify=1',
    '--verify_state_save=0', '--output-format=json',
  ], { timeoutMs: (runtimeSeconds + 120) * 1000 });
  let error = -1;
  let writes = 0;
  let reads = 0;
  try {
    const report = JSON.parse(result.stdout.slice(result.stdout.indexOf('{'))) as {
      jobs: Array<{ error: number; read: { total_ios: number }; write: { total_ios: number } }>;
    };
    error = report.jobs[0]?.error ?? -1;
    writes = report.jobs[0]?.write.total_ios ?? 0;
    reads = report.jobs[0]?.read.total_ios ?? 0;
  } catch {
    // error stays -1: the assertions below show fio's output
  }
  return { result, error, writes, reads };
}

export function checkFio(t: Test, outcome: FioOutcome): void {
  t.equal(outcome.result.code, 0, `fio exits 0\n${outcome.result.stderr.slice(-2000)}`);
  t.equal(outcome.error, 0, 'fio saw no I/O error and no verify error');
  t.ok(outcome.writes > 500, `fio wrote ${outcome.writes} blocks during the fault`);
  t.notMatch(outcome.result.stderr, /verify: bad|crc32c: verify failed|bad magic/i, 'no verify complaint');
}

/** Waits until the MDS reports every chunk healthy and no recovery work left. */
export async function waitHealthy(cluster: LocalCluster, timeoutMs: number): Promise<{ waitedMs: number }> {
  const startedMs = Date.now();
  let last = '';
  while (Date.now() - startedMs < timeoutMs) {
    const stat = await cluster.admin.stat();
    const { byState, total } = stat.chunks;
    last = `${JSON.stringify(byState)} of ${total}, recovery ${JSON.stringify(stat.recovery)}`;
    if (byState.healthy === total && stat.recovery.pending === 0 && stat.recovery.running === 0) {
      // Healthy also means every member is where it should be: exactly normal replicas each.
      const { chunks } = await cluster.internal.chunkMap(VOLUME, 0, 4096);
      if (chunks.every((chunk) => chunk.replicas.length === 3)) return { waitedMs: Date.now() - startedMs };
      last = `replica counts ${chunks.map((c) => c.replicas.length).join(',')}`;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`cluster not healthy after ${timeoutMs} ms: ${last}`);
}

/**
 * Every chunk of the volume has exactly three members with byte-identical data files. Returns
 * the number of chunks compared.
 */
export async function checkReplicasIdentical(t: Test, cluster: LocalCluster): Promise<number> {
  const { chunks } = await cluster.internal.chunkMap(VOLUME, 0, 4096);
  let identical = 0;
  for (const chunk of chunks) {
    const hashes: string[] = [];
    for (const member of chunk.replicas) {
      const index = await cluster.chunkServerIndex(member.csId);
      const file = join(cluster.chunkServerDir(index), 'chunks', (chunk.chunkId % 256).toString(16).padStart(2, '0'), `${chunk.chunkId}.data`);
      hashes.push(createHash('sha256').update(await readFile(file)).digest('hex'));
    }
    if (hashes.length === 3 && new Set(hashes).size === 1) identical += 1;
    else t.fail(`chunk ${chunk.chunkIndex} (id ${chunk.chunkId}, version ${chunk.version}): ${hashes.length} members, ${new Set(hashes).size} distinct contents`);
  }
  t.equal(identical, chunks.length, `all ${chunks.length} chunks have three members with identical bytes`);
  return chunks.length;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` every 200 ms until it holds or `timeoutMs` passes; resolves with whether it held. */
export async function eventually(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await sleep(200);
  }
  return false;
}
