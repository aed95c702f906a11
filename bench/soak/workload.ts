// The soak's guest: workers that keep requests in flight on the NBD connections of the server the
// workload is on now (the harness moves it between servers), mostly reads of blocks drawn from a
// skewed distribution and a few writes, every read checked against the model (model.ts).
//
// Reads: 4 KiB at a random sector of the block (70 %), the whole 64 KiB block (25 %: what the
// cache keeps), 128 KiB from a random sector of it, across the next block (5 %: a read the cache
// answers only when both blocks are in it). Writes: the whole block or one 4 KiB sector of it
// (half and half: a sector write must drop the whole cached block). One write per block at a time.
//
// A request that fails (a server killed under it, a fenced server, a connection closed) counts as
// failed I/O under the phase the harness names (`phase`), and is not retried: the next request
// goes to whatever connection is current.

import { FENCED_GENERATION, SECTOR_BYTES, type ReadCheck, type SectorProblem, type SoakModel } from './model.ts';

/** One NBD connection as the workload uses it (test/helpers/nbd_pipelined.ts's PipelinedNbdClient is one). */
export interface SoakClient {
  readonly open: boolean;
  /** The bytes; rejects when the server answers with an error or the connection is gone. */
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  /** The NBD error number of the reply (0: acknowledged); rejects when the connection is gone. */
  write(offsetBytes: number, data: Buffer): Promise<number>;
  close(): void;
}

export const BLOCK_BYTES = 64 * 1024;
const SECTORS_PER_BLOCK = BLOCK_BYTES / SECTOR_BYTES;

export interface Tally {
  /** Reads answered and checked. */
  reads: number;
  /** 4 KiB sectors checked. */
  sectors: number;
  /** Sectors newer than what was committed when the read was sent (a write in flight meanwhile). */
  ahead: number;
  stale: number;
  wrong: number;
  /** Reads with at least one stale sector, with at least one wrong one. */
  staleReads: number;
  wrongReads: number;
  failedReads: number;
  writes: number;
  failedWrites: number;
}

export function emptyTally(): Tally {
  return { reads: 0, sectors: 0, ahead: 0, stale: 0, wrong: 0, staleReads: 0, wrongReads: 0, failedReads: 0, writes: 0, failedWrites: 0 };
}

/** What the probe of a fenced server saw. */
export interface ProbeTally extends Tally {
  /** Probe writes the fenced server refused (what must happen). */
  fencedWritesRefused: number;
  /** Probe writes it acknowledged: a fenced writer's write accepted. */
  fencedWritesAcknowledged: number;
}

export interface Problem extends SectorProblem {
  readonly server: string;
  readonly phase: string;
  readonly atMs: number;
  readonly readOffsetBytes: number;
  readonly readLengthBytes: number;
}

export interface Target {
  readonly server: string;
  readonly clients: readonly SoakClient[];
}

export interface WorkloadOptions {
  readonly model: SoakModel;
  readonly random: () => number;
  /** Draws a 64 KiB block index (the skewed distribution). */
  readonly pickBlock: () => number;
  /** Requests in flight at once (spread over the target's connections). */
  readonly workers: number;
  /** Share of requests that are writes (0..1). */
  readonly writeShare: number;
  /** The workers stop once this many reads were checked (see Workload.readsWanted). */
  readonly readsWanted: number;
  /** Problems kept in detail (all are counted). */
  readonly problemsKept?: number;
  /** Called once per target when its connections are all gone outside the harness's doing. */
  readonly onConnectionsLost?: (target: Target) => void;
}

export class Workload {
  readonly total: Tally = emptyTally();
  readonly byServer = new Map<string, Tally>();
  readonly probes = new Map<string, ProbeTally>();
  /** Failed requests by the phase they failed in ('steady' outside the harness's faults). */
  readonly failuresByPhase = new Map<string, number>();
  readonly problems: Problem[] = [];
  /** Named by the harness while it injects a fault. */
  phase = 'steady';
  /** The workers stop once this many reads were checked; the harness may move it (to finish its faults first). */
  readsWanted: number;
  private readonly options: WorkloadOptions;
  private readonly blocks: number;
  private target_: Target | null = null;
  private targetWaiters: Array<() => void> = [];
  private readonly writing = new Set<number>();
  private inFlight = 0;
  private idleWaiters: Array<() => void> = [];
  private stopping = false;
  private readonly startedAtMs = performance.now();
  private lostReported: Target | null = null;

  constructor(options: WorkloadOptions) {
    this.options = options;
    this.readsWanted = options.readsWanted;
    this.blocks = Math.floor((options.model.sectors * SECTOR_BYTES) / BLOCK_BYTES);
  }

  get target(): Target | null {
    return this.target_;
  }

  get done(): boolean {
    return this.stopping || this.total.reads >= this.readsWanted;
  }

  /** Moves the workload (null: nowhere; the workers wait). Requests already sent finish where they are. */
  setTarget(target: Target | null): void {
    this.target_ = target;
    this.lostReported = null;
    if (target !== null) this.tallyOf(target.server);
    const waiters = this.targetWaiters;
    this.targetWaiters = [];
    for (const wake of waiters) wake();
  }

  /** Runs the workers until `readsWanted` or stop(). */
  async run(): Promise<void> {
    await Promise.all(Array.from({ length: this.options.workers }, (_, index) => this.worker(index)));
  }

  stop(): void {
    this.stopping = true;
    this.setTarget(this.target_);
  }

  /** Resolves when no request of the workers is in flight. */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Probes a fenced server's connections until `untilMs` (performance.now()), one request at a
   * time: reads, checked like the workload's (a fenced server may fail them, never answer old
   * bytes), and writes of FENCED_GENERATION sectors, which it must refuse.
   */
  async probe(server: string, clients: readonly SoakClient[], untilMs: number): Promise<ProbeTally> {
    const tally: ProbeTally = { ...emptyTally(), fencedWritesRefused: 0, fencedWritesAcknowledged: 0 };
    this.probes.set(server, tally);
    const { model, random } = this.options;
    for (let step = 0; performance.now() < untilMs && !this.stopping; step += 1) {
      const client = clients[step % clients.length];
      if (client === undefined || !client.open) break;
      const block = this.options.pickBlock();
      if (step % 2 === 0) {
        const whole = random() < 0.5;
        const first = block * SECTORS_PER_BLOCK + (whole ? 0 : Math.floor(random() * SECTORS_PER_BLOCK));
        await this.checkedRead(client, server, first, whole ? SECTORS_PER_BLOCK : 1, tally);
      } else {
        const sector = block * SECTORS_PER_BLOCK + Math.floor(random() * SECTORS_PER_BLOCK);
        try {
          const error = await client.write(sector * SECTOR_BYTES, model.content(sector, 1, FENCED_GENERATION));
          if (error === 0) tally.fencedWritesAcknowledged += 1;
          else tally.fencedWritesRefused += 1;
        } catch {
          tally.fencedWritesRefused += 1;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    return tally;
  }

  tallyOf(server: string): Tally {
    let tally = this.byServer.get(server);
    if (tally === undefined) {
      tally = emptyTally();
      this.byServer.set(server, tally);
    }
    return tally;
  }

  private async worker(index: number): Promise<void> {
    const { random } = this.options;
    while (!this.done) {
      const target = this.target_;
      const client = target?.clients[index % target.clients.length];
      if (target === null || client === undefined || !client.open) {
        if (target !== null && target.clients.every((candidate) => !candidate.open) && this.lostReported !== target) {
          this.lostReported = target;
          this.options.onConnectionsLost?.(target);
        }
        await new Promise<void>((resolve) => this.targetWaiters.push(resolve));
        continue;
      }
      this.inFlight += 1;
      try {
        const block = this.options.pickBlock();
        const ok = random() < this.options.writeShare && !this.writing.has(block)
          ? await this.write(client, target.server, block)
          : await this.read(client, target.server, block);
        // Answered with an error on a live connection: a moment before the next, as a guest's retry.
        if (!ok && client.open) await new Promise((resolve) => setTimeout(resolve, 20));
      } finally {
        this.inFlight -= 1;
        if (this.inFlight === 0) {
          const waiters = this.idleWaiters;
          this.idleWaiters = [];
          for (const wake of waiters) wake();
        }
      }
    }
  }

  private read(client: SoakClient, server: string, block: number): Promise<boolean> {
    const { random, model } = this.options;
    const kind = random();
    let first = block * SECTORS_PER_BLOCK;
    let count = SECTORS_PER_BLOCK;
    if (kind < 0.7) {
      first += Math.floor(random() * SECTORS_PER_BLOCK);
      count = 1;
    } else if (kind >= 0.95 && block + 1 < this.blocks) {
      first += Math.floor(random() * SECTORS_PER_BLOCK);
      count = 2 * SECTORS_PER_BLOCK;
    }
    count = Math.min(count, model.sectors - first);
    return this.checkedRead(client, server, first, count, null);
  }

  /** False when the read failed. */
  private async checkedRead(client: SoakClient, server: string, first: number, count: number, probe: Tally | null): Promise<boolean> {
    const { model } = this.options;
    const tallies = probe === null ? [this.total, this.tallyOf(server)] : [probe];
    const floors = model.floors(first, count);
    let data: Buffer;
    try {
      data = await client.read(first * SECTOR_BYTES, count * SECTOR_BYTES);
    } catch (error) {
      for (const tally of tallies) tally.failedReads += 1;
      this.noteFailure();
      return false;
    }
    const check = model.verify(data, first, floors);
    for (const tally of tallies) addCheck(tally, check);
    // What a fenced server answers wrongly counts in the totals too (its reads do not count toward the target).
    if (probe !== null) {
      this.total.stale += check.stale;
      this.total.wrong += check.wrong;
      if (check.stale > 0) this.total.staleReads += 1;
      if (check.wrong > 0) this.total.wrongReads += 1;
    }
    for (const problem of check.problems) {
      if (this.problems.length >= (this.options.problemsKept ?? 50)) break;
      this.problems.push({
        ...problem, server: probe === null ? server : `${server} (fenced)`, phase: this.phase,
        atMs: performance.now() - this.startedAtMs, readOffsetBytes: first * SECTOR_BYTES, readLengthBytes: count * SECTOR_BYTES,
      });
    }
    return true;
  }

  /** False when it failed. */
  private async write(client: SoakClient, server: string, block: number): Promise<boolean> {
    const { random, model } = this.options;
    const whole = random() < 0.5;
    const first = block * SECTORS_PER_BLOCK + (whole ? 0 : Math.floor(random() * SECTORS_PER_BLOCK));
    const count = whole ? SECTORS_PER_BLOCK : 1;
    const tallies = [this.total, this.tallyOf(server)];
    this.writing.add(block);
    try {
      const { generations, data } = model.beginWrite(first, count);
      let error: number;
      try {
        error = await client.write(first * SECTOR_BYTES, data);
      } catch {
        error = -1;
      }
      if (error === 0) {
        model.acknowledge(first, generations);
        for (const tally of tallies) tally.writes += 1;
      } else {
        for (const tally of tallies) tally.failedWrites += 1;
        this.noteFailure();
        return false;
      }
      return true;
    } finally {
      this.writing.delete(block);
    }
  }

  private noteFailure(): void {
    this.failuresByPhase.set(this.phase, (this.failuresByPhase.get(this.phase) ?? 0) + 1);
  }
}

function addCheck(tally: Tally, check: ReadCheck): void {
  tally.reads += 1;
  tally.sectors += check.sectors;
  tally.ahead += check.ahead;
  tally.stale += check.stale;
  tally.wrong += check.wrong;
  if (check.stale > 0) tally.staleReads += 1;
  if (check.wrong > 0) tally.wrongReads += 1;
}
