// What a volume must hold after a power cut, block by block (4 KiB), and the writers that build
// that knowledge from NBD acknowledgements.
//
// Every write carries a unique id, and each of its blocks holds bytes derived from (id, block):
// a header naming both, then pseudo-random bytes. Reading a block back therefore says which write
// it holds, or that it holds zeroes, or garbage (anything else: a torn or mixed block, bytes from
// another block). Per block the model keeps
//   - `base`: the last acknowledged write (0: never written, reads as zeroes),
//   - `doubtful`: writes whose outcome is unknown (in flight at a cut, or answered with an error),
//   - `inFlight`: writes sent and not answered yet.
// After a cut a block must hold `base` or one of `doubtful`, byte for byte. A write acknowledged
// by a newer writer generation (a forced takeover) supersedes every older writer's write to the
// block, answered or not: the old holder is fenced before the new one writes.
//
// A writer never has two writes in flight on one block, and never writes a block whose previous
// write is in doubt (until a verification settles it), so "which write should be there" always
// has one answer per acknowledged state.

import type { PipelinedNbdClient } from './nbd_pipelined.ts';

export const BLOCK_BYTES = 4096;
const MAGIC = 0x50435554; // "PCUT"

/** The 4 KiB that write `writeId` puts in block `block`. */
export function blockContent(writeId: number, block: number): Buffer {
  const bytes = Buffer.allocUnsafe(BLOCK_BYTES);
  bytes.writeUInt32BE(MAGIC, 0);
  bytes.writeUInt32BE(writeId, 4);
  bytes.writeUInt32BE(block, 8);
  let x = (Math.imul(writeId, 0x9e3779b1) ^ Math.imul(block + 1, 0x85ebca77)) >>> 0 || 1;
  for (let offset = 12; offset < BLOCK_BYTES; offset += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes.writeUInt32LE(x >>> 0, offset);
  }
  return bytes;
}

function writeContent(writeId: number, firstBlock: number, blocks: number): Buffer {
  return Buffer.concat(Array.from({ length: blocks }, (_, i) => blockContent(writeId, firstBlock + i)));
}

/** Which write a block read back holds: 0 for zeroes, null for anything no write produced. */
export function identifyBlock(bytes: Buffer, block: number): number | null {
  if (bytes.every((byte) => byte === 0)) return 0;
  if (bytes.readUInt32BE(0) !== MAGIC || bytes.readUInt32BE(8) !== block) return null;
  const writeId = bytes.readUInt32BE(4);
  return blockContent(writeId, block).equals(bytes) ? writeId : null;
}

interface WriteRecord {
  readonly generation: number;
  readonly firstBlock: number;
  readonly blocks: number;
  /** The model's phase (a subtest) when the write was sent, and what became of it. */
  readonly phase: string;
  outcome: 'in flight' | 'acknowledged' | 'in doubt';
}

export interface Verification {
  readonly blocks: number;
  /** Blocks whose content was certain (no write in doubt): they must hold exactly `base`. */
  readonly certainBlocks: number;
  /** Blocks holding an acknowledged write (not zeroes). */
  readonly acknowledgedBlocks: number;
  /** Blocks with writes in doubt, and of them those found holding one of those writes. */
  readonly doubtfulBlocks: number;
  readonly doubtfulLanded: number;
  /** Human-readable problems, at most 20, and their total count. */
  readonly problems: readonly string[];
  readonly problemCount: number;
  /** The first few blocks with a problem (for a look at each replica's copy). */
  readonly problemBlocks: readonly number[];
}

export class WriteModel {
  readonly blocks: number;
  private readonly base: Int32Array;
  private readonly baseGeneration: Uint8Array;
  private readonly doubtful: Array<number[] | undefined>;
  private readonly inFlight: Array<number[] | undefined>;
  private readonly writes = new Map<number, WriteRecord>();
  private nextWriteId = 1;
  /** What each block was last found holding, and in which phase (for diagnostics). */
  private readonly lastSeen = new Map<number, { found: number; phase: string }>();
  /** Named by the tests (one per cut point); recorded with every write and verification. */
  phase = 'start';
  /**
   * The generation of the volume's current writer: 1, one more after each forced takeover. A
   * writer takes it when created; a takeover raises it before the new holder's writer starts.
   */
  generation = 1;

  constructor(volumeBytes: number) {
    this.blocks = volumeBytes / BLOCK_BYTES;
    this.base = new Int32Array(this.blocks);
    this.baseGeneration = new Uint8Array(this.blocks);
    this.doubtful = new Array<number[] | undefined>(this.blocks);
    this.inFlight = new Array<number[] | undefined>(this.blocks);
  }

  /** Whether a writer of `generation` may write `block` now. */
  writable(block: number, generation: number): boolean {
    const own = (ids: number[] | undefined): boolean => (ids ?? []).some((id) => (this.writes.get(id)?.generation ?? 0) >= generation);
    return !own(this.inFlight[block]) && !own(this.doubtful[block]);
  }

  /** Registers a write about to be sent; returns its id and bytes. */
  begin(generation: number, firstBlock: number, blocks: number): { writeId: number; data: Buffer } {
    const writeId = this.nextWriteId;
    this.nextWriteId += 1;
    this.writes.set(writeId, { generation, firstBlock, blocks, phase: this.phase, outcome: 'in flight' });
    for (let block = firstBlock; block < firstBlock + blocks; block += 1) (this.inFlight[block] ??= []).push(writeId);
    return { writeId, data: writeContent(writeId, firstBlock, blocks) };
  }

  /** The write was acknowledged: it is now what its blocks must hold. */
  acknowledge(writeId: number): void {
    const write = this.record(writeId);
    write.outcome = 'acknowledged';
    for (let block = write.firstBlock; block < write.firstBlock + write.blocks; block += 1) {
      this.leaveFlight(block, writeId);
      if (write.generation < this.baseGeneration[block]!) continue; // superseded by a newer writer's acknowledged write
      this.base[block] = writeId;
      this.baseGeneration[block] = write.generation;
      const left = (this.doubtful[block] ?? []).filter((id) => this.record(id).generation > write.generation);
      this.doubtful[block] = left.length === 0 ? undefined : left;
    }
  }

  /** The write's outcome is unknown (an error reply, a lost connection, a cut while in flight). */
  doubt(writeId: number): void {
    const write = this.record(writeId);
    write.outcome = 'in doubt';
    for (let block = write.firstBlock; block < write.firstBlock + write.blocks; block += 1) {
      this.leaveFlight(block, writeId);
      if (write.generation < this.baseGeneration[block]!) continue; // fenced: cannot land after the newer write
      (this.doubtful[block] ??= []).push(writeId);
    }
  }

  /** Writes sent and not answered. */
  get inFlightWrites(): number {
    const ids = new Set<number>();
    for (const list of this.inFlight) for (const id of list ?? []) ids.add(id);
    return ids.size;
  }

  /** Bytes of the writes sent and not answered. */
  get inFlightBytes(): number {
    return this.inFlight.filter((list) => list !== undefined && list.length > 0).length * BLOCK_BYTES;
  }

  /** Blocks with a write in doubt. */
  get doubtfulBlocks(): number {
    return this.doubtful.filter((list) => list !== undefined).length;
  }

  /**
   * Checks every block of [firstBlock, firstBlock + blocks) against what was read, then takes
   * what was read as the blocks' new state (a settled in-doubt block holds what it holds).
   */
  verify(firstBlock: number, bytes: Buffer): Verification {
    const count = bytes.length / BLOCK_BYTES;
    const problems: string[] = [];
    const problemBlocks: number[] = [];
    let problemCount = 0;
    let certainBlocks = 0;
    let acknowledgedBlocks = 0;
    let doubtfulBlocks = 0;
    let doubtfulLanded = 0;
    for (let i = 0; i < count; i += 1) {
      const block = firstBlock + i;
      const found = identifyBlock(bytes.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES), block);
      const base = this.base[block]!;
      const doubts = this.doubtful[block] ?? [];
      const allowed = [base, ...doubts];
      if (doubts.length === 0) certainBlocks += 1;
      else doubtfulBlocks += 1;
      if (base !== 0 && found === base) acknowledgedBlocks += 1;
      if (found !== null && doubts.includes(found)) doubtfulLanded += 1;
      if (found === null || !allowed.includes(found)) {
        problemCount += 1;
        if (problems.length < 20) problems.push(this.describe(block, found, base, doubts));
        if (problemBlocks.length < 4) problemBlocks.push(block);
      }
      if (found !== null) {
        this.base[block] = found;
        this.doubtful[block] = undefined;
        if (found !== 0) this.lastSeen.set(block, { found, phase: this.phase });
      }
    }
    return { blocks: count, certainBlocks, acknowledgedBlocks, doubtfulBlocks, doubtfulLanded, problems, problemCount, problemBlocks };
  }

  /** A write's story, for messages: generation, phase, outcome. */
  describeWrite(writeId: number): string {
    const write = this.writes.get(writeId);
    if (write === undefined) return `#${writeId} (unknown)`;
    return `#${writeId} (generation ${write.generation}, sent in "${write.phase}", ${write.outcome}, blocks ${write.firstBlock}..${write.firstBlock + write.blocks - 1})`;
  }

  private describe(block: number, found: number | null, base: number, doubts: readonly number[]): string {
    const seen = this.lastSeen.get(block);
    const history = seen === undefined ? '' : ` [last verified holding #${seen.found} in "${seen.phase}"]`;
    const writes = [found, base, ...doubts].filter((id): id is number => id !== null && id !== 0);
    return `${this.describeProblem(block, found, base, doubts)}${history}; writes: ${[...new Set(writes)].map((id) => this.describeWrite(id)).join(', ')}`;
  }

  private describeProblem(block: number, found: number | null, base: number, doubts: readonly number[]): string {
    const at = `block ${block} (byte ${block * BLOCK_BYTES})`;
    const expected = `${base === 0 ? 'zeroes (never acknowledged a write)' : `acknowledged write #${base}`}` +
      (doubts.length === 0 ? '' : ` or in-doubt write${doubts.length > 1 ? 's' : ''} #${doubts.join(', #')}`);
    if (found === null) return `${at}: holds bytes no write produced (torn, mixed or foreign block); expected ${expected}`;
    if (found === 0) return `${at}: reads as zeroes; expected ${expected}: an acknowledged write was lost`;
    return `${at}: holds write #${found}; expected ${expected}` + (found < base ? ': an acknowledged write was lost (older content)' : '');
  }

  private record(writeId: number): WriteRecord {
    const write = this.writes.get(writeId);
    if (write === undefined) throw new Error(`unknown write #${writeId}`);
    return write;
  }

  private leaveFlight(block: number, writeId: number): void {
    const left = (this.inFlight[block] ?? []).filter((id) => id !== writeId);
    this.inFlight[block] = left.length === 0 ? undefined : left;
  }
}

export interface WriterOptions {
  readonly client: PipelinedNbdClient;
  readonly model: WriteModel;
  /** Writer generation (see WriteModel.generation); default: the model's current one. */
  readonly generation?: number;
  /** Blocks the writer chooses from. */
  readonly firstBlock: number;
  readonly blockCount: number;
  /** Largest write, in blocks (each write is 1..maxBlocks blocks). */
  readonly maxBlocks: number;
  readonly concurrency: number;
  readonly random: () => number;
  /**
   * 'random': anywhere in the range. 'fresh': each write starts in a region of `freshStrideBlocks`
   * (a chunk) no write touched yet, in random order: every write is the first one of its chunk.
   */
  readonly pattern?: 'random' | 'fresh';
  readonly freshStrideBlocks?: number;
}

/**
 * Keeps `concurrency` writes in flight through one NBD connection until stopped, the connection
 * is lost, or a write is refused (then its outcome is in doubt and the writer stops).
 */
export class Writer {
  acknowledgedWrites = 0;
  acknowledgedBytes = 0;
  /** Error replies (NBD errno) and lost connections: each leaves its write in doubt. */
  readonly failures: string[] = [];
  private readonly options: WriterOptions;
  private stopping = false;
  private active = 0;
  private readonly loops: Array<Promise<void>> = [];
  private readonly ackWaiters: Array<{ count: number; resolve: () => void }> = [];
  private freshOrder: number[] = [];
  private readonly generation: number;

  constructor(options: WriterOptions) {
    this.options = options;
    this.generation = options.generation ?? options.model.generation;
    if (options.pattern === 'fresh') {
      const stride = options.freshStrideBlocks ?? 256;
      const regions = Math.floor(options.blockCount / stride);
      this.freshOrder = Array.from({ length: regions }, (_, i) => i);
      for (let i = this.freshOrder.length - 1; i > 0; i -= 1) {
        const j = Math.floor(options.random() * (i + 1));
        [this.freshOrder[i], this.freshOrder[j]] = [this.freshOrder[j]!, this.freshOrder[i]!];
      }
    }
  }

  start(): this {
    for (let i = 0; i < this.options.concurrency; i += 1) {
      this.active += 1;
      this.loops.push(this.loop().finally(() => {
        this.active -= 1;
      }));
    }
    return this;
  }

  /** Whether every loop has ended (stopped, connection lost, a failure). */
  get ended(): boolean {
    return this.active === 0;
  }

  /** Waits until the writer ends by itself (a 'fresh' writer once every region got its write). */
  async finish(): Promise<void> {
    await Promise.all(this.loops);
  }

  /** Stops sending and waits for the writes in flight to be answered (or lost). */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.loops);
  }

  /** Resolves once `count` writes in total have been acknowledged, or rejects when the writer ended first. */
  async waitAcknowledged(count: number, timeoutMs: number): Promise<void> {
    if (this.acknowledgedWrites >= count) return;
    const waited = new Promise<void>((resolve) => this.ackWaiters.push({ count, resolve }));
    const ended = Promise.all(this.loops).then(() => {
      if (this.acknowledgedWrites < count) throw new Error(`the writer ended after ${this.acknowledgedWrites} acknowledged writes (${this.failures.join('; ')})`);
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`only ${this.acknowledgedWrites} of ${count} writes acknowledged within ${timeoutMs} ms (${this.failures.join('; ')})`)), timeoutMs);
    });
    try {
      await Promise.race([waited, ended, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async loop(): Promise<void> {
    const { client, model } = this.options;
    const generation = this.generation;
    while (!this.stopping && client.open) {
      const range = this.pick(generation);
      if (range === null) {
        if (this.options.pattern === 'fresh') break; // every chunk got its first write
        await new Promise((resolve) => setTimeout(resolve, 5));
        continue;
      }
      const { writeId, data } = model.begin(generation, range.firstBlock, range.blocks);
      let error: number;
      try {
        error = await client.write(range.firstBlock * BLOCK_BYTES, data);
      } catch (lost) {
        model.doubt(writeId);
        this.failures.push(`write #${writeId}: ${(lost as Error).message}`);
        break;
      }
      if (error !== 0) {
        model.doubt(writeId);
        this.failures.push(`write #${writeId} at block ${range.firstBlock}: NBD error ${error}`);
        break;
      }
      model.acknowledge(writeId);
      this.acknowledgedWrites += 1;
      this.acknowledgedBytes += data.length;
      for (const waiter of this.ackWaiters.filter((w) => this.acknowledgedWrites >= w.count)) {
        this.ackWaiters.splice(this.ackWaiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    }
    this.stopping = true;
  }

  private pick(generation: number): { firstBlock: number; blocks: number } | null {
    const { model, firstBlock, blockCount, maxBlocks, random } = this.options;
    const size = 1 + Math.floor(random() * maxBlocks);
    if (this.options.pattern === 'fresh') {
      const region = this.freshOrder.shift();
      if (region === undefined) return null;
      const stride = this.options.freshStrideBlocks ?? 256;
      const start = firstBlock + region * stride + Math.floor(random() * (stride - size + 1));
      return { firstBlock: start, blocks: size };
    }
    for (let attempt = 0; attempt < 20; attempt += 1) {
      const start = firstBlock + Math.floor(random() * (blockCount - size + 1));
      let free = true;
      for (let block = start; block < start + size && free; block += 1) free = model.writable(block, generation);
      if (free) return { firstBlock: start, blocks: size };
    }
    return null;
  }
}

/** Reads `[firstBlock, firstBlock + blocks)` through NBD in pieces, a few in flight. */
export async function readBlocks(client: PipelinedNbdClient, firstBlock: number, blocks: number): Promise<Buffer> {
  const pieceBlocks = 256; // 1 MiB
  const windowPieces = 4;
  const result: Buffer[] = [];
  for (let start = firstBlock; start < firstBlock + blocks; start += pieceBlocks * windowPieces) {
    const window: Array<Promise<Buffer>> = [];
    for (let piece = start; piece < Math.min(firstBlock + blocks, start + pieceBlocks * windowPieces); piece += pieceBlocks) {
      const count = Math.min(pieceBlocks, firstBlock + blocks - piece);
      window.push(client.read(piece * BLOCK_BYTES, count * BLOCK_BYTES));
    }
    result.push(...(await Promise.all(window)));
  }
  return Buffer.concat(result);
}
