// What each 4 KiB block of a chunk may legally hold, for seeded tests of the chunk store under
// power cuts and disk faults. The checker behind "every acknowledged write reads back, and nothing
// reads back that was never written".
//
// A block has a set of possible states. A state is the block's bytes plus the operations still in
// flight that those bytes already include. The set is kept closed: any operation in flight may be
// applied next, in any order (the store's range lock picks an order the test cannot see). So:
// - an operation starts: the set grows by every state with it (and the other ones in flight)
//   applied on top;
// - it is acknowledged: only the states that include it stay (and forget it);
// - it was refused before it changed anything (a version or checksum error): only the states
//   without it stay;
// - it failed otherwise, or was in flight at a power cut: in doubt, both kinds stay (its journal
//   record may replay later, or may never have reached the disk);
// - a read must return, for each block it touches, the bytes of a state that existed at some
//   moment between its start and its end (the states at its start, closed under the operations in
//   flight then or started since);
// - after a power cut and a restart nothing is in flight, and one read pins each block to what it
//   holds (the states are narrowed to it).
// A failed chunk-file write can leave a block whose bytes no longer match its checksum until it is
// rewritten whole; such blocks are flagged `tornPossible` and may fail reads with ERR_CHECKSUM.
//
// Non-goals: atomicity across blocks (the store does not promise it for writes in doubt).

import { crc32c } from '@node-rs/crc32';
import { assert } from '../../src/util/assert.ts';

export const BLOCK = 4096;
/** More states than this on one block means the workload let too much overlap be in flight. */
const STATES_MAX = 256;
const ZERO_BLOCK = Buffer.alloc(BLOCK);

export interface ModelOp {
  readonly id: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  /** The bytes written; null for a zeroing. */
  readonly data: Buffer | null;
}

interface BlockState {
  readonly bytes: Buffer;
  /** Ids of in-flight operations these bytes include, ascending. */
  readonly applied: readonly number[];
}

interface Block {
  states: BlockState[];
  tornPossible: boolean;
}

/** The possible states of each block touched by a read, taken when the read starts. */
export interface ReadToken {
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly states: ReadonlyArray<readonly BlockState[]>;
  readonly startedOps: number;
}

export class ChunkModel {
  readonly sizeBytes: number;
  private readonly blocks: Block[] = [];
  private readonly inflight = new Map<number, ModelOp>();
  /** Every operation begun, in order (reads look at the ones begun while they ran). */
  private readonly begun: ModelOp[] = [];

  constructor(sizeBytes: number) {
    assert(sizeBytes % BLOCK === 0, 'chunks hold whole blocks');
    this.sizeBytes = sizeBytes;
    for (let block = 0; block < sizeBytes / BLOCK; block += 1) {
      this.blocks.push({ states: [{ bytes: ZERO_BLOCK, applied: [] }], tornPossible: false });
    }
  }

  get inflightCount(): number {
    return this.inflight.size;
  }

  /** Whether an operation in flight touches any block of the range. */
  overlapsInflight(offsetBytes: number, lengthBytes: number): boolean {
    for (const op of this.inflight.values()) {
      if (touchesBlocks(op, blockOf(offsetBytes), blockOf(offsetBytes + lengthBytes - 1))) return true;
    }
    return false;
  }

  begin(op: ModelOp): void {
    assert(op.lengthBytes > 0 && op.offsetBytes + op.lengthBytes <= this.sizeBytes, 'model op inside its chunk');
    this.inflight.set(op.id, op);
    this.begun.push(op);
    this.forBlocks(op, (block, index) => {
      block.states = closeUnder(block.states, [op], this.inflightOn(index), index);
    });
  }

  ack(op: ModelOp): void {
    this.settle(op, (state) => state.applied.includes(op.id));
    this.forBlocks(op, (block, index) => {
      if (coversBlock(op, index)) block.tornPossible = false;
    });
  }

  /** Refused before it changed anything. */
  notApplied(op: ModelOp): void {
    this.settle(op, (state) => !state.applied.includes(op.id));
  }

  /** Failed or cut off: may or may not be (or become, by replay) part of the chunk. */
  inDoubt(op: ModelOp, torn: boolean): void {
    this.settle(op, () => true);
    if (torn) this.forBlocks(op, (block) => void (block.tornPossible = true));
  }

  /** Ids of the operations still in flight (for a power cut: they all end in doubt). */
  inflightOps(): ModelOp[] {
    return [...this.inflight.values()];
  }

  anyTorn(offsetBytes: number, lengthBytes: number): boolean {
    for (let index = blockOf(offsetBytes); index <= blockOf(offsetBytes + lengthBytes - 1); index += 1) {
      if (this.block(index).tornPossible) return true;
    }
    return false;
  }

  readStart(offsetBytes: number, lengthBytes: number): ReadToken {
    const states: BlockState[][] = [];
    for (let index = blockOf(offsetBytes); index <= blockOf(offsetBytes + lengthBytes - 1); index += 1) {
      states.push(this.block(index).states);
    }
    return { offsetBytes, lengthBytes, states, startedOps: this.begun.length };
  }

  /** Null when `bytes` is a legal result of the read, else what is wrong. */
  readCheck(token: ReadToken, bytes: Buffer): string | null {
    if (bytes.length !== token.lengthBytes) return `read returned ${bytes.length} bytes, asked ${token.lengthBytes}`;
    const first = blockOf(token.offsetBytes);
    const since = this.begun.slice(token.startedOps);
    for (const [position, startStates] of token.states.entries()) {
      const index = first + position;
      const { from, to } = clip(token.offsetBytes, token.lengthBytes, index);
      const seen = bytes.subarray(from - token.offsetBytes, to - token.offsetBytes);
      const startIds = new Set(startStates.flatMap((state) => state.applied));
      const started = since.filter((op) => touchesBlocks(op, index, index));
      const possible = closeUnder(startStates, started, [...started, ...this.opsById(startIds)], index);
      const inBlock = { from: from - index * BLOCK, to: to - index * BLOCK };
      if (!possible.some((state) => state.bytes.subarray(inBlock.from, inBlock.to).equals(seen))) {
        return `block ${index} bytes ${inBlock.from}..${inBlock.to} read ${describe(seen)}; possible: ${possible.map((s) => describe(s.bytes.subarray(inBlock.from, inBlock.to))).join(' | ')}`;
      }
    }
    return null;
  }

  /** After a restart, with nothing in flight: the block holds `bytes`; null if that is legal. */
  observe(index: number, bytes: Buffer): string | null {
    assert(this.inflight.size === 0, 'observe only with nothing in flight');
    const block = this.block(index);
    const kept = block.states.filter((state) => state.bytes.equals(bytes));
    if (kept.length === 0) {
      return `block ${index} holds ${describe(bytes)}; possible: ${block.states.map((s) => describe(s.bytes)).join(' | ')}`;
    }
    block.states = kept;
    return null;
  }

  stateCount(index: number): number {
    return this.block(index).states.length;
  }

  private settle(op: ModelOp, keep: (state: BlockState) => boolean): void {
    assert(this.inflight.delete(op.id), 'settling an operation in flight');
    this.forBlocks(op, (block) => {
      const kept: BlockState[] = [];
      for (const state of block.states) {
        if (!keep(state)) continue;
        const next = state.applied.includes(op.id) ? { bytes: state.bytes, applied: state.applied.filter((id) => id !== op.id) } : state;
        if (!kept.some((other) => sameState(other, next))) kept.push(next);
      }
      assert(kept.length > 0, `operation ${op.id} leaves its blocks some possible state`);
      block.states = kept;
    });
  }

  private forBlocks(op: ModelOp, visit: (block: Block, index: number) => void): void {
    for (let index = blockOf(op.offsetBytes); index <= blockOf(op.offsetBytes + op.lengthBytes - 1); index += 1) {
      visit(this.block(index), index);
    }
  }

  private inflightOn(index: number): ModelOp[] {
    return [...this.inflight.values()].filter((op) => touchesBlocks(op, index, index));
  }

  private opsById(ids: ReadonlySet<number>): ModelOp[] {
    return this.begun.filter((op) => ids.has(op.id));
  }

  private block(index: number): Block {
    const block = this.blocks[index];
    assert(block !== undefined, `block ${index} inside the chunk`);
    return block;
  }
}

/** Sets of states stay small (a few per block), so a linear search beats hashing 4 KiB. */
function sameState(a: BlockState, b: BlockState): boolean {
  if (a.applied.length !== b.applied.length) return false;
  for (const [i, id] of a.applied.entries()) if (b.applied[i] !== id) return false;
  return a.bytes.equals(b.bytes);
}

/**
 * `states`, already closed under the operations of `ops` that are not in `newOps`, plus every
 * result of applying, in any order, operations of `ops` not yet in a state, starting from the
 * states that apply one of `newOps` (only those are new: the rest is there already).
 */
function closeUnder(states: readonly BlockState[], newOps: readonly ModelOp[], ops: readonly ModelOp[], index: number): BlockState[] {
  const all = [...states];
  const work: BlockState[] = [];
  const add = (state: BlockState, op: ModelOp): void => {
    if (state.applied.includes(op.id)) return;
    const next = { bytes: applyToBlock(op, index, state.bytes), applied: [...state.applied, op.id].sort((a, b) => a - b) };
    if (all.some((other) => sameState(other, next))) return;
    all.push(next);
    work.push(next);
    assert(all.length <= STATES_MAX, `block ${index}: more than ${STATES_MAX} possible states (too much overlap in flight)`);
  };
  for (const state of states) for (const op of newOps) add(state, op);
  for (let state = work.pop(); state !== undefined; state = work.pop()) {
    for (const op of ops) add(state, op);
  }
  return all;
}

function applyToBlock(op: ModelOp, index: number, bytes: Buffer): Buffer {
  const { from, to } = clip(op.offsetBytes, op.lengthBytes, index);
  if (from >= to) return bytes;
  const next = copyOfBlock(bytes);
  const blockStart = index * BLOCK;
  if (op.data === null) next.fill(0, from - blockStart, to - blockStart);
  else next.set(op.data.subarray(from - op.offsetBytes, to - op.offsetBytes), from - blockStart);
  return next;
}

/** Blocks are copied into slabs: a fresh 4 KiB ArrayBuffer per copy costs more than the rest of the model. */
let slab = Buffer.allocUnsafeSlow(64 * BLOCK);
let slabUsed = 0;

function copyOfBlock(bytes: Buffer): Buffer {
  if (slabUsed === slab.length) {
    slab = Buffer.allocUnsafeSlow(slab.length);
    slabUsed = 0;
  }
  const copy = slab.subarray(slabUsed, slabUsed + BLOCK);
  slabUsed += BLOCK;
  copy.set(bytes);
  return copy;
}

/** The part of [offset, offset + length) inside block `index`, in chunk bytes. */
function clip(offsetBytes: number, lengthBytes: number, index: number): { from: number; to: number } {
  return { from: Math.max(offsetBytes, index * BLOCK), to: Math.min(offsetBytes + lengthBytes, (index + 1) * BLOCK) };
}

function blockOf(offsetBytes: number): number {
  return Math.floor(offsetBytes / BLOCK);
}

function touchesBlocks(op: ModelOp, first: number, last: number): boolean {
  return blockOf(op.offsetBytes) <= last && blockOf(op.offsetBytes + op.lengthBytes - 1) >= first;
}

function coversBlock(op: ModelOp, index: number): boolean {
  return op.offsetBytes <= index * BLOCK && op.offsetBytes + op.lengthBytes >= (index + 1) * BLOCK;
}

/** Short description of bytes for failure messages: zero, or crc and the first bytes. */
export function describe(bytes: Buffer): string {
  if (bytes.every((byte) => byte === 0)) return `zeroes(${bytes.length})`;
  return `crc ${crc32c(bytes).toString(16)} [${bytes.subarray(0, 8).toString('hex')}..]`;
}
