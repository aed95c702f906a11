// The bytes a connection has received and not yet parsed. Socket chunks are kept as they came
// (no concatenation on arrival); parsers copy fixed-size headers out into buffers they own and
// take payloads either as a view of one chunk or by one copy into a buffer of the exact size.
//
// The queue itself has no limit: its owner decides when to stop reading the socket, and every
// parser here asks for at most one header or one bounded payload at a time.

import { assert } from '../util/assert.ts';

const EMPTY = Buffer.alloc(0);

export class ByteQueue {
  private chunks: Buffer[] = [];
  private headIndex = 0;
  /** Bytes of chunks[headIndex] already consumed. */
  private headOffset = 0;
  private bytes = 0;

  get lengthBytes(): number {
    return this.bytes;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
  }

  /** Copies the next `lengthBytes` bytes into `target` and consumes them. */
  copyOut(target: Buffer, targetOffset: number, lengthBytes: number): void {
    assert(lengthBytes <= this.bytes, 'copyOut beyond the buffered bytes');
    assert(targetOffset + lengthBytes <= target.length, 'copyOut beyond the target');
    let copied = 0;
    while (copied < lengthBytes) {
      const head = this.chunks[this.headIndex];
      assert(head !== undefined, 'queue accounting out of step with its chunks');
      const count = Math.min(head.length - this.headOffset, lengthBytes - copied);
      head.copy(target, targetOffset + copied, this.headOffset, this.headOffset + count);
      copied += count;
      this.advance(count);
    }
  }

  /**
   * Consumes the next `lengthBytes` bytes as one Buffer: a view when they lie in one chunk (the
   * common case for small writes), else one copy.
   */
  take(lengthBytes: number): Buffer {
    assert(lengthBytes <= this.bytes, 'take beyond the buffered bytes');
    const head = this.chunks[this.headIndex];
    if (head !== undefined && head.length - this.headOffset >= lengthBytes) {
      const view = head.subarray(this.headOffset, this.headOffset + lengthBytes);
      this.advance(lengthBytes);
      return view;
    }
    const out = Buffer.allocUnsafe(lengthBytes);
    this.copyOut(out, 0, lengthBytes);
    return out;
  }

  /** Drops up to `lengthBytes` bytes; returns how many were dropped. */
  discard(lengthBytes: number): number {
    const count = Math.min(lengthBytes, this.bytes);
    let left = count;
    while (left > 0) {
      const head = this.chunks[this.headIndex];
      assert(head !== undefined, 'queue accounting out of step with its chunks');
      const step = Math.min(head.length - this.headOffset, left);
      this.advance(step);
      left -= step;
    }
    return count;
  }

  clear(): void {
    this.chunks = [];
    this.headIndex = 0;
    this.headOffset = 0;
    this.bytes = 0;
  }

  private advance(count: number): void {
    const head = this.chunks[this.headIndex];
    assert(head !== undefined && count <= head.length - this.headOffset, 'advance within the head');
    this.headOffset += count;
    this.bytes -= count;
    if (this.headOffset < head.length) return;
    this.chunks[this.headIndex] = EMPTY; // let the consumed chunk go before compaction
    this.headIndex += 1;
    this.headOffset = 0;
    // Compact now and then rather than shift() per chunk, which is O(n) each time.
    if (this.headIndex === this.chunks.length) {
      this.chunks.length = 0;
      this.headIndex = 0;
    } else if (this.headIndex >= 64) {
      this.chunks = this.chunks.slice(this.headIndex);
      this.headIndex = 0;
    }
  }
}
