// Framing of the chunk-server protocol, shared by clients, chunk servers and the MDS.
//
//   u32 bodyBytes | u16 headerBytes | header (headerBytes) | payload (the rest)
//
// The header is a msgpack map, or on the data path (READ, WRITE, ZERO and plain replies) a fixed
// binary layout that decodes to the same map (data_headers.ts): no msgpack per block request.
//
// bodyBytes counts everything after the prefix. Both lengths are checked against hard limits before
// any byte of the body is buffered, so a peer cannot make us hold more than one frame's worth.
// Payloads (block data) are never copied into the header encoding: senders write them as a
// separate buffer, and the reader hands them out as views of the socket's buffers when they
// arrive in one piece.
//
// A reader's body limit is per instance and may change: a chunk server holds an unauthenticated
// peer to PREAUTH_FRAME_BODY_BYTES_MAX (HELLO and AUTH are tiny) and raises the limit only once
// the peer has proved it holds the cluster key, so strangers cannot make it buffer megabytes.

import { Packr } from 'msgpackr';
import { StorageError } from '../errors.ts';
import { FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES_MAX, FRAME_PREFIX_BYTES } from '../limits.ts';

/** The largest frame body a peer may send before it has authenticated: AUTH is about 100 bytes. */
export const PREAUTH_FRAME_BODY_BYTES_MAX = 4 * 1024;
import { assert } from '../util/assert.ts';
import { decodeBinaryHeader, encodeBinaryHead, isBinaryHeader } from './data_headers.ts';

// One codec instance for the wire, never shared with lmdb's (see the toolchain notes): records off,
// so every message is self-describing and both ends need no shared structure table.
const headerCodec = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

export interface RawFrame {
  readonly header: Record<string, unknown>;
  readonly payload: Buffer;
}

const EMPTY = Buffer.alloc(0);

/** Encodes the prefix and header of a frame; the caller writes `payload` right after it. */
export function encodeFrameHead(header: object, payloadBytes: number): Buffer {
  const binary = encodeBinaryHead(header as Record<string, unknown>, payloadBytes);
  if (binary !== null) {
    assert(binary.length - FRAME_PREFIX_BYTES + payloadBytes <= FRAME_BODY_BYTES_MAX, 'frame body exceeds the limit');
    return binary;
  }
  const encoded = headerCodec.pack(header);
  assert(encoded.length <= FRAME_HEADER_BYTES_MAX, `frame header of ${encoded.length} bytes exceeds the limit`);
  const bodyBytes = encoded.length + payloadBytes;
  assert(bodyBytes <= FRAME_BODY_BYTES_MAX, `frame body of ${bodyBytes} bytes exceeds the limit`);
  const head = Buffer.allocUnsafe(FRAME_PREFIX_BYTES + encoded.length);
  head.writeUInt32BE(bodyBytes, 0);
  head.writeUInt16BE(encoded.length, 4);
  encoded.copy(head, FRAME_PREFIX_BYTES);
  return head;
}

/** Minimal writable surface, so the encoder works for sockets and for tests that collect bytes. */
export interface FrameSink {
  cork(): void;
  uncork(): void;
  write(data: Buffer): boolean;
}

/** Writes one frame; returns false when the sink asks the writer to wait for 'drain'. */
export function writeFrame(sink: FrameSink, header: object, payload?: Buffer): boolean {
  const payloadBytes = payload?.length ?? 0;
  const head = encodeFrameHead(header, payloadBytes);
  if (payload === undefined || payloadBytes === 0) return sink.write(head);
  sink.cork();
  sink.write(head);
  const flowing = sink.write(payload);
  sink.uncork();
  return flowing;
}

/**
 * Reassembles frames from a byte stream. `push` buffers bytes, `next` returns the next whole frame
 * or null. Any violation throws a StorageError (ERR_FRAME_TOO_LARGE or ERR_PROTOCOL); after that
 * the stream is out of sync and the connection must be closed.
 */
export class FrameReader {
  private readonly pieces: Buffer[] = [];
  private bufferedBytes = 0;
  private limitBodyBytes: number;

  constructor(limitBodyBytes: number = FRAME_BODY_BYTES_MAX) {
    this.limitBodyBytes = checkedLimit(limitBodyBytes);
  }

  /** The largest body accepted from the next frame on. */
  get bodyBytesMax(): number {
    return this.limitBodyBytes;
  }

  /** Changes the limit; a frame whose prefix is already buffered is checked against the new one. */
  setBodyBytesMax(limitBodyBytes: number): void {
    this.limitBodyBytes = checkedLimit(limitBodyBytes);
  }

  push(data: Buffer): void {
    if (data.length === 0) return;
    this.pieces.push(data);
    this.bufferedBytes += data.length;
  }

  get buffered(): number {
    return this.bufferedBytes;
  }

  next(): RawFrame | null {
    if (this.bufferedBytes < FRAME_PREFIX_BYTES) return null;
    const prefix = this.peek(FRAME_PREFIX_BYTES);
    const bodyBytes = prefix.readUInt32BE(0);
    const headerBytes = prefix.readUInt16BE(4);
    if (bodyBytes > this.limitBodyBytes) {
      throw new StorageError(
        'ERR_FRAME_TOO_LARGE',
        `frame body of ${bodyBytes} bytes exceeds the limit of ${this.limitBodyBytes} bytes`,
      );
    }
    if (headerBytes === 0 || headerBytes > FRAME_HEADER_BYTES_MAX || headerBytes > bodyBytes) {
      throw new StorageError(
        'ERR_PROTOCOL',
        `frame header length ${headerBytes} is invalid (body ${bodyBytes} bytes, header limit ${FRAME_HEADER_BYTES_MAX})`,
      );
    }
    if (this.bufferedBytes < FRAME_PREFIX_BYTES + bodyBytes) return null;
    this.skip(FRAME_PREFIX_BYTES);
    const body = this.take(bodyBytes);
    const header = decodeHeader(body.subarray(0, headerBytes));
    const payload = bodyBytes === headerBytes ? EMPTY : body.subarray(headerBytes);
    return { header, payload };
  }

  /** Returns the first `count` buffered bytes without consuming them (count is tiny). */
  private peek(count: number): Buffer {
    const first = this.pieces[0];
    assert(first !== undefined, 'peek on empty reader');
    if (first.length >= count) return first;
    const joined = Buffer.allocUnsafe(count);
    let filled = 0;
    for (const piece of this.pieces) {
      filled += piece.copy(joined, filled, 0, Math.min(piece.length, count - filled));
      if (filled === count) break;
    }
    return joined;
  }

  private skip(count: number): void {
    this.take(count);
  }

  private take(count: number): Buffer {
    assert(count <= this.bufferedBytes, 'take beyond buffered bytes');
    this.bufferedBytes -= count;
    const first = this.pieces[0];
    assert(first !== undefined, 'take on empty reader');
    if (first.length > count) {
      this.pieces[0] = first.subarray(count);
      return first.subarray(0, count);
    }
    if (first.length === count) {
      this.pieces.shift();
      return first;
    }
    const joined = Buffer.allocUnsafe(count);
    let filled = 0;
    while (filled < count) {
      const piece = this.pieces[0];
      assert(piece !== undefined, 'ran out of pieces');
      const used = Math.min(piece.length, count - filled);
      piece.copy(joined, filled, 0, used);
      filled += used;
      if (used === piece.length) this.pieces.shift();
      else this.pieces[0] = piece.subarray(used);
    }
    return joined;
  }
}

function checkedLimit(limitBodyBytes: number): number {
  assert(Number.isInteger(limitBodyBytes) && limitBodyBytes > 0, 'reader limit is a positive integer');
  assert(limitBodyBytes <= FRAME_BODY_BYTES_MAX, 'reader limit above the protocol limit');
  return limitBodyBytes;
}

function decodeHeader(bytes: Buffer): Record<string, unknown> {
  if (isBinaryHeader(bytes[0]!)) return decodeBinaryHeader(bytes);
  let value: unknown;
  try {
    value = headerCodec.unpack(bytes);
  } catch (error) {
    throw new StorageError('ERR_PROTOCOL', `frame header is not valid msgpack: ${(error as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value) || Buffer.isBuffer(value)) {
    throw new StorageError('ERR_PROTOCOL', 'frame header is not a map');
  }
  return value as Record<string, unknown>;
}
