// Runs seeds of one simulation group in a worker thread and posts each result back. The seeds run
// outside the test runner's thread because the runner tracks every promise through async hooks,
// which doubles the cost of this promise-heavy code; two workers also use both cores.
//
// The pool (SeedPool) lives in the test file's thread; the same module, loaded in a worker, runs
// the jobs it is sent.

import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { staleWriters } from './fence_sim.ts';
import { journalSimConfig, runJournalSeed, tornBatch } from './journal_sim.ts';
import {
  chunkSyncFailure, evictionRacingCheckpoint, inPlaceOverJournalled, replayOnFullDisk, syncFailsDuringReplay, zeroWithoutHolePunching,
  type ScenarioResult,
} from './store_scenarios.ts';
import { runStoreSeed, storeSimConfig } from './store_sim.ts';

export type SimGroup = 'store' | 'journal' | 'chunkSyncFailure' | 'evictionRacingCheckpoint' | 'zeroWithoutHolePunching' | 'replayOnFullDisk' |
  'syncFailsDuringReplay' | 'tornBatch' | 'staleWriters' | 'inPlaceOverJournalled';

export interface SeedResult {
  readonly seed: number;
  readonly problem: string | null;
  /** The last lines of the seed's log (random groups only). */
  readonly log: string | null;
  readonly stats: Record<string, number>;
  /** The fault plan's name (random groups only). */
  readonly faults: string | null;
}

interface PendingJob {
  readonly results: SeedResult[];
  readonly count: number;
  readonly done: (results: SeedResult[]) => void;
  readonly fail: (error: Error) => void;
}

interface Job {
  readonly jobId: number;
  readonly group: SimGroup;
  readonly seeds: readonly number[];
  readonly echo: boolean;
}

async function runOne(group: SimGroup, seed: number, echo: boolean): Promise<SeedResult> {
  const scripted = async (run: (seed: number) => Promise<ScenarioResult>): Promise<SeedResult> => {
    const result = await run(seed);
    return { seed, problem: result.problem, log: null, stats: { ...result.stats }, faults: null };
  };
  switch (group) {
    case 'store': {
      const config = storeSimConfig(seed, echo);
      const result = await runStoreSeed(config);
      return { seed, problem: result.problem, log: result.log, stats: { ...result.stats }, faults: config.faultsName };
    }
    case 'journal': {
      const config = journalSimConfig(seed, echo);
      const result = await runJournalSeed(config);
      return { seed, problem: result.problem, log: result.log, stats: { ...result.stats }, faults: config.faultsName };
    }
    case 'tornBatch': {
      const result = await tornBatch(seed);
      return { seed, problem: result.problem, log: null, stats: { damageReported: result.damageReported ? 1 : 0 }, faults: null };
    }
    case 'chunkSyncFailure':
      return scripted(chunkSyncFailure);
    case 'evictionRacingCheckpoint':
      return scripted(evictionRacingCheckpoint);
    case 'zeroWithoutHolePunching':
      return scripted(zeroWithoutHolePunching);
    case 'replayOnFullDisk':
      return scripted(replayOnFullDisk);
    case 'syncFailsDuringReplay':
      return scripted(syncFailsDuringReplay);
    case 'inPlaceOverJournalled':
      return scripted(inPlaceOverJournalled);
    case 'staleWriters':
      return scripted(staleWriters);
  }
}

/**
 * Worker threads that run seeds of any group. Started once per test file (a worker's start-up,
 * loading the store and the simulation, costs as much as a few dozen seeds), closed at its end.
 */
export class SeedPool {
  private readonly workers: Worker[];
  private nextJobId = 1;
  private readonly pending = new Map<number, PendingJob>();

  constructor(size: number) {
    // No loaders of the test runner in the workers: only source maps, for readable stacks.
    this.workers = Array.from({ length: size }, () => {
      const worker = new Worker(new URL(import.meta.url), { workerData: { poolWorker: true }, execArgv: ['--enable-source-maps'] });
      worker.on('message', (message: { jobId: number; result: SeedResult }) => this.receive(message.jobId, message.result));
      // A worker that dies fails every job waiting (rather than leaving the test to time out).
      worker.on('error', (error) => this.failAll(error));
      worker.on('exit', (code) => this.failAll(new Error(`a simulation worker exited (code ${code})`)));
      return worker;
    });
  }

  /** Runs `seeds` of `group`, shared among the workers; results come back in seed order. */
  async run(group: SimGroup, seeds: readonly number[], echo: boolean): Promise<SeedResult[]> {
    const shares = this.workers.map((_worker, index) => seeds.filter((_seed, i) => i % this.workers.length === index));
    const results = await Promise.all(shares.map((share, index) => {
      const worker = this.workers[index];
      if (share.length === 0 || worker === undefined) return Promise.resolve([]);
      const jobId = this.nextJobId++;
      return new Promise<SeedResult[]>((done, fail) => {
        this.pending.set(jobId, { results: [], count: share.length, done, fail });
        const job: Job = { jobId, group, seeds: share, echo };
        worker.postMessage(job);
      });
    }));
    return results.flat().sort((a, b) => a.seed - b.seed);
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((worker) => worker.terminate()));
  }

  private failAll(error: Error): void {
    for (const job of this.pending.values()) job.fail(error);
    this.pending.clear();
  }

  private receive(jobId: number, result: SeedResult): void {
    const job = this.pending.get(jobId);
    if (job === undefined) return;
    job.results.push(result);
    if (job.results.length < job.count) return;
    this.pending.delete(jobId);
    job.done(job.results);
  }
}

if (!isMainThread && parentPort !== null && (workerData as { poolWorker?: boolean } | null)?.poolWorker === true) {
  const port = parentPort;
  port.on('message', (job: Job) => {
    void (async () => {
      for (const seed of job.seeds) {
        const result = await runOne(job.group, seed, job.echo).catch((error: unknown): SeedResult => ({
          seed, problem: `the seed threw: ${error instanceof Error ? error.stack ?? error.message : String(error)}`, log: null, stats: {}, faults: null,
        }));
        port.postMessage({ jobId: job.jobId, result });
      }
    })();
  });
}
