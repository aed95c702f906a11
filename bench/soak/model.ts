// What every 4 KiB sector of the soak's volume must hold, and the check of every read against it
// (pure: no I/O). Each sector written carries its own header, so a read proves by itself where
// its bytes came from:
//
//   bytes 0..3    magic "SOAK"
//   bytes 4..7    crc32c of bytes 8..4095
//   bytes 8..11   the run's id (a sector of another run, or never written, does not pass)
//   bytes 12..15  the sector's index in the volume (offset / 4096)
//   bytes 16..19  the sector's generation: 1 for the prefill, +1 for each write of it
//   bytes 20..    payload, pseudo-random from (run, sector, generation)
//
// The model keeps per sector the generation of its last acknowledged write (`committed`) and the
// highest generation sent (`issued`; above `committed` while a write is in flight, or after one
// failed: its bytes may or may not have landed). A read may return any generation from the one
// committed when it was sent up to the highest one issued by the time it was answered:
// - below that: STALE (bytes older than an acknowledged write: what a cache must never give);
// - above the highest issued, a bad magic, checksum, run or sector index: WRONG;
// - FENCED_GENERATION: a write that a fenced server acknowledged or let land (WRONG as well).
// The workload never has two writes of one sector in flight, so generations land in order.

import { crc32c } from '@node-rs/crc32';

export const SECTOR_BYTES = 4096;
const MAGIC = 0x4b414f53; // "SOAK" read little-endian
const HEADER_BYTES = 20;
/** What the probe writes through a fenced server carry; the workload never issues it. */
export const FENCED_GENERATION = 0xfffffff0;

export type ProblemKind = 'stale' | 'bad magic' | 'bad checksum' | 'other run' | 'wrong sector' | 'fenced write' | 'never issued';

/** One sector that failed its check. */
export interface SectorProblem {
  readonly kind: ProblemKind;
  readonly sector: number;
  /** The generation found (null when the header could not be trusted). */
  readonly found: number | null;
  /** The oldest generation the read could return, and the newest. */
  readonly floor: number;
  readonly newest: number;
}

/** The verdict on one read: sectors checked, and how many of them were what. */
export interface ReadCheck {
  readonly sectors: number;
  /** Sectors holding the generation committed when the read was sent. */
  readonly current: number;
  /** Newer than that: a write in flight meanwhile, or one that failed but landed. */
  readonly ahead: number;
  readonly stale: number;
  readonly wrong: number;
  readonly problems: readonly SectorProblem[];
}

/** Writes sector `sector`'s content at `generation` into `target` at `offset`. */
export function fillSector(target: Buffer, offset: number, runId: number, sector: number, generation: number): void {
  target.writeUInt32LE(runId, offset + 8);
  target.writeUInt32LE(sector, offset + 12);
  target.writeUInt32LE(generation, offset + 16);
  // xorshift32 seeded from the three: every (sector, generation) has its own payload.
  let state = (Math.imul(runId ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(sector + 1, 0xc2b2ae35) ^ Math.imul(generation + 1, 0x27d4eb2f)) >>> 0;
  if (state === 0) state = 1;
  for (let at = offset + HEADER_BYTES; at < offset + SECTOR_BYTES; at += 4) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    target.writeUInt32LE(state >>> 0, at);
  }
  target.writeUInt32LE(MAGIC, offset);
  target.writeUInt32LE(crc32c(target.subarray(offset + 8, offset + SECTOR_BYTES)), offset + 4);
}

/** The header of the sector at `offset` of `data`, or why it cannot be trusted. */
export function parseSector(data: Buffer, offset: number): { runId: number; sector: number; generation: number } | 'bad magic' | 'bad checksum' {
  if (data.readUInt32LE(offset) !== MAGIC) return 'bad magic';
  if (data.readUInt32LE(offset + 4) !== crc32c(data.subarray(offset + 8, offset + SECTOR_BYTES))) return 'bad checksum';
  return { runId: data.readUInt32LE(offset + 8), sector: data.readUInt32LE(offset + 12), generation: data.readUInt32LE(offset + 16) };
}

export class SoakModel {
  readonly runId: number;
  readonly sectors: number;
  private readonly committed: Uint32Array;
  private readonly issued: Uint32Array;

  constructor(sectors: number, runId: number) {
    this.sectors = sectors;
    this.runId = runId >>> 0;
    this.committed = new Uint32Array(sectors);
    this.issued = new Uint32Array(sectors);
  }

  /** The bytes of sectors [first, first + count) at `generation` each (the prefill, a probe). */
  content(first: number, count: number, generation: number): Buffer {
    const data = Buffer.allocUnsafe(count * SECTOR_BYTES);
    for (let i = 0; i < count; i += 1) fillSector(data, i * SECTOR_BYTES, this.runId, first + i, generation);
    return data;
  }

  /** A write of sectors [first, first + count) is about to be sent: their next generations, and its bytes. */
  beginWrite(first: number, count: number): { generations: Uint32Array; data: Buffer } {
    const generations = new Uint32Array(count);
    const data = Buffer.allocUnsafe(count * SECTOR_BYTES);
    for (let i = 0; i < count; i += 1) {
      const generation = (this.issued[first + i] ?? 0) + 1;
      this.issued[first + i] = generation;
      generations[i] = generation;
      fillSector(data, i * SECTOR_BYTES, this.runId, first + i, generation);
    }
    return { generations, data };
  }

  /** The write begun with `generations` was acknowledged. (A failed one changes nothing: its generations stay possible.) */
  acknowledge(first: number, generations: Uint32Array): void {
    for (let i = 0; i < generations.length; i += 1) {
      const generation = generations[i] ?? 0;
      if (generation > (this.committed[first + i] ?? 0)) this.committed[first + i] = generation;
    }
  }

  /** The generations committed now: what a read sent now must return at least. */
  floors(first: number, count: number): Uint32Array {
    return this.committed.slice(first, first + count);
  }

  /** Checks what a read of sectors [first, ...) returned, with the floors taken when it was sent. */
  verify(data: Buffer, first: number, floors: Uint32Array): ReadCheck {
    const count = data.length / SECTOR_BYTES;
    let current = 0;
    let ahead = 0;
    let stale = 0;
    let wrong = 0;
    const problems: SectorProblem[] = [];
    for (let i = 0; i < count; i += 1) {
      const sector = first + i;
      const floor = floors[i] ?? 0;
      const newest = this.issued[sector] ?? 0;
      const header = parseSector(data, i * SECTOR_BYTES);
      let kind: ProblemKind | null = null;
      let found: number | null = null;
      if (typeof header === 'string') {
        kind = header;
      } else {
        found = header.generation;
        if (header.runId !== this.runId) kind = 'other run';
        else if (header.sector !== sector) kind = 'wrong sector';
        else if (header.generation === FENCED_GENERATION) kind = 'fenced write';
        else if (header.generation > newest) kind = 'never issued';
        else if (header.generation < floor) kind = 'stale';
        else if (header.generation > floor) ahead += 1;
        else current += 1;
      }
      if (kind === 'stale') stale += 1;
      else if (kind !== null) wrong += 1;
      if (kind !== null) problems.push({ kind, sector, found, floor, newest });
    }
    return { sectors: count, current, ahead, stale, wrong, problems };
  }
}
