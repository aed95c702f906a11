// A seeded simulation of one chunk server's storage: the real ChunkStore (and its journal) on a
// SimDisk and a SimCatalog, driven by a random workload of concurrent writes, zeroes, reads,
// version changes, chunk creations and checkpoints, with the seed's disk faults, and ended by
// power cuts, process crashes or clean stops, after which the store is opened on what survived
// and checked:
// - every acknowledged write and zero reads back exactly, and nothing reads back that was never
//   written (test/sim/block_model.ts), checksum errors only where a failed chunk write may have
//   left a block torn;
// - acknowledged chunk records and versions are there, versions never go back;
// - health: once a chunk-file fdatasync failed, the store says it is unhealthy and takes no
//   writes until restart; an error no injected fault explains is a failure; the stop is recorded
//   as clean exactly when it was.
// Scripted scenarios (the targeted tests) use the same pieces through the public methods.

import { StorageError } from '../../src/errors.ts';
import { ChunkStore } from '../../src/cs/store/chunk_store.ts';
import { SimDisk, type PowerCutMode, type SimDiskOptions, type SimFault, type SimFaultPlan } from '../../src/cs/disk/sim_disk.ts';
import { SimCatalog } from '../../src/cs/store/sim_catalog.ts';
import { seededRandom } from '../../src/util/clock.ts';
import { assert } from '../../src/util/assert.ts';
import { BLOCK, ChunkModel, type ModelOp } from './block_model.ts';
import { RecordingLogger, SimClock, between, errorCode, errorText, pick, simTimers, streams, turns } from './sim_env.ts';

/** The data directory the simulated journal belongs to. */
const SIM_OWNER_UUID = '5e0e5e0e-0000-4000-8000-000000000001';

const DIRECTORY = '/srv/cs';
const VOLUME_ID = 7;
/** Event-loop turns the leftovers of a process may take to settle after it died. */
const DRAIN_TURNS_MAX = 20_000;
const PROBLEMS_KEPT = 6;

export interface StoreSimConfig {
  readonly seed: number;
  readonly chunkBytes: number;
  readonly initialChunks: number;
  readonly chunksMax: number;
  readonly openChunksMax: number;
  readonly segmentBytesMax: number;
  /** Writes of at least this many bytes go in place (Infinity: none); see src/cs/store/block_io.ts. */
  readonly inPlaceWriteBytesMin: number;
  readonly epochs: number;
  readonly stepsPerEpoch: number;
  readonly inflightMax: number;
  readonly latencyStepsMax: number;
  /** Most extra event-loop turns a call takes, by system call and path (SimDiskOptions.slowTurnsMax). */
  readonly slowTurnsMax: (syscall: string, path: string) => number;
  readonly writebackChance: number;
  readonly faults: Partial<SimFaultPlan>;
  /** What the plan is, in words (printed with a failure). */
  readonly faultsName: string;
  /** Print the store's log as it comes (debugging one seed). */
  readonly echo: boolean;
  /** Called as each disk call starts (scripted scenarios start work at a precise moment). */
  readonly onDiskCall?: (syscall: string, path: string) => void;
}

export interface StoreSimStats {
  acked: number;
  failed: number;
  reads: number;
  checkpoints: number;
  powerCuts: number;
  processCrashes: number;
  cleanStops: number;
  faults: number;
  /** Restarts after which the journal reported damage though every acknowledged change was there. */
  falseJournalDamage: number;
  /** Reads that failed their checksum on a block a failed chunk write may have torn. */
  tornReads: number;
  /** Restarts that found the disk too full to replay, and were tried again with room made. */
  fullRestarts: number;
  /** Starts that a disk fault kept from replaying everything (checked at the next start). */
  damagedStarts: number;
}

export function emptyStats(): StoreSimStats {
  return { acked: 0, failed: 0, reads: 0, checkpoints: 0, powerCuts: 0, processCrashes: 0, cleanStops: 0, faults: 0, falseJournalDamage: 0, tornReads: 0, fullRestarts: 0, damagedStarts: 0 };
}

const isChunkFile = (path: string): boolean => path.includes('/chunks/');
const isJournalFile = (path: string): boolean => path.includes('/journal/');

/** The seed's configuration: sizes, concurrency and one of a few fault plans. */
export function storeSimConfig(seed: number, echo = false): StoreSimConfig {
  const random = seededRandom(seed ^ 0x5bd1e995);
  const chunkBytes = pick(random, [64, 64, 64, 128, 256]) * 1024;
  const initialChunks = between(random, 2, 5);
  const chunksMax = initialChunks + between(random, 0, 4);
  const segmentBytesMax = pick(random, [32, 64, 128, 256]) * 1024;
  const plans: Array<[string, Partial<SimFaultPlan>]> = [
    ['none', {}],
    ['none', {}],
    ['none', {}],
    ['chunk fdatasync EIO', { syncEio: 0.02 + random() * 0.1, target: isChunkFile }],
    ['chunk fdatasync EIO', { syncEio: 0.02 + random() * 0.1, target: isChunkFile }],
    ['journal EIO', { syncEio: 0.01 + random() * 0.05, writeEio: random() * 0.03, target: isJournalFile }],
    ['chunk write EIO', { writeEio: 0.01 + random() * 0.04, target: isChunkFile }],
    ['disk full', { capacityPages: journalPages(segmentBytesMax) + Math.floor((chunksMax * chunkBytes / BLOCK) * (0.1 + random() * 0.6)) }],
    ['no hole punching', { punchHole: false }],
    ['everything', {
      syncEio: 0.01 + random() * 0.03, writeEio: random() * 0.02, dirSyncEio: random() * 0.02,
      capacityPages: journalPages(segmentBytesMax) + Math.floor((chunksMax * chunkBytes / BLOCK) * (0.3 + random() * 0.8)),
      punchHole: random() < 0.5,
    }],
  ];
  const [faultsName, faults] = pick(random, plans);
  return {
    seed, chunkBytes, initialChunks, chunksMax, segmentBytesMax, echo, faultsName,
    faults: { ...faults, punchHole: faults.punchHole ?? random() < 0.85 },
    openChunksMax: between(random, 1, 3),
    epochs: between(random, 2, 3),
    stepsPerEpoch: between(random, 10, 40),
    inflightMax: between(random, 1, 8),
    latencyStepsMax: between(random, 0, 3),
    slowTurnsMax: slowSyncs(random() < 0.5 ? 0 : between(random, 1, 12)),
    writebackChance: random() < 0.5 ? 0 : random() * 0.3,
    // A stream of its own, so the draws above (and every older seed's plan) stay as they were.
    inPlaceWriteBytesMin: pick(seededRandom(seed ^ 0x1f3d5b79), [Number.POSITIVE_INFINITY, 4096, 8192, 16384, 65536]),
  };
}

/** Syncs take up to `turnsMax` extra turns, other calls none. */
function slowSyncs(turnsMax: number): (syscall: string, path: string) => number {
  return (syscall) => (syscall === 'fsync' || syscall === 'fdatasync' ? turnsMax : 0);
}

/** Pages the journal holds at most: the current segment, two spares and one being prepared. */
function journalPages(segmentBytesMax: number): number {
  return Math.ceil(segmentBytesMax / BLOCK) * 5;
}

interface SimChunk {
  readonly chunkId: number;
  readonly model: ChunkModel;
  exists: 'acked' | 'doubt';
  /** The last acknowledged version; the replica may be at one in `versionsInDoubt` above it. */
  version: number;
  readonly versionsInDoubt: Set<number>;
  versionChanging: boolean;
}

type EndOfEpoch = 'powerCut' | 'dropUnsynced' | 'processCrash' | 'cleanStop' | 'cleanStopThenCut';
/** What the next start must find recorded about the stop: clean, not clean, or either. */
type CleanStop = boolean | 'either';

export class StoreSim {
  readonly config: StoreSimConfig;
  readonly log: RecordingLogger;
  readonly stats = emptyStats();
  readonly clock = new SimClock();
  private readonly random: () => number;
  private readonly cutRandom: () => number;
  disk: SimDisk;
  private diskOptions: SimDiskOptions;
  private catalog: SimCatalog;
  private storeInstance: ChunkStore | null = null;
  /** Increments at every end of a process: operations of an older one are leftovers. */
  private generation = 0;
  private readonly chunks = new Map<number, SimChunk>();
  private readonly inflight = new Set<Promise<void>>();
  private nextOpId = 1;
  private nextChunkId = 101;
  /** Faults before this index belong to earlier processes. */
  private faultsMark = 0;
  /** Problems found, the first (the cause, usually) first; a few of its consequences after it. */
  readonly problems: string[] = [];

  constructor(config: StoreSimConfig) {
    this.config = config;
    this.log = new RecordingLogger(60, config.echo);
    const random = streams(config.seed);
    this.random = random.workload;
    this.cutRandom = random.cut;
    this.diskOptions = {
      random: random.disk, faults: config.faults, latencyStepsMax: config.latencyStepsMax, slowTurnsMax: config.slowTurnsMax,
      writebackChance: config.writebackChance,
      onCall: (syscall: string, path: string) => {
        if (config.echo) this.log.note(`disk ${syscall} ${path}`);
        config.onDiskCall?.(syscall, path);
      },
    };
    this.disk = new SimDisk(this.diskOptions);
    this.catalog = new SimCatalog({ latency: () => this.disk.latency() });
  }

  get store(): ChunkStore {
    assert(this.storeInstance !== null, 'the store is open');
    return this.storeInstance;
  }

  get problem(): string | null {
    return this.problems[0] ?? null;
  }

  /** All problems in one message (the first is the one to look at), or null. */
  report(): string | null {
    return this.problems.length === 0 ? null : this.problems.join('\n  then: ');
  }

  /** Records a problem; after the first, only a few (its consequences, usually). */
  fail(message: string): void {
    if (this.problems.length < PROBLEMS_KEPT) this.problems.push(message);
    this.log.note(`PROBLEM: ${message}`);
  }

  // ---- the random run ------------------------------------------------------------------------------

  async runRandom(): Promise<void> {
    await this.install();
    await this.open();
    for (let i = 0; i < this.config.initialChunks; i += 1) await this.createChunk();
    for (let epoch = 0; epoch < this.config.epochs && this.problem === null; epoch += 1) {
      for (let step = 0; step < this.config.stepsPerEpoch && this.problem === null; step += 1) await this.step();
      if (this.problem !== null) break;
      const end = pick<EndOfEpoch>(this.random, ['powerCut', 'powerCut', 'powerCut', 'dropUnsynced', 'processCrash', 'cleanStop', 'cleanStopThenCut']);
      await this.endEpoch(end);
    }
    this.stats.faults = this.disk.faults.length;
  }

  private async step(): Promise<void> {
    this.clock.advance(Math.floor(this.random() * 400));
    while (this.inflight.size >= this.config.inflightMax) await Promise.race(this.inflight);
    const roll = this.random();
    const chunk = this.pickChunk();
    if (chunk !== null && roll < 0.42) this.launch(() => this.randomWrite(chunk));
    else if (chunk !== null && roll < 0.52) this.launch(() => this.randomZero(chunk));
    else if (chunk !== null && roll < 0.68) this.launch(() => this.randomRead(chunk));
    else if (chunk !== null && roll < 0.74 && !chunk.versionChanging) this.launch(() => this.setVersion(chunk));
    else if (roll < 0.82) this.launch(() => this.checkpoint());
    else if (roll < 0.86 && this.chunks.size < this.config.chunksMax) this.launch(() => this.createChunk());
    else if (roll < 0.9) await this.barrier();
    await turns(between(this.random, 0, 2));
  }

  /** An acknowledged chunk with room for one more operation in flight, or null. */
  private pickChunk(): SimChunk | null {
    const ready = [...this.chunks.values()].filter((chunk) => chunk.exists === 'acked' && chunk.model.inflightCount < 3);
    return ready.length === 0 ? null : pick(this.random, ready);
  }

  private launch(run: () => Promise<unknown>): void {
    const running: Promise<void> = run()
      .then(() => undefined)
      .catch((error: unknown) => this.fail(`unexpected exception: ${error instanceof Error ? error.stack ?? error.message : String(error)}`))
      .finally(() => this.inflight.delete(running));
    this.inflight.add(running);
  }

  private randomRange(chunk: SimChunk): { offsetBytes: number; lengthBytes: number } {
    const size = chunk.model.sizeBytes;
    const lengthMax = pick(this.random, [4 * 1024, 8 * 1024, 8 * 1024, 16 * 1024, 32 * 1024, 64 * 1024, size]);
    if (this.random() < 0.5) {
      const first = between(this.random, 0, size / BLOCK - 1);
      const blocks = between(this.random, 1, Math.max(1, Math.min(size / BLOCK - first, lengthMax / BLOCK)));
      return { offsetBytes: first * BLOCK, lengthBytes: blocks * BLOCK };
    }
    const offsetBytes = between(this.random, 0, size - 1);
    return { offsetBytes, lengthBytes: between(this.random, 1, Math.min(size - offsetBytes, lengthMax)) };
  }

  private async randomWrite(chunk: SimChunk): Promise<void> {
    const { offsetBytes, lengthBytes } = this.randomRange(chunk);
    await this.write(chunk, offsetBytes, this.pattern(offsetBytes, lengthBytes), this.random() < 0.3 ? null : chunk.version);
  }

  private async randomZero(chunk: SimChunk): Promise<void> {
    const { offsetBytes, lengthBytes } = this.randomRange(chunk);
    await this.zero(chunk, offsetBytes, lengthBytes, this.random() < 0.3 ? null : chunk.version);
  }

  private async randomRead(chunk: SimChunk): Promise<void> {
    const { offsetBytes, lengthBytes } = this.randomRange(chunk);
    await this.read(chunk, offsetBytes, lengthBytes);
  }

  /** Bytes unique to one write: its id every 61 bytes, the rest seeded, placed by chunk offset. */
  pattern(offsetBytes: number, lengthBytes: number): Buffer {
    const period = Buffer.allocUnsafe(61);
    for (let i = 4; i < period.length; i += 1) period[i] = Math.floor(this.random() * 256);
    period.writeUInt32LE(this.nextOpId, 0);
    const shift = offsetBytes % period.length;
    return Buffer.alloc(lengthBytes, Buffer.concat([period.subarray(shift), period.subarray(0, shift)]));
  }

  // ---- operations, each checked against the model -----------------------------------------------------

  async write(chunk: SimChunk, offsetBytes: number, data: Buffer, version: number | null): Promise<boolean> {
    const op: ModelOp = { id: this.nextOpId++, offsetBytes, lengthBytes: data.length, data };
    return this.change(chunk, op, () => this.store.write(chunk.chunkId, version, offsetBytes, data));
  }

  async zero(chunk: SimChunk, offsetBytes: number, lengthBytes: number, version: number | null): Promise<boolean> {
    const op: ModelOp = { id: this.nextOpId++, offsetBytes, lengthBytes, data: null };
    return this.change(chunk, op, () => this.store.zero(chunk.chunkId, version, offsetBytes, lengthBytes));
  }

  /** Runs a write or zero and settles it in the model; true if acknowledged. */
  private async change(chunk: SimChunk, op: ModelOp, run: () => Promise<void>): Promise<boolean> {
    const generation = this.generation;
    const stopped = this.store.journal.healthError?.code === 'ERR_IO';
    const faultsBefore = this.disk.faults.length;
    const disk = this.disk;
    chunk.model.begin(op);
    try {
      await run();
    } catch (error) {
      this.stats.failed += 1;
      this.log.note(`failed ${op.data === null ? 'zero' : 'write'} ${op.id} chunk ${chunk.chunkId} ${op.offsetBytes}+${op.lengthBytes}: ${errorText(error)}`);
      this.settleFailedChange(chunk, op, error, generation, disk.faults.slice(faultsBefore));
      return false;
    }
    this.stats.acked += 1;
    this.log.note(`acked ${op.data === null ? 'zero' : 'write'} ${op.id} chunk ${chunk.chunkId} ${op.offsetBytes}+${op.lengthBytes}`);
    if (stopped) this.fail(`change ${op.id} was acknowledged though the journal had stopped for a disk error`);
    chunk.model.ack(op);
    return true;
  }

  private settleFailedChange(chunk: SimChunk, op: ModelOp, error: unknown, generation: number, faults: readonly SimFault[]): void {
    const code = errorCode(error);
    if (code === 'ERR_CHUNK_VERSION') return chunk.model.notApplied(op);
    if (code === 'ERR_CHECKSUM') {
      // An edge block failed its checksum before anything was journaled.
      if (!chunk.model.anyTorn(op.offsetBytes, op.lengthBytes) && this.storeInstance?.damage === null && generation === this.generation) {
        this.fail(`change ${op.id} on chunk ${chunk.chunkId} failed a checksum on blocks no failed write touched: ${errorText(error)}`);
      }
      return chunk.model.notApplied(op);
    }
    const dataFile = `/${chunk.chunkId}.data`;
    const torn = faults.some((fault) => fault.path.endsWith(dataFile) && (fault.kind === 'writeEio' || fault.kind === 'noSpace'));
    chunk.model.inDoubt(op, torn);
    if (generation === this.generation) this.expectFaultBehind(`change ${op.id} on chunk ${chunk.chunkId}`, error);
  }

  async read(chunk: SimChunk, offsetBytes: number, lengthBytes: number): Promise<void> {
    const generation = this.generation;
    const token = chunk.model.readStart(offsetBytes, lengthBytes);
    let bytes: Buffer;
    try {
      bytes = await this.store.read(chunk.chunkId, null, offsetBytes, lengthBytes);
    } catch (error) {
      if (generation !== this.generation) return;
      if (errorCode(error) === 'ERR_CHECKSUM' && (chunk.model.anyTorn(offsetBytes, lengthBytes) || this.store.damage !== null)) {
        this.stats.tornReads += 1;
        return;
      }
      this.fail(`read of chunk ${chunk.chunkId} ${offsetBytes}+${lengthBytes} failed: ${errorText(error)}`);
      return;
    }
    this.stats.reads += 1;
    const problem = chunk.model.readCheck(token, bytes);
    if (problem !== null) this.fail(`read of chunk ${chunk.chunkId} ${offsetBytes}+${lengthBytes}: ${problem}`);
  }

  async setVersion(chunk: SimChunk): Promise<void> {
    const generation = this.generation;
    const toVersion = chunk.version + between(this.random, 1, 2);
    const expected = this.random() < 0.5 ? chunk.version : undefined;
    chunk.versionChanging = true;
    chunk.versionsInDoubt.add(toVersion);
    try {
      const meta = await this.store.setVersion(chunk.chunkId, toVersion, expected, toVersion);
      if (meta.version !== toVersion) this.fail(`setVersion(${toVersion}) on chunk ${chunk.chunkId} returned version ${meta.version}`);
      chunk.version = Math.max(chunk.version, toVersion);
      chunk.versionsInDoubt.delete(toVersion);
    } catch (error) {
      if (generation === this.generation) this.fail(`setVersion(${toVersion}) on chunk ${chunk.chunkId} failed: ${errorText(error)}`);
    } finally {
      chunk.versionChanging = false;
    }
  }

  async createChunk(): Promise<SimChunk> {
    const generation = this.generation;
    const chunkId = this.nextChunkId;
    // Spread over the chunks/<hh> directories, some shared.
    this.nextChunkId += between(this.random, 1, 300);
    const chunk: SimChunk = {
      chunkId, model: new ChunkModel(this.config.chunkBytes), exists: 'doubt', version: 1, versionsInDoubt: new Set(), versionChanging: false,
    };
    this.chunks.set(chunkId, chunk);
    try {
      await this.store.createChunk({ chunkId, volumeId: VOLUME_ID, chunkIndex: chunkId, sizeBytes: this.config.chunkBytes, version: 1, generation: 1 });
      chunk.exists = 'acked';
    } catch (error) {
      if (generation === this.generation) this.expectFaultBehind(`creating chunk ${chunkId}`, error);
    }
    return chunk;
  }

  async checkpoint(): Promise<boolean> {
    const generation = this.generation;
    try {
      await this.store.journal.checkpoint();
      this.stats.checkpoints += 1;
      this.log.note('checkpoint done');
      return true;
    } catch (error) {
      if (generation === this.generation) this.expectFaultBehind('checkpoint', error);
      return false;
    }
  }

  /** Everything settles, then a checkpoint, then the health rules are checked. */
  async barrier(): Promise<void> {
    await Promise.allSettled([...this.inflight]);
    const faultsBefore = this.disk.faults.length;
    await this.checkpoint();
    this.checkHealth(this.disk.faults.slice(0, faultsBefore));
  }

  /**
   * After a chunk-file fdatasync failed, and once a checkpoint has run since: the store is
   * unhealthy and refuses writes. (createChunk's fsync of a new file is not a chunk sync.)
   */
  checkHealth(faultsBefore: readonly SimFault[]): void {
    const failedSync = faultsBefore.slice(this.faultsMark).find((fault) => fault.kind === 'syncEio' && fault.syscall === 'fdatasync' && isChunkFile(fault.path));
    const store = this.store;
    if (failedSync !== undefined && (store.journal.healthError === null || store.healthProblem === null)) {
      this.fail(`fdatasync of ${failedSync.path} failed, yet the store reports no problem after a checkpoint`);
    }
    const stopped = store.journal.healthError;
    if (stopped !== null && stopped.code === 'ERR_IO' && !this.processFaults().some((fault) => fault.kind === 'syncEio' || fault.kind === 'writeEio' || fault.kind === 'noSpace')) {
      this.fail(`the journal stopped (${stopped.message}) with no disk error behind it`);
    }
  }

  /** Faults since the current store opened. */
  processFaults(): readonly SimFault[] {
    return this.disk.faults.slice(this.faultsMark);
  }

  /** An operation failed in this process: some injected fault must explain it. */
  private expectFaultBehind(what: string, error: unknown): void {
    if (this.processFaults().length > 0) return;
    if (error instanceof StorageError && error.code === 'ERR_SHUTTING_DOWN') return;
    this.fail(`${what} failed with no disk fault behind it: ${errorText(error)}`);
  }

  // ---- ends of a process, and the restart ---------------------------------------------------------------

  async endEpoch(end: EndOfEpoch): Promise<void> {
    this.log.note(`end of epoch: ${end} with ${this.inflight.size} operations in flight`);
    if (end === 'cleanStop' || end === 'cleanStopThenCut') {
      const stopped = await this.cleanStop();
      if (stopped === 'failed') await this.processCrash();
      else if (end === 'cleanStopThenCut') await this.powerCut('dropUnsynced', stopped);
      else await this.restart(stopped);
      return;
    }
    if (end === 'processCrash') await this.processCrash();
    else await this.powerCut(end === 'dropUnsynced' ? 'dropUnsynced' : 'random', false);
  }

  /**
   * Stops the store cleanly. 'failed' if close() threw; else whether the next start must find the
   * stop recorded as clean: no for an unhealthy store, yes for a process that met no fault at all,
   * either otherwise (a fault the store had not reacted to yet, or one that did not matter).
   */
  private async cleanStop(): Promise<'failed' | CleanStop> {
    await Promise.allSettled([...this.inflight]);
    const healthy = this.store.journal.healthError === null && this.store.damage === null;
    try {
      await this.store.close();
    } catch (error) {
      this.expectFaultBehind('close', error);
      return 'failed';
    }
    this.stats.cleanStops += 1;
    this.catalog = this.catalog.reopen();
    this.generation += 1;
    if (!healthy) return false;
    return this.processFaults().length === 0 ? true : 'either';
  }

  /** `meddle` runs on the surviving disk before the restart (tests that the checker is not vacuous). */
  async powerCut(mode: PowerCutMode, expectCleanStop: CleanStop, meddle?: (disk: SimDisk) => Promise<void>): Promise<void> {
    this.stats.powerCuts += 1;
    const { disk, report } = this.disk.powerCut({ mode, random: this.cutRandom });
    this.log.note(`power cut (${mode}): ${JSON.stringify(report)}`);
    this.disk = disk;
    this.catalog = this.catalog.powerCut();
    await this.afterDeath();
    await meddle?.(disk);
    await this.restart(expectCleanStop);
  }

  async processCrash(): Promise<void> {
    this.stats.processCrashes += 1;
    this.disk = this.disk.processCrash();
    this.catalog = this.catalog.powerCut();
    await this.afterDeath();
    await this.restart(false);
  }

  /** The old process's operations finish (failing on its dead disk); what they were is in doubt. */
  private async afterDeath(): Promise<void> {
    this.generation += 1;
    let settled = false;
    const all = Promise.allSettled([...this.inflight]).then(() => void (settled = true));
    for (let turn = 0; turn < DRAIN_TURNS_MAX && !settled; turn += 1) await turns(1);
    await (settled ? all : undefined);
    if (!settled) this.fail(`${this.inflight.size} operations never settled after the process died`);
    for (const chunk of this.chunks.values()) {
      for (const op of chunk.model.inflightOps()) chunk.model.inDoubt(op, false);
    }
  }

  /** The data directory exists, durably, before the server first starts (an installed disk). */
  async install(): Promise<void> {
    this.disk.faultsPaused = true;
    await this.disk.mkdir(DIRECTORY);
    for (let path = DIRECTORY; path !== '/'; ) {
      path = path.slice(0, path.lastIndexOf('/')) || '/';
      await this.disk.syncDirectory(path);
    }
    this.disk.faultsPaused = false;
  }

  async open(): Promise<void> {
    const catalog = this.catalog;
    this.faultsMark = this.disk.faults.length;
    this.disk.faultsPaused = true;
    try {
      this.storeInstance = await ChunkStore.open({
        directory: DIRECTORY, ownerUuid: SIM_OWNER_UUID, openChunksMax: this.config.openChunksMax, journalSegmentBytesMax: this.config.segmentBytesMax,
        inPlaceWriteBytesMin: this.config.inPlaceWriteBytesMin,
        log: this.log, disk: this.disk, clock: this.clock, timers: simTimers(this.clock), openCatalog: () => catalog,
      });
    } finally {
      this.disk.faultsPaused = false;
    }
  }

  /** Opens the store on what survived and checks it; random faults stay off until that is done. */
  async restart(expectCleanStop: CleanStop): Promise<void> {
    const faultsBefore = this.disk.faults.length;
    let opened = await this.open().then(() => true, (error: unknown) => error);
    const full = this.disk.faults.slice(faultsBefore).some((fault) => fault.kind === 'noSpace');
    if (full && (opened !== true || this.store.healthProblem !== null)) {
      // The disk was too full to restart: the operator makes room and starts the server again.
      // Whatever the first attempt did, the second must restore everything acknowledged.
      this.log.note(`disk full at the restart (${opened === true ? this.store.healthProblem : errorText(opened)}): room is made, and the server starts again`);
      this.stats.fullRestarts += 1;
      this.diskOptions = { ...this.diskOptions, faults: { ...this.diskOptions.faults, capacityPages: Number.POSITIVE_INFINITY } };
      this.disk = this.disk.processCrash(this.diskOptions);
      this.catalog = this.catalog.powerCut();
      this.generation += 1;
      expectCleanStop = false;
      opened = await this.open().then(() => true, (error: unknown) => error);
    }
    if (opened !== true) {
      this.fail(`the store did not open after the restart: ${errorText(opened)}`);
      return;
    }
    if (expectCleanStop !== 'either' && this.store.previousStopClean !== expectCleanStop) {
      this.fail(`previousStopClean is ${this.store.previousStopClean}, expected ${expectCleanStop}`);
    }
    if (this.store.damage !== null && this.disk.faults.length > faultsBefore) {
      // A fault during the start kept records from being replayed: the store serves what it has
      // and says so, and its journal must be kept for the next start, which must restore it all.
      this.stats.damagedStarts += 1;
      this.log.note(`damaged start (${this.store.damage}): data checks wait for the next start`);
      if (this.store.journal.healthError === null) this.fail(`a start that could not replay its journal takes writes: ${this.store.damage}`);
      return;
    }
    this.disk.faultsPaused = true;
    try {
      await this.verifyAll();
    } finally {
      this.disk.faultsPaused = false;
    }
  }

  async verifyAll(): Promise<void> {
    const store = this.store;
    if (store.damage !== null) this.fail(`the store reports damage after the restart: ${store.damage}`);
    for (const chunk of [...this.chunks.values()]) await this.verifyChunk(chunk);
    const listed = store.listChunks(0, 1_000_000).map((meta) => meta.chunkId);
    const unknown = listed.filter((chunkId) => !this.chunks.has(chunkId));
    if (unknown.length > 0) this.fail(`chunks nobody created are listed: ${unknown.join(', ')}`);
    if (store.journal.damagedRecordsTotal > 0 && this.problem === null) {
      // Every acknowledged change is there: the damage report was about unacknowledged records.
      this.stats.falseJournalDamage += 1;
      this.log.note('the journal reported damage, yet nothing acknowledged is missing');
    }
  }

  private async verifyChunk(chunk: SimChunk): Promise<void> {
    const meta = this.store.getMeta(chunk.chunkId);
    if (meta === undefined) {
      if (chunk.exists === 'acked') this.fail(`acknowledged chunk ${chunk.chunkId} is gone`);
      else this.chunks.delete(chunk.chunkId);
      return;
    }
    chunk.exists = 'acked';
    if (meta.volumeId !== VOLUME_ID || meta.sizeBytes !== chunk.model.sizeBytes) this.fail(`chunk ${chunk.chunkId} has a wrong record`);
    const legal = meta.version === chunk.version || (meta.version > chunk.version && chunk.versionsInDoubt.has(meta.version));
    if (!legal) this.fail(`chunk ${chunk.chunkId} is at version ${meta.version}; acknowledged ${chunk.version}, in doubt ${[...chunk.versionsInDoubt].join(',')}`);
    chunk.version = meta.version;
    chunk.versionsInDoubt.clear();
    await this.verifyBlocks(chunk);
  }

  /** Reads the whole chunk (block by block if a checksum fails) and pins the model to it. */
  private async verifyBlocks(chunk: SimChunk): Promise<void> {
    const size = chunk.model.sizeBytes;
    let whole: Buffer | null = null;
    try {
      whole = await this.store.read(chunk.chunkId, null, 0, size);
    } catch (error) {
      if (errorCode(error) !== 'ERR_CHECKSUM') return this.fail(`reading chunk ${chunk.chunkId} after the restart failed: ${errorText(error)}`);
    }
    const problemsBefore = this.problems.length;
    for (let block = 0; block < size / BLOCK && this.problems.length === problemsBefore; block += 1) {
      let bytes = whole?.subarray(block * BLOCK, (block + 1) * BLOCK);
      if (bytes === undefined) {
        try {
          bytes = await this.store.read(chunk.chunkId, null, block * BLOCK, BLOCK);
        } catch (error) {
          if (errorCode(error) === 'ERR_CHECKSUM' && chunk.model.anyTorn(block * BLOCK, BLOCK)) {
            this.stats.tornReads += 1;
            continue;
          }
          return this.fail(`reading chunk ${chunk.chunkId} block ${block} after the restart failed: ${errorText(error)}`);
        }
      }
      const problem = chunk.model.observe(block, bytes);
      if (problem !== null) this.fail(`after the restart, chunk ${chunk.chunkId}: ${problem}`);
    }
  }

  // ---- for scripted scenarios ---------------------------------------------------------------------------

  chunk(chunkId: number): SimChunk {
    const chunk = this.chunks.get(chunkId);
    assert(chunk !== undefined, `sim chunk ${chunkId}`);
    return chunk;
  }

  get inflightCount(): number {
    return this.inflight.size;
  }

  /** Starts an operation without waiting for it (it settles in the model by itself). */
  start(run: () => Promise<unknown>): void {
    this.launch(run);
  }

  async settleAll(): Promise<void> {
    await Promise.allSettled([...this.inflight]);
  }
}

/** Runs one seed of the random workload; the first problem found, or null. */
export async function runStoreSeed(config: StoreSimConfig): Promise<{ problem: string | null; stats: StoreSimStats; log: string }> {
  const sim = new StoreSim(config);
  try {
    await sim.runRandom();
  } catch (error) {
    sim.fail(`the simulation threw: ${error instanceof Error ? error.stack ?? error.message : String(error)}`);
  }
  return { problem: sim.report(), stats: sim.stats, log: sim.log.tail() };
}
