// The frame of the power-cut tests: a PowerCutCluster with one volume, a WriteModel of what the
// volume must hold, writers that fill that model from NBD acknowledgements, and the check made
// after every cut once the cluster came back by itself:
//   - every chunk server online and every chunk healthy, with no recovery work left (`stat`);
//   - every block of the volume reads back as the model says: acknowledged writes byte for byte,
//     never-written blocks as zeroes, blocks written at the cut as before or as exactly one of the
//     writes in flight to them (per 4 KiB block: no mix, no garbage);
//   - no daemon logged a checksum mismatch or journal damage since the previous check.
//
// Seeds: a random-mode cut keeps a seeded subset of each disk's unsynced pages. The seeds a test
// uses are listed in it; SHOAL_POWER_CUT_SEED=n replaces every one of them with n, so a failing
// seed (printed in each assertion message) can be run again alone. The seed also drives the
// writers' choices; the timing of real processes is not reproducible.

import type { Test } from 'tap';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ClusterStat } from '../../src/protocol/api.ts';
import type { CutMode } from './power_cut.ts';
import { PowerCutCluster, type HostCut, type PowerCutClusterOptions } from './power_cut_cluster.ts';
import { PipelinedNbdClient } from './nbd_pipelined.ts';
import { seededRandom } from '../../src/util/clock.ts';
import { BLOCK_BYTES, WriteModel, Writer, identifyBlock, readBlocks, type WriterOptions } from './write_model.ts';

export const MiB = 1024 * 1024;
export const VOLUME = 'pcut';

const CONNECT_TIMEOUT_MS = 60_000;
const HEALTHY_TIMEOUT_MS = 120_000;

/** The random-mode seeds of a test, or the one seed SHOAL_POWER_CUT_SEED names. */
export function cutSeeds(defaults: readonly number[]): number[] {
  const forced = process.env['SHOAL_POWER_CUT_SEED'];
  if (forced === undefined || forced === '') return [...defaults];
  const seed = Number(forced);
  if (!Number.isSafeInteger(seed)) throw new Error(`SHOAL_POWER_CUT_SEED must be an integer, got ${forced}`);
  return [seed];
}

/** How a cut is named in assertion messages: its mode, its seed and how to run it again. */
export function describeMode(mode: CutMode): string {
  return mode.mode === 'none' ? "mode 'none'" : `mode 'random', seed ${mode.seed} (again: SHOAL_POWER_CUT_SEED=${mode.seed})`;
}

export function describeCuts(cuts: readonly HostCut[]): string {
  return cuts.map((cut) => `${cut.host}: dropped ${cut.result.droppedPages} pages, kept ${cut.result.keptPages}, undid ${cut.result.undoneDirOps} dir ops` +
    (cut.seed === undefined ? '' : ` (disk seed ${cut.seed})`)).join('; ');
}

/** What a writer is started with: its options, and the NBD server it writes through (default 'nbd'). */
export type WriterSpec = Omit<WriterOptions, 'client' | 'model'> & { readonly nbdName?: string };

export interface RunOptions extends PowerCutClusterOptions {
  readonly volumeBytes: number;
  readonly chunkBytes: number;
}

export class PowerCutRun {
  readonly cluster: PowerCutCluster;
  readonly model: WriteModel;
  readonly volumeBytes: number;
  readonly chunkBytes: number;
  private readonly clients: PipelinedNbdClient[] = [];
  private problemsChecked = 0;

  private constructor(cluster: PowerCutCluster, volumeBytes: number, chunkBytes: number) {
    this.cluster = cluster;
    this.volumeBytes = volumeBytes;
    this.chunkBytes = chunkBytes;
    this.model = new WriteModel(volumeBytes);
  }

  static async start(t: Test, options: RunOptions): Promise<PowerCutRun> {
    const cluster = await PowerCutCluster.start(t, options);
    await cluster.admin.createVolume({ name: VOLUME, sizeBytes: options.volumeBytes, chunkSizeBytes: options.chunkBytes });
    const run = new PowerCutRun(cluster, options.volumeBytes, options.chunkBytes);
    t.teardown(() => run.closeClients());
    return run;
  }

  get chunkBlocks(): number {
    return this.chunkBytes / BLOCK_BYTES;
  }

  /** Opens the volume through NBD server `nbdName`, retrying while the server cannot open it yet. */
  async connect(nbdName = 'nbd'): Promise<PipelinedNbdClient> {
    const deadline = Date.now() + CONNECT_TIMEOUT_MS;
    for (;;) {
      try {
        const client = await PipelinedNbdClient.connect(this.cluster.nbdSocket(nbdName), VOLUME);
        this.clients.push(client);
        return client;
      } catch (error) {
        if (Date.now() > deadline) throw new Error(`cannot open ${VOLUME} through NBD server ${nbdName}: ${(error as Error).message}`);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
  }

  /** A writer on a new connection, started. */
  async startWriter(spec: WriterSpec): Promise<Writer> {
    const client = await this.connect(spec.nbdName);
    return new Writer({ ...spec, client, model: this.model }).start();
  }

  /** A writer over blocks [firstBlock, firstBlock + blockCount) with a seeded choice of places. */
  writerOptions(seed: number, firstBlock: number, blockCount: number, extra: Partial<WriterSpec> = {}): WriterSpec {
    return { firstBlock, blockCount, maxBlocks: 16, concurrency: 8, random: seededRandom(seed), ...extra };
  }

  closeClients(): void {
    for (const client of this.clients.splice(0)) client.close();
  }

  /**
   * Waits until the cluster came back by itself (every server online, every chunk healthy, no
   * recovery left), then checks the stat, every block of the volume and the logs.
   */
  async checkRecovered(t: Test, what: string, nbdName = 'nbd'): Promise<void> {
    // Polled until it holds or HEALTHY_TIMEOUT_MS passes; the assertions read the last answer.
    const { stat, waitedMs, summary } = await this.waitHealthy();
    t.ok(stat !== null, `${what}: the MDS answers (${summary})`);
    if (stat !== null) {
      t.equal(stat.chunkServers.online, this.cluster.chunkServerCount, `${what}: every chunk server is online (${JSON.stringify(stat.chunkServers)})`);
      t.equal(stat.chunks.byState.unavailable + stat.chunks.byState.endangered, 0, `${what}: no chunk unavailable or endangered (${JSON.stringify(stat.chunks.byState)})`);
      t.equal(stat.chunks.byState.healthy, stat.chunks.total, `${what}: all ${stat.chunks.total} chunks healthy, ${waitedMs} ms after the check began`);
      t.same([stat.recovery.pending, stat.recovery.running], [0, 0], `${what}: no recovery work left (${JSON.stringify(stat.recovery)})`);
    }
    await this.checkData(t, what, nbdName);
    this.checkLogs(t, what);
  }

  /** Reads the whole volume back through NBD server `nbdName` and checks it against the model. */
  async checkData(t: Test, what: string, nbdName = 'nbd'): Promise<void> {
    const client = await this.connect(nbdName);
    try {
      const bytes = await readBlocks(client, 0, this.model.blocks).catch((error: unknown) => {
        t.fail(`${what}: the volume cannot be read back: ${(error as Error).message}`);
        return null;
      });
      if (bytes === null) return;
      const result = this.model.verify(0, bytes);
      const replicas = result.problemCount === 0 ? '' : `\nwhat each server's disk holds there:\n${(await this.describeReplicas(result.problemBlocks)).join('\n')}`;
      t.equal(result.problemCount, 0,
        `${what}: every block holds what it must (${result.acknowledgedBlocks} blocks of acknowledged writes, ` +
        `${result.doubtfulBlocks} blocks written at the cut, ${result.doubtfulLanded} of them holding the in-flight write)` +
        (result.problemCount === 0 ? '' : `\n${result.problems.join('\n')}${result.problemCount > result.problems.length ? `\n... ${result.problemCount} in all` : ''}${replicas}`));
    } finally {
      client.close();
      this.clients.splice(this.clients.indexOf(client), 1);
    }
  }

  /**
   * Every chunk's members hold byte-identical data files, read straight from each host's disk
   * (through its mount): a returning server holds exactly what the others hold.
   */
  async checkReplicasIdentical(t: Test, what: string): Promise<void> {
    const { chunks } = await this.cluster.internal.chunkMap(VOLUME, 0, 65_536);
    const indexOf = new Map<number, number>();
    const different: string[] = [];
    for (const chunk of chunks) {
      const hashes = new Set<string>();
      for (const member of chunk.replicas) {
        if (!indexOf.has(member.csId)) indexOf.set(member.csId, await this.cluster.chunkServerIndex(member.csId));
        const file = join(this.cluster.csDataDir(indexOf.get(member.csId)!), 'chunks', (chunk.chunkId % 256).toString(16).padStart(2, '0'), `${chunk.chunkId}.data`);
        hashes.add(createHash('sha256').update(await readFile(file)).digest('hex'));
      }
      if (hashes.size !== 1) different.push(`chunk ${chunk.chunkIndex} (id ${chunk.chunkId}, v${chunk.version}, members ${chunk.replicas.map((r) => r.csId).join(',')}): ${hashes.size} contents`);
    }
    t.same(different, [], `${what}: the members of all ${chunks.length} chunks hold identical bytes on their disks`);
  }

  /**
   * For each block: the chunk's map entry, and which write each server's copy of the chunk holds
   * there (read from its data file through its host's mount, members and former members alike).
   */
  async describeReplicas(blocks: readonly number[]): Promise<string[]> {
    const lines: string[] = [];
    for (const block of blocks) {
      const offset = block * BLOCK_BYTES;
      const chunkIndex = Math.floor(offset / this.chunkBytes);
      try {
        const entry = (await this.cluster.internal.chunkMap(VOLUME, chunkIndex, 1)).chunks[0];
        if (entry === undefined) {
          lines.push(`block ${block}: chunk ${chunkIndex} is not in the map`);
          continue;
        }
        const copies: string[] = [];
        for (let index = 0; index < this.cluster.chunkServerCount; index += 1) {
          const file = join(this.cluster.csDataDir(index), 'chunks', (entry.chunkId % 256).toString(16).padStart(2, '0'), `${entry.chunkId}.data`);
          const bytes = await readFile(file).catch(() => null);
          const id = await this.cluster.chunkServerId(index).catch(() => -1);
          const role = entry.replicas.some((r) => r.csId === id) ? 'member' : 'not a member';
          if (bytes === null) {
            copies.push(`cs${index} (id ${id}, ${role}): no copy`);
            continue;
          }
          const at = offset % this.chunkBytes;
          const found = identifyBlock(bytes.subarray(at, at + BLOCK_BYTES), block);
          copies.push(`cs${index} (id ${id}, ${role}): ${found === null ? 'garbage' : found === 0 ? 'zeroes' : this.model.describeWrite(found)}`);
        }
        lines.push(`block ${block}: chunk ${chunkIndex} (id ${entry.chunkId}, version ${entry.version}, members ${entry.replicas.map((r) => r.csId).join(',')}): ${copies.join('; ')}`);
      } catch (error) {
        lines.push(`block ${block}: ${(error as Error).message}`);
      }
    }
    return lines;
  }

  /** No daemon logged a checksum mismatch or journal damage since the last check. */
  checkLogs(t: Test, what: string): void {
    const problems = this.cluster.problemsSince(this.problemsChecked);
    this.problemsChecked = this.cluster.problems.length;
    t.same(problems.map((p) => `${p.daemon}: ${p.line}`), [], `${what}: no daemon logged a checksum mismatch or journal damage`);
  }

  /**
   * Polls the stat until every chunk server is online, every chunk healthy and no recovery is
   * left, or `timeoutMs` passes; returns the last stat either way (null if the MDS never answered).
   */
  async waitHealthy(timeoutMs = HEALTHY_TIMEOUT_MS): Promise<{ stat: ClusterStat | null; healthy: boolean; waitedMs: number; summary: string }> {
    const startedMs = Date.now();
    let stat: ClusterStat | null = null;
    let summary = 'the MDS did not answer';
    for (;;) {
      try {
        stat = await this.cluster.admin.stat();
        const { byState, total } = stat.chunks;
        summary = `servers ${JSON.stringify(stat.chunkServers)}, chunks ${JSON.stringify(byState)} of ${total}, recovery ${JSON.stringify(stat.recovery)}`;
        if (stat.chunkServers.offline === 0 && stat.chunkServers.online === this.cluster.chunkServerCount && byState.healthy === total &&
          stat.recovery.pending === 0 && stat.recovery.running === 0) return { stat, healthy: true, waitedMs: Date.now() - startedMs, summary };
      } catch (error) {
        summary = (error as Error).message;
      }
      if (Date.now() - startedMs > timeoutMs) return { stat, healthy: false, waitedMs: Date.now() - startedMs, summary };
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

}

/** Polls `check` every `intervalMs` until it holds; throws naming `what` after `timeoutMs`. */
export async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number, intervalMs = 100): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
